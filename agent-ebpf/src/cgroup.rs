//! `cgroup:cgroup_mkdir` and `cgroup:cgroup_rmdir` into one ring buffer:
//! as `tp_btf` programs (first choice: they attach without a perf event,
//! which Debian's and Ubuntu's kernels refuse without CAP_SYS_ADMIN) that
//! read the `struct cgroup` they are handed, else as classic tracepoints
//! that read the tracefs record.

use agent_common::{
    CGROUP_EVENT_FLAG_TRUNCATED, CGROUP_EVENT_MKDIR, CGROUP_EVENT_RMDIR, CGROUP_PATH_CAP,
    CGROUP_RINGBUF_BYTES, CgroupEvent, counter, names, offsets,
};
use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::debug;

#[map]
static CGROUP_EVENTS: RingBuf = RingBuf::with_byte_size(CGROUP_RINGBUF_BYTES, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

// Record layout of the cgroup event class, overridden from tracefs. The
// defaults are the 5.x+ layout and are never relied upon.
#[unsafe(no_mangle)]
static CGROUP_TP_OFFSETS: offsets::CgroupTp = offsets::CgroupTp {
    root: 8,
    level: 12,
    id: 16,
    id_size: 8,
    path: 24,
};

// `struct cgroup` offsets from BTF (agent/src/ebpf/layout.rs), for the
// tp_btf programs.
#[unsafe(no_mangle)]
static CGROUP_BTF_OFFSETS: offsets::CgroupBtf = offsets::CgroupBtf {
    root: 0,
    hierarchy_id: 0,
    level: 0,
    kn: 0,
    kn_id: 0,
};

#[inline(always)]
pub(crate) fn global(v: &'static u32) -> u32 {
    // Volatile so the compiler cannot fold the default into the code.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub(crate) fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        unsafe { *slot += 1 };
    }
}

#[tracepoint]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    bump(&COUNTERS, counter::MKDIR_EVENTS);
    emit(&ctx, CGROUP_EVENT_MKDIR);
    0
}

#[tracepoint]
pub fn cgroup_rmdir(ctx: TracePointContext) -> u32 {
    bump(&COUNTERS, counter::RMDIR_EVENTS);
    emit(&ctx, CGROUP_EVENT_RMDIR);
    0
}

#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir_btf(ctx: BtfTracePointContext) -> i32 {
    bump(&COUNTERS, counter::MKDIR_EVENTS);
    emit_btf(&ctx, CGROUP_EVENT_MKDIR);
    0
}

#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgroup_rmdir_btf(ctx: BtfTracePointContext) -> i32 {
    bump(&COUNTERS, counter::RMDIR_EVENTS);
    emit_btf(&ctx, CGROUP_EVENT_RMDIR);
    0
}

/// A kernel read that failed: the helper's error and the offset it read
/// at, for the debug log (`--log-level agent_ebpf=debug`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failed {
    pub code: i64,
    pub off: u32,
}

#[inline(always)]
unsafe fn read<T>(base: *const u8, off: u32) -> Result<T, Failed> {
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    let rc = unsafe {
        bpf_probe_read_kernel(
            v.as_mut_ptr() as *mut core::ffi::c_void,
            core::mem::size_of::<T>() as u32,
            base.add(off as usize) as *const core::ffi::c_void,
        )
    };
    if rc != 0 {
        return Err(Failed { code: rc, off });
    }
    Ok(unsafe { v.assume_init() })
}

#[inline(always)]
fn emit_btf(ctx: &BtfTracePointContext, kind: u32) {
    let Some(mut entry) = CGROUP_EVENTS.reserve::<CgroupEvent>(0) else {
        bump(&COUNTERS, counter::CGROUP_RINGBUF_DROPS);
        return;
    };
    // The tracepoint's prototype: (struct cgroup *cgrp, const char *path).
    let cgrp: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    match unsafe { fill_btf(cgrp, path, kind, entry.as_mut_ptr()) } {
        Ok(()) => entry.submit(0),
        Err(e) => {
            entry.discard(0);
            bump(&COUNTERS, counter::CGROUP_READ_ERRORS);
            debug!(ctx, target: names::LOG_TARGET, "cgroup_*_btf: reading struct cgroup at offset {} failed: {}", e.off, e.code
            );
        }
    }
}

#[inline(always)]
unsafe fn fill_btf(
    cgrp: *const u8,
    path: *const u8,
    kind: u32,
    ev: *mut CgroupEvent,
) -> Result<(), Failed> {
    unsafe {
        let root: *const u8 = read(cgrp, global(&CGROUP_BTF_OFFSETS.root))?;
        let kn: *const u8 = read(cgrp, global(&CGROUP_BTF_OFFSETS.kn))?;
        (*ev).kind = kind;
        (*ev).hierarchy = read::<i32>(root, global(&CGROUP_BTF_OFFSETS.hierarchy_id))? as u32;
        (*ev).level = read::<i32>(cgrp, global(&CGROUP_BTF_OFFSETS.level))? as u32;
        (*ev).id = read::<u64>(kn, global(&CGROUP_BTF_OFFSETS.kn_id))?;
        (*ev).boot_ns = bpf_ktime_get_boot_ns();
        (*ev)._pad = 0;
        let dst = core::ptr::addr_of_mut!((*ev).path) as *mut core::ffi::c_void;
        let n = bpf_probe_read_kernel_str(
            dst,
            CGROUP_PATH_CAP as u32,
            path as *const core::ffi::c_void,
        );
        if n < 0 {
            // Offset 0: the path, the tracepoint's second argument.
            return Err(Failed { code: n, off: 0 });
        }
        // A full buffer may have cut the path (or it fit exactly: then the
        // walk adds it all the same).
        (*ev).flags = if n as usize >= CGROUP_PATH_CAP {
            CGROUP_EVENT_FLAG_TRUNCATED
        } else {
            0
        };
        (*ev).path_len = n as u32;
    }
    Ok(())
}

#[inline(always)]
fn emit(ctx: &TracePointContext, kind: u32) {
    // The record is larger than the 512-byte stack: fill it in place.
    let Some(mut entry) = CGROUP_EVENTS.reserve::<CgroupEvent>(0) else {
        bump(&COUNTERS, counter::CGROUP_RINGBUF_DROPS);
        return;
    };
    match fill(ctx, kind, entry.as_mut_ptr()) {
        Ok(()) => entry.submit(0),
        Err(e) => {
            entry.discard(0);
            bump(&COUNTERS, counter::CGROUP_READ_ERRORS);
            debug!(ctx, target: names::LOG_TARGET, "cgroup_*: reading the record at offset {} failed: {}", e.off, e.code
            );
        }
    }
}

#[inline(always)]
fn fill(ctx: &TracePointContext, kind: u32, ev: *mut CgroupEvent) -> Result<(), Failed> {
    let at = |off: u32| {
        move |code: i32| Failed {
            code: code.into(),
            off,
        }
    };
    let o = &CGROUP_TP_OFFSETS;
    let root: i32 =
        unsafe { ctx.read_at(global(&o.root) as usize) }.map_err(at(global(&o.root)))?;
    let level: i32 =
        unsafe { ctx.read_at(global(&o.level) as usize) }.map_err(at(global(&o.level)))?;
    let id: u64 = if global(&o.id_size) == 8 {
        unsafe { ctx.read_at(global(&o.id) as usize) }.map_err(at(global(&o.id)))?
    } else {
        u64::from(unsafe { ctx.read_at::<u32>(global(&o.id) as usize) }.map_err(at(global(&o.id)))?)
    };
    // __data_loc: low 16 bits offset from the record start, high 16 length
    // (including the NUL).
    let loc: u32 = unsafe { ctx.read_at(global(&o.path) as usize) }.map_err(at(global(&o.path)))?;
    let (off, len) = ((loc & 0xffff) as usize, (loc >> 16) as usize);
    let mut flags = 0;
    let mut n = len;
    if n > CGROUP_PATH_CAP - 1 {
        n = CGROUP_PATH_CAP - 1;
        flags |= CGROUP_EVENT_FLAG_TRUNCATED;
    }
    // The mask is a no-op after the clamp but proves the bound to the
    // verifier.
    let n = n & (CGROUP_PATH_CAP - 1);
    unsafe {
        (*ev).kind = kind;
        (*ev).hierarchy = root as u32;
        (*ev).level = level as u32;
        (*ev).id = id;
        (*ev).boot_ns = bpf_ktime_get_boot_ns();
        (*ev).flags = flags;
        (*ev)._pad = 0;
        (*ev).path_len = n as u32;
        let src = (ctx.as_ptr() as *const u8).add(off);
        let dst = core::ptr::addr_of_mut!((*ev).path) as *mut core::ffi::c_void;
        let rc = bpf_probe_read_kernel(dst, n as u32, src as *const core::ffi::c_void);
        if rc != 0 {
            return Err(Failed {
                code: rc,
                off: off as u32,
            });
        }
    }
    Ok(())
}
