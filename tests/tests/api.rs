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
