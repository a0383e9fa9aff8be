//! Everything that formats metrics or serves HTTP lives here; it only reads
//! state owned elsewhere.

pub mod api;
mod api_v2;
mod containers;
#[cfg(test)]
mod golden;
pub mod http;
mod json_stream;
pub mod metrics;
pub mod sources;
pub mod state;
mod stats;

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context as _, Result};
use tokio::{net::TcpListener, sync::oneshot};

use crate::{
    supervise::{Health, Tasks},
    telemetry::Metrics,
};

/// How long requests in flight may take to finish once the agent stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `/metrics`, the API and `/healthz` until `shutdown` (SIGTERM) or
/// until one of `tasks` ends, which is an error: the agent is to be
/// restarted. `own` holds the agent's own metrics as the subsystems
/// registered them; the server adds its own.
pub async fn serve(
    listener: TcpListener,
    sources: Arc<sources::Sources>,
    mut own: Metrics,
    health: Health,
    mut tasks: Tasks,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let http = Arc::new(state::HttpStats::default());
    http.register(&mut own);
    let parts = metrics::registries(sources.clone(), own);
    let state = state::AppState::new(parts, sources, http, health);
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
    let (stop, stopping) = oneshot::channel::<()>();
    let mut server = std::pin::pin!(http::serve(listener, state, async {
        let _ = stopping.await;
    }));
    let failed = tokio::select! {
        served = &mut server => {
            served.context("HTTP server")?;
            bail!("the HTTP server stopped");
        }
        () = shutdown => None,
        exit = tasks.first_exit() => {
            tracing::error!(task = exit.task, "{exit}: the agent stops, to be restarted");
            Some(exit)
        }
    };
    let _ = stop.send(());
    if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
        tracing::info!(grace = ?SHUTDOWN_GRACE, "closing the connections still open");
    }
    match failed {
        Some(exit) => Err(anyhow::anyhow!("{exit}")),
        None => Ok(()),
    }
}
