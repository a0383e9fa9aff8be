//! The eBPF cgroup iterator against the kernel's own files: every value it
//! reads in the kernel must equal what the cgroup files say, read just
//! before and just after it (bracketed), for hundreds of real cgroups; and
//! an agent collecting with it must serve what one reading files serves.

use std::{
    collections::HashMap, fs, os::unix::fs::MetadataExt as _, path::Path, process::Command,
    time::Duration,
};

use serde_json::Value;
use tests::{
    agent_bin,
    cgroups::{wait_for, CgroupTree},
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
    true
}

#[test]
fn iterator_values_equal_the_cgroup_files() {
    let test = "iterator_values_equal_the_cgroup_files";
    if !gate(test) {
        return;
    }
    let hs = ["memory", "cpuacct"];
    let tree = CgroupTree::new("iter", &hs);
    let n = 300;
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
            1 => children.push(tree.spawn_in(
                &hs,
                &rel,
                &format!(
                    "exec python3 -c 'import time; b = bytearray({} << 20); time.sleep(120)'",
                    4 + i % 7
                ),
            )),
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
    let mut last = usages();
    wait_for("memory usage to settle", Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(500));
        let now = usages();
        let settled = now == last;
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
    let mut busy = 0;
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
        let usage = &m["memory_usage_bytes"];
        within("memory usage", usage, b.1.min(a.1), b.1.max(a.1));
        within("max usage", &m["memory_max_usage_bytes"], b.2, a.2);
        let c = &cpuacct[&ino("cpuacct", rel)];
        within("cpuacct", &c["cpuacct_usage_ns"], b.0, a.0);
        if b.0 > 0 {
            busy += 1;
        }
    }
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

/// `series line → value` for every series of the tree's cgroups, except
/// what two agents cannot share: when each last saw a container, and
/// network counters (these cgroups' tasks are in the host's namespace,
/// whose traffic never stops).
fn tree_series(body: &str, prefix: &str) -> HashMap<String, String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&format!("id=\"{prefix}")))
        .filter(|l| !l.starts_with("container_last_seen") && !l.starts_with("container_network_"))
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
    let mut children = Vec::new();
    for i in 0..40 {
        let rel = format!("c{i}");
        tree.mkdir(&rel).unwrap();
        let memory = tree.dir("memory", &rel);
        if i % 4 == 0 {
            fs::write(
                memory.join("memory.limit_in_bytes"),
                format!("{}", (64 + i) << 20),
            )
            .unwrap();
            fs::write(
                memory.join("memory.memsw.limit_in_bytes"),
                format!("{}", (128 + i) << 20),
            )
            .unwrap();
            let soft = memory.join("memory.soft_limit_in_bytes");
            fs::write(soft, format!("{}", (32 + i) << 20)).unwrap();
            let pids_max = tree.dir("pids", &rel).join("pids.max");
            fs::write(pids_max, format!("{}", 50 + i)).unwrap();
        }
        // Some burn CPU against a quota: throttling counters move.
        if i % 8 == 1 {
            let cpu = tree.dir("cpu", &rel);
            fs::write(cpu.join("cpu.cfs_quota_us"), "20000").unwrap();
            fs::write(cpu.join("cpu.shares"), format!("{}", 256 + i)).unwrap();
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
    for value in [
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
    ] {
        assert!(checked.contains(value), "{value} not checked: {checked}");
    }

    // Each series must, at some point, show the files agent's value twice
    // in a row with the iterator agent's value in between: a value the
    // iterator gets wrong never does.
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

    // The iterator agent really read fewer files for the same work.
    let counter = |a: &tests::Agent, name: &str| a.scrape_agent().value(name, &[]).unwrap_or(0.0);
    let per = |a: &tests::Agent| {
        counter(a, "cgscope_collection_files_read_total") / counter(a, "cgscope_collections_total")
    };
    let (pf, pi) = (per(&files), per(&iter));
    assert!(
        pi < pf - 10.0,
        "files per collection: files {pf:.1}, iter {pi:.1}"
    );
    assert!(counter(&iter, "cgscope_collector_iter_cgroups_total") > 40.0);
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}
