//! Tracepoint record layouts handed to the eBPF programs as globals.

use std::path::Path;

use super::{
    btf::{Arg, Btf, BtfError, Shape},
    tracefs::{FormatError, TracepointFormat},
    EbpfError,
};

/// `struct cgroup` offsets the `tp_btf` cgroup programs read, from BTF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupBtfLayout {
    pub root: u32,
    pub hierarchy_id: u32,
    pub level: u32,
    pub kn: u32,
    pub kn_id: u32,
}

impl CgroupBtfLayout {
    /// Offsets, once both tracepoints are seen to pass
    /// `(struct cgroup *, const char *)`.
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
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
        Ok(Self {
            root: btf.typed_offset("cgroup", &["root"], |s| s == Shape::Ptr)?,
            hierarchy_id: btf
                .typed_offset("cgroup_root", &["hierarchy_id"], |s| s == Shape::Int(4))?,
            level: btf.typed_offset("cgroup", &["level"], |s| s == Shape::Int(4))?,
            kn: btf.typed_offset("cgroup", &["kn"], |s| s == Shape::Ptr)?,
            kn_id: btf.typed_offset("kernfs_node", &["id"], |s| s == Shape::Int(8))?,
        })
    }

    pub fn globals(&self) -> [(&'static str, u32); 5] {
        [
            ("CGB_ROOT_OFF", self.root),
            ("CGB_HIERARCHY_ID_OFF", self.hierarchy_id),
            ("CGB_LEVEL_OFF", self.level),
            ("CGB_KN_OFF", self.kn),
            ("CGB_KN_ID_OFF", self.kn_id),
        ]
    }
}

/// Offsets of the `cgroup` event class (`cgroup_mkdir`, `cgroup_rmdir`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLayout {
    pub root_off: u32,
    pub level_off: u32,
    pub id_off: u32,
    pub id_size: u32,
    pub path_off: u32,
}

impl CgroupLayout {
    pub fn from_format(f: &TracepointFormat) -> Result<Self, FormatError> {
        let id = f.int("id", &[4, 8])?;
        Ok(Self {
            root_off: f.int("root", &[4])?.offset,
            level_off: f.int("level", &[4])?.offset,
            id_off: id.offset,
            id_size: id.size,
            path_off: f.data_loc("path")?.offset,
        })
    }

    /// Reads both events; they share one class, and the programs rely on it.
    pub fn read(tracefs: &Path) -> Result<Self, EbpfError> {
        let read = |event: &'static str| {
            TracepointFormat::read(tracefs, "cgroup", event)
                .and_then(|f| Self::from_format(&f))
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

    pub fn globals(&self) -> [(&'static str, u32); 5] {
        [
            ("CG_ROOT_OFF", self.root_off),
            ("CG_LEVEL_OFF", self.level_off),
            ("CG_ID_OFF", self.id_off),
            ("CG_ID_SIZE", self.id_size),
            ("CG_PATH_OFF", self.path_off),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(file: &str) -> CgroupLayout {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tracefs")
            .join(file);
        CgroupLayout::from_format(
            &TracepointFormat::parse(&std::fs::read_to_string(p).unwrap()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn this_kernels_cgroup_btf_layout() {
        let Ok(btf) = Btf::from_sys() else {
            testkit::skip("no vmlinux BTF");
            return;
        };
        let l = CgroupBtfLayout::from_btf(&btf).unwrap();
        assert_ne!(l.root, l.kn);
        assert!(l.level > 0 && l.kn_id > 0);
    }

    #[test]
    fn both_kernel_generations() {
        assert_eq!(
            layout("cgroup_mkdir.6.18.format"),
            CgroupLayout {
                root_off: 8,
                level_off: 12,
                id_off: 16,
                id_size: 8,
                path_off: 24
            }
        );
        assert_eq!(
            layout("cgroup_mkdir.4.14.format"),
            CgroupLayout {
                root_off: 8,
                level_off: 16,
                id_off: 12,
                id_size: 4,
                path_off: 20
            }
        );
    }
}
