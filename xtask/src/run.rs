//! `cargo xtask run`: build everything and start the agent.

use std::{os::unix::process::CommandExt as _, path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::{build_ebpf, cmd};

pub fn run(root: &Path, release: bool, args: &[String]) -> Result<()> {
    build_ebpf::run(root)?;
    let mut build = cmd::cargo();
    build
        .current_dir(root)
        .args(["build", "--package", "agent"]);
    if release {
        build.arg("--release");
    }
    cmd::run(&mut build)?;
    let bin = root
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("cgscope");
    if !cmd::is_root() {
        eprintln!(
            "xtask: not running as root: the agent will run in fallback mode \
             (eBPF, /dev/kmsg and other tasks' /proc entries need root)"
        );
    }
    let err = Command::new(&bin).args(args).exec();
    Err(err).with_context(|| format!("could not start {}", bin.display()))
}
