//! One container's directories (per controller) and a full sample of it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use super::{
    hierarchy::{Hierarchies, Version},
    read::Reader,
    stats::{Cpu, Known, Processes, Sample},
    v1, v2,
};
use crate::{config::Groups, errors::ErrorCounts};

/// Where each controller's files of one container are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirs {
    pub cpu: Option<PathBuf>,
    pub cpuacct: Option<PathBuf>,
    pub memory: Option<PathBuf>,
    pub blkio: Option<PathBuf>,
    pub pids: Option<PathBuf>,
    pub hugetlb: Option<PathBuf>,
    /// The container's cgroup2 directory (pure v2, or a hybrid host's
    /// unified mount when the path exists there).
    pub unified: Option<PathBuf>,
    /// Controllers live in the unified hierarchy (pure v2 host).
    pub v2: bool,
    pub root: bool,
}

impl Dirs {
    /// `ids` says in which hierarchies the container's directory exists.
    pub fn new(h: &Hierarchies, ids: &BTreeMap<u32, u64>, path: &str) -> Self {
        let mut d = Dirs {
            root: path == "/",
            ..Dirs::default()
        };
        for hier in h.list.iter().filter(|x| ids.contains_key(&x.id)) {
            let dir = hier.dir(path);
            if hier.version == Version::V2 {
                d.unified = Some(dir);
                continue;
            }
            for c in &hier.controllers {
                let slot = match c.as_str() {
                    "cpu" => &mut d.cpu,
                    "cpuacct" => &mut d.cpuacct,
                    "memory" => &mut d.memory,
                    "blkio" => &mut d.blkio,
                    "pids" => &mut d.pids,
                    "hugetlb" => &mut d.hugetlb,
                    _ => continue,
                };
                *slot = Some(dir.clone());
            }
        }
        // On a pure v2 host every controller is in the unified directory.
        if let (Some(u), true) = (&d.unified, h.list.iter().all(|x| x.version == Version::V2)) {
            d.v2 = true;
            for slot in [
                &mut d.cpu,
                &mut d.memory,
                &mut d.blkio,
                &mut d.pids,
                &mut d.hugetlb,
            ] {
                *slot = Some(u.clone());
            }
        }
        d
    }

    /// The directory whose `cgroup.procs` lists the container's processes.
    pub fn procs_dir(&self) -> Option<&Path> {
        self.cpu
            .as_deref()
            .or(self.pids.as_deref())
            .or(self.memory.as_deref())
            .or(self.unified.as_deref())
    }
}

/// What else a sample needs: page sizes for hugetlb.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// `2MB`, `1GB`: the form of both the file names (`hugetlb.2MB.*`) and
    /// cAdvisor's `pagesize` label.
    pub hugepage_sizes: Vec<String>,
}

impl Context {
    pub fn new(sys: &Path) -> Self {
        let mut kbs: Vec<u64> = std::fs::read_dir(sys.join("kernel/mm/hugepages"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("hugepages-")?
                    .strip_suffix("kB")?
                    .parse()
                    .ok()
            })
            .collect();
        kbs.sort_unstable();
        let size = |kb: u64| {
            if kb >= 1 << 20 {
                format!("{}GB", kb >> 20)
            } else if kb >= 1 << 10 {
                format!("{}MB", kb >> 10)
            } else {
                format!("{kb}KB")
            }
        };
        Self {
            hugepage_sizes: kbs.into_iter().map(size).collect(),
        }
    }
}

/// Reads every enabled group's files of one container. Files of disabled
/// groups, and files whose values are `known`, are not opened.
pub fn sample(
    d: &Dirs,
    groups: &Groups,
    ctx: &Context,
    known: &Known,
    r: &mut Reader,
    e: &ErrorCounts,
) -> Sample {
    let mut s = Sample {
        at: Some(SystemTime::now()),
        ..Sample::default()
    };
    if groups.cpu {
        let mut cpu = Cpu::default();
        if d.v2 {
            if let Some(u) = &d.unified {
                v2::cpu_stat(u, r, e, &mut cpu);
                v2::cpu_spec(u, r, e, &mut s.spec, known);
            }
        } else {
            if let Some(dir) = &d.cpuacct {
                v1::cpuacct(dir, r, e, &mut cpu, groups.percpu, known);
            }
            if let Some(dir) = &d.cpu {
                v1::cpu_stat(dir, r, e, &mut cpu, known);
                v1::cpu_spec(dir, r, e, &mut s.spec, known);
            }
            // Hybrid hosts without cpuacct for this cgroup: cgroup2's
            // cpu.stat has the usage for every cgroup2 directory.
            if cpu.usage_ns.is_none() {
                if let Some(u) = &d.unified {
                    let mut basic = Cpu::default();
                    v2::cpu_stat(u, r, e, &mut basic);
                    cpu.usage_ns = basic.usage_ns;
                    cpu.user_ns = cpu.user_ns.or(basic.user_ns);
                    cpu.system_ns = cpu.system_ns.or(basic.system_ns);
                }
            }
        }
        if cpu != Cpu::default() {
            s.cpu = Some(cpu);
        }
    }
    if groups.memory || groups.oom_event {
        if let Some(dir) = &d.memory {
            s.memory = Some(if d.v2 {
                let mut m = v2::memory(dir, r, e, &mut s.spec, d.root, known);
                // The root has no OOM counters of its own.
                if groups.oom_event && !d.root {
                    m.events.local_oom_kill = v2::local_oom_kills(dir, r, e);
                }
                m
            } else {
                v1::memory(dir, r, e, &mut s.spec, known)
            });
        }
    }
    if groups.disk_io {
        if let Some(dir) = &d.blkio {
            s.io = if d.v2 {
                v2::io_stat(dir, r, e)
            } else {
                Some(v1::blkio(dir, r, e))
            };
        }
    }
    if groups.process {
        let mut p = Processes::default();
        if let Some(dir) = &d.pids {
            // Same file names in v1 and v2. pids.current (hierarchical) is
            // what cAdvisor exports as threads.
            (p.threads, p.threads_max) = v1::pids(dir, r, e, known);
        }
        s.processes = Some(p);
    }
    if groups.pressure {
        if let Some(u) = &d.unified {
            s.pressure = v2::pressure(u, r, e);
        }
    }
    if groups.hugetlb && !ctx.hugepage_sizes.is_empty() {
        if let Some(dir) = &d.hugetlb {
            s.hugetlb = Some(if d.v2 {
                v2::hugetlb(dir, &ctx.hugepage_sizes, r, e)
            } else {
                v1::hugetlb(dir, &ctx.hugepage_sizes, r, e)
            });
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::hierarchy::Hierarchy;

    fn fixture_hierarchies(layout: &str) -> Hierarchies {
        let base = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cgroupfs")
            .join(layout);
        let h = |id: u32, version, ctrl: &[&str], dir: &str| Hierarchy {
            id,
            version,
            controllers: ctrl.iter().map(|c| c.to_string()).collect(),
            mount: base.join(dir),
            mount_root: "/".into(),
        };
        if layout == "v2" {
            Hierarchies {
                list: vec![h(0, Version::V2, &["cpu", "memory", "io", "pids"], "")],
            }
        } else {
            Hierarchies {
                list: vec![
                    h(1, Version::V1, &["cpu"], "cpu"),
                    h(2, Version::V1, &["cpuacct"], "cpuacct"),
                    h(4, Version::V1, &["memory"], "memory"),
                    h(7, Version::V1, &["blkio"], "blkio"),
                    h(8, Version::V1, &["pids"], "pids"),
                ],
            }
        }
    }

    fn all_ids(h: &Hierarchies) -> BTreeMap<u32, u64> {
        h.list.iter().map(|x| (x.id, 1)).collect()
    }

    #[test]
    fn v1_sample() {
        let h = fixture_hierarchies("v1");
        let d = Dirs::new(&h, &all_ids(&h), "/test");
        assert!(!d.v2);
        assert_eq!(d.procs_dir(), d.cpu.as_deref());
        let e = ErrorCounts::new("collection");
        let s = sample(
            &d,
            &Groups::all(),
            &Context::default(),
            &Known::default(),
            &mut Reader::default(),
            &e,
        );
        assert_eq!(s.cpu.as_ref().unwrap().usage_ns, Some(3_012_345_678));
        assert_eq!(s.memory.as_ref().unwrap().working_set(), Some(105_906_176));
        assert_eq!(s.io.as_ref().unwrap().len(), 2);
        assert_eq!(s.processes.as_ref().unwrap().threads_max, Some(None));
        assert_eq!(s.spec.memory_limit, Some(67_108_864));
        assert_eq!(e.recorded(), "");
    }

    #[test]
    fn v2_sample_and_disabled_groups_read_nothing() {
        let h = fixture_hierarchies("v2");
        let d = Dirs::new(&h, &all_ids(&h), "/test");
        assert!(d.v2);
        let e = ErrorCounts::new("collection");
        let mut r = Reader::default();
        let s = sample(
            &d,
            &Groups::all(),
            &Context::default(),
            &Known::default(),
            &mut r,
            &e,
        );
        assert_eq!(s.cpu.as_ref().unwrap().usage_ns, Some(7_654_321_000));
        assert_eq!(s.memory.as_ref().unwrap().events.oom_kill, Some(3));
        assert_eq!(s.pressure.as_ref().unwrap().io.0, Some(123));
        let mut r = Reader::default();
        let none = Groups {
            cpu: false,
            memory: false,
            disk_io: false,
            process: false,
            pressure: false,
            oom_event: false,
            ..Groups::all()
        };
        let s = sample(
            &d,
            &none,
            &Context::default(),
            &Known::default(),
            &mut r,
            &e,
        );
        assert_eq!(r.reads, 0, "a disabled group costs nothing");
        assert!(s.cpu.is_none() && s.memory.is_none());
    }

    #[test]
    fn hybrid_sample_takes_pressure_from_the_unified_mount() {
        let mut h = fixture_hierarchies("v1");
        let v2 = fixture_hierarchies("v2");
        h.list.insert(
            0,
            Hierarchy {
                controllers: vec![],
                ..v2.list[0].clone()
            },
        );
        let d = Dirs::new(&h, &all_ids(&h), "/test");
        assert!(!d.v2 && d.unified.is_some());
        let e = ErrorCounts::new("collection");
        let s = sample(
            &d,
            &Groups::all(),
            &Context::default(),
            &Known::default(),
            &mut Reader::default(),
            &e,
        );
        // v1 values for the controllers, PSI from cgroup2.
        assert_eq!(s.cpu.as_ref().unwrap().usage_ns, Some(3_012_345_678));
        assert_eq!(s.pressure.as_ref().unwrap().cpu.0, Some(1_500_000));
        assert_eq!(
            s.memory.as_ref().unwrap().events.oom_kill,
            Some(1),
            "from memory.oom_control"
        );
    }

    #[test]
    fn hugepage_sizes_as_files_and_labels_name_them() {
        let sys = tempfile::tempdir().unwrap();
        for d in ["hugepages-1048576kB", "hugepages-2048kB", "not-hugepages"] {
            std::fs::create_dir_all(sys.path().join("kernel/mm/hugepages").join(d)).unwrap();
        }
        assert_eq!(Context::new(sys.path()).hugepage_sizes, ["2MB", "1GB"]);
    }

    #[test]
    fn only_hierarchies_the_container_is_in() {
        let h = fixture_hierarchies("v1");
        let d = Dirs::new(&h, &BTreeMap::from([(4, 9)]), "/test");
        assert!(d.memory.is_some() && d.cpu.is_none() && d.blkio.is_none());
    }
}
