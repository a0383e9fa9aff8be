//! Per-container usage families (cAdvisor's kubelet profile), encoded from
//! the registry's containers and the stats cache's latest samples. Every
//! family is one row of [`FAMILIES`]: a new container metric is one row.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::Arc,
};

use prometheus_client::encoding::DescriptorEncoder;

use super::containers::{labels, Labeled};
use crate::{
    cgroup::stats::{Cpu, DeviceIo, Hugetlb, Interface, Memory, Pressure, Processes, Sample},
    config::Groups,
    devices::DeviceNames,
    registry::ContainerInfo,
    telemetry::{Family, MetricType},
};

type Rows<'a> = Vec<(&'a Labeled<'a>, &'a Sample)>;

/// One container family.
struct Spec {
    name: &'static str,
    help: &'static str,
    ty: MetricType,
    group: Group,
    series: Series,
}

/// How a family's series come from one container's sample; a value that
/// is `None` is absent (the container gets no series).
enum Series {
    Int(fn(&Sample) -> Option<u64>),
    /// Seconds, and other fractions.
    Float(fn(&Sample) -> Option<f64>),
    /// Any number of series, each with labels of its own after the
    /// container's.
    Each(fn(&Sample, &Scrape, &mut Out)),
}

/// The `--enable-metrics` group a family belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Cpu,
    Memory,
    /// The memory limits: with `memory`, but not in the memory part.
    MemorySpec,
    DiskIo,
    Network,
    Process,
    Pressure,
    Hugetlb,
}

impl Group {
    fn enabled(self, g: &Groups) -> bool {
        match self {
            Self::Cpu => g.cpu,
            Self::Memory | Self::MemorySpec => g.memory,
            Self::DiskIo => g.disk_io,
            Self::Network => g.network,
            Self::Process => g.process,
            Self::Pressure => g.pressure,
            Self::Hugetlb => g.hugetlb,
        }
    }
}

const fn gauge(group: Group, name: &'static str, help: &'static str, series: Series) -> Spec {
    Spec {
        name,
        help,
        ty: MetricType::Gauge,
        group,
        series,
    }
}

const fn counter(group: Group, name: &'static str, help: &'static str, series: Series) -> Spec {
    Spec {
        name,
        help,
        ty: MetricType::Counter,
        group,
        series,
    }
}

/// What the rows share in one scrape: device names resolved once, CPU
/// label values made once.
struct Scrape {
    percpu: bool,
    cpus: Vec<String>,
    devices: HashMap<(u32, u32), String>,
}

impl Scrape {
    fn device(&self, d: &DeviceIo) -> &str {
        self.devices
            .get(&(d.major, d.minor))
            .map_or("", String::as_str)
    }
}

/// Writes one container's series of one family; the first error stops it.
struct Out<'f, 'e, 'c> {
    family: &'f mut Family<'e>,
    ty: MetricType,
    container: &'c Labeled<'c>,
    result: fmt::Result,
}

/// A series' value, written as the kernel gave it (an integer stays one).
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(u64),
    Signed(i64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Self::Int(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Signed(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::Float(v)
    }
}

impl Out<'_, '_, '_> {
    fn series(&mut self, extra: &[(&str, &str)], v: impl Into<Value>) {
        if self.result.is_err() {
            return;
        }
        let l = (labels(self.container), extra);
        let f = &mut *self.family;
        self.result = match (self.ty, v.into()) {
            (MetricType::Counter, Value::Int(v)) => f.counter(&l, v),
            (MetricType::Counter, Value::Signed(v)) => f.counter(&l, v.max(0) as u64),
            (MetricType::Counter, Value::Float(v)) => f.counter(&l, v),
            (_, Value::Int(v)) => f.gauge(&l, v),
            (_, Value::Signed(v)) => f.gauge(&l, v),
            (_, Value::Float(v)) => f.gauge(&l, v),
        };
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn micros(us: u64) -> f64 {
    us as f64 / 1e6
}

fn cpu(s: &Sample) -> Option<&Cpu> {
    s.cpu.as_ref()
}

/// cAdvisor exports the CFS families only for containers with a quota.
fn cfs(s: &Sample) -> Option<&Cpu> {
    cpu(s).filter(|_| s.spec.cpu_quota_us.is_some())
}

fn mem(s: &Sample) -> Option<&Memory> {
    s.memory.as_ref()
}

fn procs(s: &Sample) -> Option<&Processes> {
    s.processes.as_ref()
}

fn pressure(s: &Sample) -> Option<&Pressure> {
    s.pressure.as_ref()
}

/// A memory limit as cAdvisor writes it: unlimited is 0.
fn limit(s: &Sample, v: Option<u64>) -> Option<u64> {
    s.spec.has_memory.then(|| v.unwrap_or(0))
}

fn each_device(s: &Sample, x: &Scrape, out: &mut Out, pick: fn(&DeviceIo) -> Option<Value>) {
    for d in s.io.iter().flatten() {
        if let Some(v) = pick(d) {
            out.series(&[("device", x.device(d))], v);
        }
    }
}

fn each_interface(s: &Sample, out: &mut Out, pick: fn(&Interface) -> u64) {
    for i in s.network.iter().flatten() {
        out.series(&[("interface", i.name.as_str())], pick(i));
    }
}

fn each_pagesize(s: &Sample, out: &mut Out, pick: fn(&Hugetlb) -> Option<u64>) {
    for h in s.hugetlb.iter().flatten() {
        if let Some(v) = pick(h) {
            out.series(&[("pagesize", h.pagesize.as_str())], v);
        }
    }
}

use Group::*;
use Series::{Each, Float, Int};

/// cAdvisor's container families, in the order they are written: memory
/// first (it is a part of its own, see `metrics::Part`).
#[rustfmt::skip]
static FAMILIES: &[Spec] = &[
    gauge(Memory, "container_memory_cache", "Number of bytes of page cache memory.", Int(|s| mem(s)?.cache)),
    gauge(Memory, "container_memory_rss", "Size of RSS in bytes.", Int(|s| mem(s)?.rss)),
    gauge(Memory, "container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", Int(|s| mem(s)?.kernel)),
    gauge(Memory, "container_memory_mapped_file", "Size of memory mapped files in bytes.", Int(|s| mem(s)?.mapped_file)),
    gauge(Memory, "container_memory_swap", "Container swap usage in bytes.", Int(|s| mem(s)?.swap)),
    gauge(Memory, "container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was accessed", Int(|s| mem(s)?.usage)),
    gauge(Memory, "container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes", Int(|s| mem(s)?.max_usage)),
    gauge(Memory, "container_memory_working_set_bytes", "Current working set in bytes.", Int(|s| mem(s)?.working_set())),
    gauge(Memory, "container_memory_total_active_file_bytes", "Current total active file in bytes.", Int(|s| mem(s)?.active_file)),
    gauge(Memory, "container_memory_total_inactive_file_bytes", "Current total inactive file in bytes.", Int(|s| mem(s)?.inactive_file)),
    gauge(Memory, "container_memory_file_dirty_bytes", "Number of bytes of file cache that has been modified but not yet written back to disk.", Int(|s| mem(s)?.file_dirty)),
    gauge(Memory, "container_memory_file_writeback_bytes", "Number of bytes of file cache that is currently being written back to disk.", Int(|s| mem(s)?.file_writeback)),
    // cAdvisor types this a counter without `_total`, which neither
    // exposition format allows; a gauge keeps its exact name.
    gauge(Memory, "container_memory_failcnt", "Number of memory usage hits limits", Int(|s| mem(s)?.failcnt)),
    counter(Memory, "container_memory_events_low", "Cumulative count of memory.low protection breaches for the container", Int(|s| mem(s)?.events.low)),
    counter(Memory, "container_memory_events_high", "Cumulative count of memory.high throttle events for the container", Int(|s| mem(s)?.events.high)),
    counter(Memory, "container_memory_events_max", "Cumulative count of memory.max limit hit events for the container", Int(|s| mem(s)?.events.max)),
    counter(Memory, "container_memory_events_oom", "Cumulative count of OOMs in the container (memory.events oom)", Int(|s| mem(s)?.events.oom)),
    counter(Memory, "container_memory_events_oom_kill", "Cumulative count of processes of the container killed by the OOM killer, as the kernel counts them (memory.events, memory.oom_control)", Int(|s| mem(s)?.events.oom_kill)),
    counter(Memory, "container_memory_events_oom_group_kill", "Cumulative count of group OOM kills in the container (memory.events oom_group_kill)", Int(|s| mem(s)?.events.oom_group_kill)),
    counter(Memory, "container_memory_pgscan", "Cumulative number of pages scanned by the page reclaim algorithm.", Int(|s| mem(s)?.pgscan)),
    counter(Memory, "container_memory_pgsteal", "Cumulative number of pages reclaimed by the page reclaim algorithm.", Int(|s| mem(s)?.pgsteal)),
    counter(Memory, "container_memory_workingset_refault_file", "Cumulative number of refaults of previously evicted file pages.", Int(|s| mem(s)?.workingset_refault_file)),
    counter(Memory, "container_memory_workingset_refault_anon", "Cumulative number of refaults of previously evicted anonymous pages.", Int(|s| mem(s)?.workingset_refault_anon)),
    counter(Memory, "container_memory_failures", "Cumulative count of memory allocation failures.", Each(|s, _, out| {
        let Some(m) = mem(s) else { return };
        for (kind, v) in [("pgfault", m.pgfault), ("pgmajfault", m.pgmajfault)] {
            let Some(v) = v else { continue };
            // cAdvisor reports the same value for both scopes.
            for scope in ["container", "hierarchy"] {
                out.series(&[("failure_type", kind), ("scope", scope)], v);
            }
        }
    })),

    counter(Cpu, "container_cpu_usage_seconds", "Cumulative cpu time consumed in seconds.", Each(|s, x, out| {
        let Some(c) = cpu(s) else { return };
        if x.percpu && !c.per_cpu_ns.is_empty() {
            for (ns, name) in c.per_cpu_ns.iter().zip(&x.cpus) {
                // cAdvisor leaves out CPUs a container never ran on.
                if *ns > 0 {
                    out.series(&[("cpu", name.as_str())], secs(*ns));
                }
            }
        } else if let Some(ns) = c.usage_ns {
            out.series(&[("cpu", "total")], secs(ns));
        }
    })),
    counter(Cpu, "container_cpu_user_seconds", "Cumulative user cpu time consumed in seconds.", Float(|s| cpu(s)?.user_ns.map(secs))),
    counter(Cpu, "container_cpu_system_seconds", "Cumulative system cpu time consumed in seconds.", Float(|s| cpu(s)?.system_ns.map(secs))),
    counter(Cpu, "container_cpu_cfs_periods", "Number of elapsed enforcement period intervals.", Int(|s| cfs(s)?.periods)),
    counter(Cpu, "container_cpu_cfs_throttled_periods", "Number of throttled period intervals.", Int(|s| cfs(s)?.throttled_periods)),
    counter(Cpu, "container_cpu_cfs_throttled_seconds", "Total time duration the container has been throttled.", Float(|s| cfs(s)?.throttled_ns.map(secs))),
    counter(Cpu, "container_cpu_cfs_burst_periods", "Number of periods when burst occurs.", Int(|s| cfs(s)?.bursts)),
    counter(Cpu, "container_cpu_cfs_burst_seconds", "Total time duration the container has been bursted.", Float(|s| cfs(s)?.burst_ns.map(secs))),

    gauge(Cpu, "container_spec_cpu_period", "CPU period of the container.", Int(|s| s.spec.cpu_period_us.filter(|_| s.spec.has_cpu))),
    gauge(Cpu, "container_spec_cpu_quota", "CPU quota of the container.", Int(|s| s.spec.cpu_quota_us)),
    gauge(Cpu, "container_spec_cpu_shares", "CPU share of the container.", Int(|s| s.spec.cpu_shares)),
    gauge(MemorySpec, "container_spec_memory_limit_bytes", "Memory limit for the container.", Int(|s| limit(s, s.spec.memory_limit))),
    gauge(MemorySpec, "container_spec_memory_swap_limit_bytes", "Memory swap limit for the container.", Int(|s| limit(s, s.spec.memory_swap_limit))),
    gauge(MemorySpec, "container_spec_memory_reservation_limit_bytes", "Memory reservation limit for the container.", Int(|s| limit(s, s.spec.memory_reservation))),

    counter(DiskIo, "container_fs_reads_bytes", "Cumulative count of bytes read", Each(|s, x, out| each_device(s, x, out, |d| d.read_bytes.map(Value::from)))),
    counter(DiskIo, "container_fs_writes_bytes", "Cumulative count of bytes written", Each(|s, x, out| each_device(s, x, out, |d| d.write_bytes.map(Value::from)))),
    counter(DiskIo, "container_fs_reads", "Cumulative count of reads completed", Each(|s, x, out| each_device(s, x, out, |d| d.reads.map(Value::from)))),
    counter(DiskIo, "container_fs_writes", "Cumulative count of writes completed", Each(|s, x, out| each_device(s, x, out, |d| d.writes.map(Value::from)))),
    counter(DiskIo, "container_fs_io_cost_usage_seconds", "Cumulative IOCost usage in seconds", Each(|s, x, out| each_device(s, x, out, |d| d.cost_us[0].map(|us| micros(us).into())))),
    counter(DiskIo, "container_fs_io_cost_wait_seconds", "Cumulative IOCost wait in seconds", Each(|s, x, out| each_device(s, x, out, |d| d.cost_us[1].map(|us| micros(us).into())))),
    counter(DiskIo, "container_fs_io_cost_indebt_seconds", "Cumulative IOCost debt in seconds", Each(|s, x, out| each_device(s, x, out, |d| d.cost_us[2].map(|us| micros(us).into())))),
    counter(DiskIo, "container_fs_io_cost_indelay_seconds", "Cumulative IOCost delay in seconds", Each(|s, x, out| each_device(s, x, out, |d| d.cost_us[3].map(|us| micros(us).into())))),
    counter(DiskIo, "container_blkio_device_usage", "Blkio Device bytes usage", Each(|s, x, out| {
        for d in s.io.iter().flatten() {
            let (major, minor) = (d.major.to_string(), d.minor.to_string());
            for (op, v) in [("Read", d.read_bytes), ("Write", d.write_bytes)] {
                let Some(v) = v else { continue };
                let extra = [("device", x.device(d)), ("major", &major), ("minor", &minor), ("operation", op)];
                out.series(&extra, v);
            }
        }
    })),

    counter(Network, "container_network_receive_bytes", "Cumulative count of bytes received", Each(|s, _, out| each_interface(s, out, |i| i.rx_bytes))),
    counter(Network, "container_network_receive_packets", "Cumulative count of packets received", Each(|s, _, out| each_interface(s, out, |i| i.rx_packets))),
    counter(Network, "container_network_receive_packets_dropped", "Cumulative count of packets dropped while receiving", Each(|s, _, out| each_interface(s, out, |i| i.rx_dropped))),
    counter(Network, "container_network_receive_errors", "Cumulative count of errors encountered while receiving", Each(|s, _, out| each_interface(s, out, |i| i.rx_errors))),
    counter(Network, "container_network_transmit_bytes", "Cumulative count of bytes transmitted", Each(|s, _, out| each_interface(s, out, |i| i.tx_bytes))),
    counter(Network, "container_network_transmit_packets", "Cumulative count of packets transmitted", Each(|s, _, out| each_interface(s, out, |i| i.tx_packets))),
    counter(Network, "container_network_transmit_packets_dropped", "Cumulative count of packets dropped while transmitting", Each(|s, _, out| each_interface(s, out, |i| i.tx_dropped))),
    counter(Network, "container_network_transmit_errors", "Cumulative count of errors encountered while transmitting", Each(|s, _, out| each_interface(s, out, |i| i.tx_errors))),

    gauge(Process, "container_processes", "Number of processes running inside the container.", Int(|s| procs(s)?.processes)),
    gauge(Process, "container_file_descriptors", "Number of open file descriptors for the container.", Int(|s| procs(s)?.fds)),
    gauge(Process, "container_threads", "Number of threads running inside the container", Int(|s| procs(s)?.threads)),
    gauge(Process, "container_ulimits_soft", "Soft ulimit values for the container root process. Unlimited if -1, except priority and nice", Each(|s, _, out| {
        if let Some(v) = procs(s).and_then(|p| p.max_open_files) {
            out.series(&[("ulimit", "max_open_files")], v);
        }
    })),
    // cAdvisor: 0 means unlimited.
    gauge(Process, "container_threads_max", "Maximum number of threads allowed inside the container, infinity if value is zero", Int(|s| procs(s)?.threads_max.map(|m| m.unwrap_or(0)))),

    counter(Pressure, "container_pressure_cpu_waiting_seconds", "Total time duration tasks in the container have waited due to CPU congestion.", Float(|s| pressure(s)?.cpu.0.map(micros))),
    counter(Pressure, "container_pressure_cpu_stalled_seconds", "Total time duration no tasks in the container could make progress due to CPU congestion.", Float(|s| pressure(s)?.cpu.1.map(micros))),
    counter(Pressure, "container_pressure_memory_waiting_seconds", "Total time duration tasks in the container have waited due to memory congestion.", Float(|s| pressure(s)?.memory.0.map(micros))),
    counter(Pressure, "container_pressure_memory_stalled_seconds", "Total time duration no tasks in the container could make progress due to memory congestion.", Float(|s| pressure(s)?.memory.1.map(micros))),
    counter(Pressure, "container_pressure_io_waiting_seconds", "Total time duration tasks in the container have waited due to IO congestion.", Float(|s| pressure(s)?.io.0.map(micros))),
    counter(Pressure, "container_pressure_io_stalled_seconds", "Total time duration no tasks in the container could make progress due to IO congestion.", Float(|s| pressure(s)?.io.1.map(micros))),

    // Gauges for the reason given at container_memory_failcnt.
    gauge(Hugetlb, "container_hugetlb_failcnt", "Number of hugepage usage hits limits", Each(|s, _, out| each_pagesize(s, out, |h| h.failcnt))),
    gauge(Hugetlb, "container_hugetlb_usage_bytes", "Current hugepage usage in bytes", Each(|s, _, out| each_pagesize(s, out, |h| h.usage))),
    gauge(Hugetlb, "container_hugetlb_max_usage_bytes", "Maximum hugepage usage recorded in bytes", Each(|s, _, out| each_pagesize(s, out, |h| h.max_usage))),
];

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
    let chosen: Vec<&Spec> = FAMILIES
        .iter()
        .filter(|f| f.group.enabled(groups))
        .filter(|f| match families {
            Families::All => true,
            Families::AllButMemory => f.group != Memory,
            Families::Memory => f.group == Memory,
        })
        .collect();
    let scrape = Scrape::new(&rows, groups, devices, &chosen);
    let network = if chosen.iter().any(|f| f.group == Network) {
        network_rows(&rows)
    } else {
        Rows::new()
    };
    for spec in chosen {
        let rows = if spec.group == Network {
            &network
        } else {
            &rows
        };
        let mut family = Family::new(enc, spec.name, spec.help, None, spec.ty)?;
        for (c, s) in rows {
            let mut out = Out {
                family: &mut family,
                ty: spec.ty,
                container: c,
                result: Ok(()),
            };
            match spec.series {
                Int(value) => {
                    if let Some(v) = value(s) {
                        out.series(&[], v);
                    }
                }
                Float(value) => {
                    if let Some(v) = value(s) {
                        out.series(&[], v);
                    }
                }
                Each(series) => series(s, &scrape, &mut out),
            }
            out.result?;
        }
    }
    Ok(())
}

impl Scrape {
    fn new(rows: &Rows, groups: &Groups, devices: &DeviceNames, chosen: &[&Spec]) -> Self {
        let cpus = rows
            .iter()
            .filter_map(|(_, s)| Some(cpu(s)?.per_cpu_ns.len()))
            .max()
            .unwrap_or(0);
        // Each device resolved once per scrape.
        let mut names = HashMap::new();
        if chosen.iter().any(|f| f.group == DiskIo) {
            for d in rows.iter().flat_map(|(_, s)| s.io.iter().flatten()) {
                names
                    .entry((d.major, d.minor))
                    .or_insert_with(|| devices.name(d.major, d.minor).unwrap_or_default());
            }
        }
        Self {
            percpu: groups.percpu,
            cpus: (0..cpus).map(|i| format!("cpu{i:02}")).collect(),
            devices: names,
        }
    }
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
