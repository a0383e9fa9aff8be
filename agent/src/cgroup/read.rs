//! Reading cgroup files: one reused buffer, parsers that do not allocate,
//! and the rule that a value we could not read is absent, never zero.

use std::{
    fs::File,
    io::{self, Read as _},
    path::Path,
};

use crate::errors::ErrorCounts;

/// Reads files into one reused buffer (cgroup files are small; the cost is
/// the system calls, so nothing is allocated per read).
#[derive(Debug, Default)]
pub struct Reader {
    buf: String,
    /// Files read, for the benchmark and self-metrics.
    pub reads: u64,
}

impl Reader {
    /// The content of `path`; `None` when the file does not exist (a
    /// controller not enabled, an older kernel, a cgroup removed mid-read).
    /// Other failures are counted and also give `None`.
    pub fn read(&mut self, path: &Path, errors: &ErrorCounts) -> Option<&str> {
        self.buf.clear();
        self.reads += 1;
        let result = File::open(path).and_then(|mut f| f.read_to_string(&mut self.buf));
        match result {
            Ok(_) => Some(self.buf.as_str()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            // ENODEV: the cgroup was removed while the file was open.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                errors.record(
                    "vanished",
                    format!("{} vanished while being read", path.display()),
                );
                None
            }
            Err(e) => {
                errors.record("read_failed", format!("reading {}: {e}", path.display()));
                None
            }
        }
    }

    /// A single number; `max` (unlimited) is `Some(None)`.
    pub fn limit(&mut self, path: &Path, errors: &ErrorCounts) -> Option<Option<u64>> {
        let text = self.read(path, errors)?;
        match parse_limit(text) {
            Some(v) => Some(v),
            None => {
                errors.record(
                    "malformed",
                    format!("{}: not a number: {:?}", path.display(), short(text)),
                );
                None
            }
        }
    }

    /// A single number (no `max`).
    pub fn number(&mut self, path: &Path, errors: &ErrorCounts) -> Option<u64> {
        let text = self.read(path, errors)?;
        match text.trim().parse::<i64>() {
            // Some v1 files print -1 for "none" (cfs_quota_us).
            Ok(v) => Some(v.max(0) as u64),
            Err(_) => {
                errors.record(
                    "malformed",
                    format!("{}: not a number: {:?}", path.display(), short(text)),
                );
                None
            }
        }
    }
}

pub fn short(s: &str) -> &str {
    let end = s.char_indices().nth(60).map_or(s.len(), |(i, _)| i);
    &s[..end]
}

/// `123`, `-1` (v1 for unlimited quota) or `max`: `Some(None)` means
/// unlimited; `None` means it did not parse.
pub fn parse_limit(s: &str) -> Option<Option<u64>> {
    let s = s.trim();
    if s == "max" || s == "-1" {
        return Some(None);
    }
    s.parse::<u64>().ok().map(Some)
}

/// `key value` lines (memory.stat, cpu.stat, memory.events, …). Lines that
/// do not parse are skipped and reported through `bad`.
pub fn flat_keyed(text: &str) -> impl Iterator<Item = Result<(&str, u64), &str>> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| {
        let mut it = l.split_whitespace();
        match (it.next(), it.next(), it.next()) {
            (Some(k), Some(v), None) => v.parse().map(|v| (k, v)).map_err(|_| l),
            _ => Err(l),
        }
    })
}

/// Calls `set` for every `key value` pair; counts malformed lines once per
/// file.
pub fn each_keyed<'a>(
    text: &'a str,
    path: &Path,
    errors: &ErrorCounts,
    mut set: impl FnMut(&'a str, u64),
) {
    let mut bad = None;
    for item in flat_keyed(text) {
        match item {
            Ok((k, v)) => set(k, v),
            Err(line) => bad = Some(line),
        }
    }
    if let Some(line) = bad {
        errors.record(
            "malformed",
            format!("{}: unexpected line {:?}", path.display(), short(line)),
        );
    }
}

/// PSI: `some avg10=0.00 avg60=0.00 avg300=0.00 total=123` → (some, full)
/// totals in microseconds.
pub fn pressure_totals(text: &str) -> (Option<u64>, Option<u64>) {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let kind = it.next();
        let total = it
            .find_map(|f| f.strip_prefix("total="))
            .and_then(|v| v.parse().ok());
        match kind {
            Some("some") => some = total,
            Some("full") => full = total,
            _ => {}
        }
    }
    (some, full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(parse_limit("max\n"), Some(None));
        assert_eq!(parse_limit("-1\n"), Some(None));
        assert_eq!(parse_limit("67108864\n"), Some(Some(67108864)));
        assert_eq!(parse_limit(""), None);
        assert_eq!(parse_limit("lots"), None);
    }

    #[test]
    fn keyed_and_pressure() {
        let v: Vec<_> = flat_keyed("a 1\nb 2\nbad\nc x\n\n").collect();
        assert_eq!(v, [Ok(("a", 1)), Ok(("b", 2)), Err("bad"), Err("c x")]);
        let p = "some avg10=0.00 avg60=0.00 avg300=0.00 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=56\n";
        assert_eq!(pressure_totals(p), (Some(1234), Some(56)));
        assert_eq!(
            pressure_totals("some avg10=0.00 total=7\n"),
            (Some(7), None)
        );
        assert_eq!(pressure_totals(""), (None, None));
    }

    #[test]
    fn missing_empty_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let errors = ErrorCounts::new("collection");
        let mut r = Reader::default();
        assert_eq!(r.read(&dir.path().join("nope"), &errors), None);
        assert_eq!(errors.recorded(), "", "a missing file is not an error");
        std::fs::write(dir.path().join("empty"), "").unwrap();
        assert_eq!(r.number(&dir.path().join("empty"), &errors), None);
        std::fs::write(dir.path().join("max"), "max\n").unwrap();
        assert_eq!(r.limit(&dir.path().join("max"), &errors), Some(None));
        assert_eq!(r.number(&dir.path().join("max"), &errors), None);
        assert_eq!(errors.get("malformed"), 2);
        let mut seen = vec![];
        std::fs::write(dir.path().join("stat"), "x 1\ngarbage\ny 2\n").unwrap();
        let text = r
            .read(&dir.path().join("stat"), &errors)
            .unwrap()
            .to_owned();
        each_keyed(&text, Path::new("stat"), &errors, |k, v| {
            seen.push((k.to_owned(), v))
        });
        assert_eq!(seen, [("x".to_owned(), 1), ("y".to_owned(), 2)]);
        assert_eq!(errors.get("malformed"), 3);
    }
}
