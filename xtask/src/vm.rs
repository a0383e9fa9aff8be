//! `cargo xtask vm`: the release agent on other kernels and cgroup layouts.
//! Debian's kernels (with BTF) are fetched through apt into `target/vm`
//! (once), each boots under QEMU with TCG (a KVM guest hangs on this
//! machine) from an initramfs of busybox, the agent and `vm/init.sh`,
//! which mounts the layout, makes a real OOM kill and prints its checks.
//! The host validates the guest's `/metrics` with promtool.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd, provision::which};

const INIT: &str = include_str!("../vm/init.sh");

/// A Debian kernel: its suite and the image package's name pattern.
struct Kernel {
    name: &'static str,
    suite: &'static str,
    /// The package name is `prefix` + version digits + `suffix`.
    prefix: &'static str,
    suffix: &'static str,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        suite: "bullseye",
        prefix: "linux-image-5.10.0-",
        suffix: "-amd64-unsigned",
    },
    Kernel {
        name: "6.1",
        suite: "bookworm",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64",
    },
    Kernel {
        name: "6.12",
        suite: "trixie",
        prefix: "linux-image-6.12.",
        suffix: "+deb13-amd64-unsigned",
    },
];

/// The matrix: kernel × layout (pure v1 where distributions still ship it).
const CELLS: &[(&str, &str)] = &[
    ("5.10", "v1"),
    ("5.10", "v2"),
    ("6.1", "v1"),
    ("6.1", "v2"),
    ("6.12", "v2"),
];

/// One check of one cell.
#[derive(Debug, Clone)]
pub struct Check {
    pub cell: String,
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Runs the cells matching the filters (two at a time) and returns every
/// check; writes `target/vm/results.md`.
pub fn run(root: &Path, kernel: Option<&str>, layout: Option<&str>) -> Result<Vec<Check>> {
    for tool in [
        "qemu-system-x86_64",
        "cpio",
        "gzip",
        "strip",
        "busybox",
        "apt-get",
        "dpkg",
    ] {
        if which(tool).is_none() {
            bail!("{tool} is missing (`cargo xtask test` installs the VM tools)");
        }
    }
    let cells: Vec<(&str, &str)> = CELLS
        .iter()
        .copied()
        .filter(|(k, l)| kernel.is_none_or(|f| f == *k) && layout.is_none_or(|f| f == *l))
        .collect();
    if cells.is_empty() {
        bail!("no cell matches (kernels 5.10, 6.1, 6.12; layouts v1, v2)");
    }
    let dir = root.join("target/vm");
    let initrd = initramfs(root, &dir)?;
    let mut images = Vec::new();
    for (k, _) in &cells {
        if !images.iter().any(|(n, _)| n == k) {
            let spec = KERNELS
                .iter()
                .find(|s| s.name == *k)
                .context("unknown kernel")?;
            images.push((*k, kernel_image(&dir, spec)?));
        }
    }
    let logs = dir.join("logs");
    fs::create_dir_all(&logs)?;
    let mut checks = Vec::new();
    for pair in cells.chunks(2) {
        let runs: Vec<_> = pair
            .iter()
            .map(|(k, l)| {
                let image = images.iter().find(|(n, _)| n == k).unwrap().1.clone();
                let log = logs.join(format!("{k}-{l}.log"));
                let initrd = initrd.clone();
                let layout = l.to_string();
                std::thread::spawn(move || boot(&image, &initrd, &layout, &log).map(|()| log))
            })
            .collect();
        for ((k, l), run) in pair.iter().zip(runs) {
            let cell = format!("{k} {l}");
            let log = run.join().expect("the VM thread panicked")?;
            checks.extend(checks_of(&cell, &fs::read_to_string(&log)?));
        }
    }
    let table = results_table(&checks);
    fs::write(dir.join("results.md"), &table)?;
    println!("{table}");
    Ok(checks)
}

/// busybox, the stripped release agent with the libraries it links, and
/// the init script, as a gzipped cpio archive.
fn initramfs(root: &Path, dir: &Path) -> Result<PathBuf> {
    let agent = root.join("target/release/cgscope");
    if !agent.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p agent`",
            agent.display()
        );
    }
    let tree = dir.join("initramfs");
    let _ = fs::remove_dir_all(&tree);
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        fs::create_dir_all(tree.join(d))?;
    }
    fs::copy(
        which("busybox").context("busybox")?,
        tree.join("bin/busybox"),
    )?;
    cmd::run(
        Command::new("strip")
            .arg("-o")
            .arg(tree.join("cgscope"))
            .arg(&agent),
    )?;
    for lib in linked_libraries(&agent)? {
        let to = tree.join(lib.strip_prefix("/").unwrap_or(&lib));
        fs::create_dir_all(to.parent().unwrap())?;
        fs::copy(&lib, &to).with_context(|| format!("copying {}", lib.display()))?;
    }
    let init = tree.join("init");
    fs::write(&init, INIT)?;
    fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let out = dir.join("initrd.gz");
    cmd::run(Command::new("sh").current_dir(&tree).arg("-c").arg(format!(
        "find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        out.display()
    )))?;
    Ok(out)
}

/// The shared libraries `ldd` lists for `bin` (paths on this machine).
fn linked_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = cmd::output(Command::new("ldd").arg(bin))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// The kernel's `vmlinuz`, fetched from its Debian suite with a private
/// apt state under `target/vm/apt` (the host's apt is not touched).
fn kernel_image(dir: &Path, k: &Kernel) -> Result<PathBuf> {
    let image = dir.join("kernels").join(k.name).join("vmlinuz");
    if image.is_file() {
        return Ok(image);
    }
    let apt = dir.join("apt").join(k.suite);
    let (sources, lists, cache) = (apt.join("sources"), apt.join("lists"), apt.join("cache"));
    for d in [
        &sources,
        &lists.join("partial"),
        &cache.join("archives/partial"),
    ] {
        fs::create_dir_all(d)?;
    }
    fs::write(
        sources.join(format!("{}.sources", k.suite)),
        format!(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            k.suite
        ),
    )?;
    let opts = [
        "-o".to_owned(),
        "Dir::Etc::sourcelist=/dev/null".to_owned(),
        "-o".to_owned(),
        format!("Dir::Etc::sourceparts={}", sources.display()),
        "-o".to_owned(),
        format!("Dir::State::Lists={}", lists.display()),
        "-o".to_owned(),
        format!("Dir::Cache={}", cache.display()),
        // Downloads into target/, which apt's own user cannot write.
        "-o".to_owned(),
        "APT::Sandbox::User=root".to_owned(),
    ];
    eprintln!(
        "xtask: fetching Debian's {} kernel ({}), once",
        k.name, k.suite
    );
    cmd::run(Command::new("apt-get").args(&opts).args(["update", "-qq"]))?;
    let found = cmd::output(Command::new("apt-cache").args(&opts).args([
        "search",
        "--names-only",
        &format!("^{}", k.prefix.replace('.', "\\.")),
    ]))?;
    let package =
        newest(&found, k).with_context(|| format!("no {}* package in {}", k.prefix, k.suite))?;
    let work = apt.join("download");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    cmd::run(
        Command::new("apt-get")
            .args(&opts)
            .current_dir(&work)
            .args(["download", "-qq", &package]),
    )?;
    let deb = fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let x = work.join("x");
    cmd::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&x))?;
    let vmlinuz = fs::read_dir(x.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the package has no boot/vmlinuz-*")?;
    fs::create_dir_all(image.parent().unwrap())?;
    fs::copy(vmlinuz, &image)?;
    let _ = fs::remove_dir_all(&work);
    Ok(image)
}

/// The newest image package in an `apt-cache search` listing.
fn newest(listing: &str, k: &Kernel) -> Option<String> {
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let version = name.strip_prefix(k.prefix)?.strip_suffix(k.suffix)?;
            let parts: Option<Vec<u64>> = version.split('.').map(|p| p.parse().ok()).collect();
            Some((parts?, name.to_owned()))
        })
        .max()
        .map(|(_, name)| name)
}

/// Boots one cell, its serial console into `log`; the guest powers off
/// when done, a guest that hangs is stopped after four minutes.
fn boot(image: &Path, initrd: &Path, layout: &str, log: &Path) -> Result<()> {
    // Single-threaded TCG: with thread=multi a 6.12 guest sometimes dies
    // at boot in an int3 oops (the kernel patching its own text while
    // another vCPU runs it), before the agent starts.
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            "2",
        ])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(image)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet panic=-1 cgscope.layout={layout}"
        ))
        .stdin(Stdio::null())
        .stdout(fs::File::create(log)?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let start = Instant::now();
    while child.try_wait()?.is_none() {
        if start.elapsed() > Duration::from_secs(240) {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The guest's `CHECK` lines, whether it finished, and its `/metrics`
/// validated by promtool.
fn checks_of(cell: &str, log: &str) -> Vec<Check> {
    let text = log.replace('\r', "");
    let check = |name: &str, ok: bool, detail: String| Check {
        cell: cell.to_owned(),
        name: name.to_owned(),
        ok,
        detail,
    };
    let mut out: Vec<Check> = text
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("CHECK ")? + 6..];
            let mut f = rest.splitn(3, ' ');
            let (name, verdict) = (f.next()?, f.next()?);
            Some(check(
                name,
                verdict == "ok",
                f.next().unwrap_or("").to_owned(),
            ))
        })
        .collect();
    let metrics = text
        .split_once("== metrics begin\n")
        .and_then(|(_, rest)| rest.split_once("== metrics end"))
        .map(|(m, _)| m);
    out.push(match metrics {
        None => check(
            "finished",
            false,
            "the guest did not get to its end (see target/vm/logs)".into(),
        ),
        Some(m) => match promtool(m) {
            Ok(()) => check(
                "metrics_valid",
                true,
                format!("{} lines, promtool check metrics", m.lines().count()),
            ),
            Err(e) => check("metrics_valid", false, e),
        },
    });
    out
}

fn promtool(metrics: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr))
    }
}

/// kernel × layout × check → pass/fail, as Markdown.
fn results_table(checks: &[Check]) -> String {
    let mut names: Vec<&str> = Vec::new();
    let mut cells: Vec<&str> = Vec::new();
    for c in checks {
        if !names.contains(&c.name.as_str()) {
            names.push(&c.name);
        }
        if !cells.contains(&c.cell.as_str()) {
            cells.push(&c.cell);
        }
    }
    let mut t = format!(
        "| check | {} |\n|---|{}\n",
        cells.join(" | "),
        "---|".repeat(cells.len())
    );
    for n in names {
        let row: Vec<&str> = cells
            .iter()
            .map(
                |cell| match checks.iter().find(|c| c.cell == *cell && c.name == n) {
                    Some(c) if c.ok => "pass",
                    Some(_) => "FAIL",
                    None => "–",
                },
            )
            .collect();
        t.push_str(&format!("| {n} | {} |\n", row.join(" | ")));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_package() {
        let listing = "linux-image-5.10.0-9-amd64-unsigned - Linux 5.10\n\
                       linux-image-5.10.0-32-amd64-unsigned - Linux 5.10\n\
                       linux-image-5.10.0-32-cloud-amd64-unsigned - cloud\n\
                       linux-image-5.10.0-32-amd64-unsigned-dbg - symbols\n";
        assert_eq!(
            newest(listing, &KERNELS[0]).as_deref(),
            Some("linux-image-5.10.0-32-amd64-unsigned")
        );
        let trixie = "linux-image-6.12.107+deb13-amd64-unsigned - x\nlinux-image-6.12.117+deb13-amd64-unsigned - y\n";
        assert_eq!(
            newest(trixie, &KERNELS[2]).as_deref(),
            Some("linux-image-6.12.117+deb13-amd64-unsigned")
        );
    }

    #[test]
    fn checks_from_a_serial_log() {
        let log = "\u{1b}[2JCHECK agent_healthy ok after 4s\r\nCHECK oom_counted FAIL source ebpf\r\nINFO x\n";
        let c = checks_of("5.10 v1", log);
        assert_eq!(c.len(), 3);
        assert!(c[0].ok && !c[1].ok);
        assert_eq!((c[2].name.as_str(), c[2].ok), ("finished", false));
        assert!(results_table(&c).contains("| oom_counted | FAIL |"));
    }
}
