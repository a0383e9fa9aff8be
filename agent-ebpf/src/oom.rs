//! OOM victims: `tp_btf/mark_victim` (first choice) and the classic
//! `oom:mark_victim` tracepoint (fallback), into one ring buffer.
//!
//! The BTF program walks `task->cgroups->subsys[memory_cgrp_id]` to the
//! victim's memory cgroup, then up its ancestors to the first one whose
//! page counter is at its limit: the memory cgroup that ran out. Every
//! offset is a global set from the kernel's BTF at load time.
//!
//! Before 6.8 the tracepoint passes only the victim's pid. Its program then
//! walks the task that ran out (the current one: a memory cgroup's OOM
//! kill runs in the task whose charge failed, below the cgroup at its
//! limit), which is also the victim when the pids agree.

use agent_common::{
    OOM_FLAG_LIMIT_FOUND, OOM_FLAG_MEMCG, OOM_RINGBUF_BYTES, OOM_SOURCE_BTF, OOM_SOURCE_TRACEPOINT,
    OomEvent, TASK_COMM_LEN, counter, names, offsets,
};
use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_current_task, bpf_ktime_get_boot_ns},
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::RingBuf,
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::debug;

use crate::cgroup::{COUNTERS, Failed, bump, global};

#[map]
static OOM_EVENTS: RingBuf = RingBuf::with_byte_size(OOM_RINGBUF_BYTES, 0);

// From BTF (see agent/src/ebpf/oom_layout.rs). 0 size/offset pairs that the
// agent could not find disable the part of the walk that needs them.
#[unsafe(no_mangle)]
static OOM_BTF_OFFSETS: offsets::OomBtf = offsets::OomBtf {
    task_pid: 0,
    task_tgid: 0,
    task_comm: 0,
    task_cgroups: 0,
    css_set_memory: 0,
    css_cgroup: 0,
    css_parent: 0,
    cgroup_kn: 0,
    kn_id: 0,
    memcg_usage: 0,
    memcg_max: 0,
    memsw_usage: 0,
    memsw_max: 0,
};

/// Pages below the limit that still count as "at the limit": a failed
/// charge can leave up to a charge batch unused.
#[unsafe(no_mangle)]
static LIMIT_SLACK_PAGES: u32 = 256;

// The classic tracepoint's layout, from tracefs.
#[unsafe(no_mangle)]
static OOM_TP_OFFSETS: offsets::OomTp = offsets::OomTp { pid: 8, comm: 12 };

const MAX_DEPTH: usize = 16;

#[inline(always)]
unsafe fn read<T>(base: *const u8, off: u32) -> Result<T, Failed> {
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T) }.map_err(|e| Failed {
        code: e as i64,
        off,
    })
}

#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim_btf(ctx: BtfTracePointContext) -> i32 {
    bump(&COUNTERS, counter::OOM_EVENTS);
    let task: *const u8 = ctx.arg(0);
    let Some(mut entry) = OOM_EVENTS.reserve::<OomEvent>(0) else {
        bump(&COUNTERS, counter::OOM_RINGBUF_DROPS);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    match unsafe { fill_btf(task, ev) } {
        Ok(()) => entry.submit(0),
        Err(e) => {
            entry.discard(0);
            bump(&COUNTERS, counter::OOM_READ_ERRORS);
            debug!(&ctx, target: names::LOG_TARGET, "mark_victim_btf: a read at offset {} failed: {}", e.off, e.code
            );
        }
    }
    0
}

#[inline(always)]
unsafe fn kn_id(css: *const u8) -> Result<u64, Failed> {
    unsafe {
        let cgrp: *const u8 = read(css, global(&OOM_BTF_OFFSETS.css_cgroup))?;
        let kn: *const u8 = read(cgrp, global(&OOM_BTF_OFFSETS.cgroup_kn))?;
        read(kn, global(&OOM_BTF_OFFSETS.kn_id))
    }
}

#[inline(always)]
unsafe fn at_limit(css: *const u8, usage_off: u32, max_off: u32) -> bool {
    if usage_off == 0 || max_off == 0 {
        return false;
    }
    let (Ok(usage), Ok(max)) = (unsafe { read::<u64>(css, usage_off) }, unsafe {
        read::<u64>(css, max_off)
    }) else {
        return false;
    };
    usage.saturating_add(u64::from(global(&LIMIT_SLACK_PAGES))) >= max
}

unsafe fn fill_btf(task: *const u8, ev: *mut OomEvent) -> Result<(), Failed> {
    unsafe {
        (*ev).source = OOM_SOURCE_BTF;
        (*ev).flags = 0;
        (*ev).memcg_id = 0;
        (*ev).oom_memcg_id = 0;
        (*ev).boot_ns = bpf_ktime_get_boot_ns();
        (*ev).pid = read::<i32>(task, global(&OOM_BTF_OFFSETS.task_pid))? as u32;
        (*ev).tgid = read::<i32>(task, global(&OOM_BTF_OFFSETS.task_tgid))? as u32;
        (*ev).comm = read::<[u8; TASK_COMM_LEN]>(task, global(&OOM_BTF_OFFSETS.task_comm))?;
        walk_memcg(task, ev, true)
    }
}

/// From `task`'s memory cgroup (the victim's when `victim`) up to the
/// first one at its limit.
#[inline(always)]
unsafe fn walk_memcg(task: *const u8, ev: *mut OomEvent, victim: bool) -> Result<(), Failed> {
    unsafe {
        let cgroups: *const u8 = read(task, global(&OOM_BTF_OFFSETS.task_cgroups))?;
        let mut css: *const u8 = read(cgroups, global(&OOM_BTF_OFFSETS.css_set_memory))?;
        if css.is_null() {
            return Ok(());
        }
        if victim {
            (*ev).memcg_id = kn_id(css)?;
            (*ev).flags |= OOM_FLAG_MEMCG;
        }
        for _ in 0..MAX_DEPTH {
            if at_limit(
                css,
                global(&OOM_BTF_OFFSETS.memcg_usage),
                global(&OOM_BTF_OFFSETS.memcg_max),
            ) || at_limit(
                css,
                global(&OOM_BTF_OFFSETS.memsw_usage),
                global(&OOM_BTF_OFFSETS.memsw_max),
            ) {
                (*ev).oom_memcg_id = kn_id(css)?;
                (*ev).flags |= OOM_FLAG_LIMIT_FOUND;
                break;
            }
            css = read(css, global(&OOM_BTF_OFFSETS.css_parent))?;
            if css.is_null() {
                break;
            }
        }
    }
    Ok(())
}

#[tracepoint]
pub fn mark_victim_tp(ctx: TracePointContext) -> u32 {
    bump(&COUNTERS, counter::OOM_EVENTS);
    let Some(mut entry) = OOM_EVENTS.reserve::<OomEvent>(0) else {
        bump(&COUNTERS, counter::OOM_RINGBUF_DROPS);
        return 0;
    };
    match fill_tp(&ctx, entry.as_mut_ptr()) {
        Ok(()) => entry.submit(0),
        Err(e) => {
            entry.discard(0);
            bump(&COUNTERS, counter::OOM_READ_ERRORS);
            debug!(&ctx, target: names::LOG_TARGET, "mark_victim_tp: a read at offset {} failed: {}", e.off, e.code
            );
        }
    }
    0
}

fn fill_tp(ctx: &TracePointContext, ev: *mut OomEvent) -> Result<(), Failed> {
    let at = |off: u32| {
        move |code: i32| Failed {
            code: code.into(),
            off,
        }
    };
    let pid_at = global(&OOM_TP_OFFSETS.pid);
    let pid: i32 = unsafe { ctx.read_at(pid_at as usize) }.map_err(at(pid_at))?;
    let comm_at = global(&OOM_TP_OFFSETS.comm);
    unsafe {
        (*ev).source = OOM_SOURCE_TRACEPOINT;
        (*ev).flags = 0;
        (*ev).pid = pid as u32;
        (*ev).tgid = 0;
        (*ev).memcg_id = 0;
        (*ev).oom_memcg_id = 0;
        (*ev).boot_ns = bpf_ktime_get_boot_ns();
        (*ev).comm = [0; TASK_COMM_LEN];
        // Older kernels record no comm (offset 0).
        if comm_at != 0 {
            let loc: u32 = ctx.read_at(comm_at as usize).map_err(at(comm_at))?;
            let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
            (*ev).comm =
                bpf_probe_read_kernel(src as *const [u8; TASK_COMM_LEN]).map_err(|e| Failed {
                    code: e as i64,
                    off: loc & 0xffff,
                })?;
        }
        // Without BTF offsets the agent resolves the victim from /proc alone.
        if global(&OOM_BTF_OFFSETS.task_cgroups) != 0 {
            let task = bpf_get_current_task() as *const u8;
            let current = read::<i32>(task, global(&OOM_BTF_OFFSETS.task_pid));
            let is_victim = matches!(current, Ok(p) if p == pid);
            if is_victim {
                (*ev).tgid =
                    read::<i32>(task, global(&OOM_BTF_OFFSETS.task_tgid)).unwrap_or(0) as u32;
                if comm_at == 0
                    && let Ok(comm) =
                        read::<[u8; TASK_COMM_LEN]>(task, global(&OOM_BTF_OFFSETS.task_comm))
                {
                    (*ev).comm = comm;
                }
            }
            // The pid alone still names the victim: a failed walk is
            // counted, not fatal.
            if let Err(e) = walk_memcg(task, ev, is_victim) {
                bump(&COUNTERS, counter::OOM_READ_ERRORS);
                debug!(ctx, target: names::LOG_TARGET, "mark_victim_tp: walking the memory cgroups, a read at offset {} failed: {}",
                    e.off,
                    e.code
                );
            }
        }
    }
    Ok(())
}
