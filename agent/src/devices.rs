//! Block device names (`major:minor` → `/dev/vda`) for the `device` label,
//! from `/proc/partitions`; reloaded when an unknown device shows up.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::RwLock,
    time::{Duration, Instant},
};

type Names = HashMap<(u32, u32), String>;

#[derive(Debug)]
pub struct DeviceNames {
    path: PathBuf,
    /// The names, and when they were last loaded.
    names: RwLock<(Names, Option<Instant>)>,
}

impl DeviceNames {
    pub fn new(proc_root: &Path) -> Self {
        let d = Self {
            path: proc_root.join("partitions"),
            names: RwLock::new((HashMap::new(), None)),
        };
        d.reload();
        d
    }

    fn reload(&self) {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut w = self.names.write().unwrap_or_else(|p| p.into_inner());
        w.0 = parse_partitions(&text);
        w.1 = Some(Instant::now());
    }

    /// `/dev/<name>`, or `None` for a device the machine does not list.
    pub fn name(&self, major: u32, minor: u32) -> Option<String> {
        {
            let r = self.names.read().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = r.0.get(&(major, minor)) {
                return Some(n.clone());
            }
            // At most one reload every 10 s for devices nobody lists.
            if r.1.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
                return None;
            }
        }
        self.reload();
        self.names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(&(major, minor))
            .cloned()
    }
}

pub fn parse_partitions(text: &str) -> HashMap<(u32, u32), String> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let major = it.next()?.parse().ok()?;
            let minor = it.next()?.parse().ok()?;
            let _blocks = it.next()?;
            Some(((major, minor), format!("/dev/{}", it.next()?)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions() {
        let m = parse_partitions("major minor  #blocks  name\n\n 254        0  268435456 vda\n   8        1   1000 sda1\n");
        assert_eq!(m.get(&(254, 0)).map(String::as_str), Some("/dev/vda"));
        assert_eq!(m.get(&(8, 1)).map(String::as_str), Some("/dev/sda1"));
        assert_eq!(m.len(), 2);
    }
}
