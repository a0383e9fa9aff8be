//! Which cgroup hierarchies are mounted where.
//!
//! The cgroup tracepoints name a hierarchy by its id (`root`: 0 for cgroup2,
//! otherwise the number in `/proc/self/cgroup`), so every mounted hierarchy
//! is known by that id, its controllers and its mount point.

#[cfg(test)]
use std::collections::BTreeSet;
use std::{
    fs,
    path::{Path, PathBuf},
};

use procfs::{process::MountInfos, FromRead as _};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum HierarchyError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: procfs::ProcError,
    },
    #[error("no cgroup hierarchy is mounted")]
    NoneMounted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The host's layout, as the design card names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    V1,
    V2,
    /// v1 controllers plus a cgroup2 mount (`/sys/fs/cgroup/unified`).
    Hybrid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// The kernel's hierarchy id; 0 is cgroup2.
    pub id: u32,
    pub version: Version,
    /// `cpu`, `cpuacct`, `name=systemd`; for cgroup2 the enabled controllers.
    pub controllers: Vec<String>,
    pub mount: PathBuf,
    /// The hierarchy path mounted at `mount` (`/` unless a subtree is
    /// mounted, as in a cgroup namespace).
    pub mount_root: String,
}

impl Hierarchy {
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// Turns a path relative to the hierarchy root (what the kernel reports)
    /// into one relative to our mount; `None` when it lies outside it.
    pub fn mount_relative<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.mount_root == "/" {
            return Some(path);
        }
        let rest = path.strip_prefix(self.mount_root.as_str())?;
        if rest.is_empty() {
            Some("/")
        } else if rest.starts_with('/') {
            Some(rest)
        } else {
            None
        }
    }

    /// A task's cgroup in this hierarchy, relative to our mount, from the
    /// text of its `/proc/<pid>/cgroup`.
    pub fn path_of<'a>(&self, proc_cgroup: &'a str) -> Option<&'a str> {
        let path = proc_cgroup.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let id: u32 = parts.next()?.parse().ok()?;
            let _controllers = parts.next()?;
            (id == self.id).then(|| parts.next()).flatten()
        })?;
        self.mount_relative(path)
    }

    /// The directory of a container path (relative to the mount).
    pub fn dir(&self, path: &str) -> PathBuf {
        self.mount.join(path.trim_start_matches('/'))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hierarchies {
    pub list: Vec<Hierarchy>,
}

impl Hierarchies {
    /// Reads `/proc/self/mountinfo` and `/proc/self/cgroup` under `proc`.
    pub fn discover(proc: &Path) -> Result<Self, HierarchyError> {
        let read = |name: &str| {
            let path = proc.join("self").join(name);
            fs::read_to_string(&path).map_err(|e| HierarchyError::Read {
                path,
                source: procfs::ProcError::from(e),
            })
        };
        Self::parse(&read("mountinfo")?, &read("cgroup")?)
    }

    pub fn parse(mountinfo: &str, self_cgroup: &str) -> Result<Self, HierarchyError> {
        Self::parse_with(mountinfo, self_cgroup, is_hierarchy_root)
    }

    /// [`Self::parse`], with `is_root` telling whether a mounted directory
    /// is its hierarchy's root.
    fn parse_with(
        mountinfo: &str,
        self_cgroup: &str,
        is_root: impl Fn(&Path) -> bool,
    ) -> Result<Self, HierarchyError> {
        let mounts =
            MountInfos::from_read(mountinfo.as_bytes()).map_err(|source| HierarchyError::Read {
                path: "mountinfo".into(),
                source,
            })?;
        let mut list: Vec<Hierarchy> = Vec::new();
        for line in self_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(ctrls)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(id) = id.trim().parse::<u32>() else {
                continue;
            };
            if list.iter().any(|h| h.id == id) {
                continue;
            }
            let wanted: Vec<String> = ctrls
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            let mount = mounts.0.iter().find(|m| {
                if id == 0 {
                    m.fs_type == "cgroup2"
                } else {
                    m.fs_type == "cgroup"
                        && !wanted.is_empty()
                        && wanted.iter().all(|c| has_controller(&m.super_options, c))
                }
            });
            let Some(m) = mount else { continue };
            let controllers = if id == 0 {
                fs::read_to_string(m.mount_point.join("cgroup.controllers"))
                    .map(|s| s.split_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default()
            } else {
                wanted
            };
            // In a private cgroup namespace (a container's, by default on
            // cgroup v2) mountinfo shows a mount's root relative to the
            // namespace's: the host's hierarchy bind-mounted in (a
            // DaemonSet's hostPath) reads `/../..`. Its paths are the
            // host's, as the kernel's tracepoints name them.
            let mount_root = if m.root.starts_with("/..") && is_root(&m.mount_point) {
                "/".to_owned()
            } else {
                if m.root.starts_with("/..") {
                    tracing::warn!(mount = %m.mount_point.display(), root = %m.root, "a cgroup mount whose root lies outside this cgroup namespace and is not its hierarchy's root: cgroups outside it cannot be named; mount the host's whole hierarchy");
                }
                m.root.clone()
            };
            list.push(Hierarchy {
                id,
                version: if id == 0 { Version::V2 } else { Version::V1 },
                controllers,
                mount: m.mount_point.clone(),
                mount_root,
            });
        }
        if list.is_empty() {
            return Err(HierarchyError::NoneMounted);
        }
        list.sort_by_key(|h| h.id);
        Ok(Self { list })
    }

    pub fn get(&self, id: u32) -> Option<&Hierarchy> {
        self.list.iter().find(|h| h.id == id)
    }

    /// `id=mount` of every hierarchy, for the start-up log.
    pub fn summary(&self) -> String {
        self.list
            .iter()
            .map(|h| format!("{}={}", h.id, h.mount.display()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn layout(&self) -> Layout {
        let v1 = self.list.iter().any(|h| h.version == Version::V1);
        let v2 = self.list.iter().any(|h| h.version == Version::V2);
        match (v1, v2) {
            (true, true) => Layout::Hybrid,
            (false, _) => Layout::V2,
            (true, false) => Layout::V1,
        }
    }

    /// The hierarchy that holds `controller` (v1 first, as on hybrid hosts
    /// the v1 copy is the one with the data).
    pub fn with_controller(&self, controller: &str) -> Option<&Hierarchy> {
        self.list
            .iter()
            .find(|h| h.version == Version::V1 && h.has(controller))
            .or_else(|| self.list.iter().find(|h| h.has(controller)))
    }

    #[cfg(test)]
    pub fn ids(&self) -> BTreeSet<u32> {
        self.list.iter().map(|h| h.id).collect()
    }
}

/// kernfs gives a hierarchy's root directory inode 1.
fn is_hierarchy_root(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(dir).is_ok_and(|m| m.ino() == 1)
}

fn has_controller(
    super_options: &std::collections::HashMap<String, Option<String>>,
    controller: &str,
) -> bool {
    match controller.split_once('=') {
        Some((key, value)) => super_options
            .get(key)
            .is_some_and(|v| v.as_deref() == Some(value)),
        None => super_options.contains_key(controller),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tasks_line_of_proc_cgroup() {
        let mut h = Hierarchy {
            id: 4,
            version: Version::V1,
            controllers: vec!["memory".into()],
            mount: "/sys/fs/cgroup/memory".into(),
            mount_root: "/".into(),
        };
        let text = "9:name=systemd:/\n4:memory:/test/oom1\n0::/\n";
        assert_eq!(h.path_of(text), Some("/test/oom1"));
        assert_eq!(h.path_of("0::/x\n"), None);
        h.mount_root = "/test".into();
        assert_eq!(h.path_of(text), Some("/oom1"), "relative to the mount");
    }

    fn fixture(name: &str) -> Hierarchies {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mountinfo");
        let read = |ext: &str| fs::read_to_string(dir.join(format!("{name}.{ext}"))).unwrap();
        Hierarchies::parse(&read("mountinfo"), &read("cgroup")).unwrap()
    }

    #[test]
    fn hybrid_host() {
        let h = fixture("hybrid");
        assert_eq!(h.layout(), Layout::Hybrid);
        assert_eq!(h.ids(), (0..=9).collect());
        assert_eq!(h.get(0).unwrap().mount, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(h.get(4).unwrap().controllers, ["memory"]);
        assert_eq!(h.get(9).unwrap().controllers, ["name=systemd"]);
        assert_eq!(h.get(9).unwrap().mount, Path::new("/sys/fs/cgroup/systemd"));
        assert_eq!(h.with_controller("cpuacct").unwrap().id, 2);
        assert_eq!(h.with_controller("memory").unwrap().id, 4);
    }

    #[test]
    fn v1_host_with_comounted_controllers_and_a_subtree_mount() {
        let h = fixture("v1");
        assert_eq!(h.layout(), Layout::V1);
        // 0::/ is listed but no cgroup2 is mounted.
        assert!(h.get(0).is_none());
        let cpu = h.get(4).unwrap();
        assert_eq!(cpu.controllers, ["cpu", "cpuacct"]);
        assert_eq!(cpu.mount, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(h.with_controller("cpuacct").unwrap().id, 4);
        // The first mount of the memory hierarchy wins, not the subtree one.
        assert_eq!(h.get(7).unwrap().mount, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(h.get(1).unwrap().mount, Path::new("/sys/fs/cgroup/systemd"));
        assert_eq!(h.get(12).unwrap().mount, Path::new("/sys/fs/cgroup/cpuset"));
    }

    #[test]
    fn v2_host() {
        let h = fixture("v2");
        assert_eq!(h.layout(), Layout::V2);
        assert_eq!(h.list.len(), 1);
        assert_eq!(h.get(0).unwrap().mount, Path::new("/sys/fs/cgroup"));
    }

    #[test]
    fn subtree_mount_paths() {
        let h = Hierarchy {
            id: 4,
            version: Version::V1,
            controllers: vec!["memory".into()],
            mount: "/mnt/m".into(),
            mount_root: "/kubepods".into(),
        };
        assert_eq!(h.mount_relative("/kubepods/pod1"), Some("/pod1"));
        assert_eq!(h.mount_relative("/kubepods"), Some("/"));
        assert_eq!(h.mount_relative("/kubepodsX"), None);
        assert_eq!(h.mount_relative("/system.slice"), None);
        assert_eq!(h.dir("/pod1"), Path::new("/mnt/m/pod1"));
    }

    /// A container with a private cgroup namespace and the host's cgroup2
    /// bind-mounted at /sys/fs/cgroup, as the DaemonSet runs.
    #[test]
    fn the_hosts_hierarchy_seen_from_a_cgroup_namespace() {
        let mountinfo = "1101 1100 0:29 /../.. /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime master:3 - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = Hierarchies::parse_with(mountinfo, "0::/\n", |_| true).unwrap();
        let v2 = h.get(0).unwrap();
        assert_eq!(v2.mount_root, "/");
        assert_eq!(
            v2.mount_relative("/kubepods.slice/x"),
            Some("/kubepods.slice/x")
        );
        // A subtree outside the namespace cannot be named.
        let h = Hierarchies::parse_with(mountinfo, "0::/\n", |_| false).unwrap();
        assert_eq!(h.get(0).unwrap().mount_relative("/kubepods.slice/x"), None);
    }

    #[test]
    fn nothing_mounted_is_an_error() {
        assert!(matches!(
            Hierarchies::parse("", "0::/\n"),
            Err(HierarchyError::NoneMounted)
        ));
    }
}
