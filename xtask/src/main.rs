//! Project tasks: `cargo xtask build-ebpf | run | test`.

mod bench;
mod build_ebpf;
mod cmd;
mod fuzz;
mod modules;
mod provision;
mod run;
mod test;
mod vm;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "cgscope's build, run and test tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF object (provisions rust-src and bpf-linker on first use).
    BuildEbpf,
    /// Build everything and start the agent (needs root for eBPF).
    Run {
        /// Build the agent without optimisations.
        #[arg(long)]
        debug: bool,
        /// Arguments passed to `cgscope`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run a benchmark (as root) and print its table: discovery, all.
    Bench {
        #[arg(default_value = "all")]
        what: String,
    },
    /// Fuzz the kernel-log OOM parser (cargo-fuzz, nightly).
    Fuzz {
        /// How long to fuzz.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// Boot other kernels and cgroup layouts under QEMU and check the
    /// release agent in each (as root; `cargo xtask test` runs them all).
    Vm {
        /// Only this kernel: 5.10, 6.1 or 6.12.
        #[arg(long)]
        kernel: Option<String>,
        /// Only this layout: v1 or v2.
        #[arg(long)]
        layout: Option<String>,
        /// Only the guest's checks, not the end-to-end tests.
        #[arg(long)]
        no_tests: bool,
        /// Run this benchmark in each guest instead of the tests
        /// (`collect`: the files and iterator collectors on that layout).
        #[arg(long)]
        bench: Option<String>,
        /// Arguments for the guest's test binaries (a name filter, …).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// A benchmark inside a `cargo xtask vm` guest, against an agent built
    /// on the host.
    #[command(hide = true)]
    BenchInGuest {
        what: String,
        #[arg(long)]
        bin: PathBuf,
    },
    /// Install what the tests use, build everything and run every test:
    /// unit, eBPF and end-to-end; a test that could not run counts as skipped.
    Test {
        /// Arguments for every test binary (libtest's: a name filter,
        /// `--test-threads 1`, …).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().command {
        Command::BuildEbpf => build_ebpf::run(&root).map(|_| ()),
        Command::Run { debug, args } => run::run(&root, !debug, &args),
        Command::Test { args } => test::run(&root, &args),
        Command::Vm {
            kernel,
            layout,
            no_tests,
            bench,
            args,
        } => {
            // The guest runs what the tree builds now, not a stale binary.
            build_ebpf::run(&root)?;
            test::build_release_agent(&root)?;
            let guest = if bench.is_some() {
                Some(vm::GuestTests {
                    binaries: Vec::new(),
                    args,
                    strict: true,
                    bench,
                })
            } else if no_tests {
                None
            } else {
                Some(vm::GuestTests {
                    binaries: test::guest_binaries(&test::list_binaries(&root)?),
                    args,
                    strict: true,
                    bench: None,
                })
            };
            let (checks, cells) =
                vm::run(&root, kernel.as_deref(), layout.as_deref(), guest.as_ref())?;
            let mut failed: Vec<String> = checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{} {}: {}", c.cell, c.name, c.detail))
                .collect();
            for c in cells {
                failed.extend(c.report.failed.iter().map(|f| format!("{} {f}", c.cell)));
            }
            if !failed.is_empty() {
                anyhow::bail!("failed: {}", failed.join("; "));
            }
            Ok(())
        }
        Command::Fuzz { seconds } => fuzz::run(&root, seconds),
        Command::Bench { what } => bench::run(&root, &what),
        Command::BenchInGuest { what, bin } => {
            bench::run_with(&bin, &what, vm::GUEST_COLLECT_SIZES)
        }
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
