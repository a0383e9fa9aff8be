//! cgroup v1 files, one controller hierarchy each.

use std::path::Path;

use super::{
    read::{each_keyed, Reader},
    stats::{Cpu, DeviceIo, Hugetlb, Known, Memory, Spec},
};
use crate::errors::ErrorCounts;

/// `cpuacct.usage` (unless known), `cpuacct.usage_percpu`, `cpuacct.stat`.
pub fn cpuacct(
    dir: &Path,
    r: &mut Reader,
    e: &ErrorCounts,
    cpu: &mut Cpu,
    percpu: bool,
    known: &Known,
) {
    cpu.usage_ns = known
        .cpu_usage_ns
        .or_else(|| r.number(&dir.join("cpuacct.usage"), e));
    if percpu {
        if let Some(text) = r.read(&dir.join("cpuacct.usage_percpu"), e) {
            cpu.per_cpu_ns = text
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
        }
    }
    let path = dir.join("cpuacct.stat");
    if let Some(text) = r.read(&path, e) {
        // USER_HZ ticks.
        let tick_ns = 1_000_000_000 / procfs::ticks_per_second();
        each_keyed(text, &path, e, |k, v| match k {
            "user" => cpu.user_ns = Some(v * tick_ns),
            "system" => cpu.system_ns = Some(v * tick_ns),
            _ => {}
        });
    }
}

/// `cpu.stat` (throttling, bursts where the kernel has them), unless all
/// of it is known.
pub fn cpu_stat(dir: &Path, r: &mut Reader, e: &ErrorCounts, cpu: &mut Cpu, known: &Known) {
    if let (Some(p), Some(t), Some(tn), Some(b), Some(bn)) = (
        known.cpu_periods,
        known.cpu_throttled_periods,
        known.cpu_throttled_ns,
        known.cpu_bursts,
        known.cpu_burst_ns,
    ) {
        (cpu.periods, cpu.throttled_periods, cpu.throttled_ns) = (Some(p), Some(t), Some(tn));
        (cpu.bursts, cpu.burst_ns) = (Some(b), Some(bn));
        return;
    }
    let path = dir.join("cpu.stat");
    if let Some(text) = r.read(&path, e) {
        each_keyed(text, &path, e, |k, v| match k {
            "nr_periods" => cpu.periods = Some(v),
            "nr_throttled" => cpu.throttled_periods = Some(v),
            "throttled_time" => cpu.throttled_ns = Some(v),
            "nr_bursts" => cpu.bursts = Some(v),
            "burst_time" => cpu.burst_ns = Some(v),
            _ => {}
        });
    }
}

pub fn cpu_spec(dir: &Path, r: &mut Reader, e: &ErrorCounts, spec: &mut Spec, known: &Known) {
    spec.has_cpu = true;
    spec.cpu_quota_us = known
        .cpu_quota_us
        .or_else(|| r.limit(&dir.join("cpu.cfs_quota_us"), e))
        .flatten();
    spec.cpu_period_us = known
        .cpu_period_us
        .or_else(|| r.number(&dir.join("cpu.cfs_period_us"), e));
    spec.cpu_shares = known
        .cpu_shares
        .or_else(|| r.number(&dir.join("cpu.shares"), e));
}

/// Values above this are "unlimited" (the kernel's PAGE_COUNTER_MAX in bytes
/// rounds to just under 2^63).
const UNLIMITED: u64 = 1 << 62;

pub fn limited(v: Option<u64>) -> Option<u64> {
    v.filter(|&v| v < UNLIMITED)
}

/// Files whose values are in `known` are not read.
pub fn memory(
    dir: &Path,
    r: &mut Reader,
    e: &ErrorCounts,
    spec: &mut Spec,
    known: &Known,
) -> Memory {
    let mut m = Memory {
        usage: known
            .memory_usage
            .or_else(|| r.number(&dir.join("memory.usage_in_bytes"), e)),
        max_usage: known
            .memory_max_usage
            .or_else(|| r.number(&dir.join("memory.max_usage_in_bytes"), e)),
        failcnt: known
            .memory_failcnt
            .or_else(|| r.number(&dir.join("memory.failcnt"), e)),
        kernel: known
            .memory_kernel
            .or_else(|| r.number(&dir.join("memory.kmem.usage_in_bytes"), e)),
        ..Memory::default()
    };
    let path = dir.join("memory.stat");
    if let Some(text) = r.read(&path, e) {
        // Hierarchical (`total_*`) values win over the local ones; on every
        // current kernel use_hierarchy is 1.
        let (mut local, mut total) = (Memory::default(), Memory::default());
        each_keyed(text, &path, e, |k, v| {
            let (target, key) = match k.strip_prefix("total_") {
                Some(rest) => (&mut total, rest),
                None => (&mut local, k),
            };
            let slot = match key {
                "cache" => &mut target.cache,
                "rss" => &mut target.rss,
                "mapped_file" => &mut target.mapped_file,
                "swap" => &mut target.swap,
                "shmem" => &mut target.shmem,
                "active_file" => &mut target.active_file,
                "inactive_file" => &mut target.inactive_file,
                "pgfault" => &mut target.pgfault,
                "pgmajfault" => &mut target.pgmajfault,
                "dirty" => &mut target.file_dirty,
                "writeback" => &mut target.file_writeback,
                "workingset_refault_file" => &mut target.workingset_refault_file,
                "workingset_refault_anon" => &mut target.workingset_refault_anon,
                _ => return,
            };
            *slot = Some(v);
        });
        let pick = |t: Option<u64>, l: Option<u64>| t.or(l);
        m.cache = pick(total.cache, local.cache);
        m.rss = pick(total.rss, local.rss);
        m.mapped_file = pick(total.mapped_file, local.mapped_file);
        m.swap = pick(total.swap, local.swap);
        m.shmem = pick(total.shmem, local.shmem);
        m.active_file = pick(total.active_file, local.active_file);
        m.inactive_file = pick(total.inactive_file, local.inactive_file);
        m.pgfault = pick(total.pgfault, local.pgfault);
        m.pgmajfault = pick(total.pgmajfault, local.pgmajfault);
        m.file_dirty = pick(total.file_dirty, local.file_dirty);
        m.file_writeback = pick(total.file_writeback, local.file_writeback);
        m.workingset_refault_file =
            pick(total.workingset_refault_file, local.workingset_refault_file);
        m.workingset_refault_anon =
            pick(total.workingset_refault_anon, local.workingset_refault_anon);
    }
    let path = dir.join("memory.oom_control");
    if let Some(text) = r.read(&path, e) {
        each_keyed(text, &path, e, |k, v| {
            if k == "oom_kill" {
                m.events.oom_kill = Some(v);
                m.events.local_oom_kill = Some(v);
            }
        });
    }
    spec.has_memory = true;
    spec.memory_limit = known
        .memory_limit
        .unwrap_or_else(|| limited(r.number(&dir.join("memory.limit_in_bytes"), e)));
    spec.memory_swap_limit = known
        .memory_swap_limit
        .unwrap_or_else(|| limited(r.number(&dir.join("memory.memsw.limit_in_bytes"), e)));
    spec.memory_reservation = known
        .memory_reservation
        .unwrap_or_else(|| limited(r.number(&dir.join("memory.soft_limit_in_bytes"), e)));
    m
}

/// `MAJ:MIN Op value` lines of a blkio file into per-device counters.
fn blkio_file(text: &str, mut set: impl FnMut(u32, u32, &str, u64)) {
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(dev), Some(op), Some(v), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let Some((maj, min)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min), Ok(v)) = (maj.parse(), min.parse(), v.parse()) else {
            continue;
        };
        set(maj, min, op, v);
    }
}

fn device(devs: &mut Vec<DeviceIo>, major: u32, minor: u32) -> &mut DeviceIo {
    if let Some(i) = devs
        .iter()
        .position(|d| d.major == major && d.minor == minor)
    {
        return &mut devs[i];
    }
    devs.push(DeviceIo {
        major,
        minor,
        ..DeviceIo::default()
    });
    devs.last_mut().unwrap()
}

/// Block I/O from the throttle and BFQ files. Each counts I/O under its own
/// condition (a throttle rule on the device; the BFQ scheduler), so for each
/// device the larger of the two is the I/O that went through. cAdvisor
/// takes the first group whose files exist, which reads zeros from BFQ
/// files on devices that do not use BFQ.
pub fn blkio(dir: &Path, r: &mut Reader, e: &ErrorCounts) -> Vec<DeviceIo> {
    let mut devs: Vec<DeviceIo> = Vec::new();
    for group in ["blkio.throttle", "blkio.bfq"] {
        for (file, bytes) in [("io_service_bytes", true), ("io_serviced", false)] {
            let recursive = dir.join(format!("{group}.{file}_recursive"));
            let text = match r.read(&recursive, e) {
                Some(t) => t,
                None => match r.read(&dir.join(format!("{group}.{file}")), e) {
                    Some(t) => t,
                    None => continue,
                },
            };
            blkio_file(text, |maj, min, op, v| {
                let d = device(&mut devs, maj, min);
                let slot = match (op, bytes) {
                    ("Read", true) => &mut d.read_bytes,
                    ("Write", true) => &mut d.write_bytes,
                    ("Read", false) => &mut d.reads,
                    ("Write", false) => &mut d.writes,
                    _ => return,
                };
                *slot = Some(slot.map_or(v, |old| old.max(v)));
            });
        }
    }
    // Devices the cgroup never touched are listed with zeros; cAdvisor
    // exports those too, cgscope leaves them out like zero per-CPU usage.
    devs.retain(|d| {
        [d.read_bytes, d.write_bytes, d.reads, d.writes]
            .iter()
            .any(|v| v.is_some_and(|v| v > 0))
    });
    devs.sort_by_key(|d| (d.major, d.minor));
    devs
}

/// `pids.current` / `pids.max` (v1 and v2 alike), unless known.
pub fn pids(
    dir: &Path,
    r: &mut Reader,
    e: &ErrorCounts,
    known: &Known,
) -> (Option<u64>, Option<Option<u64>>) {
    (
        known
            .pids_current
            .or_else(|| r.number(&dir.join("pids.current"), e)),
        known.pids_max.or_else(|| r.limit(&dir.join("pids.max"), e)),
    )
}

/// `hugetlb.<size>.usage_in_bytes` and friends for each page size.
pub fn hugetlb(dir: &Path, sizes: &[String], r: &mut Reader, e: &ErrorCounts) -> Vec<Hugetlb> {
    sizes
        .iter()
        .map(|size| Hugetlb {
            pagesize: size.clone(),
            usage: r.number(&dir.join(format!("hugetlb.{size}.usage_in_bytes")), e),
            max_usage: r.number(&dir.join(format!("hugetlb.{size}.max_usage_in_bytes")), e),
            failcnt: r.number(&dir.join(format!("hugetlb.{size}.failcnt")), e),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cgroupfs/v1");

    fn dir(ctrl: &str) -> std::path::PathBuf {
        Path::new(FIXTURES).join(ctrl).join("test")
    }

    #[test]
    fn cpu_files() {
        let (mut r, e) = (Reader::default(), ErrorCounts::new("collection"));
        let mut cpu = Cpu::default();
        cpuacct(
            &dir("cpuacct"),
            &mut r,
            &e,
            &mut cpu,
            true,
            &Known::default(),
        );
        cpu_stat(&dir("cpu"), &mut r, &e, &mut cpu, &Known::default());
        assert_eq!(cpu.usage_ns, Some(3_012_345_678));
        assert_eq!(cpu.per_cpu_ns, [1_500_000_000, 1_512_345_678]);
        let tick = 1_000_000_000 / procfs::ticks_per_second();
        assert_eq!(
            (cpu.user_ns, cpu.system_ns),
            (Some(290 * tick), Some(10 * tick))
        );
        assert_eq!(
            (cpu.periods, cpu.throttled_periods, cpu.throttled_ns),
            (Some(30), Some(25), Some(1_234_567_890))
        );
        assert_eq!((cpu.bursts, cpu.burst_ns), (Some(0), Some(0)));
        let mut spec = Spec::default();
        cpu_spec(&dir("cpu"), &mut r, &e, &mut spec, &Known::default());
        assert_eq!(
            (spec.cpu_quota_us, spec.cpu_period_us, spec.cpu_shares),
            (Some(50_000), Some(100_000), Some(1024))
        );
        assert_eq!(e.recorded(), "");
    }

    #[test]
    fn memory_files() {
        let (mut r, e) = (Reader::default(), ErrorCounts::new("collection"));
        let mut spec = Spec::default();
        let m = memory(&dir("memory"), &mut r, &e, &mut spec, &Known::default());
        assert_eq!(m.usage, Some(105_906_176));
        assert_eq!(m.cache, Some(4096), "total_cache wins over cache");
        assert_eq!(m.rss, Some(104_857_600));
        assert_eq!(m.inactive_file, Some(0));
        assert_eq!(m.working_set(), Some(105_906_176));
        assert_eq!(m.events.oom_kill, Some(1));
        assert_eq!(m.pgmajfault, Some(3));
        assert_eq!(spec.memory_limit, Some(67_108_864));
        assert_eq!(spec.memory_swap_limit, None, "unlimited");
        assert_eq!(e.recorded(), "");
    }

    #[test]
    fn known_values_are_not_read_again() {
        let (mut r, e) = (Reader::default(), ErrorCounts::new("collection"));
        let known = Known {
            cpu_usage_ns: Some(7),
            memory_usage: Some(1),
            memory_max_usage: Some(2),
            memory_limit: Some(None),
            memory_swap_limit: Some(Some(3)),
            memory_failcnt: Some(4),
            memory_kernel: Some(5),
            memory_reservation: Some(Some(6)),
            ..Known::default()
        };
        let mut spec = Spec::default();
        let m = memory(&dir("memory"), &mut r, &e, &mut spec, &known);
        assert_eq!((m.usage, m.max_usage), (Some(1), Some(2)));
        assert_eq!((spec.memory_limit, spec.memory_swap_limit), (None, Some(3)));
        assert_eq!(
            (m.failcnt, m.kernel, spec.memory_reservation),
            (Some(4), Some(5), Some(6))
        );
        assert_eq!(m.rss, Some(104_857_600), "memory.stat is still read");
        let mut cpu = Cpu::default();
        let before = r.reads;
        cpuacct(&dir("cpuacct"), &mut r, &e, &mut cpu, false, &known);
        assert_eq!(
            (cpu.usage_ns, r.reads - before),
            (Some(7), 1),
            "cpuacct.stat only"
        );
        let cpu_known = Known {
            cpu_periods: Some(1),
            cpu_throttled_periods: Some(2),
            cpu_throttled_ns: Some(3),
            cpu_bursts: Some(4),
            cpu_burst_ns: Some(5),
            ..Known::default()
        };
        let mut cpu = Cpu::default();
        let before = r.reads;
        cpu_stat(&dir("cpu"), &mut r, &e, &mut cpu, &cpu_known);
        assert_eq!(
            (cpu.periods, cpu.burst_ns, r.reads - before),
            (Some(1), Some(5), 0)
        );
        let partial = Known {
            cpu_bursts: None,
            ..cpu_known
        };
        let mut cpu = Cpu::default();
        cpu_stat(&dir("cpu"), &mut r, &e, &mut cpu, &partial);
        assert_eq!(
            cpu.periods,
            Some(30),
            "cpu.stat read whole unless all is known"
        );
        let mut full = Reader::default();
        memory(
            &dir("memory"),
            &mut full,
            &e,
            &mut Spec::default(),
            &Known::default(),
        );
        let mut fewer = Reader::default();
        memory(&dir("memory"), &mut fewer, &e, &mut Spec::default(), &known);
        assert_eq!(full.reads - fewer.reads, 7);
    }

    #[test]
    fn blkio_takes_the_larger_of_throttle_and_bfq() {
        let (mut r, e) = (Reader::default(), ErrorCounts::new("collection"));
        let d = blkio(&dir("blkio"), &mut r, &e);
        // 8:16 is listed with zeros only.
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].major, d[0].minor), (8, 0));
        assert_eq!(
            (d[0].read_bytes, d[0].write_bytes),
            (Some(4096), Some(1_048_576))
        );
        assert_eq!((d[0].reads, d[0].writes), (Some(1), Some(256)));
        assert_eq!((d[1].major, d[1].write_bytes), (254, Some(2_097_152)));
    }

    #[test]
    fn bad_files_are_absent_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("memory.usage_in_bytes"), "").unwrap();
        std::fs::write(tmp.path().join("memory.stat"), "cache 1\ntruncated\n").unwrap();
        let (mut r, e) = (Reader::default(), ErrorCounts::new("collection"));
        let m = memory(
            tmp.path(),
            &mut r,
            &e,
            &mut Spec::default(),
            &Known::default(),
        );
        assert_eq!(m.usage, None);
        assert_eq!(m.cache, Some(1));
        assert_eq!(m.working_set(), None, "no made-up zero");
        assert_eq!(e.get("malformed"), 2);
    }
}
