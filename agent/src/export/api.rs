//! cAdvisor's JSON API, the parts people script against.

use std::{collections::HashMap, time::SystemTime};

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use super::state::AppState;
use crate::events::{EventQuery, EventType};

/// A 4xx/5xx with a JSON body that says what was wrong.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub fn new(status: StatusCode, message: String) -> Self {
        Self(status, message)
    }

    pub fn bad_param(name: &str, value: &str, why: &str) -> Self {
        bad_param(name, value, why)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad_param(name: &str, value: &str, why: &str) -> ApiError {
    ApiError(
        StatusCode::BAD_REQUEST,
        format!("bad value {value:?} for query parameter {name:?}: {why}"),
    )
}

fn flag(q: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match q.get(name).map(String::as_str) {
        None => Ok(false),
        Some("true" | "1" | "") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(v) => Err(bad_param(name, v, "expected true or false")),
    }
}

fn time(q: &HashMap<String, String>, name: &str) -> Result<Option<SystemTime>, ApiError> {
    q.get(name)
        .map(|v| humantime::parse_rfc3339_weak(v).map_err(|e| bad_param(name, v, &e.to_string())))
        .transpose()
}

/// Parses cAdvisor's event query options.
pub fn event_query(container: &str, q: &HashMap<String, String>) -> Result<EventQuery, ApiError> {
    if flag(q, "stream")? {
        return Err(bad_param(
            "stream",
            "true",
            "streaming is not supported; poll with start_time",
        ));
    }
    let mut types = Vec::new();
    for (name, t) in [
        ("oom_events", EventType::Oom),
        ("oom_kill_events", EventType::OomKill),
        ("creation_events", EventType::ContainerCreation),
        ("deletion_events", EventType::ContainerDeletion),
    ] {
        if flag(q, name)? {
            types.push(t);
        }
    }
    // No type selected (or all_events): every type.
    if types.is_empty() || flag(q, "all_events")? {
        types = EventType::ALL.to_vec();
    }
    let max_events = match q.get("max_events") {
        None => 10,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n < 0 => usize::MAX,
            Ok(n) => n as usize,
            Err(_) => return Err(bad_param("max_events", v, "expected an integer")),
        },
    };
    Ok(EventQuery {
        types,
        start: time(q, "start_time")?,
        end: time(q, "end_time")?,
        max_events,
        container: Some(format!("/{}", container.trim_start_matches('/'))),
        subcontainers: flag(q, "subcontainers")?,
    })
}

pub async fn events_root(state: State<AppState>, q: Query<HashMap<String, String>>) -> Response {
    events(state, Path(String::new()), q).await
}

/// The events asked for, streamed (see `json_stream`): the query copies
/// only pointers to the stored events.
pub async fn events(
    State(state): State<AppState>,
    Path(container): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let query = match event_query(&container, &q) {
        Ok(query) => query,
        Err(e) => return e.into_response(),
    };
    let found = {
        let store = state
            .sources
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        store.query(&query)
    };
    let mut found = found.into_iter();
    super::json_stream::array(move || Some(super::json_stream::item(&*found.next()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_options() {
        let e = event_query(
            "",
            &q(&[
                ("oom_events", "true"),
                ("subcontainers", "true"),
                ("max_events", "-1"),
            ]),
        )
        .unwrap();
        assert_eq!(e.types, [EventType::Oom]);
        assert!(e.subcontainers);
        assert_eq!(e.max_events, usize::MAX);
        assert_eq!(e.container.as_deref(), Some("/"));
        let all = event_query(
            "kubepods/pod1",
            &q(&[("start_time", "2026-11-29T00:00:00Z")]),
        )
        .unwrap();
        assert_eq!(all.types.len(), 4);
        assert_eq!(all.container.as_deref(), Some("/kubepods/pod1"));
        assert!(all.start.is_some());
        assert_eq!(all.max_events, 10);
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for (k, v) in [
            ("max_events", "ten"),
            ("oom_events", "yes"),
            ("start_time", "yesterday"),
            ("stream", "true"),
        ] {
            let ApiError(code, msg) = event_query("", &q(&[(k, v)])).err().unwrap();
            assert_eq!(code, StatusCode::BAD_REQUEST);
            assert!(msg.contains(k), "{msg}");
        }
    }
}
