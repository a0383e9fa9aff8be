//! OOM latency: the kernel's kill → the kill recorded in the registry (its
//! event stored, its counter incremented), eBPF vs kmsg, and attribution.
//!
//! The kernel's time is the `oom-kill:` summary line's timestamp in
//! /dev/kmsg (printed just before the victim is marked); the agent logs
//! each recorded kill at trace level with its own timestamp.

use std::{
    collections::HashMap,
    fs,
    io::Read as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};

use super::{percentile, BenchAgent};

const KILLS: usize = 20;
const MEMORY: &str = "/sys/fs/cgroup/memory";

struct Dirs(Vec<PathBuf>);

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

pub fn run(bin: &Path) -> Result<()> {
    let mut rows = Vec::new();
    for mode in ["ebpf", "kmsg"] {
        rows.push(measure(bin, mode)?);
    }
    println!();
    println!("OOM kill → registry, {KILLS} kills per mode in 64 MiB v1 memory cgroups (target: eBPF p99 < 100 ms, 100% attributed)");
    println!("| source | p50 ms | p99 ms | max ms | attributed |");
    println!("|---|---|---|---|---|");
    for (mode, lat, ok) in rows {
        println!(
            "| {mode} | {:.2} | {:.2} | {:.2} | {ok}/{KILLS} |",
            percentile(&lat, 50.0),
            percentile(&lat, 99.0),
            lat.last().copied().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

fn measure(bin: &Path, mode: &'static str) -> Result<(&'static str, Vec<f64>, usize)> {
    let agent = BenchAgent::start(
        bin,
        &[
            "--oom-source",
            mode,
            "--log-level",
            "info,cgscope::registry=trace",
        ],
    )?;
    let base = Path::new(MEMORY).join(format!("cgscope-bench-oom-{}-{mode}", std::process::id()));
    let mut dirs = Dirs(vec![]);
    fs::create_dir(&base).with_context(|| format!("creating {}", base.display()))?;
    dirs.0.push(base.clone());
    let rel = format!("/{}", base.file_name().unwrap().to_string_lossy());
    // pid → the cgroup path it ran in.
    let mut victims: HashMap<u32, String> = HashMap::new();
    for i in 0..KILLS {
        let dir = base.join(format!("k{i}"));
        fs::create_dir(&dir)?;
        dirs.0.push(dir.clone());
        fs::write(dir.join("memory.limit_in_bytes"), (64u64 << 20).to_string())?;
        thread::sleep(Duration::from_millis(50));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec tail /dev/zero",
                dir.display()
            ))
            .spawn()?;
        victims.insert(child.id(), format!("{rel}/k{i}"));
        child.wait()?;
        // The kernel prints the OOM report header (with the cgroup paths)
        // for at most 10 kills per 5 s (oom_kill.c's oom_rs): stay below.
        thread::sleep(Duration::from_millis(600));
    }
    thread::sleep(Duration::from_secs(1));
    let log = agent.stop();
    let kernel = kill_times(&victims)?;
    let mut latencies = Vec::new();
    let mut attributed = 0;
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["message"] != "recorded OOM kill" {
            continue;
        }
        let Some(pid) = v["pid"].as_u64().map(|p| p as u32) else {
            continue;
        };
        let Some(path) = victims.get(&pid) else {
            continue;
        };
        if v["victim"]
            .as_str()
            .is_some_and(|s| s.contains(path.as_str()))
        {
            attributed += 1;
        }
        let (Some(ts), Some(killed)) = (v["timestamp"].as_str(), kernel.get(&pid)) else {
            continue;
        };
        let Ok(at) = humantime::parse_rfc3339_weak(ts.trim_end_matches('Z')) else {
            continue;
        };
        let ms = match at.duration_since(*killed) {
            Ok(d) => d.as_secs_f64() * 1e3,
            Err(e) => -e.duration().as_secs_f64() * 1e3,
        };
        latencies.push(ms);
    }
    latencies.sort_by(f64::total_cmp);
    if attributed < KILLS {
        let seen: Vec<&str> = log.lines().filter(|l| l.contains("OOM kill")).collect();
        eprintln!(
            "[{mode}] {attributed}/{KILLS} attributed; the agent logged:\n{}",
            seen.join("\n")
        );
    }
    Ok((mode, latencies, attributed))
}

/// Wall-clock time of each victim's `oom-kill:` line in /dev/kmsg.
fn kill_times(victims: &HashMap<u32, String>) -> Result<HashMap<u32, SystemTime>> {
    let boot = printk_epoch()?;
    let mut kmsg = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nonblock())
        .open("/dev/kmsg")
        .context("reading /dev/kmsg (needs CAP_SYSLOG)")?;
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.raw_os_error() == Some(32) => continue, // EPIPE: overwritten
            Err(e) => return Err(e.into()),
        };
        let rec = String::from_utf8_lossy(&buf[..n]);
        let Some((header, msg)) = rec.split_once(';') else {
            continue;
        };
        let Some(pid) = msg
            .split_once("oom-kill:")
            .and_then(|(_, s)| s.rsplit_once(",pid="))
            .and_then(|(_, p)| p.split(',').next()?.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if !victims.contains_key(&pid) {
            continue;
        }
        let Some(us) = header.split(',').nth(2).and_then(|t| t.parse::<u64>().ok()) else {
            continue;
        };
        out.insert(pid, boot + Duration::from_micros(us));
    }
    Ok(out)
}

/// Wall-clock time of printk's zero: printk timestamps run on the kernel's
/// local clock, which drifts from CLOCK_BOOTTIME by milliseconds, so a
/// marker record is written and its timestamp compared with the wall clock.
fn printk_epoch() -> Result<SystemTime> {
    let marker = format!("cgscope-bench-clock-{}", std::process::id());
    let before = SystemTime::now();
    fs::write("/dev/kmsg", format!("{marker}\n")).context("writing a marker to /dev/kmsg")?;
    let after = SystemTime::now();
    let mid = before + after.duration_since(before).unwrap_or_default() / 2;
    let mut kmsg = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nonblock())
        .open("/dev/kmsg")?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut found = None;
    loop {
        match kmsg.read(&mut buf) {
            Ok(n) if n > 0 => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                if rec.contains(&marker) {
                    found = rec.split(',').nth(2).and_then(|t| t.parse::<u64>().ok());
                }
            }
            Err(e) if e.raw_os_error() == Some(32) => continue,
            _ => break,
        }
    }
    let us = found.context("the clock marker did not appear in /dev/kmsg")?;
    Ok(mid - Duration::from_micros(us))
}

const fn libc_o_nonblock() -> i32 {
    0o4000
}
