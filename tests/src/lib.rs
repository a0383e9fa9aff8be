//! Helpers for the end-to-end tests in `tests/tests/`: start the real
//! `cgscope` binary, scrape it, and gate tests on the privileges they need.

pub mod cgroups;
pub mod containerd;
pub mod daemonset;
pub mod podman;
pub mod prometheus;
pub mod validate;

use std::{
    fs,
    io::Read as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// The binary under test: `CGSCOPE_BIN` (set by `cargo xtask test`) or the
/// workspace's debug build.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("CGSCOPE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/cgscope"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub use testkit::{skip, strict, which};

/// Returns false (after recording the skip) when the test cannot run here.
#[must_use]
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(&format!(
        "{test} needs root (run `cargo xtask test` as root)"
    ));
    false
}

/// Whether the eBPF object must have loaded (set by `cargo xtask test`, which
/// builds it first).
pub fn expect_ebpf() -> bool {
    std::env::var_os("CGSCOPE_EXPECT_EBPF").is_some_and(|v| v != "0")
}

pub fn online_cpus() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) as u64 }
}

/// A running agent, stopped with SIGTERM when dropped.
pub struct Agent {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    pub fn start(args: &[&str]) -> Self {
        Self::start_bin(&agent_bin(), args)
    }

    pub fn start_bin(bin: &Path, args: &[&str]) -> Self {
        Self::start_with(&[], bin, args)
    }

    /// Starts the agent under a wrapper command (e.g. `setpriv …`).
    pub fn start_with(wrapper: &[&str], bin: &Path, args: &[&str]) -> Self {
        assert!(
            bin.is_file(),
            "{} is missing: run `cargo xtask test`",
            bin.display()
        );
        let bin = bin.to_str().unwrap();
        let words: Vec<&str> = wrapper.iter().copied().chain([bin]).collect();
        Self::start_command(&words, args)
    }

    /// Starts the agent with a command line of `words` (a container
    /// runtime's `run … image /usr/bin/cgscope`, say) and `args`.
    pub fn start_command(words: &[&str], args: &[&str]) -> Self {
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("cgscope-e2e")
            .tempdir()
            .unwrap();
        let log = dir.path().join("agent.log");
        let (first, rest) = words.split_first().expect("a command");
        let mut cmd = Command::new(first);
        cmd.args(rest);
        let child = cmd
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--log-format",
                "json",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", words.join(" ")));
        let mut agent = Self {
            child,
            port,
            log,
            _dir: dir,
        };
        agent.wait_healthy(Duration::from_secs(30));
        agent
    }

    fn wait_healthy(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("cgscope exited early ({status}):\n{}", self.log());
            }
            if let Ok(r) = self.get("/healthz", None) {
                if r.status == 200 && r.body == "ok" {
                    return;
                }
            }
            assert!(
                start.elapsed() < timeout,
                "cgscope not healthy after {timeout:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn get(&self, path: &str, accept: Option<&str>) -> Result<Response, ureq::Error> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut req = agent.get(&self.url(path));
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        let mut resp = req.call()?;
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let status = resp.status().as_u16();
        let mut body = String::new();
        resp.body_mut().as_reader().read_to_string(&mut body)?;
        Ok(Response {
            status,
            content_type,
            body,
        })
    }

    /// `/metrics` in the Prometheus text format, validated by promtool.
    pub fn scrape(&self) -> Metrics {
        let r = self.get("/metrics", None).expect("scrape");
        assert_eq!(r.status, 200);
        validate::prometheus_text(&r.body);
        Metrics(r.body)
    }

    /// `/metrics/agent`: the agent's own metrics.
    pub fn scrape_agent(&self) -> Metrics {
        let r = self.get("/metrics/agent", None).expect("scrape");
        assert_eq!(r.status, 200);
        Metrics(r.body)
    }

    /// `/metrics` in OpenMetrics, validated by prometheus_client.
    pub fn scrape_openmetrics(&self) -> Metrics {
        let r = self
            .get(
                "/metrics",
                Some("application/openmetrics-text;version=1.0.0"),
            )
            .expect("scrape");
        assert_eq!(r.status, 200);
        assert!(
            r.content_type.starts_with("application/openmetrics-text"),
            "{}",
            r.content_type
        );
        validate::openmetrics(&r.body);
        Metrics(r.body)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the agent in KiB.
    pub fn rss_kib(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Waits up to `timeout` for the agent to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stops the agent with SIGTERM and returns its log.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.log()
    }

    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
    }
}

pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// A scraped exposition with small lookup helpers.
pub struct Metrics(pub String);

impl Metrics {
    /// The `id` label of every series of `name`, sorted and deduplicated.
    pub fn ids(&self, name: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .0
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| {
                let rest = l.split("id=\"").nth(1)?;
                Some(rest[..rest.find('"')?].to_owned())
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Value of the first sample whose line starts with `series` followed by
    /// a space or `{`, with every `(label, value)` of `labels` present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(name, labels).into_iter().next()
    }

    pub fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?;
                let (label_part, value) = if let Some(r) = rest.strip_prefix('{') {
                    let (ls, v) = r.rsplit_once('}')?;
                    (ls, v)
                } else if rest.starts_with(' ') {
                    ("", rest)
                } else {
                    return None;
                };
                let ok = labels
                    .iter()
                    .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")));
                ok.then(|| value.split_whitespace().next()?.parse().ok())?
            })
            .collect()
    }
}

/// YAML documents as JSON values (PyYAML, which kubernetes-validate brings).
pub fn yaml_docs(yaml: &str) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.yaml");
    fs::write(&path, yaml).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(&path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "yaml to json: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process-wide unique number, for names of things a test creates.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos) << 16 | NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Whether the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0)) >= (major, minor)
}
