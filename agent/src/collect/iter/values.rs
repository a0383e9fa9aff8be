//! What the iterator reads, in the files' terms: the hierarchies it walks
//! ([`Target`]), the values it gives ([`Fields`]), a record turned into
//! those values ([`known_from`]) and the same values read from the files
//! ([`reference`]), which the self-check compares.

use std::{fmt, path::Path};

use agent_common::{
    CgroupStats, STATS_FLAG_CPU, STATS_FLAG_CPUACCT, STATS_FLAG_CPU_BURST, STATS_FLAG_KMEM,
    STATS_FLAG_MEMORY, STATS_FLAG_MEMSW, STATS_FLAG_PIDS, STATS_FLAG_SOFT_LIMIT,
};

use crate::{
    cgroup::{
        hierarchy::{Hierarchies, Hierarchy, Version},
        read::Reader,
        stats::{weight_to_shares, Cpu, Known, Spec},
        v1::{self, limited},
        v2,
    },
    config::Groups,
    errors::ErrorCounts,
};

/// `PID_MAX_LIMIT + 1` on 64-bit kernels.
const PIDS_MAX: u64 = 4 * 1024 * 1024 + 1;

/// One hierarchy the iterator walks.
#[derive(Debug, Clone)]
pub struct Target {
    pub hierarchy: Hierarchy,
    pub v2: bool,
    pub memory: bool,
    pub cpuacct: bool,
    pub pids: bool,
    /// On cgroup2 the limits only (cpu.max, cpu.weight): cpu.stat is read
    /// for its rstat usage anyway, and its throttling counters come along.
    pub cpu: bool,
}

impl Target {
    /// The hierarchies holding memory, cpuacct, cpu or pids (cgroup2 only
    /// on a pure v2 host, and there no CPU usage: that is an rstat sum
    /// only `cgroup_rstat_flush()` makes current, a kfunc aya 0.14 cannot
    /// call, so cpu.stat is read anyway), for the metric groups enabled:
    /// nothing is walked to be thrown away.
    pub fn all(h: &Hierarchies, groups: &Groups) -> Vec<Self> {
        let memory = groups.memory || groups.oom_event;
        let pure_v2 = h.list.iter().all(|x| x.version == Version::V2);
        h.list
            .iter()
            .filter_map(|x| {
                let v2 = x.version == Version::V2;
                if v2 && !pure_v2 {
                    return None;
                }
                let t = Target {
                    hierarchy: x.clone(),
                    v2,
                    memory: memory && x.has("memory"),
                    cpuacct: groups.cpu && !v2 && x.has("cpuacct"),
                    pids: groups.process && x.has("pids"),
                    cpu: groups.cpu && x.has("cpu"),
                };
                (t.memory || t.cpuacct || t.pids || t.cpu).then_some(t)
            })
            .collect()
    }

    /// The [`Fields`] bits this hierarchy's passes give.
    pub(super) fn fields(&self) -> u32 {
        let mut f = 0;
        if self.memory {
            f |= Fields::MEMORY_USAGE
                | Fields::MEMORY_MAX_USAGE
                | Fields::MEMORY_LIMIT
                | Fields::SWAP_LIMIT;
            f |= if self.v2 {
                Fields::SWAP_USAGE
            } else {
                Fields::MEMORY_FAILCNT | Fields::MEMORY_KERNEL | Fields::MEMORY_RESERVATION
            };
        }
        if self.cpuacct {
            f |= Fields::CPU_USAGE;
        }
        if self.pids {
            f |= Fields::PIDS_CURRENT | Fields::PIDS_MAX;
        }
        if self.cpu {
            f |= Fields::CPU_QUOTA | Fields::CPU_PERIOD | Fields::CPU_SHARES;
            if !self.v2 {
                f |= Fields::CPU_STAT;
            }
        }
        f
    }
}

/// Every value the iterator can give: its [`Fields`] bit, its [`Known`]
/// member and the name logs use. Calls `$m!([args] BIT member "name"; …)`,
/// so the masks, merges and comparisons below come from this one list.
macro_rules! known_fields {
    ($m:ident $(, $arg:expr)*) => {
        $m!([$($arg),*]
            CPU_USAGE cpu_usage_ns "cpu_usage";
            MEMORY_USAGE memory_usage "memory_usage";
            MEMORY_MAX_USAGE memory_max_usage "memory_max_usage";
            MEMORY_LIMIT memory_limit "memory_limit";
            SWAP_LIMIT memory_swap_limit "memory_swap_limit";
            SWAP_USAGE swap_usage "swap_usage";
            MEMORY_FAILCNT memory_failcnt "memory_failcnt";
            MEMORY_KERNEL memory_kernel "memory_kernel";
            MEMORY_RESERVATION memory_reservation "memory_reservation";
            PIDS_CURRENT pids_current "pids_current";
            PIDS_MAX pids_max "pids_max";
            CPU_PERIODS cpu_periods "cpu_periods";
            CPU_THROTTLED cpu_throttled_periods "cpu_throttled_periods";
            CPU_THROTTLED_NS cpu_throttled_ns "cpu_throttled_time";
            CPU_BURSTS cpu_bursts "cpu_bursts";
            CPU_BURST_NS cpu_burst_ns "cpu_burst_time";
            CPU_QUOTA cpu_quota_us "cpu_quota";
            CPU_PERIOD cpu_period_us "cpu_period";
            CPU_SHARES cpu_shares "cpu_shares";
        )
    };
}

/// Which [`Known`] values the iterator gives on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields(pub(super) u32);

impl Fields {
    pub const CPU_USAGE: u32 = 1;
    pub const MEMORY_USAGE: u32 = 1 << 1;
    pub const MEMORY_MAX_USAGE: u32 = 1 << 2;
    pub const MEMORY_LIMIT: u32 = 1 << 3;
    pub const SWAP_LIMIT: u32 = 1 << 4;
    pub const SWAP_USAGE: u32 = 1 << 5;
    pub const MEMORY_FAILCNT: u32 = 1 << 6;
    pub const MEMORY_KERNEL: u32 = 1 << 7;
    pub const MEMORY_RESERVATION: u32 = 1 << 8;
    pub const PIDS_CURRENT: u32 = 1 << 9;
    pub const PIDS_MAX: u32 = 1 << 10;
    pub const CPU_PERIODS: u32 = 1 << 11;
    pub const CPU_THROTTLED: u32 = 1 << 12;
    pub const CPU_THROTTLED_NS: u32 = 1 << 13;
    pub const CPU_BURSTS: u32 = 1 << 14;
    pub const CPU_BURST_NS: u32 = 1 << 15;
    pub const CPU_QUOTA: u32 = 1 << 16;
    pub const CPU_PERIOD: u32 = 1 << 17;
    pub const CPU_SHARES: u32 = 1 << 18;
    pub const ALL: Fields = Fields((1 << 19) - 1);
    /// `cpu.stat`'s values: the file is skipped only when all are known.
    const CPU_STAT: u32 = Self::CPU_PERIODS
        | Self::CPU_THROTTLED
        | Self::CPU_THROTTLED_NS
        | Self::CPU_BURSTS
        | Self::CPU_BURST_NS;
    /// Values that only grow.
    pub(super) const MONOTONIC: u32 =
        Self::CPU_USAGE | Self::MEMORY_MAX_USAGE | Self::MEMORY_FAILCNT | Self::CPU_STAT;
    pub(super) const NAMES: &[(u32, &str)] = {
        macro_rules! names {
            ([] $($bit:ident $f:ident $name:literal;)*) => { &[$((Self::$bit, $name)),*] };
        }
        known_fields!(names)
    };

    pub fn has(self, f: u32) -> bool {
        self.0 & f != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Keeps only these fields of `k`; the rest is read from files.
    pub fn mask(self, k: Known) -> Known {
        macro_rules! mask {
            ([$fields:expr, $k:expr] $($bit:ident $f:ident $name:literal;)*) => {
                Known { $($f: $k.$f.filter(|_| $fields.has(Self::$bit)),)* }
            };
        }
        known_fields!(mask, self, k)
    }
}

impl fmt::Display for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(bit, _)| self.has(*bit))
            .map(|(_, n)| *n)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// What one record says in the files' terms. The root cgroup gives
/// nothing: the kernel computes its memory files differently.
pub fn known_from(rec: &CgroupStats, t: &Target, page: u64) -> Known {
    if rec.level == 0 {
        return Known::default();
    }
    values(rec, t, page)
}

pub(super) fn values(rec: &CgroupStats, t: &Target, page: u64) -> Known {
    let mut k = Known::default();
    let bytes = |pages: u64| pages.saturating_mul(page);
    // v2 shows "max" exactly at PAGE_COUNTER_MAX; v1 shows the byte value,
    // which the file reader treats as unlimited.
    let v2_limit = |pages: u64| (pages < i64::MAX as u64 / page).then(|| bytes(pages));
    let v1_limit = |pages: u64| limited(Some(bytes(pages)));
    if t.memory && rec.flags & STATS_FLAG_MEMORY != 0 {
        k.memory_usage = Some(bytes(rec.mem_usage));
        // v2's memory.peak (5.19 on; cgroup iterators came in 6.1) is the
        // same page counter's watermark.
        k.memory_max_usage = Some(bytes(rec.mem_watermark));
        if t.v2 {
            k.memory_limit = Some(v2_limit(rec.mem_max));
        } else {
            k.memory_limit = Some(v1_limit(rec.mem_max));
            k.memory_failcnt = Some(rec.mem_failcnt);
        }
    }
    if t.memory && !t.v2 && rec.flags & STATS_FLAG_SOFT_LIMIT != 0 {
        k.memory_reservation = Some(v1_limit(rec.mem_soft_limit));
    }
    if t.memory && !t.v2 && rec.flags & STATS_FLAG_KMEM != 0 {
        k.memory_kernel = Some(bytes(rec.kmem_usage));
    }
    if t.pids && rec.flags & STATS_FLAG_PIDS != 0 {
        k.pids_current = Some(rec.pids_current);
        // pids.max shows "max" from PIDS_MAX (PID_MAX_LIMIT + 1) up; the
        // self-check confirms this kernel agrees.
        k.pids_max = Some((rec.pids_limit < PIDS_MAX).then_some(rec.pids_limit));
    }
    if t.cpu && rec.flags & STATS_FLAG_CPU != 0 {
        // As cpu.shares shows it: scale_load_down() of 64-bit kernels.
        let shares = rec.cpu_shares;
        let shares = if shares == 0 {
            0
        } else {
            (shares >> 10).max(2)
        };
        k.cpu_shares = Some(if t.v2 {
            weight_to_shares(kernel_weight(shares))
        } else {
            shares
        });
        // RUNTIME_INF is "-1" in cpu.cfs_quota_us and "max" in cpu.max.
        k.cpu_quota_us = Some((rec.cpu_quota_ns != u64::MAX).then_some(rec.cpu_quota_ns / 1000));
        k.cpu_period_us = Some(rec.cpu_period_ns / 1000);
    }
    if t.cpu && !t.v2 && rec.flags & STATS_FLAG_CPU != 0 {
        k.cpu_periods = Some(rec.cpu_periods.into());
        k.cpu_throttled_periods = Some(rec.cpu_throttled.into());
        k.cpu_throttled_ns = Some(rec.cpu_throttled_ns);
    }
    if t.cpu && !t.v2 && rec.flags & STATS_FLAG_CPU_BURST != 0 {
        k.cpu_bursts = Some(rec.cpu_bursts.into());
        k.cpu_burst_ns = Some(rec.cpu_burst_ns);
    }
    if t.memory && rec.flags & STATS_FLAG_MEMSW != 0 {
        // One page counter: `memsw` on v1, `swap` on v2.
        if t.v2 {
            k.swap_usage = Some(bytes(rec.memsw_usage));
            k.memory_swap_limit = Some(v2_limit(rec.memsw_max));
        } else {
            k.memory_swap_limit = Some(v1_limit(rec.memsw_max));
        }
    }
    if t.cpuacct && rec.flags & STATS_FLAG_CPUACCT != 0 {
        k.cpu_usage_ns = Some(rec.cpu_usage_ns);
    }
    k
}

/// cpu.weight as the kernel shows it for a task group's scaled-down shares
/// (`sched_weight_to_cgroup()`: rounded to the closest, within 1–10000).
fn kernel_weight(shares: u64) -> u64 {
    ((shares * 100 + 512) / 1024).clamp(1, 10_000)
}

/// The same values read from the files, as the collection's readers
/// interpret them: the self-check's reference.
pub fn reference(t: &Target, dir: &Path, r: &mut Reader, e: &ErrorCounts) -> Known {
    let mut k = Known::default();
    if t.memory && t.v2 {
        k.memory_usage = r.number(&dir.join("memory.current"), e);
        k.memory_max_usage = r.number(&dir.join("memory.peak"), e);
        k.memory_limit = r.limit(&dir.join("memory.max"), e);
        k.memory_swap_limit = r.limit(&dir.join("memory.swap.max"), e);
        k.swap_usage = r.number(&dir.join("memory.swap.current"), e);
    } else if t.memory {
        k.memory_usage = r.number(&dir.join("memory.usage_in_bytes"), e);
        k.memory_max_usage = r.number(&dir.join("memory.max_usage_in_bytes"), e);
        k.memory_limit = r
            .number(&dir.join("memory.limit_in_bytes"), e)
            .map(|v| limited(Some(v)));
        k.memory_swap_limit = r
            .number(&dir.join("memory.memsw.limit_in_bytes"), e)
            .map(|v| limited(Some(v)));
        k.memory_failcnt = r.number(&dir.join("memory.failcnt"), e);
        k.memory_kernel = r.number(&dir.join("memory.kmem.usage_in_bytes"), e);
        k.memory_reservation = r
            .number(&dir.join("memory.soft_limit_in_bytes"), e)
            .map(|v| limited(Some(v)));
    }
    if t.cpuacct {
        k.cpu_usage_ns = r.number(&dir.join("cpuacct.usage"), e);
    }
    if t.pids {
        k.pids_current = r.number(&dir.join("pids.current"), e);
        k.pids_max = r.limit(&dir.join("pids.max"), e);
    }
    if t.cpu && t.v2 {
        let mut spec = Spec::default();
        v2::cpu_spec(dir, r, e, &mut spec, &Known::default());
        if let Some(period) = spec.cpu_period_us {
            (k.cpu_quota_us, k.cpu_period_us) = (Some(spec.cpu_quota_us), Some(period));
        }
        k.cpu_shares = spec.cpu_shares;
    } else if t.cpu {
        let mut cpu = Cpu::default();
        v1::cpu_stat(dir, r, e, &mut cpu, &Known::default());
        (k.cpu_periods, k.cpu_throttled_periods) = (cpu.periods, cpu.throttled_periods);
        (k.cpu_throttled_ns, k.cpu_bursts) = (cpu.throttled_ns, cpu.bursts);
        k.cpu_burst_ns = cpu.burst_ns;
        let mut spec = Spec::default();
        v1::cpu_spec(dir, r, e, &mut spec, &Known::default());
        // The reader flattens "-1"; only a readable file says unlimited.
        k.cpu_quota_us = spec
            .cpu_quota_us
            .map(Some)
            .or_else(|| dir.join("cpu.cfs_quota_us").exists().then_some(None));
        (k.cpu_period_us, k.cpu_shares) = (spec.cpu_period_us, spec.cpu_shares);
    }
    k
}

pub(super) fn merge(a: Known, b: Known) -> Known {
    macro_rules! merge {
        ([$a:expr, $b:expr] $($bit:ident $f:ident $name:literal;)*) => {
            Known { $($f: $a.$f.or($b.$f),)* }
        };
    }
    known_fields!(merge, a, b)
}

#[cfg(test)]
pub(super) mod testing {
    use super::*;

    pub fn target(v2: bool) -> Target {
        Target {
            hierarchy: Hierarchy {
                id: 4,
                version: if v2 { Version::V2 } else { Version::V1 },
                controllers: vec!["memory".into()],
                mount: "/sys/fs/cgroup/memory".into(),
                mount_root: "/".into(),
            },
            v2,
            memory: true,
            cpuacct: !v2,
            pids: true,
            cpu: true,
        }
    }

    pub const PAGE: u64 = 4096;
    pub const UNLIMITED_PAGES: u64 = i64::MAX as u64 / PAGE;

    pub fn record() -> CgroupStats {
        CgroupStats {
            id: 77,
            parent_id: 1,
            level: 2,
            flags: STATS_FLAG_MEMORY | STATS_FLAG_MEMSW | STATS_FLAG_CPUACCT,
            mem_usage: 10,
            mem_max: 256,
            mem_watermark: 12,
            memsw_usage: 3,
            memsw_max: UNLIMITED_PAGES,
            memsw_watermark: 0,
            cpu_usage_ns: 123,
            ..CgroupStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::*, *};

    #[test]
    fn records_in_the_files_terms() {
        let k = known_from(&record(), &target(false), PAGE);
        assert_eq!(k.memory_usage, Some(40_960));
        assert_eq!(k.memory_max_usage, Some(49_152));
        assert_eq!(k.memory_limit, Some(Some(1 << 20)));
        assert_eq!(
            k.memory_swap_limit,
            Some(None),
            "v1's huge byte value is unlimited"
        );
        assert_eq!(k.cpu_usage_ns, Some(123));
        assert_eq!(k.swap_usage, None, "v1 memsw is memory+swap, not swap");

        let k = known_from(&record(), &target(true), PAGE);
        assert_eq!(k.memory_limit, Some(Some(1 << 20)));
        assert_eq!(k.memory_swap_limit, Some(None), "\"max\"");
        assert_eq!(k.swap_usage, Some(3 * PAGE));
        assert_eq!(k.memory_max_usage, Some(12 * PAGE), "memory.peak");
        assert_eq!(k.cpu_usage_ns, None);

        let cpu = CgroupStats {
            flags: STATS_FLAG_CPU | STATS_FLAG_CPU_BURST,
            // cpu.weight 200 is stored as scale_load(2048).
            cpu_shares: 2048 << 10,
            cpu_quota_ns: u64::MAX,
            cpu_period_ns: 100_000_000,
            cpu_periods: 7,
            ..record()
        };
        let k = known_from(&cpu, &target(true), PAGE);
        assert_eq!(k.cpu_shares, Some(weight_to_shares(200)));
        assert_eq!(
            (k.cpu_quota_us, k.cpu_period_us),
            (Some(None), Some(100_000))
        );
        assert_eq!(
            (k.cpu_periods, k.cpu_bursts),
            (None, None),
            "cgroup2's cpu.stat is read for its usage anyway"
        );
        let k = known_from(&cpu, &target(false), PAGE);
        assert_eq!((k.cpu_shares, k.cpu_periods), (Some(2048), Some(7)));

        let root = CgroupStats {
            level: 0,
            ..record()
        };
        assert_eq!(known_from(&root, &target(false), PAGE), Known::default());
        let bare = CgroupStats {
            flags: 0,
            ..record()
        };
        assert_eq!(known_from(&bare, &target(false), PAGE), Known::default());
    }

    #[test]
    fn cpu_weight_survives_the_kernels_round_trip() {
        // The kernel stores a written weight w as round(w * 1024 / 100).
        for w in 1..=10_000u64 {
            assert_eq!(kernel_weight((w * 1024 + 50) / 100), w, "weight {w}");
        }
        assert_eq!(kernel_weight(2), 1, "the smallest shares show weight 1");
    }

    #[test]
    fn masked_fields_go_to_files() {
        let k = known_from(&record(), &target(false), PAGE);
        let m = Fields(Fields::MEMORY_USAGE | Fields::CPU_USAGE).mask(k);
        assert_eq!((m.memory_usage, m.cpu_usage_ns), (Some(40_960), Some(123)));
        assert_eq!((m.memory_max_usage, m.memory_limit), (None, None));
        assert_eq!(
            Fields(Fields::MEMORY_USAGE | Fields::CPU_USAGE).to_string(),
            "cpu_usage,memory_usage"
        );
    }

    #[test]
    fn targets_per_layout() {
        let h = |id, version, ctrls: &[&str], mount: &str| Hierarchy {
            id,
            version,
            controllers: ctrls.iter().map(|c| c.to_string()).collect(),
            mount: mount.into(),
            mount_root: "/".into(),
        };
        let hybrid = Hierarchies {
            list: vec![
                h(0, Version::V2, &[], "/sys/fs/cgroup/unified"),
                h(3, Version::V1, &["cpu"], "/sys/fs/cgroup/cpu"),
                h(4, Version::V1, &["cpuacct"], "/sys/fs/cgroup/cpuacct"),
                h(5, Version::V1, &["memory"], "/sys/fs/cgroup/memory"),
            ],
        };
        let t = Target::all(&hybrid, &Groups::all());
        assert_eq!(
            t.iter().map(|t| t.hierarchy.id).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        let no_cpu = Groups {
            cpu: false,
            ..Groups::all()
        };
        let t2 = Target::all(&hybrid, &no_cpu);
        assert_eq!(
            t2.iter().map(|t| t.hierarchy.id).collect::<Vec<_>>(),
            [5],
            "nothing walked in vain"
        );
        assert!(t[0].cpu && t[1].cpuacct && !t[1].memory && t[2].memory);
        let v2 = Hierarchies {
            list: vec![h(0, Version::V2, &["cpu", "memory"], "/sys/fs/cgroup")],
        };
        let t = Target::all(&v2, &Groups::all());
        assert_eq!(t.len(), 1);
        assert!(t[0].v2 && t[0].memory && !t[0].cpuacct && t[0].cpu);
        assert!(!Fields(t[0].fields()).has(Fields::CPU_PERIODS));
        assert_eq!(t[0].hierarchy.dir("/a/b"), Path::new("/sys/fs/cgroup/a/b"));
    }

    #[test]
    fn reference_reads_what_the_collection_reads() {
        let dir = tempfile::tempdir().unwrap();
        for (f, v) in [
            ("memory.usage_in_bytes", "8192\n"),
            ("memory.max_usage_in_bytes", "12288\n"),
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("cpuacct.usage", "55\n"),
        ] {
            std::fs::write(dir.path().join(f), v).unwrap();
        }
        let (mut r, e) = (Reader::default(), ErrorCounts::new("collection"));
        let k = reference(&target(false), dir.path(), &mut r, &e);
        assert_eq!(k.memory_usage, Some(8192));
        assert_eq!(k.memory_limit, Some(None));
        assert_eq!(k.memory_swap_limit, None, "no memsw file: absent");
        assert_eq!(k.cpu_usage_ns, Some(55));
    }
}
