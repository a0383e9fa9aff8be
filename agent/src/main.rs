//! cgscope: per-cgroup resource usage and OOM kills, served as OpenMetrics.

mod cache;
mod cgroup;
mod clock;
mod collect;
mod config;
mod devices;
mod discovery;
mod ebpf;
mod errors;
mod events;
mod export;
mod machine;
mod messages;
mod oom;
mod registry;
mod runtime;
mod status;
mod supervise;

use std::{io::IsTerminal as _, sync::Arc, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::Parser as _;
use tokio::{
    signal::unix::SignalKind,
    sync::{mpsc, oneshot, watch, Notify},
};
use tracing_subscriber::{fmt, EnvFilter};

use crate::{
    cache::StatsCache,
    cgroup::{container::Context, hierarchy::Hierarchies},
    collect::{iter::IterSource, network::NetworkReader, Cadence, Collector},
    config::{CollectorMode, Config, DiscoveryMode, Groups, LogFormat, OomSource},
    devices::DeviceNames,
    discovery::{DiscoveryStats, Filter},
    ebpf::Kernel,
    errors::ErrorCounts,
    events::EventStore,
    export::sources::Sources,
    machine::{MachineInfo, MachinePaths},
    messages::Msg,
    oom::OomStats,
    registry::Registry,
    status::{Mode, Status, COLLECTOR_MODES, DISCOVERY_MODES},
    supervise::{Health, Tasks},
};

fn main() -> Result<()> {
    tune_allocator();
    let config = Config::parse();
    init_logging(&config)?;
    if let Some(dir) = &config.dump_cgroup_stats {
        return ebpf::iter::dump(dir);
    }
    tokio::runtime::Builder::new_multi_thread()
        // A node agent: two workers are plenty, file reads go to the
        // blocking pool.
        .worker_threads(2)
        .thread_name("cgscope")
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(config))
}

fn init_logging(config: &Config) -> Result<()> {
    let filter = EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("bad --log-level {:?}", config.log_level))?;
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(|e| anyhow::anyhow!("initialising logging: {e}"))
}

async fn run(config: Config) -> Result<()> {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), listen = %config.listen, "starting cgscope");
    // Every flag is checked before anything is attached or started.
    let (groups, unsupported) =
        Groups::from_flags(config.enable_metrics.as_deref(), &config.disable_metrics)
            .map_err(|e| anyhow::anyhow!("--enable-metrics/--disable-metrics: {e}"))?;
    if !unsupported.is_empty() {
        tracing::warn!(groups = ?unsupported, "these cAdvisor metric groups are accepted but not collected by cgscope");
    }
    // A port in use fails the start before anything is loaded; connections
    // wait in the backlog until the server runs.
    let listener = export::http::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let hierarchies =
        Arc::new(Hierarchies::discover(&config.proc_root).context("finding cgroup hierarchies")?);
    tracing::info!(
        layout = ?hierarchies.layout(),
        hierarchies = %hierarchies
            .list
            .iter()
            .map(|h| format!("{}={}", h.id, h.mount.display()))
            .collect::<Vec<_>>()
            .join(" "),
        "cgroup hierarchies"
    );
    let filter = Filter::new(&config.raw_cgroup_prefix_whitelist);
    let stats = Arc::new(DiscoveryStats::default());
    let events = EventStore::new(
        config.event_storage_event_limit.clone(),
        config.event_storage_age_limit.clone(),
    )
    .shared();
    let oom_stats = Arc::new(OomStats::default());
    let health = Health::default();
    let mut tasks = Tasks::new(health.clone());
    let (registry_tx, registry_rx) = mpsc::channel::<Msg>(4096);
    let (snapshot, registry) = Registry::new(
        config.container_retention,
        events.clone(),
        stats.clone(),
        oom_stats.clone(),
    )
    .start(registry_rx);
    tasks.spawn("registry", registry);

    let mut started = start_ebpf(&config)?;
    let discovery = started.discovery;
    let rescan = Arc::new(Notify::new());
    let kernel_counters = match started.kernel.as_mut() {
        Some(k) => Some(Arc::new(k.take_counters()?)),
        None => None,
    };
    match (discovery, started.kernel.as_mut()) {
        ("ebpf", Some(k)) => {
            let ring = k.take_ring_buf("CGROUP_EVENTS")?;
            tasks.spawn(
                "discovery",
                discovery::ebpf::run(
                    ring,
                    hierarchies.clone(),
                    filter.clone(),
                    stats.clone(),
                    registry_tx.clone(),
                ),
            );
        }
        _ => {
            let (h, f, st) = (hierarchies.clone(), filter.clone(), stats.clone());
            let watcher =
                tokio::task::spawn_blocking(move || discovery::inotify::Watcher::new(h, f, st))
                    .await?
                    .context("starting inotify")?;
            tracing::info!(
                watches = watcher.watched(),
                "inotify watching every cgroup directory"
            );
            tasks.spawn(
                "discovery",
                watcher.run(registry_tx.clone(), rescan.clone()),
            );
        }
    }
    // The walk starts after the event source, so nothing falls in between.
    let walker = walker(
        &config,
        hierarchies.clone(),
        filter,
        stats.clone(),
        registry_tx.clone(),
        rescan,
    )
    .await;
    tasks.spawn("walker", walker);
    release_startup_memory();
    // OOM kills are attributed by path, so their source starts once the
    // first walk has filled the registry.
    let oom = match (started.kernel.as_mut(), started.oom_ebpf) {
        (Some(k), true) => {
            let ring = k.take_ring_buf("OOM_EVENTS")?;
            tasks.spawn(
                "oom",
                oom::ebpf::run(
                    ring,
                    hierarchies.clone(),
                    config.proc_root.clone(),
                    oom_stats.clone(),
                    registry_tx.clone(),
                ),
            );
            "ebpf"
        }
        _ => {
            let memory = hierarchies.with_controller("memory").cloned();
            let reader = oom::kmsg::open(
                &config.kmsg_path,
                memory,
                config.proc_root.clone(),
                oom_stats.clone(),
                registry_tx.clone(),
            )
            .and_then(|reader| tasks.spawn_thread("kmsg", reader));
            match reader {
                Ok(()) => "kmsg",
                Err(e) => {
                    oom_stats.errors.record(
                        "kmsg_unreadable",
                        format!(
                            "cannot read {}: {e}; OOM kills are not observed (needs CAP_SYSLOG, or eBPF)",
                            config.kmsg_path.display()
                        ),
                    );
                    "none"
                }
            }
        }
    };

    let (collector_mode, iter) = choose_collector(
        &config,
        started.iter.take(),
        started.iter_unavailable.take(),
        &hierarchies,
        &groups,
    )
    .await?;
    let kernel = started.kernel;
    let status = Arc::new(Status {
        modes: vec![
            Mode {
                subsystem: "discovery",
                active: discovery,
                choices: DISCOVERY_MODES,
            },
            Mode {
                subsystem: "oom",
                active: oom,
                choices: oom::OOM_MODES,
            },
            Mode {
                subsystem: "collector",
                active: collector_mode,
                choices: COLLECTOR_MODES,
            },
        ],
        ebpf_programs: kernel
            .as_ref()
            .map(|k| k.attached().to_vec())
            .unwrap_or_default(),
    });
    tracing::info!(discovery, oom, collector = collector_mode, "modes chosen");

    let runtime_errors = Arc::new(ErrorCounts::new("runtime"));
    let cri_endpoint = config
        .cri_endpoint
        .clone()
        .unwrap_or_else(runtime::cri::probe_endpoint);
    tracing::info!(cri = %cri_endpoint.display(), docker = %config.docker_endpoint.display(), "runtime endpoints");
    let runtime = runtime::run(
        vec![
            Arc::new(runtime::cri::CriProvider::new(cri_endpoint)),
            Arc::new(runtime::docker::DockerProvider::new(
                &config.docker_endpoint,
            )),
            Arc::new(runtime::path::PathProvider),
        ],
        runtime::LabelPolicy {
            store_all: config.store_container_labels,
            whitelist: config
                .whitelisted_container_labels
                .iter()
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect(),
        },
        config.metadata_refresh,
        snapshot.clone(),
        registry_tx.clone(),
        runtime_errors.clone(),
    );
    tasks.spawn("runtime", runtime);
    let cache = Arc::new(StatsCache::new(
        config.storage_duration,
        config.housekeeping_interval,
    ));
    let collector = Arc::new(Collector {
        hierarchies: hierarchies.clone(),
        groups,
        ctx: Context::new(&config.sys_root),
        proc_root: config.proc_root.clone(),
        network: NetworkReader::new(&config.proc_root),
        errors: ErrorCounts::new("collection"),
        stats: Default::default(),
        iter,
    });
    let collect = collect::run(
        collector.clone(),
        cache.clone(),
        snapshot.clone(),
        registry_tx.clone(),
        Cadence {
            base: config.housekeeping_interval.max(Duration::from_millis(100)),
            max: config
                .max_housekeeping_interval
                .max(config.housekeeping_interval),
        },
    );
    tasks.spawn("collect", collect);

    let (machine_rx, machine) = machine_refresh(&config);
    tasks.spawn("machine", machine);
    let sources = Arc::new(Sources {
        machine: machine_rx,
        status,
        registry: snapshot,
        discovery: stats,
        events: events.clone(),
        kernel: kernel_counters,
        oom: oom_stats,
        cache,
        groups,
        devices: Arc::new(DeviceNames::new(&config.proc_root)),
        collect: Some(collector),
        http: Arc::default(),
        runtime_errors,
    });
    let (registry, agent_registry) = export::metrics::registries(sources.clone());

    tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
    let state = export::state::AppState::new(registry, agent_registry, sources, health);
    let (stop, stopping) = oneshot::channel::<()>();
    let mut server = std::pin::pin!(export::http::serve(listener, state, async {
        let _ = stopping.await;
    }));
    let failed = tokio::select! {
        served = &mut server => {
            served.context("HTTP server")?;
            bail!("the HTTP server stopped");
        }
        () = shutdown_signal() => None,
        exit = tasks.first_exit() => {
            tracing::error!(task = exit.task, "{exit}: the agent stops, to be restarted");
            Some(exit)
        }
    };
    let _ = stop.send(());
    if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
        tracing::info!(grace = ?SHUTDOWN_GRACE, "closing the connections still open");
    }
    drop(tasks);
    drop(kernel);
    match failed {
        Some(exit) => Err(anyhow::anyhow!("{exit}")),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// How long requests in flight may take to finish once the agent stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Walks every hierarchy now; the task it returns walks them again every
/// `--global-housekeeping-interval` and whenever a source asks for a rescan
/// (inotify overflow).
async fn walker(
    config: &Config,
    hierarchies: Arc<Hierarchies>,
    filter: Filter,
    stats: Arc<DiscoveryStats>,
    tx: mpsc::Sender<Msg>,
    rescan: Arc<Notify>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let every = config
        .global_housekeeping_interval
        .max(Duration::from_secs(1));
    let walk = {
        let (h, f, st) = (hierarchies.clone(), filter.clone(), stats.clone());
        move || discovery::walk::walk(&h, &f, &st)
    };
    if let Ok(first) = tokio::task::spawn_blocking(walk).await {
        let _ = tx.send(Msg::Walked(first)).await;
    }
    async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first walk is done above.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = rescan.notified() => {}
            }
            let (h, f, st) = (hierarchies.clone(), filter.clone(), stats.clone());
            let started = std::time::Instant::now();
            let result =
                match tokio::task::spawn_blocking(move || discovery::walk::walk(&h, &f, &st)).await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "cgroup walk panicked");
                        continue;
                    }
                };
            tracing::debug!(cgroups = result.found.len(), took = ?started.elapsed(), "walked every hierarchy");
            if tx.send(Msg::Walked(result)).await.is_err() {
                return;
            }
        }
    }
}

/// What eBPF gives this run.
struct Started {
    kernel: Option<Kernel>,
    discovery: &'static str,
    /// The OOM program is attached.
    oom_ebpf: bool,
    /// The cgroup iterator, loaded (not yet checked).
    iter: Option<ebpf::iter::CgroupIter>,
    /// Why the iterator is not there, when it was wanted and that was not
    /// logged already (with the whole of eBPF).
    iter_unavailable: Option<String>,
}

/// Loads the eBPF object when a subsystem asks for it and attaches each
/// subsystem's programs. In `auto`, any failure falls back with one log
/// line; an explicit `ebpf` (`iter`) fails the start with the reason.
fn start_ebpf(config: &Config) -> Result<Started> {
    let want_discovery = config.discovery != DiscoveryMode::Inotify;
    let want_oom = config.oom_source != OomSource::Kmsg;
    let want_iter = config.collector != CollectorMode::Files;
    let forced = [
        ("--discovery ebpf", config.discovery == DiscoveryMode::Ebpf),
        ("--oom-source ebpf", config.oom_source == OomSource::Ebpf),
        ("--collector iter", config.collector == CollectorMode::Iter),
    ];
    let mut started = Started {
        kernel: None,
        discovery: "inotify",
        oom_ebpf: false,
        iter: None,
        iter_unavailable: None,
    };
    if !want_discovery && !want_oom && !want_iter {
        return Ok(started);
    }
    let mut kernel = if ebpf::embedded_object().is_none() {
        if let Some((flag, _)) = forced.iter().find(|f| f.1) {
            bail!("{flag}: {}", ebpf::EbpfError::NoObject);
        }
        tracing::warn!(
            "this cgscope was built without its eBPF object: running in fallback mode \
             (inotify discovery, /dev/kmsg for OOM kills, cgroup files for every value); \
             build it with `cargo xtask build-ebpf`"
        );
        return Ok(started);
    } else {
        ebpf::raise_memlock_rlimit();
        let capacity = if want_iter {
            agent_common::STATS_CAPACITY
        } else {
            0
        };
        match Kernel::load_with(capacity) {
            Ok(k) => k,
            Err(e) => {
                if let Some((flag, _)) = forced.iter().find(|f| f.1) {
                    return Err(e).context(format!("{flag}: eBPF required"));
                }
                tracing::warn!(error = %e, "eBPF not available: falling back to inotify discovery, /dev/kmsg for OOM kills and cgroup files for every value");
                return Ok(started);
            }
        }
    };
    if want_discovery {
        match kernel.attach_cgroup(config.ebpf_classic_tracepoints) {
            Ok(()) => started.discovery = "ebpf",
            Err(e) if forced[0].1 => return Err(e).context("--discovery ebpf"),
            Err(e) => {
                tracing::warn!(error = %e, "eBPF discovery not available: falling back to inotify")
            }
        }
    }
    if want_oom {
        match kernel.attach_oom(config.ebpf_classic_tracepoints) {
            Ok(program) => {
                tracing::info!(?program, "OOM kills observed in the kernel");
                started.oom_ebpf = true;
            }
            Err(e) if forced[1].1 => return Err(e).context("--oom-source ebpf"),
            Err(e) => {
                tracing::warn!(error = %e, "eBPF OOM source not available: falling back to /dev/kmsg")
            }
        }
    }
    if want_iter {
        match ebpf::iter::CgroupIter::new(&mut kernel) {
            Ok(it) => started.iter = Some(it),
            Err(e) if forced[2].1 => return Err(e).context("--collector iter"),
            Err(e) => started.iter_unavailable = Some(e.to_string()),
        }
    }
    kernel.forget_btf();
    started.kernel = Some(kernel);
    Ok(started)
}

/// The collector's mode: the iterator if it is there and agrees with the
/// files (or is forced), the files otherwise.
async fn choose_collector(
    config: &Config,
    iter: Option<ebpf::iter::CgroupIter>,
    unavailable: Option<String>,
    hierarchies: &Hierarchies,
    groups: &Groups,
) -> Result<(&'static str, Option<IterSource>)> {
    let forced = config.collector == CollectorMode::Iter;
    if config.collector == CollectorMode::Files {
        return Ok(("files", None));
    }
    let why = match iter.map(|it| IterSource::new(it, hierarchies, groups)) {
        Some(Some(mut source)) => {
            let checked = tokio::task::spawn_blocking(move || {
                let report = source.self_check();
                (source, report)
            })
            .await
            .context("the collector's self-check panicked")?;
            match checked {
                // Nothing seen to agree (no cgroup to compare yet, or no
                // value of this layout the program reads): the files.
                (_, Ok(report)) if report.fields.is_empty() => format!(
                    "it covers no value here: none of {} could be compared with the files in {} cgroups",
                    report.unchecked, report.cgroups
                ),
                (source, Ok(report)) => {
                    tracing::info!(
                        cgroups = report.cgroups,
                        values = %report.fields,
                        unchecked = %report.unchecked,
                        "the eBPF cgroup iterator agrees with the cgroup files: collecting those values with it, the unchecked ones from files"
                    );
                    return Ok(("iter", Some(source)));
                }
                (source, Err(mismatch)) if forced => {
                    tracing::error!(%mismatch, "--collector iter: the eBPF cgroup iterator disagrees with the cgroup files; using it as asked");
                    return Ok(("iter", Some(source)));
                }
                (_, Err(mismatch)) => format!("it disagrees with the cgroup files: {mismatch}"),
            }
        }
        Some(None) => "no hierarchy holds a controller it reads for the enabled metrics".to_owned(),
        None => match unavailable {
            Some(why) => why,
            // eBPF as a whole is not there, and that was logged.
            None if !forced => return Ok(("files", None)),
            None => "eBPF is not available".to_owned(),
        },
    };
    if forced {
        bail!("--collector iter: the eBPF cgroup iterator cannot be used: {why}");
    }
    tracing::warn!("eBPF cgroup iterator not used ({why}): reading every value from cgroup files");
    Ok(("files", None))
}

/// The latest machine information, and the task that reads it again every
/// `--update-machine-info-interval`.
fn machine_refresh(
    config: &Config,
) -> (
    watch::Receiver<Option<Arc<MachineInfo>>>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let paths = MachinePaths::new(
        &config.proc_root,
        &config.sys_root,
        config.machine_id_file.clone(),
    );
    let every = config
        .update_machine_info_interval
        .max(Duration::from_secs(1));
    let (tx, rx) = watch::channel(None);
    let task = async move {
        let mut tick = tokio::time::interval(every);
        let mut failing = false;
        loop {
            tick.tick().await;
            let p = paths.clone();
            let read = tokio::task::spawn_blocking(move || MachineInfo::read(&p)).await;
            match read {
                Ok(Ok(info)) => {
                    failing = false;
                    tx.send_replace(Some(Arc::new(info)));
                }
                Ok(Err(e)) => {
                    if !failing {
                        tracing::warn!(error = %e, "reading machine information failed");
                    }
                    failing = true;
                    tx.send_replace(None);
                }
                Err(e) => tracing::error!(error = %e, "machine information task panicked"),
            }
        }
    };
    (rx, task)
}

/// Buffers of a scrape or an iterator pass (hundreds of KiB to MiB, freed
/// soon after) are mapped and unmapped rather than kept in malloc's arenas:
/// glibc otherwise raises its mmap threshold after the first such free and
/// each blocking thread's arena keeps its own copies (+20 MiB at 5,000
/// containers with the iterator).
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt with a documented parameter, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Loading BPF parses the kernel's BTF (megabytes) and the first walk lists
/// every cgroup; glibc keeps such freed memory unless asked to return it.
fn release_startup_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}
