//! Cgroups a test creates under a unique prefix and always removes, even
//! when the test fails: every process in them is killed, then every
//! directory is removed deepest first.
//!
//! Tests name controllers (`memory`, `cpu`, `unified`, …); the layout this
//! machine mounts decides where they live: one hierarchy per controller
//! (v1), one tree for all (v2), or v1 controllers beside a controller-less
//! cgroup2 at `unified` (hybrid).

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

pub const ROOT: &str = "/sys/fs/cgroup";

/// The controllers a test of every hierarchy uses.
pub const HIERARCHIES: &[&str] = &["cpu", "cpuacct", "memory", "pids", "unified"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// v1 controllers, and cgroup2 without controllers at `unified`.
    Hybrid,
    V1,
    /// Pure cgroup2 at the root.
    V2,
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn is_cgroup2(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string and a zeroed out-parameter.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

impl Layout {
    /// This machine's layout, read once.
    pub fn get() -> Self {
        static LAYOUT: OnceLock<Layout> = OnceLock::new();
        *LAYOUT.get_or_init(|| {
            if is_cgroup2(Path::new(ROOT)) {
                Self::V2
            } else if is_cgroup2(&Path::new(ROOT).join("unified")) {
                Self::Hybrid
            } else {
                Self::V1
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Hybrid => "hybrid",
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }

    /// The directory under [`ROOT`] of the hierarchy that has `controller`
    /// (`unified` for the cgroup2 tree), or `None` when nothing mounts it.
    /// A v1 controller mounted with another (`cpu` → `cpu,cpuacct`, as
    /// systemd links them) names the shared directory.
    pub fn mount_of(self, controller: &str) -> Option<String> {
        if self == Self::V2 {
            return Some(String::new());
        }
        let dir = Path::new(ROOT).join(controller);
        if !dir.is_dir() || (self == Self::V1 && controller == "unified") {
            return None;
        }
        match fs::read_link(&dir) {
            Ok(target) => Some(target.to_string_lossy().into_owned()),
            Err(_) => Some(controller.to_owned()),
        }
    }
}

/// What a v2 parent hands down to the cgroups a test makes in it.
const V2_CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "io"];

pub struct CgroupTree {
    /// `/cgscope-test-<name>-<unique>`.
    pub prefix: String,
    /// The hierarchy directories (under [`ROOT`]) the tree lives in.
    hierarchies: Vec<String>,
    layout: Layout,
}

impl CgroupTree {
    /// A tree in the hierarchies of `controllers` (those this layout
    /// mounts; on v2 the one tree).
    pub fn new(name: &str, controllers: &[&str]) -> Self {
        let prefix = format!(
            "/cgscope-test-{name}-{}-{}",
            std::process::id(),
            crate::unique()
        );
        let layout = Layout::get();
        let mut hierarchies: Vec<String> = Vec::new();
        for c in controllers {
            if let Some(h) = layout.mount_of(c) {
                if !hierarchies.contains(&h) {
                    hierarchies.push(h);
                }
            }
        }
        let tree = Self {
            prefix,
            hierarchies,
            layout,
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

    /// The directory of `rel` in the hierarchy of `controller` (a
    /// hierarchy directory's name works too).
    pub fn dir(&self, controller: &str, rel: &str) -> PathBuf {
        let h = self
            .layout
            .mount_of(controller)
            .unwrap_or_else(|| panic!("no {controller} hierarchy in the {:?} layout", self.layout));
        self.dir_in(&h, rel)
    }

    fn dir_in(&self, hierarchy: &str, rel: &str) -> PathBuf {
        Path::new(ROOT)
            .join(hierarchy)
            .join(self.path(rel).trim_start_matches('/'))
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Creates `rel` in every hierarchy of the tree. On v2 the parent
    /// (when it is the tree's own) first hands its controllers down.
    pub fn mkdir(&self, rel: &str) -> io::Result<()> {
        if self.layout == Layout::V2 && !rel.is_empty() {
            let parent = self.dir_in("", rel).parent().unwrap().to_path_buf();
            enable_controllers(&parent);
        }
        for h in &self.hierarchies {
            fs::create_dir(self.dir_in(h, rel))?;
        }
        Ok(())
    }

    pub fn rmdir(&self, rel: &str) -> io::Result<()> {
        for h in &self.hierarchies {
            fs::remove_dir(self.dir_in(h, rel))?;
        }
        Ok(())
    }

    /// Starts `script` under `sh -c` inside `rel` in the hierarchies of
    /// the controllers listed (the shell joins them before it runs the
    /// script).
    pub fn spawn_in(&self, controllers: &[&str], rel: &str, script: &str) -> std::process::Child {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for c in controllers {
            if self.layout.mount_of(c).is_some() {
                let d = self.dir(c, rel);
                if !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
        let join: String = dirs
            .iter()
            .map(|d| format!("echo $$ > {}/cgroup.procs && ", d.display()))
            .collect();
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{join}{script}"))
            .spawn()
            .expect("starting sh")
    }

    /// The directory of `rel` in each hierarchy of the tree.
    pub fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| self.dir_in(h, rel))
            .collect()
    }

    /// Every cgroup path under the prefix that exists in the hierarchy of
    /// `controller`.
    pub fn existing(&self, controller: &str) -> Vec<String> {
        let mut out = Vec::new();
        let base = Path::new(ROOT).join(self.layout.mount_of(controller).unwrap());
        collect(&self.dir(controller, ""), &base, &mut out);
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
            let top = self.dir_in(h, "");
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

fn read_number(path: &Path) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", path.display()))
}

/// The value of `key` in a flat-keyed file (`memory.stat`, `cpu.stat`).
fn key_of(path: &Path, key: &str) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{} has no {key}", path.display()))
}

/// Hands the controllers a v2 cgroup has down to its children (only the
/// tree's own cgroups: the prefix's parent is the system's). A cgroup with
/// processes refuses; then its children simply lack them.
fn enable_controllers(dir: &Path) {
    let Ok(have) = fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    let want: Vec<String> = have
        .split_whitespace()
        .filter(|c| V2_CONTROLLERS.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if !want.is_empty() {
        let _ = fs::write(dir.join("cgroup.subtree_control"), want.join(" "));
    }
}

impl CgroupTree {
    /// Sets the memory limit of `rel` (`memory.max`, `memory.limit_in_bytes`).
    pub fn set_memory_limit(&self, rel: &str, bytes: u64) {
        let file = match self.layout {
            Layout::V2 => "memory.max",
            _ => "memory.limit_in_bytes",
        };
        let path = self.dir("memory", rel).join(file);
        fs::write(&path, bytes.to_string()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// The CPU time the kernel counted for `rel`, in seconds (v1
    /// `cpuacct.usage`, v2 `cpu.stat` `usage_usec`).
    pub fn cpu_usage_seconds(&self, rel: &str) -> f64 {
        match self.layout {
            Layout::V2 => key_of(&self.dir("cpu", rel).join("cpu.stat"), "usage_usec") as f64 / 1e6,
            _ => read_number(&self.dir("cpuacct", rel).join("cpuacct.usage")) as f64 / 1e9,
        }
    }

    /// The memory charged to `rel` (v1 `memory.usage_in_bytes`, v2
    /// `memory.current`).
    pub fn memory_usage(&self, rel: &str) -> u64 {
        let file = match self.layout {
            Layout::V2 => "memory.current",
            _ => "memory.usage_in_bytes",
        };
        read_number(&self.dir("memory", rel).join(file))
    }

    /// A hierarchical `memory.stat` value by its v1 name (`total_rss`,
    /// `total_inactive_file`); v2's are hierarchical already, and name the
    /// anonymous memory v1 calls rss `anon`.
    pub fn memory_stat(&self, rel: &str, v1_key: &str) -> u64 {
        let key = match self.layout {
            Layout::V2 => match v1_key.strip_prefix("total_").unwrap_or(v1_key) {
                "rss" => "anon",
                k => k,
            },
            _ => v1_key,
        };
        key_of(&self.dir("memory", rel).join("memory.stat"), key)
    }

    /// The kernel's count of OOM kills of `rel`'s own tasks (v2
    /// `memory.events.local`, v1 `memory.oom_control`).
    pub fn oom_kills(&self, rel: &str) -> u64 {
        let file = match self.layout {
            Layout::V2 => "memory.events.local",
            _ => "memory.oom_control",
        };
        let path = self.dir("memory", rel).join(file);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{} has no oom_kill", path.display()))
    }
}

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

/// Waits until `cond` holds, polling; panics with `what` after `timeout`.
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
