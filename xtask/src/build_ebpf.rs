//! `cargo xtask build-ebpf`: provision the eBPF toolchain and build the object.
//!
//! What a fresh machine lacks is provisioned here, under `target/tools/`:
//! the nightly toolchain's `rust-src` (through rustup) and a `bpf-linker`
//! built from crates.io against the nightly toolchain's own libLLVM. A second
//! run with nothing changed only asks cargo, which answers in about a second.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";
const TARGET: &str = "bpfel-unknown-none";
/// Where the agent's build script looks for the object (see agent/build.rs).
pub const OBJECT_DIR: &str = "target/ebpf-out";
pub const OBJECT_NAME: &str = "cgscope.bpf.o";

/// Variables cargo sets for `cargo xtask` itself that would point the nested
/// nightly build at the wrong compiler or flags.
pub const LEAKING_ENV: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTUP_TOOLCHAIN",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO",
    "CARGO_MANIFEST_DIR",
    "CARGO_PKG_NAME",
];

/// Builds the object and returns its path.
pub fn run(root: &Path) -> Result<PathBuf> {
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    let llvm_major = nightly_llvm_major()?;
    let linker = ensure_bpf_linker(root, &sysroot, llvm_major)?;
    build_object(root, &linker)
}

fn rustup() -> Command {
    Command::new("rustup")
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out =
        cmd::output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]));
    let out = match out {
        Ok(out) => out,
        Err(_) => {
            eprintln!("xtask: installing the {NIGHTLY} toolchain with rustup (needed for eBPF)");
            cmd::run(rustup().args([
                "toolchain",
                "install",
                NIGHTLY,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))
            .context(
                "the eBPF build needs rustup's nightly toolchain; install rustup \
                 (https://rustup.rs) or run `rustup toolchain install nightly --component rust-src`",
            )?;
            cmd::output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?
        }
    };
    Ok(PathBuf::from(out.trim()))
}

fn ensure_rust_src(sysroot: &Path) -> Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the {NIGHTLY} toolchain (needed for -Z build-std=core)");
    cmd::run(rustup().args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
        .context("could not add rust-src; run `rustup component add rust-src --toolchain nightly`")
}

fn nightly_llvm_major() -> Result<u32> {
    let vv = cmd::output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
    parse_llvm_major(&vv).with_context(|| format!("no LLVM version in `rustc +nightly -vV`:\n{vv}"))
}

fn parse_llvm_major(vv: &str) -> Option<u32> {
    vv.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
}

/// The toolchain's shared libLLVM, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn toolchain_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM") && n.contains(".so"))
        })
        .collect();
    // Prefer the soname form (`libLLVM.so.<ver>`) that the linker records.
    found.sort_by_key(|p| !p.to_string_lossy().contains("libLLVM.so."));
    found.into_iter().next().with_context(|| {
        format!(
            "the nightly toolchain has no libLLVM in {}; reinstall it with \
             `rustup toolchain install nightly --force`",
            lib.display()
        )
    })
}

fn ensure_bpf_linker(root: &Path, sysroot: &Path, llvm_major: u32) -> Result<PathBuf> {
    let tools = root.join("target/tools");
    let install_root = tools.join(format!("bpf-linker-{BPF_LINKER_VERSION}-llvm{llvm_major}"));
    let llvm_prefix = tools.join(format!("llvm-{llvm_major}"));
    let linker = install_root.join("bin/bpf-linker");
    let libllvm = toolchain_libllvm(sysroot)?;
    link_llvm_prefix(&llvm_prefix, &libllvm)?;
    if linker.is_file() {
        return Ok(linker);
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (once, about a minute)",
        libllvm.display()
    );
    let mut install = cmd::cargo();
    for var in LEAKING_ENV {
        install.env_remove(var);
    }
    install
        .args(["install", "bpf-linker", "--locked", "--version"])
        .arg(BPF_LINKER_VERSION)
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{llvm_major}"))
        .arg("--root")
        .arg(&install_root)
        .env("LLVM_PREFIX", &llvm_prefix)
        .env("CARGO_TARGET_DIR", tools.join("build"));
    cmd::run(&mut install).context(
        "building bpf-linker failed; it needs crates.io and a C++ toolchain (gcc/g++); \
         see the output above",
    )?;
    if !linker.is_file() {
        bail!(
            "cargo install reported success but {} is missing",
            linker.display()
        );
    }
    Ok(linker)
}

/// `LLVM_PREFIX/lib` must hold `libLLVM.so` and the library's soname, both
/// pointing at the toolchain's copy, so bpf-linker links (and later loads)
/// exactly the LLVM that rustc emits bitcode for.
fn link_llvm_prefix(prefix: &Path, libllvm: &Path) -> Result<()> {
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        let link = lib.join(name);
        if fs::read_link(&link).ok().as_deref() == Some(libllvm) {
            continue;
        }
        let _ = fs::remove_file(&link);
        symlink(libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

fn build_object(root: &Path, linker: &Path) -> Result<PathBuf> {
    let linker_dir = linker.parent().context("bpf-linker has no parent dir")?;
    let llvm_lib = linker_dir
        .parent()
        .and_then(Path::parent)
        .context("tools dir")?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![linker_dir.to_path_buf()];
    paths.extend(std::env::split_paths(&path));
    let mut ld_paths: Vec<PathBuf> = fs::read_dir(llvm_lib)?
        .filter_map(|e| e.ok().map(|e| e.path().join("lib")))
        .filter(|p| p.is_dir())
        .collect();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        ld_paths.extend(std::env::split_paths(&old));
    }

    let target_dir = root.join("target/ebpf");
    let mut build = Command::new("cargo");
    for var in LEAKING_ENV {
        build.env_remove(var);
    }
    let arch = std::env::consts::ARCH;
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");
    build
        .current_dir(root.join("agent-ebpf"))
        .arg(format!("+{NIGHTLY}"))
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", std::env::join_paths(paths)?)
        .env("LD_LIBRARY_PATH", std::env::join_paths(ld_paths)?)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    cmd::run(&mut build).context("building the eBPF object failed")?;

    let built = target_dir.join(TARGET).join("release/cgscope");
    let out_dir = root.join(OBJECT_DIR);
    fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(OBJECT_NAME);
    let bytes = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    // Copy only on change so the agent is not rebuilt for nothing.
    if fs::read(&out).ok().as_deref() != Some(&bytes[..]) {
        fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    }
    eprintln!(
        "xtask: eBPF object {} ({} bytes)",
        out.display(),
        bytes.len()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0"), None);
    }
}
