//! Discovery latency: `mkdir(2)` → the registry knows the container.
//!
//! The agent logs every container it registers (trace level, JSON, with a
//! microsecond timestamp); the benchmark notes the wall-clock time right
//! before each `mkdir` and pairs the two. No polling, so the measurement
//! does not compete with the agent for the machine's two cores.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};

use super::{percentile, BenchAgent};

const N: usize = 1000;
const HIERARCHY: &str = "/sys/fs/cgroup/pids";

/// Removes every directory the benchmark made, whatever happens.
struct Dirs(Vec<PathBuf>);

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

struct Row {
    mode: &'static str,
    pattern: &'static str,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    lost: usize,
}

pub fn run(bin: &Path) -> Result<()> {
    let mut rows = Vec::new();
    for mode in ["ebpf", "inotify"] {
        for (pattern, pace) in [
            ("paced 2 ms", Some(Duration::from_millis(2))),
            ("burst", None),
        ] {
            rows.push(measure(bin, mode, pattern, pace)?);
        }
    }
    println!();
    println!("discovery latency, mkdir(2) → registry, {N} cgroups per run (target: eBPF p99 < 5 ms, 0 lost)");
    println!("| mode | pattern | p50 ms | p99 ms | max ms | lost |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {} |",
            r.mode, r.pattern, r.p50_ms, r.p99_ms, r.max_ms, r.lost
        );
    }
    Ok(())
}

fn measure(
    bin: &Path,
    mode: &'static str,
    pattern: &'static str,
    pace: Option<Duration>,
) -> Result<Row> {
    let agent = BenchAgent::start(
        bin,
        &[
            "--discovery",
            mode,
            "--global-housekeeping-interval",
            "1h",
            "--log-level",
            "info,cgscope::registry=trace",
        ],
    )?;
    let base = Path::new(HIERARCHY).join(format!(
        "cgscope-bench-{}-{mode}-{}",
        std::process::id(),
        pattern.len()
    ));
    let mut dirs = Dirs(vec![]);
    fs::create_dir(&base).with_context(|| format!("creating {}", base.display()))?;
    dirs.0.push(base.clone());
    thread::sleep(Duration::from_millis(300));
    let rel = format!("/{}", base.file_name().unwrap().to_string_lossy());
    let mut made: HashMap<String, SystemTime> = HashMap::new();
    for i in 0..N {
        let dir = base.join(format!("c{i}"));
        let t = SystemTime::now();
        fs::create_dir(&dir)?;
        dirs.0.push(dir);
        made.insert(format!("{rel}/c{i}"), t);
        if let Some(p) = pace {
            thread::sleep(p);
        }
    }
    thread::sleep(Duration::from_secs(2));
    let log = agent.stop();
    let mut latencies = Vec::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["message"] != "registered container" {
            continue;
        }
        let (Some(path), Some(ts)) = (v["path"].as_str(), v["timestamp"].as_str()) else {
            continue;
        };
        let Some(start) = made.remove(path) else {
            continue;
        };
        let Ok(at) = humantime::parse_rfc3339_weak(ts.trim_end_matches('Z')) else {
            continue;
        };
        let d = at.duration_since(start).unwrap_or_default();
        latencies.push(d.as_secs_f64() * 1e3);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(Row {
        mode,
        pattern,
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        lost: made.len(),
    })
}
