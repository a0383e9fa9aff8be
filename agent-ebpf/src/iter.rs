//! `iter/cgroup`: every cgroup of one hierarchy in one pass (the agent
//! attaches it to a hierarchy's root with pre-order descendant walking).
//! Each cgroup's counters go into an mmap-able array, not the seq file: a
//! cgroup iterator cannot resume after a `read()`, and its seq output stops
//! at one page of records. The `read()` only drives the walk.
//!
//! Every offset is a global set from the kernel's BTF at load time; a zero
//! offset disables the values that need it.

use agent_common::{
    CgroupStats, STATS_CAPACITY, STATS_FLAG_CPU, STATS_FLAG_CPU_BURST, STATS_FLAG_CPUACCT,
    STATS_FLAG_KMEM, STATS_FLAG_MEMORY, STATS_FLAG_MEMSW, STATS_FLAG_OVERFLOW, STATS_FLAG_PIDS,
    STATS_FLAG_SOFT_LIMIT, offsets,
};
use aya_ebpf::{
    helpers::generated::{bpf_map_lookup_percpu_elem, bpf_probe_read_kernel},
    macros::map,
    maps::{Array, PerCpuArray},
};

use crate::cgroup::global;

const BPF_F_MMAPABLE: u32 = 1 << 10;
/// The most CPUs whose per-CPU counters are summed.
const MAX_CPUS: u32 = 1024;

/// Slot 0 is the header (records written, overflow flag); records follow.
#[map]
static CGROUP_STATS: Array<CgroupStats> =
    Array::with_max_entries(STATS_CAPACITY + 1, BPF_F_MMAPABLE);

/// One u64 per CPU: the address of each CPU's copy, minus the per-CPU
/// pointer they share, is that CPU's per-CPU offset (this kernel's verifier
/// rejects `bpf_per_cpu_ptr` on untyped per-CPU pointers).
#[map]
static PERCPU_PROBE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Each CPU's per-CPU offset, found at the first cgroup of a pass.
#[map]
static CPU_OFFSETS: Array<u64> = Array::with_max_entries(MAX_CPUS, 0);

/// Set from BTF (agent/src/ebpf/iter.rs; see `agent_common::offsets::Iter`).
#[unsafe(no_mangle)]
static ITER_OFFSETS: offsets::Iter = offsets::Iter {
    cgroup_kn: 0,
    kn_id: 0,
    cgroup_level: 0,
    cgroup_parent_css: 0,
    css_cgroup: 0,
    cgroup_memory: 0,
    mem_usage: 0,
    mem_max: 0,
    mem_watermark: 0,
    mem_failcnt: 0,
    mem_soft_limit: 0,
    kmem_usage: 0,
    memsw_usage: 0,
    memsw_max: 0,
    memsw_watermark: 0,
    cgroup_cpuacct: 0,
    cpuacct_usage: 0,
    cgroup_pids: 0,
    pids_counter: 0,
    pids_limit: 0,
    cgroup_cpu: 0,
    tg_shares: 0,
    cfs_quota: 0,
    cfs_period: 0,
    cfs_nr_periods: 0,
    cfs_nr_throttled: 0,
    cfs_throttled_time: 0,
    cfs_nr_burst: 0,
    cfs_burst_time: 0,
    array_pptrs: 0,
    nr_cpus: 0,
};

#[inline(always)]
unsafe fn read<T: Default>(addr: u64) -> Result<T, i64> {
    let mut v = T::default();
    let rc = unsafe {
        bpf_probe_read_kernel(
            &mut v as *mut T as *mut _,
            core::mem::size_of::<T>() as u32,
            addr as *const _,
        )
    };
    if rc == 0 { Ok(v) } else { Err(rc) }
}

/// A pointer's value as a plain number: read back through a helper, the
/// verifier no longer types it as a map or map-value pointer, so it can be
/// offset and subtracted.
#[inline(always)]
unsafe fn launder<T>(p: *const T) -> u64 {
    let slot: *const T = p;
    unsafe { read::<u64>(&slot as *const *const T as u64) }.unwrap_or(0)
}

#[unsafe(link_section = "iter/cgroup")]
#[unsafe(no_mangle)]
pub extern "C" fn cgroup_stats(ctx: *mut core::ffi::c_void) -> i32 {
    // struct bpf_iter__cgroup { struct bpf_iter_meta *meta; struct cgroup *cgroup; }
    let cgrp = unsafe { *(ctx as *const *const u8).add(1) };
    if cgrp.is_null() {
        // The call after the last cgroup.
        return 0;
    }
    let Some(header) = CGROUP_STATS.get_ptr_mut(0) else {
        return 0;
    };
    let n = unsafe { (*header).id };
    if n == 0 {
        find_cpu_offsets();
    }
    // The agent sizes the array (at most STATS_CAPACITY records).
    let rec = if n < u64::from(STATS_CAPACITY) {
        CGROUP_STATS.get_ptr_mut(n as u32 + 1)
    } else {
        None
    };
    let Some(rec) = rec else {
        unsafe { (*header).flags |= STATS_FLAG_OVERFLOW };
        return 0;
    };
    unsafe {
        (*header).id = n + 1;
        *rec = CgroupStats::default();
        let _ = fill(cgrp as u64, &mut *rec);
    }
    0
}

unsafe fn kn_id(cgrp: u64) -> Result<u64, i64> {
    unsafe {
        let kn: u64 = read(cgrp + u64::from(global(&ITER_OFFSETS.cgroup_kn)))?;
        read(kn + u64::from(global(&ITER_OFFSETS.kn_id)))
    }
}

unsafe fn fill(cgrp: u64, rec: &mut CgroupStats) -> Result<(), i64> {
    unsafe {
        rec.id = kn_id(cgrp)?;
        rec.level = read(cgrp + u64::from(global(&ITER_OFFSETS.cgroup_level)))?;
        let parent_css: u64 = read(cgrp + u64::from(global(&ITER_OFFSETS.cgroup_parent_css)))?;
        if parent_css != 0 {
            let parent: u64 = read(parent_css + u64::from(global(&ITER_OFFSETS.css_cgroup)))?;
            rec.parent_id = kn_id(parent)?;
        }
        memory(cgrp, rec);
        cpuacct(cgrp, rec);
        pids(cgrp, rec);
        cpu(cgrp, rec);
    }
    Ok(())
}

/// The cgroup's css of the subsystem at `cgroup.subsys[]` offset `off`
/// (`None` when the kernel lacks it or the cgroup has none).
#[inline(always)]
unsafe fn css(cgrp: u64, off: &'static u32) -> Option<u64> {
    let off = global(off);
    if off == 0 {
        return None;
    }
    unsafe { read::<u64>(cgrp + u64::from(off)) }
        .ok()
        .filter(|&css| css != 0)
}

unsafe fn memory(cgrp: u64, rec: &mut CgroupStats) {
    let Some(css) = (unsafe { css(cgrp, &ITER_OFFSETS.cgroup_memory) }) else {
        return;
    };
    let at = |g: &'static u32| css + u64::from(global(g));
    unsafe {
        if let (Ok(u), Ok(m), Ok(w), Ok(f)) = (
            read::<u64>(at(&ITER_OFFSETS.mem_usage)),
            read::<u64>(at(&ITER_OFFSETS.mem_max)),
            read::<u64>(at(&ITER_OFFSETS.mem_watermark)),
            read::<u64>(at(&ITER_OFFSETS.mem_failcnt)),
        ) {
            (
                rec.mem_usage,
                rec.mem_max,
                rec.mem_watermark,
                rec.mem_failcnt,
            ) = (u, m, w, f);
            rec.flags |= STATS_FLAG_MEMORY;
        }
        if global(&ITER_OFFSETS.mem_soft_limit) != 0 {
            if let Ok(v) = read::<u64>(at(&ITER_OFFSETS.mem_soft_limit)) {
                rec.mem_soft_limit = v;
                rec.flags |= STATS_FLAG_SOFT_LIMIT;
            }
        }
        if global(&ITER_OFFSETS.kmem_usage) != 0 {
            if let Ok(v) = read::<u64>(at(&ITER_OFFSETS.kmem_usage)) {
                rec.kmem_usage = v;
                rec.flags |= STATS_FLAG_KMEM;
            }
        }
        if global(&ITER_OFFSETS.memsw_usage) != 0 {
            if let (Ok(u), Ok(m), Ok(w)) = (
                read::<u64>(at(&ITER_OFFSETS.memsw_usage)),
                read::<u64>(at(&ITER_OFFSETS.memsw_max)),
                read::<u64>(at(&ITER_OFFSETS.memsw_watermark)),
            ) {
                (rec.memsw_usage, rec.memsw_max, rec.memsw_watermark) = (u, m, w);
                rec.flags |= STATS_FLAG_MEMSW;
            }
        }
    }
}

/// Fills `CPU_OFFSETS` from `PERCPU_PROBE`'s per-CPU copies.
fn find_cpu_offsets() {
    let nr = global(&ITER_OFFSETS.nr_cpus);
    if nr == 0 || global(&ITER_OFFSETS.array_pptrs) == 0 {
        return;
    }
    let map = &PERCPU_PROBE as *const PerCpuArray<u64>;
    let base = unsafe { launder(map) };
    let Ok(pptr) = (unsafe { read::<u64>(base + u64::from(global(&ITER_OFFSETS.array_pptrs))) })
    else {
        return;
    };
    let key = 0u32;
    for cpu in 0..MAX_CPUS {
        if cpu >= nr {
            break;
        }
        let p = unsafe {
            bpf_map_lookup_percpu_elem(map as *mut _, &key as *const u32 as *const _, cpu)
        };
        if p.is_null() {
            continue;
        }
        let addr = unsafe { launder(p as *const u8) };
        if let Some(slot) = CPU_OFFSETS.get_ptr_mut(cpu) {
            unsafe { *slot = addr.wrapping_sub(pptr) };
        }
    }
}

unsafe fn cpuacct(cgrp: u64, rec: &mut CgroupStats) {
    let nr = global(&ITER_OFFSETS.nr_cpus);
    if nr == 0 {
        return;
    }
    let Some(css) = (unsafe { css(cgrp, &ITER_OFFSETS.cgroup_cpuacct) }) else {
        return;
    };
    let Ok(usage) = (unsafe { read::<u64>(css + u64::from(global(&ITER_OFFSETS.cpuacct_usage))) })
    else {
        return;
    };
    let mut sum = 0u64;
    for cpu in 0..MAX_CPUS {
        if cpu >= nr {
            break;
        }
        let Some(offset) = CPU_OFFSETS.get(cpu) else {
            return;
        };
        match unsafe { read::<u64>(usage.wrapping_add(*offset)) } {
            Ok(v) => sum += v,
            Err(_) => return,
        }
    }
    rec.cpu_usage_ns = sum;
    rec.flags |= STATS_FLAG_CPUACCT;
}

unsafe fn pids(cgrp: u64, rec: &mut CgroupStats) {
    let Some(css) = (unsafe { css(cgrp, &ITER_OFFSETS.cgroup_pids) }) else {
        return;
    };
    let at = |g: &'static u32| css + u64::from(global(g));
    if let (Ok(c), Ok(l)) = unsafe {
        (
            read::<u64>(at(&ITER_OFFSETS.pids_counter)),
            read::<u64>(at(&ITER_OFFSETS.pids_limit)),
        )
    } {
        (rec.pids_current, rec.pids_limit) = (c, l);
        rec.flags |= STATS_FLAG_PIDS;
    }
}

unsafe fn cpu(cgrp: u64, rec: &mut CgroupStats) {
    let Some(css) = (unsafe { css(cgrp, &ITER_OFFSETS.cgroup_cpu) }) else {
        return;
    };
    let at = |g: &'static u32| css + u64::from(global(g));
    unsafe {
        if let (Ok(shares), Ok(quota), Ok(period), Ok(periods), Ok(throttled), Ok(throttled_ns)) = (
            read::<u64>(at(&ITER_OFFSETS.tg_shares)),
            read::<u64>(at(&ITER_OFFSETS.cfs_quota)),
            read::<u64>(at(&ITER_OFFSETS.cfs_period)),
            read::<u32>(at(&ITER_OFFSETS.cfs_nr_periods)),
            read::<u32>(at(&ITER_OFFSETS.cfs_nr_throttled)),
            read::<u64>(at(&ITER_OFFSETS.cfs_throttled_time)),
        ) {
            (rec.cpu_shares, rec.cpu_quota_ns, rec.cpu_period_ns) = (shares, quota, period);
            (rec.cpu_periods, rec.cpu_throttled, rec.cpu_throttled_ns) =
                (periods, throttled, throttled_ns);
            rec.flags |= STATS_FLAG_CPU;
        }
        if global(&ITER_OFFSETS.cfs_nr_burst) != 0 {
            if let (Ok(n), Ok(t)) = (
                read::<u32>(at(&ITER_OFFSETS.cfs_nr_burst)),
                read::<u64>(at(&ITER_OFFSETS.cfs_burst_time)),
            ) {
                (rec.cpu_bursts, rec.cpu_burst_ns) = (n, t);
                rec.flags |= STATS_FLAG_CPU_BURST;
            }
        }
    }
}
