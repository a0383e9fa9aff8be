//! A real Prometheus server scrapes the agent every second on loopback.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tests::{
    cgroups::{wait_for, CgroupTree},
    require_root, Agent,
};

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Option<Self> {
        if Command::new("prometheus")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                !tests::strict(),
                "prometheus is not installed (.ci/run installs it)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: cgscope\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let p = Self {
            child,
            port,
            _dir: dir,
        };
        wait_for("prometheus ready", Duration::from_secs(30), || {
            p.get("/-/ready").is_some()
        });
        Some(p)
    }

    fn get(&self, path: &str) -> Option<serde_json::Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut r = agent
            .get(&format!("http://127.0.0.1:{}{path}", self.port))
            .call()
            .ok()?;
        let body = r.body_mut().read_to_string().ok()?;
        Some(serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
    }

    /// Values of an instant query's result vector.
    fn query(&self, expr: &str) -> Vec<f64> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let Ok(mut r) = agent
            .get(&format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query("query", expr)
            .call()
        else {
            return vec![];
        };
        let v: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default())
                .unwrap_or_default();
        v["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["value"][1].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
        eprintln!("SKIPPED prometheus_scrapes_rates_and_sees_removed_series_go: no prometheus");
        return;
    };
    let hs = ["cpu", "cpuacct"];
    let tree = CgroupTree::new("prom", &hs);
    let path = tree.path("");
    let join: String = hs
        .iter()
        .map(|h| format!("echo $$ > {}/cgroup.procs && ", tree.dir(h, "").display()))
        .collect();
    let mut burner = Command::new("sh")
        .arg("-c")
        .arg(format!("{join}exec timeout 40 sh -c 'while :; do :; done'"))
        .spawn()
        .unwrap();
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
            assert!(
                !tests::strict(),
                "promtool is not installed (.ci/run installs it)"
            );
            eprintln!("SKIPPED example_scrape_config_is_valid: no promtool");
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
