//! One sample of a container's usage. Every value is optional: absent
//! means "could not be read", which is exported as no series, never as 0.

use std::time::SystemTime;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cpu {
    pub usage_ns: Option<u64>,
    /// Per-CPU usage (v1 `cpuacct.usage_percpu`); empty when unknown.
    pub per_cpu_ns: Vec<u64>,
    pub user_ns: Option<u64>,
    pub system_ns: Option<u64>,
    pub periods: Option<u64>,
    pub throttled_periods: Option<u64>,
    pub throttled_ns: Option<u64>,
    pub bursts: Option<u64>,
    pub burst_ns: Option<u64>,
}

/// `memory.events` (v2) and `memory.oom_control` (v1, `oom_kill` only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    pub low: Option<u64>,
    pub high: Option<u64>,
    pub max: Option<u64>,
    pub oom: Option<u64>,
    pub oom_kill: Option<u64>,
    pub oom_group_kill: Option<u64>,
    /// Kills of this cgroup's own tasks (`memory.events.local`; v1 counts
    /// only those anyway), the kernel's side of `container_oom_events_total`.
    pub local_oom_kill: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    pub usage: Option<u64>,
    pub max_usage: Option<u64>,
    pub failcnt: Option<u64>,
    pub cache: Option<u64>,
    pub rss: Option<u64>,
    pub mapped_file: Option<u64>,
    pub swap: Option<u64>,
    pub kernel: Option<u64>,
    pub shmem: Option<u64>,
    pub active_file: Option<u64>,
    pub inactive_file: Option<u64>,
    pub pgfault: Option<u64>,
    pub pgmajfault: Option<u64>,
    pub file_dirty: Option<u64>,
    pub file_writeback: Option<u64>,
    pub pgscan: Option<u64>,
    pub pgsteal: Option<u64>,
    pub workingset_refault_file: Option<u64>,
    pub workingset_refault_anon: Option<u64>,
    pub events: MemoryEvents,
}

impl Memory {
    /// cAdvisor's working set: usage − inactive file, floored at 0.
    pub fn working_set(&self) -> Option<u64> {
        let usage = self.usage?;
        Some(usage.saturating_sub(self.inactive_file.unwrap_or(0)))
    }
}

/// Block I/O of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceIo {
    pub major: u32,
    pub minor: u32,
    pub read_bytes: Option<u64>,
    pub write_bytes: Option<u64>,
    pub reads: Option<u64>,
    pub writes: Option<u64>,
    /// v2 iocost (`cost.usage`, `cost.wait`, `cost.indebt`, `cost.indelay`),
    /// microseconds; only with the iocost controller.
    pub cost_us: [Option<u64>; 4],
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Processes {
    pub processes: Option<u64>,
    pub threads: Option<u64>,
    pub fds: Option<u64>,
    /// `pids.max`; `Some(None)` is unlimited.
    pub threads_max: Option<Option<u64>>,
    /// Soft `Max open files` of the first process; -1 is unlimited.
    pub max_open_files: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// PSI totals in microseconds: `some` (waiting) and `full` (stalled).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pressure {
    pub cpu: (Option<u64>, Option<u64>),
    pub memory: (Option<u64>, Option<u64>),
    pub io: (Option<u64>, Option<u64>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hugetlb {
    /// `2MB`, `1GB`, as cAdvisor labels it.
    pub pagesize: String,
    pub usage: Option<u64>,
    pub max_usage: Option<u64>,
    pub failcnt: Option<u64>,
}

/// Limits and shares. Unlimited values are `None` (exported as absent or
/// 0, as cAdvisor does for each family).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spec {
    pub has_cpu: bool,
    pub has_memory: bool,
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: Option<u64>,
    /// v1 shares, or v2 weight converted to shares.
    pub cpu_shares: Option<u64>,
    pub memory_limit: Option<u64>,
    pub memory_swap_limit: Option<u64>,
    pub memory_reservation: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub at: Option<SystemTime>,
    pub cpu: Option<Cpu>,
    pub memory: Option<Memory>,
    pub io: Option<Vec<DeviceIo>>,
    pub processes: Option<Processes>,
    pub network: Option<Vec<Interface>>,
    pub pressure: Option<Pressure>,
    pub hugetlb: Option<Vec<Hugetlb>>,
    pub spec: Spec,
}

impl Sample {
    /// Whether the usage counters moved since `prev` (dynamic housekeeping
    /// backs off while they do not).
    pub fn same_usage(&self, prev: &Sample) -> bool {
        self.cpu == prev.cpu
            && self.memory == prev.memory
            && self.io == prev.io
            && self.network == prev.network
            && self.processes == prev.processes
    }
}

/// Values another source (the eBPF cgroup iterator) already read for one
/// container, so their files are not opened. Limits: `Some(None)` is
/// unlimited, as the file readers report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    pub cpu_usage_ns: Option<u64>,
    pub memory_usage: Option<u64>,
    pub memory_max_usage: Option<u64>,
    pub memory_limit: Option<Option<u64>>,
    pub memory_swap_limit: Option<Option<u64>>,
    /// v2 `memory.swap.current`.
    pub swap_usage: Option<u64>,
    pub memory_failcnt: Option<u64>,
    /// v1 `memory.kmem.usage_in_bytes`.
    pub memory_kernel: Option<u64>,
    /// v1 `memory.soft_limit_in_bytes`.
    pub memory_reservation: Option<Option<u64>>,
    pub pids_current: Option<u64>,
    pub pids_max: Option<Option<u64>>,
    /// v1 `cpu.stat`: read from the file unless all five are known.
    pub cpu_periods: Option<u64>,
    pub cpu_throttled_periods: Option<u64>,
    pub cpu_throttled_ns: Option<u64>,
    pub cpu_bursts: Option<u64>,
    pub cpu_burst_ns: Option<u64>,
    pub cpu_quota_us: Option<Option<u64>>,
    pub cpu_period_us: Option<u64>,
    pub cpu_shares: Option<u64>,
}

/// v2 `cpu.weight` (1–10000) to v1 shares, as runc and cAdvisor convert.
pub fn weight_to_shares(weight: u64) -> u64 {
    2 + (weight.saturating_sub(1) * 262_142) / 9_999
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_set_is_floored() {
        let m = Memory {
            usage: Some(100),
            inactive_file: Some(30),
            ..Memory::default()
        };
        assert_eq!(m.working_set(), Some(70));
        let m = Memory {
            usage: Some(10),
            inactive_file: Some(30),
            ..Memory::default()
        };
        assert_eq!(m.working_set(), Some(0));
        assert_eq!(Memory::default().working_set(), None);
    }

    #[test]
    fn weights() {
        assert_eq!(weight_to_shares(100), 2597);
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(weight_to_shares(10000), 262_144);
    }
}
