//! `cargo xtask test`: build everything, then run every test.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::Stdio,
};

use anyhow::{bail, Context as _, Result};

use crate::{build_ebpf, cmd};

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    build_ebpf::run(root)?;
    cmd::run(
        cmd::cargo()
            .current_dir(root)
            .args(["build", "--package", "agent"]),
    )?;
    let bin = root.join("target/debug/cgscope");
    // What the Containerfile ships, built the same way (the deploy tests
    // check the image's file list and the binary against it).
    cmd::run(cmd::cargo().current_dir(root).args([
        "build",
        "--release",
        "--locked",
        "--package",
        "agent",
    ]))?;
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
    deploy_check_modules(root)?;
    // A short, fixed budget here; `cargo xtask fuzz` runs longer on demand.
    // First, so the test summary is the run's last line.
    crate::fuzz::run(root, 30)?;
    if !cmd::is_root() {
        eprintln!(
            "xtask: not root: tests that need root or BPF will print SKIPPED \
             (set CGSCOPE_TEST_STRICT=1 to make them fail instead)"
        );
    }
    let mut child = cmd::cargo()
        .current_dir(root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(args)
        .env("CGSCOPE_BIN", &bin)
        .env("CGSCOPE_RELEASE_BIN", root.join("target/release/cgscope"))
        .env("CGSCOPE_BIN_NO_EBPF", no_ebpf.join("debug/cgscope"))
        .env("CGSCOPE_EXPECT_EBPF", "1")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    // Pass the output through and add up every binary's result line, so the
    // run ends with one summary however many test binaries there are.
    let mut totals = Totals::default();
    for line in BufReader::new(child.stdout.take().context("cargo test stdout")?).lines() {
        let line = line?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait()?;
    println!(
        "summary: {} passed, {} failed, {} ignored",
        totals.passed, totals.failed, totals.ignored
    );
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// The Prometheus Operator schemas the deploy tests validate against
/// (`tests/deploy-check`, pinned by its lock file), installed once.
fn deploy_check_modules(root: &Path) -> Result<()> {
    let dir = root.join("tests/deploy-check");
    if dir.join("node_modules").exists() {
        return Ok(());
    }
    if std::process::Command::new("npm")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("xtask: no npm: the deploy tests cannot check the ServiceMonitor's schema");
        return Ok(());
    }
    cmd::run(std::process::Command::new("npm").current_dir(&dir).args([
        "ci",
        "--silent",
        "--no-audit",
        "--no-fund",
    ]))
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// `test result: ok. 42 passed; 0 failed; 1 ignored; …`
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let n: u64 = n.parse().unwrap_or(0);
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_result_lines() {
        let mut t = Totals::default();
        t.add("test result: ok. 42 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.03s");
        t.add("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.21s");
        t.add("running 3 tests");
        assert_eq!(
            t,
            Totals {
                passed: 45,
                failed: 2,
                ignored: 1
            }
        );
    }
}
