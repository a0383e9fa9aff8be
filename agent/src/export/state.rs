//! What the HTTP handlers share.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use super::sources::Sources;
use crate::supervise::Health;

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// `/metrics`, in parts encoded at once (see `metrics::Part`).
    pub registry: Arc<[Registry]>,
    /// Machine and self-metrics only: cheap to scrape often.
    pub agent_registry: Arc<[Registry]>,
    pub sources: Arc<Sources>,
    pub scrape_permits: Arc<Semaphore>,
    pub health: Health,
}

impl AppState {
    pub fn new(
        registry: Vec<Registry>,
        agent_registry: Registry,
        sources: Arc<Sources>,
        health: Health,
    ) -> Self {
        Self {
            registry: registry.into(),
            agent_registry: Arc::new([agent_registry]),
            sources,
            scrape_permits: Arc::new(Semaphore::new(CONCURRENT_SCRAPES)),
            health,
        }
    }
}

/// Scrapes encoded at once; more wait up to `http::SCRAPE_WAIT`, then get 503.
/// Each holds one response in memory, so this bounds the memory scrapes
/// can take.
const CONCURRENT_SCRAPES: usize = 4;
