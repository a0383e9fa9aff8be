//! A Podman of the test's own: storage, run state and configuration below a
//! temporary folder, runc, the cgroupfs manager, images imported from
//! folders the test fills (nothing is pulled), and its Docker-compatible
//! API on a socket of its own. Everything it made is removed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::cgroups::wait_for;

pub struct Podman {
    dir: tempfile::TempDir,
    service: Option<Child>,
    /// Whether libpod_parent existed before the test (then it is not ours).
    parent_existed: bool,
    /// Likewise /run/containers, which podman 4.3 creates whatever it is told.
    run_dir_existed: bool,
}

/// The busybox image `Podman::new` imports.
pub const BUSYBOX: &str = "localhost/cgscope-busybox:test";

impl Podman {
    /// `None` when podman, runc or a static busybox is missing.
    pub fn new() -> Option<Self> {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        if Command::new("podman").arg("--version").output().is_err()
            || Command::new("runc").arg("--version").output().is_err()
        {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("cgscope-podman")
            .tempdir()
            .ok()?;
        // Everything podman keeps goes below the test's directory.
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\nnetns = \"none\"\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 tmp_dir = \"{0}/tmp\"\n[network]\nnetwork_config_dir = \"{0}/networks\"\n",
                dir.path().display()
            ),
        )
        .ok()?;
        let mut p = Self {
            dir,
            service: None,
            parent_existed: Path::new("/sys/fs/cgroup/memory/libpod_parent").exists(),
            run_dir_existed: Path::new("/run/containers").exists(),
        };
        let rootfs = p.dir.path().join("busybox");
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).ok()?;
        }
        std::fs::copy(busybox, rootfs.join("bin/busybox")).ok()?;
        for applet in ["sh", "sleep", "tail", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).ok()?;
        }
        p.import(&rootfs, BUSYBOX);
        let socket = p.socket();
        p.service = Some(
            p.cmd()
                .args(["system", "service", "--time=0"])
                .arg(format!("unix://{}", socket.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for("the podman API socket", Duration::from_secs(20), || {
            socket.exists()
        });
        Some(p)
    }

    /// A folder below the test's own, for image contents.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Makes `rootfs` the image `name`.
    pub fn import(&self, rootfs: &Path, name: &str) {
        let tar = self.dir.path().join("rootfs.tar");
        assert!(Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap()
            .success());
        assert!(self
            .cmd()
            .args(["import", "-q"])
            .arg(&tar)
            .arg(name)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success());
        let _ = std::fs::remove_file(tar);
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("podman.sock")
    }

    /// `podman` with the test's storage, run state and configuration.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.path().join("storage"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"));
        c
    }

    /// The start of `cmd()` as words, for a command line that wraps another.
    pub fn words(&self) -> Vec<String> {
        let root = self.dir.path();
        vec![
            "env".into(),
            format!("CONTAINERS_CONF={}", root.join("containers.conf").display()),
            "podman".into(),
            "--root".into(),
            root.join("storage").display().to_string(),
            "--runroot".into(),
            root.join("run").display().to_string(),
        ]
    }

    /// Runs a detached container; returns its id.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(["run", "-d"]).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "podman run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The host pid of a running container's first process.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        let out = self
            .cmd()
            .args(["inspect", "--format", "{{.State.Pid}}", name])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .ok()
            .filter(|p| *p != 0)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-a", "-f", "-t", "0"]).output();
        if let Some(mut s) = self.service.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = self.cmd().args(["rmi", "-a", "-f"]).output();
        if !self.run_dir_existed {
            let _ = std::fs::remove_dir(Path::new("/run/containers/networks"));
            let _ = std::fs::remove_dir(Path::new("/run/containers"));
        }
        // podman leaves its parent cgroups behind; they are ours to remove
        // when they did not exist before.
        if !self.parent_existed {
            for h in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let parent = h.path().join("libpod_parent");
                let _ = std::fs::remove_dir(parent.join("conmon"));
                let _ = std::fs::remove_dir(&parent);
            }
        }
    }
}
