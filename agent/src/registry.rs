//! The registry: the one owner of the set of known containers.
//!
//! One task owns the state; the discovery sources send it changes and walk
//! results, and it publishes an immutable snapshot after each batch for the
//! readers (the exporter, the collectors). Removed containers stay in the
//! snapshot for a retention period so their last values and OOM counts can
//! still be scraped (tokio-console's aggregator keeps closed tasks the same way).

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, watch};

use crate::{
    cgroup::identity::Identity,
    discovery::DiscoveryStats,
    events::{Event, EventData, EventType, OomKillData, SharedEvents},
    messages::{Change, ChangeKind, Metadata, Msg, OomKill, WalkResult},
    oom::OomStats,
    telemetry::{Gauge, Labels, Metrics, Series},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The cgroup path relative to the hierarchy mounts, e.g. `/kubepods/…`.
    pub path: Arc<str>,
    pub identity: Identity,
    /// Hierarchy id → cgroup id, for every hierarchy the directory is in.
    pub ids: BTreeMap<u32, u64>,
    pub created: SystemTime,
    /// `created` comes from the kernel's event, not from a walk's estimate.
    pub created_exact: bool,
    /// When the last of its directories went away.
    pub removed: Option<SystemTime>,
    /// Tasks of this container killed by the OOM killer.
    pub oom_kills: u64,
    /// OOMs where this was the memory cgroup that ran out.
    pub ooms: u64,
    /// Name, image and Kubernetes labels from the runtime providers.
    pub metadata: Option<Arc<Metadata>>,
}

impl ContainerInfo {
    pub fn is_live(&self) -> bool {
        self.removed.is_none()
    }

    #[cfg(test)]
    pub fn for_tests(path: &str) -> Self {
        Self {
            path: Arc::from(path),
            identity: Identity::parse(path),
            ids: BTreeMap::new(),
            created: SystemTime::UNIX_EPOCH,
            created_exact: false,
            removed: None,
            oom_kills: 0,
            ooms: 0,
            metadata: None,
        }
    }
}

/// Messages queued for the registry before senders wait: a burst of
/// discovery batches and OOM kills while a snapshot is built.
const QUEUE: usize = 4096;

/// How the other tasks reach the registry: its latest snapshot, and its
/// input.
#[derive(Debug, Clone)]
pub struct Handle {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub tx: mpsc::Sender<Msg>,
}

/// What readers see: every known container, sorted by path.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub containers: Vec<Arc<ContainerInfo>>,
}

impl Snapshot {
    #[cfg(test)]
    pub fn get(&self, path: &str) -> Option<&Arc<ContainerInfo>> {
        self.containers
            .binary_search_by(|c| (*c.path).cmp(path))
            .ok()
            .map(|i| &self.containers[i])
    }

    pub fn live(&self) -> usize {
        self.containers.iter().filter(|c| c.is_live()).count()
    }
}

/// (hierarchy id, cgroup id).
type HierarchyId = (u32, u64);

struct Entry {
    info: Arc<ContainerInfo>,
    /// When an event source last changed this entry (walks ignore entries
    /// changed after they started).
    last_event: Instant,
    removed_at: Option<Instant>,
    /// Created while the agent watched: every kill the kernel counted for
    /// it happened since.
    born_watched: bool,
    /// The kernel's kill counter when the agent first read it (0 for a
    /// container born watched): kills before are not the agent's to count.
    kernel_oom_base: Option<u64>,
    /// Kills counted for the path before it was removed and re-created
    /// within the retention: the new cgroup's kernel counter starts at 0.
    carried_kills: u64,
}

/// How long a kill the kernel counted may take to arrive from the OOM
/// source before it counts as missed (ring buffer and kmsg deliver in
/// milliseconds).
const OOM_GRACE: Duration = Duration::from_secs(5);

pub struct Registry {
    entries: BTreeMap<Arc<str>, Entry>,
    by_id: HashMap<(u32, u64), Arc<str>>,
    retention: Duration,
    events: SharedEvents,
    stats: Arc<DiscoveryStats>,
    oom_stats: Arc<OomStats>,
    walked_once: bool,
    /// The first walk is in: containers added from now on are new.
    watching: bool,
    /// Containers whose kernel kill count exceeded what the OOM source
    /// had delivered: the count to reach, checked once due.
    oom_floors: HashMap<Arc<str>, (Instant, u64)>,
}

impl Registry {
    pub fn new(
        retention: Duration,
        events: SharedEvents,
        stats: Arc<DiscoveryStats>,
        oom_stats: Arc<OomStats>,
    ) -> Self {
        Self {
            entries: BTreeMap::new(),
            by_id: HashMap::new(),
            retention,
            events,
            stats,
            oom_stats,
            walked_once: false,
            watching: false,
            oom_floors: HashMap::new(),
        }
    }

    /// The owner task, which runs until every [`Handle`] is gone, and the
    /// first handle.
    pub fn start(
        mut self,
        metrics: &mut Metrics,
    ) -> (Handle, impl Future<Output = ()> + Send + 'static) {
        let containers = Series::<Labels<1>, Gauge>::default();
        let (live, removed) = (
            containers.get_or_create_owned(&[("state", "live")]),
            containers.get_or_create_owned(&[("state", "removed")]),
        );
        metrics.register(
            "cgscope_registry_containers",
            "Containers (cgroups) the registry knows, live or removed and kept for the retention period",
            containers,
        );
        let (input, mut rx) = mpsc::channel::<Msg>(QUEUE);
        let (tx, snapshot) = watch::channel(Arc::new(Snapshot::default()));
        let handle = Handle {
            snapshot,
            tx: input,
        };
        let task = async move {
            let mut gc = tokio::time::interval(
                Duration::from_secs(1).min(self.retention.max(Duration::from_millis(100))),
            );
            gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let changed = tokio::select! {
                    msg = rx.recv() => {
                        let Some(msg) = msg else { break };
                        let mut changed = self.apply(msg);
                        // Coalesce what is already queued into one snapshot.
                        for _ in 0..1024 {
                            match rx.try_recv() {
                                Ok(msg) => changed |= self.apply(msg),
                                Err(_) => break,
                            }
                        }
                        changed
                    }
                    _ = gc.tick() => {
                        let now = Instant::now();
                        self.check_oom_floors(now) | self.collect_garbage(now)
                    }
                };
                if changed {
                    let snapshot = self.snapshot();
                    let n = snapshot.live();
                    live.set(n as i64);
                    removed.set((snapshot.containers.len() - n) as i64);
                    tx.send_replace(Arc::new(snapshot));
                }
            }
        };
        (handle, task)
    }

    /// Applies one message; true when the snapshot changed.
    pub fn apply(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Changes(changes) => {
                let now = Instant::now();
                let mut changed = false;
                for c in changes {
                    changed |= match c.kind {
                        ChangeKind::Added => self.add(&c, now),
                        ChangeKind::Removed => self.remove(&c, now),
                    };
                }
                changed
            }
            Msg::Walked(result) => self.reconcile(result),
            Msg::Oom(kill) => self.oom(kill),
            Msg::KernelOomKills { path, kills } => {
                self.kernel_oom_kills(path, kills, Instant::now());
                false
            }
            Msg::Metadata { path, metadata } => match self.entries.get_mut(&path) {
                Some(e) if e.info.metadata.as_ref() != Some(&metadata) => {
                    Arc::make_mut(&mut e.info).metadata = Some(metadata);
                    true
                }
                _ => false,
            },
            Msg::Resolve {
                hierarchy,
                id,
                reply,
            } => {
                let _ = reply.send(self.by_id.get(&(hierarchy, id)).cloned());
                false
            }
        }
    }

    fn add(&mut self, c: &Change, now: Instant) -> bool {
        let is_new = self
            .entries
            .get(&c.path)
            .is_none_or(|e| e.removed_at.is_some());
        if is_new {
            // A path re-created within its retention (a restart policy
            // reuses it) keeps its OOM counts: reset to 0, a counter that
            // climbs back past its old value between two scrapes hides
            // kills from increase(), and a restart loop after OOM kills is
            // exactly when they matter. The start time shows the restart.
            let (oom_kills, ooms) = self
                .entries
                .get(&c.path)
                .map_or((0, 0), |e| (e.info.oom_kills, e.info.ooms));
            let info = ContainerInfo {
                path: c.path.clone(),
                identity: Identity::parse(&c.path),
                ids: BTreeMap::from([(c.hierarchy, c.id)]),
                created: c.at,
                created_exact: c.kernel_time,
                removed: None,
                oom_kills,
                ooms,
                metadata: None,
            };
            self.record(EventType::ContainerCreation, &c.path, c.at);
            // The discovery benchmark measures mkdir → here from this line.
            tracing::trace!(path = %c.path, kernel_time = c.kernel_time, "registered container");
            self.entries.insert(
                c.path.clone(),
                Entry {
                    info: Arc::new(info),
                    last_event: now,
                    removed_at: None,
                    born_watched: self.watching || c.kernel_time,
                    kernel_oom_base: None,
                    carried_kills: oom_kills,
                },
            );
        } else if let Some(e) = self.entries.get_mut(&c.path) {
            e.last_event = now;
            let info = Arc::make_mut(&mut e.info);
            let known = info.ids.get(&c.hierarchy).copied();
            if known == Some(c.id) || (c.id == 0 && known.is_some()) {
                return false;
            }
            info.ids.insert(c.hierarchy, c.id);
            // The kernel's time of the first mkdir in any hierarchy wins.
            if c.kernel_time && (!info.created_exact || c.at < info.created) {
                info.created = c.at;
                info.created_exact = true;
            }
        }
        if c.id != 0 {
            self.by_id.insert((c.hierarchy, c.id), c.path.clone());
        }
        true
    }

    fn remove(&mut self, c: &Change, now: Instant) -> bool {
        let Some(e) = self.entries.get_mut(&c.path) else {
            return false;
        };
        if e.removed_at.is_some() {
            return false;
        }
        e.last_event = now;
        let info = Arc::make_mut(&mut e.info);
        match info.ids.get(&c.hierarchy) {
            Some(&id) if c.id == 0 || c.id == id => {
                info.ids.remove(&c.hierarchy);
            }
            _ => return false,
        }
        if info.ids.is_empty() {
            info.removed = Some(c.at);
            e.removed_at = Some(now);
            self.record(EventType::ContainerDeletion, &c.path, c.at);
        }
        true
    }

    /// Makes the registry equal to what the walk saw, except for entries an
    /// event source changed after the walk started (the walk may predate them).
    fn reconcile(&mut self, walk: WalkResult) -> bool {
        let repair = self.walked_once;
        self.walked_once = true;
        let mut seen: HashMap<Arc<str>, Vec<&crate::messages::Found>> = HashMap::new();
        for f in &walk.found {
            seen.entry(f.path.clone()).or_default().push(f);
        }
        let mut changed = false;
        for (path, found) in &seen {
            let fresh = self
                .entries
                .get(path)
                .is_some_and(|e| e.last_event >= walk.started);
            if fresh {
                continue;
            }
            let existed = self
                .entries
                .get(path)
                .is_some_and(|e| e.removed_at.is_none());
            for f in found {
                let c = Change {
                    kind: ChangeKind::Added,
                    hierarchy: f.hierarchy,
                    id: f.id,
                    path: path.clone(),
                    at: f.created,
                    kernel_time: false,
                };
                let missing = self.entries.get(path).is_none_or(|e| {
                    e.removed_at.is_some() || !e.info.ids.contains_key(&f.hierarchy)
                });
                if missing {
                    changed |= self.add(&c, walk.started);
                }
            }
            if repair && !existed {
                self.stats.repairs_added.inc();
                tracing::debug!(%path, "walk found a cgroup the event source missed");
            }
        }
        let stale: Vec<(Arc<str>, Vec<HierarchyId>)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.removed_at.is_none() && e.last_event < walk.started)
            .filter_map(|(path, e)| {
                let found = seen.get(path);
                let gone: Vec<(u32, u64)> = e
                    .info
                    .ids
                    .iter()
                    .filter(|(h, _)| walk.hierarchies.contains(h))
                    .filter(|(h, _)| !found.is_some_and(|f| f.iter().any(|f| f.hierarchy == **h)))
                    .map(|(h, id)| (*h, *id))
                    .collect();
                (!gone.is_empty()).then(|| (path.clone(), gone))
            })
            .collect();
        let now = SystemTime::now();
        for (path, gone) in stale {
            let mut removed_container = false;
            for (h, id) in gone {
                changed |= self.remove(
                    &Change {
                        kind: ChangeKind::Removed,
                        hierarchy: h,
                        id,
                        path: path.clone(),
                        at: now,
                        kernel_time: false,
                    },
                    walk.started,
                );
                removed_container = self
                    .entries
                    .get(&path)
                    .is_some_and(|e| e.removed_at.is_some());
            }
            if repair && removed_container {
                self.stats.repairs_removed.inc();
                tracing::debug!(%path, "walk found a removed cgroup the event source missed");
            }
        }
        self.watching = true;
        changed
    }

    /// Counts a kill against the victim's container and the OOM'd memory
    /// cgroup's, removed ones included (within their retention), and
    /// records cAdvisor's two events.
    fn oom(&mut self, kill: OomKill) -> bool {
        // The OOM benchmark measures the kernel's kill → here from this line.
        tracing::trace!(pid = kill.pid, victim = ?kill.victim, "recorded OOM kill");
        let mut changed = false;
        if let Some(e) = kill.victim.as_ref().and_then(|v| self.entries.get_mut(v)) {
            Arc::make_mut(&mut e.info).oom_kills += 1;
            changed = true;
        } else if let Some(v) = &kill.victim {
            self.oom_stats.errors.record(
                "container_unknown",
                format!("OOM kill in {v}, a cgroup that is not (or no longer) tracked"),
            );
        }
        if let Some(e) = kill.oom.as_ref().and_then(|o| self.entries.get_mut(o)) {
            Arc::make_mut(&mut e.info).ooms += 1;
            changed = true;
        }
        let mut store = self.events.lock().unwrap_or_else(|e| e.into_inner());
        store.add(Event {
            container_name: kill.oom.as_deref().unwrap_or("/").to_owned(),
            timestamp: kill.at,
            event_type: EventType::Oom,
            event_data: EventData::default(),
        });
        store.add(Event {
            container_name: kill.victim.as_deref().unwrap_or("/").to_owned(),
            timestamp: kill.at,
            event_type: EventType::OomKill,
            event_data: EventData {
                oom_kill: Some(OomKillData {
                    pid: kill.pid,
                    process_name: kill.comm,
                    constraint: kill.constraint,
                }),
            },
        });
        changed
    }

    /// The kernel's own counter is the floor of `oom_kills`: a kill it
    /// counted that the OOM source has not delivered within the grace is
    /// added and counted as missed.
    fn kernel_oom_kills(&mut self, path: Arc<str>, kills: u64, now: Instant) {
        let Some(e) = self.entries.get_mut(&path) else {
            return;
        };
        let base = *e
            .kernel_oom_base
            .get_or_insert(if e.born_watched { 0 } else { kills });
        let floor = e.carried_kills + kills.saturating_sub(base);
        if floor > e.info.oom_kills {
            self.oom_floors
                .entry(path)
                .or_insert((now + OOM_GRACE, floor))
                .1 = floor;
        }
    }

    fn check_oom_floors(&mut self, now: Instant) -> bool {
        if self.oom_floors.is_empty() {
            return false;
        }
        let due: Vec<Arc<str>> = self
            .oom_floors
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        let mut changed = false;
        for path in due {
            let Some((_, floor)) = self.oom_floors.remove(&path) else {
                continue;
            };
            let Some(e) = self.entries.get_mut(&path) else {
                continue;
            };
            let missed = floor.saturating_sub(e.info.oom_kills);
            if missed == 0 {
                continue;
            }
            Arc::make_mut(&mut e.info).oom_kills = floor;
            self.oom_stats.missed(&path, missed);
            changed = true;
        }
        changed
    }

    fn collect_garbage(&mut self, now: Instant) -> bool {
        let retention = self.retention;
        let expired: Vec<Arc<str>> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.removed_at
                    .is_some_and(|t| now.duration_since(t) >= retention)
            })
            .map(|(p, _)| p.clone())
            .collect();
        if expired.is_empty() {
            return false;
        }
        for path in &expired {
            self.entries.remove(path);
            self.oom_floors.remove(path);
        }
        // Ids of expired paths, and ids a path had before it was re-created.
        self.by_id.retain(|_, p| self.entries.contains_key(p));
        if self.entries.len() < self.by_id.capacity() / 4 {
            self.by_id.shrink_to_fit();
        }
        true
    }

    fn record(&self, event_type: EventType, path: &str, at: SystemTime) {
        let mut store = self.events.lock().unwrap_or_else(|e| e.into_inner());
        store.add(Event {
            container_name: path.to_owned(),
            timestamp: at,
            event_type,
            event_data: EventData::default(),
        });
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            containers: self.entries.values().map(|e| e.info.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::{
        events::{parse_age_policy, parse_count_policy, EventStore},
        messages::Found,
    };
    use tokio::sync::oneshot;

    fn registry(retention: Duration) -> Registry {
        // The tests' events are dated in 1970's first minutes.
        let events = EventStore::new(
            parse_count_policy("").unwrap(),
            parse_age_policy("").unwrap(),
        )
        .at(|| SystemTime::UNIX_EPOCH + Duration::from_secs(3600))
        .shared();
        Registry::new(retention, events, Arc::default(), Arc::default())
    }

    fn change(kind: ChangeKind, h: u32, id: u64, path: &str, secs: u64) -> Change {
        Change {
            kind,
            hierarchy: h,
            id,
            path: Arc::from(path),
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            kernel_time: true,
        }
    }

    fn found(h: u32, id: u64, path: &str) -> Found {
        Found {
            hierarchy: h,
            id,
            path: Arc::from(path),
            created: SystemTime::UNIX_EPOCH,
        }
    }

    fn totals(r: &Registry) -> (u64, u64) {
        let s = r.events.lock().unwrap();
        (s.lifecycle("creation"), s.lifecycle("deletion"))
    }

    #[test]
    fn one_container_across_hierarchies() {
        let mut r = registry(Duration::from_secs(60));
        r.apply(Msg::Changes(vec![
            change(ChangeKind::Added, 1, 10, "/a", 5),
            change(ChangeKind::Added, 4, 40, "/a", 4),
            change(ChangeKind::Added, 0, 7, "/a", 6),
        ]));
        let s = r.snapshot();
        assert_eq!(s.containers.len(), 1);
        let a = s.get("/a").unwrap();
        assert_eq!(a.ids, BTreeMap::from([(0, 7), (1, 10), (4, 40)]));
        assert_eq!(a.created, SystemTime::UNIX_EPOCH + Duration::from_secs(4));
        assert_eq!(totals(&r), (1, 0));

        r.apply(Msg::Changes(vec![change(
            ChangeKind::Removed,
            1,
            10,
            "/a",
            8,
        )]));
        assert!(r.snapshot().get("/a").unwrap().is_live());
        r.apply(Msg::Changes(vec![
            change(ChangeKind::Removed, 4, 40, "/a", 9),
            change(ChangeKind::Removed, 0, 7, "/a", 9),
        ]));
        let s = r.snapshot();
        let a = s.get("/a").unwrap();
        assert_eq!(
            a.removed,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(9))
        );
        assert_eq!(totals(&r), (1, 1));
    }

    #[test]
    fn removed_containers_stay_for_the_retention_then_go() {
        let mut r = registry(Duration::from_secs(60));
        r.apply(Msg::Changes(vec![
            change(ChangeKind::Added, 1, 10, "/short", 1),
            change(ChangeKind::Removed, 1, 10, "/short", 1),
        ]));
        assert_eq!(
            totals(&r),
            (1, 1),
            "a container shorter than any interval is counted"
        );
        let (tx, rx) = oneshot::channel();
        r.apply(Msg::Resolve {
            hierarchy: 1,
            id: 10,
            reply: tx,
        });
        assert_eq!(rx.blocking_recv().unwrap().as_deref(), Some("/short"));
        assert!(!r.collect_garbage(Instant::now()));
        assert_eq!(r.snapshot().containers.len(), 1);
        assert!(r.collect_garbage(Instant::now() + Duration::from_secs(61)));
        assert!(r.snapshot().containers.is_empty());
        assert!(r.by_id.is_empty());
    }

    fn kernel(path: &str, kills: u64) -> Msg {
        Msg::KernelOomKills {
            path: Arc::from(path),
            kills,
        }
    }

    fn kills(r: &Registry, path: &str) -> u64 {
        r.snapshot().get(path).unwrap().oom_kills
    }

    /// The kernel's per-cgroup counter is the floor: a kill it counted that
    /// the OOM source never reported is added once the grace has passed;
    /// one the source reports in time is not counted twice; kills from
    /// before the agent watched are not the agent's.
    #[test]
    fn the_kernels_oom_counter_is_the_floor() {
        let mut r = registry(Duration::from_secs(60));
        let t0 = Instant::now();
        // Found by the first walk, with 3 kills from before the agent.
        r.apply(Msg::Walked(WalkResult {
            started: t0,
            hierarchies: vec![4],
            found: vec![found(4, 1, "/"), found(4, 2, "/old")],
        }));
        r.kernel_oom_kills(Arc::from("/old"), 3, t0);
        // Created while watching: every kill of its counter is the agent's.
        r.apply(Msg::Changes(vec![change(
            ChangeKind::Added,
            4,
            3,
            "/new",
            1,
        )]));
        r.kernel_oom_kills(Arc::from("/new"), 1, t0);
        assert!(!r.check_oom_floors(t0 + OOM_GRACE / 2));
        // The source delivers /new's kill within the grace.
        r.apply(Msg::Oom(OomKill {
            at: SystemTime::UNIX_EPOCH,
            pid: 42,
            comm: "hog".into(),
            victim: Some(Arc::from("/new")),
            oom: Some(Arc::from("/new")),
            constraint: "CONSTRAINT_MEMCG".into(),
        }));
        assert!(!r.check_oom_floors(t0 + OOM_GRACE));
        assert_eq!((kills(&r, "/old"), kills(&r, "/new")), (0, 1));
        assert_eq!(r.oom_stats.missed.get(), 0);
        // Two more kills in /old the source never reports.
        r.apply(kernel("/old", 5));
        assert!(!r.check_oom_floors(Instant::now()), "not before the grace");
        assert!(r.check_oom_floors(Instant::now() + OOM_GRACE));
        assert_eq!(kills(&r, "/old"), 2);
        assert_eq!(r.oom_stats.missed.get(), 2);
        // Read again unchanged: nothing more.
        r.apply(kernel("/old", 5));
        assert!(!r.check_oom_floors(Instant::now() + OOM_GRACE));
        assert_eq!(kills(&r, "/old"), 2);
    }

    #[test]
    fn oom_kills_count_against_containers_and_survive_removal() {
        let mut r = registry(Duration::from_secs(60));
        r.apply(Msg::Changes(vec![
            change(ChangeKind::Added, 4, 1, "/p", 1),
            change(ChangeKind::Added, 4, 2, "/p/c", 1),
        ]));
        let kill = OomKill {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(5),
            pid: 42,
            comm: "hog".into(),
            victim: Some(Arc::from("/p/c")),
            oom: Some(Arc::from("/p")),
            constraint: "CONSTRAINT_MEMCG".into(),
        };
        assert!(r.apply(Msg::Oom(kill.clone())));
        r.apply(Msg::Changes(vec![change(
            ChangeKind::Removed,
            4,
            2,
            "/p/c",
            6,
        )]));
        let s = r.snapshot();
        let c = s.get("/p/c").unwrap();
        assert!(!c.is_live());
        assert_eq!((c.oom_kills, c.ooms), (1, 0), "kept after removal");
        assert_eq!(
            (s.get("/p").unwrap().oom_kills, s.get("/p").unwrap().ooms),
            (0, 1)
        );
        let store = r.events.lock().unwrap();
        let events = store.query(&crate::events::EventQuery {
            types: vec![EventType::Oom, EventType::OomKill],
            start: None,
            end: None,
            max_events: 10,
            container: None,
            subcontainers: true,
        });
        let got: Vec<(&str, EventType)> = events
            .iter()
            .map(|e| (e.container_name.as_str(), e.event_type))
            .collect();
        assert_eq!(got, [("/p", EventType::Oom), ("/p/c", EventType::OomKill)]);
        assert_eq!(events[1].event_data.oom_kill.as_ref().unwrap().pid, 42);
        drop(store);
        // A kill in a cgroup nobody tracks: events, no counter, no panic.
        let mut stray = kill;
        stray.victim = Some(Arc::from("/unknown"));
        stray.oom = None;
        assert!(!r.apply(Msg::Oom(stray)));
        assert_eq!(r.oom_stats.errors.get("container_unknown"), 1);
    }

    fn oom_in(path: &str, pid: u32) -> Msg {
        Msg::Oom(OomKill {
            at: SystemTime::UNIX_EPOCH,
            pid,
            comm: "hog".into(),
            victim: Some(Arc::from(path)),
            oom: Some(Arc::from(path)),
            constraint: "CONSTRAINT_MEMCG".into(),
        })
    }

    #[test]
    fn recreated_path_is_a_new_container() {
        let mut r = registry(Duration::from_secs(60));
        r.apply(Msg::Changes(vec![
            change(ChangeKind::Added, 1, 10, "/svc", 1),
            change(ChangeKind::Removed, 1, 10, "/svc", 2),
            change(ChangeKind::Added, 1, 11, "/svc", 3),
        ]));
        let s = r.snapshot();
        let svc = s.get("/svc").unwrap();
        assert!(svc.is_live());
        assert_eq!(svc.ids, BTreeMap::from([(1, 11)]));
        assert_eq!(svc.created, SystemTime::UNIX_EPOCH + Duration::from_secs(3));
        assert_eq!(totals(&r), (2, 1));
    }

    /// A restart loop after OOM kills: the path's counters never go back,
    /// so no scrape interval can hide a kill from increase(); the kernel's
    /// counter of the new cgroup (from 0) is a floor above the carried count.
    #[test]
    fn recreated_path_keeps_counting_its_oom_kills() {
        let mut r = registry(Duration::from_secs(60));
        r.apply(Msg::Changes(vec![change(
            ChangeKind::Added,
            4,
            10,
            "/svc",
            1,
        )]));
        r.apply(oom_in("/svc", 1));
        r.apply(oom_in("/svc", 2));
        for (id, pid) in [(11, 3), (12, 4)] {
            r.apply(Msg::Changes(vec![
                change(ChangeKind::Removed, 4, id - 1, "/svc", 2),
                change(ChangeKind::Added, 4, id, "/svc", 3),
            ]));
            r.apply(oom_in("/svc", pid));
        }
        let s = r.snapshot();
        let svc = s.get("/svc").unwrap();
        assert!(svc.is_live());
        assert_eq!((svc.oom_kills, svc.ooms), (4, 4));
        // The new cgroup's own counter: 1 kill delivered, then 2 more the
        // source never reported.
        r.apply(kernel("/svc", 1));
        assert!(!r.check_oom_floors(Instant::now() + OOM_GRACE));
        r.apply(kernel("/svc", 3));
        assert!(r.check_oom_floors(Instant::now() + OOM_GRACE));
        assert_eq!(kills(&r, "/svc"), 6);
        assert_eq!(r.oom_stats.missed.get(), 2);
        // Past the retention the path is forgotten, and so are its counts.
        r.apply(Msg::Changes(vec![change(
            ChangeKind::Removed,
            4,
            12,
            "/svc",
            4,
        )]));
        r.collect_garbage(Instant::now() + Duration::from_secs(61));
        r.apply(Msg::Changes(vec![change(
            ChangeKind::Added,
            4,
            13,
            "/svc",
            5,
        )]));
        assert_eq!(kills(&r, "/svc"), 0);
    }

    #[test]
    fn walk_repairs_both_ways_and_counts() {
        let mut r = registry(Duration::from_secs(60));
        // The first walk is the bootstrap, not a repair.
        r.apply(Msg::Walked(WalkResult {
            started: Instant::now(),
            hierarchies: vec![1],
            found: vec![found(1, 1, "/"), found(1, 2, "/gone")],
        }));
        assert_eq!(r.snapshot().live(), 2);
        assert_eq!(r.stats.repairs_added.get(), 0);
        std::thread::sleep(Duration::from_millis(2));
        let started = Instant::now();
        r.apply(Msg::Walked(WalkResult {
            started,
            hierarchies: vec![1],
            found: vec![found(1, 1, "/"), found(1, 3, "/missed")],
        }));
        let s = r.snapshot();
        assert!(s.get("/missed").unwrap().is_live());
        assert!(!s.get("/gone").unwrap().is_live());
        assert_eq!(r.stats.repairs_added.get(), 1);
        assert_eq!(r.stats.repairs_removed.get(), 1);
    }

    #[test]
    fn walk_does_not_undo_newer_events() {
        let mut r = registry(Duration::from_secs(60));
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        // Created after the walk listed its parent, and removed after the
        // walk saw it.
        r.apply(Msg::Changes(vec![
            change(ChangeKind::Added, 1, 5, "/new", 1),
            change(ChangeKind::Added, 1, 6, "/old", 1),
            change(ChangeKind::Removed, 1, 6, "/old", 2),
        ]));
        r.apply(Msg::Walked(WalkResult {
            started,
            hierarchies: vec![1],
            found: vec![found(1, 1, "/"), found(1, 6, "/old")],
        }));
        let s = r.snapshot();
        assert!(s.get("/new").unwrap().is_live());
        assert!(!s.get("/old").unwrap().is_live());
    }

    #[test]
    fn walk_only_judges_the_hierarchies_it_walked() {
        let mut r = registry(Duration::from_secs(60));
        r.apply(Msg::Changes(vec![change(
            ChangeKind::Added,
            4,
            40,
            "/m",
            1,
        )]));
        std::thread::sleep(Duration::from_millis(2));
        r.apply(Msg::Walked(WalkResult {
            started: Instant::now(),
            hierarchies: vec![1],
            found: vec![found(1, 1, "/")],
        }));
        assert!(r.snapshot().get("/m").unwrap().is_live());
    }
}
