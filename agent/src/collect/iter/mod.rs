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
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agent_common::CgroupStats;

use self::values::{known_from, merge, Target};
use crate::{
    cgroup::{hierarchy::Hierarchies, stats::Known},
    config::Groups,
    ebpf::iter::CgroupIter,
    errors::ErrorCounts,
    telemetry::{counter, Counter, Counters, Metrics, Seconds},
};

// `values` first: `check` uses its `known_fields!`.
#[macro_use]
mod values;
mod check;

pub use self::values::Fields;

/// A shared pass serves its round while this young; the round's later
/// collections walk again, so no value is older than this.
const MAX_AGE: Duration = Duration::from_secs(1);

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

/// The iterator's own metrics.
#[derive(Debug)]
pub struct IterStats {
    passes: Counters<1>,
    /// Passes over a whole hierarchy.
    pub full_passes: Counter,
    /// Passes rooted at one container's directory.
    pub own_passes: Counter,
    pub pass_time: Seconds,
    pub records: Counter,
    /// Passes that found more cgroups than the output array holds (the
    /// rest are read from files).
    pub overflows: Counter,
}

impl Default for IterStats {
    fn default() -> Self {
        let passes = Counters::default();
        Self {
            full_passes: counter(&passes, [("scope", "hierarchy")]),
            own_passes: counter(&passes, [("scope", "container")]),
            passes,
            pass_time: Seconds::default(),
            records: Counter::default(),
            overflows: Counter::default(),
        }
    }
}

impl IterStats {
    pub fn register(&self, m: &mut Metrics) {
        m.register(
            "cgscope_collector_iter_passes",
            "eBPF cgroup iterator passes: over a whole hierarchy (shared by the containers due together) or rooted at one container",
            self.passes.clone(),
        );
        m.register(
            "cgscope_collector_iter_pass_seconds",
            "Wall time of the iterator's passes (the kernel holds cgroup_mutex during each)",
            self.pass_time.clone(),
        );
        m.register(
            "cgscope_collector_iter_cgroups",
            "cgroups read by the iterator's passes",
            self.records.clone(),
        );
        m.register(
            "cgscope_collector_iter_overflows",
            "Passes that met more cgroups than the iterator's output holds (the rest were read from files)",
            self.overflows.clone(),
        );
    }
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
        st.pass_time.inc_by(pass.took.as_secs_f64());
        st.records.inc_by(pass.records.len() as u64);
        if pass.overflow {
            st.overflows.inc();
        }
        let mut costs = self.costs.lock().unwrap_or_else(|e| e.into_inner());
        match full {
            Some(h) => {
                st.full_passes.inc();
                Costs::add(costs.full.entry(h).or_default(), ns);
            }
            None => {
                st.own_passes.inc();
                Costs::add(&mut costs.own, ns);
            }
        }
        Ok(pass.records)
    }
}

#[cfg(test)]
mod tests {
    use super::{values::testing::record, *};

    #[test]
    fn tables_find_by_id() {
        let recs = [5, 1, 9].map(|id| CgroupStats { id, ..record() });
        let t = Table::new(recs.to_vec());
        assert_eq!(t.get(9).map(|r| r.id), Some(9));
        assert!(t.get(2).is_none());
    }
}
