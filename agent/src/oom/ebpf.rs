//! OOM victims from the eBPF programs' ring buffer.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use agent_common::{OomEvent, OOM_FLAG_LIMIT_FOUND, OOM_FLAG_MEMCG};
use tokio::sync::{mpsc, oneshot};

use super::{comm_str, OomStats, Retry};
use crate::{
    cgroup::hierarchy::{Hierarchies, Hierarchy, Version},
    clock::BootClock,
    ebpf::ring::RingReader,
    errors::Chain,
    messages::{join, Msg, OomKill},
    supervise::Health,
};

/// Reads the ring buffer until the registry goes away; `proc` is where the
/// victims' `/proc/<pid>` is (`--proc-root`). A failed poll marks the
/// source down in `health` and is retried (see [`Retry`]); the ring keeps
/// what the program writes meanwhile.
pub async fn run(
    mut ring: RingReader,
    hierarchies: Arc<Hierarchies>,
    proc: PathBuf,
    stats: Arc<OomStats>,
    tx: mpsc::Sender<Msg>,
    health: Health,
) {
    let memory = hierarchies.with_controller("memory").cloned();
    let mut retry = Retry::new(health, stats.clone());
    loop {
        let events = ring
            .next_batch(|item| {
                if item.len() >= std::mem::size_of::<OomEvent>() {
                    // SAFETY: size checked; OomEvent is plain old data.
                    Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<OomEvent>()) })
                } else {
                    stats.errors.record(
                        "short_record",
                        format!("OOM record of {} bytes", item.len()),
                    );
                    None
                }
            })
            .await;
        let events = match events {
            Ok(e) => {
                retry.ok();
                e
            }
            Err(e) => {
                tracing::error!(error = %Chain(&e), "polling the OOM ring buffer failed");
                match retry.failed(format!("polling the OOM ring buffer: {e}")) {
                    Some(wait) => {
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    None => return,
                }
            }
        };
        let clock = BootClock::now();
        for ev in events {
            let kill = attribute(&ev, memory.as_ref(), &proc, &clock, &tx, &stats).await;
            tracing::info!(pid = kill.pid, comm = %kill.comm, victim = ?kill.victim, oom = ?kill.oom, "OOM kill");
            stats.count(&kill);
            if tx.send(Msg::Oom(kill)).await.is_err() {
                return;
            }
        }
    }
}

async fn attribute(
    ev: &OomEvent,
    memory: Option<&Hierarchy>,
    proc: &Path,
    clock: &BootClock,
    tx: &mpsc::Sender<Msg>,
    stats: &OomStats,
) -> OomKill {
    let mut kill = OomKill {
        at: clock.wall(ev.boot_ns),
        pid: if ev.tgid != 0 { ev.tgid } else { ev.pid },
        comm: comm_str(&ev.comm),
        victim: None,
        oom: None,
        constraint: String::new(),
    };
    let Some(memory) = memory else {
        stats.errors.record(
            "no_memory_hierarchy",
            "no memory controller is mounted: OOM kills cannot be attributed",
        );
        return kill;
    };
    if ev.flags & OOM_FLAG_MEMCG != 0 {
        kill.victim = resolve(tx, memory, ev.memcg_id).await;
        if ev.flags & OOM_FLAG_LIMIT_FOUND != 0 {
            kill.oom = if ev.oom_memcg_id == ev.memcg_id {
                kill.victim.clone()
            } else {
                resolve(tx, memory, ev.oom_memcg_id).await
            };
            kill.constraint = "CONSTRAINT_MEMCG".into();
        } else {
            kill.oom = Some(Arc::from("/"));
            kill.constraint = "CONSTRAINT_NONE".into();
        }
    } else {
        // The classic tracepoint, the victim not the task that ran out: ask
        // /proc while the victim still exists.
        let from_proc = victim_from_proc(proc, ev.pid, memory);
        if kill.comm.is_empty() {
            kill.comm = fs::read_to_string(proc.join(ev.pid.to_string()).join("comm"))
                .map(|c| c.trim().to_owned())
                .unwrap_or_default();
        }
        kill.victim = from_proc.clone();
        kill.oom = if ev.flags & OOM_FLAG_LIMIT_FOUND != 0 {
            kill.constraint = "CONSTRAINT_MEMCG".into();
            resolve(tx, memory, ev.oom_memcg_id).await
        } else {
            from_proc
        };
    }
    if kill.victim.is_none() {
        stats.errors.record(
            "unattributed",
            format!(
                "OOM kill of pid {} ({}): its memory cgroup could not be resolved",
                kill.pid, kill.comm
            ),
        );
    }
    kill
}

/// The container of a memory cgroup id: asks the registry (retrying, as the
/// cgroup's mkdir event may still be queued), then walks the hierarchy.
async fn resolve(tx: &mpsc::Sender<Msg>, memory: &Hierarchy, id: u64) -> Option<Arc<str>> {
    for attempt in 0..5u64 {
        let (reply, rx) = oneshot::channel();
        tx.send(Msg::Resolve {
            hierarchy: memory.id,
            id,
            reply,
        })
        .await
        .ok()?;
        if let Ok(Some(path)) = rx.await {
            return Some(path);
        }
        tokio::time::sleep(Duration::from_millis(10 * (attempt + 1))).await;
    }
    let mount = memory.mount.clone();
    tokio::task::spawn_blocking(move || find_by_inode(&mount, "/", id))
        .await
        .ok()
        .flatten()
        .map(Arc::from)
}

fn find_by_inode(dir: &Path, path: &str, ino: u64) -> Option<String> {
    if fs::metadata(dir).ok()?.ino() == ino {
        return Some(path.to_owned());
    }
    for entry in fs::read_dir(dir).ok()?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let name = entry.file_name();
            let child = join(path, name.to_str()?);
            if let Some(found) = find_by_inode(&entry.path(), &child, ino) {
                return Some(found);
            }
        }
    }
    None
}

/// The memory cgroup of `pid` from `/proc/<pid>/cgroup`.
pub(crate) fn victim_from_proc(proc: &Path, pid: u32, memory: &Hierarchy) -> Option<Arc<str>> {
    let dir = proc.join(pid.to_string());
    let text = fs::read_to_string(dir.join("cgroup")).ok()?;
    let path = memory.path_of(&text)?;
    // cgroup v1 shows a task that has begun to exit in `/`, whatever its
    // cgroup: after the kill that says nothing (and would charge the root).
    if path == "/" && memory.version == Version::V1 {
        let stat = fs::read_to_string(dir.join("stat")).unwrap_or_default();
        if exiting(&stat).unwrap_or(true) {
            return None;
        }
    }
    Some(Arc::from(path))
}

/// `PF_EXITING` in the flags of `/proc/<pid>/stat`; `None` if unreadable.
fn exiting(stat: &str) -> Option<bool> {
    const PF_EXITING: u64 = 0x4;
    // The name (in parentheses) may hold anything; fields follow the last `)`.
    let (_, rest) = stat.rsplit_once(')')?;
    let flags: u64 = rest.split_whitespace().nth(6)?.parse().ok()?;
    Some(flags & PF_EXITING != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the ring's size promises: a group kill of 8,192 processes
    /// fits before the reader drains any (records are 8-byte aligned).
    #[test]
    fn the_oom_ring_holds_a_group_kill_of_8k_processes() {
        let record = std::mem::size_of::<OomEvent>().next_multiple_of(8)
            + agent_common::RINGBUF_RECORD_HEADER;
        assert_eq!(record, 64);
        assert!(agent_common::OOM_RINGBUF_BYTES as usize / record >= 8_192);
    }

    #[test]
    fn exiting_from_proc_stat() {
        let alive = "700 (my (odd) hog) R 1 700 700 0 -1 4194560 12 0 0 0";
        let dying = "700 (my (odd) hog) Z 1 700 700 0 -1 4194564 12 0 0 0";
        assert_eq!(exiting(alive), Some(false));
        assert_eq!(exiting(dying), Some(true));
        assert_eq!(exiting(""), None);
    }

    #[test]
    fn finds_a_directory_by_inode() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let ino = fs::metadata(dir.path().join("a/b")).unwrap().ino();
        assert_eq!(find_by_inode(dir.path(), "/", ino).as_deref(), Some("/a/b"));
        assert_eq!(find_by_inode(dir.path(), "/", 1).as_deref(), None);
    }
}
