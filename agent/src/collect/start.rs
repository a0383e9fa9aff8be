//! Choosing how values are read (the eBPF cgroup iterator where it agrees
//! with the files, else the files) and starting the housekeeping scheduler.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context as _, Result};

use super::{iter::IterSource, network::NetworkReader, run, Cadence, Collector};
use crate::{
    cache::StatsCache,
    cgroup::{container::Context, hierarchy::Hierarchies},
    config::{CollectorMode, Config, Groups},
    ebpf::{iter::CgroupIter, Kernel},
    errors::{Chain, ErrorCounts},
    registry::Handle,
    supervise::Tasks,
    telemetry::Metrics,
};

crate::status::subsystem_mode! {
    /// Where the values the iterator can read come from.
    pub enum Mode in "collector" {
        Iter => "iter",
        Files => "files",
    }
}

/// Chooses the mode (loading and checking the iterator when `--collector`
/// allows it) and starts collecting every container of the registry into
/// the stats cache it returns.
pub async fn start(
    config: &Config,
    hierarchies: &Arc<Hierarchies>,
    groups: Groups,
    registry: &Handle,
    kernel: Option<&mut Kernel>,
    tasks: &mut Tasks,
    metrics: &mut Metrics,
) -> Result<(Mode, Arc<StatsCache>)> {
    let cache = Arc::new(StatsCache::new(
        config.storage_duration,
        config.housekeeping_interval,
    ));
    cache.register(metrics);
    let iter = choose(config, kernel, hierarchies, &groups).await?;
    let mode = if iter.is_some() {
        Mode::Iter
    } else {
        Mode::Files
    };
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
    collector.register(metrics);
    let cadence = Cadence {
        base: config.housekeeping_interval.max(Duration::from_millis(100)),
        max: config
            .max_housekeeping_interval
            .max(config.housekeeping_interval),
    };
    let scheduler = run(
        collector.clone(),
        cache.clone(),
        registry.snapshot.clone(),
        registry.tx.clone(),
        cadence,
    );
    tasks.spawn("collect", scheduler);
    Ok((mode, cache))
}

/// The iterator if it loads and agrees with the files (or is forced), else
/// `None`: the files.
async fn choose(
    config: &Config,
    kernel: Option<&mut Kernel>,
    hierarchies: &Hierarchies,
    groups: &Groups,
) -> Result<Option<IterSource>> {
    let forced = config.collector == CollectorMode::Iter;
    if config.collector == CollectorMode::Files {
        return Ok(None);
    }
    let iter = match kernel.map(CgroupIter::new) {
        Some(Ok(it)) => Ok(it),
        Some(Err(e)) if forced => return Err(e).context("--collector iter"),
        Some(Err(e)) => Err(Chain(&e).to_string()),
        // eBPF as a whole is not there, and that was logged.
        None if !forced => return Ok(None),
        None => Err("eBPF is not available".to_owned()),
    };
    let why = match iter.map(|it| IterSource::new(it, hierarchies, groups)) {
        Ok(Some(mut source)) => {
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
                    return Ok(Some(source));
                }
                (source, Err(mismatch)) if forced => {
                    tracing::error!(%mismatch, "--collector iter: the eBPF cgroup iterator disagrees with the cgroup files; using it as asked");
                    return Ok(Some(source));
                }
                (_, Err(mismatch)) => format!("it disagrees with the cgroup files: {mismatch}"),
            }
        }
        Ok(None) => "no hierarchy holds a controller it reads for the enabled metrics".to_owned(),
        Err(why) => why,
    };
    if forced {
        bail!("--collector iter: the eBPF cgroup iterator cannot be used: {why}");
    }
    tracing::warn!("eBPF cgroup iterator not used ({why}): reading every value from cgroup files");
    Ok(None)
}
