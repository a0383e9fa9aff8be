//! Choosing and starting the OOM source: the kernel's `mark_victim` through
//! eBPF, else the kernel log.

use std::{path::PathBuf, sync::Arc};

use anyhow::Result;
use tokio::sync::mpsc;

use super::OomStats;
use crate::{
    cgroup::hierarchy::Hierarchies,
    config::{Config, OomSource},
    ebpf::{ring::RingReader, start::or_fall_back, EbpfError, Kernel},
    errors::Chain,
    messages::Msg,
    status::SubsystemMode as _,
    supervise::Tasks,
    telemetry::Metrics,
};

crate::status::subsystem_mode! {
    /// Where OOM kills come from.
    pub enum Mode in "oom" {
        Ebpf => "ebpf",
        Kmsg => "kmsg",
        /// Neither could be opened: only the kernel's per-cgroup counters.
        None => "none",
    }
}

/// An OOM source that is open (its program attached, or the log opened at
/// its end) and not yet read.
pub struct Source {
    reader: Reader,
    hierarchies: Arc<Hierarchies>,
    proc: PathBuf,
    stats: Arc<OomStats>,
    tx: mpsc::Sender<Msg>,
}

enum Reader {
    Ebpf(Box<RingReader>),
    Kmsg(Box<dyn FnOnce(crate::supervise::Health) + Send>),
    None,
}

/// Opens the source `--oom-source` asks for; kills from now on are kept
/// until [`Source::start`] reads them.
pub fn open(
    config: &Config,
    hierarchies: &Arc<Hierarchies>,
    stats: &Arc<OomStats>,
    tx: &mpsc::Sender<Msg>,
    kernel: Option<&mut Kernel>,
) -> Result<Source> {
    let ring = match kernel {
        Some(k) if config.oom_source != OomSource::Kmsg => {
            let attached = k
                .attach_oom(config.ebpf_classic_tracepoints)
                .and_then(|program| {
                    let ring = k.take_ring_buf(agent_common::names::OOM_EVENTS)?;
                    Ok((program, RingReader::new(ring).map_err(EbpfError::Poll)?))
                });
            let required = (config.oom_source == OomSource::Ebpf).then_some("--oom-source ebpf");
            let fallback = "eBPF OOM source not available: falling back to /dev/kmsg";
            or_fall_back(attached, required, fallback)?.map(|(program, ring)| {
                tracing::info!(?program, "OOM kills observed in the kernel");
                ring
            })
        }
        _ => None,
    };
    let reader = match ring {
        Some(ring) => Reader::Ebpf(Box::new(ring)),
        None => {
            let memory = hierarchies.with_controller("memory").cloned();
            let path = &config.kmsg_path;
            match super::kmsg::open(
                path,
                memory,
                config.proc_root.clone(),
                stats.clone(),
                tx.clone(),
            ) {
                Ok(reader) => Reader::Kmsg(Box::new(reader)),
                Err(e) => {
                    stats.errors.record(
                        "kmsg_unreadable",
                        format!(
                            "cannot read {}: {e}; OOM kills are not observed (needs CAP_SYSLOG, or eBPF)",
                            path.display()
                        ),
                    );
                    Reader::None
                }
            }
        }
    };
    Ok(Source {
        reader,
        hierarchies: hierarchies.clone(),
        proc: config.proc_root.clone(),
        stats: stats.clone(),
        tx: tx.clone(),
    })
}

impl Source {
    /// Starts reading. Kills are attributed by path, so this comes once the
    /// first walk has filled the registry. Its metrics are registered
    /// with the mode it ends in.
    pub fn start(self, tasks: &mut Tasks, metrics: &mut Metrics) -> Mode {
        let Self {
            reader,
            hierarchies,
            proc,
            stats,
            tx,
        } = self;
        let health = tasks.health();
        let mode = match reader {
            Reader::Ebpf(ring) => {
                tasks.spawn(
                    "oom",
                    super::ebpf::run(*ring, hierarchies, proc, stats.clone(), tx, health),
                );
                Mode::Ebpf
            }
            Reader::Kmsg(reader) => match tasks.spawn_thread("kmsg", move || reader(health)) {
                Ok(()) => Mode::Kmsg,
                Err(e) => {
                    stats.errors.record(
                        "kmsg_unreadable",
                        format!("cannot start the kernel log reader: {}", Chain(&e)),
                    );
                    Mode::None
                }
            },
            Reader::None => Mode::None,
        };
        stats.register(metrics, mode.name());
        mode
    }
}
