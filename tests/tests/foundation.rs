//! The foundation: the real binary starts, serves both exposition formats,
//! reports the machine correctly, and loads its eBPF object.

use tests::{expect_ebpf, online_cpus, require_root, Agent};

#[test]
fn serves_healthz_and_both_formats() {
    // Unprivileged runs work too: the agent falls back without BPF.
    let agent = Agent::start(&["--discovery", "inotify"]);
    let health = agent.get("/healthz", None).unwrap();
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));

    let text = agent.get("/metrics", None).unwrap();
    assert_eq!(
        text.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(!text.body.contains("# EOF"));

    let om = agent.scrape_openmetrics();
    assert!(om.0.ends_with("# EOF\n"), "OpenMetrics must end with # EOF");
    for metrics in [&om, &tests::Metrics(text.body)] {
        assert_eq!(
            metrics.value("machine_cpu_cores", &[]),
            Some(online_cpus() as f64)
        );
        assert_eq!(metrics.value("machine_scrape_error", &[]), Some(0.0));
        assert!(metrics.value("machine_memory_bytes", &[]).unwrap() > 0.0);
        assert_eq!(
            metrics.value(
                "cgscope_mode",
                &[("subsystem", "discovery"), ("mode", "inotify")]
            ),
            Some(1.0)
        );
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(om.0.contains(&format!("boot_id=\"{}\"", boot_id.trim())));

    let missing = agent.get("/nope", None).unwrap();
    assert_eq!(missing.status, 404);
}

#[test]
fn loads_ebpf_and_detaches_on_sigterm() {
    if !require_root("loads_ebpf_and_detaches_on_sigterm") {
        return;
    }
    if !expect_ebpf() {
        tests::skip(
            "CGSCOPE_EXPECT_EBPF is not set (run `cargo xtask test`, which builds the eBPF object)",
        );
        return;
    }
    let agent = Agent::start(&["--discovery", "ebpf"]);
    let m = agent.scrape_openmetrics();
    assert_eq!(
        m.value(
            "cgscope_mode",
            &[("subsystem", "discovery"), ("mode", "ebpf")]
        ),
        Some(1.0),
        "{}",
        agent.log()
    );
    assert_eq!(
        m.value("cgscope_mode", &[("subsystem", "oom"), ("mode", "ebpf")]),
        Some(1.0)
    );
    // cgroup_mkdir, cgroup_rmdir and mark_victim.
    assert_eq!(m.value("cgscope_ebpf_programs_attached", &[]), Some(3.0));
    assert_eq!(
        m.value("cgscope_build_info", &[("ebpf_object", "true")]),
        Some(1.0)
    );
    let log = agent.stop();
    assert!(log.contains("attached eBPF program"), "{log}");
    assert!(log.contains("detaching eBPF programs"), "{log}");
    assert!(
        log.contains("\"message\":\"stopped\""),
        "graceful shutdown:\n{log}"
    );
}

#[test]
fn binary_without_ebpf_object_runs_in_fallback_mode() {
    let Some(bin) = std::env::var_os("CGSCOPE_BIN_NO_EBPF") else {
        tests::skip("CGSCOPE_BIN_NO_EBPF is not set (run `cargo xtask test`, which builds the no-eBPF binary)");
        return;
    };
    let agent = Agent::start_bin(bin.as_ref(), &[]);
    let m = agent.scrape();
    assert_eq!(
        m.value("cgscope_build_info", &[("ebpf_object", "false")]),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "cgscope_mode",
            &[("subsystem", "discovery"), ("mode", "inotify")]
        ),
        Some(1.0)
    );
    let log = agent.stop();
    let lines: Vec<_> = log
        .lines()
        .filter(|l| l.contains("without its eBPF object"))
        .collect();
    assert_eq!(lines.len(), 1, "exactly one clear line:\n{log}");

    // Asking for eBPF explicitly fails the start with the reason.
    let out = std::process::Command::new(&bin)
        .args(["--discovery", "ebpf", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cargo xtask build-ebpf"), "{err}");
}

#[test]
fn a_task_that_ends_stops_the_agent_non_zero_naming_it() {
    // A replayed kernel log that is removed and never comes back ends the
    // OOM reader: the agent must not go on serving without its OOM source.
    let dir = tempfile::tempdir().unwrap();
    let kmsg = dir.path().join("kmsg");
    std::fs::write(&kmsg, "").unwrap();
    let mut agent = Agent::start(&[
        "--discovery",
        "inotify",
        "--collector",
        "files",
        "--oom-source",
        "kmsg",
        "--kmsg-path",
        kmsg.to_str().unwrap(),
    ]);
    assert_eq!(agent.get("/healthz", None).unwrap().status, 200);
    // The reader retries for 1 + 2 + 4 + 8 s, then gives up.
    std::fs::remove_file(&kmsg).unwrap();
    let status = agent
        .wait_exit(std::time::Duration::from_secs(60))
        .unwrap_or_else(|| panic!("still running without its OOM reader:\n{}", agent.log()));
    let log = agent.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("task kmsg ended"), "{log}");
    assert!(log.contains("giving up"), "{log}");
}

/// Every thread's capability sets, from `/proc/<pid>/task/*/status`:
/// (thread name, effective, permitted, inheritable, ambient).
fn thread_caps(pid: u32) -> Vec<(String, u64, u64, u64, u64)> {
    let field = |status: &str, name: &str| {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {status}"));
        u64::from_str_radix(v.trim(), 16).unwrap()
    };
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            Some((
                comm.trim().to_owned(),
                field(&status, "CapEff:"),
                field(&status, "CapPrm:"),
                field(&status, "CapInh:"),
                field(&status, "CapAmb:"),
            ))
        })
        .collect()
}

/// Started as root, the agent keeps only what its reads need: CAP_BPF
/// while eBPF programs are loaded (the iterator's runs, their counters),
/// CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH for other users' `/proc` files,
/// on every thread; and it still reads what needs them.
#[test]
fn after_start_only_the_capabilities_reads_need_are_left() {
    if !require_root("after_start_only_the_capabilities_reads_need_are_left") {
        return;
    }
    const DAC_READ_SEARCH: u64 = 1 << 2;
    const SYS_PTRACE: u64 = 1 << 19;
    const BPF: u64 = 1 << 39;
    let mut cases = vec![(
        vec![
            "--discovery",
            "inotify",
            "--oom-source",
            "kmsg",
            "--collector",
            "files",
        ],
        SYS_PTRACE | DAC_READ_SEARCH,
    )];
    if expect_ebpf() {
        cases.push((vec![], SYS_PTRACE | DAC_READ_SEARCH | BPF));
    }
    let tree = tests::cgroups::CgroupTree::new("caps", tests::cgroups::HIERARCHIES);
    tree.mkdir("nobody").unwrap();
    // A process of another user: its fds need CAP_SYS_PTRACE to count.
    let mut child = tree.spawn_in(
        &["cpu", "cpuacct", "memory", "pids"],
        "nobody",
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups sleep 300",
    );
    let path = tree.path("nobody");
    for (args, want) in cases {
        let mut args = args.clone();
        args.extend([
            "--housekeeping-interval",
            "1s",
            "--max-housekeeping-interval",
            "1s",
        ]);
        let agent = Agent::start(&args);
        let threads = thread_caps(agent.pid());
        assert!(threads.len() > 3, "{threads:?}");
        for (name, eff, prm, inh, amb) in &threads {
            assert_eq!(
                (*eff, *prm, *inh, *amb),
                (want, want, 0, 0),
                "{args:?}: thread {name} has CapEff {eff:#x} CapPrm {prm:#x} CapInh {inh:#x} CapAmb {amb:#x}, want {want:#x}\n{}",
                agent.log()
            );
        }
        tests::cgroups::wait_for(
            &format!("{args:?}: the other user's process is read"),
            std::time::Duration::from_secs(15),
            || {
                let m = agent.scrape();
                m.value("container_processes", &[("id", &path)]) == Some(1.0)
                    && m.value("container_file_descriptors", &[("id", &path)])
                        .is_some_and(|fds| fds >= 3.0)
            },
        );
        let log = agent.log();
        assert!(log.contains("every other capability dropped"), "{log}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
