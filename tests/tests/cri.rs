//! Kubernetes pods run by a real containerd over CRI, the way a kubelet
//! runs them: cgscope must label them as the kubelet's cAdvisor does, and
//! kubernetes-mixin's expressions, evaluated by a real Prometheus, must
//! return data for them.

use std::{path::Path, time::Duration};

use tests::{
    cgroups::wait_for,
    containerd::{cri::LinuxContainerResources, Containerd, BUSYBOX_IMAGE, PAUSE_IMAGE},
    prometheus::{Prometheus, Series},
    require_root, Agent,
};

const NAMESPACE: &str = "cgscope-test";
/// kubernetes-mixin's `diskDeviceSelector` (with the `(/dev.+)|` that the
/// mixin adds for cAdvisor's device names).
const DISK_DEVICES: &str =
    r#"device=~"(/dev.+)|mmcblk.p.+|nvme.+|rbd.+|sd.+|vd.+|xvd.+|dm-.+|dasd.+""#;

fn label<'a>(s: &'a Series, k: &str) -> &'a str {
    s.0.get(k).and_then(|v| v.as_str()).unwrap_or("")
}

#[test]
fn kubernetes_pods_over_cri_get_kubelet_labels_and_mixin_queries_work() {
    let test = "kubernetes_pods_over_cri_get_kubelet_labels_and_mixin_queries_work";
    if !require_root(test) {
        return;
    }
    let Some(mut containerd) = Containerd::start("cri") else {
        return;
    };
    let socket = containerd.socket();
    let agent = Agent::start(&[
        "--cri-endpoint",
        socket.to_str().unwrap(),
        "--docker-endpoint",
        "/nonexistent/docker.sock",
        "--housekeeping-interval",
        "1s",
        "--max-housekeeping-interval",
        "1s",
        "--container-retention",
        "3s",
        // Asked again often, to see a restarting runtime keep its labels.
        "--metadata-refresh",
        "2s",
    ]);
    let Some(prom) = Prometheus::start(agent.port) else {
        return;
    };
    let pod = containerd.run_pod("web-0", NAMESPACE);
    // The snapshots (the container's /tmp) live under the temp dir.
    let pod_blkio = Path::new(tests::cgroups::ROOT).join("blkio").join(
        pod.config
            .linux
            .as_ref()
            .unwrap()
            .cgroup_parent
            .trim_start_matches('/'),
    );
    if pod_blkio.is_dir() {
        tests::cgroups::count_io_on_disk_of(&std::env::temp_dir(), &pod_blkio);
    }
    // Half a core of CPU (so it is throttled), some direct disk I/O, and a
    // steady trickle of packets out of the pod's eth0.
    let app = containerd.run_container(
        &pod,
        "app",
        "dd if=/dev/zero of=/tmp/f bs=64k count=64 oflag=direct; cat /tmp/f > /dev/null; \
         (while :; do :; done) & \
         while :; do nc -w 1 10.88.0.1 9 </dev/null; sleep 0.2; done",
        LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        },
    );
    let pod_path = pod.config.linux.as_ref().unwrap().cgroup_parent.clone();
    let app_path = format!("{pod_path}/{app}");
    let sandbox_path = format!("{pod_path}/{}", pod.id);

    // The kubelet's labels, straight from /metrics.
    let cpu = "container_cpu_usage_seconds_total";
    let wait_scrape = |what: &str, ok: &dyn Fn(&tests::Metrics) -> bool| {
        let start = std::time::Instant::now();
        loop {
            let m = agent.scrape();
            if ok(&m) {
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let lines: Vec<&str> =
                    m.0.lines()
                        .filter(|l| l.starts_with(cpu) && l.contains(&pod_path))
                        .collect();
                panic!(
                    "{what}: the pod's series are {lines:#?}\nagent log:\n{}",
                    agent.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let app_labels = [
        ("id", app_path.as_str()),
        ("container", "app"),
        ("pod", "web-0"),
        ("namespace", NAMESPACE),
        ("image", BUSYBOX_IMAGE),
        ("name", app.as_str()),
    ];
    let sandbox = [
        ("id", sandbox_path.as_str()),
        ("container", ""),
        ("pod", "web-0"),
        ("namespace", NAMESPACE),
        ("image", PAUSE_IMAGE),
        ("name", pod.id.as_str()),
    ];
    let pod_cgroup = [
        ("id", pod_path.as_str()),
        ("container", ""),
        ("pod", "web-0"),
        ("namespace", NAMESPACE),
        ("image", ""),
        ("name", ""),
    ];
    wait_scrape("the kubelet's labels", &|m| {
        [&app_labels, &sandbox, &pod_cgroup]
            .iter()
            .all(|l| m.value(cpu, &l[..]).is_some())
    });
    // runc applies the limits after it creates the cgroup: the first
    // sample may predate them.
    wait_scrape("the memory limit", &|m| {
        m.value("container_spec_memory_limit_bytes", &[("id", &app_path)]) == Some(67108864.0)
    });
    let m = agent.scrape();
    // The pod's interfaces once, on the sandbox, as in the kubelet.
    let eth0 = m.ids("container_network_transmit_packets_total");
    let pod_eth0: Vec<&String> = eth0.iter().filter(|id| id.starts_with(&pod_path)).collect();
    assert_eq!(pod_eth0, [&sandbox_path], "network series of the pod");

    // kubernetes-mixin (rules and dashboards), with `job="cgscope"` as the
    // cAdvisor selector, scoped to the test's namespace.
    let sel = format!(r#"job="cgscope", namespace="{NAMESPACE}""#);
    let wait_series = |what: &str, expr: &str, ok: &dyn Fn(&[Series]) -> bool| -> Vec<Series> {
        let mut last = vec![];
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            last = prom.series(expr);
            if ok(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("{what}: `{expr}` gave {last:?}");
    };
    let app_only = |s: &[Series]| {
        s.len() == 1 && label(&s[0], "container") == "app" && label(&s[0], "pod") == "web-0"
    };

    let cpu_rate = wait_series(
        "node_namespace_pod_container:container_cpu_usage_seconds_total:sum_rate5m",
        &format!(
            r#"sum by (namespace, pod, container) (rate(container_cpu_usage_seconds_total{{{sel}, image!=""}}[15s]))"#
        ),
        &|s| {
            s.iter()
                .any(|x| label(x, "container") == "app" && (0.3..=0.6).contains(&x.1))
        },
    );
    assert!(
        cpu_rate
            .iter()
            .all(|x| label(x, "container") == "app" || label(x, "container").is_empty()),
        "{cpu_rate:?}"
    );
    for family in [
        "container_memory_working_set_bytes",
        "container_memory_rss",
        "container_memory_cache",
        "container_memory_swap",
    ] {
        wait_series(
            family,
            &format!(r#"{family}{{{sel}, container!="", image!=""}}"#),
            &app_only,
        );
    }
    wait_series(
        "CPUThrottlingHigh",
        &format!(
            r#"sum by (container) (increase(container_cpu_cfs_throttled_periods_total{{{sel}, pod="web-0", container!=""}}[15s]))
              / sum by (container) (increase(container_cpu_cfs_periods_total{{{sel}, pod="web-0", container!=""}}[15s])) > 0.25"#
        ),
        &|s| s.len() == 1 && label(&s[0], "container") == "app",
    );
    for family in [
        "container_fs_reads_bytes_total",
        "container_fs_writes_bytes_total",
        "container_fs_reads_total",
        "container_fs_writes_total",
    ] {
        wait_series(
            family,
            &format!(
                r#"sum by (pod, container) (rate({family}{{{sel}, container!="", {DISK_DEVICES}}}[1m]))"#
            ),
            &app_only,
        );
        // The I/O happened: the counter, not just the series.
        wait_series(
            family,
            &format!(
                r#"sum by (pod, container) ({family}{{{sel}, container!="", {DISK_DEVICES}}}) > 0"#
            ),
            &app_only,
        );
    }
    for family in [
        "container_network_receive_bytes_total",
        "container_network_transmit_bytes_total",
        "container_network_receive_packets_total",
        "container_network_transmit_packets_total",
        "container_network_receive_packets_dropped_total",
        "container_network_transmit_packets_dropped_total",
    ] {
        wait_series(
            family,
            &format!(r#"sum by (pod) (rate({family}{{{sel}}}[1m]))"#),
            &|s| s.len() == 1 && label(&s[0], "pod") == "web-0",
        );
    }
    // The SYNs the app sends leave through eth0.
    wait_series(
        "packets sent",
        &format!(r#"sum by (pod) (container_network_transmit_packets_total{{{sel}}}) > 0"#),
        &|s| s.len() == 1,
    );

    // The runtime restarts (as on an upgrade): lookups fail meanwhile, but
    // the containers keep their labels, so no series ends or restarts.
    let errors = |m: &tests::Metrics| {
        m.value("cgscope_runtime_errors_total", &[("provider", "cri")])
            .unwrap_or(0.0)
    };
    let errors_before = errors(&agent.scrape());
    containerd.stop_daemon();
    wait_scrape("failed lookups while containerd is down", &|m| {
        errors(m) > errors_before
    });
    let m = agent.scrape();
    for l in [&app_labels, &sandbox, &pod_cgroup] {
        assert!(m.value(cpu, &l[..]).is_some(), "labels kept: {l:?}");
    }
    containerd.restart_daemon();

    // Removing the pod removes its series once retention has passed.
    containerd.remove_pod(&pod.id);
    wait_for("the pod's series to go", Duration::from_secs(30), || {
        agent
            .scrape()
            .ids(cpu)
            .iter()
            .all(|id| !id.starts_with(&pod_path) || id == &pod_path)
    });
}

/// A real gRPC server on the socket that does not serve the Kubernetes
/// runtime API (containerd without its CRI plugin): one counted warning,
/// the path's labels, collection unaffected.
#[test]
fn a_runtime_without_the_cri_api_costs_only_labels() {
    let test = "a_runtime_without_the_cri_api_costs_only_labels";
    if !require_root(test) {
        return;
    }
    let Some(containerd) = Containerd::start_without_cri("nocri") else {
        return;
    };
    let socket = containerd.socket();
    let agent = Agent::start(&[
        "--cri-endpoint",
        socket.to_str().unwrap(),
        "--housekeeping-interval",
        "1s",
    ]);
    let tree = containerd.cgroups.as_ref().unwrap();
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let pod = "kubepods/besteffort/pod0b7f3f7c-4d3e-4bb4-9a57-7b7e3b4f2c11";
    for dir in [
        "kubepods".to_owned(),
        "kubepods/besteffort".into(),
        pod.into(),
        format!("{pod}/{id}"),
    ] {
        for h in ["cpu", "cpuacct"] {
            std::fs::create_dir(tree.dir(h, &dir)).unwrap();
        }
    }
    let path = tree.path(&format!("{pod}/{id}"));
    wait_for("the failure counted", Duration::from_secs(20), || {
        agent
            .scrape()
            .value("cgscope_runtime_errors_total", &[("provider", "cri")])
            .unwrap_or(0.0)
            >= 1.0
    });
    let m = agent.scrape();
    assert!(
        m.value(
            "container_cpu_usage_seconds_total",
            &[("id", &path), ("name", id), ("pod", ""), ("image", "")]
        )
        .is_some(),
        "collected with the path's labels"
    );
    assert!(
        agent.log().contains("does not serve CRI runtime.v1"),
        "{}",
        agent.log()
    );
}
