//! `cargo xtask bench <what>`: measurements with targets, printed as tables.
//! Never timed tests: numbers are reported, not asserted.

mod collect;
mod discovery;
mod oom;
mod scrape;

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{build_ebpf, cmd};

pub use collect::SIZES as COLLECT_SIZES;

/// Builds the release agent with its eBPF object and runs `what`.
pub fn run(root: &Path, what: &str) -> Result<()> {
    if !cmd::is_root() {
        bail!("benchmarks create cgroups and load eBPF: run them as root");
    }
    build_ebpf::run(root)?;
    crate::test::build_release_agent(root)?;
    run_with(&root.join("target/release/cgscope"), what, COLLECT_SIZES)
}

/// Runs `what` against an agent already built (inside a `cargo xtask vm`
/// guest, which cannot build).
pub fn run_with(bin: &Path, what: &str, collect_sizes: &[(usize, usize)]) -> Result<()> {
    match what {
        "discovery" => discovery::run(bin),
        "oom" => oom::run(bin),
        "collect" => collect::run(bin, collect_sizes),
        "scrape" => scrape::run(bin),
        "all" => {
            discovery::run(bin)?;
            oom::run(bin)?;
            collect::run(bin, collect_sizes)?;
            scrape::run(bin)
        }
        other => bail!("unknown benchmark {other:?} (known: discovery, oom, collect, scrape, all)"),
    }
}

/// A release agent started for a benchmark, killed on drop.
pub struct BenchAgent {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl BenchAgent {
    pub fn start(bin: &Path, args: &[&str]) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log =
            std::env::temp_dir().join(format!("cgscope-bench-{}-{port}.log", std::process::id()));
        let child = Command::new(bin)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--log-format",
                "json",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let agent = Self { child, port, log };
        let start = Instant::now();
        while agent.get("/healthz").is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "agent not healthy:\n{}",
                    fs::read_to_string(&agent.log).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn get(&self, path: &str) -> Result<String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(agent
            .get(&format!("http://127.0.0.1:{}{path}", self.port))
            .call()?
            .body_mut()
            .read_to_string()?)
    }

    /// Stops the agent and returns its log.
    pub fn stop(mut self) -> String {
        terminate(self.child.id());
        let _ = self.child.wait();
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let _ = fs::remove_file(&self.log);
        log
    }
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
    }
}

/// SIGTERM (graceful stop, so the log is complete) via kill(1).
fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// p-th percentile (0–100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
