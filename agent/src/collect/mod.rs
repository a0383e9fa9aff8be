//! Housekeeping: every container is collected on its own cadence
//! (`--housekeeping-interval`, backing off to `--max-housekeeping-interval`
//! while its counters do not move, with a little jitter), first right after
//! it is discovered. File reads run on the blocking pool, one at a time,
//! so the reactor never waits and a stuck cgroup holds up only itself.

pub mod network;
pub mod process;

use std::{
    cell::RefCell,
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch, Semaphore};

use self::network::NetworkReader;
use crate::{
    cache::StatsCache,
    cgroup::{
        container::{self, Context, Dirs},
        hierarchy::Hierarchies,
        read::Reader,
        stats::Sample,
    },
    config::Groups,
    errors::ErrorCounts,
    registry::Snapshot,
};

/// Everything a collection needs, shared by the blocking tasks.
#[derive(Debug)]
pub struct Collector {
    pub hierarchies: Arc<Hierarchies>,
    pub groups: Groups,
    pub ctx: Context,
    pub proc_root: PathBuf,
    pub network: NetworkReader,
    pub errors: ErrorCounts,
    pub stats: CollectStats,
}

#[derive(Debug, Default)]
pub struct CollectStats {
    pub collections: AtomicU64,
    /// Total time spent collecting, in nanoseconds.
    pub busy_ns: AtomicU64,
    pub files_read: AtomicU64,
}

thread_local! {
    static READER: RefCell<Reader> = RefCell::new(Reader::default());
}

impl Collector {
    /// One full sample of one container (blocking).
    pub fn collect(&self, dirs: &Dirs) -> Sample {
        let start = Instant::now();
        let sample = READER.with(|r| {
            let mut r = r.borrow_mut();
            let before = r.reads;
            let mut s = container::sample(dirs, &self.groups, &self.ctx, &mut r, &self.errors);
            if let (true, Some(procs_dir)) =
                (self.groups.process || self.groups.network, dirs.procs_dir())
            {
                let pids = process::pids(procs_dir, &mut r, &self.errors).unwrap_or_default();
                if self.groups.process {
                    let mut p = s.processes.take().unwrap_or_default();
                    let (root, e) = (&self.proc_root, &self.errors);
                    process::processes(procs_dir, &pids, root, &mut r, e, &mut p);
                    s.processes = Some(p);
                }
                if self.groups.network {
                    // The host's interfaces belong to `/` only.
                    let pid = if dirs.root {
                        Some(self.network.host_pid)
                    } else {
                        pids.first().copied()
                    };
                    if let Some(pid) = pid {
                        let (root, e) = (&self.proc_root, &self.errors);
                        s.network = self.network.read(root, pid, dirs.root, &mut r, e);
                    }
                }
            }
            self.stats
                .files_read
                .fetch_add(r.reads - before, Ordering::Relaxed);
            s
        });
        self.stats.collections.fetch_add(1, Ordering::Relaxed);
        self.stats
            .busy_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        sample
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    pub base: Duration,
    pub max: Duration,
}

struct Tracked {
    dirs: Arc<Dirs>,
    ids: std::collections::BTreeMap<u32, u64>,
    interval: Duration,
    /// Bumped on every (re)schedule so stale heap entries are ignored.
    generation: u64,
    in_flight: bool,
    /// False once the container is removed: no more collections.
    live: bool,
    last: Option<Arc<Sample>>,
}

/// After this a collection is given up (and its container retried later).
const STUCK: Duration = Duration::from_secs(10);

/// How many collections run at once. One keeps up with 5,000 containers
/// every 10 s (about 0.6 ms each) and never takes more than one core, so
/// discovery, OOM handling and scrapes are not starved on a small node.
const CONCURRENCY: usize = 1;

/// Runs the scheduler until the registry goes away.
pub fn spawn(
    collector: Arc<Collector>,
    cache: Arc<StatsCache>,
    mut registry: watch::Receiver<Arc<Snapshot>>,
    cadence: Cadence,
) {
    tokio::spawn(async move {
        let mut tracked: HashMap<Arc<str>, Tracked> = HashMap::new();
        let mut heap: BinaryHeap<Reverse<(Instant, u64, Arc<str>)>> = BinaryHeap::new();
        let permits = Arc::new(Semaphore::new(CONCURRENCY));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Arc<str>, u64, Option<Sample>)>();
        let mut seq = 0u64;
        loop {
            let next = heap.peek().map(|Reverse((t, _, _))| *t);
            tokio::select! {
                changed = registry.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let snapshot = registry.borrow_and_update().clone();
                    sync(&snapshot, &collector, &cache, &mut tracked, &mut heap, &mut seq);
                }
                _ = sleep_until(next) => {
                    let now = Instant::now();
                    while let Some(Reverse((due, generation, path))) = heap.peek().cloned() {
                        if due > now {
                            break;
                        }
                        heap.pop();
                        let Some(t) = tracked.get_mut(&path) else { continue };
                        if t.generation != generation || t.in_flight {
                            continue;
                        }
                        t.in_flight = true;
                        let (c, d, tx, p) = (collector.clone(), t.dirs.clone(), done_tx.clone(), permits.clone());
                        tokio::spawn(async move {
                            let Ok(_permit) = p.acquire_owned().await else { return };
                            let errors = c.clone();
                            let work = tokio::task::spawn_blocking(move || c.collect(&d));
                            // A read that hangs (a frozen cgroup, a stuck
                            // filesystem) gives its permit back after a
                            // while, so the other containers go on; its
                            // thread finishes on its own.
                            match tokio::time::timeout(STUCK, work).await {
                                Ok(Ok(sample)) => {
                                    let _ = tx.send((path, generation, Some(sample)));
                                }
                                Ok(Err(_)) => {
                                    let _ = tx.send((path, generation, None));
                                }
                                Err(_) => {
                                    errors.errors.record(
                                        "stuck",
                                        format!("collecting {path} took longer than {STUCK:?}; skipped"),
                                    );
                                    let _ = tx.send((path, generation, None));
                                }
                            }
                        });
                    }
                }
                Some((path, generation, sample)) = done_rx.recv() => {
                    let Some(t) = tracked.get_mut(&path) else { continue };
                    t.in_flight = false;
                    if !t.live {
                        continue;
                    }
                    if t.generation != generation {
                        // Rescheduled while this ran (its directories
                        // changed): the entry for the new generation may
                        // have been skipped as in flight, so run it now.
                        heap.push(Reverse((Instant::now(), t.generation, path)));
                        continue;
                    }
                    let Some(sample) = sample else {
                        // Failed or stuck: try again at the slowest pace.
                        t.interval = cadence.max;
                        seq += 1;
                        let due = Instant::now() + jitter(t.interval, &path, seq);
                        heap.push(Reverse((due, t.generation, path)));
                        continue;
                    };
                    let unchanged = t.last.as_ref().is_some_and(|l| sample.same_usage(l));
                    t.interval = if unchanged { (t.interval * 2).min(cadence.max) } else { cadence.base };
                    // Comparing needs no timestamp: keep the stored sample.
                    t.last = Some(cache.push(&path, sample));
                    seq += 1;
                    let due = Instant::now() + jitter(t.interval, &path, seq);
                    heap.push(Reverse((due, t.generation, path)));
                }
            }
        }
    });
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Up to +10 % of the interval, different per container and per round, so
/// containers discovered together do not stay in lock step.
fn jitter(interval: Duration, path: &str, seq: u64) -> Duration {
    let mut h = seq ^ 0x9e37_79b9_7f4a_7c15;
    for b in path.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    interval + interval.mul_f64((h % 1000) as f64 / 10_000.0)
}

/// Starts tracking new containers (collected at once), stops collecting
/// removed ones (their last sample stays for the retention) and forgets
/// those the registry has dropped.
fn sync(
    snapshot: &Snapshot,
    collector: &Collector,
    cache: &StatsCache,
    tracked: &mut HashMap<Arc<str>, Tracked>,
    heap: &mut BinaryHeap<Reverse<(Instant, u64, Arc<str>)>>,
    seq: &mut u64,
) {
    let now = Instant::now();
    let mut known = std::collections::HashSet::with_capacity(snapshot.containers.len());
    for c in &snapshot.containers {
        known.insert(c.path.clone());
        if !c.is_live() {
            if let Some(t) = tracked.get_mut(&c.path) {
                // No more collections; the cache keeps the last sample.
                t.live = false;
                t.generation += 1;
            }
            continue;
        }
        let ids_changed = tracked
            .get(&c.path)
            .is_none_or(|t| t.ids != c.ids || !t.live);
        if ids_changed {
            *seq += 1;
            let t = tracked.entry(c.path.clone()).or_insert_with(|| Tracked {
                dirs: Arc::new(Dirs::default()),
                ids: Default::default(),
                interval: Duration::ZERO,
                generation: *seq,
                in_flight: false,
                live: true,
                last: None,
            });
            t.dirs = Arc::new(Dirs::new(&collector.hierarchies, &c.ids, &c.path));
            t.ids = c.ids.clone();
            t.live = true;
            t.generation = *seq;
            heap.push(Reverse((now, t.generation, c.path.clone())));
        }
    }
    tracked.retain(|path, _| {
        let keep = known.contains(path);
        if !keep {
            cache.remove(path);
        }
        keep
    });
    if tracked.capacity() > 64 && tracked.len() < tracked.capacity() / 4 {
        tracked.shrink_to_fit();
    }
}
