//! The messages between the agent's tasks: what sources tell the registry
//! (cgroups appearing and going, walks, OOM kills, runtime metadata) and
//! the values they carry. Kept apart from both the sources and the
//! registry, and importing nothing else of the crate, so that neither side
//! depends on the other.

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use tokio::sync::oneshot;

/// A cgroup's path relative to its hierarchy's mount, always starting with
/// `/` (`/kubepods/…`); the key containers are known by.
pub type CgroupPath = Arc<str>;

/// What the registry task is told; it owns the set of known containers.
pub enum Msg {
    Changes(Vec<Change>),
    Walked(WalkResult),
    Oom(OomKill),
    /// What the runtime providers know about a container.
    Metadata {
        path: CgroupPath,
        metadata: Arc<Metadata>,
    },
    /// The kernel's count of OOM kills of a container's own tasks, as a
    /// collection read it (sent when it changes).
    KernelOomKills {
        path: CgroupPath,
        kills: u64,
    },
    /// Which container a (hierarchy, cgroup id) pair belongs or belonged to.
    Resolve {
        hierarchy: u32,
        id: u64,
        reply: oneshot::Sender<Option<CgroupPath>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Removed,
}

/// One directory appeared or disappeared in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub hierarchy: u32,
    /// Kernfs id (inode); 0 when the source does not know it.
    pub id: u64,
    /// Relative to the hierarchy's mount, always starting with `/`.
    pub path: CgroupPath,
    pub at: SystemTime,
    /// `at` is the kernel's own timestamp of the event.
    pub kernel_time: bool,
}

/// What the walk found in one hierarchy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub hierarchy: u32,
    pub id: u64,
    pub path: CgroupPath,
    /// Best known creation time (see `discovery::walk::creation_time`).
    pub created: SystemTime,
}

/// A full listing of every hierarchy.
#[derive(Debug, Clone)]
pub struct WalkResult {
    pub started: std::time::Instant,
    pub hierarchies: Vec<u32>,
    pub found: Vec<Found>,
}

/// Joins a hierarchy-relative parent path and a child name.
pub fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// One killed task, attributed to containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomKill {
    pub at: SystemTime,
    pub pid: u32,
    pub comm: String,
    /// The killed task's container (cgroup path); `None` when it could not
    /// be resolved.
    pub victim: Option<CgroupPath>,
    /// The memory cgroup whose limit was hit; `/` for a global OOM.
    pub oom: Option<CgroupPath>,
    pub constraint: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The `name` label: the runtime's name, else the container id.
    pub name: String,
    pub image: String,
    pub pod: String,
    pub namespace: String,
    /// The `container` label (Kubernetes container name).
    pub container: String,
    pub labels: BTreeMap<String, String>,
    pub started_at: Option<SystemTime>,
    /// A Kubernetes pod's sandbox (pause) container: the one whose network
    /// series stand for the pod.
    pub sandbox: bool,
    /// Which provider said so.
    pub provider: &'static str,
    /// `container_label_<key>` pairs the label policy exports.
    pub exported_labels: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_paths() {
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
    }
}
