//! What `/metrics` and the API read: handles on state that other tasks own
//! and update.

use std::sync::Arc;

use tokio::sync::watch;

use crate::{
    discovery::DiscoveryStats, ebpf::KernelCounters, events::SharedEvents, machine::MachineInfo,
    registry::Snapshot, status::Status,
};

/// Inputs of the collector; each is owned and updated by its own task.
#[derive(Debug, Clone)]
pub struct Sources {
    pub machine: watch::Receiver<Option<Arc<MachineInfo>>>,
    pub status: Arc<Status>,
    pub registry: watch::Receiver<Arc<Snapshot>>,
    pub discovery: Arc<DiscoveryStats>,
    pub events: SharedEvents,
    pub kernel: Option<Arc<KernelCounters>>,
    pub oom: Arc<crate::oom::OomStats>,
    pub cache: Arc<crate::cache::StatsCache>,
    pub groups: crate::config::Groups,
    pub devices: Arc<crate::devices::DeviceNames>,
    pub collect: Option<Arc<crate::collect::Collector>>,
    pub http: Arc<HttpStats>,
    pub runtime_errors: Arc<crate::errors::ErrorCounts>,
}

#[cfg(test)]
impl Sources {
    /// Sources with fixed machine, registry and cache contents and empty
    /// counters, for encoding tests.
    pub fn for_tests(
        machine: Option<MachineInfo>,
        snapshot: Snapshot,
        cache: Arc<crate::cache::StatsCache>,
        groups: crate::config::Groups,
        status: Status,
    ) -> Self {
        let (_tx, machine) = watch::channel(machine.map(Arc::new));
        let (_tx, registry) = watch::channel(Arc::new(snapshot));
        Self {
            machine,
            status: Arc::new(status),
            registry,
            discovery: Arc::default(),
            events: crate::events::EventStore::new(
                crate::events::parse_count_policy("").unwrap(),
                crate::events::parse_age_policy("").unwrap(),
            )
            .shared(),
            kernel: None,
            oom: Arc::default(),
            cache,
            groups,
            devices: Arc::new(crate::devices::DeviceNames::new(std::path::Path::new(
                "/proc",
            ))),
            collect: None,
            http: Arc::default(),
            runtime_errors: Arc::new(crate::errors::ErrorCounts::new("runtime")),
        }
    }
}

/// The HTTP server's own numbers (of the previous scrape: a scrape cannot
/// report its own duration).
#[derive(Debug, Default)]
pub struct HttpStats {
    pub scrapes: std::sync::atomic::AtomicU64,
    pub rejected: std::sync::atomic::AtomicU64,
    pub last_duration_ns: std::sync::atomic::AtomicU64,
    pub last_bytes: std::sync::atomic::AtomicU64,
    /// Size of each part of the last `/metrics`, to size the next.
    pub last_part_bytes: [std::sync::atomic::AtomicU64; 2],
}
