//! Errors that are counted and logged once per reason, never fatal: a
//! malformed file, an odd kernel line, a vanished cgroup.

use std::{collections::BTreeMap, fmt::Display, sync::Mutex};

#[derive(Debug, Default)]
pub struct ErrorCounts {
    component: &'static str,
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl ErrorCounts {
    pub fn new(component: &'static str) -> Self {
        Self {
            component,
            counts: Mutex::default(),
        }
    }

    /// Counts one error; the first of each reason is logged as a warning,
    /// the rest at debug level so a flood cannot fill the log.
    pub fn record(&self, reason: &'static str, detail: impl Display) {
        let first = {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            let n = counts.entry(reason).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            tracing::warn!(
                component = self.component,
                reason,
                "{detail} (counted in cgscope_{}_errors_total; further ones are logged at debug level)",
                self.component
            );
        } else {
            tracing::debug!(component = self.component, reason, "{detail}");
        }
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.iter().map(|(k, v)| (*k, *v)).collect()
    }

    #[cfg(test)]
    pub fn get(&self, reason: &str) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(reason).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason() {
        let e = ErrorCounts::new("discovery");
        e.record("vanished", "gone");
        e.record("vanished", "gone again");
        e.record("non_utf8_path", "bad bytes");
        assert_eq!(e.snapshot(), vec![("non_utf8_path", 1), ("vanished", 2)]);
        assert_eq!(e.get("vanished"), 2);
        assert_eq!(e.get("other"), 0);
    }
}
