//! cAdvisor's JSON API paths and field names, end to end.

use std::time::Duration;

use tests::{
    cgroups::{wait_for, CgroupTree},
    online_cpus, require_root, Agent,
};

fn json(agent: &Agent, path: &str) -> (u16, serde_json::Value) {
    let r = agent.get(path, None).unwrap();
    assert!(
        r.content_type.starts_with("application/json"),
        "{path}: {}",
        r.content_type
    );
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body)),
    )
}

#[test]
fn machine_version_and_errors() {
    let agent = Agent::start(&["--discovery", "inotify", "--oom-source", "kmsg"]);
    let (status, m) = json(&agent, "/api/v2.0/machine");
    assert_eq!(status, 200);
    assert_eq!(m["num_cores"], online_cpus());
    assert!(m["memory_capacity"].as_u64().unwrap() > 0);
    let (status, v) = json(&agent, "/api/v2.0/version");
    assert_eq!((status, v.is_string()), (200, true));
    let (status, e) = json(&agent, "/api/v2.0/stats/no/such/container");
    assert_eq!(status, 404);
    assert!(e["error"].as_str().unwrap().contains("/no/such/container"));
    for (path, param) in [
        ("/api/v2.0/stats/?count=many", "count"),
        ("/api/v2.0/spec/?recursive=perhaps", "recursive"),
        ("/api/v2.0/events?start_time=yesterday", "start_time"),
    ] {
        let (status, e) = json(&agent, path);
        assert_eq!(status, 400, "{path}");
        assert!(e["error"].as_str().unwrap().contains(param), "{path}: {e}");
    }
}

#[test]
fn spec_and_stats_of_a_limited_cgroup() {
    if !require_root("spec_and_stats_of_a_limited_cgroup") {
        return;
    }
    let agent = Agent::start(&[
        "--housekeeping-interval",
        "1s",
        "--max-housekeeping-interval",
        "1s",
    ]);
    let hs = ["cpu", "cpuacct", "memory"];
    let tree = CgroupTree::new("api", &hs);
    tree.mkdir("child").unwrap();
    std::fs::write(
        tree.dir("memory", "").join("memory.limit_in_bytes"),
        "67108864",
    )
    .unwrap();
    std::fs::write(tree.dir("cpu", "").join("cpu.cfs_quota_us"), "50000").unwrap();
    let path = tree.path("");
    wait_for("two samples", Duration::from_secs(15), || {
        let (status, s) = json(&agent, &format!("/api/v2.0/stats{path}?count=2"));
        status == 200 && s[&path].as_array().is_some_and(|a| a.len() == 2)
    });
    let (_, spec) = json(&agent, &format!("/api/v2.0/spec{path}"));
    let spec = &spec[&path];
    assert_eq!(spec["has_memory"], true);
    assert_eq!(spec["memory"]["limit"], 67108864);
    assert_eq!(spec["cpu"]["quota"], 50000);
    assert_eq!(spec["cpu"]["period"], 100000);
    assert!(spec["creation_time"].as_str().unwrap().starts_with("20"));
    let (_, stats) = json(&agent, &format!("/api/v2.0/stats{path}?count=1"));
    let s = &stats[&path][0];
    assert_eq!(s["has_cpu"], true);
    assert!(s["cpu"]["usage"]["total"].is_u64());
    assert!(s["memory"]["usage"].is_u64());
    assert!(s["timestamp"].as_str().unwrap().starts_with("20"));
    let (_, rec) = json(&agent, &format!("/api/v2.0/spec{path}?recursive=true"));
    assert!(
        rec.get(tree.path("child")).is_some(),
        "recursive includes the child: {rec}"
    );
}

/// Forty clients ask for every sample of every container and never read
/// the answer: the agent holds none of those responses in memory (they
/// are written as the client reads), stays under the DaemonSet's memory
/// request, and answers everyone else meanwhile.
#[test]
fn forty_unread_huge_responses_cost_the_agent_nothing() {
    use std::io::Write as _;
    if !require_root("forty_unread_huge_responses_cost_the_agent_nothing") {
        return;
    }
    // Each answer (6 MB) more than the kernel buffers of a connection
    // hold (4 MB on loopback), so an unread one cannot leave the agent.
    const CGROUPS: usize = 1_000;
    /// The DaemonSet's `resources.requests.memory`.
    const REQUEST_KIB: u64 = 64 * 1024;
    let tree = CgroupTree::new("apiflood", &["cpu", "cpuacct", "memory", "pids"]);
    for i in 0..CGROUPS {
        tree.mkdir(&format!("c{i}")).unwrap();
    }
    let agent = Agent::start(&[
        "--housekeeping-interval",
        "1s",
        "--max-housekeeping-interval",
        "1s",
        "--raw-cgroup-prefix-whitelist",
        &tree.prefix,
    ]);
    let all = format!("/api/v2.0/stats{}?recursive=true&count=-1", tree.prefix);
    // Ten samples of each.
    let mut size = 0;
    wait_for(
        "ten samples of every cgroup",
        Duration::from_secs(30),
        || {
            let (status, v) = json(&agent, &all);
            size = v.to_string().len();
            status == 200
                && v.as_object().is_some_and(|o| {
                    o.len() > CGROUPS
                        && o.values()
                            .all(|s| s.as_array().is_some_and(|s| s.len() >= 10))
                })
        },
    );
    assert!(size > 5_000_000, "a large answer: {size} bytes");
    let before = agent.rss_kib();
    let request = format!("GET {all} HTTP/1.1\r\nHost: x\r\n\r\n");
    let held: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let during = agent.rss_kib();
    assert_eq!(agent.get("/healthz", None).unwrap().status, 200);
    let (status, v) = json(&agent, &all);
    assert_eq!(status, 200);
    assert!(v.as_object().unwrap().len() > CGROUPS);
    eprintln!("RSS {before} KiB before, {during} KiB with 40 unread answers of {size} bytes");
    assert!(
        during < REQUEST_KIB,
        "RSS {during} KiB with 40 unread answers (before: {before} KiB)"
    );
    assert!(
        during < before + 16 * 1024,
        "RSS {before} -> {during} KiB with 40 unread answers of {size} bytes"
    );
    drop(held);
}
