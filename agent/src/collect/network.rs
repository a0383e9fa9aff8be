//! Network counters per network namespace, read from `/proc/<pid>/net/dev`
//! of one task in it. Containers of one pod share a namespace: it is read
//! once and the result reused for a second.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{
    cgroup::{read::Reader, stats::Interface},
    errors::ErrorCounts,
};

/// Interfaces cAdvisor leaves out: loopback and the host ends of veth
/// pairs and bridges.
const IGNORED_PREFIXES: &[&str] = &["lo", "veth", "docker", "nerdctl"];

pub fn parse_net_dev(text: &str) -> Option<Vec<Interface>> {
    let mut out = Vec::new();
    for line in text.lines().skip(2) {
        let (name, rest) = line.split_once(':')?;
        let name = name.trim();
        let v: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if v.len() != 16 {
            return None;
        }
        if IGNORED_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        out.push(Interface {
            name: name.to_owned(),
            rx_bytes: v[0],
            rx_packets: v[1],
            rx_errors: v[2],
            rx_dropped: v[3],
            tx_bytes: v[8],
            tx_packets: v[9],
            tx_errors: v[10],
            tx_dropped: v[11],
        });
    }
    Some(out)
}

#[derive(Debug, Default)]
pub struct NetworkReader {
    /// netns inode → when read, what was read.
    cache: Mutex<HashMap<u64, (Instant, Vec<Interface>)>>,
    host_netns: Option<u64>,
    /// A process in the host's network namespace: PID 1 where it can be
    /// inspected (hostPID), else the agent itself.
    pub host_pid: u32,
}

const REUSE: Duration = Duration::from_secs(1);

impl NetworkReader {
    pub fn new(proc_root: &Path) -> Self {
        let ns = |pid: u32| {
            std::fs::metadata(proc_root.join(pid.to_string()).join("ns/net"))
                .ok()
                .map(|m| m.ino())
        };
        let (host_pid, host_netns) = match ns(1) {
            Some(n) => (1, Some(n)),
            None => {
                let me = std::process::id();
                tracing::info!(
                    "PID 1's network namespace cannot be inspected: taking the agent's own as the host's"
                );
                (me, ns(me))
            }
        };
        Self {
            cache: Mutex::default(),
            host_netns,
            host_pid,
        }
    }

    /// The interfaces of `pid`'s network namespace; `None` when the pid
    /// shares the host's namespace (unless `host` asks for it: the `/`
    /// container reports the machine's interfaces) or is gone.
    pub fn read(
        &self,
        proc_root: &Path,
        pid: u32,
        host: bool,
        r: &mut Reader,
        e: &ErrorCounts,
    ) -> Option<Vec<Interface>> {
        let ns = std::fs::metadata(proc_root.join(pid.to_string()).join("ns/net"))
            .ok()?
            .ino();
        if !host && (self.host_netns.is_none() || Some(ns) == self.host_netns) {
            return None;
        }
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, ifaces)) = cache.get(&ns) {
                if now.duration_since(*at) < REUSE {
                    return Some(ifaces.clone());
                }
            }
        }
        let path = proc_root.join(pid.to_string()).join("net/dev");
        let text = r.read(&path, e)?;
        let Some(ifaces) = parse_net_dev(text) else {
            e.record(
                "malformed",
                format!("{}: unexpected format", path.display()),
            );
            return None;
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, (at, _)| now.duration_since(*at) < REUSE * 10);
        cache.insert(ns, (now, ifaces.clone()));
        Some(ifaces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 618539686   30805    0    0    0     0          0         0 618539686   30805    0    0    0     0       0          0
  eth0: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0
vethab12: 5 5 0 0 0 0 0 0 5 5 0 0 0 0 0 0
";

    #[test]
    fn parses_and_skips_loopback_and_veth() {
        let i = parse_net_dev(NET_DEV).unwrap();
        assert_eq!(i.len(), 1);
        assert_eq!(i[0].name, "eth0");
        assert_eq!(
            (
                i[0].rx_bytes,
                i[0].rx_packets,
                i[0].rx_errors,
                i[0].rx_dropped
            ),
            (1000, 10, 1, 2)
        );
        assert_eq!(
            (
                i[0].tx_bytes,
                i[0].tx_packets,
                i[0].tx_errors,
                i[0].tx_dropped
            ),
            (2000, 20, 3, 4)
        );
        assert!(
            parse_net_dev("h\nh\n  eth0: 1 2 3\n").is_none(),
            "a short line rejects the file"
        );
    }

    #[test]
    fn host_namespace_is_skipped_unless_asked() {
        let n = NetworkReader::new(Path::new("/proc"));
        let (mut r, e) = (Reader::default(), ErrorCounts::new("collection"));
        let me = std::process::id();
        if n.host_netns.is_some()
            && std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).ok() == n.host_netns
        {
            assert!(n.read(Path::new("/proc"), me, false, &mut r, &e).is_none());
        }
        assert!(n.read(Path::new("/proc"), me, true, &mut r, &e).is_some());
    }
}
