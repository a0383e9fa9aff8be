//! The full walk of every hierarchy: at start and every
//! `--global-housekeeping-interval`, so the registry converges on what is
//! really there whatever the event sources missed.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::{subdirs, DiscoveryStats, Filter};
use crate::{
    cgroup::hierarchy::Hierarchies,
    clock::boot_time,
    messages::{join, Found, WalkResult},
};

/// Lists every cgroup directory of every hierarchy. Directories that vanish
/// mid-walk are skipped; names that are not UTF-8 are counted and skipped.
pub fn walk(hierarchies: &Hierarchies, filter: &Filter, stats: &DiscoveryStats) -> WalkResult {
    let started = Instant::now();
    let mut found = Vec::new();
    for h in &hierarchies.list {
        walk_dir(&h.mount, "/", h.id, filter, stats, &mut found);
    }
    stats.walks.inc();
    WalkResult {
        started,
        hierarchies: hierarchies.list.iter().map(|h| h.id).collect(),
        found,
    }
}

fn walk_dir(
    dir: &Path,
    path: &str,
    hierarchy: u32,
    filter: &Filter,
    stats: &DiscoveryStats,
    found: &mut Vec<Found>,
) {
    let Ok(meta) = fs::metadata(dir) else { return };
    if filter.accepts(path) {
        found.push(Found {
            hierarchy,
            id: meta.ino(),
            path: Arc::from(path),
            created: creation_time(dir, &meta),
        });
    }
    for name in subdirs(dir, stats) {
        let child = join(path, &name);
        if filter.descend(&child) {
            walk_dir(&dir.join(&name), &child, hierarchy, filter, stats, found);
        }
    }
}

/// cgroupfs gives a directory the time of its first lookup, not of its
/// creation, so a walk cannot know when a cgroup was made. The earliest
/// start time of a task in it is a better lower bound where there is one.
pub fn creation_time(dir: &Path, meta: &fs::Metadata) -> SystemTime {
    let mtime = SystemTime::UNIX_EPOCH
        + Duration::new(meta.mtime().max(0) as u64, meta.mtime_nsec() as u32);
    earliest_task_start(dir).map_or(mtime, |t| t.min(mtime))
}

fn earliest_task_start(dir: &Path) -> Option<SystemTime> {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    let boot = boot_time()?;
    let tps = procfs::ticks_per_second() as f64;
    procs
        .lines()
        .take(64)
        .filter_map(|pid| pid.trim().parse::<i32>().ok())
        .filter_map(|pid| procfs::process::Process::new(pid).ok()?.stat().ok())
        .map(|stat| boot + Duration::from_secs_f64(stat.starttime as f64 / tps))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::hierarchy::{Hierarchy, Version};

    #[test]
    fn walks_a_fixture_tree() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["a/b/c", "a/d", "x.mount/y", "e"] {
            fs::create_dir_all(dir.path().join(p)).unwrap();
        }
        fs::write(dir.path().join("a/cgroup.procs"), "").unwrap();
        let h = Hierarchies {
            list: vec![Hierarchy {
                id: 3,
                version: Version::V1,
                controllers: vec!["pids".into()],
                mount: dir.path().into(),
                mount_root: "/".into(),
            }],
        };
        let stats = DiscoveryStats::default();
        let r = walk(&h, &Filter::new(&[]), &stats);
        let mut paths: Vec<&str> = r.found.iter().map(|f| &*f.path).collect();
        paths.sort();
        assert_eq!(paths, ["/", "/a", "/a/b", "/a/b/c", "/a/d", "/e"]);
        assert!(r.found.iter().all(|f| f.hierarchy == 3 && f.id != 0));
        let only_a = walk(&h, &Filter::new(&["/a/b".into()]), &stats);
        let mut paths: Vec<&str> = only_a.found.iter().map(|f| &*f.path).collect();
        paths.sort();
        assert_eq!(paths, ["/", "/a/b", "/a/b/c"]);
        assert_eq!(stats.walks.get(), 2);

        // A name that is not UTF-8 is counted and skipped, the rest goes on.
        use std::os::unix::ffi::OsStrExt as _;
        fs::create_dir(dir.path().join(std::ffi::OsStr::from_bytes(b"bad\xff"))).unwrap();
        let r = walk(&h, &Filter::new(&[]), &stats);
        assert_eq!(r.found.len(), 6);
        assert_eq!(stats.errors.get("non_utf8_path"), 1);
    }
}
