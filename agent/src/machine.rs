//! Machine information (`machine_*` metrics and `/api/v2.0/machine`).
//!
//! Every path is below an injectable root so tests run on fixture trees and
//! a containerised agent can read the host's `/proc` from `/host/proc`.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use procfs::{CpuInfo, FromRead as _, Meminfo};
use thiserror::Error;
use tokio::sync::watch;

use crate::errors::Chain;

#[derive(Debug, Error)]
pub enum MachineError {
    #[error("reading {path}")]
    Proc {
        path: PathBuf,
        #[source]
        source: procfs::ProcError,
    },
}

/// Where machine facts are read from.
#[derive(Debug, Clone)]
pub struct MachinePaths {
    pub proc: PathBuf,
    pub sys: PathBuf,
    /// Candidates for the machine id, first readable wins (cAdvisor's order).
    pub machine_id_files: Vec<PathBuf>,
}

impl MachinePaths {
    pub fn new(
        proc: impl Into<PathBuf>,
        sys: impl Into<PathBuf>,
        machine_id_files: Vec<PathBuf>,
    ) -> Self {
        Self {
            proc: proc.into(),
            sys: sys.into(),
            machine_id_files,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MachineInfo {
    pub num_cores: u64,
    pub num_physical_cores: u64,
    pub num_sockets: u64,
    /// Bytes.
    pub memory_capacity: u64,
    /// Bytes.
    pub swap_capacity: u64,
    pub machine_id: String,
    pub system_uuid: String,
    pub boot_id: String,
}

impl MachineInfo {
    pub fn read(paths: &MachinePaths) -> Result<Self, MachineError> {
        let meminfo_path = paths.proc.join("meminfo");
        let meminfo = Meminfo::from_file(&meminfo_path).map_err(|source| MachineError::Proc {
            path: meminfo_path,
            source,
        })?;
        let cpuinfo_path = paths.proc.join("cpuinfo");
        let cpuinfo = CpuInfo::from_file(&cpuinfo_path).map_err(|source| MachineError::Proc {
            path: cpuinfo_path,
            source,
        })?;
        let topology = SysTopology::read(&paths.sys);
        let num_cores = online_cpus(&paths.sys)
            .filter(|&n| n > 0)
            .unwrap_or(cpuinfo.num_cores() as u64);
        let (cpuinfo_cores, cpuinfo_sockets) = cpuinfo_topology(&cpuinfo);
        Ok(Self {
            num_cores,
            num_physical_cores: cpuinfo_cores.or(topology.cores).unwrap_or(num_cores),
            num_sockets: cpuinfo_sockets.or(topology.sockets).unwrap_or(1),
            memory_capacity: meminfo.mem_total,
            swap_capacity: meminfo.swap_total,
            machine_id: paths
                .machine_id_files
                .iter()
                .find_map(|p| read_trimmed(p))
                .unwrap_or_default(),
            system_uuid: read_trimmed(&paths.sys.join("class/dmi/id/product_uuid"))
                .unwrap_or_default(),
            boot_id: read_trimmed(&paths.proc.join("sys/kernel/random/boot_id"))
                .unwrap_or_default(),
        })
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// Counts CPUs in `/sys/devices/system/cpu/online` (e.g. `0-3,8-11`).
fn online_cpus(sys: &Path) -> Option<u64> {
    parse_cpu_list(&fs::read_to_string(sys.join("devices/system/cpu/online")).ok()?)
}

pub fn parse_cpu_list(list: &str) -> Option<u64> {
    let mut n = 0;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                b.trim()
                    .parse::<u64>()
                    .ok()?
                    .checked_sub(a.trim().parse().ok()?)?
                    + 1
            }
            None => {
                part.trim().parse::<u64>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// Physical cores as unique (`physical id`, `core id`) pairs (cAdvisor counts
/// unique `core id` strings alone, which under-counts multi-socket hosts),
/// and sockets as unique `physical id`s. `None` when cpuinfo lacks the keys
/// (many VMs and arm64).
fn cpuinfo_topology(info: &CpuInfo) -> (Option<u64>, Option<u64>) {
    let mut cores = BTreeSet::new();
    let mut sockets = BTreeSet::new();
    for cpu in 0..info.num_cores() {
        let socket = info.get_field(cpu, "physical id");
        if let Some(s) = socket {
            sockets.insert(s);
        }
        if let Some(core) = info.get_field(cpu, "core id") {
            cores.insert((socket.unwrap_or(""), core));
        }
    }
    let count = |n: usize| (n > 0).then_some(n as u64);
    (count(cores.len()), count(sockets.len()))
}

/// The same facts from `/sys/devices/system/cpu/cpu*/topology`.
#[derive(Debug, Default)]
struct SysTopology {
    cores: Option<u64>,
    sockets: Option<u64>,
}

impl SysTopology {
    fn read(sys: &Path) -> Self {
        let Ok(dir) = fs::read_dir(sys.join("devices/system/cpu")) else {
            return Self::default();
        };
        let mut cores = BTreeSet::new();
        let mut sockets = BTreeSet::new();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(num) = name.strip_prefix("cpu") else {
                continue;
            };
            if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let topo = entry.path().join("topology");
            let (Some(pkg), Some(core)) = (
                read_trimmed(&topo.join("physical_package_id")),
                read_trimmed(&topo.join("core_id")),
            ) else {
                continue;
            };
            sockets.insert(pkg.clone());
            cores.insert((pkg, core));
        }
        let count = |n: usize| (n > 0).then_some(n as u64);
        Self {
            cores: count(cores.len()),
            sockets: count(sockets.len()),
        }
    }
}

/// The latest machine information (`None` while it cannot be read), read
/// now and again every `--update-machine-info-interval`.
pub fn start(
    config: &crate::config::Config,
    tasks: &mut crate::supervise::Tasks,
) -> watch::Receiver<Option<Arc<MachineInfo>>> {
    let paths = MachinePaths::new(
        &config.proc_root,
        &config.sys_root,
        config.machine_id_file.clone(),
    );
    let every = config
        .update_machine_info_interval
        .max(Duration::from_secs(1));
    let (tx, rx) = watch::channel(None);
    tasks.spawn("machine", async move {
        let mut tick = tokio::time::interval(every);
        let mut failing = false;
        loop {
            tick.tick().await;
            let p = paths.clone();
            match tokio::task::spawn_blocking(move || MachineInfo::read(&p)).await {
                Ok(Ok(info)) => {
                    failing = false;
                    tx.send_replace(Some(Arc::new(info)));
                }
                Ok(Err(e)) => {
                    if !failing {
                        tracing::warn!(error = %Chain(&e), "reading machine information failed");
                    }
                    failing = true;
                    tx.send_replace(None);
                }
                Err(e) => tracing::error!(error = %Chain(&e), "machine information task panicked"),
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    /// A real /proc/meminfo of the development machine with round totals.
    const MEMINFO: &str = include_str!("../tests/fixtures/proc/meminfo");

    fn cpu_block(n: usize, phys: &str, core: &str) -> String {
        format!(
            "processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU\nphysical id\t: {phys}\nsiblings\t: 4\ncore id\t\t: {core}\ncpu cores\t: 2\n\n"
        )
    }

    fn fixture(cpuinfo: &str, online: Option<&str>) -> (tempfile::TempDir, MachinePaths) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "proc/meminfo", MEMINFO);
        write(root, "proc/cpuinfo", cpuinfo);
        write(
            root,
            "proc/sys/kernel/random/boot_id",
            "6f0a6c1e-0000-4000-8000-000000000001\n",
        );
        write(root, "etc/machine-id", "0123456789abcdef0123456789abcdef\n");
        write(root, "sys/class/dmi/id/product_uuid", "UUID-1\n");
        if let Some(online) = online {
            write(root, "sys/devices/system/cpu/online", online);
        }
        let paths = MachinePaths::new(
            root.join("proc"),
            root.join("sys"),
            vec![root.join("etc/missing"), root.join("etc/machine-id")],
        );
        (dir, paths)
    }

    #[test]
    fn two_sockets_with_repeating_core_ids() {
        // Core ids repeat per socket: 2 sockets × 2 cores × 2 threads.
        let cpuinfo: String = [
            ("0", "0"),
            ("0", "1"),
            ("0", "0"),
            ("0", "1"),
            ("1", "0"),
            ("1", "1"),
            ("1", "0"),
            ("1", "1"),
        ]
        .iter()
        .enumerate()
        .map(|(i, (p, c))| cpu_block(i, p, c))
        .collect();
        let (_d, paths) = fixture(&cpuinfo, Some("0-7\n"));
        let m = MachineInfo::read(&paths).unwrap();
        assert_eq!(m.num_cores, 8);
        assert_eq!(m.num_physical_cores, 4);
        assert_eq!(m.num_sockets, 2);
        assert_eq!(m.memory_capacity, 24598372 * 1024);
        assert_eq!(m.swap_capacity, 1048572 * 1024);
        assert_eq!(m.machine_id, "0123456789abcdef0123456789abcdef");
        assert_eq!(m.system_uuid, "UUID-1");
        assert_eq!(m.boot_id, "6f0a6c1e-0000-4000-8000-000000000001");
    }

    #[test]
    fn cpuinfo_without_topology_falls_back_to_sysfs() {
        let cpuinfo = "processor\t: 0\nBogoMIPS\t: 50.00\n\nprocessor\t: 1\nBogoMIPS\t: 50.00\n\n";
        let (dir, paths) = fixture(cpuinfo, None);
        for cpu in 0..2 {
            write(
                dir.path(),
                &format!("sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id"),
                "0\n",
            );
            write(
                dir.path(),
                &format!("sys/devices/system/cpu/cpu{cpu}/topology/core_id"),
                &format!("{cpu}\n"),
            );
        }
        let m = MachineInfo::read(&paths).unwrap();
        assert_eq!(m.num_cores, 2, "falls back to counting cpuinfo processors");
        assert_eq!(m.num_physical_cores, 2);
        assert_eq!(m.num_sockets, 1);
    }

    #[test]
    fn missing_meminfo_is_an_error_that_names_the_file() {
        let (dir, paths) = fixture(&cpu_block(0, "0", "0"), Some("0"));
        fs::remove_file(dir.path().join("proc/meminfo")).unwrap();
        let err = MachineInfo::read(&paths).unwrap_err().to_string();
        assert!(err.contains("meminfo"), "{err}");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8-11\n"), Some(8));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0,2,4-5"), Some(4));
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list("3-1"), None);
    }

    #[test]
    fn this_machine() {
        let m = MachineInfo::read(&MachinePaths::new(
            "/proc",
            "/sys",
            vec!["/etc/machine-id".into()],
        ))
        .unwrap();
        let nproc = std::thread::available_parallelism().unwrap().get() as u64;
        assert_eq!(m.num_cores, nproc);
        assert!(m.memory_capacity > 0);
        assert!(!m.boot_id.is_empty());
    }
}
