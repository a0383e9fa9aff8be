//! Container names and images from a real container runtime: Podman, its
//! Docker-compatible API served by `podman system service` on a socket of
//! the test's own, containers run with runc from a busybox image the test
//! builds. Everything the test creates is removed at the end.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixListener,
    path::Path,
    thread,
    time::Duration,
};

use tests::{
    cgroups::{wait_for, CgroupTree},
    podman::{Podman, BUSYBOX},
    require_root, Agent,
};

#[test]
fn podman_containers_get_their_name_image_limits_and_oom_count() {
    if !require_root("podman_containers_get_their_name_image_limits_and_oom_count") {
        return;
    }
    let Some(podman) = Podman::new() else {
        tests::skip(
            "podman, runc and busybox-static are needed (`cargo xtask test` installs them)",
        );
        return;
    };
    let agent = Agent::start(&[
        "--docker-endpoint",
        podman.socket().to_str().unwrap(),
        "--housekeeping-interval",
        "1s",
        "--max-housekeeping-interval",
        "1s",
        "--whitelisted-container-labels",
        "team,io.kubernetes.pod.name",
    ]);
    let name = format!("cgscope-web-{}", std::process::id());
    let id = podman.run(&[
        "--name",
        &name,
        "--memory",
        "64m",
        "--cpus",
        "0.5",
        "--label",
        "team=storage",
        "--env",
        "SECRET=hunter2",
        BUSYBOX,
        "/bin/sh",
        "-c",
        "while :; do :; done",
    ]);
    let path = format!("/libpod_parent/libpod-{id}");
    wait_for(
        "the container's labelled series",
        Duration::from_secs(20),
        || {
            agent.scrape().value(
                "container_spec_memory_limit_bytes",
                &[("id", &path), ("name", &name), ("image", BUSYBOX)],
            ) == Some(67108864.0)
        },
    );
    // The label policy: listed labels only, absent ones empty, no env.
    let m = agent.scrape();
    assert!(
        m.value(
            "container_memory_usage_bytes",
            &[
                ("id", &path),
                ("container_label_team", "storage"),
                ("container_label_io_kubernetes_pod_name", "")
            ]
        )
        .is_some(),
        "whitelisted labels"
    );
    assert!(
        !m.0.contains("hunter2") && !m.0.contains("container_env_"),
        "no environment variables"
    );
    // CPU: half a core for a few seconds.
    let usage = |m: &tests::Metrics| {
        m.value(
            "container_cpu_usage_seconds_total",
            &[("id", &path), ("name", &name)],
        )
        .unwrap_or(0.0)
    };
    let (a, t0) = (usage(&agent.scrape()), std::time::Instant::now());
    thread::sleep(Duration::from_secs(5));
    let (b, t1) = (usage(&agent.scrape()), std::time::Instant::now());
    let rate = (b - a) / (t1 - t0).as_secs_f64();
    assert!(
        (0.3..=0.65).contains(&rate),
        "a --cpus 0.5 loop uses about half a core: {rate}"
    );

    // A memory hog that the OOM killer ends; its count outlives it.
    let hog = podman.run(&["--memory", "64m", BUSYBOX, "/bin/tail", "/dev/zero"]);
    let hog_path = format!("/libpod_parent/libpod-{hog}");
    wait_for(
        "the hog's OOM kill after its cgroup is gone",
        Duration::from_secs(30),
        || {
            let m = agent.scrape();
            m.value("container_oom_events_total", &[("id", &hog_path)]) == Some(1.0)
                && !Path::new(&format!("/sys/fs/cgroup/memory{hog_path}")).exists()
        },
    );
    let _ = podman.cmd().args(["rm", "-f", "-t", "0", &name]).output();
}

/// A unix socket that answers every request with `reply` after `delay`.
fn fake_engine(socket: &Path, reply: &'static str, delay: Duration) {
    let listener = UnixListener::bind(socket).unwrap();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                thread::sleep(delay);
                let _ = conn.write_all(reply.as_bytes());
            });
        }
    });
}

#[test]
fn a_broken_or_slow_runtime_costs_only_its_labels() {
    if !require_root("a_broken_or_slow_runtime_costs_only_its_labels") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &'static str, Duration); 3] = [
        (
            "garbage",
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{not json",
            Duration::ZERO,
        ),
        (
            "slow",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            Duration::from_secs(30),
        ),
        ("missing", "", Duration::ZERO),
    ];
    for (case, reply, delay) in cases {
        let socket = dir.path().join(format!("{case}.sock"));
        if case != "missing" {
            fake_engine(&socket, reply, delay);
        }
        // The same socket plays the Docker API and the CRI (which it
        // answers with HTTP/1.1 where gRPC needs HTTP/2, or not at all).
        let agent = Agent::start(&[
            "--docker-endpoint",
            socket.to_str().unwrap(),
            "--cri-endpoint",
            socket.to_str().unwrap(),
            "--housekeeping-interval",
            "1s",
        ]);
        let tree = CgroupTree::new(&format!("rt-{case}"), &["cpu", "cpuacct"]);
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let pod = "kubepods/besteffort/pod0b7f3f7c-4d3e-4bb4-9a57-7b7e3b4f2c11";
        for dir in [
            format!("docker-{id}.scope"),
            "kubepods".into(),
            "kubepods/besteffort".into(),
            pod.into(),
            format!("{pod}/{id}"),
        ] {
            tree.mkdir(&dir).unwrap();
        }
        // Collection goes on, with the path provider's name (the id).
        for (path, provider) in [
            (tree.path(&format!("docker-{id}.scope")), "docker"),
            (tree.path(&format!("{pod}/{id}")), "cri"),
        ] {
            wait_for(
                &format!("[{case}] series with empty image"),
                Duration::from_secs(20),
                || {
                    agent
                        .scrape()
                        .value(
                            "container_cpu_usage_seconds_total",
                            &[("id", &path), ("name", id), ("image", ""), ("pod", "")],
                        )
                        .is_some()
                },
            );
            if case != "missing" {
                wait_for(
                    &format!("[{case}] the {provider} failure counted"),
                    Duration::from_secs(20),
                    || {
                        agent
                            .scrape()
                            .value("cgscope_runtime_errors_total", &[("provider", provider)])
                            .unwrap_or(0.0)
                            >= 1.0
                    },
                );
            }
        }
        assert_eq!(agent.get("/healthz", None).unwrap().status, 200);
    }
}
