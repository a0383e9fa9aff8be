//! The agent as `deploy/kubernetes` runs it, and what must hold there: the
//! manifest read back (capabilities, flags, volumes) and the checks that
//! the agent is as right as on the bare host, shared by the sandbox test
//! (`tests/daemonset.rs`) and the Podman test (`tests/container.rs`).

use std::{fs, path::Path, time::Duration};

use serde_json::Value;

use crate::{
    cgroups::{wait_for, CgroupTree, HIERARCHIES},
    expect_ebpf, yaml_docs, Agent,
};

/// What the manifest says about the agent's container.
/// What the manifest says about the agent's container.
pub struct Pod {
    /// Capability names as `setpriv` spells them (`bpf`, `sys_ptrace`).
    pub caps: Vec<String>,
    pub args: Vec<String>,
    /// `securityContext.seccompProfile.type`.
    pub seccomp: String,
    /// (host path, path in the container), parents first.
    pub mounts: Vec<(String, String)>,
}

pub fn pod() -> Pod {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/base/daemonset.yaml");
    let docs = yaml_docs(&fs::read_to_string(path).unwrap());
    let spec = &docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(
        spec["hostPID"], true,
        "the test keeps the host's PID namespace"
    );
    let c = &spec["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let caps = strings(&sc["capabilities"]["add"])
        .iter()
        .map(|c| c.to_lowercase())
        .collect();
    let volumes = spec["volumes"].as_array().unwrap();
    let mut mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["readOnly"], true, "every volume is read-only: {m}");
            let v = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .expect("the mount's volume");
            let host = v["hostPath"]["path"].as_str().unwrap().to_owned();
            (host, m["mountPath"].as_str().unwrap().to_owned())
        })
        .collect();
    mounts.sort_by_key(|(_, to)| to.matches('/').count());
    Pod {
        caps,
        args: strings(&c["args"]),
        seccomp: sc["seccompProfile"]["type"]
            .as_str()
            .unwrap_or("RuntimeDefault")
            .to_owned(),
        mounts,
    }
}

/// The manifest's flags for a test run: the test's `--listen` and log
/// format instead of the manifest's, paths under `/host/` below
/// `host_dir` when the test has no real `/host`, and 1 s housekeeping.
pub fn agent_args(pod: &Pod, host_dir: Option<&Path>) -> Vec<String> {
    pod.args
        .iter()
        .filter(|a| !a.starts_with("--listen") && !a.starts_with("--log-format"))
        .map(|a| match host_dir {
            Some(dir) => a.replace("=/host/", &format!("={}/", dir.display())),
            None => a.clone(),
        })
        .chain(
            [
                "--housekeeping-interval=1s",
                "--max-housekeeping-interval=1s",
            ]
            .map(String::from),
        )
        .collect()
}

/// Capability numbers (linux/capability.h) of the names the manifest uses.
fn cap_bit(name: &str) -> u32 {
    match name {
        "dac_read_search" => 2,
        "sys_ptrace" => 19,
        "sys_resource" => 24,
        "syslog" => 34,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("add {other} to cap_bit"),
    }
}

/// Whether `cond` holds within `timeout` (polled).
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The agent (whose process is `pid`, in `tree`'s `agent` cgroup) has
/// only the manifest's capabilities, its own cgroup namespace, and is as
/// right as on the host: modes, discovery, statistics, a real OOM kill.
pub fn check_as_on_the_host(agent: Agent, pid: u32, pod: &Pod, tree: &CgroupTree) {
    // Only the manifest's capabilities, and nothing can add any.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ours = fs::read_to_string("/proc/self/status").unwrap();
    let field = |status: &str, name: &str| {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim();
        u64::from_str_radix(hex, 16).unwrap()
    };
    // Of those, what this test itself may hand on (a container running the
    // tests may lack some).
    let allowed: u64 =
        pod.caps.iter().map(|c| 1u64 << cap_bit(c)).sum::<u64>() & field(&ours, "CapBnd:");
    assert_eq!(field(&status, "CapBnd:"), allowed, "bounding set: {status}");
    assert_eq!(field(&status, "CapEff:") & !allowed, 0, "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    // In its own cgroup, and a cgroup namespace rooted there.
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/cgroup")).unwrap();
    assert_ne!(ns(&pid.to_string()), ns("self"));
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(own.contains(&tree.path("agent")), "{own}");

    let m = agent.scrape();
    let mode = |subsystem: &str| {
        m.0.lines()
            .find(|l| {
                l.starts_with(&format!("cgscope_mode{{subsystem=\"{subsystem}\""))
                    && l.ends_with(" 1")
            })
            .map(|l| l.to_owned())
            .unwrap_or_default()
    };
    // Above 2 (Debian's and Ubuntu's patch) perf_event_open, which the
    // classic tracepoints attach through, needs CAP_SYS_ADMIN. The tp_btf
    // programs need no perf event: discovery has one on every kernel with
    // BTF, OOM kills from 6.8 on (and Debian's 6.1); before, the agent
    // takes the kernel log and says why.
    let paranoid: i32 = fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map_or(2, |p| p.trim().parse().unwrap());
    if expect_ebpf() {
        let discovery = mode("discovery");
        assert!(
            discovery.contains("mode=\"ebpf\""),
            "{discovery} (paranoid {paranoid})\n{}",
            agent.log()
        );
        let oom = mode("oom");
        let ok = oom.contains("mode=\"ebpf\"")
            || (paranoid > 2
                && oom.contains("mode=\"kmsg\"")
                && agent.log().contains("kernel.perf_event_paranoid is"));
        assert!(ok, "{oom} (paranoid {paranoid})\n{}", agent.log());
    }

    // Discovery and statistics: a cgroup made now, with one process in it,
    // under the host's own path.
    tree.mkdir("app").unwrap();
    let mut app = tree.spawn_in(HIERARCHIES, "app", "exec sleep 120");
    let app_path = tree.path("app");
    let counted = eventually(Duration::from_secs(20), || {
        agent
            .scrape()
            .value("container_processes", &[("id", &app_path)])
            == Some(1.0)
    });
    assert!(
        counted,
        "the new cgroup's process is counted: {:?}\n{}\n{}",
        agent
            .scrape()
            .0
            .lines()
            .filter(|l| l.contains(&app_path))
            .collect::<Vec<_>>(),
        agent.scrape_agent().0,
        agent.log()
    );
    let usage = agent
        .scrape()
        .value("container_memory_usage_bytes", &[("id", &app_path)])
        .unwrap();
    let file = tree.memory_usage("app") as f64;
    assert!(
        (usage - file).abs() <= file * 0.1 + 512.0 * 1024.0,
        "memory usage {usage} vs the kernel's {file}"
    );

    // A real OOM kill, counted against its cgroup with its victim.
    tree.mkdir("victim").unwrap();
    tree.set_memory_limit("victim", 64 << 20);
    let victim = tree.path("victim");
    wait_for(
        "the victim's cgroup is known",
        Duration::from_secs(20),
        || {
            agent
                .scrape()
                .value("container_oom_events_total", &[("id", &victim)])
                .is_some()
        },
    );
    let mut hog = tree.spawn_in(&["memory"], "victim", "exec tail /dev/zero");
    let pid = hog.id();
    let status = hog.wait().unwrap();
    assert!(!status.success(), "the hog was killed");
    assert_eq!(tree.oom_kills("victim"), 1);
    wait_for("the kill is counted", Duration::from_secs(20), || {
        agent
            .scrape()
            .value("container_oom_events_total", &[("id", &victim)])
            == Some(1.0)
    });
    let r = agent
        .get(
            &format!("/api/v2.0/events{victim}?oom_kill_events=true&max_events=-1"),
            None,
        )
        .unwrap();
    assert!(r.body.contains(&format!("\"pid\":{pid}")), "{}", r.body);
    let m = agent.scrape();
    assert_eq!(
        m.value("cgscope_oom_missed_total", &[]),
        Some(0.0),
        "the source saw it"
    );
    let log = agent.stop();
    assert!(
        !log.contains("\"level\":\"ERROR\""),
        "no error in the sandbox:\n{log}"
    );
    let _ = app.kill();
    let _ = app.wait();
}
