//! cgscope: per-cgroup resource usage and OOM kills, served as OpenMetrics.
//! This file is the wiring of the picture in docs/how-it-works.md: each
//! subsystem chooses its mode and starts its own tasks.

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
mod memory;
mod messages;
mod oom;
mod privileges;
mod registry;
mod runtime;
mod status;
mod supervise;
mod telemetry;

use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Parser as _;

use crate::{
    cgroup::hierarchy::Hierarchies,
    config::Config,
    devices::DeviceNames,
    discovery::DiscoveryStats,
    events::EventStore,
    export::sources::Sources,
    oom::OomStats,
    registry::Registry,
    status::{Mode, Status, SubsystemMode as _},
    supervise::{Health, Tasks},
    telemetry::Metrics,
};

fn main() -> Result<()> {
    memory::tune_allocator();
    let config = Config::parse();
    config.init_logging()?;
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

async fn run(config: Config) -> Result<()> {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), listen = %config.listen, "starting cgscope");
    // Every flag is checked, and the port bound, before anything is loaded.
    let groups = config.groups()?;
    let listener = export::http::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let hierarchies =
        Arc::new(Hierarchies::discover(&config.proc_root).context("finding cgroup hierarchies")?);
    tracing::info!(layout = ?hierarchies.layout(), hierarchies = %hierarchies.summary(), "cgroup hierarchies");

    let health = Health::default();
    let mut tasks = Tasks::new(health.clone());
    // The agent's own metrics, each registered by the subsystem that counts it.
    let mut metrics = Metrics::default();
    let (discovery_stats, oom_stats) = (
        Arc::new(DiscoveryStats::default()),
        Arc::new(OomStats::default()),
    );
    let events = EventStore::new(
        config.event_storage_event_limit.clone(),
        config.event_storage_age_limit.clone(),
    );
    events.register(&mut metrics);
    let events = events.shared();
    let (registry, owner) = Registry::new(
        config.container_retention,
        events.clone(),
        discovery_stats.clone(),
        oom_stats.clone(),
    )
    .start(&mut metrics);
    tasks.spawn("registry", owner);

    let mut kernel = ebpf::start::load(&config, &mut tasks)?;
    // Programs attach before the first walk, so nothing happens unseen.
    let oom = oom::start::open(
        &config,
        &hierarchies,
        &oom_stats,
        &registry.tx,
        kernel.as_mut(),
    )?;
    let discovery = discovery::start::start(
        &config,
        &hierarchies,
        &discovery_stats,
        &registry.tx,
        kernel.as_mut(),
        &mut tasks,
        &mut metrics,
    )
    .await?;
    let oom = oom.start(&mut tasks, &mut metrics);
    let (collector, cache) = collect::start::start(
        &config,
        &hierarchies,
        groups,
        &registry,
        kernel.as_mut(),
        &mut tasks,
        &mut metrics,
    )
    .await?;
    if let Some(counters) = kernel.as_mut().map(ebpf::Kernel::loaded).transpose()? {
        metrics.register_collector(Box::new(counters));
    }
    // The kernel's BTF and the first walk are behind us.
    memory::release_startup_memory();
    tracing::info!(
        discovery = discovery.name(),
        oom = oom.name(),
        collector = collector.name(),
        "modes chosen"
    );
    runtime::start(&config, &registry, &mut tasks, &mut metrics);
    let machine = machine::start(&config, &mut tasks);

    let status = Status {
        modes: vec![Mode::of(discovery), Mode::of(oom), Mode::of(collector)],
        ebpf_programs: kernel
            .as_ref()
            .map(|k| k.attached().to_vec())
            .unwrap_or_default(),
        health: health.clone(),
    };
    status.register(&mut metrics);
    // Everything privileged is done: programs attached, the log opened.
    privileges::drop_after_start(kernel.is_some());
    let sources = Arc::new(Sources {
        machine,
        registry: registry.snapshot.clone(),
        events,
        cache,
        groups,
        devices: Arc::new(DeviceNames::new(&config.proc_root)),
    });
    drop(registry);
    export::serve(
        listener,
        sources,
        metrics,
        health,
        tasks,
        supervise::shutdown_signal(),
    )
    .await?;
    drop(kernel);
    tracing::info!("stopped");
    Ok(())
}
