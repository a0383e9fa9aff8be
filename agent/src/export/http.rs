//! The HTTP server: `/metrics` with content negotiation, `/healthz`.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use prometheus_client::encoding::{prometheus_text, text};
use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::net::TcpListener;
use tower_http::{compression::CompressionLayer, timeout::TimeoutLayer};

use super::{api, api_v2, metrics::Parts, state::AppState};

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    PrometheusText,
}

impl Format {
    /// OpenMetrics when the scraper lists it in `Accept` (Prometheus does,
    /// with a higher q than text/plain), the 0.0.4 text format otherwise.
    pub fn negotiate(headers: &HeaderMap) -> Self {
        let accepts_om = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|item| {
                let mut parts = item.split(';').map(str::trim);
                let media = parts.next().unwrap_or_default();
                let q_zero = parts.any(|p| p.replace(' ', "") == "q=0");
                media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
            });
        if accepts_om {
            Self::OpenMetrics
        } else {
            Self::PrometheusText
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::PrometheusText => prometheus_text::CONTENT_TYPE,
        }
    }
}

const SCRAPE_WAIT: Duration = Duration::from_secs(10);
/// Every request, slow clients included, ends after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/metrics/agent", get(agent_metrics))
        .route("/healthz", get(healthz))
        .route("/api/v1.3/events", get(api::events_root))
        .route("/api/v1.3/events/", get(api::events_root))
        .route("/api/v1.3/events/{*container}", get(api::events))
        .route("/api/v2.0/events", get(api::events_root))
        .route("/api/v2.0/events/", get(api::events_root))
        .route("/api/v2.0/events/{*container}", get(api::events))
        .route("/api/v2.0/machine", get(api_v2::machine))
        .route("/api/v2.0/version", get(api_v2::version))
        .route("/api/v2.0/spec", get(api_v2::spec_root))
        .route("/api/v2.0/spec/", get(api_v2::spec_root))
        .route("/api/v2.0/spec/{*container}", get(api_v2::specs))
        .route("/api/v2.0/stats", get(api_v2::stats_root))
        .route("/api/v2.0/stats/", get(api_v2::stats_root))
        .route("/api/v2.0/stats/{*container}", get(api_v2::stats))
        .with_state(state)
        .layer(CompressionLayer::new().gzip(true))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
}

/// A request's head must arrive within this, or its connection is closed
/// (hyper's timer also closes a kept-alive connection idle this long).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections open at once: a bound on the agent's file descriptors.
const MAX_CONNECTIONS: usize = 512;
/// Connections open at once from one address, so one client cannot take
/// every slot from the kubelet's probe and Prometheus.
const MAX_CONNECTIONS_PER_CLIENT: usize = 128;

/// Serves until `shutdown`, which stops accepting at once; connections
/// still open then finish their request in flight (the caller bounds how
/// long).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = hyper_util::service::TowerToHyperService::new(router(state.clone()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Slots::default();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it
                    // was accepted: neither ends the server.
                    if state.http.accept_errors.inc() == 0 {
                        tracing::warn!(error = %e, "cannot accept a connection (counted in cgscope_http_accept_errors_total; further ones are logged at debug level)");
                    } else {
                        tracing::debug!(error = %e, "cannot accept a connection");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = slots.take(peer.ip()) else {
            state.http.connections_refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            let _ = conn.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Connection slots, in all and per client address.
#[derive(Clone, Default)]
struct Slots(Arc<std::sync::Mutex<Counts>>);

#[derive(Default)]
struct Counts {
    open: usize,
    by_client: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// One open connection's slot, given back when it closes.
struct Slot {
    slots: Slots,
    client: std::net::IpAddr,
}

impl Slots {
    fn take(&self, client: std::net::IpAddr) -> Option<Slot> {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mine = c.by_client.get(&client).copied().unwrap_or(0);
        if c.open >= MAX_CONNECTIONS || mine >= MAX_CONNECTIONS_PER_CLIENT {
            return None;
        }
        c.open += 1;
        c.by_client.insert(client, mine + 1);
        Some(Slot {
            slots: self.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.0.lock().unwrap_or_else(|e| e.into_inner());
        c.open -= 1;
        if let Some(n) = c.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                c.by_client.remove(&self.client);
            }
        }
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// 503 once a task of the agent has ended, or while a source restarts:
/// what it serves is going stale or has gaps.
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    match state.health.problem() {
        None => (StatusCode::OK, text, "ok".to_owned()),
        Some(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            format!("{problem}\n"),
        ),
    }
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let parts = state.registry.clone();
    encode(&state, parts, &headers, true).await
}

async fn agent_metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let parts = state.agent_registry.clone();
    encode(&state, parts, &headers, false).await
}

/// Encodes on the blocking pool (thousands of containers take a while and
/// must not hold up the reactor), a bounded number of scrapes at a time,
/// each registry of `parts` on a thread of its own, joined in order.
async fn encode(state: &AppState, parts: Parts, headers: &HeaderMap, count: bool) -> Response {
    let http = state.http.clone();
    let Ok(Ok(permit)) =
        tokio::time::timeout(SCRAPE_WAIT, state.scrape_permits.clone().acquire_owned()).await
    else {
        http.rejected.inc();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many scrapes at once, try again\n",
        )
            .into_response();
    };
    let format = Format::negotiate(headers);
    let started = Instant::now();
    // Each part sized from the previous scrape: growing a multi-megabyte
    // String by doubling copies it several times.
    let sizes: Vec<usize> = (0..parts.len())
        .map(|i| match http.last_part_bytes.get(i) {
            Some(last) if count => (last.load(Ordering::Relaxed) as usize).saturating_mul(9) / 8,
            _ => 0,
        })
        .collect();
    // Held by the encoding threads, so a client that goes away does not
    // free the permit while its scrape is still being encoded.
    let permit = Arc::new(permit);
    let tasks: Vec<_> = (0..parts.len())
        .map(|i| {
            let (parts, permit, size) = (parts.clone(), permit.clone(), sizes[i]);
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let mut text = String::with_capacity(size.max(64 * 1024));
                match format {
                    Format::OpenMetrics => text::encode_registry(&mut text, &parts[i]),
                    Format::PrometheusText => prometheus_text::encode(&mut text, &parts[i]),
                }
                .map(|()| text)
            })
        })
        .collect();
    let mut chunks = Vec::with_capacity(tasks.len() + 1);
    for (i, task) in tasks.into_iter().enumerate() {
        let Ok(Ok(text)) = task.await else {
            tracing::error!("encoding /metrics failed");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response();
        };
        if let (true, Some(last)) = (count, http.last_part_bytes.get(i)) {
            last.store(text.len() as u64, Ordering::Relaxed);
        }
        chunks.push(Bytes::from(text));
    }
    if format == Format::OpenMetrics {
        let mut eof = String::new();
        if text::encode_eof(&mut eof).is_err() {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        chunks.push(Bytes::from(eof));
    }
    let body = Chunks::new(chunks);
    if count {
        http.scrapes.inc();
        http.last_duration.set(started.elapsed().as_secs_f64());
        http.last_bytes.set(body.len as i64);
    }
    let mut response = Body::new(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    response
}

/// A scrape's encoded parts, sent one after the other (joining them would
/// copy the whole payload once more), with their total length so the
/// response still has a `Content-Length`.
struct Chunks {
    chunks: std::collections::VecDeque<Bytes>,
    len: u64,
}

impl Chunks {
    fn new(chunks: Vec<Bytes>) -> Self {
        let len = chunks.iter().map(|c| c.len() as u64).sum();
        Self {
            chunks: chunks.into(),
            len,
        }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.pop_front();
        if let Some(chunk) = &next {
            self.len -= chunk.len() as u64;
        }
        std::task::Poll::Ready(next.map(|c| Ok(http_body::Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[tokio::test]
    async fn healthz_fails_with_the_task_that_ended_when_the_registry_loses_its_input() {
        use super::super::sources::Sources;
        use crate::{
            registry::Registry,
            supervise::{Health, Tasks},
        };
        use http_body_util::BodyExt as _;
        use tower::ServiceExt as _;

        let health = Health::default();
        let mut tasks = Tasks::new(health.clone());
        let events = crate::events::EventStore::new(
            crate::events::parse_count_policy("").unwrap(),
            crate::events::parse_age_policy("").unwrap(),
        )
        .shared();
        let mut own = crate::telemetry::Metrics::default();
        let (handle, registry) = Registry::new(
            Duration::from_secs(60),
            events,
            Arc::default(),
            Arc::default(),
        )
        .start(&mut own);
        tasks.spawn("registry", registry);
        let sources = Arc::new(Sources::for_tests(
            None,
            Default::default(),
            Arc::new(crate::cache::StatsCache::new(
                Duration::from_secs(120),
                Duration::from_secs(10),
            )),
            crate::config::Groups::kubelet(),
        ));
        let parts = super::super::metrics::registries(sources.clone(), own);
        let app = router(AppState::new(parts, sources, Arc::default(), health));
        let healthz = |app: Router| async move {
            let req = axum::http::Request::get("/healthz")
                .body(Body::empty())
                .unwrap();
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        };
        assert_eq!(healthz(app.clone()).await, (StatusCode::OK, "ok".into()));

        drop(handle);
        let exit = tokio::time::timeout(Duration::from_secs(10), tasks.first_exit())
            .await
            .expect("the registry task ends without its input");
        assert_eq!(exit.task, "registry");
        assert_eq!(
            healthz(app).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "task registry ended\n".into()
            )
        );
    }

    #[tokio::test]
    async fn chunks_are_sent_in_order_with_their_length() {
        use http_body::Body as _;
        use http_body_util::BodyExt as _;
        let body = Chunks::new(vec![
            Bytes::from("a 1\n"),
            Bytes::from("b 2\n"),
            Bytes::from("# EOF\n"),
        ]);
        assert_eq!(body.size_hint().exact(), Some(14));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"a 1\nb 2\n# EOF\n");
    }

    #[test]
    fn negotiation() {
        // What Prometheus 2.42 sends.
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(&accept(prom)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(&accept("text/plain")),
            Format::PrometheusText
        );
        assert_eq!(Format::negotiate(&HeaderMap::new()), Format::PrometheusText);
        assert_eq!(
            Format::negotiate(&accept("application/openmetrics-text; q=0, text/plain")),
            Format::PrometheusText
        );
    }
}
