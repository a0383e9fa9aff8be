//! Sources of cgroup creations and removals, all feeding the registry:
//! eBPF tracepoints (first choice), inotify (fallback), and the periodic
//! walk that repairs whatever either missed.

pub mod ebpf;
pub mod inotify;
pub mod start;
pub mod walk;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::errors::ErrorCounts;

/// Which cgroups are tracked: `/` always; never a systemd `.mount` unit (or
/// anything below one); with a prefix whitelist, only paths under it.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub prefixes: Vec<String>,
}

impl Filter {
    pub fn new(prefixes: &[String]) -> Self {
        Self {
            prefixes: prefixes
                .iter()
                .map(|p| p.trim())
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Whether the walk and the watchers should look below `path` at all.
    pub fn descend(&self, path: &str) -> bool {
        !path.split('/').any(|c| c.ends_with(".mount"))
    }

    pub fn accepts(&self, path: &str) -> bool {
        if path == "/" {
            return true;
        }
        self.descend(path)
            && (self.prefixes.is_empty()
                || self.prefixes.iter().any(|p| path.starts_with(p.as_str())))
    }
}

/// Counters shared by the discovery sources and read by the exporter.
#[derive(Debug)]
pub struct DiscoveryStats {
    pub ebpf_mkdir: AtomicU64,
    pub ebpf_rmdir: AtomicU64,
    pub inotify_create: AtomicU64,
    pub inotify_delete: AtomicU64,
    pub inotify_overflows: AtomicU64,
    pub walks: AtomicU64,
    pub repairs_added: AtomicU64,
    pub repairs_removed: AtomicU64,
    pub errors: ErrorCounts,
}

impl Default for DiscoveryStats {
    fn default() -> Self {
        Self {
            ebpf_mkdir: AtomicU64::new(0),
            ebpf_rmdir: AtomicU64::new(0),
            inotify_create: AtomicU64::new(0),
            inotify_delete: AtomicU64::new(0),
            inotify_overflows: AtomicU64::new(0),
            walks: AtomicU64::new(0),
            repairs_added: AtomicU64::new(0),
            repairs_removed: AtomicU64::new(0),
            errors: ErrorCounts::new("discovery"),
        }
    }
}

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The names of `dir`'s subdirectories. A name that is not UTF-8 cannot be
/// a label value or a map key here: it is counted and skipped.
pub fn subdirs(dir: &std::path::Path, stats: &DiscoveryStats) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| match e.file_name().into_string() {
            Ok(name) => Some(name),
            Err(_) => {
                stats.errors.record(
                    "non_utf8_path",
                    format!("skipping cgroup {:?}: its name is not UTF-8", e.path()),
                );
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_rules() {
        let all = Filter::new(&[]);
        assert!(all.accepts("/"));
        assert!(all.accepts("/system.slice/docker.service"));
        assert!(!all.accepts("/system.slice/var-lib.mount"));
        assert!(!all.accepts("/system.slice/var-lib.mount/child"));
        assert!(!all.descend("/x.mount"));
        let some = Filter::new(&["/kubepods".into(), " ".into()]);
        assert!(some.accepts("/"));
        assert!(some.accepts("/kubepods/burstable"));
        assert!(!some.accepts("/system.slice"));
        assert!(
            some.descend("/system.slice"),
            "walks below to find nothing, cheaply"
        );
    }
}
