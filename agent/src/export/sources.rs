//! What `/metrics` and the API read: handles on state that other tasks own
//! and update.

use std::sync::Arc;

use tokio::sync::watch;

use crate::{events::SharedEvents, machine::MachineInfo, registry::Snapshot};

/// Inputs of the per-container families and the API; each is owned and
/// updated by its own task. (The agent's own metrics are registered by
/// their owners, see `telemetry`.)
#[derive(Debug, Clone)]
pub struct Sources {
    pub machine: watch::Receiver<Option<Arc<MachineInfo>>>,
    pub registry: watch::Receiver<Arc<Snapshot>>,
    pub events: SharedEvents,
    pub cache: Arc<crate::cache::StatsCache>,
    pub groups: crate::config::Groups,
    pub devices: Arc<crate::devices::DeviceNames>,
}

#[cfg(test)]
impl Sources {
    /// Sources with fixed machine, registry and cache contents, for
    /// encoding tests.
    pub fn for_tests(
        machine: Option<MachineInfo>,
        snapshot: Snapshot,
        cache: Arc<crate::cache::StatsCache>,
        groups: crate::config::Groups,
    ) -> Self {
        let (_tx, machine) = watch::channel(machine.map(Arc::new));
        let (_tx, registry) = watch::channel(Arc::new(snapshot));
        Self {
            machine,
            registry,
            events: crate::events::EventStore::new(
                crate::events::parse_count_policy("").unwrap(),
                crate::events::parse_age_policy("").unwrap(),
            )
            .shared(),
            cache,
            groups,
            devices: Arc::new(crate::devices::DeviceNames::new(std::path::Path::new(
                "/proc",
            ))),
        }
    }
}
