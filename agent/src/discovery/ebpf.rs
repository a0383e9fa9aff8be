//! cgroup mkdir/rmdir from the kernel's tracepoints, through a ring buffer.

use std::sync::Arc;

use agent_common::{CgroupEvent, CGROUP_EVENT_FLAG_TRUNCATED, CGROUP_EVENT_MKDIR};
use tokio::sync::mpsc;

use super::{DiscoveryStats, Filter};
use crate::{
    cgroup::hierarchy::Hierarchies,
    clock::BootClock,
    ebpf::ring::RingReader,
    errors::Chain,
    messages::{Change, ChangeKind, Msg},
};

/// Reads the ring buffer until the registry goes away.
pub async fn run(
    mut ring: RingReader,
    hierarchies: Arc<Hierarchies>,
    filter: Filter,
    stats: Arc<DiscoveryStats>,
    tx: mpsc::Sender<Msg>,
) {
    loop {
        let clock = BootClock::now();
        let batch = ring
            .next_batch(|item| decode(item, &hierarchies, &filter, &stats, &clock))
            .await;
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %Chain(&e), "polling the cgroup ring buffer failed");
                return;
            }
        };
        if !batch.is_empty() && tx.send(Msg::Changes(batch)).await.is_err() {
            return;
        }
    }
}

fn decode(
    bytes: &[u8],
    hierarchies: &Hierarchies,
    filter: &Filter,
    stats: &DiscoveryStats,
    clock: &BootClock,
) -> Option<Change> {
    if bytes.len() < std::mem::size_of::<CgroupEvent>() {
        stats.errors.record(
            "short_record",
            format!("cgroup event of {} bytes", bytes.len()),
        );
        return None;
    }
    // SAFETY: size checked above; CgroupEvent is plain old data.
    let ev: CgroupEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let mkdir = ev.kind == CGROUP_EVENT_MKDIR;
    if mkdir {
        stats.ebpf_mkdir.inc();
    } else {
        stats.ebpf_rmdir.inc();
    }
    let Some(h) = hierarchies.get(ev.hierarchy) else {
        // A hierarchy we do not have mounted (another mount namespace's).
        return None;
    };
    if ev.flags & CGROUP_EVENT_FLAG_TRUNCATED != 0 {
        stats.errors.record(
            "path_too_long",
            format!(
                "a cgroup path longer than {} bytes was truncated; the walk adds it",
                agent_common::CGROUP_PATH_CAP - 1
            ),
        );
        return None;
    }
    let raw = &ev.path[..(ev.path_len as usize).min(ev.path.len())];
    let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
    let Ok(path) = std::str::from_utf8(raw) else {
        stats.errors.record(
            "non_utf8_path",
            format!(
                "skipping cgroup {:?}: not UTF-8",
                String::from_utf8_lossy(raw)
            ),
        );
        return None;
    };
    let path = h.mount_relative(if path.is_empty() { "/" } else { path })?;
    if !filter.accepts(path) {
        return None;
    }
    Some(Change {
        kind: if mkdir {
            ChangeKind::Added
        } else {
            ChangeKind::Removed
        },
        hierarchy: ev.hierarchy,
        id: ev.id,
        path: Arc::from(path),
        at: clock.wall(ev.boot_ns),
        kernel_time: true,
    })
}

#[cfg(test)]
mod tests {
    use agent_common::{CGROUP_EVENT_RMDIR, CGROUP_PATH_CAP};

    use super::*;
    use crate::cgroup::hierarchy::{Hierarchy, Version};
    use std::time::{Duration, SystemTime};

    fn event(kind: u32, hierarchy: u32, path: &[u8], flags: u32) -> Vec<u8> {
        let mut ev = CgroupEvent {
            kind,
            hierarchy,
            level: 1,
            path_len: path.len() as u32 + 1,
            id: 77,
            boot_ns: 1_000_000_000,
            flags,
            _pad: 0,
            path: [0; CGROUP_PATH_CAP],
        };
        ev.path[..path.len()].copy_from_slice(path);
        // SAFETY: reading a POD struct as bytes.
        unsafe {
            std::slice::from_raw_parts(
                (&ev as *const CgroupEvent).cast::<u8>(),
                std::mem::size_of::<CgroupEvent>(),
            )
        }
        .to_vec()
    }

    fn hierarchies() -> Hierarchies {
        let h = |id, root: &str| Hierarchy {
            id,
            version: Version::V1,
            controllers: vec![],
            mount: "/sys/fs/cgroup/x".into(),
            mount_root: root.into(),
        };
        Hierarchies {
            list: vec![h(4, "/"), h(8, "/kubepods")],
        }
    }

    #[test]
    fn decodes_records() {
        let (hs, stats) = (hierarchies(), DiscoveryStats::default());
        let clock = BootClock::booted_at(SystemTime::UNIX_EPOCH);
        let f = Filter::new(&[]);
        let c = decode(
            &event(CGROUP_EVENT_MKDIR, 4, b"/a/b", 0),
            &hs,
            &f,
            &stats,
            &clock,
        )
        .unwrap();
        assert_eq!(
            (c.kind, c.hierarchy, c.id, &*c.path),
            (ChangeKind::Added, 4, 77, "/a/b")
        );
        assert_eq!(c.at, SystemTime::UNIX_EPOCH + Duration::from_secs(1));
        assert!(c.kernel_time);
        let c = decode(
            &event(CGROUP_EVENT_RMDIR, 8, b"/kubepods/pod1", 0),
            &hs,
            &f,
            &stats,
            &clock,
        )
        .unwrap();
        assert_eq!((c.kind, &*c.path), (ChangeKind::Removed, "/pod1"));
        assert_eq!(stats.ebpf_mkdir.get(), 1);
        assert_eq!(stats.ebpf_rmdir.get(), 1);
    }

    #[test]
    fn odd_records_are_counted_not_fatal() {
        let (hs, stats) = (hierarchies(), DiscoveryStats::default());
        let clock = BootClock::now();
        let f = Filter::new(&[]);
        // Unknown hierarchy, outside the mount's subtree, a .mount unit.
        assert!(decode(
            &event(CGROUP_EVENT_MKDIR, 9, b"/a", 0),
            &hs,
            &f,
            &stats,
            &clock
        )
        .is_none());
        assert!(decode(
            &event(CGROUP_EVENT_MKDIR, 8, b"/system.slice", 0),
            &hs,
            &f,
            &stats,
            &clock
        )
        .is_none());
        assert!(decode(
            &event(CGROUP_EVENT_MKDIR, 4, b"/x.mount", 0),
            &hs,
            &f,
            &stats,
            &clock
        )
        .is_none());
        assert!(decode(
            &event(CGROUP_EVENT_MKDIR, 4, b"/bad\xff", 0),
            &hs,
            &f,
            &stats,
            &clock
        )
        .is_none());
        assert_eq!(stats.errors.get("non_utf8_path"), 1);
        let truncated = event(CGROUP_EVENT_MKDIR, 4, b"/long", CGROUP_EVENT_FLAG_TRUNCATED);
        assert!(decode(&truncated, &hs, &f, &stats, &clock).is_none());
        assert_eq!(stats.errors.get("path_too_long"), 1);
        assert!(decode(&[0u8; 16], &hs, &f, &stats, &clock).is_none());
        assert_eq!(stats.errors.get("short_record"), 1);
    }
}
