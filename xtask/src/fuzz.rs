//! `cargo xtask fuzz`: the kernel-log parser under libFuzzer (cargo-fuzz,
//! nightly), seeded with the real OOM logs in `agent/tests/fixtures/kmsg-oom`.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{build_ebpf::LEAKING_ENV, cmd};

const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn run(root: &Path, seconds: u64) -> Result<()> {
    let tools = root
        .join("target/tools")
        .join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let bin = tools.join("bin");
    if !bin.join("cargo-fuzz").is_file() {
        eprintln!(
            "xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (once)",
            tools.display()
        );
        let mut install = cmd::cargo();
        for var in LEAKING_ENV {
            install.env_remove(var);
        }
        cmd::run(
            install
                .args([
                    "install",
                    "cargo-fuzz",
                    "--locked",
                    "--version",
                    CARGO_FUZZ_VERSION,
                    "--root",
                ])
                .arg(&tools)
                .env("CARGO_TARGET_DIR", root.join("target/tools/build")),
        )
        .context("installing cargo-fuzz from crates.io")?;
    }
    let corpus = root.join("target/fuzz/corpus/kmsg_parser");
    fs::create_dir_all(&corpus)?;
    seed(&root.join("agent/tests/fixtures/kmsg-oom"), &corpus)?;

    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin];
    paths.extend(std::env::split_paths(&path));
    let mut fuzz = Command::new("cargo");
    for var in LEAKING_ENV {
        fuzz.env_remove(var);
    }
    let status = fuzz
        .current_dir(root.join("fuzz"))
        .env("PATH", std::env::join_paths(paths)?)
        .args(["+nightly", "fuzz", "run", "--target-dir"])
        .arg(root.join("target/fuzz/build"))
        .arg("kmsg_parser")
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-rss_limit_mb=1024")
        .status()
        .context("running cargo fuzz")?;
    if !status.success() {
        bail!("the kmsg parser fuzzer found a failure (see fuzz/artifacts/kmsg_parser)");
    }
    eprintln!("xtask: kmsg parser fuzzed for {seconds} s without a failure");
    Ok(())
}

/// Copies every seed file (recursively) into the corpus.
fn seed(from: &Path, corpus: &Path) -> Result<()> {
    let entries =
        fs::read_dir(from).with_context(|| format!("reading the seeds in {}", from.display()))?;
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            seed(&p, corpus)?;
        } else if let Some(name) = p.file_name() {
            fs::copy(&p, corpus.join(name))?;
        }
    }
    Ok(())
}
