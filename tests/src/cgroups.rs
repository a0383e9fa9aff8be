//! Cgroups a test creates under a unique prefix and always removes, even
//! when the test fails: every process in them is killed, then every
//! directory is removed deepest first.

use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

pub const ROOT: &str = "/sys/fs/cgroup";

/// The hierarchies of this machine's hybrid layout that tests use.
pub const HIERARCHIES: &[&str] = &["cpu", "cpuacct", "memory", "pids", "unified"];

pub struct CgroupTree {
    /// `/cgscope-test-<name>-<unique>`.
    pub prefix: String,
    hierarchies: Vec<&'static str>,
}

impl CgroupTree {
    pub fn new(name: &str, hierarchies: &[&'static str]) -> Self {
        let prefix = format!(
            "/cgscope-test-{name}-{}-{}",
            std::process::id(),
            crate::unique()
        );
        let tree = Self {
            prefix,
            hierarchies: hierarchies.to_vec(),
        };
        tree.mkdir("").expect("creating the test's cgroup root");
        tree
    }

    /// The cgroup path (relative to the hierarchy roots) of `rel`.
    pub fn path(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}/{}", self.prefix, rel.trim_start_matches('/'))
        }
    }

    pub fn dir(&self, hierarchy: &str, rel: &str) -> PathBuf {
        Path::new(ROOT)
            .join(hierarchy)
            .join(self.path(rel).trim_start_matches('/'))
    }

    /// Creates `rel` in every hierarchy of the tree.
    pub fn mkdir(&self, rel: &str) -> io::Result<()> {
        for h in &self.hierarchies {
            fs::create_dir(self.dir(h, rel))?;
        }
        Ok(())
    }

    pub fn rmdir(&self, rel: &str) -> io::Result<()> {
        for h in &self.hierarchies {
            fs::remove_dir(self.dir(h, rel))?;
        }
        Ok(())
    }

    /// Starts `script` under `sh -c` inside `rel` in every hierarchy
    /// listed (the shell joins them before it runs the script).
    pub fn spawn_in(&self, hierarchies: &[&str], rel: &str, script: &str) -> std::process::Child {
        let join: String = hierarchies
            .iter()
            .map(|h| format!("echo $$ > {}/cgroup.procs && ", self.dir(h, rel).display()))
            .collect();
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{join}{script}"))
            .spawn()
            .expect("starting sh")
    }

    /// Every cgroup path under the prefix that exists in `hierarchy`.
    pub fn existing(&self, hierarchy: &str) -> Vec<String> {
        let mut out = Vec::new();
        let base = Path::new(ROOT).join(hierarchy);
        collect(&self.dir(hierarchy, ""), &base, &mut out);
        out.sort();
        out
    }
}

fn collect(dir: &Path, base: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    out.push(format!("/{}", dir.strip_prefix(base).unwrap().display()));
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect(&e.path(), base, out);
        }
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for h in &self.hierarchies {
            let top = self.dir(h, "");
            let mut dirs = Vec::new();
            collect_dirs(&top, &mut dirs);
            // Deepest first.
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                kill_members(&d);
                let start = Instant::now();
                while fs::remove_dir(&d).is_err()
                    && d.exists()
                    && start.elapsed() < Duration::from_secs(5)
                {
                    kill_members(&d);
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    out.push(dir.to_path_buf());
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
}

/// Kills the processes in a cgroup the test created (only ever ours).
fn kill_members(dir: &Path) {
    let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: plain syscall.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Waits until `cond` holds, polling; panics with `what` after `timeout`.
/// The whole disk (major, minor) that holds `dir` (throttle rules and
/// cAdvisor's device labels are per disk, not per partition).
pub fn disk_of(dir: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt as _;
    let dev = fs::metadata(dir).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).unwrap();
    if sys.join("partition").exists() {
        let parent = fs::read_to_string(sys.parent().unwrap().join("dev")).unwrap();
        let (a, b) = parent.trim().split_once(':').unwrap();
        return (a.parse().unwrap(), b.parse().unwrap());
    }
    (major, minor)
}

/// v1 counts a cgroup's I/O per device only under a throttle rule for that
/// device on it or an ancestor (unless the disk uses BFQ): sets rules far
/// above anything a test reaches on `dir` (a blkio cgroup directory).
pub fn count_io_on_disk_of(dir: &Path, blkio_dir: &Path) {
    let (major, minor) = disk_of(dir);
    for file in [
        "blkio.throttle.read_bps_device",
        "blkio.throttle.write_bps_device",
    ] {
        fs::write(
            blkio_dir.join(file),
            format!("{major}:{minor} 100000000000"),
        )
        .unwrap_or_else(|e| panic!("{}/{file}: {e}", blkio_dir.display()));
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}
