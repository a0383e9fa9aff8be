//! The agent as `deploy/kubernetes` runs it: in a cgroup of its own with a
//! private cgroup namespace and mount namespace (the host's PID namespace:
//! `hostPID`), with only the manifest's capabilities and no new privileges,
//! the manifest's volumes bound read-only where it mounts them, a
//! read-only root, and the manifest's flags. Discovery, OOM attribution and
//! statistics must be as right as on the bare host.
//!
//! Left out: the pod's network namespace (the test reaches the agent on
//! this machine's loopback, so `--listen` is the test's), and the image's
//! own root (the binary runs from the build tree; the host's root is
//! remounted read-only instead). Paths under `/host` go under a temporary
//! folder, and the flags naming them follow.

use std::{fs, path::Path};

use tests::{
    cgroups::{CgroupTree, HIERARCHIES},
    daemonset::{agent_args, check_as_on_the_host, pod, Pod},
    require_root, Agent,
};

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A shell script that makes the pod's sandbox around `"$@"`: it joins
/// `cgroup_procs` (the container's cgroup), enters new mount and cgroup
/// namespaces, mounts the volumes and a fresh `/proc`, makes the root
/// read-only and execs the agent with the manifest's capabilities only.
fn sandbox_script(pod: &Pod, cgroup_procs: &[String], host_dir: &Path) -> String {
    let mut setup = String::from("set -e; mount --make-rprivate /; ");
    for (from, to) in &pod.mounts {
        let to = match to.strip_prefix("/host/") {
            Some(rest) => host_dir.join(rest).display().to_string(),
            None => to.clone(),
        };
        // A volume the node lacks (another runtime's socket folder) is an
        // empty folder in the pod.
        if !Path::new(from).exists() {
            continue;
        }
        if Path::new(from).is_dir() {
            setup += &format!("mkdir -p {0}; ", quote(&to));
        } else {
            setup += &format!(
                "mkdir -p \"$(dirname {0})\"; [ -e {0} ] || : > {0}; ",
                quote(&to)
            );
        }
        setup += &format!(
            "mount --rbind {0} {1}; mount -o remount,bind,ro {1}; ",
            quote(from),
            quote(&to)
        );
    }
    setup += "mount -t proc proc /proc; mount -o remount,bind,ro /; ";
    let caps: Vec<String> = pod.caps.iter().map(|c| format!("+{c}")).collect();
    setup += &format!(
        "exec setpriv --bounding-set=-all,{0} --inh-caps=-all --no-new-privs -- \"$@\"",
        caps.join(",")
    );
    let join: String = cgroup_procs
        .iter()
        .map(|p| format!("echo $$ > {}\n", quote(p)))
        .collect();
    format!(
        "#!/bin/sh\nset -e\n{join}exec unshare --mount --cgroup -- sh -c {} sh \"$@\"\n",
        quote(&setup)
    )
}

#[test]
fn the_agent_as_the_daemonset_runs_it_is_as_right_as_on_the_host() {
    if !require_root("the_agent_as_the_daemonset_runs_it_is_as_right_as_on_the_host") {
        return;
    }
    let pod = pod();
    let tmp = tempfile::tempdir().unwrap();
    let host_dir = tmp.path().join("host");
    let tree = CgroupTree::new("daemonset", HIERARCHIES);
    tree.mkdir("agent").unwrap();
    let procs: Vec<String> = tree
        .dirs("agent")
        .iter()
        .map(|d| d.join("cgroup.procs").display().to_string())
        .collect();
    let script = tmp.path().join("sandbox.sh");
    fs::write(&script, sandbox_script(&pod, &procs, &host_dir)).unwrap();
    let args = agent_args(&pod, Some(&host_dir));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_with(
        &["sh", script.to_str().unwrap()],
        &tests::agent_bin(),
        &args,
    );
    let pid = agent.pid();
    check_as_on_the_host(agent, pid, &pod, &tree);
}
