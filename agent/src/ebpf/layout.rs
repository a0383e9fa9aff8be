//! Tracepoint record layouts handed to the eBPF programs as globals.

use std::path::Path;

use agent_common::offsets::{CgroupBtf, CgroupTp};

use super::{
    btf::{Arg, Btf, BtfError, Shape},
    tracefs::{FormatError, TracepointFormat},
    EbpfError,
};

/// `struct cgroup` offsets the `tp_btf` cgroup programs read, from BTF,
/// once both tracepoints are seen to pass `(struct cgroup *, const char *)`.
pub fn cgroup_btf(btf: &Btf) -> Result<CgroupBtf, BtfError> {
    for tp in ["cgroup_mkdir", "cgroup_rmdir"] {
        let args = btf.tracepoint_args(tp)?;
        if args != [Arg::PtrTo("cgroup".into()), Arg::PtrTo(String::new())] {
            return Err(BtfError::Prototype {
                tp: tp.into(),
                expected: "(struct cgroup *, const char *)".into(),
                found: format!("{args:?}"),
            });
        }
    }
    Ok(CgroupBtf {
        root: btf.typed_offset("cgroup", &["root"], |s| s == Shape::Ptr)?,
        hierarchy_id: btf.typed_offset("cgroup_root", &["hierarchy_id"], |s| s == Shape::Int(4))?,
        level: btf.typed_offset("cgroup", &["level"], |s| s == Shape::Int(4))?,
        kn: btf.typed_offset("cgroup", &["kn"], |s| s == Shape::Ptr)?,
        kn_id: btf.typed_offset("kernfs_node", &["id"], |s| s == Shape::Int(8))?,
    })
}

/// Offsets of the `cgroup` event class (`cgroup_mkdir`, `cgroup_rmdir`, …).
pub fn cgroup_tp_format(f: &TracepointFormat) -> Result<CgroupTp, FormatError> {
    let id = f.int("id", &[4, 8])?;
    Ok(CgroupTp {
        root: f.int("root", &[4])?.offset,
        level: f.int("level", &[4])?.offset,
        id: id.offset,
        id_size: id.size,
        path: f.data_loc("path")?.offset,
    })
}

/// Reads both events; they share one class, and the programs rely on it.
pub fn cgroup_tp(tracefs: &Path) -> Result<CgroupTp, EbpfError> {
    let read = |event: &'static str| {
        TracepointFormat::read(tracefs, "cgroup", event)
            .and_then(|f| cgroup_tp_format(&f))
            .map_err(|source| EbpfError::Format { event, source })
    };
    let mkdir = read("cgroup_mkdir")?;
    let rmdir = read("cgroup_rmdir")?;
    if mkdir != rmdir {
        return Err(EbpfError::Format {
            event: "cgroup_rmdir",
            source: FormatError::Syntax {
                line: 0,
                text: format!("layout differs from cgroup_mkdir: {rmdir:?} vs {mkdir:?}"),
            },
        });
    }
    Ok(mkdir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(file: &str) -> CgroupTp {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tracefs")
            .join(file);
        cgroup_tp_format(&TracepointFormat::parse(&std::fs::read_to_string(p).unwrap()).unwrap())
            .unwrap()
    }

    #[test]
    fn this_kernels_cgroup_btf_layout() {
        let Ok(btf) = Btf::from_sys() else {
            testkit::skip("no vmlinux BTF");
            return;
        };
        let l = cgroup_btf(&btf).unwrap();
        assert_ne!(l.root, l.kn);
        assert!(l.level > 0 && l.kn_id > 0);
    }

    #[test]
    fn both_kernel_generations() {
        assert_eq!(
            layout("cgroup_mkdir.6.18.format"),
            CgroupTp {
                root: 8,
                level: 12,
                id: 16,
                id_size: 8,
                path: 24
            }
        );
        assert_eq!(
            layout("cgroup_mkdir.4.14.format"),
            CgroupTp {
                root: 8,
                level: 16,
                id: 12,
                id_size: 4,
                path: 20
            }
        );
    }
}
