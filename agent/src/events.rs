//! The event store: container creations and deletions, OOMs and OOM kills,
//! each type bounded by a count and an age (cAdvisor's storage policy).

use std::{
    collections::{BTreeMap, VecDeque},
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::telemetry::{counter, Counters, Metrics};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum EventType {
    #[serde(rename = "containerCreation")]
    ContainerCreation,
    #[serde(rename = "containerDeletion")]
    ContainerDeletion,
    #[serde(rename = "oom")]
    Oom,
    #[serde(rename = "oomKill")]
    OomKill,
}

impl EventType {
    pub const ALL: [Self; 4] = [
        Self::ContainerCreation,
        Self::ContainerDeletion,
        Self::Oom,
        Self::OomKill,
    ];

    /// cAdvisor's names, as used in the storage-policy flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContainerCreation => "containerCreation",
            Self::ContainerDeletion => "containerDeletion",
            Self::Oom => "oom",
            Self::OomKill => "oomKill",
        }
    }
}

impl FromStr for EventType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown event type {s:?} (known: containerCreation, containerDeletion, oom, oomKill)"))
    }
}

/// Extra data of an event (cAdvisor's `EventData`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventData {
    /// cAdvisor names the OOM-kill data `oom` in JSON.
    #[serde(rename = "oom", skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<OomKillData>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OomKillData {
    pub pid: u32,
    pub process_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub constraint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub container_name: String,
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: SystemTime,
    pub event_type: EventType,
    pub event_data: EventData,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::clock::rfc3339(*t))
}

/// `default=<v>,<eventType>=<v>,…` for one kind of value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerType<T> {
    pub default: T,
    pub per_type: BTreeMap<EventType, T>,
}

impl<T: Copy> PerType<T> {
    pub fn get(&self, t: EventType) -> T {
        self.per_type.get(&t).copied().unwrap_or(self.default)
    }
}

pub fn parse_policy<T: Copy>(
    s: &str,
    default: T,
    value: impl Fn(&str) -> Result<T, String>,
) -> Result<PerType<T>, String> {
    let mut policy = PerType {
        default,
        per_type: BTreeMap::new(),
    };
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, v) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not <type>=<value>"))?;
        let v = value(v.trim())?;
        match key.trim() {
            "default" => policy.default = v,
            other => {
                policy.per_type.insert(other.parse()?, v);
            }
        }
    }
    Ok(policy)
}

pub fn parse_count_policy(s: &str) -> Result<PerType<usize>, String> {
    parse_policy(s, DEFAULT_EVENT_LIMIT, |v| {
        v.parse().map_err(|_| format!("{v:?} is not a count"))
    })
}

pub fn parse_age_policy(s: &str) -> Result<PerType<Duration>, String> {
    parse_policy(s, DEFAULT_EVENT_AGE, |v| {
        humantime::parse_duration(v).map_err(|e| format!("{v:?}: {e}"))
    })
}

/// Lower than cAdvisor's 100,000: an agent on every node should not hold
/// tens of MiB of history; events are also counted in metrics.
pub const DEFAULT_EVENT_LIMIT: usize = 10_000;
pub const DEFAULT_EVENT_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
pub struct EventStore {
    limits: PerType<usize>,
    ages: PerType<Duration>,
    /// Shared with the API responses being sent (a query copies pointers).
    events: BTreeMap<EventType, VecDeque<Arc<Event>>>,
    /// Container creations and deletions ever added, stored or not.
    lifecycle: Counters<1>,
    /// The wall clock events age against (a seam for tests).
    now: fn() -> SystemTime,
}

pub type SharedEvents = Arc<Mutex<EventStore>>;

/// Which events to return.
#[derive(Debug, Clone)]
pub struct EventQuery {
    pub types: Vec<EventType>,
    pub start: Option<SystemTime>,
    pub end: Option<SystemTime>,
    pub max_events: usize,
    pub container: Option<String>,
    pub subcontainers: bool,
}

impl EventStore {
    pub fn new(limits: PerType<usize>, ages: PerType<Duration>) -> Self {
        Self {
            limits,
            ages,
            events: BTreeMap::new(),
            lifecycle: Counters::default(),
            now: SystemTime::now,
        }
    }

    /// The store with its clock stopped at `now`.
    #[cfg(test)]
    pub fn at(mut self, now: fn() -> SystemTime) -> Self {
        self.now = now;
        self
    }

    /// Whether `e` is past its type's age at `now`. Each event ages by its
    /// own time against the wall clock: an event dated after `now` (the
    /// clock stepped back) is young, not a reason to evict the rest.
    fn expired(&self, e: &Event, now: SystemTime) -> bool {
        now.duration_since(e.timestamp)
            .is_ok_and(|age| age > self.ages.get(e.event_type))
    }

    /// Exports the container creations and deletions counted.
    pub fn register(&self, m: &mut Metrics) {
        for event in ["creation", "deletion"] {
            counter(&self.lifecycle, [("event", event)]);
        }
        m.register(
            "cgscope_container_lifecycle_events",
            "Container creations and deletions seen, including containers shorter-lived than any interval",
            self.lifecycle.clone(),
        );
    }

    pub fn shared(self) -> SharedEvents {
        Arc::new(Mutex::new(self))
    }

    pub fn add(&mut self, event: Event) {
        let lifecycle = match event.event_type {
            EventType::ContainerCreation => Some("creation"),
            EventType::ContainerDeletion => Some("deletion"),
            _ => None,
        };
        if let Some(event) = lifecycle {
            self.lifecycle.get_or_create(&[("event", event)]).inc();
        }
        let limit = self.limits.get(event.event_type);
        if limit == 0 {
            return;
        }
        let now = (self.now)();
        if self.expired(&event, now) {
            return;
        }
        let age = self.ages.get(event.event_type);
        let queue = self.events.entry(event.event_type).or_default();
        // Kept sorted by time; events arrive nearly in order.
        let pos = queue.partition_point(|e| e.timestamp <= event.timestamp);
        queue.insert(pos, Arc::new(event));
        while queue.len() > limit {
            queue.pop_front();
        }
        while queue
            .front()
            .is_some_and(|e| now.duration_since(e.timestamp).is_ok_and(|a| a > age))
        {
            queue.pop_front();
        }
    }

    /// Container `"creation"`s or `"deletion"`s counted.
    #[cfg(test)]
    pub fn lifecycle(&self, event: &'static str) -> u64 {
        self.lifecycle
            .get(&[("event", event)])
            .map_or(0, |c| c.get())
    }

    /// The newest `max_events` events matching `q`, oldest first; none
    /// past its age, though no event came since to evict it.
    pub fn query(&self, q: &EventQuery) -> Vec<Arc<Event>> {
        let now = (self.now)();
        let mut out: Vec<Arc<Event>> = q
            .types
            .iter()
            .filter_map(|t| self.events.get(t))
            .flatten()
            .filter(|e| !self.expired(e, now))
            .filter(|e| q.start.is_none_or(|s| e.timestamp >= s))
            .filter(|e| q.end.is_none_or(|s| e.timestamp <= s))
            .filter(|e| match &q.container {
                None => true,
                Some(c) if q.subcontainers => is_same_or_below(&e.container_name, c),
                Some(c) => &e.container_name == c,
            })
            .cloned()
            .collect();
        out.sort_by_key(|e| e.timestamp);
        let skip = out.len().saturating_sub(q.max_events);
        out.drain(..skip);
        out
    }
}

pub fn is_same_or_below(path: &str, parent: &str) -> bool {
    if parent == "/" {
        return true;
    }
    path == parent
        || path
            .strip_prefix(parent)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: EventType, name: &str, secs: u64) -> Event {
        Event {
            container_name: name.into(),
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            event_type: t,
            event_data: EventData::default(),
        }
    }

    fn all(store: &EventStore, container: Option<&str>, sub: bool) -> Vec<Arc<Event>> {
        store.query(&EventQuery {
            types: EventType::ALL.to_vec(),
            start: None,
            end: None,
            max_events: usize::MAX,
            container: container.map(Into::into),
            subcontainers: sub,
        })
    }

    #[test]
    fn policies_parse_cadvisor_syntax() {
        let p = parse_count_policy("default=0,oom=100").unwrap();
        assert_eq!(p.get(EventType::Oom), 100);
        assert_eq!(p.get(EventType::ContainerCreation), 0);
        let a = parse_age_policy("default=1h, oomKill=30m").unwrap();
        assert_eq!(a.get(EventType::OomKill), Duration::from_secs(1800));
        assert_eq!(a.get(EventType::Oom), Duration::from_secs(3600));
        assert!(parse_count_policy("oom=x").is_err());
        assert!(parse_count_policy("nope=1").is_err());
        assert!(parse_count_policy("oom").is_err());
        assert_eq!(parse_count_policy("").unwrap().default, DEFAULT_EVENT_LIMIT);
    }

    /// The tests' wall clock: 1970 plus 210 s.
    fn at_210() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(210)
    }

    #[test]
    fn limits_ages_and_filters() {
        let mut s = EventStore::new(
            parse_count_policy("default=3,oom=0").unwrap(),
            parse_age_policy("default=200s").unwrap(),
        )
        .at(at_210);
        for i in 0..5 {
            s.add(ev(EventType::ContainerCreation, "/a/b", 10 + i));
        }
        s.add(ev(EventType::Oom, "/a", 12));
        assert_eq!(s.lifecycle("creation"), 5, "counted though not all stored");
        let kept: Vec<u64> = all(&s, None, false)
            .iter()
            .map(|e| {
                e.timestamp
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
            })
            .collect();
        assert_eq!(kept, [12, 13, 14]);
        // Out of order, and older than 200 s at 210 s: not kept.
        s.add(ev(EventType::ContainerDeletion, "/a", 50));
        s.add(ev(EventType::ContainerDeletion, "/x", 5));
        s.add(ev(EventType::ContainerDeletion, "/a", 30));
        let del: Vec<_> = all(&s, None, false)
            .into_iter()
            .filter(|e| e.event_type == EventType::ContainerDeletion)
            .collect();
        assert_eq!(del.len(), 2, "older than 200 s are dropped");
        assert_eq!(all(&s, Some("/a"), false).len(), 2);
        assert_eq!(all(&s, Some("/a"), true).len(), 5);
        assert_eq!(all(&s, Some("/"), true).len(), 5);
    }

    /// Ageing is by each event's own time against the wall clock: a clock
    /// stepped back a day does not evict what came before the step, and an
    /// event past its age goes though nothing newer arrives.
    #[test]
    fn events_age_by_their_own_time_against_the_wall_clock() {
        fn day_two() -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(2 * 86_400)
        }
        fn day_three() -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(3 * 86_400 + 1)
        }
        let policy = || {
            (
                parse_count_policy("").unwrap(),
                parse_age_policy("default=24h").unwrap(),
            )
        };
        let (limits, ages) = policy();
        let mut s = EventStore::new(limits, ages).at(day_two);
        // Stamped before the clock stepped back to day two.
        s.add(ev(EventType::Oom, "/before", 2 * 86_400 + 30 * 3600));
        s.add(ev(EventType::Oom, "/after", 2 * 86_400 - 60));
        let names: Vec<String> = all(&s, None, false)
            .into_iter()
            .map(|e| e.container_name.clone())
            .collect();
        assert_eq!(names, ["/after", "/before"]);
        // A day on, with no new event: the old one is past its age.
        let (limits, ages) = policy();
        let mut old = EventStore::new(limits, ages).at(day_two);
        old.add(ev(EventType::Oom, "/a", 2 * 86_400 - 10));
        old.now = day_three;
        assert!(all(&old, None, false).is_empty());
    }

    #[test]
    fn newest_n_are_returned() {
        let mut s = EventStore::new(
            parse_count_policy("").unwrap(),
            parse_age_policy("").unwrap(),
        )
        .at(at_210);
        for i in 0..20 {
            s.add(ev(EventType::Oom, "/", i));
        }
        let q = EventQuery {
            types: vec![EventType::Oom],
            start: None,
            end: None,
            max_events: 10,
            container: None,
            subcontainers: true,
        };
        let got = s.query(&q);
        assert_eq!(got.len(), 10);
        assert_eq!(
            got[0].timestamp,
            SystemTime::UNIX_EPOCH + Duration::from_secs(10)
        );
        assert!(is_same_or_below("/a/b", "/a"));
        assert!(!is_same_or_below("/ab", "/a"));
    }
}
