//! Globals of the OOM programs: struct member offsets from the kernel's BTF
//! (the `tp_btf/mark_victim` program walks the victim with them, the
//! classic tracepoint's program the task that ran out) and the classic
//! tracepoint's record layout.

use std::path::Path;

use agent_common::offsets::{OomBtf, OomTp};

use super::{
    btf::{Arg, Btf, BtfError, Shape},
    tracefs::{FormatError, TracepointFormat},
};

/// Whether `tp_btf/mark_victim` hands its program the victim's task. On
/// kernels that pass only its pid a program reading it as a task would
/// attach and then read garbage.
pub fn mark_victim_passes_task(btf: &Btf) -> Result<(), BtfError> {
    let args = btf.tracepoint_args("mark_victim")?;
    if args.first() != Some(&Arg::PtrTo("task_struct".into())) {
        return Err(BtfError::Prototype {
            tp: "mark_victim".into(),
            expected: "(struct task_struct *, …)".into(),
            found: format!("{args:?}"),
        });
    }
    Ok(())
}

/// Offsets the OOM programs walk a task's memory cgroups with.
pub fn oom_btf(btf: &Btf) -> Result<OomBtf, BtfError> {
    let int = |n| move |s| s == Shape::Int(n);
    let ptr = |s| s == Shape::Ptr;
    // A counter is a plain integer or an atomic_long_t wrapping one.
    let word = |s| matches!(s, Shape::Int(8) | Shape::Composite(8));
    let memory_id = btf.enum_value("memory_cgrp_id")?;
    let (subsys, shape) = btf.member("css_set", &["subsys"])?;
    let Shape::Array { elem_size: 8, len } = shape else {
        return Err(BtfError::NoMember {
            ty: "css_set".into(),
            member: "subsys[] of pointers".into(),
        });
    };
    if memory_id < 0 || memory_id >= i64::from(len) {
        return Err(BtfError::NoEnumValue(format!(
            "memory_cgrp_id {memory_id} within css_set.subsys[{len}]"
        )));
    }
    let css = btf.offset("mem_cgroup", &["css"])?;
    let counter = |name: &str| -> Result<(u32, u32), BtfError> {
        let usage = btf.typed_offset("mem_cgroup", &[name, "usage"], word)?;
        let max = btf.typed_offset("mem_cgroup", &[name, "max"], word)?;
        Ok((usage - css, max - css))
    };
    let (memcg_usage, memcg_max) = counter("memory")?;
    let (memsw_usage, memsw_max) = counter("memsw").unwrap_or((0, 0));
    Ok(OomBtf {
        task_pid: btf.typed_offset("task_struct", &["pid"], int(4))?,
        task_tgid: btf.typed_offset("task_struct", &["tgid"], int(4))?,
        task_comm: btf.typed_offset("task_struct", &["comm"], |s| {
            s == Shape::Array {
                elem_size: 1,
                len: agent_common::TASK_COMM_LEN as u32,
            }
        })?,
        task_cgroups: btf.typed_offset("task_struct", &["cgroups"], ptr)?,
        css_set_memory: subsys + 8 * memory_id as u32,
        css_cgroup: btf.typed_offset("cgroup_subsys_state", &["cgroup"], ptr)?,
        css_parent: btf.typed_offset("cgroup_subsys_state", &["parent"], ptr)?,
        cgroup_kn: btf.typed_offset("cgroup", &["kn"], ptr)?,
        kn_id: btf.typed_offset("kernfs_node", &["id"], int(8))?,
        memcg_usage,
        memcg_max,
        memsw_usage,
        memsw_max,
    })
}

/// The classic `oom:mark_victim` record: pid and comm.
pub fn mark_victim_format(f: &TracepointFormat) -> Result<OomTp, FormatError> {
    Ok(OomTp {
        pid: f.int("pid", &[4])?.offset,
        // Kernels before 6.8 record only the pid (0 = no comm): the
        // name then comes from /proc while the victim still exists.
        comm: f.data_loc("comm").map_or(0, |c| c.offset),
    })
}

pub fn mark_victim(tracefs: &Path) -> Result<OomTp, FormatError> {
    mark_victim_format(&TracepointFormat::read(tracefs, "oom", "mark_victim")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_victim_formats() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tracefs/mark_victim.6.18.format");
        let f = TracepointFormat::parse(&std::fs::read_to_string(p).unwrap()).unwrap();
        assert_eq!(mark_victim_format(&f).unwrap(), OomTp { pid: 8, comm: 12 });
        let old =
            TracepointFormat::parse("\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n").unwrap();
        assert_eq!(mark_victim_format(&old).unwrap(), OomTp { pid: 8, comm: 0 });
        assert!(mark_victim_format(&TracepointFormat::parse("").unwrap()).is_err());
    }

    #[test]
    fn this_kernels_layout() {
        let Ok(btf) = Btf::from_sys() else {
            testkit::skip("no vmlinux BTF");
            return;
        };
        let l = oom_btf(&btf).unwrap();
        if std::fs::read_to_string("/proc/version").is_ok_and(|v| v.contains(" 6.18.")) {
            // Verified against `stat -c %i` with a C prototype on 6.18.
            assert_eq!(l.task_cgroups, 2376);
            assert_eq!(l.css_set_memory, 4 * 8);
            assert_eq!((l.css_cgroup, l.cgroup_kn, l.kn_id), (0, 256, 96));
        }
        assert!(l.memcg_max > l.memcg_usage);
        assert_ne!(l.task_pid, l.task_tgid);
    }
}
