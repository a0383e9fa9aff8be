//! Statistics end to end: real cgroups, real work done by processes of the
//! test's own, values checked against the kernel's files and the work.

use std::{fs, path::Path, process::Command, time::Duration};

use tests::{
    cgroups::{count_io_on_disk_of, disk_of, wait_for, CgroupTree, Layout},
    require_root, Agent,
};

fn agent() -> Agent {
    Agent::start(&[
        "--housekeeping-interval",
        "1s",
        "--max-housekeeping-interval",
        "1s",
    ])
}

fn within(a: f64, b: f64, pct: f64) -> bool {
    (a - b).abs() <= b.abs() * pct / 100.0
}

#[test]
fn cpu_usage_matches_cpuacct_and_the_burners_own_time() {
    if !require_root("cpu_usage_matches_cpuacct_and_the_burners_own_time") {
        return;
    }
    let agent = agent();
    let hs = ["cpu", "cpuacct"];
    let tree = CgroupTree::new("cpu", &hs);
    let path = tree.path("");
    // A 3 s busy loop; the shell execs into it so its rusage is the loop's.
    let child = tree.spawn_in(&hs, "", "exec timeout 3 sh -c 'while :; do :; done'");
    let pid = child.id() as i32;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid);
    std::mem::forget(child);
    let own = (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) as f64
        + (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) as f64 / 1e6;
    let file = tree.cpu_usage_seconds("");
    // The counter no longer moves; wait for a collection after the exit.
    let mut seen = 0.0;
    wait_for(
        "a sample after the burner exited",
        Duration::from_secs(15),
        || {
            seen = agent
                .scrape()
                .value(
                    "container_cpu_usage_seconds_total",
                    &[("id", &path), ("cpu", "total")],
                )
                .unwrap_or(0.0);
            within(seen, file, 0.5)
        },
    );
    assert!(
        within(seen, file, 5.0),
        "metric {seen} vs the kernel's {file}"
    );
    // The burner's own time also has its shell's start before it joined
    // the cgroup: up to half a second under emulation.
    assert!(
        within(seen, own, 5.0) || (seen < own && own - seen < 0.5),
        "metric {seen} vs the burner's own CPU time {own}"
    );
    assert!(seen > 1.0, "the burner burned ({seen} s)");
    let m = agent.scrape();
    assert!(
        m.value("container_cpu_user_seconds_total", &[("id", &path)])
            .unwrap()
            > 1.0
    );
}

#[test]
fn memory_usage_matches_the_memory_files() {
    if !require_root("memory_usage_matches_the_memory_files") {
        return;
    }
    let agent = agent();
    let hs = ["memory", "pids", "cpu"];
    let tree = CgroupTree::new("mem", &hs);
    let path = tree.path("");
    let mut child = tree.spawn_in(
        &hs,
        "",
        "exec python3 -c \"import time; b = b'x' * (100 << 20); time.sleep(60)\"",
    );
    wait_for("100 MiB allocated", Duration::from_secs(20), || {
        tree.memory_usage("") > 100 << 20
    });
    let mut checked = false;
    wait_for(
        "metrics agree with the memory usage and memory.stat files",
        Duration::from_secs(15),
        || {
            let before = tree.memory_usage("") as f64;
            let m = agent.scrape();
            let after = tree.memory_usage("") as f64;
            let Some(usage) = m.value("container_memory_usage_bytes", &[("id", &path)]) else {
                return false;
            };
            let ok = within(usage, before, 1.0) && within(usage, after, 1.0);
            if ok {
                let rss = m.value("container_memory_rss", &[("id", &path)]).unwrap();
                let ws = m
                    .value("container_memory_working_set_bytes", &[("id", &path)])
                    .unwrap();
                let total_rss = tree.memory_stat("", "total_rss") as f64;
                let inactive = tree.memory_stat("", "total_inactive_file") as f64;
                assert!(
                    within(rss, total_rss, 1.0),
                    "rss {rss} vs total_rss {total_rss}"
                );
                assert!(
                    within(ws, after - inactive, 1.0),
                    "working set {ws} vs {after} - {inactive}"
                );
                assert!(rss >= (100 << 20) as f64);
                assert_eq!(m.value("container_processes", &[("id", &path)]), Some(1.0));
                assert!(
                    m.value("container_file_descriptors", &[("id", &path)])
                        .unwrap()
                        >= 3.0
                );
                assert!(m.value("container_threads", &[("id", &path)]).unwrap() >= 1.0);
                checked = true;
            }
            ok
        },
    );
    assert!(checked);
    let _ = child.kill();
    let _ = child.wait();
}

/// The whole disk behind `dir`'s filesystem (`major:minor`).
#[test]
fn direct_writes_show_up_in_fs_writes_bytes() {
    if !require_root("direct_writes_show_up_in_fs_writes_bytes") {
        return;
    }
    let agent = agent();
    let hs = ["blkio", "cpu"];
    let tree = CgroupTree::new("io", &hs);
    let path = tree.path("");
    // On a real disk (not tmpfs), inside the workspace's target directory.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-io");
    fs::create_dir_all(&dir).unwrap();
    let (major, minor) = disk_of(&dir);
    // v2's io.stat counts every cgroup's I/O; v1 needs a throttle rule.
    if tree.layout() != Layout::V2 {
        count_io_on_disk_of(&dir, &tree.dir("blkio", ""));
    }
    let file = dir.join(format!("direct-{}", std::process::id()));
    let mut child = tree.spawn_in(
        &hs,
        "",
        &format!(
            "exec dd if=/dev/zero of={} bs=1M count=20 oflag=direct status=none",
            file.display()
        ),
    );
    assert!(child.wait().unwrap().success());
    let _ = fs::remove_file(&file);
    let device = fs::read_to_string("/proc/partitions")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[0] == major.to_string() && f[1] == minor.to_string())
                .then(|| format!("/dev/{}", f[3]))
        })
        .unwrap();
    wait_for(
        "20 MiB of writes in container_fs_writes_bytes_total",
        Duration::from_secs(15),
        || {
            agent
                .scrape()
                .value(
                    "container_fs_writes_bytes_total",
                    &[("id", &path), ("device", &device)],
                )
                .is_some_and(|v| v >= (20 << 20) as f64)
        },
    );
    let m = agent.scrape();
    assert!(
        m.value(
            "container_fs_writes_total",
            &[("id", &path), ("device", &device)]
        )
        .unwrap()
            >= 20.0
    );
    assert!(m
        .value(
            "container_blkio_device_usage_total",
            &[
                ("id", &path),
                ("operation", "Write"),
                ("major", &major.to_string())
            ]
        )
        .is_some());
}

/// A network namespace pair of the test's own; removed on drop.
struct NetnsPair(String, String);

impl NetnsPair {
    fn new() -> Self {
        let tag = format!("{}", tests::unique() % 100_000);
        let pair = Self(format!("cgsA{tag}"), format!("cgsB{tag}"));
        let run = |args: &str| {
            let ok = Command::new("sh")
                .arg("-c")
                .arg(format!("ip {args}"))
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip {args}");
        };
        run(&format!("netns add {}", pair.0));
        run(&format!("netns add {}", pair.1));
        run(&format!(
            "link add va{tag} netns {} type veth peer name vb{tag} netns {}",
            pair.0, pair.1
        ));
        run(&format!(
            "-n {} addr add 10.251.{}.1/30 dev va{tag}",
            pair.0,
            tag.len()
        ));
        run(&format!(
            "-n {} addr add 10.251.{}.2/30 dev vb{tag}",
            pair.1,
            tag.len()
        ));
        run(&format!("-n {} link set va{tag} up", pair.0));
        run(&format!("-n {} link set vb{tag} up", pair.1));
        pair
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.0, &self.1] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn traffic_from_a_network_namespace_shows_up_in_transmit_bytes() {
    if !require_root("traffic_from_a_network_namespace_shows_up_in_transmit_bytes") {
        return;
    }
    if tests::which("ip").is_none() {
        tests::skip("iproute2 is needed (`cargo xtask test` installs it)");
        return;
    }
    let agent = agent();
    let hs = ["cpu", "pids"];
    let tree = CgroupTree::new("net", &hs);
    let path = tree.path("");
    let ns = NetnsPair::new();
    let peer = format!("10.251.{}.2", ns.0.len() - 4);
    // 2,000 UDP datagrams of 1,000 bytes to the peer namespace, then stay
    // alive so the agent can read the namespace's counters.
    let script = format!(
        "exec ip netns exec {} python3 -c \"import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); [s.sendto(b'x' * 1000, ('{peer}', 9)) for _ in range(2000)]; time.sleep(30)\"",
        ns.0
    );
    let mut child = tree.spawn_in(&hs, "", &script);
    wait_for(
        "transmit bytes of the namespace's veth",
        Duration::from_secs(20),
        || {
            let m = agent.scrape();
            m.samples("container_network_transmit_bytes_total", &[("id", &path)])
                .iter()
                .any(|v| *v >= 2_000_000.0)
        },
    );
    let m = agent.scrape();
    assert!(m
        .samples("container_network_transmit_packets_total", &[("id", &path)])
        .iter()
        .any(|v| *v >= 2000.0));
    assert!(
        !m.0.lines().any(|l| l.starts_with("container_network_")
            && l.contains(&path)
            && l.contains("interface=\"lo\"")),
        "loopback is left out"
    );
    // The host's interfaces belong to `/`, not to cgroups in its namespace.
    assert!(!m
        .samples("container_network_receive_bytes_total", &[("id", "/")])
        .is_empty());
    let _ = child.kill();
    let _ = child.wait();
}

/// The agent's collector threads.
fn collector_threads(a: &Agent) -> usize {
    fs::read_dir(format!("/proc/{}/task", a.pid()))
        .unwrap()
        .flatten()
        .filter(|t| {
            fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "cgscope-collect")
        })
        .count()
}

/// The `stuck` count of `cgscope_collection_errors_total`.
fn stuck_errors(a: &Agent) -> f64 {
    a.scrape_agent()
        .value("cgscope_collection_errors_total", &[("reason", "stuck")])
        .unwrap_or(0.0)
}

#[test]
fn a_collection_that_hangs_holds_up_only_itself() {
    if !require_root("a_collection_that_hangs_holds_up_only_itself") {
        return;
    }
    let tree = CgroupTree::new("stuck", tests::cgroups::HIERARCHIES);
    let hs = ["cpu", "cpuacct", "memory", "pids"];
    for rel in ["hangs", "fine"] {
        tree.mkdir(rel).unwrap();
    }
    let mut hangs = tree.spawn_in(&hs, "hangs", "exec sleep 300");
    let mut fine = tree.spawn_in(&hs, "fine", "exec sleep 300");
    // A /proc whose `limits` of the first task is a FIFO: opening it for
    // reading blocks until a writer comes, as a read of a stuck filesystem.
    let proc_root = tempfile::tempdir().unwrap();
    // The agent finds its own mounts and cgroups in `self`, as in any /proc.
    std::os::unix::fs::symlink("/proc/self", proc_root.path().join("self")).unwrap();
    wait_for("the task to join", Duration::from_secs(5), || {
        fs::read_to_string(tree.dir("cpu", "hangs").join("cgroup.procs"))
            .is_ok_and(|p| !p.trim().is_empty())
    });
    let pid = fs::read_to_string(tree.dir("cpu", "hangs").join("cgroup.procs")).unwrap();
    let task = proc_root.path().join(pid.trim());
    fs::create_dir(&task).unwrap();
    let fifo = task.join("limits");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid path and mode.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

    let agent = Agent::start(&[
        "--proc-root",
        proc_root.path().to_str().unwrap(),
        "--housekeeping-interval",
        "1s",
        "--max-housekeeping-interval",
        "1s",
    ]);
    let usage = |a: &Agent| {
        a.scrape().value(
            "container_memory_usage_bytes",
            &[("id", &tree.path("fine"))],
        )
    };
    wait_for(
        "the hung collection to be given up",
        Duration::from_secs(30),
        || stuck_errors(&agent) >= 1.0,
    );
    // Everything else is collected on a fresh thread, again and again.
    let collections = |a: &Agent| {
        a.scrape_agent()
            .value("cgscope_collections_total", &[])
            .unwrap_or(0.0)
    };
    let before = collections(&agent);
    wait_for("collections to go on", Duration::from_secs(10), || {
        collections(&agent) > before + 2.0
    });
    assert!(usage(&agent).is_some(), "{}", agent.log());
    assert!(
        agent.log().contains("took longer than"),
        "the hang is logged:\n{}",
        agent.log()
    );
    // However long it hangs, the hung cgroup holds one thread: it is not
    // tried again (on yet another thread) while its read is blocked.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(
        collector_threads(&agent),
        2,
        "the blocked one and the one collecting the others"
    );
    let hung = |a: &Agent| {
        a.scrape_agent()
            .value("cgscope_collection_hung_threads", &[])
    };
    assert_eq!(hung(&agent), Some(1.0));
    // The read returns (a writer comes and goes) and a readable file takes
    // the FIFO's place: the cgroup is collected again, and the blocked
    // thread is gone.
    use std::os::unix::fs::OpenOptionsExt as _;
    let writer = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .expect("the agent's thread waits on the FIFO");
    fs::remove_file(&fifo).unwrap();
    fs::write(
        &fifo,
        "Max open files            1024                 1048576              files\n",
    )
    .unwrap();
    drop(writer);
    wait_for(
        "the hung cgroup to be collected again",
        Duration::from_secs(30),
        || {
            agent
                .scrape()
                .value(
                    "container_memory_usage_bytes",
                    &[("id", &tree.path("hangs"))],
                )
                .is_some()
                && hung(&agent) == Some(0.0)
        },
    );
    assert_eq!(collector_threads(&agent), 1);
    drop(agent);
    for c in [&mut hangs, &mut fine] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
