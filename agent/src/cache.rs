//! The stats cache: per container, the samples of the last
//! `--storage-duration`, newest last. Written by the collector, read by the
//! exporter and the API; the latest sample is an `Arc`, so reading it copies
//! nothing. A sample equal to the one before (an idle container) shares
//! its storage, so idle containers cost one sample plus a timestamp each.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, RwLock},
    time::Duration,
};

use crate::{
    cgroup::stats::Sample,
    telemetry::{Collector, DescriptorEncoder, Family, MetricType, Metrics},
};

#[derive(Debug)]
pub struct StatsCache {
    max_age: Duration,
    /// Upper bound per container whatever the interval, so memory stays
    /// bounded even with a short housekeeping interval.
    max_samples: usize,
    rings: RwLock<HashMap<Arc<str>, VecDeque<Entry>>>,
}

/// When a sample was taken, and the sample (without its own timestamp, so
/// equal samples can be shared).
#[derive(Debug, Clone)]
struct Entry {
    at: Option<std::time::SystemTime>,
    sample: Arc<Sample>,
}

impl Entry {
    /// The sample with its timestamp; a copy only when asked for history.
    fn stamped(&self) -> Arc<Sample> {
        if self.sample.at == self.at {
            return self.sample.clone();
        }
        let mut s = (*self.sample).clone();
        s.at = self.at;
        Arc::new(s)
    }
}

impl StatsCache {
    pub fn new(max_age: Duration, min_interval: Duration) -> Self {
        let per = (max_age.as_millis() / min_interval.as_millis().max(1)) as usize + 1;
        Self {
            max_age,
            max_samples: per.clamp(1, 256),
            rings: RwLock::default(),
        }
    }

    /// Stores a sample and returns it as stored (without its timestamp,
    /// which the ring keeps beside it).
    pub fn push(&self, path: &Arc<str>, mut sample: Sample) -> Arc<Sample> {
        let newest = sample.at.take();
        let mut rings = self.rings.write().unwrap_or_else(|p| p.into_inner());
        let ring = rings.entry(path.clone()).or_default();
        let sample = match ring.back() {
            Some(last) if *last.sample == sample => last.sample.clone(),
            _ => Arc::new(sample),
        };
        ring.push_back(Entry {
            at: newest,
            sample: sample.clone(),
        });
        while ring.len() > self.max_samples {
            ring.pop_front();
        }
        // Keep at least the newest, whatever its age.
        while ring.len() > 1
            && ring
                .front()
                .and_then(|s| s.at)
                .zip(newest)
                .is_some_and(|(old, new)| {
                    new.duration_since(old).unwrap_or_default() > self.max_age
                })
        {
            ring.pop_front();
        }
        sample
    }

    pub fn latest(&self, path: &str) -> Option<Arc<Sample>> {
        let rings = self.rings.read().unwrap_or_else(|p| p.into_inner());
        rings.get(path).and_then(|r| r.back().map(Entry::stamped))
    }

    /// The newest sample of every container (cheap: `Arc` clones).
    pub fn latest_all(&self) -> HashMap<Arc<str>, Arc<Sample>> {
        let rings = self.rings.read().unwrap_or_else(|p| p.into_inner());
        rings
            .iter()
            .filter_map(|(k, r)| Some((k.clone(), r.back()?.sample.clone())))
            .collect()
    }

    /// Up to `n` newest samples, oldest first.
    pub fn recent(&self, path: &str, n: usize) -> Vec<Arc<Sample>> {
        let rings = self.rings.read().unwrap_or_else(|p| p.into_inner());
        rings
            .get(path)
            .map(|r| {
                r.iter()
                    .skip(r.len().saturating_sub(n))
                    .map(Entry::stamped)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn remove(&self, path: &str) {
        let mut rings = self.rings.write().unwrap_or_else(|p| p.into_inner());
        rings.remove(path);
        if rings.capacity() > 64 && rings.len() < rings.capacity() / 4 {
            rings.shrink_to_fit();
        }
    }

    #[cfg(test)]
    pub fn containers(&self) -> usize {
        self.rings.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn samples(&self) -> usize {
        self.rings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(VecDeque::len)
            .sum()
    }

    /// Distinct samples stored (equal neighbours share one).
    pub fn distinct_samples(&self) -> usize {
        let rings = self.rings.read().unwrap_or_else(|p| p.into_inner());
        rings
            .values()
            .map(|r| {
                let changes = r
                    .iter()
                    .zip(r.iter().skip(1))
                    .filter(|(a, b)| !Arc::ptr_eq(&a.sample, &b.sample))
                    .count();
                1 + changes
            })
            .sum()
    }
}

/// The cache's size, counted at each scrape (a view of the rings, not a
/// count kept beside them).
#[derive(Debug)]
struct CacheSize(Arc<StatsCache>);

impl StatsCache {
    pub fn register(self: &Arc<Self>, m: &mut Metrics) {
        m.register_collector(Box::new(CacheSize(self.clone())));
    }
}

impl Collector for CacheSize {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut f = Family::new(
            &mut encoder,
            "cgscope_stats_cache_samples",
            "Samples in the stats cache: all, and distinct (equal neighbours share storage).",
            None,
            MetricType::Gauge,
        )?;
        f.gauge(&[("kind", "all")], self.0.samples() as i64)?;
        f.gauge(&[("kind", "distinct")], self.0.distinct_samples() as i64)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn at(secs: u64) -> Sample {
        Sample {
            at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
            ..Sample::default()
        }
    }

    #[test]
    fn keeps_the_storage_duration() {
        let c = StatsCache::new(Duration::from_secs(120), Duration::from_secs(10));
        let p: Arc<str> = Arc::from("/a");
        for s in (0..=300).step_by(10) {
            c.push(&p, at(s));
        }
        let r = c.recent("/a", 100);
        assert_eq!(
            r.first().unwrap().at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(180))
        );
        assert_eq!(r.len(), 13);
        assert_eq!(
            c.latest("/a").unwrap().at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(300))
        );
        assert_eq!(c.recent("/a", 2).len(), 2);
        c.remove("/a");
        assert!(c.latest("/a").is_none());
        assert_eq!(c.containers(), 0);
    }

    #[test]
    fn equal_samples_share_storage() {
        let c = StatsCache::new(Duration::from_secs(120), Duration::from_secs(10));
        let p: Arc<str> = Arc::from("/idle");
        for s in 0..5 {
            c.push(&p, at(s));
        }
        assert_eq!((c.samples(), c.distinct_samples()), (5, 1));
        let mut busy = at(6);
        busy.memory = Some(Default::default());
        c.push(&p, busy);
        assert_eq!(c.distinct_samples(), 2);
        // Timestamps survive the sharing.
        let r = c.recent("/idle", 10);
        assert_eq!(
            r[2].at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2))
        );
        assert_eq!(
            c.latest("/idle").unwrap().at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(6))
        );
    }

    #[test]
    fn bounded_by_count_too() {
        let c = StatsCache::new(Duration::from_secs(120), Duration::from_secs(60));
        let p: Arc<str> = Arc::from("/a");
        for s in 0..10 {
            c.push(&p, at(s));
        }
        assert_eq!(c.samples(), 3);
    }
}
