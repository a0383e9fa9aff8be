//! cAdvisor's v2.0 JSON API for machine, version, specs and stats, with its
//! field names, so scripts written against cAdvisor keep working.

use std::{collections::BTreeMap, collections::HashMap, sync::Arc, time::SystemTime};

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse as _, Response},
    Json,
};
use serde::Serialize;

use super::{api::ApiError, json_stream, state::AppState};
use crate::{
    cache::StatsCache,
    cgroup::stats::Sample,
    clock::rfc3339,
    events::is_same_or_below,
    registry::{ContainerInfo, Snapshot},
};

fn container_path(raw: &str) -> String {
    format!("/{}", raw.trim_start_matches('/').trim_end_matches('/'))
}

pub fn not_found(path: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("unknown container {path:?}"))
}

/// The containers a request names: one, or it and everything below with
/// `recursive=true` (pointers, for a response streamed after the
/// snapshot has moved on).
fn select(
    snapshot: &Snapshot,
    path: &str,
    q: &HashMap<String, String>,
) -> Result<Vec<Arc<ContainerInfo>>, ApiError> {
    let recursive = match q.get("recursive").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(v) => {
            return Err(ApiError::bad_param(
                "recursive",
                v,
                "expected true or false",
            ))
        }
    };
    let found: Vec<_> = snapshot
        .containers
        .iter()
        .filter(|c| {
            if recursive {
                is_same_or_below(&c.path, path)
            } else {
                &*c.path == path
            }
        })
        .cloned()
        .collect();
    if found.is_empty() {
        return Err(not_found(path));
    }
    Ok(found)
}

pub async fn machine(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let m = state.sources.machine.borrow().clone();
    let m = m.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "machine information is not available yet".into(),
        )
    })?;
    let mut v = serde_json::to_value(&*m)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    v["timestamp"] = rfc3339(SystemTime::now()).into();
    Ok(Json(v))
}

pub async fn version() -> Json<&'static str> {
    Json(env!("CARGO_PKG_VERSION"))
}

#[derive(Serialize)]
struct CpuSpec {
    limit: u64,
    max_limit: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    quota: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    period: Option<u64>,
}

#[derive(Serialize)]
struct MemorySpec {
    limit: u64,
    reservation: u64,
    swap_limit: u64,
}

#[derive(Serialize)]
struct ContainerSpec {
    creation_time: String,
    labels: BTreeMap<String, String>,
    aliases: Vec<String>,
    namespace: String,
    has_cpu: bool,
    cpu: CpuSpec,
    has_memory: bool,
    memory: MemorySpec,
    has_network: bool,
    has_diskio: bool,
    has_custom_metrics: bool,
    image: String,
}

fn spec(c: &ContainerInfo, s: Option<&Sample>, machine_memory: u64) -> ContainerSpec {
    let sp = s.map(|s| s.spec.clone()).unwrap_or_default();
    let mut labels = BTreeMap::new();
    if let Some(uid) = &c.identity.pod_uid {
        labels.insert("io.kubernetes.pod.uid".to_owned(), uid.clone());
    }
    ContainerSpec {
        creation_time: rfc3339(c.created),
        labels,
        aliases: c.identity.container_id.iter().cloned().collect(),
        namespace: String::new(),
        has_cpu: sp.has_cpu,
        cpu: CpuSpec {
            limit: sp.cpu_shares.unwrap_or(0),
            max_limit: 0,
            quota: sp.cpu_quota_us,
            period: sp.cpu_period_us,
        },
        has_memory: sp.has_memory,
        // cAdvisor's API reports the machine's memory for "unlimited".
        memory: MemorySpec {
            limit: sp.memory_limit.unwrap_or(machine_memory),
            reservation: sp.memory_reservation.unwrap_or(0),
            swap_limit: sp.memory_swap_limit.unwrap_or(machine_memory),
        },
        has_network: s.is_some_and(|s| s.network.is_some()),
        has_diskio: s.is_some_and(|s| s.io.is_some()),
        has_custom_metrics: false,
        image: String::new(),
    }
}

pub async fn spec_root(state: State<AppState>, q: Query<HashMap<String, String>>) -> Response {
    specs(state, Path(String::new()), q).await
}

pub async fn specs(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let machine_memory = state
        .sources
        .machine
        .borrow()
        .as_ref()
        .map_or(0, |m| m.memory_capacity);
    each_selected(&state, &container_path(&raw), &q, move |cache, c| {
        let latest = cache.latest(&c.path);
        json_stream::entry(&c.path, &spec(c, latest.as_deref(), machine_memory))
    })
}

/// Streams the entry `f` makes of each container the request selects.
fn each_selected(
    state: &AppState,
    path: &str,
    q: &HashMap<String, String>,
    mut f: impl FnMut(&StatsCache, &ContainerInfo) -> Vec<u8> + Send + Unpin + 'static,
) -> Response {
    let snapshot = state.sources.registry.borrow().clone();
    let mut selected = match select(&snapshot, path, q) {
        Ok(s) => s.into_iter(),
        Err(e) => return e.into_response(),
    };
    let cache = state.sources.cache.clone();
    json_stream::object(move || {
        let c = selected.next()?;
        Some(f(&cache, &c))
    })
}

fn cpu_json(s: &Sample) -> Option<serde_json::Value> {
    let c = s.cpu.as_ref()?;
    Some(serde_json::json!({
        "usage": {
            "total": c.usage_ns,
            "per_cpu_usage": if c.per_cpu_ns.is_empty() { None } else { Some(&c.per_cpu_ns) },
            "user": c.user_ns,
            "system": c.system_ns,
        },
        "cfs": {
            "periods": c.periods,
            "throttled_periods": c.throttled_periods,
            "throttled_time": c.throttled_ns,
            "burst_periods": c.bursts,
            "burst_time": c.burst_ns,
        },
    }))
}

fn memory_json(s: &Sample) -> Option<serde_json::Value> {
    let m = s.memory.as_ref()?;
    Some(serde_json::json!({
        "usage": m.usage,
        "max_usage": m.max_usage,
        "cache": m.cache,
        "rss": m.rss,
        "swap": m.swap,
        "mapped_file": m.mapped_file,
        "working_set": m.working_set(),
        "failcnt": m.failcnt,
        "kernel": m.kernel,
        "container_data": { "pgfault": m.pgfault, "pgmajfault": m.pgmajfault },
        "hierarchical_data": { "pgfault": m.pgfault, "pgmajfault": m.pgmajfault },
    }))
}

fn stats_json(s: &Sample) -> serde_json::Value {
    let network = s.network.as_ref().map(|ifaces| {
        serde_json::json!({
            "interfaces": ifaces.iter().map(|i| serde_json::json!({
                "name": i.name,
                "rx_bytes": i.rx_bytes, "rx_packets": i.rx_packets, "rx_errors": i.rx_errors, "rx_dropped": i.rx_dropped,
                "tx_bytes": i.tx_bytes, "tx_packets": i.tx_packets, "tx_errors": i.tx_errors, "tx_dropped": i.tx_dropped,
            })).collect::<Vec<_>>(),
        })
    });
    let diskio = s.io.as_ref().map(|devs| {
        let per = |bytes: bool| -> Vec<serde_json::Value> {
            devs.iter()
                .map(|d| {
                    let (r, w) = if bytes { (d.read_bytes, d.write_bytes) } else { (d.reads, d.writes) };
                    serde_json::json!({ "major": d.major, "minor": d.minor, "stats": { "Read": r, "Write": w } })
                })
                .collect()
        };
        serde_json::json!({ "io_service_bytes": per(true), "io_serviced": per(false) })
    });
    let processes = s.processes.as_ref().map(|p| {
        serde_json::json!({
            "process_count": p.processes,
            "fd_count": p.fds,
            "thread_count": p.threads,
            "threads_max": p.threads_max.map(|m| m.unwrap_or(0)),
        })
    });
    serde_json::json!({
        "timestamp": s.at.map(rfc3339),
        "has_cpu": s.cpu.is_some(),
        "cpu": cpu_json(s),
        "has_memory": s.memory.is_some(),
        "memory": memory_json(s),
        "has_network": network.is_some(),
        "network": network,
        "has_diskio": diskio.is_some(),
        "diskio": diskio,
        "has_processes": processes.is_some(),
        "processes": processes,
    })
}

pub async fn stats_root(state: State<AppState>, q: Query<HashMap<String, String>>) -> Response {
    stats(state, Path(String::new()), q).await
}

/// `count` samples of each container selected (`-1`: every one the cache
/// holds, `--storage-duration` of them), streamed (see [`json_stream`]).
pub async fn stats(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let count = match q.get("count") {
        None => 64,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n < 0 => usize::MAX,
            Ok(n) => n as usize,
            Err(_) => {
                return ApiError::bad_param("count", v, "expected an integer").into_response()
            }
        },
    };
    each_selected(&state, &container_path(&raw), &q, move |cache, c| {
        let samples: Vec<serde_json::Value> = cache
            .recent(&c.path, count)
            .iter()
            .map(|s| stats_json(s))
            .collect();
        json_stream::entry(&c.path, &samples)
    })
}
