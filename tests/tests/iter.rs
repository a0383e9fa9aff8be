//! The eBPF cgroup iterator against the kernel's own files: every value it
//! reads in the kernel must equal what the cgroup files say, read just
//! before and just after it (bracketed), for hundreds of real cgroups; and
//! an agent collecting with it must serve what one reading files serves.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tests::{
    agent_bin,
    cgroups::{wait_for, CgroupTree, Layout},
    expect_ebpf, require_root,
};

/// One `--dump-cgroup-stats` run: records by cgroup id, and the summary.
fn dump(dir: &Path) -> (HashMap<u64, Value>, Value) {
    let out = Command::new(agent_bin())
        .arg("--dump-cgroup-stats")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "--dump-cgroup-stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut records = HashMap::new();
    let mut summary = Value::Null;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["summary"] == true {
            summary = v;
        } else {
            records.insert(v["id"].as_u64().unwrap(), v);
        }
    }
    (records, summary)
}

fn read_u64(path: &Path) -> u64 {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Cgroup iterators (`iter/cgroup`) came with 6.1.
fn kernel_has_cgroup_iterator() -> bool {
    tests::kernel_at_least(6, 1)
}

/// Whether the iterator's tests run here. On a kernel without cgroup
/// iterators they assert the fallback instead: the dump fails and says why.
fn gate(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    if !expect_ebpf() {
        tests::skip(&format!(
            "{test}: CGSCOPE_EXPECT_EBPF is not set (run `cargo xtask test`)"
        ));
        return false;
    }
    if !kernel_has_cgroup_iterator() {
        let out = Command::new(agent_bin())
            .arg("--dump-cgroup-stats")
            .arg(tests::cgroups::ROOT)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a dump without cgroup iterators");
        assert!(
            stderr.contains("loading the cgroup iterator"),
            "the reason: {stderr}"
        );
        return false;
    }
    true
}

fn is_v2() -> bool {
    Layout::get() == Layout::V2
}

/// How many cgroups the values tests compare: `CGSCOPE_TEST_ITER_CGROUPS`,
/// else 300. The VM cells compare 100: each holds a process, an emulated
/// spawn is slow, and the scale is the host's to test.
fn values_cgroups() -> usize {
    std::env::var("CGSCOPE_TEST_ITER_CGROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

#[test]
fn iterator_values_equal_the_cgroup_files() {
    let test = "iterator_values_equal_the_cgroup_files";
    if !gate(test) {
        return;
    }
    if is_v2() {
        return v2_iterator_values_equal_the_cgroup_files();
    }
    let hs = ["memory", "cpuacct"];
    let tree = CgroupTree::new("iter", &hs);
    let n = values_cgroups();
    let ready = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    for i in 0..n {
        let rel = format!("c{i}");
        tree.mkdir(&rel).unwrap();
        if i % 3 == 0 {
            fs::write(
                tree.dir("memory", &rel).join("memory.limit_in_bytes"),
                format!("{}", (64 + i) << 20),
            )
            .unwrap();
        }
        // A tenth allocate and keep some memory; a tenth burn CPU; the rest
        // are idle.
        match i % 10 {
            1 => children.push(tree.spawn_in(&hs, &rel, &allocator(i, ready.path()))),
            2 => children.push(tree.spawn_in(
                &hs,
                &rel,
                "exec timeout 120 sh -c 'while :; do :; done'",
            )),
            _ => {}
        }
    }
    let cpu = |rel: &str| read_u64(&tree.dir("cpuacct", rel).join("cpuacct.usage"));
    let mem = |rel: &str, f: &str| read_u64(&tree.dir("memory", rel).join(f));
    let rels: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    // Memory usage goes up and down while the allocators start: compare
    // once it has held still (CPU usage only grows, so any time will do).
    let usages = || -> Vec<u64> {
        rels.iter()
            .map(|r| mem(r, "memory.usage_in_bytes"))
            .collect()
    };
    wait_allocated(ready.path(), n);
    let mut last = usages();
    wait_for("memory usage to settle", Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(500));
        let now = usages();
        let settled = settled(&last, &now);
        last = now;
        settled
    });
    // CPU usage, memory usage and peak of every cgroup, from its files.
    let files = || -> Vec<(u64, u64, u64)> {
        rels.iter()
            .map(|r| {
                (
                    cpu(r),
                    mem(r, "memory.usage_in_bytes"),
                    mem(r, "memory.max_usage_in_bytes"),
                )
            })
            .collect()
    };
    let before = files();
    let (memory, msum) = dump(&tree.dir("memory", ""));
    let (cpuacct, csum) = dump(&tree.dir("cpuacct", ""));
    let after = files();
    for s in [&msum, &csum] {
        assert_eq!(s["cgroups"], n + 1, "{s}");
        assert_eq!(s["overflow"], false, "{s}");
    }

    let ino = |h: &str, rel: &str| fs::metadata(tree.dir(h, rel)).unwrap().ino();
    let root_ino = ino("memory", "");
    let (mut busy, mut fluttered) = (0, 0);
    for (i, rel) in rels.iter().enumerate() {
        let m = &memory[&ino("memory", rel)];
        assert_eq!(m["parent_id"], root_ino, "{rel}: {m}");
        assert_eq!(m["level"], 2, "{rel}: {m}");
        assert_eq!(
            m["memory_limit_bytes"],
            mem(rel, "memory.limit_in_bytes"),
            "{rel}"
        );
        let (b, a) = (before[i], after[i]);
        let within = |what: &str, v: &Value, lo: u64, hi: u64| {
            let v = v.as_u64().unwrap();
            assert!(lo <= v && v <= hi, "{rel}: {what} {v} outside [{lo}, {hi}]");
        };
        // Usage may fall between the reads; the counters only grow.
        let usage = m["memory_usage_bytes"].as_u64().unwrap();
        let what = format!("{rel}: memory usage");
        usage_within(&what, usage, (b.1.min(a.1), b.1.max(a.1)), &mut fluttered);
        within("max usage", &m["memory_max_usage_bytes"], b.2, a.2);
        let c = &cpuacct[&ino("cpuacct", rel)];
        within("cpuacct", &c["cpuacct_usage_ns"], b.0, a.0);
        if b.0 > 0 {
            busy += 1;
        }
    }
    assert!(
        fluttered <= n / 10,
        "{fluttered} usages outside their reads"
    );
    // The test did what it says: CPU was used and memory held.
    assert!(busy >= n / 10, "{busy} cgroups used CPU");
    assert!(rels
        .iter()
        .any(|r| mem(r, "memory.usage_in_bytes") > 4 << 20));
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// cgroup2's values from the same kernel structures: memory usage, peak
/// and limit from the memcg's page counter, cpu.max and cpu.weight from the
/// task group, pids from the pids controller. CPU usage is an rstat sum the
/// iterator does not give there.
fn v2_iterator_values_equal_the_cgroup_files() {
    let tree = CgroupTree::new("iter", &["memory", "cpu", "pids"]);
    let n = values_cgroups();
    let ready = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    for i in 0..n {
        let rel = format!("c{i}");
        tree.mkdir(&rel).unwrap();
        let dir = tree.dir("memory", &rel);
        if i % 3 == 0 {
            fs::write(dir.join("memory.max"), format!("{}", (64 + i) << 20)).unwrap();
            fs::write(dir.join("cpu.max"), format!("{} 100000", 10_000 + i)).unwrap();
            fs::write(dir.join("cpu.weight"), format!("{}", 1 + i * 7)).unwrap();
            fs::write(dir.join("pids.max"), format!("{}", 50 + i)).unwrap();
        }
        if i % 10 == 1 {
            children.push(tree.spawn_in(&["memory"], &rel, &allocator(i, ready.path())));
        }
    }
    let rels: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let file = |rel: &str, f: &str| -> String {
        fs::read_to_string(tree.dir("memory", rel).join(f))
            .unwrap()
            .trim()
            .to_owned()
    };
    let num = |rel: &str, f: &str| file(rel, f).parse::<u64>().unwrap();
    let usages = || -> Vec<u64> { rels.iter().map(|r| num(r, "memory.current")).collect() };
    wait_allocated(ready.path(), n);
    let mut last = usages();
    wait_for("memory usage to settle", Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(500));
        let now = usages();
        let settled = settled(&last, &now);
        last = now;
        settled
    });
    let files = || -> Vec<(u64, u64)> {
        rels.iter()
            .map(|r| (num(r, "memory.current"), num(r, "memory.peak")))
            .collect()
    };
    let before = files();
    let (records, summary) = dump(&tree.dir("memory", ""));
    let after = files();
    assert_eq!(summary["cgroups"], n + 1, "{summary}");
    assert_eq!(summary["overflow"], false, "{summary}");
    let ino = |rel: &str| fs::metadata(tree.dir("memory", rel)).unwrap().ino();
    let root_ino = ino("");
    let mut fluttered = 0;
    for (i, rel) in rels.iter().enumerate() {
        let r = &records[&ino(rel)];
        assert_eq!(r["parent_id"], root_ino, "{rel}: {r}");
        assert_eq!(r["level"], 2, "{rel}: {r}");
        let within = |what: &str, key: &str, lo: u64, hi: u64| {
            let v = r[key]
                .as_u64()
                .unwrap_or_else(|| panic!("{rel}: no {key}: {r}"));
            assert!(lo <= v && v <= hi, "{rel}: {what} {v} outside [{lo}, {hi}]");
        };
        let (b, a) = (before[i], after[i]);
        let usage = r["memory_usage_bytes"].as_u64().unwrap();
        let what = format!("{rel}: memory.current");
        usage_within(&what, usage, (b.0.min(a.0), b.0.max(a.0)), &mut fluttered);
        within("memory.peak", "memory_max_usage_bytes", b.1, a.1);
        // The page counter's max is "max" at PAGE_COUNTER_MAX.
        let max = file(rel, "memory.max");
        let limit = r["memory_limit_bytes"].as_u64().unwrap();
        match max.parse::<u64>() {
            Ok(bytes) => assert_eq!(limit, bytes, "{rel}: memory.max"),
            Err(_) => assert!(max == "max" && limit > 1 << 60, "{rel}: {max} vs {limit}"),
        }
        // cpu.max is in µs, the task group's bandwidth in ns; RUNTIME_INF
        // is "max".
        let cpu_max = file(rel, "cpu.max");
        let (quota, period) = cpu_max.split_once(' ').unwrap();
        assert_eq!(
            r["cpu_period_ns"],
            period.parse::<u64>().unwrap() * 1000,
            "{rel}"
        );
        match quota.parse::<u64>() {
            Ok(us) => assert_eq!(r["cpu_quota_ns"], us * 1000, "{rel}: cpu.max {cpu_max}"),
            Err(_) => assert_eq!(r["cpu_quota_ns"], u64::MAX, "{rel}: cpu.max {cpu_max}"),
        }
        // cpu.weight is the kernel's rounding of the scaled-down shares.
        let shares = r["cpu_shares"].as_u64().unwrap() >> 10;
        let weight = ((shares * 100 + 512) / 1024).clamp(1, 10_000);
        assert_eq!(weight, num(rel, "cpu.weight"), "{rel}: cpu.weight");
        let pids_max = file(rel, "pids.max");
        let pids_limit = r["pids_limit"].as_u64().unwrap();
        match pids_max.parse::<u64>() {
            Ok(v) => assert_eq!(pids_limit, v, "{rel}: pids.max"),
            Err(_) => assert!(pids_limit > 1 << 22, "{rel}: pids.max max vs {pids_limit}"),
        }
        assert_eq!(r["pids_current"], num(rel, "pids.current"), "{rel}");
    }
    assert!(
        fluttered <= n / 10,
        "{fluttered} usages outside their reads"
    );
    // The test did what it says: memory was held.
    assert!(rels.iter().any(|r| num(r, "memory.current") > 4 << 20));
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn a_hierarchy_larger_than_a_seq_page_is_read_completely() {
    let test = "a_hierarchy_larger_than_a_seq_page_is_read_completely";
    if !gate(test) {
        return;
    }
    let tree = CgroupTree::new("iter-many", &["memory"]);
    let n = 2100;
    for i in 0..n {
        tree.mkdir(&format!("c{i}")).unwrap();
    }
    let (records, summary) = dump(&tree.dir("memory", ""));
    assert_eq!(summary["cgroups"], n + 1, "{summary}");
    assert_eq!(summary["overflow"], false);
    for i in [0, n / 2, n - 1] {
        let id = fs::metadata(tree.dir("memory", &format!("c{i}")))
            .unwrap()
            .ino();
        assert!(records.contains_key(&id), "c{i} missing");
    }
}

/// The memory cgroup's per-CPU charge stock: a page counter moves by up to
/// this much when another cgroup's charge on the same CPU drains the stock
/// (64 pages), whatever the cgroup itself does.
const CHARGE_BATCH: u64 = 64 * 4096;

/// khugepaged collapsing an allocator's pages charges the new 2 MiB huge
/// page before it frees the 512 pages it replaces: a transient the files
/// and the iterator each may or may not see.
const HUGE_PAGE: u64 = 2 << 20;

/// No cgroup's usage moved by more than the charge stock in half a second
/// (a small guest under TCG never holds exactly still).
fn settled(last: &[u64], now: &[u64]) -> bool {
    last.iter()
        .zip(now)
        .all(|(a, b)| a.abs_diff(*b) <= CHARGE_BATCH)
}

/// A tenth of the iterator tests' cgroups allocate 4 to 10 MiB and hold it;
/// each says so in `ready` when its memory is in place.
fn allocator(i: usize, ready: &Path) -> String {
    format!(
        "exec python3 -c 'import time; b = bytearray({} << 20); open(\"{}\", \"w\").close(); time.sleep(120)'",
        4 + i % 7,
        ready.join(format!("c{i}")).display()
    )
}

fn wait_allocated(ready: &Path, n: usize) {
    let want = (0..n).filter(|i| i % 10 == 1).count();
    wait_for(
        "the allocators to hold their memory",
        Duration::from_secs(90),
        || fs::read_dir(ready).map_or(0, |d| d.count()) == want,
    );
}

/// Usage read between two file reads: within them, or (for a few cgroups)
/// off by no more than the charge stock and a huge page's collapse; counts
/// those few.
fn usage_within(what: &str, v: u64, (lo, hi): (u64, u64), fluttered: &mut usize) {
    if lo <= v && v <= hi {
        return;
    }
    let slack = CHARGE_BATCH + HUGE_PAGE;
    assert!(
        lo.saturating_sub(slack) <= v && v <= hi + slack,
        "{what} {v} outside [{lo}, {hi}] by more than the charge stock and a huge page"
    );
    *fluttered += 1;
}

/// Each agent estimates a cgroup's creation from its first task's start
/// (clock ticks since boot) and its own reading of the boot time (the wall
/// clock minus CLOCK_BOOTTIME, two reads), so two agents may differ by the
/// time between those reads: microseconds on a host, up to tens of
/// milliseconds in an emulated guest (8.6 ms seen in the 6.1 v2 cell).
/// cAdvisor serves the same estimate under both names.
const CREATION: &[&str] = &[
    "container_creation_time_seconds",
    "container_start_time_seconds",
];

/// `series line → value` for every series of the tree's cgroups, except
/// what two agents cannot share: when each last saw a container, when it
/// estimates it was created, and network counters (these cgroups' tasks
/// are in the host's namespace, whose traffic never stops).
fn tree_series(body: &str, prefix: &str) -> HashMap<String, String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&format!("id=\"{prefix}")))
        .filter(|l| !l.starts_with("container_last_seen") && !l.starts_with("container_network_"))
        .filter(|l| !CREATION.iter().any(|c| l.starts_with(c)))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.to_owned()))
        })
        .collect()
}

#[test]
fn files_and_iterator_collectors_serve_the_same_metrics() {
    let test = "files_and_iterator_collectors_serve_the_same_metrics";
    if !gate(test) {
        return;
    }
    let hs = tests::cgroups::HIERARCHIES;
    let tree = CgroupTree::new("collectors", hs);
    let v2 = is_v2();
    let mut children = Vec::new();
    for i in 0..40 {
        let rel = format!("c{i}");
        tree.mkdir(&rel).unwrap();
        let memory = tree.dir("memory", &rel);
        let cpu = tree.dir("cpu", &rel);
        let pids_max = tree.dir("pids", &rel).join("pids.max");
        let write = |path: PathBuf, v: String| {
            fs::write(&path, v).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        if i % 4 == 0 && v2 {
            write(memory.join("memory.max"), format!("{}", (64 + i) << 20));
            let swap = memory.join("memory.swap.max");
            if swap.exists() {
                write(swap, format!("{}", (16 + i) << 20));
            }
            write(pids_max, format!("{}", 50 + i));
        } else if i % 4 == 0 {
            write(
                memory.join("memory.limit_in_bytes"),
                format!("{}", (64 + i) << 20),
            );
            write(
                memory.join("memory.memsw.limit_in_bytes"),
                format!("{}", (128 + i) << 20),
            );
            let soft = memory.join("memory.soft_limit_in_bytes");
            write(soft, format!("{}", (32 + i) << 20));
            write(pids_max, format!("{}", 50 + i));
        }
        // Some burn CPU against a quota: throttling counters move.
        if i % 8 == 1 && v2 {
            write(cpu.join("cpu.max"), "20000 100000".to_owned());
            write(cpu.join("cpu.weight"), format!("{}", 25 + i));
        } else if i % 8 == 1 {
            write(cpu.join("cpu.cfs_quota_us"), "20000".to_owned());
            write(cpu.join("cpu.shares"), format!("{}", 256 + i));
        }
        // Every cgroup ends up still, so both agents can be compared
        // exactly: some first burn CPU for a while, some hold memory.
        let script = match i % 4 {
            1 => "timeout 2 sh -c 'while :; do :; done'; exec sleep 300".to_owned(),
            2 => format!(
                "exec python3 -c 'import time; b = bytearray({} << 20); time.sleep(300)'",
                2 + i % 5
            ),
            _ => "exec sleep 300".to_owned(),
        };
        children.push(tree.spawn_in(&["cpu", "cpuacct", "memory", "pids"], &rel, &script));
    }
    // Only this tree (and `/`), so the files read per collection below
    // are this tree's, not those of whatever else runs meanwhile.
    let prefix = tree.path("");
    let only = prefix.as_str();
    let args = |mode: &'static str| {
        [
            "--collector",
            mode,
            "--housekeeping-interval",
            "1s",
            "--max-housekeeping-interval",
            "1s",
            "--raw-cgroup-prefix-whitelist",
            only,
        ]
    };
    let files = tests::Agent::start(&args("files"));
    let iter = tests::Agent::start(&args("iter"));
    let mode = |a: &tests::Agent, m: &str| {
        let labels = [("subsystem", "collector"), ("mode", m)];
        a.scrape_agent().value("cgscope_mode", &labels)
    };
    assert_eq!(mode(&files, "files"), Some(1.0));
    assert_eq!(mode(&iter, "iter"), Some(1.0), "{}", iter.log());
    // The self-check saw the tree's cgroups agree on every value.
    let log = iter.log();
    let checked = log
        .lines()
        .find(|l| l.contains("agrees with the cgroup files"))
        .unwrap_or_else(|| panic!("the self-check did not pass:\n{log}"));
    // cgroup2 has no failcnt, kernel usage or soft limit files, and its
    // cpu.stat is read for the usage anyway (throttling comes with it).
    let swap_accounting = tree.dir("memory", "c0").join("memory.swap.max").exists();
    let values: &[&str] = if v2 && !swap_accounting {
        &[
            "memory_usage",
            "memory_max_usage",
            "memory_limit",
            "pids_current",
            "pids_max",
            "cpu_quota",
            "cpu_period",
            "cpu_shares",
        ]
    } else if v2 {
        &[
            "memory_usage",
            "memory_max_usage",
            "memory_limit",
            "memory_swap_limit",
            "swap_usage",
            "pids_current",
            "pids_max",
            "cpu_quota",
            "cpu_period",
            "cpu_shares",
        ]
    } else {
        &[
            "cpu_usage",
            "memory_usage",
            "memory_max_usage",
            "memory_limit",
            "memory_swap_limit",
            "memory_failcnt",
            "memory_kernel",
            "memory_reservation",
            "pids_current",
            "pids_max",
            "cpu_periods",
            "cpu_throttled_periods",
            "cpu_throttled_time",
            "cpu_bursts",
            "cpu_burst_time",
            "cpu_quota",
            "cpu_period",
            "cpu_shares",
        ]
    };
    let line: Value = serde_json::from_str(checked).unwrap();
    let values_logged = line["values"].as_str().unwrap_or_default();
    for value in values {
        assert!(
            values_logged.split(',').any(|v| v == *value),
            "{value} not checked: {checked}"
        );
    }

    // Each series must, at some point, show the files agent's value twice
    // in a row with the iterator agent's value in between: equal to both,
    // or, for a value that moves one way (page cache reclaimed, memory
    // mapped), between the two. A value the iterator gets wrong does not
    // fall between two correct readings taken around it.
    let mut pending: Option<HashMap<String, (String, String)>> = None;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(1500));
        let a1 = tree_series(&files.scrape().0, &prefix);
        let b = tree_series(&iter.scrape().0, &prefix);
        let a2 = tree_series(&files.scrape().0, &prefix);
        if a1.len() < 40 * 10 || b.len() != a1.len() {
            continue;
        }
        let left = pending
            .get_or_insert_with(|| a1.keys().map(|k| (k.clone(), Default::default())).collect());
        left.retain(|k, last| {
            let (x, y, z) = (a1.get(k), b.get(k), a2.get(k));
            if x.is_some() && x == y && y == z {
                return false;
            }
            let num = |v: Option<&String>| v.and_then(|v| v.parse::<f64>().ok());
            if let (Some(x), Some(y), Some(z)) = (num(x), num(y), num(z)) {
                if x != z && x.min(z) <= y && y <= x.max(z) {
                    return false;
                }
            }
            *last = (format!("{x:?} then {z:?}"), format!("{y:?}"));
            true
        });
        if left.is_empty() {
            break;
        }
    }
    let left = pending.expect("both agents served the tree's cgroups");
    let mut shown: Vec<_> = left.iter().take(10).collect();
    shown.sort();
    assert!(
        left.is_empty(),
        "{} series differ (files agent, iterator agent): {shown:#?}",
        left.len()
    );

    // Creation times agree to within the two boot-time estimates' jitter;
    // a value from the wrong cgroup or clock is off by seconds.
    for name in CREATION {
        let created = |a: &tests::Agent| {
            let m = a.scrape();
            m.ids(name)
                .into_iter()
                .filter(|id| id.starts_with(&prefix))
                .map(|id| {
                    let v = m.value(name, &[("id", &id)]).unwrap();
                    (id, v)
                })
                .collect::<HashMap<_, _>>()
        };
        let (cf, ci) = (created(&files), created(&iter));
        assert!(cf.len() >= 40, "{name}: {cf:?}");
        for (id, t) in &cf {
            let other = ci
                .get(id)
                .unwrap_or_else(|| panic!("{id}: no {name} from the iterator agent"));
            assert!((t - other).abs() < 0.05, "{id}: {name} {t} and {other}");
        }
    }

    // The iterator agent really read fewer files for the same work.
    let counter = |a: &tests::Agent, name: &str| a.scrape_agent().value(name, &[]).unwrap_or(0.0);
    let per = |a: &tests::Agent| {
        counter(a, "cgscope_collection_files_read_total") / counter(a, "cgscope_collections_total")
    };
    let (pf, pi) = (per(&files), per(&iter));
    // Per container: v1 skips 14 files, cgroup2 9 (its cpu.stat stays).
    let saved = if v2 { 6.0 } else { 10.0 };
    assert!(
        pi < pf - saved,
        "files per collection: files {pf:.1}, iter {pi:.1}"
    );
    assert!(counter(&iter, "cgscope_collector_iter_cgroups_total") > 40.0);
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `--collector auto` takes the iterator where the kernel has cgroup
/// iterators, and says why not and reads files where it has none; asked
/// for by name there, the agent refuses to start and says why.
#[test]
fn the_collector_takes_the_iterator_only_where_the_kernel_has_one() {
    let test = "the_collector_takes_the_iterator_only_where_the_kernel_has_one";
    if !require_root(test) {
        return;
    }
    if !expect_ebpf() {
        tests::skip(&format!(
            "{test}: CGSCOPE_EXPECT_EBPF is not set (run `cargo xtask test`)"
        ));
        return;
    }
    let tree = CgroupTree::new("iter-mode", &["memory", "pids"]);
    for i in 0..4 {
        tree.mkdir(&format!("c{i}")).unwrap();
    }
    let prefix = tree.path("");
    let agent = tests::Agent::start(&["--raw-cgroup-prefix-whitelist", &prefix]);
    let mode = |m: &str| {
        let labels = [("subsystem", "collector"), ("mode", m)];
        agent.scrape_agent().value("cgscope_mode", &labels)
    };
    if kernel_has_cgroup_iterator() {
        assert_eq!(mode("iter"), Some(1.0), "{}", agent.log());
        return;
    }
    assert_eq!(mode("files"), Some(1.0), "{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains("eBPF cgroup iterator not used"),
        "the fallback is logged:\n{log}"
    );
    let out = Command::new(agent_bin())
        .args(["--collector", "iter", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--collector iter started: {stderr}");
    assert!(
        stderr.contains("--collector iter") && stderr.contains("cgroup_stats"),
        "the iterator program named as the reason: {stderr}"
    );
}
