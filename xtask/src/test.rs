//! `cargo xtask test`: provision what the tests use, build everything, then
//! run every test binary and count what really ran: a test that skipped
//! (testkit's skip log) is not a passed one.

use std::{
    ffi::OsString,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use testkit::{Skipped, SKIP_LOG, STRICT};

use crate::{build_ebpf, cmd, provision};

/// Where xtask's own test finds the end-to-end Prometheus test binary.
const PROMETHEUS_TEST_ENV: &str = "CGSCOPE_PROMETHEUS_TEST_BIN";

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let complete = provision::ensure(root)?;
    // Strict unless the user said otherwise: once everything is here, a skip
    // can only mean a broken test.
    let strict = match std::env::var_os(STRICT) {
        Some(v) => v != "0",
        None => complete,
    };
    build_ebpf::run(root)?;
    cmd::run(
        cmd::cargo()
            .current_dir(root)
            .args(["build", "--package", "agent"]),
    )?;
    // The deploy tests check the image's file list and the binary against it.
    build_release_agent(root)?;
    // The same agent built without the object, to test the fallback build.
    let no_ebpf = root.join("target/no-ebpf");
    let empty = no_ebpf.join("empty-object-dir");
    std::fs::create_dir_all(&empty)?;
    cmd::run(
        cmd::cargo()
            .current_dir(root)
            .args(["build", "--package", "agent", "--target-dir"])
            .arg(&no_ebpf)
            .env("CGSCOPE_EBPF_DIR", &empty),
    )?;
    // A short, fixed budget here; `cargo xtask fuzz` runs longer on demand.
    crate::fuzz::run(root, 30)?;

    let binaries = list_binaries(root)?;
    let prometheus_test = binaries
        .iter()
        .find(|b| b.package == "tests" && b.name == "prometheus")
        .context("the end-to-end test binary `prometheus` was not built")?;
    let env: Env = [
        ("CGSCOPE_BIN", root.join("target/debug/cgscope").into()),
        (
            "CGSCOPE_RELEASE_BIN",
            root.join("target/release/cgscope").into(),
        ),
        ("CGSCOPE_BIN_NO_EBPF", no_ebpf.join("debug/cgscope").into()),
        ("CGSCOPE_EXPECT_EBPF", "1".into()),
        (STRICT, if strict { "1" } else { "0" }.into()),
        (PROMETHEUS_TEST_ENV, prometheus_test.exe.clone().into()),
    ]
    .into_iter()
    .map(|(k, v): (&str, OsString)| (k.to_owned(), v))
    .collect();
    let logs = root.join("target/xtask/skips");
    std::fs::create_dir_all(&logs)?;
    let mut total = Report::default();
    for bin in &binaries {
        println!("== {} {} ({})", bin.package, bin.name, bin.kind);
        let report = bin.run(args, &env, &logs.join(format!("{}.log", bin.name)), true)?;
        total.add(report);
    }
    // The same release agent, and the end-to-end tests that need no
    // container runtime, on other kernels and layouts.
    println!("== vm: kernels 5.10, 6.1, 6.12 × cgroup v1, v2");
    let guest = crate::vm::GuestTests {
        binaries: guest_binaries(&binaries),
        args: args.to_vec(),
        strict,
        bench: None,
    };
    match crate::vm::run(root, None, None, Some(&guest)) {
        Ok((checks, cells)) => {
            for c in checks {
                let name = format!("vm {} {}", c.cell, c.name);
                if c.ok {
                    total.passed.push(name);
                } else {
                    total.failed.push(format!("{name} ({})", c.detail));
                }
            }
            for mut c in cells {
                c.report.prefix(&format!("vm {}", c.cell));
                total.add(c.report);
            }
        }
        Err(e) if !strict => total.skipped.push(Skipped {
            binary: "xtask".into(),
            test: "vm".into(),
            why: format!("{e:#}"),
        }),
        Err(e) => total.failed.push(format!("vm ({e:#})")),
    }
    for s in &total.skipped {
        println!("skipped: {} {}: {}", s.binary, s.test, s.why);
    }
    if strict {
        println!("xtask: strict run ({STRICT}=1): a test that cannot run fails");
    }
    println!(
        "summary: {} passed, {} failed, {} skipped",
        total.passed.len(),
        total.failed.len(),
        total.skipped.len() + total.ignored
    );
    if !total.failed.is_empty() {
        bail!("failed: {}", total.failed.join(", "));
    }
    if total.passed.is_empty() {
        bail!("no test ran");
    }
    Ok(())
}

/// The release agent: what the Containerfile ships (built the same way)
/// and what the VM cells boot.
pub fn build_release_agent(root: &Path) -> Result<()> {
    cmd::run(cmd::cargo().current_dir(root).args([
        "build",
        "--release",
        "--locked",
        "--package",
        "agent",
    ]))
}

/// The end-to-end binaries the VM cells run, as the guest names them.
pub fn guest_binaries(binaries: &[TestBinary]) -> Vec<(String, PathBuf, PathBuf)> {
    binaries
        .iter()
        .filter(|b| b.package == "tests" && crate::vm::GUEST_TESTS.contains(&b.name.as_str()))
        .map(|b| (b.name.clone(), b.exe.clone(), b.manifest_dir.clone()))
        .collect()
}

/// Environment variables for a test binary.
type Env = Vec<(String, OsString)>;

/// One test executable cargo built.
#[derive(Debug)]
pub struct TestBinary {
    package: String,
    /// The target's name (`prometheus` for `tests/tests/prometheus.rs`).
    name: String,
    kind: String,
    exe: PathBuf,
    manifest_dir: PathBuf,
}

/// Builds every test target of the workspace and lists the executables.
pub fn list_binaries(root: &Path) -> Result<Vec<TestBinary>> {
    let out = cmd::output(cmd::cargo().current_dir(root).args([
        "test",
        "--workspace",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]))?;
    let mut bins = Vec::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), true) = (
            msg["executable"].as_str(),
            msg["profile"]["test"].as_bool() == Some(true),
        ) else {
            continue;
        };
        let manifest = PathBuf::from(msg["manifest_path"].as_str().unwrap_or_default());
        bins.push(TestBinary {
            package: msg["package_id"]
                .as_str()
                .and_then(package_name)
                .unwrap_or_default()
                .to_owned(),
            name: msg["target"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            kind: msg["target"]["kind"][0]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            exe: exe.into(),
            manifest_dir: manifest.parent().unwrap_or(root).to_path_buf(),
        });
    }
    if bins.is_empty() {
        bail!("cargo built no test binary");
    }
    Ok(bins)
}

/// `path+file:///…/tests#0.1.0` or `registry+…#name@1.0` → the package name.
fn package_name(id: &str) -> Option<&str> {
    let (path, frag) = id.rsplit_once('#')?;
    match frag.split_once('@') {
        Some((name, _)) => Some(name),
        None => path.rsplit('/').next(),
    }
}

impl TestBinary {
    /// Runs the binary the way `cargo test` does (from its package's folder)
    /// with `env` and a fresh skip log, echoing its output when asked.
    fn run(&self, args: &[String], env: &Env, skip_log: &Path, echo: bool) -> Result<Report> {
        let _ = std::fs::remove_file(skip_log);
        let mut child = Command::new(&self.exe)
            .current_dir(&self.manifest_dir)
            .args(args)
            .envs(env.iter().cloned())
            .env("CARGO_MANIFEST_DIR", &self.manifest_dir)
            .env("CARGO_PKG_NAME", &self.package)
            .env(SKIP_LOG, skip_log)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        let mut lines = Vec::new();
        for line in BufReader::new(child.stdout.take().context("test stdout")?).lines() {
            let line = line?;
            if echo {
                println!("{line}");
            }
            lines.push(line);
        }
        let status = child.wait()?;
        let log = std::fs::read_to_string(skip_log).unwrap_or_default();
        let mut report = Report::from_output(&lines, &testkit::read_log(&log));
        if !status.success() && report.failed.is_empty() {
            // Killed or aborted before libtest could report a failure.
            report.failed.push(format!("{} ({status})", self.name));
        }
        Ok(report)
    }
}

/// What test binaries reported, by test name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    pub ignored: usize,
    /// Tests that said `ok` but only because they could not run.
    pub skipped: Vec<Skipped>,
}

impl Report {
    /// From libtest's `test NAME ... ok|FAILED|ignored` lines and the skip
    /// log of the same run.
    pub fn from_output(lines: &[String], skips: &[Skipped]) -> Self {
        let mut r = Self::default();
        for line in lines {
            let Some((name, outcome)) = line
                .strip_prefix("test ")
                .and_then(|l| l.rsplit_once(" ... "))
            else {
                continue;
            };
            match outcome.trim() {
                "ok" => match skips.iter().find(|s| s.test == name) {
                    Some(s) => r.skipped.push(s.clone()),
                    None => r.passed.push(name.to_owned()),
                },
                "FAILED" => r.failed.push(name.to_owned()),
                o if o.starts_with("ignored") => r.ignored += 1,
                _ => {}
            }
        }
        r
    }

    pub fn add(&mut self, other: Report) {
        self.passed.extend(other.passed);
        self.failed.extend(other.failed);
        self.ignored += other.ignored;
        self.skipped.extend(other.skipped);
    }

    /// Names every test `<prefix>::<test>`.
    pub fn prefix(&mut self, prefix: &str) {
        for name in self.passed.iter_mut().chain(self.failed.iter_mut()) {
            *name = format!("{prefix}::{name}");
        }
        for s in &mut self.skipped {
            s.test = format!("{prefix}::{}", s.test);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_skipped_ok_is_not_a_pass() {
        let out = lines(
            "running 4 tests\n\
             test a ... ok\n\
             test b ... ok\n\
             test c ... FAILED\n\
             test d ... ignored, needs a disk\n\
             test e has been running for over 60 seconds\n\
             test result: FAILED. 2 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out",
        );
        let skips = testkit::read_log("bin\tb\tno prometheus\nbin\tc\tno promtool\n");
        let r = Report::from_output(&out, &skips);
        assert_eq!(r.passed, ["a"]);
        assert_eq!(r.failed, ["c"]);
        assert_eq!(r.ignored, 1);
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(r.skipped[0].why, "no prometheus");
    }

    #[test]
    fn package_names_from_cargo_ids() {
        assert_eq!(
            package_name("path+file:///w/main/tests#0.1.0"),
            Some("tests")
        );
        assert_eq!(
            package_name("path+file:///w/main/xtask#xtask@0.1.0"),
            Some("xtask")
        );
    }

    /// The real end-to-end Prometheus tests, with Prometheus made
    /// unavailable (not on `PATH`): skipped when not strict, failed when
    /// strict, never passed.
    #[test]
    fn a_missing_prometheus_is_skipped_not_passed() {
        let Some(exe) = std::env::var_os(PROMETHEUS_TEST_ENV) else {
            testkit::skip(&format!(
                "{PROMETHEUS_TEST_ENV} is not set (`cargo xtask test` sets it)"
            ));
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = path_without(dir, &["prometheus", "promtool"]);
        let bin = TestBinary {
            package: "tests".into(),
            name: "prometheus".into(),
            kind: "test".into(),
            exe: exe.into(),
            manifest_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests"),
        };
        let run = |strict: &str| {
            let mut env: Env = vec![("PATH".into(), path.clone())];
            env.push((STRICT.into(), strict.into()));
            bin.run(&[], &env, &dir.join(format!("skips-{strict}.log")), false)
                .unwrap()
        };
        let lenient = run("0");
        assert!(lenient.passed.is_empty(), "{lenient:?}");
        assert!(lenient.failed.is_empty(), "{lenient:?}");
        assert_eq!(lenient.skipped.len(), 2, "{lenient:?}");
        let strict = run("1");
        assert!(strict.passed.is_empty(), "{strict:?}");
        assert_eq!(strict.failed.len(), 2, "{strict:?}");
    }

    /// A `PATH` of one folder linking every program of the current `PATH`
    /// (and the sbin folders) except `hidden`.
    fn path_without(dir: &Path, hidden: &[&str]) -> OsString {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for d in testkit::program_dirs() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let link = bin.join(&name);
                if hidden.iter().any(|h| name == *h) || link.exists() {
                    continue;
                }
                let _ = std::os::unix::fs::symlink(e.path(), link);
            }
        }
        assert!(bin.join("sh").exists() && hidden.iter().all(|h| !bin.join(h).exists()));
        bin.into_os_string()
    }
}
