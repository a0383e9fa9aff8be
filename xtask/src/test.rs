//! `cargo xtask test`: build everything, then run every test.

use std::path::Path;

use anyhow::Result;

use crate::{build_ebpf, cmd};

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    build_ebpf::run(root)?;
    cmd::run(
        cmd::cargo()
            .current_dir(root)
            .args(["build", "--package", "agent"]),
    )?;
    let bin = root.join("target/debug/cgscope");
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
    if !cmd::is_root() {
        eprintln!(
            "xtask: not root: tests that need root or BPF will print SKIPPED \
             (set CGSCOPE_TEST_STRICT=1 to make them fail instead)"
        );
    }
    cmd::run(
        cmd::cargo()
            .current_dir(root)
            .args(["test", "--workspace"])
            .args(args)
            .env("CGSCOPE_BIN", &bin)
            .env("CGSCOPE_BIN_NO_EBPF", no_ebpf.join("debug/cgscope"))
            .env("CGSCOPE_EXPECT_EBPF", "1"),
    )
}
