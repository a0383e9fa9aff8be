//! OOM kills: from the kernel's `mark_victim` tracepoint through eBPF, or
//! from the kernel log (`/dev/kmsg`) as the fallback. Both end as an
//! [`OomKill`](crate::messages::OomKill) with container paths, which the registry counts against the
//! containers (and keeps for their retention) and turns into events.

pub mod ebpf;
pub mod kmsg;
pub mod parser;
pub mod start;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{errors::ErrorCounts, messages::OomKill};

#[derive(Debug)]
pub struct OomStats {
    pub kills: AtomicU64,
    /// Kills whose container could not be determined.
    pub unattributed: AtomicU64,
    /// Kills the kernel counted in a container's cgroup that the OOM
    /// source never delivered.
    pub missed: AtomicU64,
    pub errors: ErrorCounts,
}

impl Default for OomStats {
    fn default() -> Self {
        Self {
            kills: AtomicU64::new(0),
            unattributed: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            errors: ErrorCounts::new("oom"),
        }
    }
}

impl OomStats {
    pub fn count(&self, kill: &OomKill) {
        self.kills.fetch_add(1, Ordering::Relaxed);
        if kill.victim.is_none() {
            self.unattributed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Kills of `path` the kernel counted and the source did not deliver:
    /// counted, and logged the first time.
    pub fn missed(&self, path: &str, kills: u64) {
        if self.missed.fetch_add(kills, Ordering::Relaxed) == 0 {
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
