//! OOM kills: from the kernel's `mark_victim` tracepoint through eBPF, or
//! from the kernel log (`/dev/kmsg`) as the fallback. Both end as an
//! [`OomKill`](crate::messages::OomKill) with container paths, which the registry counts against the
//! containers (and keeps for their retention) and turns into events.

pub mod ebpf;
pub mod kmsg;
pub mod parser;
pub mod start;

use crate::{
    errors::ErrorCounts,
    messages::OomKill,
    telemetry::{Counter, Metrics},
};

/// The OOM source's own metrics; the registry counts the missed kills.
#[derive(Debug)]
pub struct OomStats {
    pub kills: Counter,
    /// Kills whose container could not be determined.
    pub unattributed: Counter,
    /// Kills the kernel counted in a container's cgroup that the OOM
    /// source never delivered.
    pub missed: Counter,
    pub errors: ErrorCounts,
}

impl Default for OomStats {
    fn default() -> Self {
        Self {
            kills: Counter::default(),
            unattributed: Counter::default(),
            missed: Counter::default(),
            errors: ErrorCounts::new("oom"),
        }
    }
}

impl OomStats {
    /// Exports the counts; `source` is the mode the OOM source runs in.
    pub fn register(&self, m: &mut Metrics, source: &'static str) {
        m.register(
            "cgscope_oom_kills",
            "OOM kills seen by the OOM source (one per killed task)",
            self.kills.clone(),
        );
        m.register(
            "cgscope_oom_unattributed_kills",
            "OOM kills whose container could not be determined",
            self.unattributed.clone(),
        );
        m.sub_registry_with_label(("source".into(), source.into()))
            .register(
                "cgscope_oom_missed",
                "OOM kills the kernel counted in a container's own cgroup (memory.events.local, v1 memory.oom_control) that the OOM source did not report within 5 s; container_oom_events_total includes them",
                self.missed.clone(),
            );
        self.errors.register(
            m,
            "OOM source problems by reason; each reason is logged once",
        );
    }

    pub fn count(&self, kill: &OomKill) {
        self.kills.inc();
        if kill.victim.is_none() {
            self.unattributed.inc();
        }
    }

    /// Kills of `path` the kernel counted and the source did not deliver:
    /// counted, and logged the first time.
    pub fn missed(&self, path: &str, kills: u64) {
        if self.missed.inc_by(kills) == 0 {
            tracing::warn!(%path, kills, "the kernel counted OOM kills the OOM source did not report; counted from the cgroup's own counter (cgscope_oom_missed_total)");
        } else {
            tracing::debug!(%path, kills, "OOM kills counted from the cgroup's own counter");
        }
    }
}

/// Trims a kernel `comm` buffer at its NUL.
pub fn comm_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}
