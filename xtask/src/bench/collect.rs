//! Collection cost: agent CPU per container per collection and agent RSS
//! at 100, 1,000 and 5,000 cgroups (each with a sleeping task), with
//! `--collector files` and `--collector iter` in the same run, against the
//! floor: a loop that only opens and reads the files-only path's files once.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::BenchAgent;

const ROOT: &str = "/sys/fs/cgroup";

/// What one layout's collection reads, and what of it the iterator covers.
pub(super) struct Shape {
    name: &'static str,
    /// Hierarchy directories under [`ROOT`] (`""`: the cgroup2 root).
    hierarchies: &'static [&'static str],
    /// The files one collection reads with the kubelet's metric groups
    /// (cgscope_collection_files_read_total / collections, printed beside
    /// the result, confirms the count).
    files: &'static [(&'static str, &'static str)],
    /// The files whose values the eBPF cgroup iterator reads in the kernel.
    iter_files: &'static [(&'static str, &'static str)],
    /// The hierarchies the iterator walks.
    iter_hierarchies: &'static [&'static str],
}

const HYBRID: Shape = Shape {
    name: "hybrid",
    hierarchies: &["cpu", "cpuacct", "memory", "blkio", "pids", "unified"],
    files: &[
        ("cpuacct", "cpuacct.usage"),
        ("cpuacct", "cpuacct.stat"),
        ("cpu", "cpu.stat"),
        ("cpu", "cpu.cfs_quota_us"),
        ("cpu", "cpu.cfs_period_us"),
        ("cpu", "cpu.shares"),
        ("memory", "memory.usage_in_bytes"),
        ("memory", "memory.max_usage_in_bytes"),
        ("memory", "memory.failcnt"),
        ("memory", "memory.kmem.usage_in_bytes"),
        ("memory", "memory.stat"),
        ("memory", "memory.oom_control"),
        ("memory", "memory.limit_in_bytes"),
        ("memory", "memory.memsw.limit_in_bytes"),
        ("memory", "memory.soft_limit_in_bytes"),
        ("blkio", "blkio.throttle.io_service_bytes_recursive"),
        ("blkio", "blkio.throttle.io_serviced_recursive"),
        ("blkio", "blkio.bfq.io_service_bytes_recursive"),
        ("blkio", "blkio.bfq.io_serviced_recursive"),
        ("pids", "pids.max"),
        ("pids", "pids.current"),
        ("unified", "cpu.pressure"),
        ("unified", "memory.pressure"),
        ("unified", "io.pressure"),
        ("cpu", "cgroup.procs"),
    ],
    iter_files: &[
        ("memory", "memory.usage_in_bytes"),
        ("memory", "memory.max_usage_in_bytes"),
        ("memory", "memory.failcnt"),
        ("memory", "memory.kmem.usage_in_bytes"),
        ("memory", "memory.limit_in_bytes"),
        ("memory", "memory.memsw.limit_in_bytes"),
        ("memory", "memory.soft_limit_in_bytes"),
        ("cpuacct", "cpuacct.usage"),
        ("pids", "pids.current"),
        ("pids", "pids.max"),
        ("cpu", "cpu.stat"),
        ("cpu", "cpu.cfs_quota_us"),
        ("cpu", "cpu.cfs_period_us"),
        ("cpu", "cpu.shares"),
    ],
    iter_hierarchies: &["memory", "cpuacct", "pids", "cpu"],
};

/// Pure cgroup2: one directory per cgroup; cpu.stat stays a file (its
/// usage is an rstat sum the iterator cannot flush).
const V2: Shape = Shape {
    name: "v2",
    hierarchies: &[""],
    files: &[
        ("", "cpu.stat"),
        ("", "cpu.max"),
        ("", "cpu.weight"),
        ("", "memory.current"),
        ("", "memory.peak"),
        ("", "memory.swap.current"),
        ("", "memory.stat"),
        ("", "memory.events"),
        ("", "memory.events.local"),
        ("", "memory.max"),
        ("", "memory.swap.max"),
        ("", "memory.min"),
        ("", "io.stat"),
        ("", "pids.max"),
        ("", "pids.current"),
        ("", "cpu.pressure"),
        ("", "memory.pressure"),
        ("", "io.pressure"),
        ("", "cgroup.procs"),
    ],
    iter_files: &[
        ("", "memory.current"),
        ("", "memory.peak"),
        ("", "memory.max"),
        ("", "memory.swap.current"),
        ("", "memory.swap.max"),
        ("", "pids.current"),
        ("", "pids.max"),
        ("", "cpu.max"),
        ("", "cpu.weight"),
    ],
    iter_hierarchies: &[""],
};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

impl Shape {
    /// This machine's layout (hybrid and pure v1 share the v1 files; a
    /// hierarchy v1 lacks is simply not there to read).
    pub(super) fn get() -> &'static Shape {
        // SAFETY: a NUL-terminated path and a zeroed out-parameter.
        let v2 = unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            libc::statfs(c"/sys/fs/cgroup".as_ptr(), &mut st) == 0
                && st.f_type as i64 == CGROUP2_SUPER_MAGIC
        };
        if v2 {
            &V2
        } else {
            &HYBRID
        }
    }

    fn hierarchies(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.hierarchies
            .iter()
            .copied()
            .filter(|h| Path::new(ROOT).join(h).is_dir())
    }
}

/// Cgroups and their sleeping tasks; all removed on drop.
pub(super) struct Fleet {
    shape: &'static Shape,
    prefix: String,
    n: usize,
    sleepers: Vec<Child>,
}

impl Fleet {
    pub(super) fn new(n: usize, threads: usize) -> Result<Self> {
        let prefix = format!("cgscope-bench-collect-{}-{n}", std::process::id());
        let shape = Shape::get();
        let mut fleet = Self {
            shape,
            prefix,
            n: 0,
            sleepers: Vec::new(),
        };
        for h in shape.hierarchies() {
            let top = Path::new(ROOT).join(h).join(&fleet.prefix);
            fs::create_dir(&top)?;
            if h.is_empty() {
                // Its children get the controllers the root hands down.
                let have = fs::read_to_string(top.join("cgroup.controllers"))?;
                let enable: Vec<String> =
                    have.split_whitespace().map(|c| format!("+{c}")).collect();
                fs::write(top.join("cgroup.subtree_control"), enable.join(" "))?;
            }
        }
        for i in 0..n {
            for h in shape.hierarchies() {
                fs::create_dir(fleet.dir(h, i))?;
            }
            fleet.n = i + 1;
            let child = if threads > 1 {
                Command::new("python3")
                    .arg("-c")
                    .arg(format!(
                        "import threading, time\n[threading.Thread(target=time.sleep, args=(3600,), daemon=True).start() for _ in range({})]\ntime.sleep(3600)",
                        threads - 1
                    ))
                    .stdout(Stdio::null())
                    .spawn()?
            } else {
                Command::new("sleep").arg("3600").spawn()?
            };
            for h in shape.hierarchies() {
                fs::write(fleet.dir(h, i).join("cgroup.procs"), child.id().to_string())?;
            }
            fleet.sleepers.push(child);
        }
        Ok(fleet)
    }

    fn dir(&self, h: &str, i: usize) -> PathBuf {
        Path::new(ROOT)
            .join(h)
            .join(&self.prefix)
            .join(format!("c{i}"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.sleepers {
            let _ = c.kill();
            let _ = c.wait();
        }
        thread::sleep(Duration::from_millis(200));
        for h in self.shape.hierarchies() {
            for i in 0..self.n {
                let _ = fs::remove_dir(self.dir(h, i));
            }
            let _ = fs::remove_dir(Path::new(ROOT).join(h).join(&self.prefix));
        }
    }
}

fn cpu_seconds_self() -> f64 {
    // SAFETY: getrusage fills a zeroed struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    (u.ru_utime.tv_sec + u.ru_stime.tv_sec) as f64
        + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) as f64 / 1e6
}

/// CPU seconds of a process (utime + stime) from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

pub(super) fn metric(agent: &BenchAgent, name: &str) -> f64 {
    agent
        .get("/metrics/agent")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Opens and reads `files` of cgroup `i` of the fleet once.
fn read_files(fleet: &Fleet, i: usize, files: &[(&str, &str)], buf: &mut Vec<u8>) {
    for (h, file) in files {
        buf.clear();
        if let Ok(mut f) = fs::File::open(fleet.dir(h, i).join(file)) {
            let _ = f.read_to_end(buf);
        }
    }
}

/// The floor: open and read every file once per cgroup, plus the fd
/// directory listing; µs of CPU per cgroup.
fn floor(fleet: &Fleet) -> f64 {
    let mut buf = Vec::with_capacity(8192);
    let start = cpu_seconds_self();
    for i in 0..fleet.n {
        read_files(fleet, i, fleet.shape.files, &mut buf);
        let pid = fleet.sleepers[i].id();
        let _ = fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count());
        let _ = fs::metadata(format!("/proc/{pid}/ns/net"));
    }
    (cpu_seconds_self() - start) / fleet.n as f64 * 1e6
}

struct Row {
    case: String,
    floor_us: f64,
    /// `--collector files`, then `--collector iter`.
    agents: [AgentCost; 2],
    /// The eBPF cgroup iterator against the files it covers, µs per cgroup,
    /// and the longest pass's wall time in ms (the kernel holds
    /// cgroup_mutex for all of it: cgroup creation waits).
    iter: Option<(f64, f64, f64)>,
}

/// µs of CPU per cgroup: one iterator pass per hierarchy (`cgscope
/// --dump-cgroup-stats`, its median of five passes) and reading
/// the files it covers; and the longest pass's wall time in ms.
fn iter_vs_files(bin: &Path, fleet: &Fleet) -> Result<(f64, f64, f64)> {
    let mut buf = Vec::with_capacity(4096);
    let mut files = || {
        let start = cpu_seconds_self();
        for i in 0..fleet.n {
            read_files(fleet, i, fleet.shape.iter_files, &mut buf);
        }
        cpu_seconds_self() - start
    };
    let _ = files();
    let files_us = files() / fleet.n as f64 * 1e6;
    let (mut iter_us, mut wall_ms) = (0.0, 0.0f64);
    for h in fleet.shape.iter_hierarchies {
        let out = Command::new(bin)
            .arg("--dump-cgroup-stats")
            .arg(Path::new(ROOT).join(h).join(&fleet.prefix))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let summary: serde_json::Value = text
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .context("--dump-cgroup-stats printed no summary")?;
        iter_us += summary["pass_cpu_us"].as_f64().unwrap_or(f64::NAN);
        wall_ms = wall_ms.max(summary["pass_wall_us"].as_f64().unwrap_or(f64::NAN) / 1e3);
    }
    Ok((iter_us / fleet.n as f64, files_us, wall_ms))
}

/// The fleets measured on this machine: (cgroups, threads per cgroup).
pub const SIZES: &[(usize, usize)] = &[(100, 1), (1000, 1), (5000, 1), (200, 50)];

pub fn run(bin: &Path, sizes: &[(usize, usize)]) -> Result<()> {
    let shape = Shape::get();
    let mut rows = Vec::new();
    for &(n, threads) in sizes {
        rows.push(measure(bin, n, threads).with_context(|| format!("{n} cgroups"))?);
    }
    println!();
    println!("layout: {}", shape.name);
    println!("collection cost per container per collection, whole agent (target: files within 1.5x of the floor, iter under the floor; RSS < 64 MiB at 5,000)");
    println!("| cgroups | collector | agent CPU µs | floor µs | ratio | files/collection | iterator passes/round | agent RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        for (mode, a) in ["files", "iter"].iter().zip(&r.agents) {
            println!(
                "| {} | {mode} | {:.0} | {:.0} | {:.2} | {:.1} | {} | {:.1} |",
                r.case,
                a.cpu_us,
                r.floor_us,
                a.cpu_us / r.floor_us,
                a.files,
                if *mode == "iter" {
                    format!("{:.1}", a.passes_per_round)
                } else {
                    "-".to_owned()
                },
                a.rss
            );
        }
    }
    println!();
    let covered: Vec<&str> = shape.iter_files.iter().map(|(_, f)| *f).collect();
    println!(
        "eBPF cgroup iterator vs reading the files it covers ({}), CPU µs per cgroup (target: iterator 10x cheaper)",
        covered.join(", ")
    );
    println!("(pass ms: one hierarchy's walk, during which the kernel holds cgroup_mutex)");
    println!("| cgroups | iterator µs | files µs | files / iterator | pass ms |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        if let Some((iter, files, wall)) = r.iter {
            println!(
                "| {} | {iter:.2} | {files:.1} | {:.0} | {wall:.1} |",
                r.case,
                files / iter
            );
        }
    }
    Ok(())
}

fn measure(bin: &Path, n: usize, threads: usize) -> Result<Row> {
    eprintln!("bench collect: creating {n} cgroups with a sleeping task each ({threads} threads)");
    let fleet = Fleet::new(n, threads)?;
    // Warm the page cache of the kernel structures once, then measure.
    let _ = floor(&fleet);
    let floor_us = floor(&fleet);
    let iter = iter_vs_files(bin, &fleet)
        .inspect_err(|e| eprintln!("bench collect: no iterator numbers: {e:#}"))
        .ok();
    Ok(Row {
        case: if threads > 1 {
            format!("{n} × {threads} threads")
        } else {
            n.to_string()
        },
        floor_us,
        agents: [agent_cost(bin, n, "files")?, agent_cost(bin, n, "iter")?],
        iter,
    })
}

/// One agent's cost over 20 s of steady collection.
struct AgentCost {
    cpu_us: f64,
    files: f64,
    rss: f64,
    /// Whole-hierarchy passes per housekeeping round (iterator only).
    passes_per_round: f64,
}

const ROUND: Duration = Duration::from_secs(2);

fn agent_cost(bin: &Path, n: usize, collector: &str) -> Result<AgentCost> {
    let round = format!("{}s", ROUND.as_secs());
    let agent = BenchAgent::start(
        bin,
        &[
            "--collector",
            collector,
            "--housekeeping-interval",
            &round,
            "--max-housekeeping-interval",
            &round,
        ],
    )?;
    let mode = agent.get("/metrics/agent").unwrap_or_default();
    if !mode.contains(&format!(
        "cgscope_mode{{subsystem=\"collector\",mode=\"{collector}\"}} 1"
    )) {
        anyhow::bail!(
            "--collector {collector} did not start in that mode; log: {}",
            agent.log.display()
        );
    }
    let pid = agent.pid();
    // Warm-up: every container collected at least twice.
    for _ in 0..120 {
        if metric(&agent, "cgscope_collections_total") >= 2.0 * n as f64 {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    let passes = |a: &BenchAgent| {
        a.get("/metrics/agent")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("cgscope_collector_iter_passes_total{scope=\"hierarchy\"} ")
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let sample = |a: &BenchAgent| {
        (
            cpu_seconds(pid),
            metric(a, "cgscope_collections_total"),
            metric(a, "cgscope_collection_files_read_total"),
            passes(a),
        )
    };
    let window = Duration::from_secs(20);
    let (c0, k0, f0, p0) = sample(&agent);
    thread::sleep(window);
    let (c1, k1, f1, p1) = sample(&agent);
    let rss = rss_mib(pid);
    drop(agent);
    let collections = (k1 - k0).max(1.0);
    Ok(AgentCost {
        cpu_us: (c1 - c0) / collections * 1e6,
        files: (f1 - f0) / collections,
        rss,
        passes_per_round: (p1 - p0) / (window.as_secs_f64() / ROUND.as_secs_f64()),
    })
}
