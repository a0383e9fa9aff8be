//! One pass of the `iter/cgroup` program over a hierarchy: every cgroup's
//! memory page counters, cpuacct usage, cpu shares and CFS bandwidth, and
//! pids counter and limit, read in the kernel, from an mmap-ed array.
//!
//! aya 0.14's `Iter::attach()` sends no link info and the kernel refuses a
//! cgroup iterator without one (EINVAL), so the link is made here with a raw
//! `BPF_LINK_CREATE` carrying `bpf_iter_link_info.cgroup`; that belongs in
//! aya. The raw calls are the two functions at the end of this file.

use std::{
    fs::File,
    io::{self, Read as _, Write as _},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use agent_common::{names, offsets, CgroupStats, STATS_CAPACITY, STATS_FLAG_OVERFLOW};
use aya::{
    maps::{Map, MapData},
    programs::Iter,
};

use super::{
    btf::{Btf, BtfError, Shape},
    EbpfError, Kernel,
};
use crate::errors::Chain;

/// Offsets the iterator reads with, from the kernel's BTF. Each controller
/// is optional: a kernel without one (or with a shape this does not know)
/// loses those values, not the walk.
pub fn iter_offsets(btf: &Btf, nr_cpus: u32) -> Result<offsets::Iter, BtfError> {
    let subsys = |id_name: &str| -> Result<u32, BtfError> {
        let id = btf.enum_value(id_name)?;
        let (off, shape) = btf.member("cgroup", &["subsys"])?;
        match shape {
            Shape::Array { elem_size: 8, len } if id >= 0 && id < i64::from(len) => {
                Ok(off + 8 * id as u32)
            }
            _ => Err(BtfError::NoEnumValue(format!(
                "{id_name} within cgroup.subsys[]"
            ))),
        }
    };
    let mut l = offsets::Iter {
        cgroup_kn: btf.offset("cgroup", &["kn"])?,
        kn_id: btf.offset("kernfs_node", &["id"])?,
        cgroup_level: btf.offset("cgroup", &["level"])?,
        cgroup_parent_css: btf.offset("cgroup", &["self", "parent"])?,
        css_cgroup: btf.offset("cgroup_subsys_state", &["cgroup"])?,
        ..Default::default()
    };
    let memory = || -> Result<[u32; 10], BtfError> {
        let css = btf.offset("mem_cgroup", &["css"])?;
        let at = |path: &[&str]| btf.offset("mem_cgroup", path).map(|o| o - css);
        Ok([
            subsys("memory_cgrp_id")?,
            at(&["memory", "usage"])?,
            at(&["memory", "max"])?,
            at(&["memory", "watermark"])?,
            at(&["memory", "failcnt"])?,
            // v1-only members (CONFIG_MEMCG_V1): absent disables them.
            at(&["soft_limit"]).unwrap_or(0),
            at(&["kmem", "usage"]).unwrap_or(0),
            at(&["memsw", "usage"]).unwrap_or(0),
            at(&["memsw", "max"]).unwrap_or(0),
            at(&["memsw", "watermark"]).unwrap_or(0),
        ])
    };
    if let Ok([m, u, x, w, f, soft, kmem, su, sx, sw]) = memory() {
        (l.cgroup_memory, l.mem_usage, l.mem_max) = (m, u, x);
        (l.mem_watermark, l.mem_failcnt) = (w, f);
        (l.mem_soft_limit, l.kmem_usage) = (soft, kmem);
        if su != 0 && sx != 0 && sw != 0 {
            (l.memsw_usage, l.memsw_max, l.memsw_watermark) = (su, sx, sw);
        }
    }
    let pids = || -> Result<[u32; 3], BtfError> {
        let css = btf.offset("pids_cgroup", &["css"])?;
        Ok([
            subsys("pids_cgrp_id")?,
            btf.offset("pids_cgroup", &["counter"])? - css,
            btf.offset("pids_cgroup", &["limit"])? - css,
        ])
    };
    if let Ok([p, c, lim]) = pids() {
        (l.cgroup_pids, l.pids_counter, l.pids_limit) = (p, c, lim);
    }
    // CONFIG_FAIR_GROUP_SCHED and CONFIG_CFS_BANDWIDTH; burst since 5.14.
    let cpu = || -> Result<[u32; 9], BtfError> {
        let css = btf.offset("task_group", &["css"])?;
        let at = |path: &[&str]| btf.offset("task_group", path).map(|o| o - css);
        let bw = |m: &str| at(&["cfs_bandwidth", m]);
        Ok([
            subsys("cpu_cgrp_id")?,
            at(&["shares"])?,
            bw("quota")?,
            bw("period")?,
            bw("nr_periods")?,
            bw("nr_throttled")?,
            bw("throttled_time")?,
            bw("nr_burst").unwrap_or(0),
            bw("burst_time").unwrap_or(0),
        ])
    };
    if let Ok([c, sh, q, p, np, nt, tt, nb, bt]) = cpu() {
        (l.cgroup_cpu, l.tg_shares, l.cfs_quota, l.cfs_period) = (c, sh, q, p);
        (l.cfs_nr_periods, l.cfs_nr_throttled, l.cfs_throttled_time) = (np, nt, tt);
        if nb != 0 && bt != 0 {
            (l.cfs_nr_burst, l.cfs_burst_time) = (nb, bt);
        }
    }
    // `u64 __percpu *cpuusage` (kernels before 5.x had a struct of two
    // counters there: left to the files).
    let cpuacct = || -> Result<(u32, u32, u32), BtfError> {
        let css = btf.offset("cpuacct", &["css"])?;
        let (usage, shape) = btf.member("cpuacct", &["cpuusage"])?;
        if shape != Shape::Ptr || btf.pointee_size("cpuacct", &["cpuusage"])? != 8 {
            return Err(BtfError::NoMember {
                ty: "cpuacct".into(),
                member: "cpuusage as a pointer to u64".into(),
            });
        }
        Ok((
            subsys("cpuacct_cgrp_id")?,
            usage - css,
            btf.offset("bpf_array", &["pptrs"])?,
        ))
    };
    if let (Ok((c, u, p)), true) = (cpuacct(), nr_cpus > 0) {
        (l.cgroup_cpuacct, l.cpuacct_usage, l.array_pptrs, l.nr_cpus) = (c, u, p, nr_cpus);
    }
    Ok(l)
}

/// The CPUs the kernel may ever bring up (`/sys/devices/system/cpu/possible`,
/// e.g. `0-7`): the per-CPU counters to sum.
pub fn possible_cpus(sys_root: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(sys_root.join("devices/system/cpu/possible")).ok()?;
    let mut max = None;
    for range in text.trim().split(',') {
        let last = range.rsplit('-').next()?.parse::<u32>().ok()?;
        max = max.max(Some(last));
    }
    max.map(|m| m + 1)
}

/// What one pass saw.
#[derive(Debug, Clone)]
pub struct Pass {
    pub records: Vec<CgroupStats>,
    /// The hierarchy had more cgroups than the array holds.
    pub overflow: bool,
    pub took: Duration,
}

/// The loaded iterator and its mmap-ed output.
pub struct CgroupIter {
    prog: OwnedFd,
    _map: Map,
    area: *mut CgroupStats,
    area_len: usize,
    capacity: u32,
}

// SAFETY: the mapping is only touched through &mut self (passes are
// serialised) and lives as long as the struct.
unsafe impl Send for CgroupIter {}

impl std::fmt::Debug for CgroupIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupIter")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl CgroupIter {
    /// Loads `cgroup_stats` from a kernel object loaded with the iterator's
    /// globals, and maps its output array.
    pub fn new(kernel: &mut Kernel) -> Result<Self, EbpfError> {
        const NAME: &str = names::CGROUP_STATS_ITER;
        let btf = super::aya_btf(&mut kernel.aya_btf)?;
        let program = kernel.ebpf.program_mut(NAME).ok_or(EbpfError::Program {
            name: NAME,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?;
        let iter: &mut Iter = program
            .try_into()
            .map_err(|source| EbpfError::Program { name: NAME, source })?;
        iter.load("cgroup", btf)
            .map_err(|source| EbpfError::Program { name: NAME, source })?;
        let prog: OwnedFd = iter
            .fd()
            .map_err(|source| EbpfError::Program { name: NAME, source })?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| EbpfError::Unusable(format!("{NAME}: {}", Chain(&e))))?;
        const MAP: &str = names::CGROUP_STATS;
        let map = kernel
            .ebpf
            .take_map(MAP)
            .ok_or(EbpfError::MissingMap(MAP))?;
        let Map::Array(data) = &map else {
            return Err(EbpfError::Unusable(format!("{MAP} is not an array")));
        };
        let (area, area_len, capacity) = map_area(data)
            .map_err(|e| EbpfError::Unusable(format!("mapping {MAP}: {}", Chain(&e))))?;
        Ok(Self {
            prog,
            _map: map,
            area,
            area_len,
            capacity,
        })
    }

    /// Walks every cgroup under `root` (a hierarchy's mount point or any
    /// cgroup directory in it), the root included, in pre-order.
    pub fn pass(&mut self, root: &Path) -> io::Result<Pass> {
        let start = Instant::now();
        let dir = File::open(root)?;
        // SAFETY: the header slot is inside the mapping; no pass runs now.
        unsafe { self.area.write(CgroupStats::default()) };
        let link = link_create_cgroup_iter(&self.prog, &dir)?;
        let mut iter = File::from(iter_create(&link)?);
        // The program writes nothing to the seq file: this read drives the
        // whole walk and returns 0 at its end.
        let mut buf = [0u8; 64];
        while iter.read(&mut buf)? > 0 {}
        // SAFETY: slot 0 is the header, written by the walk that just ended.
        let header = unsafe { self.area.read() };
        let n = (header.id as usize).min(self.capacity as usize);
        // SAFETY: slots 1..=n are inside the mapping (n <= capacity).
        let records = unsafe { std::slice::from_raw_parts(self.area.add(1), n) }.to_vec();
        Ok(Pass {
            records,
            overflow: header.flags & STATS_FLAG_OVERFLOW != 0,
            took: start.elapsed(),
        })
    }
}

impl Drop for CgroupIter {
    fn drop(&mut self) {
        // SAFETY: unmapping what map_area mapped.
        unsafe { libc::munmap(self.area.cast(), self.area_len) };
    }
}

/// Maps a `BPF_F_MMAPABLE` array: its values, one after the other, from
/// offset 0.
fn map_area(data: &MapData) -> io::Result<(*mut CgroupStats, usize, u32)> {
    let fd = data.fd().as_fd().as_raw_fd();
    let info = data.info().map_err(io::Error::other)?;
    let entries = info.max_entries();
    if info.value_size() as usize != std::mem::size_of::<CgroupStats>() || entries < 2 {
        return Err(io::Error::other("unexpected value size or capacity"));
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let len = (entries as usize * std::mem::size_of::<CgroupStats>()).div_ceil(page) * page;
    // SAFETY: a shared mapping of the map's own fd, checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok((p.cast(), len, (entries - 1).min(STATS_CAPACITY)))
}

/// Passes `--dump-cgroup-stats` times; the first warms caches.
const DUMP_PASSES: usize = 5;

/// `--dump-cgroup-stats`: one JSON line per cgroup under `dir` (values in
/// bytes and nanoseconds, as the cgroup files show them), then one with
/// the median pass's wall and CPU time.
pub fn dump(dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    super::raise_memlock_rlimit();
    let mut kernel = Kernel::load(super::LoadOptions {
        iter_capacity: STATS_CAPACITY,
        ..Default::default()
    })
    .context("loading the eBPF object")?;
    let mut iter = CgroupIter::new(&mut kernel).context("loading the cgroup iterator")?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    let mut last = None;
    for _ in 0..DUMP_PASSES {
        let cpu = thread_cpu();
        let pass = iter
            .pass(dir)
            .with_context(|| format!("walking {}", dir.display()))?;
        cpus.push(thread_cpu() - cpu);
        walls.push(pass.took);
        last = Some(pass);
    }
    let pass = last.expect("at least one pass");
    let mut out = io::BufWriter::new(io::stdout().lock());
    for r in &pass.records {
        let mut v = serde_json::json!({"id": r.id, "parent_id": r.parent_id, "level": r.level});
        if r.flags & agent_common::STATS_FLAG_MEMORY != 0 {
            v["memory_usage_bytes"] = (r.mem_usage * page).into();
            v["memory_limit_bytes"] = (r.mem_max.saturating_mul(page)).into();
            v["memory_max_usage_bytes"] = (r.mem_watermark * page).into();
        }
        if r.flags & agent_common::STATS_FLAG_MEMSW != 0 {
            v["memsw_usage_bytes"] = (r.memsw_usage * page).into();
            v["memsw_limit_bytes"] = (r.memsw_max.saturating_mul(page)).into();
            v["memsw_max_usage_bytes"] = (r.memsw_watermark * page).into();
        }
        if r.flags & agent_common::STATS_FLAG_CPUACCT != 0 {
            v["cpuacct_usage_ns"] = r.cpu_usage_ns.into();
        }
        if r.flags & agent_common::STATS_FLAG_MEMORY != 0 {
            v["memory_failcnt"] = r.mem_failcnt.into();
        }
        if r.flags & agent_common::STATS_FLAG_SOFT_LIMIT != 0 {
            v["memory_soft_limit_bytes"] = r.mem_soft_limit.saturating_mul(page).into();
        }
        if r.flags & agent_common::STATS_FLAG_KMEM != 0 {
            v["memory_kmem_usage_bytes"] = (r.kmem_usage * page).into();
        }
        if r.flags & agent_common::STATS_FLAG_CPU != 0 {
            v["cpu_shares"] = r.cpu_shares.into();
            v["cpu_quota_ns"] = r.cpu_quota_ns.into();
            v["cpu_period_ns"] = r.cpu_period_ns.into();
            v["cpu_nr_periods"] = r.cpu_periods.into();
            v["cpu_nr_throttled"] = r.cpu_throttled.into();
            v["cpu_throttled_ns"] = r.cpu_throttled_ns.into();
        }
        if r.flags & agent_common::STATS_FLAG_CPU_BURST != 0 {
            v["cpu_nr_bursts"] = r.cpu_bursts.into();
            v["cpu_burst_ns"] = r.cpu_burst_ns.into();
        }
        if r.flags & agent_common::STATS_FLAG_PIDS != 0 {
            v["pids_current"] = r.pids_current.into();
            v["pids_limit"] = r.pids_limit.into();
        }
        writeln!(out, "{v}")?;
    }
    walls.sort();
    cpus.sort();
    let summary = serde_json::json!({
        "summary": true,
        "cgroups": pass.records.len(),
        "overflow": pass.overflow,
        "passes": DUMP_PASSES,
        "pass_wall_us": walls[DUMP_PASSES / 2].as_micros() as u64,
        "pass_cpu_us": cpus[DUMP_PASSES / 2].as_micros() as u64,
    });
    writeln!(out, "{summary}")?;
    Ok(())
}

/// CPU time of the calling thread (user and system).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `union bpf_attr` for `BPF_LINK_CREATE`, as far as an iterator link
/// uses it; the rest must be zero.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _rest: [u32; 9],
}

/// `union bpf_iter_link_info`, its `cgroup` member.
#[repr(C)]
struct IterLinkInfoCgroup {
    order: u32,
    cgroup_fd: u32,
    cgroup_id: u64,
}

/// `BPF_CGROUP_ITER_DESCENDANTS_PRE`: the cgroup, then its descendants,
/// parents before children.
const DESCENDANTS_PRE: u32 = 2;

fn sys_bpf<T>(cmd: u32, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: attr is a live, fully initialised struct of the given size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

fn link_create_cgroup_iter(prog: &OwnedFd, cgroup_dir: &File) -> io::Result<OwnedFd> {
    let info = IterLinkInfoCgroup {
        order: DESCENDANTS_PRE,
        cgroup_fd: cgroup_dir.as_raw_fd() as u32,
        cgroup_id: 0,
    };
    let attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: aya_obj::generated::bpf_attach_type::BPF_TRACE_ITER as u32,
        iter_info: &info as *const IterLinkInfoCgroup as u64,
        iter_info_len: std::mem::size_of::<IterLinkInfoCgroup>() as u32,
        ..LinkCreateAttr::default()
    };
    sys_bpf(aya_obj::generated::bpf_cmd::BPF_LINK_CREATE as u32, &attr)
}

fn iter_create(link: &OwnedFd) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct IterCreateAttr {
        link_fd: u32,
        flags: u32,
    }
    let attr = IterCreateAttr {
        link_fd: link.as_raw_fd() as u32,
        flags: 0,
    };
    sys_bpf(aya_obj::generated::bpf_cmd::BPF_ITER_CREATE as u32, &attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn possible_cpu_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let cpu = dir.path().join("devices/system/cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        for (text, n) in [
            ("0-1\n", Some(2)),
            ("0\n", Some(1)),
            ("0-3,8-15\n", Some(16)),
            ("x", None),
        ] {
            std::fs::write(cpu.join("possible"), text).unwrap();
            assert_eq!(possible_cpus(dir.path()), n, "{text:?}");
        }
    }

    #[test]
    fn layout_from_this_kernel() {
        let Ok(btf) = Btf::from_sys() else {
            testkit::skip("no kernel BTF");
            return;
        };
        let l = iter_offsets(&btf, 2).unwrap();
        assert!(l.cgroup_kn > 0 && l.kn_id > 0 && l.cgroup_level > 0);
        assert!(l.cgroup_memory > 0 && l.mem_usage > 0 && l.mem_max > l.mem_usage);
        assert!(l.mem_failcnt > 0 && l.mem_soft_limit > 0 && l.kmem_usage > 0);
        assert!(l.cgroup_pids > 0 && l.pids_limit > l.pids_counter);
        assert!(l.cgroup_cpu > 0 && l.tg_shares > 0 && l.cfs_quota > 0 && l.cfs_nr_burst > 0);
        assert_eq!(l.nr_cpus, 2);
    }
}
