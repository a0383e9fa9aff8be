//! The kernel log as an OOM source: `/dev/kmsg`, or a regular file of
//! records in the same format (replayed from its start, then followed like
//! `tail -f`).
//!
//! On `/dev/kmsg` the reader starts at the end of the ring buffer, so a
//! restart does not count old kills again; sequence numbers guard against
//! replays. Reads block, so the reader has its own thread.

use std::{
    fs::File,
    io::{self, BufRead as _, BufReader, Read as _, Seek as _, SeekFrom},
    os::unix::fs::FileTypeExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    thread,
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc;

use super::{
    parser::{parse_record, KillReport, Parser},
    OomStats, Retry,
};
use crate::{
    cgroup::hierarchy::Hierarchy,
    errors::Chain,
    messages::{Msg, OomKill},
    supervise::Health,
};

/// Opens `path` (failing early and clearly, e.g. without CAP_SYSLOG); the
/// reader it returns follows it, blocking, until the registry goes away.
/// A read that fails marks the OOM source down in `health` and is
/// retried (see [`Retry`]): `/dev/kmsg` on the descriptor opened here (the
/// agent no longer has the capability to open it again), a regular file
/// opened again from its start.
pub fn open(
    path: &Path,
    memory: Option<Hierarchy>,
    proc: PathBuf,
    stats: Arc<OomStats>,
    tx: mpsc::Sender<Msg>,
) -> io::Result<impl FnOnce(Health) + Send + 'static> {
    let mut file = File::open(path)?;
    let is_device = file.metadata()?.file_type().is_char_device();
    if is_device {
        // Only kills from now on.
        file.seek(SeekFrom::End(0))?;
    }
    let path = path.to_path_buf();
    Ok(move |health: Health| {
        let mut retry = Retry::new(health, stats.clone());
        let mut follower = Follower {
            parser: Parser::new(),
            last_seq: None,
            memory,
            proc,
            stats,
            tx,
            boot: crate::clock::boot_time().unwrap_or(SystemTime::UNIX_EPOCH),
        };
        loop {
            let result = if is_device {
                follower.device(&mut file)
            } else {
                follower.file(&mut file, &path)
            };
            let Err(e) = result else { return };
            tracing::error!(error = %Chain(&e), path = %path.display(), "reading the kernel log failed");
            follower.parser = Parser::new();
            loop {
                let Some(wait) = retry.failed(format!("reading {}: {e}", path.display())) else {
                    return;
                };
                thread::sleep(wait);
                if follower.tx.is_closed() {
                    return;
                }
                let resumed = if is_device {
                    // Records written meanwhile are not read: the kernel's
                    // per-cgroup counters count those kills.
                    file.seek(SeekFrom::End(0)).map(|_| ())
                } else {
                    File::open(&path).map(|f| file = f)
                };
                match resumed {
                    Ok(()) => {
                        retry.ok();
                        break;
                    }
                    Err(e) => tracing::debug!(error = %e, "the kernel log is still unreadable"),
                }
            }
        }
    })
}

struct Follower {
    parser: Parser,
    last_seq: Option<u64>,
    memory: Option<Hierarchy>,
    /// Where the victims' `/proc/<pid>` is (`--proc-root`).
    proc: PathBuf,
    stats: Arc<OomStats>,
    tx: mpsc::Sender<Msg>,
    boot: SystemTime,
}

impl Follower {
    /// /dev/kmsg: one record per read().
    fn device(&mut self, file: &mut File) -> io::Result<()> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    if !self.record(&buf[..n]) {
                        return Ok(());
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                    // Records were overwritten before we read them: what
                    // follows belongs to no report seen so far.
                    self.parser = Parser::new();
                    self.stats.errors.record(
                        "kmsg_overwritten",
                        "kernel log records were overwritten before they were read",
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.stats.errors.record(
                        "kmsg_record_too_long",
                        "a kernel log record did not fit the read buffer",
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A regular file: every line is a record; at its end, wait for more.
    fn file(&mut self, file: &mut File, path: &Path) -> io::Result<()> {
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || !line.ends_with(b"\n") {
                // At the end (maybe mid-line): keep what we have, wait.
                thread::sleep(Duration::from_millis(100));
                if self.tx.is_closed() {
                    return Ok(());
                }
                if std::fs::metadata(path).is_err() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "the file was removed",
                    ));
                }
                continue;
            }
            // Continuation lines (` KEY=value`) belong to the record above.
            if !line.starts_with(b" ") && !self.record(&line) {
                return Ok(());
            }
            line.clear();
        }
    }

    /// Handles one record; false when the registry is gone.
    fn record(&mut self, bytes: &[u8]) -> bool {
        let text = String::from_utf8_lossy(bytes);
        let Some(rec) = parse_record(text.trim_end_matches('\n')) else {
            self.stats.errors.record(
                "kmsg_malformed",
                format!("not a kernel log record: {:?}", truncate(&text)),
            );
            return true;
        };
        if self.last_seq.is_some_and(|last| rec.seq <= last) {
            return true;
        }
        self.last_seq = Some(rec.seq);
        let Some(report) = self.parser.feed(rec.msg, Some(rec.ts_us)) else {
            return true;
        };
        let kill = self.attribute(report);
        tracing::info!(pid = kill.pid, comm = %kill.comm, victim = ?kill.victim, oom = ?kill.oom, "OOM kill");
        self.stats.count(&kill);
        self.tx.blocking_send(Msg::Oom(kill)).is_ok()
    }

    fn attribute(&self, r: KillReport) -> OomKill {
        let map = |p: Option<String>| -> Option<Arc<str>> {
            let p = p?;
            match &self.memory {
                Some(h) => h.mount_relative(&p).map(Arc::from),
                None => Some(Arc::from(p.as_str())),
            }
        };
        let now = SystemTime::now();
        let at = r
            .ts_us
            .map(|us| self.boot + Duration::from_micros(us))
            .filter(|t| *t <= now)
            .unwrap_or(now);
        // Past 10 kills in 5 s the kernel rate-limits the report header
        // that names the cgroups; the victim may still be in /proc.
        let victim = map(r.task_memcg).or_else(|| {
            let memory = self.memory.as_ref()?;
            super::ebpf::victim_from_proc(&self.proc, r.pid, memory)
        });
        if victim.is_none() {
            self.stats.errors.record(
                "unattributed",
                format!(
                    "OOM kill of pid {} ({}): the kernel log names no cgroup",
                    r.pid, r.comm
                ),
            );
        }
        OomKill {
            at,
            pid: r.pid,
            comm: r.comm,
            victim,
            oom: map(r.oom_memcg).or_else(|| Some(Arc::from("/"))),
            constraint: r.constraint,
        }
    }
}

fn truncate(s: &str) -> &str {
    let end = s.char_indices().nth(80).map_or(s.len(), |(i, _)| i);
    &s[..end]
}
