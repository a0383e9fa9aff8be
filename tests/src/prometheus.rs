//! A real Prometheus server (Debian's `prometheus`) scraping an agent on
//! loopback every second, queried over its HTTP API.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::cgroups::wait_for;

/// One series of a query's result: its labels and value.
pub type Series = (serde_json::Map<String, serde_json::Value>, f64);

pub struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes the agent on `target_port` as job `cgscope` every second.
    pub fn start(target_port: u16) -> Option<Self> {
        Self::start_with_config(&format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: cgscope\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ), &[])
    }

    /// Runs with `config` (and `files` written beside it, by name).
    pub fn start_with_config(config: &str, files: &[(&str, &str)]) -> Option<Self> {
        if crate::which("prometheus").is_none() {
            crate::skip("prometheus is not installed (`cargo xtask test` installs it)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
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

    pub fn get(&self, path: &str) -> Option<serde_json::Value> {
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
    pub fn query(&self, expr: &str) -> Vec<f64> {
        self.series(expr).into_iter().map(|(_, v)| v).collect()
    }

    /// An instant query's result vector with labels.
    pub fn series(&self, expr: &str) -> Vec<Series> {
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
                    .filter_map(|s| {
                        let v = s["value"][1].as_str()?.parse().ok()?;
                        Some((s["metric"].as_object()?.clone(), v))
                    })
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
