//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF has no CO-RE relocations, so the programs that walk kernel
//! structures get member offsets from here at load time. aya parses BTF too,
//! but keeps its type lookups crate-private; this reader does only what the
//! agent needs: struct/union members (through anonymous members), array
//! element types, and enum values.

use std::{fs, path::Path};

use thiserror::Error;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("reading {0}: {1}")]
    Read(String, String),
    #[error("not BTF data (bad magic or header)")]
    BadHeader,
    #[error("BTF data truncated at byte {0}")]
    Truncated(usize),
    #[error("unknown BTF kind {0}")]
    UnknownKind(u32),
    #[error("no struct or union named `{0}`")]
    NoStruct(String),
    #[error("`{ty}` has no member `{member}`")]
    NoMember { ty: String, member: String },
    #[error("`{ty}.{member}` is not a struct or union, cannot look inside it")]
    NotComposite { ty: String, member: String },
    #[error("no enum value `{0}`")]
    NoEnumValue(String),
    #[error("no BTF tracepoint `{0}` (no `btf_trace_{0}` typedef)")]
    NoTracepoint(String),
    #[error("BTF tracepoint `{tp}` passes {found}, not {expected}")]
    Prototype {
        tp: String,
        expected: String,
        found: String,
    },
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Offset in bits.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    Composite {
        name: u32,
        size: u32,
        members: Vec<Member>,
    },
    /// typedef, const, volatile, restrict, type tag: refer to `ty` (`name`
    /// is a typedef's, else 0).
    Alias {
        name: u32,
        ty: u32,
    },
    /// A forward declaration (`struct task_struct;`).
    Fwd {
        name: u32,
    },
    /// A function's parameter types.
    FuncProto {
        params: Vec<u32>,
    },
    Ptr {
        ty: u32,
    },
    Array {
        elem: u32,
        len: u32,
    },
    Enum {
        values: Vec<(u32, i64)>,
    },
    Int {
        size: u32,
    },
    Other,
}

/// What a member is, as far as the agent cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// An integer (or enum) of this many bytes.
    Int(u32),
    Ptr,
    /// A struct or union of this many bytes.
    Composite(u32),
    Array {
        elem_size: u32,
        len: u32,
    },
    Other,
}

/// A tracepoint argument's type, as far as choosing a program needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A pointer to the named struct or union ("" for anything else).
    PtrTo(String),
    /// An integer of this many bytes.
    Int(u32),
    Other,
}

#[derive(Debug)]
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
        .ok_or(BtfError::Truncated(at))
}

impl Btf {
    pub fn from_sys() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = fs::read(path)
            .map_err(|e| BtfError::Read(path.display().to_string(), e.to_string()))?;
        Self::parse(&data)
    }

    /// Parses little-endian BTF (every target the agent runs on).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::BadHeader);
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Truncated(hdr_len + str_off))?
            .to_vec();
        let tb = data
            .get(types_start..types_end)
            .ok_or(BtfError::Truncated(types_start))?;
        // Type id 0 is void.
        let mut types = vec![Type::Other];
        let mut at = 0;
        while at < tb.len() {
            let name = u32_at(tb, at)?;
            let info = u32_at(tb, at + 4)?;
            let size_or_type = u32_at(tb, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_INT => {
                    at += 4;
                    Type::Int { size: size_or_type }
                }
                KIND_PTR => Type::Ptr { ty: size_or_type },
                KIND_ARRAY => {
                    let elem = u32_at(tb, at)?;
                    let len = u32_at(tb, at + 8)?;
                    at += 12;
                    Type::Array { elem, len }
                }
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let offset = u32_at(tb, at + 8)?;
                        members.push(Member {
                            name: u32_at(tb, at)?,
                            ty: u32_at(tb, at + 4)?,
                            bit_offset: if kind_flag {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                        at += 12;
                    }
                    Type::Composite {
                        name,
                        size: size_or_type,
                        members,
                    }
                }
                KIND_ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        values.push((u32_at(tb, at)?, i64::from(u32_at(tb, at + 4)? as i32)));
                        at += 8;
                    }
                    Type::Enum { values }
                }
                KIND_ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let lo = u64::from(u32_at(tb, at + 4)?);
                        let hi = u64::from(u32_at(tb, at + 8)?);
                        values.push((u32_at(tb, at)?, (hi << 32 | lo) as i64));
                        at += 12;
                    }
                    Type::Enum { values }
                }
                KIND_TYPEDEF => Type::Alias {
                    name,
                    ty: size_or_type,
                },
                KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => Type::Alias {
                    name: 0,
                    ty: size_or_type,
                },
                KIND_FWD => Type::Fwd { name },
                KIND_FUNC | KIND_FLOAT => Type::Other,
                KIND_FUNC_PROTO => {
                    let mut params = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        params.push(u32_at(tb, at + 4)?);
                        at += 8;
                    }
                    Type::FuncProto { params }
                }
                KIND_VAR | KIND_DECL_TAG => {
                    at += 4;
                    Type::Other
                }
                KIND_DATASEC => {
                    at += 12 * vlen;
                    Type::Other
                }
                other => return Err(BtfError::UnknownKind(other)),
            };
            types.push(ty);
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or_default()
    }

    fn resolve(&self, mut id: u32) -> &Type {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(Type::Alias { ty, .. }) => id = *ty,
                Some(t) => return t,
                None => break,
            }
        }
        &Type::Other
    }

    fn shape_of(&self, id: u32) -> Shape {
        match self.resolve(id) {
            Type::Int { size } => Shape::Int(*size),
            Type::Enum { .. } => Shape::Int(4),
            Type::Ptr { .. } => Shape::Ptr,
            Type::Composite { size, .. } => Shape::Composite(*size),
            Type::Array { elem, len } => Shape::Array {
                elem_size: self.size_of(*elem),
                len: *len,
            },
            _ => Shape::Other,
        }
    }

    fn size_of(&self, id: u32) -> u32 {
        match self.resolve(id) {
            Type::Int { size } | Type::Composite { size, .. } => *size,
            Type::Enum { .. } => 4,
            Type::Ptr { .. } => 8,
            Type::Array { elem, len } => self.size_of(*elem) * len,
            _ => 0,
        }
    }

    fn composite_id(&self, name: &str) -> Result<u32, BtfError> {
        // The full definition, not a forward declaration (which is `Other`).
        self.types
            .iter()
            .position(|t| matches!(t, Type::Composite { name: n, members, .. } if self.name(*n) == name && !members.is_empty()))
            .map(|i| i as u32)
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// Finds `member` in composite `id`, looking through anonymous struct
    /// and union members. Returns (byte offset, member type id).
    fn find_member(&self, id: u32, member: &str) -> Option<(u32, u32)> {
        let Type::Composite { members, .. } = self.resolve(id) else {
            return None;
        };
        for m in members {
            let name = self.name(m.name);
            if name == member {
                return Some((m.bit_offset / 8, m.ty));
            }
            if name.is_empty() {
                if let Some((off, ty)) = self.find_member(m.ty, member) {
                    return Some((m.bit_offset / 8 + off, ty));
                }
            }
        }
        None
    }

    /// Byte offset and shape of `path` (e.g. `["memory", "usage"]`) inside
    /// struct `ty`, following nested (and anonymous) members.
    pub fn member(&self, ty: &str, path: &[&str]) -> Result<(u32, Shape), BtfError> {
        let mut id = self.composite_id(ty)?;
        let mut offset = 0;
        let mut current = ty.to_owned();
        for (i, member) in path.iter().enumerate() {
            if i > 0 && !matches!(self.resolve(id), Type::Composite { .. }) {
                return Err(BtfError::NotComposite {
                    ty: current,
                    member: path[i - 1].to_owned(),
                });
            }
            let (off, member_ty) =
                self.find_member(id, member)
                    .ok_or_else(|| BtfError::NoMember {
                        ty: current.clone(),
                        member: (*member).to_owned(),
                    })?;
            offset += off;
            id = member_ty;
            current = format!("{current}.{member}");
        }
        Ok((offset, self.shape_of(id)))
    }

    /// Size of what pointer member `path` of struct `ty` points to (`u64
    /// __percpu *` gives 8).
    pub fn pointee_size(&self, ty: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut id = self.composite_id(ty)?;
        for member in path {
            id = self
                .find_member(id, member)
                .ok_or_else(|| BtfError::NoMember {
                    ty: ty.to_owned(),
                    member: path.join("."),
                })?
                .1;
        }
        match self.resolve(id) {
            Type::Ptr { ty } => Ok(self.size_of(*ty)),
            _ => Err(BtfError::NoMember {
                ty: ty.to_owned(),
                member: format!("{} as a pointer", path.join(".")),
            }),
        }
    }

    pub fn offset(&self, ty: &str, path: &[&str]) -> Result<u32, BtfError> {
        self.member(ty, path).map(|(o, _)| o)
    }

    /// The offset of a member whose shape passes `ok`.
    pub fn typed_offset(
        &self,
        ty: &str,
        path: &[&str],
        ok: impl Fn(Shape) -> bool,
    ) -> Result<u32, BtfError> {
        let (off, shape) = self.member(ty, path)?;
        if !ok(shape) {
            return Err(BtfError::NoMember {
                ty: ty.to_owned(),
                member: format!("{} of the expected type (found {shape:?})", path.join(".")),
            });
        }
        Ok(off)
    }

    /// The arguments the kernel passes to programs on BTF tracepoint `tp`
    /// (its `btf_trace_<tp>` typedef), after the context pointer: what a
    /// `tp_btf` program really receives on this kernel.
    pub fn tracepoint_args(&self, tp: &str) -> Result<Vec<Arg>, BtfError> {
        let typedef = format!("btf_trace_{tp}");
        let id = self
            .types
            .iter()
            .position(|t| matches!(t, Type::Alias { name, .. } if *name != 0 && self.name(*name) == typedef))
            .ok_or_else(|| BtfError::NoTracepoint(tp.to_owned()))?;
        let proto = match self.resolve(id as u32) {
            Type::Ptr { ty } => self.resolve(*ty),
            _ => &Type::Other,
        };
        let Type::FuncProto { params } = proto else {
            return Err(BtfError::NoTracepoint(tp.to_owned()));
        };
        Ok(params.iter().skip(1).map(|p| self.arg(*p)).collect())
    }

    fn arg(&self, id: u32) -> Arg {
        match self.resolve(id) {
            Type::Ptr { ty } => match self.resolve(*ty) {
                Type::Composite { name, .. } | Type::Fwd { name } => {
                    Arg::PtrTo(self.name(*name).to_owned())
                }
                _ => Arg::PtrTo(String::new()),
            },
            Type::Int { size } => Arg::Int(*size),
            Type::Enum { .. } => Arg::Int(4),
            _ => Arg::Other,
        }
    }

    /// The value of enumerator `name` in any enum.
    pub fn enum_value(&self, name: &str) -> Result<i64, BtfError> {
        self.types
            .iter()
            .find_map(|t| match t {
                Type::Enum { values, .. } => values
                    .iter()
                    .find(|(n, _)| self.name(*n) == name)
                    .map(|(_, v)| *v),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoEnumValue(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF by hand: struct outer { int a; union { long b; struct inner c; }; int arr[4]; }
    /// with struct inner { char pad[3]; unsigned int x; }, and enum e { ONE = 1, TWO = 2 }.
    fn synthetic() -> Vec<u8> {
        let mut strings =
            b"\0int\0long\0char\0inner\0pad\0x\0outer\0a\0b\0c\0arr\0e\0ONE\0TWO\0btf_trace_new\0btf_trace_old\0"
                .to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let (int, long, chr, inner, pad, x, outer, a, b, c, arr, e, one, two) = (
            s("int"),
            s("long"),
            s("char"),
            s("inner"),
            s("pad"),
            s("x"),
            s("outer"),
            s("a"),
            s("b"),
            s("c"),
            s("arr"),
            s("e"),
            s("ONE"),
            s("TWO"),
        );
        let mut t: Vec<u32> = Vec::new();
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        // 1: int (4)
        t.extend([int, info(KIND_INT, 0), 4, 32]);
        // 2: long (8)
        t.extend([long, info(KIND_INT, 0), 8, 64]);
        // 3: char (1)
        t.extend([chr, info(KIND_INT, 0), 1, 8]);
        // 4: char[3]
        t.extend([0, info(KIND_ARRAY, 0), 0, 3, 1, 3]);
        // 5: struct inner { char pad[3]; unsigned x; } size 8
        t.extend([inner, info(KIND_STRUCT, 2), 8, pad, 4, 0, x, 1, 32]);
        // 6: anonymous union { long b; struct inner c; } size 8
        t.extend([0, info(KIND_UNION, 2), 8, b, 2, 0, c, 5, 0]);
        // 7: int[4]
        t.extend([0, info(KIND_ARRAY, 0), 0, 1, 1, 4]);
        // 8: struct outer { int a; <union> @64; int arr[4] @128 } size 32
        t.extend([
            outer,
            info(KIND_STRUCT, 3),
            32,
            a,
            1,
            0,
            0,
            6,
            64,
            arr,
            7,
            128,
        ]);
        // 9: enum e
        t.extend([e, info(KIND_ENUM, 2), 4, one, 1, two, 2]);
        // 10: typedef-free forward declaration of `outer` must not shadow it
        t.extend([outer, info(KIND_FWD, 0), 0]);
        // 11: void *; 12: struct outer *
        t.extend([0, info(KIND_PTR, 0), 0]);
        t.extend([0, info(KIND_PTR, 0), 8]);
        // 13: void (void *, struct outer *); 14: a pointer to it;
        // 15: typedef btf_trace_new
        t.extend([0, info(KIND_FUNC_PROTO, 2), 0, 0, 11, 0, 12]);
        t.extend([0, info(KIND_PTR, 0), 13]);
        t.extend([s("btf_trace_new"), info(KIND_TYPEDEF, 0), 14]);
        // 16: void (void *, int); 17: a pointer; 18: typedef btf_trace_old
        t.extend([0, info(KIND_FUNC_PROTO, 2), 0, 0, 11, 0, 1]);
        t.extend([0, info(KIND_PTR, 0), 16]);
        t.extend([s("btf_trace_old"), info(KIND_TYPEDEF, 0), 17]);
        let types: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend([0x9f, 0xeb, 1, 0]);
        out.extend(24u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((types.len() as u32).to_le_bytes());
        out.extend((types.len() as u32).to_le_bytes());
        out.extend((strings.len() as u32).to_le_bytes());
        out.extend(types);
        out.append(&mut strings);
        out
    }

    #[test]
    fn tracepoint_prototypes() {
        let btf = Btf::parse(&synthetic()).unwrap();
        assert_eq!(
            btf.tracepoint_args("new").unwrap(),
            [Arg::PtrTo("outer".into())]
        );
        assert_eq!(btf.tracepoint_args("old").unwrap(), [Arg::Int(4)]);
        assert_eq!(
            btf.tracepoint_args("none"),
            Err(BtfError::NoTracepoint("none".into()))
        );
    }

    #[test]
    fn members_through_anonymous_unions() {
        let btf = Btf::parse(&synthetic()).unwrap();
        assert_eq!(btf.member("outer", &["a"]).unwrap(), (0, Shape::Int(4)));
        assert_eq!(btf.member("outer", &["b"]).unwrap(), (8, Shape::Int(8)));
        assert_eq!(
            btf.member("outer", &["c", "x"]).unwrap(),
            (12, Shape::Int(4))
        );
        assert_eq!(
            btf.member("outer", &["c"]).unwrap(),
            (8, Shape::Composite(8))
        );
        assert_eq!(
            btf.member("outer", &["arr"]).unwrap(),
            (
                16,
                Shape::Array {
                    elem_size: 4,
                    len: 4
                }
            )
        );
        assert_eq!(btf.enum_value("TWO").unwrap(), 2);
        assert!(matches!(
            btf.member("outer", &["nope"]),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member("outer", &["a", "x"]),
            Err(BtfError::NotComposite { .. })
        ));
        assert!(matches!(
            btf.member("nostruct", &["a"]),
            Err(BtfError::NoStruct(_))
        ));
        assert!(matches!(
            btf.enum_value("THREE"),
            Err(BtfError::NoEnumValue(_))
        ));
    }

    #[test]
    fn bad_data_is_an_error() {
        assert_eq!(Btf::parse(b"nope").unwrap_err(), BtfError::BadHeader);
        let mut d = synthetic();
        d.truncate(40);
        assert!(matches!(Btf::parse(&d), Err(BtfError::Truncated(_))));
    }

    /// The offsets the OOM program needs, read from this machine's kernel
    /// (values verified on 6.18 with a C prototype; other kernels differ,
    /// which is why nothing is hard-coded).
    #[test]
    fn this_kernels_vmlinux() {
        let Ok(btf) = Btf::from_sys() else {
            assert!(
                !Path::new(VMLINUX).exists(),
                "vmlinux BTF exists but does not parse"
            );
            testkit::skip(&format!("no {VMLINUX}"));
            return;
        };
        let (cgroups, shape) = btf.member("task_struct", &["cgroups"]).unwrap();
        assert_eq!(shape, Shape::Ptr);
        assert!(matches!(
            btf.member("css_set", &["subsys"]).unwrap().1,
            Shape::Array { elem_size: 8, .. }
        ));
        assert_eq!(btf.member("kernfs_node", &["id"]).unwrap().1, Shape::Int(8));
        let memory = btf.enum_value("memory_cgrp_id").unwrap();
        assert!((0..16).contains(&memory));
        assert_eq!(
            btf.member("task_struct", &["pid"]).unwrap().1,
            Shape::Int(4)
        );
        assert!(matches!(
            btf.member("task_struct", &["comm"]).unwrap().1,
            Shape::Array {
                elem_size: 1,
                len: 16
            }
        ));
        assert_eq!(
            btf.member("mem_cgroup", &["memory", "max"]).unwrap().1,
            Shape::Int(8)
        );
        if std::fs::read_to_string("/proc/version").is_ok_and(|v| v.contains(" 6.18.")) {
            assert_eq!(cgroups, 2376);
            assert_eq!(btf.offset("cgroup", &["kn"]).unwrap(), 256);
            assert_eq!(btf.offset("kernfs_node", &["id"]).unwrap(), 96);
            assert_eq!(memory, 4);
        }
    }
}
