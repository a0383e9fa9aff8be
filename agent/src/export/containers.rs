//! Per-container families, with the kubelet's label set.

use std::{
    fmt::{self, Write as _},
    time::SystemTime,
};

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabel as _, EncodeLabelSet, LabelSetEncoder},
    metrics::MetricType,
};

use crate::registry::{ContainerInfo, Snapshot};
use crate::telemetry::{Family, NO_LABELS};

/// A container with its kubelet labels (`/metrics/cadvisor`: `container`,
/// `id`, `image`, `name`, `namespace`, `pod`, in that order) escaped and
/// joined once per scrape. They are the same on each of its few dozen
/// series, and encoding them label by label was half of a scrape's time.
pub struct Labeled<'a> {
    info: &'a ContainerInfo,
    /// `container="…",id="…",image="…",name="…",namespace="…",pod`: the
    /// five first labels and the last key; the `pod` value goes through
    /// the encoder like any value.
    head: String,
}

impl<'a> Labeled<'a> {
    pub fn new(info: &'a ContainerInfo) -> Self {
        let md = info.metadata.as_deref();
        let get = |f: fn(&crate::messages::Metadata) -> &str| md.map_or("", f);
        let mut head = String::with_capacity(96 + info.path.len());
        for (key, value) in [
            ("container", get(|m| &m.container)),
            ("id", &info.path),
            ("image", get(|m| &m.image)),
            ("name", get(|m| &m.name)),
            ("namespace", get(|m| &m.namespace)),
        ] {
            head.push_str(key);
            head.push_str("=\"");
            escape_into(&mut head, value);
            head.push_str("\",");
        }
        head.push_str("pod");
        Self { info, head }
    }
}

impl std::ops::Deref for Labeled<'_> {
    type Target = ContainerInfo;

    fn deref(&self) -> &ContainerInfo {
        self.info
    }
}

/// Every container of the snapshot, labelled.
pub fn labeled(snapshot: &Snapshot) -> Vec<Labeled<'_>> {
    snapshot
        .containers
        .iter()
        .map(|c| Labeled::new(c))
        .collect()
}

/// A label value as both exposition formats escape it.
fn escape_into(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The kubelet's six labels, then the runtime labels the label policy
/// exports (`container_label_*`; none by default). Values other than `id`
/// come from the runtime metadata providers; empty until one knows them.
pub fn labels<'a>(c: &'a Labeled<'_>) -> ContainerLabels<'a> {
    let md = c.info.metadata.as_deref();
    ContainerLabels {
        head: &c.head,
        pod: md.map_or("", |m| &m.pod),
        extra: md.map_or(&[], |m| m.exported_labels.as_slice()),
    }
}

pub struct ContainerLabels<'a> {
    head: &'a str,
    pod: &'a str,
    extra: &'a [(String, String)],
}

impl EncodeLabelSet for ContainerLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        // The pre-rendered labels are written as the key of the last one
        // (key text is written as is); its value is escaped as usual.
        let mut label = encoder.encode_label();
        let mut key = label.encode_label_key()?;
        key.write_str(self.head)?;
        let mut value = key.encode_label_value()?;
        value.write_str(self.pod)?;
        value.finish()?;
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
    containers: &[Labeled],
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
    for c in containers {
        start.gauge(&labels(c), seconds(c.created))?;
    }
    let mut created = Family::new(
        encoder,
        "container_creation_time_seconds",
        "Container creation time since unix epoch in seconds.",
        None,
        MetricType::Gauge,
    )?;
    for c in containers {
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
        for c in containers {
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
    for c in containers {
        health.gauge(&labels(c), -1)?;
    }
    let mut seen = Family::new(
        encoder,
        "container_last_seen",
        "Last time a container was seen by the exporter",
        None,
        MetricType::Gauge,
    )?;
    for c in containers {
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
    .gauge(&NO_LABELS, 0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prometheus_client::{
        collector::Collector,
        encoding::{prometheus_text, text},
        registry::Registry,
    };

    use super::*;
    use crate::messages::Metadata;

    /// Writes one gauge with the pre-rendered labels and one with
    /// prometheus-client's own encoding of the same pairs.
    #[derive(Debug)]
    struct Both(ContainerInfo);

    impl Collector for Both {
        fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
            let md = self.0.metadata.as_deref().unwrap();
            let labeled = Labeled::new(&self.0);
            let plain = [
                ("container", md.container.as_str()),
                ("id", &self.0.path),
                ("image", md.image.as_str()),
                ("name", md.name.as_str()),
                ("namespace", md.namespace.as_str()),
                ("pod", md.pod.as_str()),
                ("container_label_app", "a\"b"),
            ];
            let mut f = Family::new(&mut encoder, "rendered", "h", None, MetricType::Gauge)?;
            f.gauge(&labels(&labeled), 1)?;
            let mut f = Family::new(&mut encoder, "plain", "h", None, MetricType::Gauge)?;
            f.gauge(&plain, 1)
        }
    }

    #[test]
    fn rendered_labels_encode_as_the_library_does() {
        let info = ContainerInfo {
            metadata: Some(Arc::new(Metadata {
                container: "c\\1".into(),
                image: "img\"x".into(),
                name: "line\nbreak".into(),
                namespace: "ns ünïcode".into(),
                pod: "pod\"\\\n".into(),
                exported_labels: vec![("container_label_app".into(), "a\"b".into())],
                ..Metadata::default()
            })),
            ..ContainerInfo::for_tests("/odd/\"quoted\"/back\\slash")
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Both(info)));
        for om in [false, true] {
            let mut out = String::new();
            if om {
                text::encode(&mut out, &registry).unwrap();
            } else {
                prometheus_text::encode(&mut out, &registry).unwrap();
            }
            let series = |name: &str| {
                out.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
                    .unwrap()
                    .to_owned()
            };
            assert_eq!(series("rendered"), series("plain"), "{out}");
        }
    }
}
