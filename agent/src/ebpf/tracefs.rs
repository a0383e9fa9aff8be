//! Tracefs: where it is, and the record layout of a tracepoint.
//!
//! Layouts changed across kernels (the cgroup events moved `id` from an `int`
//! at 12 to a `u64` at 16), so the eBPF programs get every offset from the
//! running kernel's `events/<group>/<name>/format` file.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Where aya (and we) look for tracefs, in order.
pub const TRACEFS_PATHS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, Error)]
pub enum FormatError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("line {line} of the format file does not parse: {text:?}")]
    Syntax { line: usize, text: String },
    #[error("field `{0}` is missing from the format")]
    MissingField(&'static str),
    #[error("field `{name}` has an unsupported type or size ({decl}, {size} bytes)")]
    UnsupportedField {
        name: &'static str,
        decl: String,
        size: u32,
    },
}

/// One `field:` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The C declaration without the name, e.g. `__data_loc char[]`, `u64`.
    pub decl: String,
    pub name: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

impl Field {
    pub fn is_data_loc(&self) -> bool {
        self.decl.starts_with("__data_loc")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracepointFormat {
    pub name: String,
    pub fields: Vec<Field>,
}

impl TracepointFormat {
    pub fn read(tracefs: &Path, group: &str, event: &str) -> Result<Self, FormatError> {
        let path = tracefs
            .join("events")
            .join(group)
            .join(event)
            .join("format");
        let text =
            fs::read_to_string(&path).map_err(|source| FormatError::Read { path, source })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let mut name = String::new();
        let mut fields = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(n) = line.strip_prefix("name:") {
                name = n.trim().to_owned();
            } else if line.starts_with("field:") {
                fields.push(parse_field(line).ok_or_else(|| FormatError::Syntax {
                    line: i + 1,
                    text: line.to_owned(),
                })?);
            }
        }
        Ok(Self { name, fields })
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    fn require(&self, name: &'static str) -> Result<&Field, FormatError> {
        self.field(name).ok_or(FormatError::MissingField(name))
    }

    /// A field that must be an integer of one of `sizes` bytes.
    pub fn int(&self, name: &'static str, sizes: &[u32]) -> Result<&Field, FormatError> {
        let f = self.require(name)?;
        if f.is_data_loc() || !sizes.contains(&f.size) {
            return Err(FormatError::UnsupportedField {
                name,
                decl: f.decl.clone(),
                size: f.size,
            });
        }
        Ok(f)
    }

    /// A `__data_loc` string field.
    pub fn data_loc(&self, name: &'static str) -> Result<&Field, FormatError> {
        let f = self.require(name)?;
        if !f.is_data_loc() || f.size != 4 {
            return Err(FormatError::UnsupportedField {
                name,
                decl: f.decl.clone(),
                size: f.size,
            });
        }
        Ok(f)
    }
}

/// Parses `field:int root; offset:8; size:4; signed:1;` (tab separated).
fn parse_field(line: &str) -> Option<Field> {
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once(':')?;
        match key.trim() {
            "field" => decl = Some(value.trim()),
            "offset" => offset = value.trim().parse().ok(),
            "size" => size = value.trim().parse().ok(),
            "signed" => signed = value.trim() == "1",
            _ => {}
        }
    }
    let decl = decl?;
    // The name is the last identifier; arrays put brackets after it
    // (`char comm[16]`) except for `__data_loc char[] path`.
    let (ty, name) = decl.rsplit_once(char::is_whitespace)?;
    let name = name.split('[').next()?.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    Some(Field {
        decl: ty.trim().to_owned(),
        name: name.to_owned(),
        offset: offset?,
        size: size?,
        signed,
    })
}

/// The first mounted tracefs among [`TRACEFS_PATHS`].
pub fn find() -> Option<PathBuf> {
    TRACEFS_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Finds tracefs, mounting it at `/sys/kernel/tracing` when the kernel has
/// it but nothing mounted it (common on hosts without systemd). Returns the
/// path and whether this call mounted it.
pub fn find_or_mount() -> io::Result<(PathBuf, bool)> {
    if let Some(p) = find() {
        return Ok((p, false));
    }
    let target = Path::new(TRACEFS_PATHS[0]);
    if !target.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} does not exist (kernel without tracefs?)",
                target.display()
            ),
        ));
    }
    let fstype = c"tracefs";
    let dir = c"/sys/kernel/tracing";
    // SAFETY: all pointers are NUL-terminated static strings.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            dir.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((target.to_path_buf(), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tracefs");

    fn fixture(name: &str) -> TracepointFormat {
        TracepointFormat::parse(&fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap())
            .unwrap()
    }

    #[test]
    fn cgroup_mkdir_6_18() {
        let f = fixture("cgroup_mkdir.6.18.format");
        assert_eq!(f.name, "cgroup_mkdir");
        assert_eq!(f.int("root", &[4]).unwrap().offset, 8);
        assert_eq!(f.int("level", &[4]).unwrap().offset, 12);
        let id = f.int("id", &[4, 8]).unwrap();
        assert_eq!((id.offset, id.size, id.decl.as_str()), (16, 8, "u64"));
        assert_eq!(f.data_loc("path").unwrap().offset, 24);
    }

    #[test]
    fn cgroup_mkdir_4_14() {
        let f = fixture("cgroup_mkdir.4.14.format");
        let id = f.int("id", &[4, 8]).unwrap();
        assert_eq!((id.offset, id.size), (12, 4));
        assert_eq!(f.int("level", &[4]).unwrap().offset, 16);
        assert_eq!(f.data_loc("path").unwrap().offset, 20);
    }

    #[test]
    fn mark_victim_6_18() {
        let f = fixture("mark_victim.6.18.format");
        assert_eq!(f.int("pid", &[4]).unwrap().offset, 8);
        assert_eq!(f.data_loc("comm").unwrap().offset, 12);
        assert_eq!(f.int("total_vm", &[8]).unwrap().offset, 16);
        let adj = f.int("oom_score_adj", &[2]).unwrap();
        assert!(adj.signed);
        assert_eq!(adj.offset, 64);
    }

    #[test]
    fn fixed_char_arrays_are_named_without_brackets() {
        let f = TracepointFormat::parse("\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n")
            .unwrap();
        assert_eq!(f.fields[0].name, "comm");
        assert_eq!(f.fields[0].decl, "char");
    }

    #[test]
    fn bad_input_is_an_error_not_a_guess() {
        let err = TracepointFormat::parse("format:\n\tfield:int root;\toffset:eight;\tsize:4;\n")
            .unwrap_err();
        assert!(matches!(err, FormatError::Syntax { line: 2, .. }), "{err}");
        let f =
            TracepointFormat::parse("\tfield:int root;\toffset:8;\tsize:4;\tsigned:1;\n").unwrap();
        assert!(matches!(
            f.int("level", &[4]),
            Err(FormatError::MissingField("level"))
        ));
        assert!(matches!(
            f.int("root", &[8]),
            Err(FormatError::UnsupportedField { .. })
        ));
        assert!(matches!(
            f.data_loc("root"),
            Err(FormatError::UnsupportedField { .. })
        ));
        assert!(TracepointFormat::parse("").unwrap().fields.is_empty());
    }
}
