//! What the HTTP handlers share.

use std::sync::{atomic::AtomicU64, Arc};

use tokio::sync::Semaphore;

use super::{metrics::Parts, sources::Sources};
use crate::{
    supervise::Health,
    telemetry::{Counter, Gauge, GaugeF64, Metrics},
};

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// `/metrics`, in parts encoded at once (see `metrics::Part`).
    pub registry: Parts,
    /// Machine and self-metrics only: cheap to scrape often.
    pub agent_registry: Parts,
    pub sources: Arc<Sources>,
    pub http: Arc<HttpStats>,
    pub scrape_permits: Arc<Semaphore>,
    pub health: Health,
}

impl AppState {
    pub fn new(
        (registry, agent_registry): (Parts, Parts),
        sources: Arc<Sources>,
        http: Arc<HttpStats>,
        health: Health,
    ) -> Self {
        Self {
            registry,
            agent_registry,
            sources,
            http,
            scrape_permits: Arc::new(Semaphore::new(CONCURRENT_SCRAPES)),
            health,
        }
    }
}

/// Scrapes encoded at once; more wait up to `http::SCRAPE_WAIT`, then get 503.
/// Each holds one response in memory, so this bounds the memory scrapes
/// can take.
const CONCURRENT_SCRAPES: usize = 4;

/// The HTTP server's own numbers (of the previous scrape: a scrape cannot
/// report its own duration).
#[derive(Debug, Default)]
pub struct HttpStats {
    pub scrapes: Counter,
    pub rejected: Counter,
    pub last_duration: GaugeF64,
    pub last_bytes: Gauge,
    pub connections_refused: Counter,
    pub accept_errors: Counter,
    /// Size of each part of the last `/metrics`, to size the next.
    pub last_part_bytes: [AtomicU64; 3],
}

impl HttpStats {
    pub fn register(&self, m: &mut Metrics) {
        m.register(
            "cgscope_scrapes",
            "Scrapes of /metrics served",
            self.scrapes.clone(),
        );
        m.register(
            "cgscope_scrapes_rejected",
            "Scrapes refused with 503 because too many were already being encoded",
            self.rejected.clone(),
        );
        m.register(
            "cgscope_last_scrape_duration_seconds",
            "Time the previous /metrics scrape took to encode",
            self.last_duration.clone(),
        );
        m.register(
            "cgscope_last_scrape_size_bytes",
            "Size of the previous /metrics response before compression",
            self.last_bytes.clone(),
        );
        m.register(
            "cgscope_http_connections_refused",
            "Connections closed at once because the agent held 512 already, or 128 from the same address",
            self.connections_refused.clone(),
        );
        m.register(
            "cgscope_http_accept_errors",
            "Connections that could not be accepted (out of file descriptors, or reset first)",
            self.accept_errors.clone(),
        );
    }
}
