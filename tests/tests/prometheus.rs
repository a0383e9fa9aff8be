//! A real Prometheus server scrapes the agent every second on loopback.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use tests::{
    cgroups::{wait_for, CgroupTree},
    prometheus::Prometheus,
    require_root, Agent,
};

#[test]
fn prometheus_scrapes_rates_and_sees_removed_series_go() {
    if !require_root("prometheus_scrapes_rates_and_sees_removed_series_go") {
        return;
    }
    let agent = Agent::start(&[
        "--housekeeping-interval",
        "1s",
        "--max-housekeeping-interval",
        "1s",
        "--container-retention",
        "3s",
    ]);
    let Some(prom) = Prometheus::start(agent.port) else {
        return;
    };
    let hs = ["cpu", "cpuacct"];
    let tree = CgroupTree::new("prom", &hs);
    let path = tree.path("");
    let mut burner = tree.spawn_in(&hs, "", "exec timeout 40 sh -c 'while :; do :; done'");
    let rate =
        format!("rate(container_cpu_usage_seconds_total{{id=\"{path}\",cpu=\"total\"}}[10s])");
    let mut last = vec![];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(40) {
        last = prom.query(&rate);
        if last.first().is_some_and(|v| (0.75..=1.1).contains(v)) {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    assert!(
        last.first().is_some_and(|v| (0.75..=1.1).contains(v)),
        "rate of a one-core burner: {last:?}"
    );
    assert_eq!(prom.query("up{job=\"cgscope\"}"), [1.0]);
    let targets = prom.get("/api/v1/targets").unwrap();
    let t = &targets["data"]["activeTargets"][0];
    assert_eq!(t["health"], "up", "{t}");
    assert_eq!(t["lastError"], "", "{t}");
    let _ = burner.kill();
    let _ = burner.wait();
    drop(tree);
    let series = format!("container_cpu_usage_seconds_total{{id=\"{path}\"}}");
    wait_for(
        "the removed cgroup's series to go stale",
        Duration::from_secs(40),
        || prom.query(&series).is_empty(),
    );
}

#[test]
fn example_scrape_config_is_valid() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/prometheus/prometheus.yml");
    let out = match Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
    {
        Ok(out) => out,
        Err(_) => {
            tests::skip("promtool is not installed (`cargo xtask test` installs it)");
            return;
        }
    };
    assert!(
        out.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
