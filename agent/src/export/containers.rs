//! Per-container families, with the kubelet's label set.

use std::{fmt, time::SystemTime};

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabel as _, EncodeLabelSet, LabelSetEncoder},
    metrics::MetricType,
};

use super::metrics::Family;
use crate::registry::{ContainerInfo, Snapshot};

/// The kubelet's fixed labels (`/metrics/cadvisor`), in its order. Values
/// other than `id` come from the runtime metadata providers; empty until
/// one knows them.
pub fn labels(c: &ContainerInfo) -> ContainerLabels<'_> {
    let md = c.metadata.as_deref();
    let get = |f: fn(&crate::runtime::Metadata) -> &str| md.map_or("", f);
    ContainerLabels {
        base: [
            ("container", get(|m| &m.container)),
            ("id", &c.path),
            ("image", get(|m| &m.image)),
            ("name", get(|m| &m.name)),
            ("namespace", get(|m| &m.namespace)),
            ("pod", get(|m| &m.pod)),
        ],
        extra: md.map_or(&[], |m| m.exported_labels.as_slice()),
    }
}

/// The kubelet's six labels, then the runtime labels the label policy
/// exports (`container_label_*`; none by default).
pub struct ContainerLabels<'a> {
    base: [(&'static str, &'a str); 6],
    extra: &'a [(String, String)],
}

impl EncodeLabelSet for ContainerLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        self.base.encode(encoder)?;
        for (k, v) in self.extra {
            (k.as_str(), v.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

fn seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub fn encode(
    encoder: &mut DescriptorEncoder,
    snapshot: &Snapshot,
    now: SystemTime,
    oom_event: bool,
) -> fmt::Result {
    let mut start = Family::new(
        encoder,
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        None,
        MetricType::Gauge,
    )?;
    for c in &snapshot.containers {
        start.gauge(&labels(c), seconds(c.created))?;
    }
    let mut created = Family::new(
        encoder,
        "container_creation_time_seconds",
        "Container creation time since unix epoch in seconds.",
        None,
        MetricType::Gauge,
    )?;
    for c in &snapshot.containers {
        created.gauge(&labels(c), seconds(c.created))?;
    }
    if oom_event {
        let mut oom = Family::new(
            encoder,
            "container_oom_events",
            "Count of out of memory events observed for the container",
            None,
            MetricType::Counter,
        )?;
        for c in &snapshot.containers {
            oom.counter(&labels(c), c.oom_kills)?;
        }
    }
    // cAdvisor: -1 when the container has no health check, which is every
    // container cgscope sees until a runtime provider knows better.
    let mut health = Family::new(
        encoder,
        "container_health_state",
        "The result of the container's health check",
        None,
        MetricType::Gauge,
    )?;
    for c in &snapshot.containers {
        health.gauge(&labels(c), -1)?;
    }
    let mut seen = Family::new(
        encoder,
        "container_last_seen",
        "Last time a container was seen by the exporter",
        None,
        MetricType::Gauge,
    )?;
    for c in &snapshot.containers {
        // A removed container was last seen when it went away.
        seen.gauge(&labels(c), seconds(c.removed.unwrap_or(now)))?;
    }
    // Errors are per value and counted in cgscope_collection_errors_total;
    // a scrape never fails as a whole.
    Family::new(
        encoder,
        "container_scrape_error",
        "1 if there was an error while getting container metrics, 0 otherwise",
        None,
        MetricType::Gauge,
    )?
    .gauge(&super::metrics::NO_LABELS, 0)?;
    Ok(())
}
