//! The fast path: values the eBPF cgroup iterator reads in the kernel
//! (memory usage, max usage, failcnt, kernel usage and limits; cpuacct
//! usage; cpu shares, CFS quota, period and throttling; pids current and
//! max) replace their files in each collection. The file readers stay the
//! reference: a self-check at start compares both, and any value the
//! iterator cannot give (a cgroup it has not seen, a failed pass) is read
//! from its file as before.
//!
//! Containers collected together (one scheduler tick) share one pass per
//! hierarchy ([`Round`]) when that is cheaper than a pass rooted at each
//! container's own directory, judged from the measured cost of both.

use std::{
    collections::{BTreeMap, HashMap},
    fmt, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use agent_common::{
    CgroupStats, STATS_FLAG_CPU, STATS_FLAG_CPUACCT, STATS_FLAG_CPU_BURST, STATS_FLAG_KMEM,
    STATS_FLAG_MEMORY, STATS_FLAG_MEMSW, STATS_FLAG_PIDS, STATS_FLAG_SOFT_LIMIT,
};

use crate::{
    cgroup::{
        hierarchy::{Hierarchies, Hierarchy, Version},
        read::Reader,
        stats::{Cpu, Known, Spec},
        v1::{self, limited},
    },
    config::Groups,
    ebpf::iter::CgroupIter,
    errors::ErrorCounts,
};

/// A shared pass serves its round while this young; the round's later
/// collections walk again, so no value is older than this.
const MAX_AGE: Duration = Duration::from_secs(1);

/// `PID_MAX_LIMIT + 1` on 64-bit kernels.
const PIDS_MAX: u64 = 4 * 1024 * 1024 + 1;

/// Cgroups the self-check compares per hierarchy.
const CHECK_SAMPLE: usize = 24;

/// Attempts per cgroup before a difference counts as a mismatch: a usage
/// that rises and falls between the two file reads can leave the bracket.
const CHECK_ATTEMPTS: usize = 3;

/// One hierarchy the iterator walks.
#[derive(Debug, Clone)]
pub struct Target {
    pub hierarchy: Hierarchy,
    pub v2: bool,
    pub memory: bool,
    pub cpuacct: bool,
    pub pids: bool,
    /// v1 only: cgroup2's cpu.stat is read for its usage anyway.
    pub cpu: bool,
}

impl Target {
    /// The hierarchies holding memory, cpuacct, cpu or pids (cgroup2 only
    /// on a pure v2 host, and there memory and pids only: its CPU usage is
    /// an rstat sum the iterator cannot flush, so cpu.stat is read anyway),
    /// for the metric groups enabled: nothing is walked to be thrown away.
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
                    cpu: groups.cpu && !v2 && x.has("cpu"),
                };
                (t.memory || t.cpuacct || t.pids || t.cpu).then_some(t)
            })
            .collect()
    }

    /// The [`Fields`] bits this hierarchy's passes give.
    fn fields(&self) -> u32 {
        let mut f = 0;
        if self.memory {
            f |= Fields::MEMORY_USAGE | Fields::MEMORY_LIMIT | Fields::SWAP_LIMIT;
            f |= if self.v2 {
                Fields::SWAP_USAGE
            } else {
                Fields::MEMORY_MAX_USAGE
                    | Fields::MEMORY_FAILCNT
                    | Fields::MEMORY_KERNEL
                    | Fields::MEMORY_RESERVATION
            };
        }
        if self.cpuacct {
            f |= Fields::CPU_USAGE;
        }
        if self.pids {
            f |= Fields::PIDS_CURRENT | Fields::PIDS_MAX;
        }
        if self.cpu {
            f |= Fields::CPU_STAT | Fields::CPU_QUOTA | Fields::CPU_PERIOD | Fields::CPU_SHARES;
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
pub struct Fields(u32);

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
    const MONOTONIC: u32 =
        Self::CPU_USAGE | Self::MEMORY_MAX_USAGE | Self::MEMORY_FAILCNT | Self::CPU_STAT;
    const NAMES: &[(u32, &str)] = {
        macro_rules! names {
            ([] $($bit:ident $f:ident $name:literal;)*) => { &[$((Self::$bit, $name)),*] };
        }
        known_fields!(names)
    };

    pub fn has(self, f: u32) -> bool {
        self.0 & f != 0
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

fn values(rec: &CgroupStats, t: &Target, page: u64) -> Known {
    let mut k = Known::default();
    let bytes = |pages: u64| pages.saturating_mul(page);
    // v2 shows "max" exactly at PAGE_COUNTER_MAX; v1 shows the byte value,
    // which the file reader treats as unlimited.
    let v2_limit = |pages: u64| (pages < i64::MAX as u64 / page).then(|| bytes(pages));
    let v1_limit = |pages: u64| limited(Some(bytes(pages)));
    if t.memory && rec.flags & STATS_FLAG_MEMORY != 0 {
        k.memory_usage = Some(bytes(rec.mem_usage));
        if t.v2 {
            // memory.peak is left to its file: kernels before 5.19 have none.
            k.memory_limit = Some(v2_limit(rec.mem_max));
        } else {
            k.memory_max_usage = Some(bytes(rec.mem_watermark));
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
        k.cpu_shares = Some(if shares == 0 {
            0
        } else {
            (shares >> 10).max(2)
        });
        // RUNTIME_INF is "-1" in cpu.cfs_quota_us.
        k.cpu_quota_us = Some((rec.cpu_quota_ns != u64::MAX).then_some(rec.cpu_quota_ns / 1000));
        k.cpu_period_us = Some(rec.cpu_period_ns / 1000);
        k.cpu_periods = Some(rec.cpu_periods.into());
        k.cpu_throttled_periods = Some(rec.cpu_throttled.into());
        k.cpu_throttled_ns = Some(rec.cpu_throttled_ns);
    }
    if t.cpu && rec.flags & STATS_FLAG_CPU_BURST != 0 {
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

/// The same values read from the files, as the collection's readers
/// interpret them: the self-check's reference.
pub fn reference(t: &Target, dir: &Path, r: &mut Reader, e: &ErrorCounts) -> Known {
    let mut k = Known::default();
    if t.memory && t.v2 {
        k.memory_usage = r.number(&dir.join("memory.current"), e);
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
    if t.cpu {
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

fn merge(a: Known, b: Known) -> Known {
    macro_rules! merge {
        ([$a:expr, $b:expr] $($bit:ident $f:ident $name:literal;)*) => {
            Known { $($f: $a.$f.or($b.$f),)* }
        };
    }
    known_fields!(merge, a, b)
}

/// How one field compares across a bracket (files before, iterator, files
/// after).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// No file on this host (or no value from the iterator): left to files.
    Absent,
    Match,
    /// A gauge that moved between the file reads and lies outside them: it
    /// may have gone up and down in between, so this proves nothing.
    Unsettled,
    Mismatch,
}

/// Counters (`monotonic`) must lie within the bracket; a gauge must equal
/// a value that held still, and within a moving bracket is taken as agreeing.
fn judge<T: PartialOrd + Copy>(
    before: Option<T>,
    iter: Option<T>,
    after: Option<T>,
    monotonic: bool,
) -> Verdict {
    match (before, iter, after) {
        (Some(b), Some(i), Some(a)) => {
            let (lo, hi) = if b <= a { (b, a) } else { (a, b) };
            if lo <= i && i <= hi {
                Verdict::Match
            } else if !monotonic && b != a {
                Verdict::Unsettled
            } else {
                Verdict::Mismatch
            }
        }
        _ => Verdict::Absent,
    }
}

/// Every field's verdict for one bracket.
fn bracket(before: &Known, iter: &Known, after: &Known) -> Vec<(u32, Verdict, String)> {
    macro_rules! bracket {
        ([$b:expr, $i:expr, $a:expr] $($bit:ident $f:ident $name:literal;)*) => {
            vec![$((
                Fields::$bit,
                judge($b.$f, $i.$f, $a.$f, Fields::MONOTONIC & Fields::$bit != 0),
                format!("files {:?} then {:?}, iterator {:?}", $b.$f, $a.$f, $i.$f),
            )),*]
        };
    }
    known_fields!(bracket, before, iter, after)
}

/// A pass's records, sorted by kernfs id.
#[derive(Debug)]
struct Table {
    at: Instant,
    records: Vec<CgroupStats>,
}

impl Table {
    fn new(mut records: Vec<CgroupStats>) -> Self {
        records.sort_unstable_by_key(|r| r.id);
        Self {
            at: Instant::now(),
            records,
        }
    }

    fn get(&self, id: u64) -> Option<&CgroupStats> {
        let i = self.records.binary_search_by_key(&id, |r| r.id).ok()?;
        self.records.get(i)
    }
}

/// The collections of one scheduler tick: they share a pass per hierarchy.
#[derive(Debug, Default)]
pub struct Round {
    tables: Mutex<HashMap<u32, Arc<Table>>>,
}

/// Measured pass costs (wall ns, moving averages) that decide between a
/// shared pass and one per container.
#[derive(Debug, Default)]
struct Costs {
    full: HashMap<u32, f64>,
    own: f64,
}

impl Costs {
    fn add(slot: &mut f64, ns: f64) {
        *slot = if *slot == 0.0 {
            ns
        } else {
            *slot * 0.75 + ns * 0.25
        };
    }
}

#[derive(Debug, Default)]
pub struct IterStats {
    /// Passes over a whole hierarchy.
    pub full_passes: AtomicU64,
    /// Passes rooted at one container's directory.
    pub own_passes: AtomicU64,
    pub pass_ns: AtomicU64,
    pub records: AtomicU64,
    /// Passes that found more cgroups than the output array holds (the
    /// rest are read from files).
    pub overflows: AtomicU64,
}

/// What the self-check found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub cgroups: usize,
    pub fields: Fields,
}

pub struct IterSource {
    iter: Mutex<CgroupIter>,
    targets: Vec<Target>,
    page: u64,
    fields: Fields,
    costs: Mutex<Costs>,
    pub stats: IterStats,
}

impl fmt::Debug for IterSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IterSource")
            .field("targets", &self.targets)
            .field("fields", &self.fields)
            .finish_non_exhaustive()
    }
}

impl IterSource {
    /// `None` when no hierarchy holds a controller the iterator reads for
    /// the enabled metric groups.
    pub fn new(iter: CgroupIter, hierarchies: &Hierarchies, groups: &Groups) -> Option<Self> {
        let targets = Target::all(hierarchies, groups);
        if targets.is_empty() {
            return None;
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        Some(Self {
            iter: Mutex::new(iter),
            targets,
            page,
            fields: Fields::ALL,
            costs: Mutex::default(),
            stats: IterStats::default(),
        })
    }

    /// A round for `containers` collections due together, if one pass over
    /// each hierarchy costs less than a pass per container.
    pub fn round(&self, containers: usize) -> Option<Arc<Round>> {
        let costs = self.costs.lock().unwrap_or_else(|e| e.into_inner());
        let full: f64 = costs.full.values().sum();
        let own = costs.own * self.targets.len() as f64 * containers as f64;
        (own > full).then(Arc::default)
    }

    /// The iterator's values for one container (`ids`: its kernfs id per
    /// hierarchy). Values it cannot give stay `None`: read from files.
    pub fn known(
        &self,
        ids: &BTreeMap<u32, u64>,
        path: &str,
        round: Option<&Round>,
        e: &ErrorCounts,
    ) -> Known {
        let mut k = Known::default();
        for t in &self.targets {
            let Some(&id) = ids.get(&t.hierarchy.id) else {
                continue;
            };
            let shared = round.and_then(|r| self.shared(r, t, e));
            let rec = match shared.as_ref().and_then(|tab| tab.get(id)) {
                Some(rec) => Some(*rec),
                // Created after the pass, or beyond the array: its own walk.
                None => self.own(t, path, id, e),
            };
            if let Some(rec) = rec {
                k = merge(k, known_from(&rec, t, self.page));
            }
        }
        self.fields.mask(k)
    }

    fn shared(&self, round: &Round, t: &Target, e: &ErrorCounts) -> Option<Arc<Table>> {
        let mut tables = round.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tab) = tables.get(&t.hierarchy.id) {
            if tab.at.elapsed() < MAX_AGE {
                return Some(tab.clone());
            }
        }
        match self.walk(&t.hierarchy.mount, Some(t.hierarchy.id)) {
            Ok(records) => {
                let tab = Arc::new(Table::new(records));
                tables.insert(t.hierarchy.id, tab.clone());
                Some(tab)
            }
            Err(err) => {
                e.record(
                    "iterator_failed",
                    format!(
                        "cgroup iterator over {}: {err}; reading files",
                        t.hierarchy.mount.display()
                    ),
                );
                tables.remove(&t.hierarchy.id);
                None
            }
        }
    }

    fn own(&self, t: &Target, path: &str, id: u64, e: &ErrorCounts) -> Option<CgroupStats> {
        let dir = t.hierarchy.dir(path);
        match self.walk(&dir, None) {
            // Pre-order: the first record is the directory itself, unless
            // it was replaced by another of the same name meanwhile.
            Ok(records) => records.first().filter(|r| r.id == id).copied(),
            // Removed: its files are gone too, and that is counted there.
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => {
                e.record(
                    "iterator_failed",
                    format!("cgroup iterator at {}: {err}; reading files", dir.display()),
                );
                None
            }
        }
    }

    /// One pass; `full` names the hierarchy when it starts at its root.
    fn walk(&self, dir: &Path, full: Option<u32>) -> io::Result<Vec<CgroupStats>> {
        let pass = {
            let mut iter = self.iter.lock().unwrap_or_else(|e| e.into_inner());
            iter.pass(dir)?
        };
        let ns = pass.took.as_nanos() as f64;
        let st = &self.stats;
        st.pass_ns.fetch_add(ns as u64, Ordering::Relaxed);
        st.records
            .fetch_add(pass.records.len() as u64, Ordering::Relaxed);
        if pass.overflow {
            st.overflows.fetch_add(1, Ordering::Relaxed);
        }
        let mut costs = self.costs.lock().unwrap_or_else(|e| e.into_inner());
        match full {
            Some(h) => {
                st.full_passes.fetch_add(1, Ordering::Relaxed);
                Costs::add(costs.full.entry(h).or_default(), ns);
            }
            None => {
                st.own_passes.fetch_add(1, Ordering::Relaxed);
                Costs::add(&mut costs.own, ns);
            }
        }
        Ok(pass.records)
    }

    /// Compares the iterator with the files on a sample of each hierarchy's
    /// cgroups, each value bracketed by file reads just before and after.
    /// A value outside its bracket fails the check; a value this host has
    /// no file for (or the iterator cannot read) is left to the files.
    /// Also measures both kinds of pass.
    pub fn self_check(&mut self) -> Result<CheckReport, String> {
        let e = ErrorCounts::new("collection");
        let mut r = Reader::default();
        let (mut matched, mut mismatch) = (0u32, None);
        let mut cgroups = 0;
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        for t in self.targets.clone() {
            // The agent's own cgroup and its ancestors are left out: there
            // a file read charges its own buffer (a page of kernel memory)
            // to the very counters it reads, so the files are the
            // perturbed side.
            let mine = own_dir(&own, &t);
            let mut sample = sample_dirs(&t.hierarchy.mount, CHECK_SAMPLE, mine.as_deref());
            // The root's cpuacct usage is the same sum in the files and
            // the kernel, and always moving: it checks the per-CPU walk
            // even in a hierarchy without children.
            if t.cpuacct {
                if let Ok(meta) = std::fs::metadata(&t.hierarchy.mount) {
                    sample.push((t.hierarchy.mount.clone(), meta.ino()));
                }
            }
            cgroups += sample.len();
            // A whole-hierarchy pass, bracketed by every sampled cgroup.
            let mut read_all = || -> Vec<Known> {
                sample
                    .iter()
                    .map(|(d, _)| reference(&t, d, &mut r, &e))
                    .collect()
            };
            let before = read_all();
            let table = Table::new(
                self.walk(&t.hierarchy.mount, Some(t.hierarchy.id))
                    .map_err(|err| {
                        format!(
                            "cgroup iterator over {}: {err}",
                            t.hierarchy.mount.display()
                        )
                    })?,
            );
            let after = read_all();
            for (i, (dir, id)) in sample.iter().enumerate() {
                let root = *dir == t.hierarchy.mount;
                let seen = |rec: Option<&CgroupStats>| match (rec, root) {
                    (Some(rec), false) => known_from(rec, &t, self.page),
                    (Some(rec), true) => Known {
                        cpu_usage_ns: values(rec, &t, self.page).cpu_usage_ns,
                        ..Known::default()
                    },
                    (None, _) => Known::default(),
                };
                let judged = t.fields() & if root { Fields::CPU_USAGE } else { !0 };
                let failed = |v: &[(u32, Verdict, String)]| {
                    v.iter()
                        .find(|(bit, verdict, _)| {
                            judged & bit != 0 && *verdict == Verdict::Mismatch
                        })
                        .cloned()
                };
                let mut verdicts = bracket(&before[i], &seen(table.get(*id)), &after[i]);
                // Outside the wide bracket: again, tightly, with a pass
                // rooted at that cgroup.
                for _ in 0..CHECK_ATTEMPTS {
                    if failed(&verdicts).is_none() {
                        break;
                    }
                    let b = reference(&t, dir, &mut r, &e);
                    let pass = self.walk(dir, None).ok();
                    let a = reference(&t, dir, &mut r, &e);
                    let rec = pass
                        .as_ref()
                        .and_then(|p| p.first())
                        .filter(|rec| rec.id == *id);
                    verdicts = bracket(&b, &seen(rec), &a);
                }
                if let Some((bit, _, detail)) = failed(&verdicts) {
                    let name = Fields::NAMES
                        .iter()
                        .find(|n| n.0 == bit)
                        .map_or("?", |n| n.1);
                    mismatch.get_or_insert(format!("{}: {name}: {detail}", dir.display()));
                }
                for (bit, verdict, _) in verdicts {
                    if judged & bit != 0 && verdict == Verdict::Match {
                        matched |= bit;
                    }
                }
            }
            // The cost of a pass rooted at one cgroup, for [`Self::round`].
            if let Some((dir, _)) = sample.iter().find(|(d, _)| *d != t.hierarchy.mount) {
                let _ = self.walk(dir, None);
            }
        }
        if let Some(m) = mismatch {
            return Err(m);
        }
        // Only what was seen to agree: a value this host has no file for,
        // or no sampled cgroup showed, stays with the files.
        self.fields = Fields(matched);
        Ok(CheckReport {
            cgroups,
            fields: self.fields,
        })
    }
}

/// The agent's directory in `t` (from `/proc/self/cgroup`'s text).
fn own_dir(proc_self_cgroup: &str, t: &Target) -> Option<PathBuf> {
    let path = t.hierarchy.path_of(proc_self_cgroup)?;
    Some(t.hierarchy.dir(path))
}

/// Up to `n` cgroup directories below `root` (not `root` itself),
/// breadth first, with their kernfs ids; none that holds `skip`.
fn sample_dirs(root: &Path, n: usize, skip: Option<&Path>) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    while let Some(dir) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_dir() {
                continue;
            }
            let path = entry.path();
            if skip.is_some_and(|s| s.starts_with(&path)) {
                queue.push_back(path);
                continue;
            }
            if out.len() >= n {
                return out;
            }
            out.push((path.clone(), meta.ino()));
            queue.push_back(path);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(v2: bool) -> Target {
        Target {
            hierarchy: Hierarchy {
                id: 4,
                version: if v2 { Version::V2 } else { Version::V1 },
                controllers: vec!["memory".into()],
                mount: PathBuf::from("/sys/fs/cgroup/memory"),
                mount_root: "/".into(),
            },
            v2,
            memory: true,
            cpuacct: !v2,
            pids: true,
            cpu: !v2,
        }
    }

    const PAGE: u64 = 4096;
    const UNLIMITED_PAGES: u64 = i64::MAX as u64 / PAGE;

    fn record() -> CgroupStats {
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
        assert_eq!(k.memory_max_usage, None, "memory.peak stays with its file");
        assert_eq!(k.cpu_usage_ns, None);

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
    fn brackets() {
        assert_eq!(judge(Some(5), Some(5), Some(5), true), Verdict::Match);
        assert_eq!(judge(Some(5), Some(7), Some(9), true), Verdict::Match);
        let fell = judge(Some(9), Some(7), Some(5), false);
        assert_eq!(fell, Verdict::Match, "usage may fall");
        assert_eq!(judge(Some(5), Some(4), Some(9), true), Verdict::Mismatch);
        let dipped = judge(Some(5), Some(4), Some(9), false);
        assert_eq!(dipped, Verdict::Unsettled, "a gauge may dip between reads");
        assert_eq!(judge(Some(5), Some(4), Some(5), false), Verdict::Mismatch);
        assert_eq!(judge(None, Some(4), None, true), Verdict::Absent);
        assert_eq!(judge(Some(4), None, Some(4), true), Verdict::Absent);
        let (none, some) = (Some(None::<u64>), Some(Some(3u64)));
        assert_eq!(judge(none, none, none, false), Verdict::Match);
        assert_eq!(judge(some, none, some, false), Verdict::Mismatch);
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
        assert!(t[0].v2 && t[0].memory && !t[0].cpuacct && !t[0].cpu);
        assert_eq!(t[0].hierarchy.dir("/a/b"), Path::new("/sys/fs/cgroup/a/b"));
    }

    #[test]
    fn the_self_check_leaves_out_the_agents_own_cgroups() {
        let root = tempfile::tempdir().unwrap();
        for d in ["a/b", "a/c", "d", "e/f"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        let mut t = target(false);
        t.hierarchy.mount = root.path().to_owned();
        let own = own_dir("0::/\n4:memory:/a/b\n2:cpuacct:/x\n", &t).unwrap();
        assert_eq!(own, root.path().join("a/b"));
        let mut got: Vec<String> = sample_dirs(root.path(), 10, Some(&own))
            .into_iter()
            .map(|(d, _)| d.strip_prefix(root.path()).unwrap().display().to_string())
            .collect();
        got.sort();
        assert_eq!(got, ["a/c", "d", "e", "e/f"]);
        assert_eq!(sample_dirs(root.path(), 2, None).len(), 2);
    }

    #[test]
    fn tables_find_by_id() {
        let recs = [5, 1, 9].map(|id| CgroupStats { id, ..record() });
        let t = Table::new(recs.to_vec());
        assert_eq!(t.get(9).map(|r| r.id), Some(9));
        assert!(t.get(2).is_none());
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
