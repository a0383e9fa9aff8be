//! Housekeeping: every container is collected on its own cadence
//! (`--housekeeping-interval`, backing off to `--max-housekeeping-interval`
//! while its counters do not move, with a little jitter), first right after
//! it is discovered. File reads run on one collector thread
//! (`worker.rs`), one container at a time, so the reactor never waits, a
//! node's second core stays free, and a stuck cgroup holds up only itself.
//!
//! With the eBPF cgroup iterator (`iter.rs`) containers are instead kept
//! on a common grid of `--housekeeping-interval` ticks, without jitter:
//! the containers due at one tick share one pass per hierarchy, which is
//! what makes the iterator cheap. Their collections still run one by one.

pub mod iter;
pub mod network;
pub mod process;
pub mod start;
mod worker;

use std::{
    cell::RefCell,
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};

use self::{
    iter::{IterSource, Round},
    network::NetworkReader,
    worker::{Done, Work, Worker},
};
use crate::{
    cache::StatsCache,
    cgroup::{
        container::{self, Context, Dirs},
        hierarchy::Hierarchies,
        read::Reader,
        stats::{Known, Sample},
    },
    config::Groups,
    errors::Chain,
    errors::ErrorCounts,
    messages::Msg,
    registry::Snapshot,
    telemetry::{Counter, Gauge, Metrics, Seconds},
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
    /// The eBPF cgroup iterator, when `--collector` chose it.
    pub iter: Option<IterSource>,
}

/// One container as the collector sees it.
#[derive(Debug, Default)]
pub struct Job {
    pub path: Arc<str>,
    pub dirs: Dirs,
    /// Kernfs id per hierarchy.
    pub ids: BTreeMap<u32, u64>,
}

/// The collector's own metrics.
#[derive(Debug, Default)]
pub struct CollectStats {
    pub collections: Counter,
    pub busy: Seconds,
    pub files_read: Counter,
    /// Abandoned threads still blocked in a hung collection.
    pub quarantined: Gauge,
}

impl Collector {
    /// Exports the collector's metrics and its iterator's.
    pub fn register(&self, m: &mut Metrics) {
        let st = &self.stats;
        m.register(
            "cgscope_collections",
            "Container collections (one sample of one container each)",
            st.collections.clone(),
        );
        m.register(
            "cgscope_collection_seconds",
            "Time spent collecting container statistics (wall time in the blocking pool)",
            st.busy.clone(),
        );
        m.register(
            "cgscope_collection_files_read",
            "cgroup and /proc files read by the collector",
            st.files_read.clone(),
        );
        m.register(
            "cgscope_collection_hung_threads",
            "Collector threads blocked in a read that hung (each such cgroup is skipped until its read returns)",
            st.quarantined.clone(),
        );
        self.errors.register(
            m,
            "Collection problems by reason (the value is absent for that sample); each reason is logged once",
        );
        if let Some(it) = &self.iter {
            it.stats.register(m);
        }
    }
}

thread_local! {
    static READER: RefCell<Reader> = RefCell::new(Reader::default());
}

impl Collector {
    /// One full sample of one container (blocking). `round`: the
    /// iterator passes it shares with the containers due with it.
    pub fn collect(&self, job: &Job, round: Option<&Round>) -> Sample {
        let start = Instant::now();
        let dirs = &job.dirs;
        let known = match &self.iter {
            Some(it) if !dirs.root => it.known(&job.ids, &job.path, round, &self.errors),
            _ => Known::default(),
        };
        let sample = READER.with(|r| {
            let mut r = r.borrow_mut();
            let before = r.reads;
            let mut s =
                container::sample(dirs, &self.groups, &self.ctx, &known, &mut r, &self.errors);
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
            self.stats.files_read.inc_by(r.reads - before);
            s
        });
        self.stats.collections.inc();
        self.stats.busy.inc_by(start.elapsed().as_secs_f64());
        sample
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    pub base: Duration,
    pub max: Duration,
}

struct Tracked {
    job: Arc<Job>,
    interval: Duration,
    /// Bumped on every (re)schedule so stale heap entries are ignored.
    generation: u64,
    in_flight: bool,
    /// Its collection hung and the thread running it has not returned:
    /// not collected again (nor another thread spent on it) until it has.
    quarantined: bool,
    /// False once the container is removed: no more collections.
    live: bool,
    last: Option<Arc<Sample>>,
    /// The kernel's OOM kill count last sent to the registry.
    reported_oom_kills: Option<u64>,
}

/// Where finished collections go: samples to the cache, the kernel's own
/// OOM kill counts to the registry (the floor of the OOM source's).
struct Sinks {
    cache: Arc<StatsCache>,
    registry: mpsc::Sender<Msg>,
}

/// After this a collection is given up (and its container retried later).
const STUCK: Duration = Duration::from_secs(10);

/// When a container is next due.
#[derive(Debug, Clone, Copy)]
struct Pacing {
    epoch: Instant,
    base: Duration,
    /// On the grid of `base` ticks from `epoch` (the iterator's rounds);
    /// else jittered.
    grid: bool,
}

impl Pacing {
    fn due(&self, now: Instant, interval: Duration, path: &str, seq: u64) -> Instant {
        if !self.grid {
            return now + jitter(interval, path, seq);
        }
        // The last tick at most an interval away: never later than asked,
        // and a collection that ran a little after its tick keeps that
        // tick's phase rather than slipping a whole one.
        let base = self.base.as_secs_f64();
        let ticks = ((now + interval).duration_since(self.epoch).as_secs_f64() / base).floor();
        let mut due = self.epoch + self.base.mul_f64(ticks);
        while due <= now {
            due += self.base;
        }
        due
    }
}

/// The scheduler, which runs until the registry goes away.
fn run(
    collector: Arc<Collector>,
    cache: Arc<StatsCache>,
    mut registry: watch::Receiver<Arc<Snapshot>>,
    registry_tx: mpsc::Sender<Msg>,
    cadence: Cadence,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let sinks = Sinks {
        cache,
        registry: registry_tx,
    };
    let pacing = Pacing {
        epoch: Instant::now(),
        base: cadence.base,
        grid: collector.iter.is_some(),
    };
    async move {
        let mut tracked: HashMap<Arc<str>, Tracked> = HashMap::new();
        let mut heap: BinaryHeap<Reverse<(Instant, u64, Arc<str>)>> = BinaryHeap::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u64, Vec<Done>)>();
        let mut worker_ids = 0u64;
        let mut new_worker = || {
            worker_ids += 1;
            Worker::spawn(worker_ids, collector.clone(), done_tx.clone())
        };
        let mut worker = match new_worker() {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %Chain(&e), "cannot start the collector thread");
                return;
            }
        };
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        // Abandoned threads still blocked, by id: the path each hangs in.
        let mut abandoned: HashMap<u64, Arc<str>> = HashMap::new();
        let mut seq = 0u64;
        loop {
            let next = heap.peek().map(|Reverse((t, _, _))| *t);
            tokio::select! {
                changed = registry.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let snapshot = registry.borrow_and_update().clone();
                    sync(&snapshot, &collector, &sinks.cache, &mut tracked, &mut heap, &mut seq);
                }
                _ = sleep_until(next) => {
                    let now = Instant::now();
                    let mut due = Vec::new();
                    while let Some(Reverse((at, generation, path))) = heap.peek().cloned() {
                        if at > now {
                            break;
                        }
                        heap.pop();
                        let Some(t) = tracked.get_mut(&path) else { continue };
                        if t.generation != generation || t.in_flight || t.quarantined {
                            continue;
                        }
                        t.in_flight = true;
                        due.push((t.job.clone(), generation));
                    }
                    let round = collector.iter.as_ref().and_then(|it| it.round(due.len()));
                    for (job, generation) in due {
                        let mut work = Work { job, generation, round: round.clone() };
                        // A thread that died (it cannot panic: collections
                        // are caught) is replaced once.
                        if let Err(w) = worker.send(work) {
                            work = w;
                            match new_worker() {
                                Ok(w) => worker = w,
                                Err(e) => tracing::error!(error = %Chain(&e), "cannot restart the collector thread"),
                            }
                            let _ = worker.send(work);
                        }
                    }
                }
                _ = watchdog.tick() => {
                    let Some((path, _)) = worker.stuck(STUCK) else { continue };
                    collector.errors.record(
                        "stuck",
                        format!("collecting {path} took longer than {STUCK:?}; skipped until that read returns, the others on a new thread"),
                    );
                    let fresh = match new_worker() {
                        Ok(w) => w,
                        Err(e) => {
                            tracing::error!(error = %Chain(&e), "cannot start another collector thread");
                            continue;
                        }
                    };
                    let old = std::mem::replace(&mut worker, fresh);
                    abandoned.insert(old.id, path.clone());
                    old.abandon();
                    collector.stats.quarantined.set(abandoned.len() as i64);
                    // What the old thread still had queued is due again now.
                    let now = Instant::now();
                    for (p, t) in tracked.iter_mut().filter(|(_, t)| t.in_flight) {
                        t.in_flight = false;
                        if *p == path {
                            t.quarantined = true;
                        } else {
                            heap.push(Reverse((now, t.generation, p.clone())));
                        }
                    }
                }
                Some((from, results)) = done_rx.recv() => {
                    if from == worker.id {
                        settle(results, &sinks, &mut tracked, &mut heap, &mut seq, cadence, pacing);
                    } else if let Some(path) = abandoned.remove(&from) {
                        // The hung read returned and its thread is gone: the
                        // path is tried again, at the slowest pace.
                        collector.stats.quarantined.set(abandoned.len() as i64);
                        if let Some(t) = tracked.get_mut(&path) {
                            t.quarantined = false;
                            let result = vec![(path, t.generation, None)];
                            settle(result, &sinks, &mut tracked, &mut heap, &mut seq, cadence, pacing);
                        }
                    }
                }
            }
        }
    }
}

/// Stores finished collections and schedules each container's next one.
fn settle(
    results: Vec<Done>,
    sinks: &Sinks,
    tracked: &mut HashMap<Arc<str>, Tracked>,
    heap: &mut BinaryHeap<Reverse<(Instant, u64, Arc<str>)>>,
    seq: &mut u64,
    cadence: Cadence,
    pacing: Pacing,
) {
    for (path, generation, sample) in results {
        let Some(t) = tracked.get_mut(&path) else {
            continue;
        };
        t.in_flight = false;
        if !t.live {
            continue;
        }
        if t.generation != generation {
            // Rescheduled while this ran (its directories changed): the
            // entry for the new generation may have been skipped as in
            // flight, so run it now.
            heap.push(Reverse((Instant::now(), t.generation, path)));
            continue;
        }
        let Some(sample) = sample else {
            // Failed or stuck: try again at the slowest pace.
            t.interval = cadence.max;
            *seq += 1;
            let due = pacing.due(Instant::now(), t.interval, &path, *seq);
            heap.push(Reverse((due, t.generation, path)));
            continue;
        };
        let kills = sample.memory.as_ref().and_then(|m| m.events.local_oom_kill);
        if let Some(kills) = kills.filter(|k| t.reported_oom_kills != Some(*k)) {
            // Full queue: sent with a later collection instead.
            let msg = Msg::KernelOomKills {
                path: path.clone(),
                kills,
            };
            if sinks.registry.try_send(msg).is_ok() {
                t.reported_oom_kills = Some(kills);
            }
        }
        let unchanged = t.last.as_ref().is_some_and(|l| sample.same_usage(l));
        t.interval = if unchanged {
            (t.interval * 2).min(cadence.max)
        } else {
            cadence.base
        };
        // Comparing needs no timestamp: keep the stored sample.
        t.last = Some(sinks.cache.push(&path, sample));
        *seq += 1;
        let due = pacing.due(Instant::now(), t.interval, &path, *seq);
        heap.push(Reverse((due, t.generation, path)));
    }
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
            .is_none_or(|t| t.job.ids != c.ids || !t.live);
        if ids_changed {
            *seq += 1;
            let t = tracked.entry(c.path.clone()).or_insert_with(|| Tracked {
                job: Arc::default(),
                interval: Duration::ZERO,
                generation: *seq,
                in_flight: false,
                quarantined: false,
                live: true,
                last: None,
                reported_oom_kills: None,
            });
            t.job = Arc::new(Job {
                path: c.path.clone(),
                dirs: Dirs::new(&collector.hierarchies, &c.ids, &c.path),
                ids: c.ids.clone(),
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterator_rounds_keep_every_container_on_one_grid() {
        let epoch = Instant::now();
        let base = Duration::from_secs(10);
        let p = Pacing {
            epoch,
            base,
            grid: true,
        };
        let secs = |s: f64| epoch + Duration::from_secs_f64(s);
        // Discovered off the grid: the last tick within an interval.
        assert_eq!(p.due(secs(3.0), base, "/a", 1), secs(10.0));
        assert_eq!(p.due(secs(6.0), base, "/b", 2), secs(10.0));
        // A backoff between ticks: never later than asked.
        assert_eq!(p.due(secs(10.3), base.mul_f64(1.5), "/b", 2), secs(20.0));
        // Collected late in its round: keeps the round's phase.
        assert_eq!(p.due(secs(10.4), base, "/a", 3), secs(20.0));
        // Backed off: still on the grid.
        assert_eq!(p.due(secs(20.2), base * 4, "/a", 4), secs(60.0));
        // Never in the past.
        assert!(p.due(secs(20.2), Duration::ZERO, "/a", 5) > secs(20.2));
    }

    #[test]
    fn without_the_iterator_containers_are_jittered() {
        let now = Instant::now();
        let base = Duration::from_secs(10);
        let p = Pacing {
            epoch: now,
            base,
            grid: false,
        };
        let a = p.due(now, base, "/a", 1);
        let b = p.due(now, base, "/b", 1);
        assert!(a >= now + base && a <= now + base.mul_f64(1.1));
        assert_ne!(a, b, "containers discovered together spread out");
    }
}
