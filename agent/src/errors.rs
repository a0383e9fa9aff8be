//! Errors that are counted and logged once per reason, never fatal: a
//! malformed file, an odd kernel line, a vanished cgroup.

use std::{
    error::Error,
    fmt::{self, Display},
};

use prometheus_client::encoding::EncodeMetric as _;

use crate::telemetry::{Collector, Counters, DescriptorEncoder, MetricType, Metrics};

/// An error with its sources, `what failed: why: why`, for logs and
/// reasons. The crate's errors say what failed and leave the cause to
/// their `source`, as aya's do, so that nothing prints a cause twice.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// Counts of one component's errors by reason, exported as
/// `cgscope_<component>_errors_total{<label>="<reason>"}`.
#[derive(Debug, Default)]
pub struct ErrorCounts {
    component: &'static str,
    label: &'static str,
    counts: Counters<1>,
}

impl ErrorCounts {
    pub fn new(component: &'static str) -> Self {
        Self::by(component, "reason")
    }

    /// Counts whose label is `label` rather than `reason`.
    pub fn by(component: &'static str, label: &'static str) -> Self {
        Self {
            component,
            label,
            counts: Counters::default(),
        }
    }

    /// Exports the counts, under `help`: the family is written even while
    /// no error has been counted (prometheus-client leaves empty families
    /// out), so dashboards and alerts find it from the first scrape.
    pub fn register(&self, metrics: &mut Metrics, help: &str) {
        metrics.register_collector(Box::new(AlwaysWritten {
            name: format!("cgscope_{}_errors", self.component),
            help: format!("{}.", help.trim_end_matches('.')),
            counts: self.counts.clone(),
        }));
    }

    /// Counts one error; the first of each reason is logged as a warning,
    /// the rest at debug level so a flood cannot fill the log.
    pub fn record(&self, reason: &'static str, detail: impl Display) {
        let first = self.counts.get_or_create(&[(self.label, reason)]).inc() == 0;
        if first {
            tracing::warn!(
                component = self.component,
                reason,
                "{detail} (counted in cgscope_{}_errors_total; further ones are logged at debug level)",
                self.component
            );
        } else {
            tracing::debug!(component = self.component, reason, "{detail}");
        }
    }

    /// The counts' series as text, `""` when nothing was recorded.
    #[cfg(test)]
    pub fn recorded(&self) -> String {
        let mut m = Metrics::default();
        self.register(&mut m, "-");
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &m).unwrap();
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[cfg(test)]
    pub fn get(&self, reason: &'static str) -> u64 {
        self.counts
            .get(&[(self.label, reason)])
            .map_or(0, |c| c.get())
    }
}

/// A counter family written with its descriptor even when empty.
#[derive(Debug)]
struct AlwaysWritten {
    name: String,
    help: String,
    counts: Counters<1>,
}

impl Collector for AlwaysWritten {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let family =
            encoder.encode_descriptor(&self.name, &self.help, None, MetricType::Counter)?;
        self.counts.encode(family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_names_each_cause_once() {
        let e =
            crate::cgroup::hierarchy::Hierarchies::discover(std::path::Path::new("/nonexistent"))
                .unwrap_err();
        let text = Chain(&e).to_string();
        assert!(
            text.starts_with("reading /nonexistent/self/mountinfo: "),
            "{text}"
        );
        assert_eq!(text.matches("mountinfo").count(), 1, "{text}");
        assert!(text.len() > "reading /nonexistent/self/mountinfo: ".len());
    }

    #[test]
    fn counts_by_reason() {
        let e = ErrorCounts::new("discovery");
        e.record("vanished", "gone");
        e.record("vanished", "gone again");
        e.record("non_utf8_path", "bad bytes");
        assert_eq!(e.get("vanished"), 2);
        assert_eq!(e.get("non_utf8_path"), 1);
        assert_eq!(e.get("other"), 0);
    }

    #[test]
    fn exported_under_the_components_name_and_label() {
        let e = ErrorCounts::by("runtime", "provider");
        let mut m = Metrics::default();
        e.register(&mut m, "Provider failures.");
        let text = |m: &Metrics| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, m).unwrap();
            out
        };
        let out = text(&m);
        assert!(
            out.contains("# TYPE cgscope_runtime_errors counter\n"),
            "written before the first error: {out}"
        );
        e.record("cri", "unreachable");
        let out = text(&m);
        assert!(
            out.contains("# HELP cgscope_runtime_errors Provider failures.\n"),
            "{out}"
        );
        assert!(
            out.contains("cgscope_runtime_errors_total{provider=\"cri\"} 1\n"),
            "{out}"
        );
    }
}
