//! Compatibility with cAdvisor's own golden `/metrics` output: every
//! `container_*` family cAdvisor has is served with the same type, help
//! text and label names, except the differences listed here (and in the
//! README) on purpose.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Arc,
};

use prometheus_client::encoding::prometheus_text;

use super::{metrics::registry, sources::Sources};
use crate::{
    cache::StatsCache,
    cgroup::{
        container::{sample, Context, Dirs},
        hierarchy::{Hierarchies, Hierarchy, Version},
        read::Reader,
        stats::{Hugetlb, Interface, Pressure},
    },
    config::Groups,
    errors::ErrorCounts,
    registry::{ContainerInfo, Snapshot},
};

/// Families cgscope does not serve, and why (see the README).
const NOT_SERVED: &[&str] = &[
    // cpuLoad: always 0 in the kubelet, being removed there.
    "container_cpu_load_average_10s",
    "container_cpu_load_d_average_10s",
    "container_tasks_state",
    // sched, app, memory_numa, cpuset, tcp/udp/advtcp, perf, resctrl,
    // referenced_memory: off in the kubelet.
    "container_cpu_schedstat_run_periods_total",
    "container_cpu_schedstat_run_seconds_total",
    "container_cpu_schedstat_runqueue_seconds_total",
    "container_custom_app_metric_1",
    "container_custom_app_metric_2",
    "container_custom_app_metric_3",
    "container_memory_numa_pages",
    "container_memory_migrate",
    "container_network_advance_tcp_stats_total",
    "container_network_tcp6_usage_total",
    "container_network_tcp_usage_total",
    "container_network_udp6_usage_total",
    "container_network_udp_usage_total",
    "container_perf_events_scaling_ratio",
    "container_perf_events_total",
    "container_perf_uncore_events_scaling_ratio",
    "container_perf_uncore_events_total",
    "container_llc_occupancy_bytes",
    "container_memory_bandwidth_bytes",
    "container_memory_bandwidth_local_bytes",
    "container_referenced_bytes",
    // disk: per-container filesystem usage needs a rootfs walk per container.
    "container_fs_inodes_free",
    "container_fs_inodes_total",
    "container_fs_limit_bytes",
    "container_fs_usage_bytes",
    // v1 CFQ files (CFQ left the kernel in 5.0) and the `/` container's
    // /proc/diskstats values.
    "container_fs_io_current",
    "container_fs_io_time_seconds_total",
    "container_fs_io_time_weighted_seconds_total",
    "container_fs_read_seconds_total",
    "container_fs_write_seconds_total",
    "container_fs_reads_merged_total",
    "container_fs_writes_merged_total",
    "container_fs_sector_reads_total",
    "container_fs_sector_writes_total",
    // A readlink per file descriptor.
    "container_sockets",
];

/// cAdvisor types these counters but names them without `_total`.
const GAUGE_NOT_COUNTER: &[&str] = &["container_memory_failcnt", "container_hugetlb_failcnt"];

/// cAdvisor's standalone base labels; cgscope has the kubelet's.
const STANDALONE_BASE: &[&str] = &["id", "image", "name", "zone_name"];
const KUBELET_BASE: &[&str] = &["container", "id", "image", "name", "namespace", "pod"];

#[derive(Debug, Default)]
struct FamilyInfo {
    help: String,
    ty: String,
    labels: BTreeSet<String>,
}

fn parse(text: &str) -> BTreeMap<String, FamilyInfo> {
    let mut out: BTreeMap<String, FamilyInfo> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.entry(name.to_owned()).or_default().help = help.to_owned();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap();
            out.entry(name.to_owned()).or_default().ty = ty.to_owned();
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap();
            let name = &line[..name_end];
            let family = out.entry(name.to_owned()).or_default();
            if line[name_end..].starts_with('{') {
                let labels = &line[name_end + 1..line.rfind('}').unwrap()];
                for part in labels.split("\",") {
                    if let Some((k, _)) = part.split_once("=\"") {
                        family.labels.insert(k.trim_start_matches(',').to_owned());
                    }
                }
            }
        }
    }
    out
}

/// One container with every group's values filled from the v1 fixtures.
fn everything() -> Sources {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroupfs/v1");
    let h = |id, c: &str| Hierarchy {
        id,
        version: Version::V1,
        controllers: vec![c.to_owned()],
        mount: base.join(c),
        mount_root: "/".into(),
    };
    let hs = Hierarchies {
        list: vec![
            h(1, "cpu"),
            h(2, "cpuacct"),
            h(4, "memory"),
            h(7, "blkio"),
            h(8, "pids"),
        ],
    };
    let ids = hs.list.iter().map(|x| (x.id, 1)).collect();
    let dirs = Dirs::new(&hs, &ids, "/test");
    let e = ErrorCounts::new("collection");
    let mut s = sample(
        &dirs,
        &Groups::all(),
        &Context::default(),
        &crate::cgroup::stats::Known::default(),
        &mut Reader::default(),
        &e,
    );
    let p = s.processes.get_or_insert_with(Default::default);
    (p.processes, p.threads, p.fds, p.max_open_files) = (Some(1), Some(2), Some(5), Some(1024));
    s.network = Some(vec![Interface {
        name: "eth0".into(),
        rx_bytes: 1,
        ..Interface::default()
    }]);
    s.pressure = Some(Pressure {
        cpu: (Some(1), Some(1)),
        memory: (Some(1), Some(1)),
        io: (Some(1), Some(1)),
    });
    s.hugetlb = Some(vec![Hugetlb {
        pagesize: "2MB".into(),
        usage: Some(1),
        max_usage: Some(1),
        failcnt: Some(0),
    }]);
    s.memory.as_mut().unwrap().events = crate::cgroup::stats::MemoryEvents {
        low: Some(0),
        high: Some(0),
        max: Some(0),
        oom: Some(0),
        oom_kill: Some(0),
        oom_group_kill: Some(0),
        local_oom_kill: Some(0),
    };
    s.io.as_mut().unwrap()[0].cost_us = [Some(1); 4];
    let cache = Arc::new(StatsCache::new(
        std::time::Duration::from_secs(120),
        std::time::Duration::from_secs(10),
    ));
    let path: Arc<str> = Arc::from("/test");
    cache.push(&path, s);
    let info = ContainerInfo {
        ids,
        created_exact: true,
        ..ContainerInfo::for_tests("/test")
    };
    let snapshot = Snapshot {
        containers: vec![Arc::new(info)],
    };
    Sources::for_tests(None, snapshot, cache, Groups::all())
}

#[test]
fn every_cadvisor_family_is_served_alike_or_listed() {
    let golden_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cadvisor-golden/prometheus_metrics");
    let golden = parse(&std::fs::read_to_string(&golden_path).unwrap());
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry(everything())).unwrap();
    let ours = parse(&text);
    let mut problems = Vec::new();
    let mut compared = 0;
    for (name, g) in golden.iter().filter(|(n, _)| n.starts_with("container_")) {
        if NOT_SERVED.contains(&name.as_str()) {
            assert!(
                !ours.contains_key(name),
                "{name} is listed as not served but is"
            );
            continue;
        }
        let Some(o) = ours.get(name) else {
            problems.push(format!("missing {name}"));
            continue;
        };
        compared += 1;
        let ty = if GAUGE_NOT_COUNTER.contains(&name.as_str()) {
            "gauge"
        } else {
            g.ty.as_str()
        };
        if o.ty != ty {
            problems.push(format!("{name}: type {} (cAdvisor {})", o.ty, g.ty));
        }
        if o.help != g.help {
            problems.push(format!("{name}: help {:?} (cAdvisor {:?})", o.help, g.help));
        }
        let extra = |labels: &BTreeSet<String>, base: &[&str]| -> BTreeSet<String> {
            labels
                .iter()
                .filter(|l| {
                    !base.contains(&l.as_str())
                        && !l.starts_with("container_label_")
                        && !l.starts_with("container_env_")
                })
                .cloned()
                .collect()
        };
        if extra(&o.labels, KUBELET_BASE) != extra(&g.labels, STANDALONE_BASE) {
            problems.push(format!(
                "{name}: labels {:?} (cAdvisor {:?})",
                o.labels, g.labels
            ));
        }
        if !KUBELET_BASE.iter().all(|l| o.labels.contains(*l)) && !o.labels.is_empty() {
            problems.push(format!(
                "{name}: lacks the kubelet's labels: {:?}",
                o.labels
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(compared >= 50, "only {compared} families compared");
}

#[test]
fn the_parts_of_metrics_join_to_the_whole() {
    let types = |text: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(str::to_owned)
            .collect()
    };
    // `container_last_seen` of a live container is the time of the scrape.
    let lines = |text: &str| -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with("container_last_seen{"))
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    let mut whole = String::new();
    prometheus_text::encode(&mut whole, &registry(everything())).unwrap();
    let (parts, _) = super::metrics::registries(Arc::new(everything()), Default::default());
    // The last part is the agent's own metrics.
    let texts: Vec<String> = parts[..parts.len() - 1]
        .iter()
        .map(|r| {
            let mut t = String::new();
            prometheus_text::encode(&mut t, r).unwrap();
            t
        })
        .collect();
    assert_eq!(texts.len(), 2);
    assert!(
        types(&texts[0]).is_disjoint(&types(&texts[1])),
        "a family in both parts"
    );
    assert!(
        texts.iter().all(|t| t.len() > 1000),
        "both parts carry weight"
    );
    assert_eq!(lines(&texts.concat()), lines(&whole));
}
