//! A test that cannot run here (a missing tool, privilege or build) must not
//! pass as if it had. [`skip`] records it in the file `cargo xtask test`
//! names in [`SKIP_LOG`], which subtracts it from the passed tests and counts
//! it as skipped; in strict runs ([`STRICT`]) it fails the test instead.

use std::{fs::OpenOptions, io::Write as _, path::PathBuf};

/// Set (to anything but `0`) where nothing may be skipped: by CI, and by
/// `cargo xtask test` once it has provisioned every component.
pub const STRICT: &str = "CGSCOPE_TEST_STRICT";

/// The file skips are appended to, one line each:
/// `<test binary>\t<test name>\t<why>`.
pub const SKIP_LOG: &str = "CGSCOPE_SKIP_LOG";

/// Whether a test that cannot run must fail instead of skipping.
pub fn strict() -> bool {
    std::env::var_os(STRICT).is_some_and(|v| v != "0")
}

/// Marks the running test as skipped because of `why` (panics in strict
/// runs). The caller returns right after.
#[track_caller]
pub fn skip(why: &str) {
    let test = test_name();
    assert!(!strict(), "{test} cannot run here ({STRICT} is set): {why}");
    eprintln!("SKIPPED {test}: {why}");
    let Some(log) = std::env::var_os(SKIP_LOG) else {
        return;
    };
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let line = format!("{binary}\t{test}\t{}\n", why.replace(['\t', '\n'], " "));
    // One write of one short line: appends from parallel tests stay whole.
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("cannot record the skip in {}: {e}", log.to_string_lossy());
    }
}

/// A program's path from `PATH` and the sbin folders a non-login root
/// shell may lack; `None` when it is not installed.
pub fn which(program: &str) -> Option<PathBuf> {
    program_dirs()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Where [`which`] looks, in order.
pub fn program_dirs() -> impl Iterator<Item = PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .collect::<Vec<_>>()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
}

/// libtest runs each test on a thread named after it.
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned()
}

/// One line of a skip log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub binary: String,
    pub test: String,
    pub why: String,
}

/// The skips of a log, one per test (a test that skipped several parts is
/// one skipped test, with its first reason).
pub fn read_log(text: &str) -> Vec<Skipped> {
    let mut out: Vec<Skipped> = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, '\t');
        let (Some(binary), Some(test)) = (f.next(), f.next()) else {
            continue;
        };
        if out.iter().any(|s| s.binary == binary && s.test == test) {
            continue;
        }
        out.push(Skipped {
            binary: binary.to_owned(),
            test: test.to_owned(),
            why: f.next().unwrap_or("").to_owned(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_counts_each_test_once() {
        let log = "prometheus-ab\tscrapes\tno prometheus\n\
                   prometheus-ab\tscrapes\tno promtool\n\
                   deploy-cd\tscrapes\tno prometheus\n\
                   torn line\n";
        let s = read_log(log);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].why, "no prometheus");
        assert_eq!(s[1].binary, "deploy-cd");
    }

    #[test]
    fn skip_names_the_running_test() {
        assert_eq!(test_name(), "tests::skip_names_the_running_test");
    }
}
