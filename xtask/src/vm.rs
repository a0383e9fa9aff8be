//! `cargo xtask vm`: the release agent on other kernels and cgroup layouts.
//! Debian's kernels (with BTF) are fetched through apt into `target/vm`
//! (once), each boots under QEMU with TCG (a KVM guest hangs on this
//! machine) from an initramfs of busybox, the agent and `vm/init.sh`,
//! which mounts the layout, makes a real OOM kill and prints its checks.
//! The host validates the guest's `/metrics` with promtool. Then the guest
//! mounts this machine's root read-only over 9p, chroots into it and runs
//! the end-to-end test binaries of `tests/` ([`GUEST_TESTS`]) against the
//! real agent on its own kernel and layout.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd, provision::which, test::Report};

mod kernels;

use kernels::{kernel_files, KERNELS};

const INIT: &str = include_str!("../vm/init.sh");

/// The end-to-end test binaries each cell runs inside (the others need
/// container runtimes or a Prometheus server, and run on the host).
pub const GUEST_TESTS: &[&str] = &["discovery", "oom", "stats", "daemonset", "iter"];

/// What the guest runs of `tests/` and how.
pub struct GuestTests {
    /// (target name, executable, its package's folder), all on this
    /// machine's root, which the guest sees read-only.
    pub binaries: Vec<(String, PathBuf, PathBuf)>,
    /// libtest's arguments (a name filter, …).
    pub args: Vec<String>,
    pub strict: bool,
    /// A benchmark the guest runs (`cargo xtask bench <what>`'s names)
    /// against the same release agent, after the test binaries.
    pub bench: Option<String>,
}

impl GuestTests {
    fn any(&self) -> bool {
        !self.binaries.is_empty() || self.bench.is_some()
    }
}

/// The fleets a guest benchmarks: TCG is slow, and its ratios are what
/// counts, not absolute times.
pub const GUEST_COLLECT_SIZES: &[(usize, usize)] = &[(100, 1), (1000, 1)];

/// A cell's test binaries' results.
pub struct CellTests {
    pub cell: String,
    pub report: Report,
}

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
/// check and every guest test's result; writes `target/vm/results.md`.
/// With `tests`, each guest also runs those test binaries.
pub fn run(
    root: &Path,
    kernel: Option<&str>,
    layout: Option<&str>,
    tests: Option<&GuestTests>,
) -> Result<(Vec<Check>, Vec<CellTests>)> {
    for tool in [
        "qemu-system-x86_64",
        "cpio",
        "gzip",
        "strip",
        "busybox",
        "apt-get",
        "dpkg",
        "xz",
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
    let base = initramfs(root, &dir, tests)?;
    // (kernel, vmlinuz, initrd: the base archive and the kernel's modules).
    let mut images: Vec<(&str, PathBuf, PathBuf)> = Vec::new();
    for (k, _) in &cells {
        if !images.iter().any(|(n, _, _)| n == k) {
            let spec = KERNELS
                .iter()
                .find(|s| s.name == *k)
                .context("unknown kernel")?;
            let files = kernel_files(&dir, spec)?;
            // The kernel unpacks concatenated archives one after another.
            let initrd = dir.join(format!("initrd-{k}.gz"));
            let mut bytes = fs::read(&base)?;
            bytes.extend(fs::read(&files.modules)?);
            fs::write(&initrd, bytes)?;
            images.push((*k, files.vmlinuz, initrd));
        }
    }
    let logs = dir.join("logs");
    fs::create_dir_all(&logs)?;
    let with_tests = tests.is_some_and(GuestTests::any);
    if with_tests {
        // The guest mounts its disk here (the host's root is read-only).
        fs::create_dir_all(root.join("target/test-io"))?;
    }
    let mut checks = Vec::new();
    let mut cell_tests = Vec::new();
    // Two guests at a time (one emulating thread each on this 2-core
    // machine); the next cell starts as soon as one ends.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: Vec<std::sync::Mutex<Option<Result<()>>>> =
        cells.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..cells.len().min(2) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((k, l)) = cells.get(i) else { break };
                let (_, image, initrd) = images.iter().find(|(n, _, _)| n == k).unwrap();
                let disk = dir.join(format!("disk-{k}-{l}.img"));
                let log = logs.join(format!("{k}-{l}.log"));
                let r = boot(image, initrd, l, with_tests, &disk, &log);
                *done[i].lock().unwrap() = Some(r);
            });
        }
    });
    for ((k, l), result) in cells.iter().zip(done) {
        let cell = format!("{k} {l}");
        result
            .into_inner()
            .unwrap()
            .context("the VM thread ended early")??;
        let log = logs.join(format!("{k}-{l}.log"));
        let text = fs::read_to_string(&log)?.replace('\r', "");
        checks.extend(checks_of(&cell, &text));
        if let Some(t) = tests.filter(|_| with_tests) {
            if t.bench.is_some() {
                checks.push(bench_of(&cell, &text, &log));
            }
            let report = guest_report(&text, t);
            for failed in &report.failed {
                println!("vm {cell}: FAILED {failed} (its output: {})", log.display());
            }
            cell_tests.push(CellTests { cell, report });
        }
    }
    let mut table = results_table(&checks);
    if !cell_tests.is_empty() {
        table.push('\n');
        table.push_str(&tests_table(&cell_tests));
    }
    fs::write(dir.join("results.md"), &table)?;
    println!("{table}");
    Ok((checks, cell_tests))
}

/// busybox, the stripped release agent with the libraries it links, the
/// init script and the guest's test script, as a gzipped cpio archive.
fn initramfs(root: &Path, dir: &Path, tests: Option<&GuestTests>) -> Result<PathBuf> {
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
    if let Some(t) = tests {
        fs::write(tree.join("run-tests.sh"), guest_script(root, t))?;
        fs::write(tree.join("workspace"), root.to_string_lossy().as_bytes())?;
    }
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

/// Boots one cell, its serial console into `log`; the guest powers off
/// when done, a guest that hangs is stopped after four minutes (twenty
/// with the test binaries).
fn boot(
    image: &Path,
    initrd: &Path,
    layout: &str,
    tests: bool,
    disk: &Path,
    log: &Path,
) -> Result<()> {
    // A blank disk for the I/O tests (sparse; the guest formats it).
    fs::File::create(disk)?.set_len(512 << 20)?;
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
            "2048",
            "-smp",
            "2",
        ])
        // This machine's root, read-only: the guest runs the test binaries
        // (and the tools they call) from it.
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        // A NIC with no way out (restrict=on): the node's own interface.
        .args(["-nic", "user,model=virtio-net-pci,restrict=on"])
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,cache=unsafe",
            disk.display()
        ))
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(image)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet panic=-1 cgscope.layout={layout} cgscope.tests={}",
            u8::from(tests)
        ))
        .stdin(Stdio::null())
        .stdout(fs::File::create(log)?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let start = Instant::now();
    while child.try_wait()?.is_none() {
        if start.elapsed() > Duration::from_secs(if tests { 1200 } else { 240 }) {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = fs::remove_file(disk);
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

/// The guest's benchmark output, printed, and whether it ran to its end.
fn bench_of(cell: &str, log: &str, path: &Path) -> Check {
    let section = log
        .split_once("== bench begin\n")
        .and_then(|(_, rest)| rest.split_once("== bench end "));
    let (ok, detail) = match section {
        Some((out, rc)) => {
            println!("vm {cell}: benchmark (TCG: compare ratios, not times)\n{out}");
            let rc = rc.lines().next().unwrap_or("").trim().to_owned();
            (rc == "0", format!("exit {rc}"))
        }
        None => (false, format!("did not finish (see {})", path.display())),
    };
    Check {
        cell: cell.to_owned(),
        name: "bench".into(),
        ok,
        detail,
    }
}

/// A word for `sh`, quoted.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The guest's test script: run chrooted into this machine's root, each
/// binary between markers, its skip log after it.
fn guest_script(root: &Path, t: &GuestTests) -> String {
    let agent = root.join("target/release/cgscope");
    let mut s = String::from(
        "#!/bin/sh\n# Written by `cargo xtask vm`; runs in the guest, chrooted into the host's root.\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp TMPDIR=/tmp\n",
    );
    s += &format!(
        "export CGSCOPE_BIN={} CGSCOPE_EXPECT_EBPF=1 CGSCOPE_TEST_BURST=1000 CGSCOPE_TEST_ITER_CGROUPS=100 {}={}\n",
        sh_quote(&agent.to_string_lossy()),
        testkit::STRICT,
        u8::from(t.strict)
    );
    // The I/O tests write under target/test-io: there, the guest's disk.
    let io = sh_quote(&root.join("target/test-io").to_string_lossy());
    s += &format!("mkfs.ext4 -q /dev/vda && mount /dev/vda {io} || dmesg | tail -5\n");
    let args: Vec<String> = t.args.iter().map(|a| sh_quote(a)).collect();
    if let Some(what) = &t.bench {
        // This very xtask binary, on the host's root the guest sees.
        let xtask = std::env::current_exe().unwrap_or_else(|_| root.join("target/debug/xtask"));
        s += &format!(
            "echo '== bench begin'\n{} bench-in-guest {} --bin {} 2>&1\necho \"== bench end $?\"\n",
            sh_quote(&xtask.to_string_lossy()),
            sh_quote(what),
            sh_quote(&agent.to_string_lossy()),
        );
    }
    for (name, exe, dir) in &t.binaries {
        let dir = sh_quote(&dir.to_string_lossy());
        s += &format!(
            "echo '== test {name} begin'\n\
             cd {dir} && CARGO_MANIFEST_DIR={dir} CARGO_PKG_NAME=tests {}=/tmp/skips-{name} \\\n\
             \ttimeout 900 {} --color never {} 2>&1\n\
             echo \"== test {name} end $?\"\n\
             [ -f /tmp/skips-{name} ] && sed 's/^/SKIP\t/' /tmp/skips-{name}\n",
            testkit::SKIP_LOG,
            sh_quote(&exe.to_string_lossy()),
            args.join(" ")
        );
    }
    s
}

/// Every guest test's outcome, from the serial log (`<binary>::<test>`);
/// a binary that did not finish, or failed without a failing test, fails
/// as a whole.
fn guest_report(log: &str, t: &GuestTests) -> Report {
    let mut total = Report::default();
    for (name, _, _) in &t.binaries {
        let begin = format!("== test {name} begin\n");
        let Some((_, rest)) = log.split_once(&begin) else {
            total.failed.push(format!("{name} (did not start)"));
            continue;
        };
        let end = format!("== test {name} end ");
        let (block, after) = rest.split_once(&end).unwrap_or((rest, ""));
        let lines: Vec<String> = block.lines().map(str::to_owned).collect();
        let skip_text: String = after
            .lines()
            .skip(1)
            .map_while(|l| l.strip_prefix("SKIP\t"))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut report = Report::from_output(&lines, &testkit::read_log(&skip_text));
        report.prefix(name);
        match after.lines().next().map(str::trim) {
            None => report.failed.push(format!("{name} (did not finish)")),
            Some("0") => {}
            Some(rc) if report.failed.is_empty() => {
                report.failed.push(format!("{name} (exit {rc})"));
            }
            Some(_) => {}
        }
        total.add(report);
    }
    total
}

/// kernel × layout → guest tests passed, failed and skipped, as Markdown.
fn tests_table(cells: &[CellTests]) -> String {
    let mut t = String::from(
        "| end-to-end tests in the guest | passed | failed | skipped |\n|---|---|---|---|\n",
    );
    for c in cells {
        let r = &c.report;
        t.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            c.cell,
            r.passed.len(),
            r.failed.len(),
            r.skipped.len() + r.ignored
        ));
    }
    t
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
    fn guest_tests_from_a_serial_log() {
        let t = GuestTests {
            binaries: ["oom", "discovery", "never"]
                .iter()
                .map(|n| (n.to_string(), PathBuf::new(), PathBuf::new()))
                .collect(),
            args: vec![],
            strict: true,
            bench: None,
        };
        let log = "== test oom begin\nrunning 3 tests\ntest a ... ok\ntest b ... FAILED\n\
                   test c ... ok\n== test oom end 101\nSKIP\toom-1\tc\tno promtool\n\
                   == test discovery begin\nrunning 1 test\n[ 9.1] oops\n";
        let r = guest_report(log, &t);
        assert_eq!(r.passed, ["oom::a"]);
        assert_eq!(
            r.failed,
            [
                "oom::b",
                "discovery (did not finish)",
                "never (did not start)"
            ]
        );
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(r.skipped[0].test, "oom::c");
        assert!(guest_script(Path::new("/w"), &t).contains("'/w/target/release/cgscope'"));
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
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
