//! Loading the eBPF object for the subsystems that want it; each attaches
//! its own programs from the [`Kernel`] this returns.

use anyhow::{bail, Context as _, Result};

use super::{embedded_object, raise_memlock_rlimit, EbpfError, Kernel, LoadOptions};
use crate::{
    config::{CollectorMode, Config, DiscoveryMode, OomSource},
    errors::Chain,
    supervise::Tasks,
};

/// The flags that require eBPF, as written.
fn forced(config: &Config) -> Option<&'static str> {
    [
        ("--discovery ebpf", config.discovery == DiscoveryMode::Ebpf),
        ("--oom-source ebpf", config.oom_source == OomSource::Ebpf),
        ("--collector iter", config.collector == CollectorMode::Iter),
    ]
    .into_iter()
    .find_map(|(flag, on)| on.then_some(flag))
}

/// The loaded object, or `None` when no subsystem wants eBPF or it is not
/// available (logged once: every subsystem then falls back). A flag that
/// requires eBPF fails the start instead.
pub fn load(config: &Config, tasks: &mut Tasks) -> Result<Option<Kernel>> {
    let want_iter = config.collector != CollectorMode::Files;
    let wanted = config.discovery != DiscoveryMode::Inotify
        || config.oom_source != OomSource::Kmsg
        || want_iter;
    if !wanted {
        return Ok(None);
    }
    if embedded_object().is_none() {
        if let Some(flag) = forced(config) {
            bail!("{flag}: {}", EbpfError::NoObject);
        }
        tracing::warn!(
            "this cgscope was built without its eBPF object: running in fallback mode \
             (inotify discovery, /dev/kmsg for OOM kills, cgroup files for every value); \
             build it with `cargo xtask build-ebpf`"
        );
        return Ok(None);
    }
    raise_memlock_rlimit();
    let capacity = if want_iter {
        agent_common::STATS_CAPACITY
    } else {
        0
    };
    let options = LoadOptions {
        iter_capacity: capacity,
        unreadable_cgroup: config.ebpf_test_unreadable_cgroup,
    };
    match Kernel::load(options) {
        Ok(mut k) => {
            if let Some(logger) = k.take_logger() {
                tracing::debug!(target: super::log::TARGET, "forwarding the eBPF programs' debug messages");
                tasks.spawn("bpf-log", super::log::forward(logger));
            }
            Ok(Some(k))
        }
        Err(e) => match forced(config) {
            Some(flag) => Err(e).context(format!("{flag}: eBPF required")),
            None => {
                tracing::warn!(error = %Chain(&e), "eBPF not available: falling back to inotify discovery, /dev/kmsg for OOM kills and cgroup files for every value");
                Ok(None)
            }
        },
    }
}

/// A subsystem's eBPF part: what it attached, or, when that failed, an
/// error naming the flag that required it, else `None` with one warning
/// naming the fallback.
pub fn or_fall_back<T>(
    attached: Result<T, EbpfError>,
    required_by: Option<&'static str>,
    fallback: &str,
) -> Result<Option<T>> {
    match (attached, required_by) {
        (Ok(t), _) => Ok(Some(t)),
        (Err(e), Some(flag)) => Err(e).context(flag),
        (Err(e), None) => {
            tracing::warn!(error = %Chain(&e), "{fallback}");
            Ok(None)
        }
    }
}
