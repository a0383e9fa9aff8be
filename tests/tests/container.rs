//! The agent in a real container, started by a container runtime with the
//! DaemonSet's security context: Podman with runc, only the manifest's
//! capabilities, no new privileges, a read-only root, the host's PID
//! namespace, a private cgroup namespace below a cgroup of the test's,
//! seccomp as the manifest says, the manifest's volumes read-only at their
//! paths and the manifest's flags. Discovery, OOM attribution and
//! statistics must be as right as on the bare host (the checks of
//! `tests/daemonset.rs`).
//!
//! The image is assembled here from the agent binary and the C libraries
//! it links, which is what the Containerfile's distroless/cc base holds:
//! that base and the Rust build image cannot be pulled on a machine that
//! reaches package registries only. The host's network namespace stands in
//! for the pod's (the test reaches the agent on loopback).

use std::{fs, path::Path, process::Command};

use tests::{
    cgroups::{CgroupTree, HIERARCHIES},
    daemonset::{agent_args, check_as_on_the_host, pod},
    podman::Podman,
    require_root, Agent,
};

const IMAGE: &str = "localhost/cgscope-agent:test";

/// Podman makes the container's parent cgroup, and conmon's beside it, in
/// every hierarchy, not only the tree's: removed here, deepest first, even
/// when the test fails. Only paths under this run's unique prefix.
struct Leftovers(String);

impl Drop for Leftovers {
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&entry.path());
                }
            }
            let _ = fs::remove_dir(dir);
        }
        let rel = self.0.trim_start_matches('/');
        // Nothing made yet, or not a test's path: touch nothing.
        if !rel.starts_with("cgscope-test-") || rel.contains('/') {
            return;
        }
        let root = Path::new("/sys/fs/cgroup");
        remove(&root.join(rel));
        for h in fs::read_dir(root).into_iter().flatten().flatten() {
            let dir = h.path().join(rel);
            if dir.is_dir() {
                remove(&dir);
            }
        }
    }
}

/// A root holding `bin` at `/usr/bin/cgscope`, every library `ldd` lists
/// for it at its path, and the folders the manifest mounts over.
fn image_root(bin: &Path, root: &Path) {
    let copy = |from: &Path, to: &Path| {
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    };
    copy(bin, &root.join("usr/bin/cgscope"));
    let ldd = Command::new("ldd").arg(bin).output().unwrap();
    assert!(ldd.status.success(), "ldd {}", bin.display());
    let mut libs = 0;
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if word.starts_with('/') {
            let lib = fs::canonicalize(word).unwrap();
            copy(&lib, &root.join(word.trim_start_matches('/')));
            libs += 1;
        }
    }
    assert!(libs >= 2, "the loader and libc at least: {libs}");
    for d in ["proc", "sys", "dev", "etc", "tmp", "run", "host"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
}

#[test]
fn the_agent_in_a_container_with_the_daemonsets_security_context_is_as_right_as_on_the_host() {
    let test =
        "the_agent_in_a_container_with_the_daemonsets_security_context_is_as_right_as_on_the_host";
    if !require_root(test) {
        return;
    }
    let Some(podman) = Podman::new() else {
        tests::skip(
            "podman, runc and busybox-static are needed (`cargo xtask test` installs them)",
        );
        return;
    };
    let pod = pod();
    let root = podman.scratch("agent-image");
    image_root(&tests::agent_bin(), &root);
    podman.import(&root, IMAGE);
    // The base's seccomp choice, then the seccomp-localhost overlay's: the
    // profile the repository ships, built from the system calls the agent
    // makes.
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/seccomp/cgscope.json");
    for seccomp in [
        format!("seccomp={}", pod.seccomp.to_lowercase()),
        format!("seccomp={}", profile.display()),
    ] {
        run(&podman, &pod, &seccomp);
    }
}

/// Runs the agent under Podman with `--security-opt=<seccomp>` and checks
/// it is as right as on the host.
fn run(podman: &Podman, pod: &tests::daemonset::Pod, seccomp: &str) {
    let mut leftovers = Leftovers(String::new());
    let tree = CgroupTree::new("container", HIERARCHIES);
    leftovers.0 = tree.prefix.clone();
    tree.mkdir("agent").unwrap();

    let name = format!("cgscope-agent-{}-{}", std::process::id(), tests::unique());
    let parent = tree.path("agent");
    let mut words = podman.words();
    words.extend(
        [
            "run",
            "--rm",
            "--name",
            &name,
            "--network=host",
            "--pid=host",
            "--cgroupns=private",
            "--cgroup-parent",
            &parent,
            "--read-only",
            "--security-opt=no-new-privileges",
            "--cap-drop=all",
        ]
        .map(String::from),
    );
    for cap in &pod.caps {
        words.push(format!("--cap-add={cap}"));
    }
    // runtimedefault is Podman's own default: no option.
    if seccomp != "seccomp=runtimedefault" {
        words.push(format!("--security-opt={seccomp}"));
    }
    let confined = seccomp != "seccomp=unconfined";
    for (from, to) in &pod.mounts {
        // A volume the node lacks (another runtime's socket folder) is an
        // empty folder in the pod.
        if Path::new(from).exists() {
            words.push(format!("--volume={from}:{to}:ro"));
        }
    }
    words.extend([IMAGE.to_owned(), "/usr/bin/cgscope".to_owned()]);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let args = agent_args(pod, None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_command(&words, &args);
    let pid = podman
        .pid_of(&name)
        .unwrap_or_else(|| panic!("no pid for {name} ({seccomp}):\n{}", agent.log()));
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let filter = if confined {
        "Seccomp:\t2"
    } else {
        "Seccomp:\t0"
    };
    assert!(status.contains(filter), "{seccomp}: {status}");
    check_as_on_the_host(agent, pid, pod, &tree);
}
