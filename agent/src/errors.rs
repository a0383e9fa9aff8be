//! Errors that are counted and logged once per reason, never fatal: a
//! malformed file, an odd kernel line, a vanished cgroup.

use std::{
    collections::BTreeMap,
    error::Error,
    fmt::{self, Display},
    sync::Mutex,
};

/// An error with its sources, `what failed: why: why`, for logs and
/// reasons. The crate's errors say what failed and leave the cause to
/// their `source`, as aya's do, so that nothing prints a cause twice.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

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
    fn a_chain_names_each_cause_once() {
        let e =
            crate::cgroup::hierarchy::Hierarchies::discover(std::path::Path::new("/nonexistent"))
                .unwrap_err();
        let text = Chain(&e).to_string();
        assert!(
            text.starts_with("reading /nonexistent/self/mountinfo: "),
            "{text}"
        );
        assert_eq!(text.matches("mountinfo").count(), 1, "{text}");
        assert!(text.len() > "reading /nonexistent/self/mountinfo: ".len());
    }

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
