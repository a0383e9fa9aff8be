//! Per-container usage families (cAdvisor's kubelet profile), encoded from
//! the registry's containers and the stats cache's latest samples.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::Arc,
};

use prometheus_client::{encoding::DescriptorEncoder, metrics::MetricType};

use super::{
    containers::{labels, Labeled},
    family::Family,
};
use crate::{
    cgroup::stats::{Interface, Memory, Sample},
    config::Groups,
    devices::DeviceNames,
    registry::ContainerInfo,
};

type Rows<'a> = Vec<(&'a Labeled<'a>, &'a Sample)>;
/// (name, help, value) of a memory family.
type MemoryFamily = (&'static str, &'static str, fn(&Memory) -> Option<u64>);

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// One family whose value comes from `value(sample)`; containers without it
/// get no series.
fn simple<
    V: prometheus_client::encoding::EncodeGaugeValue + prometheus_client::encoding::EncodeCounterValue,
>(
    enc: &mut DescriptorEncoder,
    rows: &Rows,
    name: &str,
    help: &str,
    ty: MetricType,
    value: impl Fn(&Sample) -> Option<V>,
) -> fmt::Result {
    let mut f = Family::new(enc, name, help, None, ty)?;
    for (c, s) in rows {
        if let Some(v) = value(s) {
            match ty {
                MetricType::Counter => f.counter(&labels(c), v)?,
                _ => f.gauge(&labels(c), v)?,
            }
        }
    }
    Ok(())
}

/// Which statistics families to write (see `metrics::Part`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Families {
    All,
    AllButMemory,
    Memory,
}

pub fn encode(
    enc: &mut DescriptorEncoder,
    containers: &[Labeled],
    latest: &HashMap<Arc<str>, Arc<Sample>>,
    groups: &Groups,
    devices: &DeviceNames,
    families: Families,
) -> fmt::Result {
    let rows: Rows = containers
        .iter()
        .filter_map(|c| Some((c, latest.get(&c.path)?.as_ref())))
        .collect();
    use MetricType::{Counter, Gauge};
    if groups.memory && families != Families::AllButMemory {
        memory(enc, &rows)?;
    }
    if families == Families::Memory {
        return Ok(());
    }
    if groups.cpu {
        cpu(enc, &rows, groups.percpu)?;
    }
    spec(enc, &rows, groups)?;
    if groups.disk_io {
        disk_io(enc, &rows, devices)?;
    }
    if groups.network {
        network(enc, &network_rows(&rows))?;
    }
    if groups.process {
        fn p(s: &Sample) -> Option<&crate::cgroup::stats::Processes> {
            s.processes.as_ref()
        }
        simple(
            enc,
            &rows,
            "container_processes",
            "Number of processes running inside the container.",
            Gauge,
            |s| p(s)?.processes,
        )?;
        simple(
            enc,
            &rows,
            "container_file_descriptors",
            "Number of open file descriptors for the container.",
            Gauge,
            |s| p(s)?.fds,
        )?;
        simple(
            enc,
            &rows,
            "container_threads",
            "Number of threads running inside the container",
            Gauge,
            |s| p(s)?.threads,
        )?;
        let mut ulimits = Family::new(
            enc,
            "container_ulimits_soft",
            "Soft ulimit values for the container root process. Unlimited if -1, except priority and nice",
            None,
            Gauge,
        )?;
        for (c, s) in &rows {
            if let Some(v) = s.processes.as_ref().and_then(|p| p.max_open_files) {
                ulimits.gauge(&(labels(c), [("ulimit", "max_open_files")]), v)?;
            }
        }
        // cAdvisor: 0 means unlimited.
        simple(
            enc,
            &rows,
            "container_threads_max",
            "Maximum number of threads allowed inside the container, infinity if value is zero",
            Gauge,
            |s| p(s)?.threads_max.map(|m| m.unwrap_or(0)),
        )?;
    }
    if groups.pressure {
        fn pr(s: &Sample) -> Option<&crate::cgroup::stats::Pressure> {
            s.pressure.as_ref()
        }
        for (name, help, pick) in [
            ("container_pressure_cpu_waiting_seconds", "Total time duration tasks in the container have waited due to CPU congestion.", (|p: &crate::cgroup::stats::Pressure| p.cpu.0) as fn(&_) -> Option<u64>),
            ("container_pressure_cpu_stalled_seconds", "Total time duration no tasks in the container could make progress due to CPU congestion.", |p| p.cpu.1),
            ("container_pressure_memory_waiting_seconds", "Total time duration tasks in the container have waited due to memory congestion.", |p| p.memory.0),
            ("container_pressure_memory_stalled_seconds", "Total time duration no tasks in the container could make progress due to memory congestion.", |p| p.memory.1),
            ("container_pressure_io_waiting_seconds", "Total time duration tasks in the container have waited due to IO congestion.", |p| p.io.0),
            ("container_pressure_io_stalled_seconds", "Total time duration no tasks in the container could make progress due to IO congestion.", |p| p.io.1),
        ] {
            simple(enc, &rows, name, help, Counter, |s| pick(pr(s)?).map(|us| us as f64 / 1e6))?;
        }
    }
    if groups.hugetlb {
        hugetlb(enc, &rows)?;
    }
    Ok(())
}

fn cpu(enc: &mut DescriptorEncoder, rows: &Rows, percpu: bool) -> fmt::Result {
    use MetricType::Counter;
    let mut usage = Family::new(
        enc,
        "container_cpu_usage_seconds",
        "Cumulative cpu time consumed in seconds.",
        None,
        Counter,
    )?;
    let mut names: Vec<String> = Vec::new();
    for (c, s) in rows {
        let Some(cpu) = &s.cpu else { continue };
        if percpu && !cpu.per_cpu_ns.is_empty() {
            while names.len() < cpu.per_cpu_ns.len() {
                names.push(format!("cpu{:02}", names.len()));
            }
            for (i, ns) in cpu.per_cpu_ns.iter().enumerate() {
                // cAdvisor leaves out CPUs a container never ran on.
                if *ns > 0 {
                    usage.counter(&(labels(c), [("cpu", names[i].as_str())]), secs(*ns))?;
                }
            }
        } else if let Some(ns) = cpu.usage_ns {
            usage.counter(&(labels(c), [("cpu", "total")]), secs(ns))?;
        }
    }
    fn cpu(s: &Sample) -> Option<&crate::cgroup::stats::Cpu> {
        s.cpu.as_ref()
    }
    simple(
        enc,
        rows,
        "container_cpu_user_seconds",
        "Cumulative user cpu time consumed in seconds.",
        Counter,
        |s| cpu(s)?.user_ns.map(secs),
    )?;
    simple(
        enc,
        rows,
        "container_cpu_system_seconds",
        "Cumulative system cpu time consumed in seconds.",
        Counter,
        |s| cpu(s)?.system_ns.map(secs),
    )?;
    // cAdvisor exports the CFS families only for containers with a quota.
    let quota = |s: &Sample| s.spec.cpu_quota_us.is_some();
    simple(
        enc,
        rows,
        "container_cpu_cfs_periods",
        "Number of elapsed enforcement period intervals.",
        Counter,
        |s| cpu(s).filter(|_| quota(s))?.periods,
    )?;
    simple(
        enc,
        rows,
        "container_cpu_cfs_throttled_periods",
        "Number of throttled period intervals.",
        Counter,
        |s| cpu(s).filter(|_| quota(s))?.throttled_periods,
    )?;
    simple(
        enc,
        rows,
        "container_cpu_cfs_throttled_seconds",
        "Total time duration the container has been throttled.",
        Counter,
        |s| cpu(s).filter(|_| quota(s))?.throttled_ns.map(secs),
    )?;
    simple(
        enc,
        rows,
        "container_cpu_cfs_burst_periods",
        "Number of periods when burst occurs.",
        Counter,
        |s| cpu(s).filter(|_| quota(s))?.bursts,
    )?;
    simple(
        enc,
        rows,
        "container_cpu_cfs_burst_seconds",
        "Total time duration the container has been bursted.",
        Counter,
        |s| cpu(s).filter(|_| quota(s))?.burst_ns.map(secs),
    )
}

fn memory(enc: &mut DescriptorEncoder, rows: &Rows) -> fmt::Result {
    use MetricType::{Counter, Gauge};
    fn m(s: &Sample) -> Option<&Memory> {
        s.memory.as_ref()
    }
    let gauges: [MemoryFamily; 11] = [
        ("container_memory_cache", "Number of bytes of page cache memory.", |m| m.cache),
        ("container_memory_rss", "Size of RSS in bytes.", |m| m.rss),
        ("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", |m| m.kernel),
        ("container_memory_mapped_file", "Size of memory mapped files in bytes.", |m| m.mapped_file),
        ("container_memory_swap", "Container swap usage in bytes.", |m| m.swap),
        ("container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was accessed", |m| m.usage),
        ("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes", |m| m.max_usage),
        ("container_memory_working_set_bytes", "Current working set in bytes.", Memory::working_set),
        ("container_memory_total_active_file_bytes", "Current total active file in bytes.", |m| m.active_file),
        ("container_memory_total_inactive_file_bytes", "Current total inactive file in bytes.", |m| m.inactive_file),
        ("container_memory_file_dirty_bytes", "Number of bytes of file cache that has been modified but not yet written back to disk.", |m| m.file_dirty),
    ];
    for (name, help, pick) in gauges {
        simple(enc, rows, name, help, Gauge, |s| pick(m(s)?))?;
    }
    simple(
        enc,
        rows,
        "container_memory_file_writeback_bytes",
        "Number of bytes of file cache that is currently being written back to disk.",
        Gauge,
        |s| m(s)?.file_writeback,
    )?;
    // cAdvisor types this a counter without `_total`, which neither
    // exposition format allows; a gauge keeps its exact name.
    simple(
        enc,
        rows,
        "container_memory_failcnt",
        "Number of memory usage hits limits",
        Gauge,
        |s| m(s)?.failcnt,
    )?;
    let counters: [MemoryFamily; 10] = [
        ("container_memory_events_low", "Cumulative count of memory.low protection breaches for the container", |m| m.events.low),
        ("container_memory_events_high", "Cumulative count of memory.high throttle events for the container", |m| m.events.high),
        ("container_memory_events_max", "Cumulative count of memory.max limit hit events for the container", |m| m.events.max),
        ("container_memory_events_oom", "Cumulative count of OOMs in the container (memory.events oom)", |m| m.events.oom),
        ("container_memory_events_oom_kill", "Cumulative count of processes of the container killed by the OOM killer, as the kernel counts them (memory.events, memory.oom_control)", |m| m.events.oom_kill),
        ("container_memory_events_oom_group_kill", "Cumulative count of group OOM kills in the container (memory.events oom_group_kill)", |m| m.events.oom_group_kill),
        ("container_memory_pgscan", "Cumulative number of pages scanned by the page reclaim algorithm.", |m| m.pgscan),
        ("container_memory_pgsteal", "Cumulative number of pages reclaimed by the page reclaim algorithm.", |m| m.pgsteal),
        ("container_memory_workingset_refault_file", "Cumulative number of refaults of previously evicted file pages.", |m| m.workingset_refault_file),
        ("container_memory_workingset_refault_anon", "Cumulative number of refaults of previously evicted anonymous pages.", |m| m.workingset_refault_anon),
    ];
    for (name, help, pick) in counters {
        simple(enc, rows, name, help, Counter, |s| pick(m(s)?))?;
    }
    let mut failures = Family::new(
        enc,
        "container_memory_failures",
        "Cumulative count of memory allocation failures.",
        None,
        Counter,
    )?;
    for (c, s) in rows {
        let Some(mem) = &s.memory else { continue };
        for (kind, v) in [("pgfault", mem.pgfault), ("pgmajfault", mem.pgmajfault)] {
            let Some(v) = v else { continue };
            // cAdvisor reports the same value for both scopes.
            for scope in ["container", "hierarchy"] {
                failures.counter(&(labels(c), [("failure_type", kind), ("scope", scope)]), v)?;
            }
        }
    }
    Ok(())
}

fn spec(enc: &mut DescriptorEncoder, rows: &Rows, groups: &Groups) -> fmt::Result {
    use MetricType::Gauge;
    if groups.cpu {
        simple(
            enc,
            rows,
            "container_spec_cpu_period",
            "CPU period of the container.",
            Gauge,
            |s| s.spec.cpu_period_us.filter(|_| s.spec.has_cpu),
        )?;
        simple(
            enc,
            rows,
            "container_spec_cpu_quota",
            "CPU quota of the container.",
            Gauge,
            |s| s.spec.cpu_quota_us,
        )?;
        simple(
            enc,
            rows,
            "container_spec_cpu_shares",
            "CPU share of the container.",
            Gauge,
            |s| s.spec.cpu_shares,
        )?;
    }
    if groups.memory {
        // cAdvisor: unlimited is 0.
        let lim = |has: bool, v: Option<u64>| has.then(|| v.unwrap_or(0));
        simple(
            enc,
            rows,
            "container_spec_memory_limit_bytes",
            "Memory limit for the container.",
            Gauge,
            |s| lim(s.spec.has_memory, s.spec.memory_limit),
        )?;
        simple(
            enc,
            rows,
            "container_spec_memory_swap_limit_bytes",
            "Memory swap limit for the container.",
            Gauge,
            |s| lim(s.spec.has_memory, s.spec.memory_swap_limit),
        )?;
        simple(
            enc,
            rows,
            "container_spec_memory_reservation_limit_bytes",
            "Memory reservation limit for the container.",
            Gauge,
            |s| lim(s.spec.has_memory, s.spec.memory_reservation),
        )?;
    }
    Ok(())
}

fn disk_io(enc: &mut DescriptorEncoder, rows: &Rows, devices: &DeviceNames) -> fmt::Result {
    use MetricType::Counter;
    // Resolve each device once per scrape.
    let mut names: HashMap<(u32, u32), String> = HashMap::new();
    for (_, s) in rows {
        for d in s.io.iter().flatten() {
            names
                .entry((d.major, d.minor))
                .or_insert_with(|| devices.name(d.major, d.minor).unwrap_or_default());
        }
    }
    type Pick = fn(&crate::cgroup::stats::DeviceIo) -> Option<u64>;
    let families: [(&str, &str, Pick); 4] = [
        (
            "container_fs_reads_bytes",
            "Cumulative count of bytes read",
            |d| d.read_bytes,
        ),
        (
            "container_fs_writes_bytes",
            "Cumulative count of bytes written",
            |d| d.write_bytes,
        ),
        (
            "container_fs_reads",
            "Cumulative count of reads completed",
            |d| d.reads,
        ),
        (
            "container_fs_writes",
            "Cumulative count of writes completed",
            |d| d.writes,
        ),
    ];
    for (name, help, pick) in families {
        let mut f = Family::new(enc, name, help, None, Counter)?;
        for (c, s) in rows {
            for d in s.io.iter().flatten() {
                if let Some(v) = pick(d) {
                    f.counter(
                        &(labels(c), [("device", names[&(d.major, d.minor)].as_str())]),
                        v,
                    )?;
                }
            }
        }
    }
    let cost: [(&str, &str); 4] = [
        (
            "container_fs_io_cost_usage_seconds",
            "Cumulative IOCost usage in seconds",
        ),
        (
            "container_fs_io_cost_wait_seconds",
            "Cumulative IOCost wait in seconds",
        ),
        (
            "container_fs_io_cost_indebt_seconds",
            "Cumulative IOCost debt in seconds",
        ),
        (
            "container_fs_io_cost_indelay_seconds",
            "Cumulative IOCost delay in seconds",
        ),
    ];
    for (i, (name, help)) in cost.into_iter().enumerate() {
        let mut f = Family::new(enc, name, help, None, Counter)?;
        for (c, s) in rows {
            for d in s.io.iter().flatten() {
                if let Some(us) = d.cost_us[i] {
                    let device = names[&(d.major, d.minor)].as_str();
                    f.counter(&(labels(c), [("device", device)]), us as f64 / 1e6)?;
                }
            }
        }
    }
    let mut usage = Family::new(
        enc,
        "container_blkio_device_usage",
        "Blkio Device bytes usage",
        None,
        Counter,
    )?;
    for (c, s) in rows {
        for d in s.io.iter().flatten() {
            let (major, minor) = (d.major.to_string(), d.minor.to_string());
            for (op, v) in [("Read", d.read_bytes), ("Write", d.write_bytes)] {
                let Some(v) = v else { continue };
                let extra = [
                    ("device", names[&(d.major, d.minor)].as_str()),
                    ("major", major.as_str()),
                    ("minor", minor.as_str()),
                    ("operation", op),
                ];
                usage.counter(&(labels(c), extra), v)?;
            }
        }
    }
    Ok(())
}

/// The rows whose network series are exported: a pod's containers share
/// its network namespace, so a pod's interfaces appear once, on its
/// sandbox as in the kubelet (so that `sum by (pod)` does not count them
/// once per container), or, while no runtime has said which cgroup is the
/// sandbox, on the pod's first container in path order.
fn network_rows<'a>(rows: &Rows<'a>) -> Rows<'a> {
    let has_network = |s: &Sample| s.network.as_ref().is_some_and(|n| !n.is_empty());
    let pod_of = |c: &'a ContainerInfo| c.identity.pod_uid.as_deref();
    let is_sandbox = |c: &ContainerInfo| c.metadata.as_ref().is_some_and(|m| m.sandbox);
    let with_sandbox: HashSet<&str> = rows
        .iter()
        .filter(|(c, s)| is_sandbox(c) && has_network(s))
        .filter_map(|(c, _)| pod_of(c))
        .collect();
    let mut served: HashSet<&str> = HashSet::new();
    rows.iter()
        .filter(|(c, s)| match pod_of(c) {
            None => true,
            Some(_) if !has_network(s) => false,
            Some(pod) if with_sandbox.contains(pod) => is_sandbox(c),
            Some(pod) => served.insert(pod),
        })
        .copied()
        .collect()
}

fn network(enc: &mut DescriptorEncoder, rows: &Rows) -> fmt::Result {
    use MetricType::Counter;
    type Pick = fn(&Interface) -> u64;
    let families: [(&str, &str, Pick); 8] = [
        (
            "container_network_receive_bytes",
            "Cumulative count of bytes received",
            |i| i.rx_bytes,
        ),
        (
            "container_network_receive_packets",
            "Cumulative count of packets received",
            |i| i.rx_packets,
        ),
        (
            "container_network_receive_packets_dropped",
            "Cumulative count of packets dropped while receiving",
            |i| i.rx_dropped,
        ),
        (
            "container_network_receive_errors",
            "Cumulative count of errors encountered while receiving",
            |i| i.rx_errors,
        ),
        (
            "container_network_transmit_bytes",
            "Cumulative count of bytes transmitted",
            |i| i.tx_bytes,
        ),
        (
            "container_network_transmit_packets",
            "Cumulative count of packets transmitted",
            |i| i.tx_packets,
        ),
        (
            "container_network_transmit_packets_dropped",
            "Cumulative count of packets dropped while transmitting",
            |i| i.tx_dropped,
        ),
        (
            "container_network_transmit_errors",
            "Cumulative count of errors encountered while transmitting",
            |i| i.tx_errors,
        ),
    ];
    for (name, help, pick) in families {
        let mut f = Family::new(enc, name, help, None, Counter)?;
        for (c, s) in rows {
            for i in s.network.iter().flatten() {
                f.counter(&(labels(c), [("interface", i.name.as_str())]), pick(i))?;
            }
        }
    }
    Ok(())
}

fn hugetlb(enc: &mut DescriptorEncoder, rows: &Rows) -> fmt::Result {
    use MetricType::Gauge;
    type Pick = fn(&crate::cgroup::stats::Hugetlb) -> Option<u64>;
    let families: [(&str, &str, MetricType, Pick); 3] = [
        // A gauge for the reason given at container_memory_failcnt.
        (
            "container_hugetlb_failcnt",
            "Number of hugepage usage hits limits",
            Gauge,
            |h| h.failcnt,
        ),
        (
            "container_hugetlb_usage_bytes",
            "Current hugepage usage in bytes",
            Gauge,
            |h| h.usage,
        ),
        (
            "container_hugetlb_max_usage_bytes",
            "Maximum hugepage usage recorded in bytes",
            Gauge,
            |h| h.max_usage,
        ),
    ];
    for (name, help, ty, pick) in families {
        let mut f = Family::new(enc, name, help, None, ty)?;
        for (c, s) in rows {
            for h in s.hugetlb.iter().flatten() {
                let Some(v) = pick(h) else { continue };
                let l = (labels(c), [("pagesize", h.pagesize.as_str())]);
                match ty {
                    MetricType::Counter => f.counter(&l, v)?,
                    _ => f.gauge(&l, v)?,
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cgroup::stats::Interface, messages::Metadata, registry::ContainerInfo};

    fn container(path: &str, sandbox: Option<bool>) -> ContainerInfo {
        ContainerInfo {
            metadata: sandbox.map(|sandbox| {
                Arc::new(Metadata {
                    sandbox,
                    ..Metadata::default()
                })
            }),
            ..ContainerInfo::for_tests(path)
        }
    }

    #[test]
    fn a_pods_network_is_exported_once() {
        let uid = "0b7f3f7c-4d3e-4bb4-9a57-7b7e3b4f2c11";
        let pod = |name: &str| format!("/kubepods/besteffort/pod{uid}/{}", name.repeat(64));
        let other = format!(
            "/kubepods/besteffort/pod{}/{}",
            uid.replace('0', "1"),
            "d".repeat(64)
        );
        let with = Sample {
            network: Some(vec![Interface {
                name: "eth0".into(),
                ..Interface::default()
            }]),
            ..Sample::default()
        };
        let without = Sample::default();
        let (app, sandbox, second, lone, host) = (
            container(&pod("a"), Some(false)),
            container(&pod("b"), Some(true)),
            container(&pod("c"), None),
            container(&other, None),
            container("/system.slice/x.service", None),
        );
        let (app, sandbox, second, lone, host) = (
            Labeled::new(&app),
            Labeled::new(&sandbox),
            Labeled::new(&second),
            Labeled::new(&lone),
            Labeled::new(&host),
        );
        let paths = |rows: Rows| {
            rows.iter()
                .map(|(c, _)| c.path.to_string())
                .collect::<Vec<_>>()
        };

        // The sandbox is known: only it.
        let rows: Rows = vec![
            (&app, &with),
            (&sandbox, &with),
            (&second, &with),
            (&host, &with),
        ];
        assert_eq!(
            paths(network_rows(&rows)),
            [pod("b"), "/system.slice/x.service".into()]
        );

        // No runtime knows the pods: the first container of each with
        // interfaces, in path order.
        let (app, sandbox) = (container(&pod("a"), None), container(&pod("b"), None));
        let (app, sandbox) = (Labeled::new(&app), Labeled::new(&sandbox));
        let rows: Rows = vec![
            (&second, &without),
            (&app, &with),
            (&sandbox, &with),
            (&lone, &with),
        ];
        assert_eq!(paths(network_rows(&rows)), [pod("a"), other]);
    }
}
