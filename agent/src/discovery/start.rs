//! Starting discovery: the event source (eBPF, else inotify), then the first
//! walk, then the periodic walker.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tokio::sync::{mpsc, Notify};

use super::{inotify::Watcher, walk::walk, DiscoveryStats, Filter};
use crate::{
    cgroup::hierarchy::Hierarchies,
    config::{Config, DiscoveryMode},
    ebpf::{ring::RingReader, start::or_fall_back, EbpfError, Kernel},
    errors::Chain,
    messages::Msg,
    supervise::Tasks,
    telemetry::Metrics,
};

crate::status::subsystem_mode! {
    /// Where cgroup creations and removals come from.
    pub enum Mode in "discovery" {
        Ebpf => "ebpf",
        Inotify => "inotify",
    }
}

/// Starts the event source, then walks every hierarchy once (the registry
/// has every cgroup when this returns) and starts the periodic walker. The
/// walk starts after the event source, so nothing falls in between.
pub async fn start(
    config: &Config,
    hierarchies: &Arc<Hierarchies>,
    stats: &Arc<DiscoveryStats>,
    tx: &mpsc::Sender<Msg>,
    kernel: Option<&mut Kernel>,
    tasks: &mut Tasks,
    metrics: &mut Metrics,
) -> Result<Mode> {
    stats.register(metrics);
    let filter = Filter::new(&config.raw_cgroup_prefix_whitelist);
    let rescan = Arc::new(Notify::new());
    let ring = match kernel {
        Some(k) if config.discovery != DiscoveryMode::Inotify => {
            let ring = k
                .attach_cgroup(config.ebpf_classic_tracepoints)
                .and_then(|()| k.take_ring_buf(agent_common::names::CGROUP_EVENTS))
                .and_then(|r| RingReader::new(r).map_err(EbpfError::Poll));
            let required = (config.discovery == DiscoveryMode::Ebpf).then_some("--discovery ebpf");
            or_fall_back(
                ring,
                required,
                "eBPF discovery not available: falling back to inotify",
            )?
        }
        _ => None,
    };
    let mode = match ring {
        Some(ring) => {
            let source = super::ebpf::run(
                ring,
                hierarchies.clone(),
                filter.clone(),
                stats.clone(),
                tx.clone(),
            );
            tasks.spawn("discovery", source);
            Mode::Ebpf
        }
        None => {
            let (h, f, st) = (hierarchies.clone(), filter.clone(), stats.clone());
            let watcher = tokio::task::spawn_blocking(move || Watcher::new(h, f, st))
                .await?
                .context("starting inotify")?;
            tracing::info!(
                watches = watcher.watched(),
                "inotify watching every cgroup directory"
            );
            tasks.spawn("discovery", watcher.run(tx.clone(), rescan.clone()));
            Mode::Inotify
        }
    };
    let every = config
        .global_housekeeping_interval
        .max(Duration::from_secs(1));
    let walker = walker(
        every,
        hierarchies.clone(),
        filter,
        stats.clone(),
        tx.clone(),
        rescan,
    )
    .await;
    tasks.spawn("walker", walker);
    Ok(mode)
}

/// Walks every hierarchy now; the task it returns walks them again `every`
/// and whenever a source asks for a rescan (inotify overflow).
async fn walker(
    every: Duration,
    hierarchies: Arc<Hierarchies>,
    filter: Filter,
    stats: Arc<DiscoveryStats>,
    tx: mpsc::Sender<Msg>,
    rescan: Arc<Notify>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let once = {
        let (h, f, st) = (hierarchies.clone(), filter.clone(), stats.clone());
        move || walk(&h, &f, &st)
    };
    if let Ok(first) = tokio::task::spawn_blocking(once).await {
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
            let result = match tokio::task::spawn_blocking(move || walk(&h, &f, &st)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %Chain(&e), "cgroup walk panicked");
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
