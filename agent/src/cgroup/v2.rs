//! cgroup v2 files, all in the container's one directory of the unified
//! hierarchy.

use std::path::Path;

use super::{
    read::{each_keyed, parse_limit, pressure_totals, Reader},
    stats::{weight_to_shares, Cpu, DeviceIo, Hugetlb, Known, Memory, Pressure, Spec},
};
use crate::errors::ErrorCounts;

/// `cpu.stat`: the usage part exists in every cgroup2 directory (also on
/// hybrid hosts); the throttling part only with the cpu controller.
pub fn cpu_stat(dir: &Path, r: &mut Reader, e: &ErrorCounts, cpu: &mut Cpu) {
    let path = dir.join("cpu.stat");
    let Some(text) = r.read(&path, e) else { return };
    each_keyed(text, &path, e, |k, v| match k {
        "usage_usec" => cpu.usage_ns = Some(v * 1000),
        "user_usec" => cpu.user_ns = Some(v * 1000),
        "system_usec" => cpu.system_ns = Some(v * 1000),
        "nr_periods" => cpu.periods = Some(v),
        "nr_throttled" => cpu.throttled_periods = Some(v),
        "throttled_usec" => cpu.throttled_ns = Some(v * 1000),
        "nr_bursts" => cpu.bursts = Some(v),
        "burst_usec" => cpu.burst_ns = Some(v * 1000),
        _ => {}
    });
}

/// `cpu.max` (`max 100000` or `50000 100000`) and `cpu.weight`, each file
/// unless its values are `known`.
pub fn cpu_spec(dir: &Path, r: &mut Reader, e: &ErrorCounts, spec: &mut Spec, known: &Known) {
    if let (Some(quota), Some(period)) = (known.cpu_quota_us, known.cpu_period_us) {
        spec.has_cpu = true;
        (spec.cpu_quota_us, spec.cpu_period_us) = (quota, Some(period));
    } else if let Some(text) = r.read(&dir.join("cpu.max"), e) {
        let mut it = text.split_whitespace();
        match (it.next().map(parse_limit), it.next().map(str::parse::<u64>)) {
            (Some(Some(quota)), Some(Ok(period))) => {
                spec.has_cpu = true;
                spec.cpu_quota_us = quota;
                spec.cpu_period_us = Some(period);
            }
            _ => e.record(
                "malformed",
                format!("{}/cpu.max: {:?}", dir.display(), text.trim()),
            ),
        }
    }
    if let Some(shares) = known.cpu_shares {
        spec.has_cpu = true;
        spec.cpu_shares = Some(shares);
    } else if let Some(w) = r.number(&dir.join("cpu.weight"), e) {
        spec.has_cpu = true;
        spec.cpu_shares = Some(weight_to_shares(w));
    }
}

/// Tasks of the cgroup's own killed by the OOM killer, from
/// `memory.events.local` (`memory.events` adds its descendants'):
/// `oom_kill` less `oom_group_kill`. A `memory.oom.group` kill kills the
/// chosen victim, then every task of the group, the victim again among
/// them, and `oom_kill` counts it both times (1,102 processes killed,
/// `oom_kill 1103`, on 6.1); the victim is one of the group's own tasks
/// unless it sits in a cgroup below the group's. Kernels before 5.16 have
/// no `oom_group_kill`: there a group's count is not a count of tasks, and
/// `None` leaves the OOM source's count alone.
pub fn local_oom_kills(dir: &Path, r: &mut Reader, e: &ErrorCounts) -> Option<u64> {
    let path = dir.join("memory.events.local");
    let (mut kills, mut group_kills) = (None, None);
    each_keyed(r.read(&path, e)?, &path, e, |k, v| match k {
        "oom_kill" => kills = Some(v),
        "oom_group_kill" => group_kills = Some(v),
        _ => {}
    });
    let kills = kills?;
    match group_kills {
        Some(g) => Some(kills.saturating_sub(g)),
        // Read only then: before 5.16, and after a kill.
        None if kills > 0 && r.number(&dir.join("memory.oom.group"), e) == Some(1) => None,
        None => Some(kills),
    }
}

/// Files whose values are in `known` are not read.
pub fn memory(
    dir: &Path,
    r: &mut Reader,
    e: &ErrorCounts,
    spec: &mut Spec,
    root: bool,
    known: &Known,
) -> Memory {
    let mut m = Memory {
        usage: known
            .memory_usage
            .or_else(|| r.number(&dir.join("memory.current"), e)),
        max_usage: known
            .memory_max_usage
            .or_else(|| r.number(&dir.join("memory.peak"), e)),
        swap: known
            .swap_usage
            .or_else(|| r.number(&dir.join("memory.swap.current"), e)),
        ..Memory::default()
    };
    let path = dir.join("memory.stat");
    let mut anon = None;
    let mut file = None;
    if let Some(text) = r.read(&path, e) {
        each_keyed(text, &path, e, |k, v| {
            let slot = match k {
                "anon" => {
                    anon = Some(v);
                    &mut m.rss
                }
                "file" => {
                    file = Some(v);
                    &mut m.cache
                }
                "kernel" => &mut m.kernel,
                "shmem" => &mut m.shmem,
                "file_mapped" => &mut m.mapped_file,
                "active_file" => &mut m.active_file,
                "inactive_file" => &mut m.inactive_file,
                "pgfault" => &mut m.pgfault,
                "pgmajfault" => &mut m.pgmajfault,
                "file_dirty" => &mut m.file_dirty,
                "file_writeback" => &mut m.file_writeback,
                "pgscan" => &mut m.pgscan,
                "pgsteal" => &mut m.pgsteal,
                "workingset_refault_file" => &mut m.workingset_refault_file,
                "workingset_refault_anon" => &mut m.workingset_refault_anon,
                _ => return,
            };
            *slot = Some(v);
        });
    }
    // The root cgroup has no memory.current.
    if root && m.usage.is_none() {
        m.usage = anon.zip(file).map(|(a, f)| a + f);
    }
    let path = dir.join("memory.events");
    if let Some(text) = r.read(&path, e) {
        each_keyed(text, &path, e, |k, v| {
            let ev = &mut m.events;
            let slot = match k {
                "low" => &mut ev.low,
                "high" => &mut ev.high,
                "max" => &mut ev.max,
                "oom" => &mut ev.oom,
                "oom_kill" => &mut ev.oom_kill,
                "oom_group_kill" => &mut ev.oom_group_kill,
                _ => return,
            };
            *slot = Some(v);
        });
    }
    if let Some(limit) = known
        .memory_limit
        .or_else(|| r.limit(&dir.join("memory.max"), e))
    {
        spec.has_memory = true;
        spec.memory_limit = limit;
    }
    spec.memory_swap_limit = known
        .memory_swap_limit
        .or_else(|| r.limit(&dir.join("memory.swap.max"), e))
        .flatten();
    spec.memory_reservation = r.number(&dir.join("memory.min"), e).filter(|&v| v > 0);
    m
}

/// `io.stat`: `MAJ:MIN rbytes=… wbytes=… rios=… wios=… dbytes=… dios=…`.
pub fn io_stat(dir: &Path, r: &mut Reader, e: &ErrorCounts) -> Option<Vec<DeviceIo>> {
    let text = r.read(&dir.join("io.stat"), e)?;
    let mut devs = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some((maj, min)) = it.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse(), min.parse()) else {
            e.record("malformed", format!("{}/io.stat: {line:?}", dir.display()));
            continue;
        };
        let mut d = DeviceIo {
            major,
            minor,
            ..DeviceIo::default()
        };
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v = v.parse().ok();
            match k {
                "rbytes" => d.read_bytes = v,
                "wbytes" => d.write_bytes = v,
                "rios" => d.reads = v,
                "wios" => d.writes = v,
                "cost.usage" => d.cost_us[0] = v,
                "cost.wait" => d.cost_us[1] = v,
                "cost.indebt" => d.cost_us[2] = v,
                "cost.indelay" => d.cost_us[3] = v,
                _ => {}
            }
        }
        devs.push(d);
    }
    devs.sort_by_key(|d| (d.major, d.minor));
    Some(devs)
}

/// PSI of a cgroup2 directory; `None` when the kernel has no PSI.
pub fn pressure(dir: &Path, r: &mut Reader, e: &ErrorCounts) -> Option<Pressure> {
    let mut p = Pressure::default();
    let mut any = false;
    for (file, slot) in [
        ("cpu.pressure", &mut p.cpu),
        ("memory.pressure", &mut p.memory),
        ("io.pressure", &mut p.io),
    ] {
        if let Some(text) = r.read(&dir.join(file), e) {
            *slot = pressure_totals(text);
            any = true;
        }
    }
    any.then_some(p)
}

pub fn hugetlb(dir: &Path, sizes: &[String], r: &mut Reader, e: &ErrorCounts) -> Vec<Hugetlb> {
    sizes
        .iter()
        .map(|size| {
            let mut failcnt = None;
            let path = dir.join(format!("hugetlb.{size}.events"));
            if let Some(text) = r.read(&path, e) {
                each_keyed(text, &path, e, |k, v| {
                    if k == "max" {
                        failcnt = Some(v);
                    }
                });
            }
            Hugetlb {
                pagesize: size.clone(),
                usage: r.number(&dir.join(format!("hugetlb.{size}.current")), e),
                max_usage: None,
                failcnt,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cgroupfs/v2/test"
    );

    #[test]
    fn cpu_files() {
        let (mut r, e) = (Reader::default(), ErrorCounts::new("collection"));
        let mut cpu = Cpu::default();
        cpu_stat(Path::new(FIXTURES), &mut r, &e, &mut cpu);
        assert_eq!(cpu.usage_ns, Some(7_654_321_000));
        assert_eq!(
            (cpu.user_ns, cpu.system_ns),
            (Some(7_000_000_000), Some(654_321_000))
        );
        assert_eq!(
            (cpu.periods, cpu.throttled_periods, cpu.throttled_ns),
            (Some(100), Some(40), Some(2_500_000_000))
        );
        assert_eq!((cpu.bursts, cpu.burst_ns), (Some(2), Some(30_000_000)));
        let mut spec = Spec::default();
        cpu_spec(
            Path::new(FIXTURES),
            &mut r,
            &e,
            &mut spec,
            &Known::default(),
        );
        assert_eq!(
            (spec.cpu_quota_us, spec.cpu_period_us, spec.cpu_shares),
            (Some(50_000), Some(100_000), Some(weight_to_shares(100)))
        );
        assert_eq!(e.recorded(), "");
    }

    /// What the kernel's counter says of tasks killed, on each kernel.
    #[test]
    fn own_oom_kills_count_a_group_kills_victim_once() {
        use std::fs;
        let dir = tempfile::tempdir().unwrap();
        let (mut r, e) = (Reader::default(), ErrorCounts::new("collection"));
        let mut kills = |events: &str, group: &str| {
            fs::write(dir.path().join("memory.events.local"), events).unwrap();
            fs::write(dir.path().join("memory.oom.group"), group).unwrap();
            local_oom_kills(dir.path(), &mut r, &e)
        };
        // 5.16+: 1,102 tasks killed in one group kill.
        let modern = "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1103\noom_group_kill 1\n";
        assert_eq!(kills(modern, "1\n"), Some(1102));
        // Before 5.16 a group's count cannot be told from its tasks'.
        let old = "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1103\n";
        assert_eq!(kills(old, "1\n"), None);
        assert_eq!(kills(old, "0\n"), Some(1103));
        assert_eq!(
            kills("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n", "1\n"),
            Some(0)
        );
        assert_eq!(e.recorded(), "");
    }

    #[test]
    fn memory_files() {
        let (mut r, e) = (Reader::default(), ErrorCounts::new("collection"));
        let mut spec = Spec::default();
        let m = memory(
            Path::new(FIXTURES),
            &mut r,
            &e,
            &mut spec,
            false,
            &Known::default(),
        );
        assert_eq!(m.usage, Some(209_715_200));
        assert_eq!(m.max_usage, Some(268_435_456));
        assert_eq!(
            (m.rss, m.cache, m.kernel),
            (Some(150_000_000), Some(50_000_000), Some(4_000_000))
        );
        assert_eq!(m.inactive_file, Some(20_000_000));
        assert_eq!(m.working_set(), Some(189_715_200));
        assert_eq!(
            (
                m.events.max,
                m.events.oom,
                m.events.oom_kill,
                m.events.oom_group_kill
            ),
            (Some(7), Some(2), Some(3), Some(1))
        );
        assert_eq!(spec.memory_limit, Some(268_435_456));
        assert_eq!(spec.memory_swap_limit, None);
        // oom_kill 2 with oom_group_kill 1: one task, killed twice.
        assert_eq!(local_oom_kills(Path::new(FIXTURES), &mut r, &e), Some(1));
        assert_eq!(e.recorded(), "");
    }

    #[test]
    fn io_and_pressure() {
        let (mut r, e) = (Reader::default(), ErrorCounts::new("collection"));
        let io = io_stat(Path::new(FIXTURES), &mut r, &e).unwrap();
        assert_eq!(io.len(), 2);
        assert_eq!(
            (io[0].major, io[0].read_bytes, io[0].writes),
            (8, Some(1_048_576), Some(42))
        );
        let p = pressure(Path::new(FIXTURES), &mut r, &e).unwrap();
        assert_eq!(p.cpu, (Some(1_500_000), Some(700_000)));
        assert_eq!(p.memory, (Some(10), Some(5)));
        assert_eq!(p.io.0, Some(123));
    }
}
