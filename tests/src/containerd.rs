//! A private, real containerd (Debian's, with its CRI plugin) that tests
//! drive over CRI like a kubelet would: its own config, state, sockets and
//! images under a temp dir; pods under a test's own cgroup prefix; all of
//! it stopped and removed on drop, even when the test fails.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{
    cgroups::{wait_for, CgroupTree},
    which,
};

#[allow(clippy::all, clippy::pedantic)]
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

use cri::{runtime_service_client::RuntimeServiceClient as Client, *};

/// The images the tests import (no registry is reachable here).
pub const PAUSE_IMAGE: &str = "cgscope.test/pause:1";
pub const BUSYBOX_IMAGE: &str = "cgscope.test/busybox:1";

/// Busybox applets the test containers use.
const APPLETS: &[&str] = &["sh", "sleep", "dd", "nc", "cat", "echo", "true"];

/// The interface the test CNI plugin puts in each pod's namespace: one end
/// of a veth pair whose other end (`veth…`, which cAdvisor's rules ignore)
/// stays in the pod too, so pods have traffic counters and nothing on the
/// host changes (this kernel has no `dummy` driver).
const CNI_PLUGIN: &str = r#"#!/bin/sh
# A CNI plugin for tests: eth0 and its veth peer both live inside the pod's
# own network namespace; the host is never touched.
read -r _conf
case "$CNI_COMMAND" in
VERSION)
  echo '{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0"]}' ;;
ADD)
  if [ "$(basename "$0")" = loopback ]; then
    nsenter --net="$CNI_NETNS" ip link set lo up
    echo '{"cniVersion":"0.4.0","interfaces":[{"name":"lo","sandbox":"'"$CNI_NETNS"'"}],"ips":[{"version":"4","address":"127.0.0.1/8","interface":0}]}'
  else
    nsenter --net="$CNI_NETNS" ip link add "$CNI_IFNAME" type veth peer name vethpeer0 || exit 1
    nsenter --net="$CNI_NETNS" ip link set vethpeer0 up || exit 1
    nsenter --net="$CNI_NETNS" ip addr add 10.88.0.2/24 dev "$CNI_IFNAME" || exit 1
    nsenter --net="$CNI_NETNS" ip link set "$CNI_IFNAME" up || exit 1
    echo '{"cniVersion":"0.4.0","interfaces":[{"name":"'"$CNI_IFNAME"'","sandbox":"'"$CNI_NETNS"'"}],"ips":[{"version":"4","address":"10.88.0.2/24","interface":0}]}'
  fi ;;
*) ;;
esac
"#;

pub struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    client: Client<Channel>,
    pods: Vec<String>,
    /// The cgroup prefix pods go under; removed (with anything left in it)
    /// after containerd is gone.
    pub cgroups: Option<CgroupTree>,
    /// containerd 1.6 always puts shim sockets and runc state here.
    run_dir_was_there: bool,
}

pub struct Pod {
    pub id: String,
    pub uid: String,
    pub config: PodSandboxConfig,
}

fn mounted_hierarchies() -> Vec<&'static str> {
    [
        "blkio",
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "freezer",
        "hugetlb",
        "memory",
        "net_cls",
        "net_prio",
        "perf_event",
        "pids",
        "rdma",
        "misc",
        "systemd",
        "unified",
    ]
    .into_iter()
    .filter(|h| Path::new(crate::cgroups::ROOT).join(h).is_dir())
    .collect()
}

impl Containerd {
    /// `None` (after saying why) when containerd, runc, busybox or the
    /// tools the CNI plugin needs are missing; strict runs fail instead.
    pub fn start(name: &str) -> Option<Self> {
        Self::start_with(name, true)
    }

    /// A containerd without its CRI plugin: a real gRPC server on the
    /// socket that does not serve the Kubernetes runtime API.
    pub fn start_without_cri(name: &str) -> Option<Self> {
        Self::start_with(name, false)
    }

    fn start_with(name: &str, cri: bool) -> Option<Self> {
        let missing: Vec<&str> = ["containerd", "ctr", "runc", "busybox", "nsenter", "ip"]
            .into_iter()
            .filter(|t| which(t).is_none())
            .collect();
        if !missing.is_empty() {
            crate::skip(&format!(
                "{missing:?} missing (`cargo xtask test` installs containerd, runc, busybox-static, iproute2)"
            ));
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("cgscope-containerd")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let cni_bin = d.join("cni/bin");
        let cni_conf = d.join("cni/conf");
        fs::create_dir_all(&cni_bin).unwrap();
        fs::create_dir_all(&cni_conf).unwrap();
        for plugin in ["cgscope-dummy", "loopback"] {
            let p = cni_bin.join(plugin);
            fs::write(&p, CNI_PLUGIN).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(
            cni_conf.join("10-cgscope.conf"),
            r#"{"cniVersion":"0.4.0","name":"cgscope-test","type":"cgscope-dummy"}"#,
        )
        .unwrap();
        let socket = d.join("containerd.sock");
        let config = d.join("config.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
{disabled}
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"#,
                disabled = if cri {
                    ""
                } else {
                    r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#
                },
                root = d.join("root").display(),
                state = d.join("state").display(),
                socket = socket.display(),
                cni_bin = cni_bin.display(),
                cni_conf = cni_conf.display(),
            ),
        )
        .unwrap();
        let run_dir_was_there = Path::new("/run/containerd").exists();
        let child = spawn_daemon(d);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let path = socket.clone();
        let channel = rt.block_on(async {
            Endpoint::from_static("http://cri.invalid")
                .timeout(Duration::from_secs(60))
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
        });
        let c = Self {
            child,
            rt,
            client: Client::new(channel),
            pods: Vec::new(),
            cgroups: Some(CgroupTree::new(name, &mounted_hierarchies())),
            run_dir_was_there,
            dir,
        };
        if !cri {
            wait_for("containerd's socket", Duration::from_secs(30), || {
                socket.exists()
            });
            return Some(c);
        }
        c.wait_ready();
        c.import(PAUSE_IMAGE, &["/bin/sleep", "2147483647"]);
        c.import(BUSYBOX_IMAGE, &["/bin/sh"]);
        Some(c)
    }

    fn wait_ready(&self) {
        wait_for("containerd's CRI socket", Duration::from_secs(30), || {
            self.socket().exists() && {
                let mut client = self.client.clone();
                self.rt
                    .block_on(client.version(VersionRequest::default()))
                    .is_ok()
            }
        });
    }

    /// Stops the daemon; pods and containers keep running (their shims
    /// stay), as when a node's containerd restarts.
    pub fn stop_daemon(&mut self) {
        stop(&mut self.child);
    }

    /// Starts the daemon again on the same state; it finds its pods.
    pub fn restart_daemon(&mut self) {
        stop(&mut self.child);
        self.child = spawn_daemon(self.dir.path());
        self.wait_ready();
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Builds a docker-archive of busybox with `cmd` and imports it into
    /// containerd's Kubernetes namespace.
    fn import(&self, tag: &str, cmd: &[&str]) {
        let work = self.dir.path().join(format!("image-{}", crate::unique()));
        let rootfs = work.join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::create_dir_all(rootfs.join("tmp")).unwrap();
        fs::copy(which("busybox").unwrap(), rootfs.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        run(Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(work.join("layer.tar"))
            .arg("."));
        let digest = run(Command::new("sha256sum").arg(work.join("layer.tar")));
        let digest = digest.split_whitespace().next().unwrap();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
        });
        fs::write(work.join("config.json"), config.to_string()).unwrap();
        let manifest = serde_json::json!([{
            "Config": "config.json",
            "RepoTags": [tag],
            "Layers": ["layer.tar"],
        }]);
        fs::write(work.join("manifest.json"), manifest.to_string()).unwrap();
        run(Command::new("tar")
            .arg("-C")
            .arg(&work)
            .arg("-cf")
            .arg(work.join("image.tar"))
            .args(["manifest.json", "config.json", "layer.tar"]));
        run(Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["-n", "k8s.io", "images", "import"])
            .arg(work.join("image.tar")));
    }

    /// Runs a pod sandbox with its own network namespace under
    /// `<prefix>/kubepods/besteffort/pod<uid>`, the kubelet's cgroupfs
    /// driver layout (each container is `<that>/<id>`). The systemd
    /// driver's `….slice/cri-containerd-<id>.scope` needs systemd as PID 1,
    /// which this machine does not have.
    pub fn run_pod(&mut self, name: &str, namespace: &str) -> Pod {
        let uid = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            std::process::id(),
            crate::unique()
        );
        let prefix = self.cgroups.as_ref().unwrap().prefix.clone();
        let parent = format!("{prefix}/kubepods/besteffort/pod{uid}");
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                namespace: namespace.into(),
                uid: uid.clone(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.dir.path().join("logs").display().to_string(),
            labels: [
                ("io.kubernetes.pod.name".to_owned(), name.to_owned()),
                (
                    "io.kubernetes.pod.namespace".to_owned(),
                    namespace.to_owned(),
                ),
                ("io.kubernetes.pod.uid".to_owned(), uid.clone()),
            ]
            .into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: parent,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut client = self.client.clone();
        let id = self
            .rt
            .block_on(client.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", self.log()))
            .into_inner()
            .pod_sandbox_id;
        self.pods.push(id.clone());
        Pod { id, uid, config }
    }

    /// Creates and starts a container running `sh -c script` in the pod.
    pub fn run_container(
        &self,
        pod: &Pod,
        name: &str,
        script: &str,
        resources: LinuxContainerResources,
    ) -> String {
        let meta = pod.config.metadata.as_ref().unwrap();
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: BUSYBOX_IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}.log"),
            labels: [
                ("io.kubernetes.pod.name".to_owned(), meta.name.clone()),
                (
                    "io.kubernetes.pod.namespace".to_owned(),
                    meta.namespace.clone(),
                ),
                ("io.kubernetes.pod.uid".to_owned(), meta.uid.clone()),
                ("io.kubernetes.container.name".to_owned(), name.to_owned()),
            ]
            .into(),
            linux: Some(LinuxContainerConfig {
                resources: Some(resources),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut client = self.client.clone();
        let id = self
            .rt
            .block_on(client.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }))
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", self.log()))
            .into_inner()
            .container_id;
        self.rt
            .block_on(client.start_container(StartContainerRequest {
                container_id: id.clone(),
            }))
            .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", self.log()));
        id
    }

    /// Stops and removes a pod and its containers.
    pub fn remove_pod(&mut self, id: &str) {
        let mut client = self.client.clone();
        let _ = self
            .rt
            .block_on(client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            }));
        let _ = self
            .rt
            .block_on(client.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            }));
        self.pods.retain(|p| p != id);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in self.pods.clone() {
            self.remove_pod(&id);
        }
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = std::time::Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims of pods that could not be removed (a test that failed half
        // way) outlive containerd; they name our socket on their command
        // line, so only ours are killed.
        let socket = self.socket().display().to_string();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&socket) {
                // SAFETY: plain syscall on a process this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // Anything runc left (the pod parents, a failed test's containers).
        drop(self.cgroups.take());
        if !self.run_dir_was_there {
            let _ = fs::remove_dir_all("/run/containerd");
        }
        // Snapshots stay mounted until their containers are removed; a
        // failed removal must not leave mounts behind in the temp dir.
        let root = self.dir.path().join("root");
        if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
            for m in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
                if Path::new(m).starts_with(&root)
                    || Path::new(m).starts_with(self.dir.path().join("state"))
                {
                    let _ = Command::new("umount").arg("-l").arg(m).status();
                }
            }
        }
    }
}

/// containerd on the config in `dir`, logging to `dir/containerd.log`.
fn spawn_daemon(dir: &Path) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .unwrap();
    Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// SIGTERM, then SIGKILL after 10 s.
fn stop(child: &mut Child) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = std::time::Instant::now();
    while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
