//! The stats cache: per container, the samples of the last
//! `--storage-duration`, newest last. Written by the collector, read by the
//! exporter and the API; the latest sample is an `Arc`, so reading it copies
//! nothing.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, RwLock},
    time::Duration,
};

use crate::cgroup::stats::Sample;

#[derive(Debug)]
pub struct StatsCache {
    max_age: Duration,
    /// Upper bound per container whatever the interval, so memory stays
    /// bounded even with a short housekeeping interval.
    max_samples: usize,
    rings: RwLock<HashMap<Arc<str>, VecDeque<Arc<Sample>>>>,
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

    pub fn push(&self, path: &Arc<str>, sample: Sample) {
        let sample = Arc::new(sample);
        let newest = sample.at;
        let mut rings = self.rings.write().unwrap_or_else(|p| p.into_inner());
        let ring = rings.entry(path.clone()).or_default();
        ring.push_back(sample);
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
    }

    pub fn latest(&self, path: &str) -> Option<Arc<Sample>> {
        let rings = self.rings.read().unwrap_or_else(|p| p.into_inner());
        rings.get(path).and_then(|r| r.back().cloned())
    }

    /// The newest sample of every container (cheap: `Arc` clones).
    pub fn latest_all(&self) -> HashMap<Arc<str>, Arc<Sample>> {
        let rings = self.rings.read().unwrap_or_else(|p| p.into_inner());
        rings
            .iter()
            .filter_map(|(k, r)| Some((k.clone(), r.back()?.clone())))
            .collect()
    }

    /// Up to `n` newest samples, oldest first.
    #[cfg(test)]
    pub fn recent(&self, path: &str, n: usize) -> Vec<Arc<Sample>> {
        let rings = self.rings.read().unwrap_or_else(|p| p.into_inner());
        rings
            .get(path)
            .map(|r| r.iter().skip(r.len().saturating_sub(n)).cloned().collect())
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
    fn bounded_by_count_too() {
        let c = StatsCache::new(Duration::from_secs(120), Duration::from_secs(60));
        let p: Arc<str> = Arc::from("/a");
        for s in 0..10 {
            c.push(&p, at(s));
        }
        assert_eq!(c.samples(), 3);
    }
}
