//! Command line.

use std::{io::IsTerminal as _, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "cgscope",
    version,
    about = "Per-cgroup CPU, memory, I/O, network, process and OOM metrics as OpenMetrics",
    long_about = None
)]
pub struct Config {
    /// Address of the HTTP server (/metrics, /healthz).
    #[arg(long, env = "CGSCOPE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter (tracing's EnvFilter syntax, e.g. `info,cgscope=debug`).
    #[arg(long, env = "CGSCOPE_LOG", default_value = "info")]
    pub log_level: String,

    /// How cgroups are discovered: eBPF tracepoints, inotify, or eBPF when it
    /// loads and inotify otherwise.
    #[arg(long, value_enum, default_value_t = DiscoveryMode::Auto)]
    pub discovery: DiscoveryMode,

    /// Where OOM kills come from: the kernel's mark_victim tracepoint
    /// through eBPF, the kernel log, or eBPF when it loads and the log
    /// otherwise.
    #[arg(long, value_enum, default_value_t = OomSource::Auto)]
    pub oom_source: OomSource,

    /// How memory usage, max usage, failcnt, kernel memory and limits,
    /// cpuacct usage, cpu shares, CFS quota, period and throttling, and
    /// pids current/max are read: an eBPF cgroup iterator pass per
    /// hierarchy (`iter`), their cgroup files (`files`), or `auto`: the
    /// iterator if it loads and agrees with the files on a sample of
    /// cgroups at start, the files otherwise. Every other value is read
    /// from files in all modes.
    #[arg(long, value_enum, default_value_t = CollectorMode::Auto)]
    pub collector: CollectorMode,

    /// Attach the cgroup and OOM programs as classic tracepoints even where
    /// the kernel offers `tp_btf` (which needs no perf event): tests that
    /// fallback on kernels that have both.
    #[arg(long, hide = true)]
    pub ebpf_classic_tracepoints: bool,

    /// Tests only: the cgroup `tp_btf` programs read at a wrong offset, so
    /// that their reads fail (counted, and logged under
    /// `cgscope::bpf_programs` at debug level).
    #[arg(long, hide = true)]
    pub ebpf_test_unreadable_cgroup: bool,

    /// The kernel log to parse for OOM kills: /dev/kmsg (followed from its
    /// end), or a file of records in the same format (read from its start
    /// and followed).
    #[arg(long, default_value = "/dev/kmsg")]
    pub kmsg_path: PathBuf,

    /// Docker Engine API socket (also Podman's `podman system service`)
    /// asked for container names, images and labels.
    #[arg(long, default_value = "/var/run/docker.sock")]
    pub docker_endpoint: PathBuf,

    /// CRI socket (containerd, CRI-O) asked for Kubernetes pod, namespace,
    /// container name and image. Default: the first of
    /// /run/containerd/containerd.sock, /run/crio/crio.sock,
    /// /var/run/crio/crio.sock that is a socket.
    #[arg(long)]
    pub cri_endpoint: Option<PathBuf>,

    /// How often the metadata of every live container is asked again (a
    /// runtime that was down is asked again after at most 30 s).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub metadata_refresh: Duration,

    /// Export every runtime label of a container as `container_label_<key>`
    /// (cAdvisor's standalone behaviour; off, as in the kubelet, because it
    /// multiplies series).
    #[arg(long)]
    pub store_container_labels: bool,

    /// Runtime labels to export as `container_label_<key>` (comma separated),
    /// present on every container's series, empty where it lacks them.
    #[arg(long, value_delimiter = ',')]
    pub whitelisted_container_labels: Vec<String>,

    /// How often every hierarchy is walked to repair what the event sources
    /// missed (cAdvisor's global housekeeping).
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub global_housekeeping_interval: Duration,

    /// How long a removed container's series stay scrapeable (its last
    /// values and OOM count). Keep it above two scrape intervals.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub container_retention: Duration,

    /// Only track cgroups under these path prefixes (comma separated; `/`
    /// is always tracked). Empty: track every cgroup.
    #[arg(long, value_delimiter = ',', default_value = "")]
    pub raw_cgroup_prefix_whitelist: Vec<String>,

    /// Events kept per type: `default=<n>,<type>=<n>` with types
    /// containerCreation, containerDeletion, oom, oomKill; 0 stores none.
    #[arg(long, default_value = "default=10000", value_parser = crate::events::parse_count_policy)]
    pub event_storage_event_limit: crate::events::PerType<usize>,

    /// Maximum age of stored events per type: `default=24h,oom=1h`.
    #[arg(long, default_value = "default=24h", value_parser = crate::events::parse_age_policy)]
    pub event_storage_age_limit: crate::events::PerType<Duration>,

    /// Metric groups to collect and export, replacing the default set
    /// (cAdvisor's names: cpu, percpu, memory, diskIO, network, process,
    /// oom_event, pressure, hugetlb).
    #[arg(long, value_delimiter = ',')]
    pub enable_metrics: Option<Vec<String>>,

    /// Metric groups to leave out of the default set.
    #[arg(long, value_delimiter = ',')]
    pub disable_metrics: Vec<String>,

    /// Base interval between two collections of a container.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub housekeeping_interval: Duration,

    /// Longest interval a container whose counters do not move backs off to.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub max_housekeeping_interval: Duration,

    /// How long samples are kept per container (the stats cache).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub storage_duration: Duration,

    /// How often machine information is re-read.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub update_machine_info_interval: Duration,

    /// Where procfs is mounted (`/host/proc` in a container).
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,

    /// Where sysfs is mounted.
    #[arg(long, default_value = "/sys")]
    pub sys_root: PathBuf,

    /// Files to read the machine id from, first one found wins.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "/etc/machine-id,/var/lib/dbus/machine-id"
    )]
    pub machine_id_file: Vec<PathBuf>,

    /// Diagnostic: walk the cgroups under this directory with the eBPF
    /// cgroup iterator (the values `--collector iter` reads in the kernel),
    /// print one JSON line per cgroup and one with the pass's cost, and
    /// exit.
    #[arg(long, value_name = "CGROUP_DIR")]
    pub dump_cgroup_stats: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Logs to stderr as `--log-level` and `--log-format` say.
    pub fn init_logging(&self) -> anyhow::Result<()> {
        let filter = tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .with_context(|| format!("bad --log-level {:?}", self.log_level))?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        }
        .map_err(|e| anyhow::anyhow!("initialising logging: {e}"))
    }

    /// The metric groups `--enable-metrics`/`--disable-metrics` ask for;
    /// warns about those accepted but not collected.
    pub fn groups(&self) -> anyhow::Result<Groups> {
        let (groups, unsupported) =
            Groups::from_flags(self.enable_metrics.as_deref(), &self.disable_metrics)
                .map_err(|e| anyhow::anyhow!("--enable-metrics/--disable-metrics: {e}"))?;
        if !unsupported.is_empty() {
            tracing::warn!(groups = ?unsupported, "these cAdvisor metric groups are accepted but not collected by cgscope");
        }
        Ok(groups)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OomSource {
    Auto,
    Ebpf,
    Kmsg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CollectorMode {
    Auto,
    Iter,
    Files,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiscoveryMode {
    Auto,
    Ebpf,
    Inotify,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn defaults_match_cadvisor() {
        let c = Config::try_parse_from(["cgscope"]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.update_machine_info_interval, Duration::from_secs(300));
        assert_eq!(c.discovery, DiscoveryMode::Auto);
        assert_eq!(c.global_housekeeping_interval, Duration::from_secs(60));
        assert_eq!(c.container_retention, Duration::from_secs(120));
        assert!(
            crate::discovery::Filter::new(&c.raw_cgroup_prefix_whitelist)
                .prefixes
                .is_empty()
        );
        assert_eq!(c.event_storage_event_limit.default, 10_000);
    }

    #[test]
    fn durations_and_modes_parse() {
        let c = Config::try_parse_from([
            "cgscope",
            "--update-machine-info-interval",
            "90s",
            "--discovery",
            "inotify",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(c.update_machine_info_interval, Duration::from_secs(90));
        assert_eq!(c.discovery, DiscoveryMode::Inotify);
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(Config::try_parse_from(["cgscope", "--discovery", "magic"]).is_err());
    }
}

/// The metric groups (cAdvisor's `MetricKind`s) this agent collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Groups {
    pub cpu: bool,
    pub percpu: bool,
    pub memory: bool,
    pub disk_io: bool,
    pub network: bool,
    pub process: bool,
    pub oom_event: bool,
    pub pressure: bool,
    pub hugetlb: bool,
}

/// Names cAdvisor accepts that cgscope knows but does not collect (their
/// values are 0 or absent in the kubelet too); accepted so existing flags
/// keep working, and warned about once.
pub const UNSUPPORTED_GROUPS: &[&str] = &[
    "cpuLoad",
    "disk",
    "sched",
    "memory_numa",
    "tcp",
    "advtcp",
    "udp",
    "app",
    "perf_event",
    "referenced_memory",
    "cpu_topology",
    "resctrl",
    "cpuset",
];

impl Groups {
    pub fn all() -> Self {
        Self {
            cpu: true,
            percpu: true,
            memory: true,
            disk_io: true,
            network: true,
            process: true,
            oom_event: true,
            pressure: true,
            hugetlb: true,
        }
    }

    /// The kubelet's set: cpu, memory, diskIO, network, process, oom_event,
    /// plus pressure (PSI) where the kernel has it.
    pub fn kubelet() -> Self {
        Self {
            percpu: false,
            hugetlb: false,
            ..Self::all()
        }
    }

    fn slot(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "cpu" => &mut self.cpu,
            "percpu" => &mut self.percpu,
            "memory" => &mut self.memory,
            "diskIO" => &mut self.disk_io,
            "network" => &mut self.network,
            "process" => &mut self.process,
            "oom_event" => &mut self.oom_event,
            "pressure" => &mut self.pressure,
            "hugetlb" => &mut self.hugetlb,
            _ => return None,
        })
    }

    /// Applies `--enable-metrics` / `--disable-metrics`; returns the names
    /// that are accepted but not collected.
    pub fn from_flags(
        enable: Option<&[String]>,
        disable: &[String],
    ) -> Result<(Self, Vec<String>), String> {
        let mut g = match enable {
            Some(_) => Self {
                cpu: false,
                percpu: false,
                memory: false,
                disk_io: false,
                network: false,
                process: false,
                oom_event: false,
                pressure: false,
                hugetlb: false,
            },
            None => Self::kubelet(),
        };
        let mut unsupported = Vec::new();
        for (names, on) in [(enable.unwrap_or_default(), true), (disable, false)] {
            for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
                match g.slot(name) {
                    Some(slot) => *slot = on,
                    None if UNSUPPORTED_GROUPS.contains(&name) => unsupported.push(name.to_owned()),
                    None => return Err(format!("unknown metric group {name:?}")),
                }
            }
        }
        Ok((g, unsupported))
    }
}

#[cfg(test)]
mod group_tests {
    use super::*;

    #[test]
    fn metric_groups() {
        let (g, _) = Groups::from_flags(None, &[]).unwrap();
        assert_eq!(g, Groups::kubelet());
        assert!(g.cpu && !g.percpu && g.process && g.pressure);
        let (g, u) = Groups::from_flags(Some(&["cpu".into(), "cpuLoad".into()]), &[]).unwrap();
        assert!(g.cpu && !g.memory);
        assert_eq!(u, ["cpuLoad"]);
        let (g, _) = Groups::from_flags(None, &["network".into()]).unwrap();
        assert!(!g.network && g.memory);
        assert!(Groups::from_flags(None, &["bogus".into()]).is_err());
    }
}
