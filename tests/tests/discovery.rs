//! Discovery end to end: real cgroups on this machine's hierarchies, the
//! real agent, in eBPF and in inotify mode.

use std::time::{Duration, Instant};

use tests::{
    cgroups::{wait_for, CgroupTree},
    expect_ebpf, require_root, Agent,
};

const HIERARCHIES: &[&str] = &["cpu", "memory", "pids", "unified"];

fn modes(test: &str) -> Vec<&'static str> {
    if !require_root(test) {
        return vec![];
    }
    if expect_ebpf() {
        vec!["ebpf", "inotify"]
    } else {
        eprintln!("{test}: CGSCOPE_EXPECT_EBPF not set, testing inotify only");
        vec!["inotify"]
    }
}

/// [`modes`] plus `ebpf-classic`: the classic cgroup tracepoints (what
/// kernels without BTF get) on a kernel that also offers `tp_btf`.
fn modes_with_classic(test: &str) -> Vec<&'static str> {
    let mut m = modes(test);
    if m.contains(&"ebpf") {
        m.insert(1, "ebpf-classic");
    }
    m
}

/// How many cgroups the burst test makes: `CGSCOPE_TEST_BURST`, else
/// 5,000. The VM cells make 1,000: an emulated mkdir is some twenty times
/// slower, and the scale is the host's to test.
fn burst_size() -> usize {
    std::env::var("CGSCOPE_TEST_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
}

fn live_ids_under(agent: &Agent, prefix: &str) -> Vec<String> {
    agent
        .scrape()
        .ids("container_last_seen")
        .into_iter()
        .filter(|id| id == prefix || id.starts_with(&format!("{prefix}/")))
        .collect()
}

#[test]
fn nested_cgroups_appear_with_their_path_and_leave_after_retention() {
    for mode in
        modes_with_classic("nested_cgroups_appear_with_their_path_and_leave_after_retention")
    {
        let source = mode.trim_end_matches("-classic");
        // Walks only at start: what appears later was found by the event source.
        let mut args = vec![
            "--discovery",
            source,
            "--container-retention",
            "3s",
            "--global-housekeeping-interval",
            "1h",
        ];
        if mode == "ebpf-classic" {
            args.push("--ebpf-classic-tracepoints");
        }
        let agent = Agent::start(&args);
        let tree = CgroupTree::new(&format!("nested-{mode}"), HIERARCHIES);
        let mut expected = vec![tree.path("")];
        for g in 0..20 {
            let group = format!("g{g:02}");
            tree.mkdir(&group).unwrap();
            expected.push(tree.path(&group));
            for c in 0..9 {
                let child = format!("{group}/c{c}");
                tree.mkdir(&child).unwrap();
                expected.push(tree.path(&child));
            }
        }
        expected.sort();
        assert_eq!(expected.len(), 201);
        wait_for(
            &format!("[{mode}] 201 cgroups in /metrics"),
            Duration::from_secs(20),
            || live_ids_under(&agent, &tree.prefix) == expected,
        );
        let m = agent.scrape();
        assert_eq!(
            m.value(
                "cgscope_mode",
                &[("subsystem", "discovery"), ("mode", source)]
            ),
            Some(1.0)
        );
        let program = if mode == "ebpf-classic" {
            "\"program\":\"cgroup_mkdir\""
        } else {
            "\"program\":\"cgroup_mkdir_btf\""
        };
        let has_btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
        assert!(
            source != "ebpf" || !has_btf || agent.log().contains(program),
            "[{mode}] {program}:\n{}",
            agent.log()
        );
        assert_eq!(
            m.value("cgscope_discovery_walks_total", &[]),
            Some(1.0),
            "only the start walk ran"
        );
        assert_eq!(
            m.value("cgscope_discovery_repairs_total", &[("kind", "added")]),
            Some(0.0)
        );
        let start = m
            .value(
                "container_start_time_seconds",
                &[("id", &tree.path("g00/c0"))],
            )
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            (now - start).abs() < 60.0,
            "start time {start} is about now ({now})"
        );

        // Remove everything, deepest first.
        for g in 0..20 {
            for c in 0..9 {
                tree.rmdir(&format!("g{g:02}/c{c}")).unwrap();
            }
            tree.rmdir(&format!("g{g:02}")).unwrap();
        }
        tree.rmdir("").unwrap();
        let removed_at = Instant::now();
        // Still scrapeable within the retention, with last_seen frozen: the
        // tree's root, removed last (the 200 removals before it may take
        // longer than the retention in an emulated guest).
        let m = agent.scrape();
        let seen = m.value("container_last_seen", &[("id", &tree.path(""))]);
        assert!(
            seen.is_some(),
            "[{mode}] removed containers stay for the retention"
        );
        wait_for(
            &format!("[{mode}] removed cgroups leave /metrics"),
            Duration::from_secs(20),
            || live_ids_under(&agent, &tree.prefix).is_empty(),
        );
        assert!(
            removed_at.elapsed() >= Duration::from_secs(2),
            "[{mode}] series must not vanish before the retention ({:?})",
            removed_at.elapsed()
        );
        let m = agent.scrape();
        assert!(
            m.value(
                "cgscope_container_lifecycle_events_total",
                &[("event", "deletion")]
            )
            .unwrap()
                >= 201.0
        );
    }
}

#[test]
fn burst_of_mkdir_rmdir_ends_with_registry_equal_to_filesystem() {
    for mode in modes("burst_of_mkdir_rmdir_ends_with_registry_equal_to_filesystem") {
        let agent = Agent::start(&[
            "--discovery",
            mode,
            "--container-retention",
            "1s",
            "--global-housekeeping-interval",
            "1h",
        ]);
        let rss_before = agent.rss_kib();
        let tree = CgroupTree::new(&format!("burst-{mode}"), &["pids"]);
        // inotify can only report children of a directory it watches: let
        // the agent see the prefix first (eBPF has no such window).
        wait_for("the prefix is known", Duration::from_secs(10), || {
            live_ids_under(&agent, &tree.prefix) == [tree.prefix.clone()]
        });
        let n = burst_size();
        let started = Instant::now();
        for i in 0..n {
            let name = format!("b{i}");
            tree.mkdir(&name).unwrap();
            // Keep every 50th one.
            if i % 50 != 0 {
                tree.rmdir(&name).unwrap();
            }
        }
        let burst = started.elapsed();
        let mut on_disk = tree.existing("pids");
        on_disk.sort();
        assert_eq!(on_disk.len(), 1 + n.div_ceil(50));
        wait_for(
            &format!("[{mode}] registry equals the filesystem"),
            Duration::from_secs(30),
            || live_ids_under(&agent, &tree.prefix) == on_disk,
        );
        let m = agent.scrape();
        let created = m
            .value(
                "cgscope_container_lifecycle_events_total",
                &[("event", "creation")],
            )
            .unwrap();
        let overflows = m
            .value("cgscope_inotify_overflows_total", &[])
            .unwrap_or(0.0);
        if mode == "inotify" && overflows > 0.0 {
            // A queue overflow loses events for good; the rescan repaired
            // the registry (checked above) but cannot count what is gone.
            eprintln!("[{mode}] {overflows} inotify overflow(s): {created} creations counted");
        } else {
            assert!(
                created > n as f64,
                "[{mode}] every short-lived cgroup counted: {created}"
            );
        }
        if mode == "ebpf" {
            assert_eq!(m.value("cgscope_ebpf_ringbuf_drops_total", &[]), Some(0.0));
        }
        // Series under the prefix equal the directories on disk (checked
        // above): the removed entries left after their retention.
        let rss_after = agent.rss_kib();
        eprintln!("[{mode}] burst of {n} mkdir+rmdir in {burst:?}; agent RSS {rss_before} KiB -> {rss_after} KiB");
        assert!(
            rss_after < rss_before + 32 * 1024,
            "[{mode}] agent memory grew from {rss_before} KiB to {rss_after} KiB"
        );
    }
}

#[test]
fn auto_falls_back_to_inotify_when_bpf_is_not_permitted() {
    if !require_root("auto_falls_back_to_inotify_when_bpf_is_not_permitted") {
        return;
    }
    // Root without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN cannot load BPF.
    let wrapper = [
        "setpriv",
        "--bounding-set",
        "-bpf,-perfmon,-sys_admin",
        "--",
    ];
    let agent = Agent::start_with(&wrapper, &tests::agent_bin(), &["--discovery", "auto"]);
    let m = agent.scrape();
    assert_eq!(
        m.value(
            "cgscope_mode",
            &[("subsystem", "discovery"), ("mode", "inotify")]
        ),
        Some(1.0),
        "{}",
        agent.log()
    );
    let log = agent.stop();
    let fallbacks: Vec<_> = log
        .lines()
        .filter(|l| l.contains("falling back to inotify"))
        .collect();
    assert_eq!(fallbacks.len(), 1, "one clear line:\n{log}");
}

#[test]
fn a_kernel_read_that_fails_is_counted_logged_with_its_offset_and_repaired_by_the_walk() {
    let test =
        "a_kernel_read_that_fails_is_counted_logged_with_its_offset_and_repaired_by_the_walk";
    if !require_root(test) {
        return;
    }
    if !expect_ebpf() {
        tests::skip(
            "CGSCOPE_EXPECT_EBPF is not set (run `cargo xtask test`, which builds the eBPF object)",
        );
        return;
    }
    let agent = Agent::start(&[
        "--discovery",
        "ebpf",
        "--ebpf-test-unreadable-cgroup",
        "--log-level",
        "info,cgscope::bpf_programs=debug",
        "--global-housekeeping-interval",
        "1s",
    ]);
    assert!(
        agent.log().contains("\"program\":\"cgroup_mkdir_btf\""),
        "the tp_btf programs, whose offsets the flag breaks:\n{}",
        agent.log()
    );
    let tree = CgroupTree::new("unreadable", HIERARCHIES);
    tree.mkdir("a").unwrap();
    let a = tree.path("a");
    let read_errors = || {
        agent
            .scrape_agent()
            .value("cgscope_ebpf_read_errors_total", &[("program", "cgroup")])
            .unwrap_or(0.0)
    };
    wait_for(
        "the failed reads are counted",
        Duration::from_secs(10),
        || read_errors() >= 1.0,
    );
    // The program's message names the offset it read at.
    wait_for(
        "the program's debug message",
        Duration::from_secs(10),
        || {
            agent.log().lines().any(|l| {
                l.contains("cgscope::bpf_programs") && l.contains("reading struct cgroup at offset")
            })
        },
    );
    // What the events missed, the walk adds.
    wait_for(
        "the walk repairs the missed cgroup",
        Duration::from_secs(10),
        || live_ids_under(&agent, &a) == [a.clone()],
    );
    assert!(
        agent
            .scrape_agent()
            .value("cgscope_discovery_repairs_total", &[("kind", "added")])
            .unwrap_or(0.0)
            >= 1.0
    );
}
