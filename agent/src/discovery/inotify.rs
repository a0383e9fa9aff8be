//! The fallback watcher: inotify on every directory of every hierarchy.
//!
//! inotify is not recursive, so each new directory gets its own watch, and
//! its children are listed right after, because they can appear before the
//! watch is in place. A queue overflow triggers a rescan.

use std::{
    collections::HashMap,
    ffi::OsString,
    io,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    sync::Arc,
    time::SystemTime,
};

use futures_util::{FutureExt as _, StreamExt as _};
use inotify::{EventMask, Inotify, WatchMask, Watches};
use tokio::sync::{mpsc, Notify};

use super::{DiscoveryStats, Filter};
use crate::{
    cgroup::hierarchy::Hierarchies,
    errors::Chain,
    messages::{join, Change, ChangeKind, Msg},
};

const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ONLYDIR);

/// The inotify instance plus the tree of watches it serves.
pub struct Watcher {
    inotify: Inotify,
    tree: WatchTree,
}

struct WatchTree {
    watches: Watches,
    hierarchies: Arc<Hierarchies>,
    filter: Filter,
    stats: Arc<DiscoveryStats>,
    by_wd: HashMap<i32, (u32, Arc<str>)>,
    by_path: HashMap<(u32, Arc<str>), i32>,
}

impl Watcher {
    /// Creates the instance and watches every existing directory, so that
    /// nothing created after this returns is missed.
    pub fn new(
        hierarchies: Arc<Hierarchies>,
        filter: Filter,
        stats: Arc<DiscoveryStats>,
    ) -> io::Result<Self> {
        let inotify = Inotify::init()?;
        let mut tree = WatchTree {
            watches: inotify.watches(),
            hierarchies,
            filter,
            stats,
            by_wd: HashMap::new(),
            by_path: HashMap::new(),
        };
        tree.watch_all(&mut Vec::new(), false);
        Ok(Self { inotify, tree })
    }

    pub fn watched(&self) -> usize {
        self.tree.by_wd.len()
    }

    /// Reads events until the registry goes away: each wake-up, every event
    /// read so far becomes one batch of changes.
    pub async fn run(self, tx: mpsc::Sender<Msg>, rescan: Arc<Notify>) {
        let Self { inotify, mut tree } = self;
        let mut events = match inotify.into_event_stream(vec![0u8; 64 * 1024]) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %Chain(&e), "cannot poll inotify");
                return;
            }
        };
        while let Some(first) = events.next().await {
            let ready = std::iter::from_fn(|| events.next().now_or_never().flatten());
            let mut out = Vec::new();
            for event in std::iter::once(first).chain(ready) {
                let e = match event {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(error = %Chain(&e), "reading inotify events failed");
                        return;
                    }
                };
                let wd = e.wd.get_watch_descriptor_id();
                tree.handle(wd, e.mask, e.name.as_ref(), &mut out, &rescan);
            }
            if !out.is_empty() && tx.send(Msg::Changes(out)).await.is_err() {
                return;
            }
        }
    }
}

impl WatchTree {
    fn watch_all(&mut self, out: &mut Vec<Change>, report: bool) {
        let ids: Vec<u32> = self.hierarchies.list.iter().map(|h| h.id).collect();
        for id in ids {
            self.add_tree(id, "/", out, report);
        }
    }

    /// Watches `path` and everything below it; with `report`, every
    /// directory found is reported as added.
    fn add_tree(&mut self, hierarchy: u32, path: &str, out: &mut Vec<Change>, report: bool) {
        let Some(h) = self.hierarchies.get(hierarchy) else {
            return;
        };
        let dir = h.dir(path);
        let path: Arc<str> = Arc::from(path);
        match self.watches.add(&dir, MASK) {
            Ok(wd) => {
                let id = wd.get_watch_descriptor_id();
                // Re-adding an inode returns its old descriptor: drop the
                // old path (a rename) before recording the new one.
                if let Some(old) = self.by_wd.insert(id, (hierarchy, path.clone())) {
                    self.by_path.remove(&old);
                }
                self.by_path.insert((hierarchy, path.clone()), id);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if report && self.filter.accepts(&path) {
                    // Created and removed before we looked: still a container.
                    out.push(change(ChangeKind::Added, hierarchy, 0, &path));
                    out.push(change(ChangeKind::Removed, hierarchy, 0, &path));
                }
                return;
            }
            Err(e) => {
                let reason = if e.raw_os_error() == Some(libc::ENOSPC) {
                    "inotify_watch_limit"
                } else {
                    "inotify_watch_failed"
                };
                self.stats.errors.record(
                    reason,
                    format!("cannot watch {}: {e} (raise fs.inotify.max_user_watches; the periodic walk still repairs)", dir.display()),
                );
            }
        }
        if report && self.filter.accepts(&path) {
            let ino = std::fs::metadata(&dir).map(|m| m.ino()).unwrap_or(0);
            out.push(change(ChangeKind::Added, hierarchy, ino, &path));
        }
        for name in super::subdirs(&dir, &self.stats) {
            let child = join(&path, &name);
            if self.filter.descend(&child) {
                self.add_tree(hierarchy, &child, out, report);
            }
        }
    }

    /// Forgets `path` and everything below it, reporting each as removed.
    fn remove_tree(&mut self, hierarchy: u32, path: &str, out: &mut Vec<Change>) {
        let below: Vec<(u32, Arc<str>)> = self
            .by_path
            .keys()
            .filter(|(h, p)| *h == hierarchy && crate::events::is_same_or_below(p, path))
            .cloned()
            .collect();
        for key in below {
            if let Some(wd) = self.by_path.remove(&key) {
                self.by_wd.remove(&wd);
            }
            if self.filter.accepts(&key.1) {
                out.push(change(ChangeKind::Removed, hierarchy, 0, &key.1));
            }
        }
        if self.filter.accepts(path) && !out.iter().any(|c| &*c.path == path) {
            out.push(change(ChangeKind::Removed, hierarchy, 0, path));
        }
    }

    fn handle(
        &mut self,
        wd: i32,
        mask: EventMask,
        name: Option<&OsString>,
        out: &mut Vec<Change>,
        rescan: &Notify,
    ) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            self.stats.inotify_overflows.inc();
            self.stats.errors.record(
                "inotify_overflow",
                "inotify queue overflowed: rescanning every hierarchy",
            );
            self.watch_all(out, false);
            rescan.notify_one();
            return;
        }
        if mask.contains(EventMask::IGNORED) {
            if let Some(key) = self.by_wd.remove(&wd) {
                self.by_path.remove(&key);
            }
            return;
        }
        if !mask.contains(EventMask::ISDIR) {
            return;
        }
        let (Some((hierarchy, parent)), Some(name)) = (self.by_wd.get(&wd).cloned(), name) else {
            return;
        };
        let Some(name) = std::str::from_utf8(name.as_bytes()).ok() else {
            self.stats.errors.record(
                "non_utf8_path",
                format!("skipping cgroup {name:?}: not UTF-8"),
            );
            return;
        };
        let path = join(&parent, name);
        if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
            self.stats.inotify_create.inc();
            if self.filter.descend(&path) {
                self.add_tree(hierarchy, &path, out, true);
            }
        } else if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
            self.stats.inotify_delete.inc();
            self.remove_tree(hierarchy, &path, out);
        }
    }
}

fn change(kind: ChangeKind, hierarchy: u32, id: u64, path: &str) -> Change {
    Change {
        kind,
        hierarchy,
        id,
        path: Arc::from(path),
        at: SystemTime::now(),
        kernel_time: false,
    }
}
