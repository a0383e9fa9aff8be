//! Processes, threads and open file descriptors of a container, cheaply:
//! counts come from the cgroup's own task lists, file descriptors from one
//! `readdir` per process (no `readlink` per descriptor).

use std::{fs, path::Path};

use crate::{
    cgroup::{read::Reader, stats::Processes},
    errors::ErrorCounts,
};

fn lines(text: &str) -> u64 {
    text.lines().filter(|l| !l.trim().is_empty()).count() as u64
}

/// The pids in `cgroup.procs` of `procs_dir`.
pub fn pids(procs_dir: &Path, r: &mut Reader, e: &ErrorCounts) -> Option<Vec<u32>> {
    let text = r.read(&procs_dir.join("cgroup.procs"), e)?;
    Some(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Fills processes, threads and fds from the container's `pids`;
/// `procs_dir` holds `tasks` (v1) or `cgroup.threads` (v2). Threads already
/// known (from `pids.current`, hierarchical, what cAdvisor exports) win over
/// the local task list.
pub fn processes(
    procs_dir: &Path,
    pids: &[u32],
    proc_root: &Path,
    r: &mut Reader,
    e: &ErrorCounts,
    p: &mut Processes,
) {
    p.processes = Some(pids.len() as u64);
    p.threads = p.threads.or_else(|| {
        let v1 = procs_dir.join("tasks");
        let list = if v1.exists() {
            v1
        } else {
            procs_dir.join("cgroup.threads")
        };
        r.read(&list, e).map(lines)
    });
    if let Some(first) = pids.first() {
        p.max_open_files = r
            .read(&proc_root.join(first.to_string()).join("limits"), e)
            .and_then(max_open_files);
    }
    let mut fds = 0u64;
    for pid in pids {
        match fs::read_dir(proc_root.join(pid.to_string()).join("fd")) {
            Ok(dir) => fds += dir.count() as u64,
            // The process exited since cgroup.procs was read: it has none.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                e.record("fd_count_failed", format!("listing /proc/{pid}/fd: {err}"));
                return;
            }
        }
    }
    p.fds = Some(fds);
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits`.
pub fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        Some(-1)
    } else {
        soft.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_a_fixture_and_proc() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        fs::write(
            dir.path().join("cgroup.procs"),
            format!("{me}\n999999999\n"),
        )
        .unwrap();
        fs::write(dir.path().join("tasks"), format!("{me}\n1\n2\n")).unwrap();
        let (mut r, e) = (Reader::default(), ErrorCounts::new("collection"));
        let mut p = Processes::default();
        let list = pids(dir.path(), &mut r, &e).unwrap();
        processes(dir.path(), &list, Path::new("/proc"), &mut r, &e, &mut p);
        assert_eq!(p.processes, Some(2));
        assert_eq!(p.threads, Some(3));
        let own = fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        assert!(p.fds.unwrap().abs_diff(own) <= 2, "{:?} vs {own}", p.fds);
        let mut p = Processes {
            threads: Some(7),
            ..Processes::default()
        };
        processes(dir.path(), &list, Path::new("/proc"), &mut r, &e, &mut p);
        assert_eq!(p.threads, Some(7), "pids.current wins");
        assert_eq!(e.recorded(), "");
    }

    #[test]
    fn open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax cpu time              unlimited            unlimited            seconds   \nMax open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            Some(-1)
        );
        assert_eq!(max_open_files(""), None);
    }
}
