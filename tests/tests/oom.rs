//! OOM kills end to end: a memory-limited cgroup of the test's own, a
//! process of the test's own that allocates past the limit, the real agent
//! in eBPF and in kmsg mode.

use std::{
    fs,
    io::Write as _,
    process::{Command, ExitStatus},
    time::Duration,
};

use tests::{
    cgroups::{wait_for, CgroupTree},
    expect_ebpf, require_root, Agent, Metrics,
};

fn modes(test: &str) -> Vec<&'static str> {
    if !require_root(test) {
        return vec![];
    }
    if expect_ebpf() {
        vec!["ebpf", "kmsg"]
    } else {
        eprintln!("{test}: CGSCOPE_EXPECT_EBPF not set, testing kmsg only");
        vec!["kmsg"]
    }
}

/// [`modes`] plus `ebpf-classic`: the classic `oom:mark_victim`
/// tracepoint (the program kernels before 6.8 get) on a kernel that also
/// offers `tp_btf`.
fn modes_with_classic(test: &str) -> Vec<&'static str> {
    let mut m = modes(test);
    if m.contains(&"ebpf") {
        m.insert(1, "ebpf-classic");
    }
    m
}

/// The agent's arguments for a mode of [`modes_with_classic`].
fn source_args(mode: &str) -> Vec<&str> {
    match mode {
        "ebpf-classic" => vec!["--oom-source", "ebpf", "--ebpf-classic-tracepoints"],
        m => vec!["--oom-source", m],
    }
}

/// Runs `tail /dev/zero` (it buffers an endless line) inside the cgroup
/// until the OOM killer ends it. Returns its pid and exit status.
fn run_hog(tree: &CgroupTree, rel: &str) -> (u32, ExitStatus) {
    let procs = tree.dir("memory", rel).join("cgroup.procs");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec tail /dev/zero",
            procs.display()
        ))
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = child.wait().unwrap();
    (pid, status)
}

/// Makes `victim` with a 64 MiB limit, waits until the agent knows it,
/// and has a hog of the test's own OOM-killed there; returns its pid.
fn kill_in_limited_victim(agent: &Agent, tree: &CgroupTree) -> u32 {
    tree.mkdir("victim").unwrap();
    tree.set_memory_limit("victim", MIB64);
    let path = tree.path("victim");
    wait_for("the cgroup is known", Duration::from_secs(10), || {
        oom_count(&agent.scrape(), &path) == Some(0.0)
    });
    let (pid, status) = run_hog(tree, "victim");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the hog was OOM-killed"
    );
    pid
}

fn oom_count(m: &Metrics, path: &str) -> Option<f64> {
    m.value("container_oom_events_total", &[("id", path)])
}

fn events(agent: &Agent, path: &str, kind: &str) -> String {
    let r = agent
        .get(
            &format!("/api/v2.0/events{path}?{kind}=true&max_events=-1"),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

const MIB64: u64 = 64 << 20;

#[test]
fn a_kill_is_counted_against_its_container_and_survives_removal() {
    for mode in modes("a_kill_is_counted_against_its_container_and_survives_removal") {
        let agent = Agent::start(&[
            "--oom-source",
            mode,
            "--container-retention",
            "2m",
            "--housekeeping-interval",
            "1s",
            "--max-housekeeping-interval",
            "1s",
        ]);
        let m = agent.scrape();
        assert_eq!(
            m.value("cgscope_mode", &[("subsystem", "oom"), ("mode", mode)]),
            Some(1.0),
            "{}",
            agent.log()
        );
        let tree = CgroupTree::new(&format!("oom-{mode}"), &["memory"]);
        let path = tree.path("victim");
        let pid = kill_in_limited_victim(&agent, &tree);
        wait_for(
            &format!("[{mode}] container_oom_events_total = 1"),
            Duration::from_secs(10),
            || oom_count(&agent.scrape(), &path) == Some(1.0),
        );
        assert_eq!(
            tree.oom_kills("victim"),
            1,
            "the kernel's own counter agrees"
        );
        let kills = events(&agent, &path, "oom_kill_events");
        assert!(
            kills.contains(&format!("\"pid\":{pid}")),
            "[{mode}] {kills}"
        );
        assert!(
            kills.contains("\"process_name\":\"tail\""),
            "[{mode}] {kills}"
        );
        assert!(
            kills.contains(&format!("\"container_name\":\"{path}\"")),
            "[{mode}] {kills}"
        );
        let ooms = events(&agent, &path, "oom_events");
        assert!(ooms.contains("\"event_type\":\"oom\""), "[{mode}] {ooms}");
        // The kernel's counter (read every second) agrees past the floor's
        // grace: the kill is neither counted twice nor missed.
        std::thread::sleep(Duration::from_secs(6));
        let m = agent.scrape();
        assert_eq!(oom_count(&m, &path), Some(1.0), "[{mode}] counted once");
        assert_eq!(
            m.value("cgscope_oom_missed_total", &[("source", mode)]),
            Some(0.0),
            "[{mode}]"
        );
        if mode == "ebpf" {
            assert!(
                m.value("cgscope_ebpf_events_total", &[("program", "mark_victim")])
                    .unwrap_or(0.0)
                    >= 1.0,
                "the program counts its own events"
            );
        }

        // The count outlives the cgroup (within the retention).
        tree.rmdir("victim").unwrap();
        wait_for("the removal is seen", Duration::from_secs(10), || {
            agent
                .scrape()
                .value(
                    "cgscope_container_lifecycle_events_total",
                    &[("event", "deletion")],
                )
                .unwrap_or(0.0)
                >= 1.0
        });
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            oom_count(&agent.scrape(), &path),
            Some(1.0),
            "[{mode}] still scrapeable after removal"
        );

        // Re-created at the same path (a restart policy): the count goes on
        // from 1, so a kill is never hidden from increase() by a reset.
        let created = |m: &Metrics| {
            m.value(
                "cgscope_container_lifecycle_events_total",
                &[("event", "creation")],
            )
            .unwrap_or(0.0)
        };
        let before = created(&agent.scrape());
        tree.mkdir("victim").unwrap();
        tree.set_memory_limit("victim", MIB64);
        wait_for("the re-creation is seen", Duration::from_secs(10), || {
            created(&agent.scrape()) > before
        });
        assert_eq!(
            oom_count(&agent.scrape(), &path),
            Some(1.0),
            "[{mode}] the re-created path keeps its count"
        );
        let (_, status) = run_hog(&tree, "victim");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        wait_for(
            &format!("[{mode}] container_oom_events_total = 2"),
            Duration::from_secs(10),
            || oom_count(&agent.scrape(), &path) == Some(2.0),
        );
        drop(agent);

        // A restarted agent does not count the old kill again.
        let again = Agent::start(&["--oom-source", mode]);
        std::thread::sleep(Duration::from_millis(500));
        let replay = events(&again, &tree.prefix, "oom_kill_events&subcontainers");
        assert_eq!(
            replay.trim(),
            "[]",
            "[{mode}] old kills are not replayed: {replay}"
        );
    }
}

#[test]
fn nested_limit_charges_oom_to_the_parent_and_the_kill_to_the_child() {
    for mode in
        modes_with_classic("nested_limit_charges_oom_to_the_parent_and_the_kill_to_the_child")
    {
        let agent = Agent::start(&source_args(mode));
        if mode == "ebpf-classic" {
            assert!(
                agent.log().contains("\"program\":\"mark_victim_tp\""),
                "{}",
                agent.log()
            );
        }
        let tree = CgroupTree::new(&format!("oomnest-{mode}"), &["memory"]);
        tree.mkdir("parent").unwrap();
        tree.mkdir("parent/child").unwrap();
        tree.set_memory_limit("parent", MIB64);
        let (parent, child) = (tree.path("parent"), tree.path("parent/child"));
        wait_for("both cgroups are known", Duration::from_secs(10), || {
            let m = agent.scrape();
            oom_count(&m, &parent).is_some() && oom_count(&m, &child).is_some()
        });
        let (pid, _) = run_hog(&tree, "parent/child");
        wait_for(
            &format!("[{mode}] the kill is counted"),
            Duration::from_secs(10),
            || oom_count(&agent.scrape(), &child) == Some(1.0),
        );
        let m = agent.scrape();
        assert_eq!(
            oom_count(&m, &parent),
            Some(0.0),
            "[{mode}] the kill belongs to the child"
        );
        assert_eq!(
            (tree.oom_kills("parent/child"), tree.oom_kills("parent")),
            (1, 0)
        );
        let ooms = events(&agent, &parent, "oom_events");
        assert!(
            ooms.contains(&format!("\"container_name\":\"{parent}\"")),
            "[{mode}] oom on the parent: {ooms}\n{}\n{}",
            agent.log(),
            agent.scrape_agent().0
        );
        let kills = events(&agent, &child, "oom_kill_events");
        assert!(
            kills.contains(&format!("\"pid\":{pid}")),
            "[{mode}] oomKill on the child: {kills}"
        );
    }
}

/// A cgroup removed the moment its last task is killed (a pod whose only
/// process died, cleaned up at once) keeps its kill: counted against it,
/// with the victim, within the retention.
#[test]
fn a_kill_right_before_rmdir_is_counted_against_the_removed_cgroup() {
    for mode in
        modes_with_classic("a_kill_right_before_rmdir_is_counted_against_the_removed_cgroup")
    {
        let mut args = source_args(mode);
        args.extend(["--container-retention", "2m"]);
        let agent = Agent::start(&args);
        let tree = CgroupTree::new(&format!("oomrm-{mode}"), &["memory"]);
        let path = tree.path("victim");
        let pid = kill_in_limited_victim(&agent, &tree);
        wait_for("the cgroup can be removed", Duration::from_secs(5), || {
            tree.rmdir("victim").is_ok()
        });
        wait_for(
            &format!("[{mode}] the removed cgroup's kill is counted"),
            Duration::from_secs(10),
            || oom_count(&agent.scrape(), &path) == Some(1.0),
        );
        let kills = events(&agent, &path, "oom_kill_events");
        assert!(
            kills.contains(&format!("\"pid\":{pid}")),
            "[{mode}] {kills}"
        );
    }
}

#[test]
fn a_recorded_kernel_log_is_replayed_and_followed() {
    if !require_root("a_recorded_kernel_log_is_replayed_and_followed") {
        return;
    }
    let tree = CgroupTree::new("oomreplay", &["memory"]);
    tree.mkdir("a").unwrap();
    tree.mkdir("b").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("kmsg.log");
    let record = |seq: u32, path: &str, pid: u32, name: &str| {
        format!(
            "4,{seq},751023714,-;{name} invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0\n \
             SUBSYSTEM=memory\n\
             6,{},751024248,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg={path},task_memcg={path},task={name},pid={pid},uid=0\n\
             4,{},751024250,-;an unrelated line from another subsystem\n\
             3,{},751024319,-;Memory cgroup out of memory: Killed process {pid} ({name}) total-vm:68268kB, anon-rss:65280kB, file-rss:1248kB, shmem-rss:0kB, UID:0 pgtables:172kB oom_score_adj:0\n",
            seq + 1,
            seq + 2,
            seq + 3
        )
    };
    fs::write(&log, record(10, &tree.path("a"), 700, "my hog (v2)")).unwrap();
    let agent = Agent::start(&["--oom-source", "kmsg", "--kmsg-path", log.to_str().unwrap()]);
    wait_for(
        "the recorded kill is replayed",
        Duration::from_secs(10),
        || oom_count(&agent.scrape(), &tree.path("a")) == Some(1.0),
    );
    let kills = events(&agent, &tree.path("a"), "oom_kill_events");
    assert!(
        kills.contains("\"process_name\":\"my hog (v2)\""),
        "{kills}"
    );
    // Appended later: followed like tail -f, including a garbage line and
    // a repeated (older) sequence number that must not count twice.
    let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"this is not a kmsg record\n").unwrap();
    f.write_all(record(10, &tree.path("a"), 700, "my hog (v2)").as_bytes())
        .unwrap();
    f.write_all(record(20, &tree.path("b"), 701, "other").as_bytes())
        .unwrap();
    drop(f);
    wait_for("the appended kill is seen", Duration::from_secs(10), || {
        oom_count(&agent.scrape(), &tree.path("b")) == Some(1.0)
    });
    let m = agent.scrape();
    assert_eq!(
        oom_count(&m, &tree.path("a")),
        Some(1.0),
        "a replayed sequence number counts once"
    );
    assert_eq!(
        m.value("cgscope_oom_errors_total", &[("reason", "kmsg_malformed")]),
        Some(1.0)
    );
}

/// After the kernel rate-limits its OOM reports, a kill comes as a bare
/// `Killed process` line: it is not charged to the last report's cgroup.
#[test]
fn a_rate_limited_kill_is_not_charged_to_the_last_report() {
    if !require_root("a_rate_limited_kill_is_not_charged_to_the_last_report") {
        return;
    }
    let tree = CgroupTree::new("oombare", &["memory"]);
    tree.mkdir("a").unwrap();
    let a = tree.path("a");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("kmsg.log");
    // A pid no task has (above pid_max's 2^22 ceiling): /proc cannot say.
    fs::write(
        &log,
        format!(
            "6,1,100,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg={a},task_memcg={a},task=hog,pid=4194400,uid=0\n\
             3,2,101,-;Memory cgroup out of memory: Killed process 4194400 (hog) total-vm:1kB\n\
             3,3,9000000,-;Memory cgroup out of memory: Killed process 4194401 (other) total-vm:1kB\n"
        ),
    )
    .unwrap();
    let agent = Agent::start(&["--oom-source", "kmsg", "--kmsg-path", log.to_str().unwrap()]);
    wait_for("both kills are seen", Duration::from_secs(10), || {
        agent.scrape().value("cgscope_oom_kills_total", &[]) == Some(2.0)
    });
    let m = agent.scrape();
    assert_eq!(oom_count(&m, &a), Some(1.0), "only its own kill");
    assert_eq!(
        m.value("cgscope_oom_unattributed_kills_total", &[]),
        Some(1.0)
    );
    let kills = events(&agent, &a, "oom_kill_events");
    assert!(!kills.contains("4194401"), "{kills}");
}

#[test]
fn an_unreadable_kernel_log_is_reported_not_fatal() {
    let agent = Agent::start(&[
        "--oom-source",
        "kmsg",
        "--kmsg-path",
        "/nonexistent/kmsg",
        "--discovery",
        "inotify",
    ]);
    let m = agent.scrape();
    assert_eq!(
        m.value("cgscope_mode", &[("subsystem", "oom"), ("mode", "none")]),
        Some(1.0)
    );
    assert_eq!(
        m.value("cgscope_oom_errors_total", &[("reason", "kmsg_unreadable")]),
        Some(1.0)
    );
    assert!(agent.get("/healthz", None).unwrap().status == 200);
}

/// The kernel's own per-cgroup kill counter is the floor of
/// `container_oom_events_total`: with an OOM source that sees nothing (a
/// kernel log that never gets the report), a real kill is still counted,
/// (`memory.events.local`, `memory.oom_control`), and shows as missed. A kill from before the
/// agent started is not counted.
#[test]
fn a_kill_the_source_missed_is_counted_from_the_cgroups_counter() {
    if !require_root("a_kill_the_source_missed_is_counted_from_the_cgroups_counter") {
        return;
    }
    let tree = CgroupTree::new("oomfloor", &["memory"]);
    tree.mkdir("old").unwrap();
    tree.set_memory_limit("old", MIB64);
    let (_, status) = run_hog(&tree, "old");
    assert!(!status.success(), "the hog ended by itself");
    assert_eq!(tree.oom_kills("old"), 1);
    let dir = tempfile::tempdir().unwrap();
    let blind = dir.path().join("kmsg.log");
    fs::write(&blind, "").unwrap();
    let agent = Agent::start(&[
        "--oom-source",
        "kmsg",
        "--kmsg-path",
        blind.to_str().unwrap(),
        // Only this test's kills: the other OOM tests run alongside.
        "--raw-cgroup-prefix-whitelist",
        &tree.prefix,
        "--discovery",
        "inotify",
        "--housekeeping-interval",
        "1s",
        "--max-housekeeping-interval",
        "1s",
    ]);
    tree.mkdir("new").unwrap();
    tree.set_memory_limit("new", MIB64);
    wait_for("both cgroups collected", Duration::from_secs(15), || {
        let m = agent.scrape();
        [tree.path("old"), tree.path("new")]
            .iter()
            .all(|p| oom_count(&m, p).is_some())
    });
    for rel in ["old", "new"] {
        let (_, status) = run_hog(&tree, rel);
        assert!(!status.success(), "the hog in {rel} ended by itself");
    }
    assert_eq!(tree.oom_kills("old"), 2);
    assert_eq!(tree.oom_kills("new"), 1);
    wait_for(
        "the missed kills are counted from the kernel's counter",
        Duration::from_secs(30),
        || {
            let m = agent.scrape();
            oom_count(&m, &tree.path("old")) == Some(1.0)
                && oom_count(&m, &tree.path("new")) == Some(1.0)
        },
    );
    let m = agent.scrape();
    assert_eq!(
        m.value("cgscope_oom_missed_total", &[("source", "kmsg")]),
        Some(2.0)
    );
    assert_eq!(m.value("cgscope_oom_kills_total", &[]), Some(0.0));
}

/// A `memory.oom.group` kill (cgroup v2 only) marks every process of the
/// group a victim in one kernel loop, faster than any reader drains: every
/// member is counted against the group's container once, the eBPF ring
/// holds them all, and the kernel's counter, which counts the first victim
/// twice, does not add a kill that did not happen.
#[test]
fn a_group_kill_counts_every_member() {
    // Each member is an emulated fork in the VM cells; the ring's size for
    // 8,192 is checked where it is defined.
    const MEMBERS: u32 = 200;
    let modes = modes("a_group_kill_counts_every_member");
    if modes.is_empty() {
        return;
    }
    if tests::cgroups::Layout::get() != tests::cgroups::Layout::V2 {
        eprintln!("a_group_kill_counts_every_member: memory.oom.group is cgroup v2's; this host's memory controller is v1");
        return;
    }
    // One agent per OOM source, all watching the same kill.
    let agents: Vec<(&str, Agent)> = modes
        .iter()
        .map(|mode| {
            let agent = Agent::start(&[
                "--oom-source",
                mode,
                "--housekeeping-interval",
                "1s",
                "--max-housekeeping-interval",
                "1s",
            ]);
            (*mode, agent)
        })
        .collect();
    let tree = CgroupTree::new("oomgroup", &["memory"]);
    let path = tree.path("g");
    tree.mkdir("g").unwrap();
    tree.set_memory_limit("g", 4 * MIB64);
    fs::write(tree.dir("memory", "g").join("memory.oom.group"), "1").unwrap();
    for (mode, agent) in &agents {
        wait_for(
            &format!("[{mode}] the cgroup is known"),
            Duration::from_secs(10),
            || oom_count(&agent.scrape(), &path) == Some(0.0),
        );
    }
    let mut members = tree.spawn_in(
        &["memory"],
        "g",
        &format!("i=0; while [ $i -lt {MEMBERS} ]; do sleep 600 & i=$((i+1)); done; wait"),
    );
    let procs = tree.dir("memory", "g").join("cgroup.procs");
    wait_for("every member started", Duration::from_secs(120), || {
        fs::read_to_string(&procs).is_ok_and(|p| p.lines().count() > MEMBERS as usize)
    });
    let (_, status) = run_hog(&tree, "g");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let _ = members.wait();
    // The shell, its sleeps and the hog.
    let killed = u64::from(MEMBERS) + 2;
    let kernel = tree.oom_kills("g");
    assert!(
        kernel >= killed,
        "the kernel killed the whole group: {kernel}"
    );
    for (mode, agent) in &agents {
        wait_for(
            &format!("[{mode}] container_oom_events_total = {killed}"),
            Duration::from_secs(60),
            || oom_count(&agent.scrape(), &path) == Some(killed as f64),
        );
    }
    // Past the grace of the kernel-counter floor (read every second).
    std::thread::sleep(Duration::from_secs(7));
    for (mode, agent) in &agents {
        let m = agent.scrape();
        let v = |name: &str, labels: &[(&str, &str)]| m.value(name, labels).unwrap_or(-1.0);
        let diag = format!(
            "[{mode}] the kernel's oom_kill {kernel}; delivered {}, unattributed {}, missed {}\n{}",
            v("cgscope_oom_kills_total", &[]),
            v("cgscope_oom_unattributed_kills_total", &[]),
            v("cgscope_oom_missed_total", &[]),
            agent.log()
        );
        assert_eq!(
            oom_count(&m, &path),
            Some(killed as f64),
            "no kill added that did not happen: {diag}"
        );
        if *mode != "ebpf" {
            continue;
        }
        assert_eq!(
            v(
                "cgscope_ebpf_ringbuf_drops_total",
                &[("ringbuf", "oom_events")]
            ),
            0.0,
            "the ring held the group: {diag}"
        );
        // Other tests' kills may come through too.
        assert!(
            v("cgscope_oom_kills_total", &[]) >= killed as f64,
            "every kill came through the ring: {diag}"
        );
        assert_eq!(
            v("cgscope_oom_missed_total", &[("source", mode)]),
            0.0,
            "{diag}"
        );
        assert!(
            v("cgscope_ebpf_events_total", &[("program", "mark_victim")]) >= killed as f64,
            "the program counted its own events: {diag}"
        );
    }
}

/// The kernel log's reader fails (the replayed file goes away): the OOM
/// source is down, so no OOM mode is 1 and `/healthz` fails, until the
/// reader, retrying, reads again and counts what comes.
#[test]
fn a_failed_kernel_log_reader_is_down_until_it_reads_again() {
    if !require_root("a_failed_kernel_log_reader_is_down_until_it_reads_again") {
        return;
    }
    let tree = CgroupTree::new("oomreader", &["memory"]);
    tree.mkdir("a").unwrap();
    let a = tree.path("a");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("kmsg.log");
    fs::write(&log, "").unwrap();
    let agent = Agent::start(&[
        "--oom-source",
        "kmsg",
        "--kmsg-path",
        log.to_str().unwrap(),
        "--discovery",
        "inotify",
    ]);
    let kmsg_mode =
        |m: &Metrics| m.value("cgscope_mode", &[("subsystem", "oom"), ("mode", "kmsg")]);
    assert_eq!(kmsg_mode(&agent.scrape()), Some(1.0));
    fs::remove_file(&log).unwrap();
    wait_for("the source is down", Duration::from_secs(10), || {
        agent.get("/healthz", None).unwrap().status == 503
    });
    let health = agent.get("/healthz", None).unwrap().body;
    assert!(health.contains("oom source down"), "{health}");
    let m = agent.scrape();
    assert_eq!(kmsg_mode(&m), Some(0.0), "no OOM mode while it is down");
    assert!(m.value("cgscope_oom_reader_restarts_total", &[]).unwrap() >= 1.0);
    // The file is back, with a kill: read from its start.
    fs::write(
        &log,
        format!(
            "6,1,100,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg={a},task_memcg={a},task=hog,pid=4194400,uid=0\n"
        ),
    )
    .unwrap();
    wait_for("the reader is back", Duration::from_secs(20), || {
        agent.get("/healthz", None).unwrap().status == 200
    });
    wait_for("the kill is counted", Duration::from_secs(10), || {
        oom_count(&agent.scrape(), &a) == Some(1.0)
    });
    assert_eq!(kmsg_mode(&agent.scrape()), Some(1.0));
}
