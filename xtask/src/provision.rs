//! What the tests need beyond Rust, installed when missing: Debian packages
//! (apt), Python validators (pip) and the npm schemas of the deploy checks.
//! Everything is checked first, so a machine that has it all pays a few
//! `PATH` lookups and two Python imports.

use std::{path::Path, process::Command};

use anyhow::Result;

pub use testkit::which;

use crate::cmd;

/// A program the tests run, and the Debian package that brings it.
struct Tool {
    program: &'static str,
    package: &'static str,
    why: &'static str,
}

const TOOLS: &[Tool] = &[
    Tool {
        program: "ip",
        package: "iproute2",
        why: "network namespaces and veth pairs",
    },
    Tool {
        program: "setpriv",
        package: "util-linux",
        why: "an agent without capabilities",
    },
    Tool {
        program: "nsenter",
        package: "util-linux",
        why: "the CNI plugin of the containerd tests",
    },
    Tool {
        program: "python3",
        package: "python3",
        why: "the OpenMetrics and manifest validators",
    },
    Tool {
        program: "prometheus",
        package: "prometheus",
        why: "a real Prometheus scraping the agent",
    },
    Tool {
        program: "promtool",
        package: "prometheus",
        why: "validating every text scrape, configs and rules",
    },
    Tool {
        program: "podman",
        package: "podman",
        why: "real containers over the Docker API",
    },
    Tool {
        program: "runc",
        package: "runc",
        why: "the OCI runtime of podman and containerd",
    },
    Tool {
        program: "busybox",
        package: "busybox-static",
        why: "the containers' root file system",
    },
    Tool {
        program: "containerd",
        package: "containerd",
        why: "a real CRI runtime",
    },
    Tool {
        program: "ctr",
        package: "containerd",
        why: "importing the test images",
    },
    Tool {
        program: "tar",
        package: "tar",
        why: "building image archives",
    },
    Tool {
        program: "sha256sum",
        package: "coreutils",
        why: "image digests",
    },
    Tool {
        program: "systemd-analyze",
        package: "systemd",
        why: "verifying the systemd unit",
    },
    Tool {
        program: "ldd",
        package: "libc-bin",
        why: "the image's shared libraries",
    },
    Tool {
        program: "node",
        package: "nodejs",
        why: "the Prometheus Operator schema check",
    },
    Tool {
        program: "npm",
        package: "npm",
        why: "installing that check's schemas",
    },
    Tool {
        program: "curl",
        package: "curl",
        why: "the scrape benchmark's client",
    },
    Tool {
        program: "qemu-system-x86_64",
        package: "qemu-system-x86",
        why: "booting other kernels and cgroup layouts",
    },
    Tool {
        program: "cpio",
        package: "cpio",
        why: "the VMs' initramfs",
    },
    Tool {
        program: "xz",
        package: "xz-utils",
        why: "the VMs' kernel modules (9p, to share the test binaries)",
    },
    Tool {
        program: "gzip",
        package: "gzip",
        why: "the VMs' initramfs",
    },
    Tool {
        program: "strip",
        package: "binutils",
        why: "a small agent in the VMs' initramfs",
    },
];

/// A Python module the tests import, and its PyPI package.
const PYTHON: &[(&str, &str, &str)] = &[
    (
        "prometheus_client",
        "prometheus_client",
        "the strict OpenMetrics parser",
    ),
    (
        "kubernetes_validate",
        "kubernetes-validate",
        "Kubernetes' own manifest schemas",
    ),
];

/// Installs what is missing where it can (root with apt-get); says what is
/// still missing and how to get it. Returns whether everything is there.
pub fn ensure(root: &Path) -> Result<bool> {
    let can_install = cmd::is_root() && which("apt-get").is_some();
    let mut packages: Vec<&str> = missing_tools().map(|t| t.package).collect();
    packages.sort_unstable();
    packages.dedup();
    if !packages.is_empty() && can_install {
        eprintln!(
            "xtask: installing Debian packages the tests use: {}",
            packages.join(" ")
        );
        apt_install(&packages)?;
    }
    if can_install && which("python3").is_some() {
        let modules = missing_python();
        if !modules.is_empty() {
            pip_install(&modules)?;
        }
    }
    deploy_check_modules(root)?;

    let mut missing: Vec<String> = missing_tools()
        .map(|t| format!("{} (Debian package {}: {})", t.program, t.package, t.why))
        .collect();
    missing.extend(
        missing_python().iter().map(|(module, pkg, why)| {
            format!("python3 module {module} (`pip install {pkg}`: {why})")
        }),
    );
    if !root.join("tests/deploy-check/node_modules").is_dir() {
        missing
            .push("tests/deploy-check/node_modules (`npm ci --prefix tests/deploy-check`)".into());
    }
    if !cmd::is_root() {
        missing.push("root: the end-to-end tests create cgroups and load eBPF programs".into());
    }
    if missing.is_empty() {
        return Ok(true);
    }
    eprintln!(
        "xtask: the tests that need these will be counted as skipped{}:",
        if can_install {
            ""
        } else {
            " (cannot install here: not root, or no apt-get)"
        }
    );
    for m in &missing {
        eprintln!("xtask:   {m}");
    }
    Ok(false)
}

fn missing_tools() -> impl Iterator<Item = &'static Tool> {
    TOOLS.iter().filter(|t| which(t.program).is_none())
}

fn missing_python() -> Vec<(&'static str, &'static str, &'static str)> {
    PYTHON
        .iter()
        .copied()
        .filter(|(module, _, _)| {
            !Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect()
}

fn apt_install(packages: &[&str]) -> Result<()> {
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn pip_install(modules: &[(&str, &str, &str)]) -> Result<()> {
    let names: Vec<&str> = modules.iter().map(|(_, pkg, _)| *pkg).collect();
    if !Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        apt_install(&["python3-pip"])?;
    }
    eprintln!(
        "xtask: installing Python packages the tests use: {}",
        names.join(" ")
    );
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(extra)
            .args(&names)
            .output()
    };
    let out = pip(&[])?;
    // Debian's own Python refuses pip outside a venv (PEP 668); these are
    // test tools, installed as root for the test run.
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("externally-managed")
    {
        return cmd::run(
            Command::new("python3")
                .args(["-m", "pip", "install", "-q", "--break-system-packages"])
                .args(&names),
        );
    }
    if !out.status.success() {
        anyhow::bail!(
            "pip install {names:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The Prometheus Operator schemas the deploy tests validate against
/// (`tests/deploy-check`, pinned by its lock file).
fn deploy_check_modules(root: &Path) -> Result<()> {
    let dir = root.join("tests/deploy-check");
    if dir.join("node_modules").is_dir() || which("npm").is_none() {
        return Ok(());
    }
    cmd::run(Command::new("npm").current_dir(&dir).args([
        "ci",
        "--silent",
        "--no-audit",
        "--no-fund",
    ]))
}
