//! OOM kills: from the kernel's `mark_victim` tracepoint through eBPF, or
//! from the kernel log (`/dev/kmsg`) as the fallback. Both end as an
//! [`OomKill`](crate::messages::OomKill) with container paths, which the registry counts against the
//! containers (and keeps for their retention) and turns into events.

pub mod ebpf;
pub mod kmsg;
pub mod parser;
pub mod start;

use std::{sync::Arc, time::Duration};

use crate::{
    errors::ErrorCounts,
    messages::OomKill,
    supervise::Health,
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
    /// Times the reader failed and was restarted.
    pub restarts: Counter,
    pub errors: ErrorCounts,
}

impl Default for OomStats {
    fn default() -> Self {
        Self {
            kills: Counter::default(),
            unattributed: Counter::default(),
            missed: Counter::default(),
            restarts: Counter::default(),
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
        m.register(
            "cgscope_oom_reader_restarts",
            "Times the OOM source's reader failed and was retried; until it reads again cgscope_mode has no OOM mode at 1 and /healthz fails, and the cgroups' own counters count the kills",
            self.restarts.clone(),
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

/// Failed reads in a row past which a reader gives up: its task ends, and
/// with it the agent, for its supervisor to restart (1 + 2 + 4 + 8 s of
/// retries first).
const MAX_FAILURES: u32 = 4;

/// An OOM reader's failures: the source is down (`/healthz` fails, no
/// `cgscope_mode` of it is 1) from a failure until the reader is back.
pub struct Retry {
    health: Health,
    stats: Arc<OomStats>,
    failures: u32,
}

impl Retry {
    pub fn new(health: Health, stats: Arc<OomStats>) -> Self {
        Self {
            health,
            stats,
            failures: 0,
        }
    }

    /// After a failure: how long to wait before trying again, or `None`
    /// to give up.
    pub fn failed(&mut self, why: String) -> Option<Duration> {
        self.failures += 1;
        if self.failures > MAX_FAILURES {
            tracing::error!(
                failures = MAX_FAILURES,
                "the OOM source keeps failing: giving up"
            );
            return None;
        }
        self.stats.restarts.inc();
        self.health.down("oom", why);
        Some(Duration::from_secs(1 << (self.failures - 1)))
    }

    /// The reader is back.
    pub fn ok(&mut self) {
        if std::mem::take(&mut self.failures) > 0 {
            self.health.up("oom");
            tracing::info!("the OOM source reads again");
        }
    }
}
