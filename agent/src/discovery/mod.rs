//! Sources of cgroup creations and removals, all feeding the registry:
//! eBPF tracepoints (first choice), inotify (fallback), and the periodic
//! walk that repairs whatever either missed.

pub mod ebpf;
pub mod inotify;
pub mod start;
pub mod walk;

use crate::{
    errors::ErrorCounts,
    telemetry::{counter, Counter, Counters, Metrics},
};

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

/// Discovery's own metrics, counted by its sources, its walk and the
/// registry's repairs.
#[derive(Debug)]
pub struct DiscoveryStats {
    events: Counters<2>,
    pub ebpf_mkdir: Counter,
    pub ebpf_rmdir: Counter,
    pub inotify_create: Counter,
    pub inotify_delete: Counter,
    pub inotify_overflows: Counter,
    pub walks: Counter,
    repairs: Counters<1>,
    pub repairs_added: Counter,
    pub repairs_removed: Counter,
    pub errors: ErrorCounts,
}

impl Default for DiscoveryStats {
    fn default() -> Self {
        let (events, repairs) = (Counters::default(), Counters::default());
        let event = |source, event| counter(&events, [("source", source), ("event", event)]);
        Self {
            ebpf_mkdir: event("ebpf", "mkdir"),
            ebpf_rmdir: event("ebpf", "rmdir"),
            inotify_create: event("inotify", "mkdir"),
            inotify_delete: event("inotify", "rmdir"),
            inotify_overflows: Counter::default(),
            walks: Counter::default(),
            repairs_added: counter(&repairs, [("kind", "added")]),
            repairs_removed: counter(&repairs, [("kind", "removed")]),
            events,
            repairs,
            errors: ErrorCounts::new("discovery"),
        }
    }
}

impl DiscoveryStats {
    pub fn register(&self, m: &mut Metrics) {
        m.register(
            "cgscope_discovery_events",
            "cgroup creations and removals received from each event source",
            self.events.clone(),
        );
        m.register(
            "cgscope_discovery_repairs",
            "Containers the periodic walk had to add or remove because the event source missed them",
            self.repairs.clone(),
        );
        m.register(
            "cgscope_discovery_walks",
            "Full walks of every cgroup hierarchy",
            self.walks.clone(),
        );
        m.register(
            "cgscope_inotify_overflows",
            "inotify queue overflows (each one triggers a rescan)",
            self.inotify_overflows.clone(),
        );
        self.errors.register(
            m,
            "Discovery problems by reason; each reason is logged once",
        );
    }
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
