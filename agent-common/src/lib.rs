//! Types shared by the eBPF programs and the agent.
//!
//! Everything here is `#[repr(C)]` and `no_std`: the kernel side writes these
//! records into ring buffers and the agent reads them back byte for byte.
#![no_std]

/// Capacity of the path carried by a cgroup event (a power of two, for the
/// verifier's bound). Kubernetes paths are under 200 bytes; longer ones are
/// flagged as truncated and the periodic walk adds them.
pub const CGROUP_PATH_CAP: usize = 512;

/// The cgroup event ring: 4 MiB hold about 7,600 events (760 containers
/// created at once in all ten v1 hierarchies) while the reader drains it; a
/// burst beyond that is counted as drops and repaired by the walk. The
/// kernel maps the data twice, so this costs 8 MiB of the agent's resident
/// memory once used.
pub const CGROUP_RINGBUF_BYTES: u32 = 4 << 20;

/// The OOM event ring: 8,192 records of 64 bytes (an [`OomEvent`] and the
/// ring's 8-byte header). A `memory.oom.group` kill marks every process of
/// the group a victim in one loop, faster than any reader drains, so the
/// ring holds a group of 8,192 processes, twice the pid limit pods are
/// commonly given (4,096). A kill beyond it still counts, through the
/// cgroup's own kernel counter; only its event (pid, name) is lost, and
/// counted as a drop. The kernel maps the data twice into the agent, so
/// this is 1 MiB of its resident memory (the 64 KiB ring before held 1,000).
pub const OOM_RINGBUF_BYTES: u32 = 512 << 10;

/// The ring's header before each record.
pub const RINGBUF_RECORD_HEADER: usize = 8;

/// A cgroup directory was created.
pub const CGROUP_EVENT_MKDIR: u32 = 1;
/// A cgroup directory was removed.
pub const CGROUP_EVENT_RMDIR: u32 = 2;

/// Flag: the path did not fit into [`CGROUP_PATH_CAP`] bytes.
pub const CGROUP_EVENT_FLAG_TRUNCATED: u32 = 1;

/// One `cgroup:cgroup_mkdir` / `cgroup:cgroup_rmdir` tracepoint hit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupEvent {
    /// [`CGROUP_EVENT_MKDIR`] or [`CGROUP_EVENT_RMDIR`].
    pub kind: u32,
    /// Hierarchy id: 0 for cgroup2, otherwise the v1 hierarchy number.
    pub hierarchy: u32,
    /// Depth below the hierarchy root (the root is 0).
    pub level: u32,
    /// Bytes of `path` that are valid (without the terminating NUL).
    pub path_len: u32,
    /// Kernfs id of the directory (its inode number).
    pub id: u64,
    /// `bpf_ktime_get_boot_ns()` at the event.
    pub boot_ns: u64,
    /// [`CGROUP_EVENT_FLAG_TRUNCATED`] and friends.
    pub flags: u32,
    pub _pad: u32,
    /// Path relative to the hierarchy root, e.g. `/kubepods/pod…/…`.
    pub path: [u8; CGROUP_PATH_CAP],
}

/// Indices into the per-CPU `COUNTERS` array map.
pub mod counter {
    pub const MKDIR_EVENTS: u32 = 0;
    pub const RMDIR_EVENTS: u32 = 1;
    /// A ring-buffer reservation failed: the event was lost in the kernel.
    pub const CGROUP_RINGBUF_DROPS: u32 = 2;
    /// A tracepoint field could not be read.
    pub const CGROUP_READ_ERRORS: u32 = 3;
    pub const OOM_EVENTS: u32 = 4;
    pub const OOM_RINGBUF_DROPS: u32 = 5;
    pub const OOM_READ_ERRORS: u32 = 6;
    /// Number of slots in the map.
    pub const LEN: u32 = 8;
}

/// Length of a task's `comm`, with its NUL.
pub const TASK_COMM_LEN: usize = 16;

/// The record came from `tp_btf/mark_victim` (cgroup ids known).
pub const OOM_SOURCE_BTF: u32 = 1;
/// The record came from the classic `oom:mark_victim` tracepoint (pid and
/// comm only).
pub const OOM_SOURCE_TRACEPOINT: u32 = 2;

/// Flag: `memcg_id` is the victim's memory cgroup.
pub const OOM_FLAG_MEMCG: u32 = 1;
/// Flag: a memory cgroup at its limit was found among the victim's memory
/// cgroup and its ancestors (`oom_memcg_id`); without it the OOM was global.
pub const OOM_FLAG_LIMIT_FOUND: u32 = 2;

/// One OOM victim (`oom:mark_victim` fires once per killed task).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OomEvent {
    /// Thread id of the victim (`task->pid`).
    pub pid: u32,
    /// Process id of the victim (`task->tgid`); 0 when unknown.
    pub tgid: u32,
    /// Kernfs id of the victim's memory cgroup.
    pub memcg_id: u64,
    /// Kernfs id of the memory cgroup whose limit was hit.
    pub oom_memcg_id: u64,
    pub boot_ns: u64,
    /// [`OOM_SOURCE_BTF`] or [`OOM_SOURCE_TRACEPOINT`].
    pub source: u32,
    /// [`OOM_FLAG_MEMCG`], [`OOM_FLAG_LIMIT_FOUND`].
    pub flags: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

/// Records the cgroup iterator can write in one pass (an mmap-able array;
/// a hierarchy with more cgroups sets [`STATS_FLAG_OVERFLOW`] in the header
/// and the rest is left to the file readers).
pub const STATS_CAPACITY: u32 = 16384;

/// Flag: `mem_*` are the memory cgroup's page counters (in pages).
pub const STATS_FLAG_MEMORY: u32 = 1;
/// Flag: `memsw_*` are valid (cgroup v1 memory+swap accounting).
pub const STATS_FLAG_MEMSW: u32 = 2;
/// Flag: `cpu_usage_ns` is cpuacct's usage summed over the possible CPUs.
pub const STATS_FLAG_CPUACCT: u32 = 4;
/// Flag: `mem_soft_limit` is valid (cgroup v1's soft limit, in pages).
pub const STATS_FLAG_SOFT_LIMIT: u32 = 8;
/// Flag: `kmem_usage` is valid (cgroup v1's kernel memory counter).
pub const STATS_FLAG_KMEM: u32 = 16;
/// Flag: `pids_current` and `pids_limit` are the pids controller's.
pub const STATS_FLAG_PIDS: u32 = 32;
/// Flag: `cpu_*` are the cpu controller's shares and CFS bandwidth.
pub const STATS_FLAG_CPU: u32 = 64;
/// Flag: `cpu_bursts` and `cpu_burst_ns` are valid (kernel 5.14+).
pub const STATS_FLAG_CPU_BURST: u32 = 128;
/// Header flag: the hierarchy had more cgroups than [`STATS_CAPACITY`].
pub const STATS_FLAG_OVERFLOW: u32 = 1 << 31;

/// One cgroup's counters, written by the `iter/cgroup` program. Slot 0 of
/// the array is a header: `id` = records written after it, `flags` =
/// [`STATS_FLAG_OVERFLOW`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Kernfs id (the directory's inode number).
    pub id: u64,
    /// Kernfs id of the parent; 0 for the hierarchy's root.
    pub parent_id: u64,
    pub level: u32,
    /// `STATS_FLAG_*`: which values below are valid.
    pub flags: u32,
    /// `mem_cgroup.memory`: usage, max and watermark, in pages.
    pub mem_usage: u64,
    pub mem_max: u64,
    pub mem_watermark: u64,
    /// `mem_cgroup.memsw`, in pages.
    pub memsw_usage: u64,
    pub memsw_max: u64,
    pub memsw_watermark: u64,
    pub cpu_usage_ns: u64,
    /// `mem_cgroup.memory.failcnt`.
    pub mem_failcnt: u64,
    pub mem_soft_limit: u64,
    /// `mem_cgroup.kmem` usage, in pages.
    pub kmem_usage: u64,
    pub pids_current: u64,
    pub pids_limit: u64,
    /// `task_group.shares` (fixed point, as the kernel keeps it).
    pub cpu_shares: u64,
    /// `cfs_bandwidth.quota` (ns, `u64::MAX` unlimited) and `.period` (ns).
    pub cpu_quota_ns: u64,
    pub cpu_period_ns: u64,
    pub cpu_periods: u32,
    pub cpu_throttled: u32,
    pub cpu_throttled_ns: u64,
    pub cpu_bursts: u32,
    pub _pad: u32,
    pub cpu_burst_ns: u64,
}

/// Names the agent and the programs share: maps, programs and the offsets
/// globals, so a typo is a compile error on one side, not a load failure.
pub mod names {
    /// Ring buffer of [`CgroupEvent`](super::CgroupEvent)s.
    pub const CGROUP_EVENTS: &str = "CGROUP_EVENTS";
    /// Ring buffer of [`OomEvent`](super::OomEvent)s.
    pub const OOM_EVENTS: &str = "OOM_EVENTS";
    /// Per-CPU event, drop and error counters ([`counter`](super::counter)).
    pub const COUNTERS: &str = "COUNTERS";
    /// The iterator's output array of [`CgroupStats`](super::CgroupStats).
    pub const CGROUP_STATS: &str = "CGROUP_STATS";

    /// Programs, by the function names the eBPF side gives them.
    pub const CGROUP_MKDIR_BTF: &str = "cgroup_mkdir_btf";
    pub const CGROUP_RMDIR_BTF: &str = "cgroup_rmdir_btf";
    pub const CGROUP_MKDIR_TP: &str = "cgroup_mkdir";
    pub const CGROUP_RMDIR_TP: &str = "cgroup_rmdir";
    pub const MARK_VICTIM_BTF: &str = "mark_victim_btf";
    pub const MARK_VICTIM_TP: &str = "mark_victim_tp";
    pub const CGROUP_STATS_ITER: &str = "cgroup_stats";

    /// The `target` of the programs' aya-log messages, in the agent's log.
    pub const LOG_TARGET: &str = "cgscope::bpf_programs";

    /// Globals, one per program family (see [`offsets`](super::offsets)).
    pub const CGROUP_TP_OFFSETS: &str = "CGROUP_TP_OFFSETS";
    pub const CGROUP_BTF_OFFSETS: &str = "CGROUP_BTF_OFFSETS";
    pub const OOM_BTF_OFFSETS: &str = "OOM_BTF_OFFSETS";
    pub const OOM_TP_OFFSETS: &str = "OOM_TP_OFFSETS";
    pub const ITER_OFFSETS: &str = "ITER_OFFSETS";
}

/// What the programs cannot know when they are built: byte offsets in
/// tracepoint records (from tracefs) and in kernel structures (from BTF),
/// one struct per program family, set by the agent at load time with one
/// global each. A zero offset means the program family is not usable and
/// is not attached.
pub mod offsets {
    /// The classic `cgroup:cgroup_mkdir`/`cgroup_rmdir` record.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct CgroupTp {
        pub root: u32,
        pub level: u32,
        pub id: u32,
        /// 4 or 8 bytes, by kernel.
        pub id_size: u32,
        /// The `__data_loc` word of the path.
        pub path: u32,
    }

    /// `struct cgroup` and its kernfs node, for the `tp_btf` programs.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct CgroupBtf {
        pub root: u32,
        pub hierarchy_id: u32,
        pub level: u32,
        pub kn: u32,
        pub kn_id: u32,
    }

    /// The victim task and its memory cgroup's ancestry, for
    /// `tp_btf/mark_victim` (and the classic one's limit search).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct OomBtf {
        pub task_pid: u32,
        pub task_tgid: u32,
        pub task_comm: u32,
        pub task_cgroups: u32,
        /// `css_set.subsys[memory_cgrp_id]`.
        pub css_set_memory: u32,
        pub css_cgroup: u32,
        pub css_parent: u32,
        pub cgroup_kn: u32,
        pub kn_id: u32,
        /// `mem_cgroup.memory` usage and max (a `page_counter`).
        pub memcg_usage: u32,
        pub memcg_max: u32,
        /// `mem_cgroup.memsw` (v1); 0 where there is none.
        pub memsw_usage: u32,
        pub memsw_max: u32,
    }

    /// The classic `oom:mark_victim` record.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct OomTp {
        pub pid: u32,
        /// The `__data_loc` word of the comm; 0 before 6.8 (pid only).
        pub comm: u32,
    }

    /// Every structure the `iter/cgroup` program reads; each controller's
    /// offsets are 0 where the kernel lacks it.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Iter {
        pub cgroup_kn: u32,
        pub kn_id: u32,
        pub cgroup_level: u32,
        /// `cgroup.self.parent`: the parent's css, whose `cgroup` is the parent.
        pub cgroup_parent_css: u32,
        pub css_cgroup: u32,
        /// `cgroup.subsys[memory_cgrp_id]`; the `mem_*`, `kmem_*` and
        /// `memsw_*` offsets are from that css.
        pub cgroup_memory: u32,
        pub mem_usage: u32,
        pub mem_max: u32,
        pub mem_watermark: u32,
        pub mem_failcnt: u32,
        pub mem_soft_limit: u32,
        pub kmem_usage: u32,
        pub memsw_usage: u32,
        pub memsw_max: u32,
        pub memsw_watermark: u32,
        /// `cgroup.subsys[cpuacct_cgrp_id]`, and `cpuacct.cpuusage` from that css.
        pub cgroup_cpuacct: u32,
        pub cpuacct_usage: u32,
        /// `cgroup.subsys[pids_cgrp_id]`, and `pids_cgroup.counter`, `.limit`.
        pub cgroup_pids: u32,
        pub pids_counter: u32,
        pub pids_limit: u32,
        /// `cgroup.subsys[cpu_cgrp_id]`, and from that css (a `task_group`):
        /// `shares` and `cfs_bandwidth`'s members.
        pub cgroup_cpu: u32,
        pub tg_shares: u32,
        pub cfs_quota: u32,
        pub cfs_period: u32,
        pub cfs_nr_periods: u32,
        pub cfs_nr_throttled: u32,
        pub cfs_throttled_time: u32,
        pub cfs_nr_burst: u32,
        pub cfs_burst_time: u32,
        /// `bpf_array.pptrs`: the per-CPU pointer of the probe array's element.
        pub array_pptrs: u32,
        /// Possible CPUs (0 disables cpuacct).
        pub nr_cpus: u32,
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, every bit pattern is valid.
    unsafe impl aya::Pod for super::CgroupStats {}
    // SAFETY: plain old data, every bit pattern is valid.
    unsafe impl aya::Pod for super::CgroupEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OomEvent {}
    // SAFETY: `#[repr(C)]` structs of `u32`s, no padding.
    unsafe impl aya::Pod for super::offsets::CgroupTp {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::offsets::CgroupBtf {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::offsets::OomBtf {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::offsets::OomTp {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::offsets::Iter {}
}
