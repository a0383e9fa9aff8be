//! The Kubernetes Container Runtime Interface (containerd, CRI-O) over gRPC
//! on its unix socket: pod name and namespace, container name, image, and
//! which cgroup is a pod's sandbox.
//!
//! One `ListPodSandbox` + `ListContainers` answers every container of a
//! burst; the listing is refreshed only when an unknown id turns up (and at
//! most every [`RELIST`]). Per new container one `ContainerStatus` gives the
//! image *name* (the list has the image id the kubelet passed), per sandbox
//! one verbose `PodSandboxStatus` gives the pause image, as the kubelet's
//! cAdvisor shows it.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hyper_util::rt::TokioIo;
use tokio::{net::UnixStream, sync::Mutex};
use tonic::transport::{Channel, Endpoint, Uri};

use super::{
    cri_api::{
        runtime_service_client::RuntimeServiceClient, ContainerStatusRequest,
        ListContainersRequest, ListPodSandboxRequest, PodSandboxStatusRequest,
    },
    Metadata, MetadataFuture, Provider, ProviderError,
};
use crate::{
    cgroup::identity::{Kind, Runtime},
    registry::ContainerInfo,
};

/// Sockets probed when `--cri-endpoint` is not given, in this order.
pub const DEFAULT_ENDPOINTS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
];

/// The least time between two full listings.
const RELIST: Duration = Duration::from_millis(500);
/// Per RPC; the caller's deadline bounds the whole lookup.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Answers larger than this are refused (a node's listing is a few MiB at
/// most; annotations are the bulk and are dropped at once).
const MAX_MESSAGE: usize = 32 << 20;

const POD_NAME: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const POD_UID: &str = "io.kubernetes.pod.uid";
const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// What the agent keeps of one listed container (annotations, which can be
/// large, are dropped).
#[derive(Debug, Clone)]
struct Listed {
    sandbox_id: String,
    name: String,
    image: String,
    created_ns: i64,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct ListedSandbox {
    name: String,
    namespace: String,
    uid: String,
    created_ns: i64,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Listing {
    at: Option<Instant>,
    containers: HashMap<String, Listed>,
    sandboxes: HashMap<String, ListedSandbox>,
    /// Pod UID → sandbox id (the newest, when a pod was restarted).
    by_uid: HashMap<String, String>,
}

#[derive(Debug)]
pub struct CriProvider {
    socket: PathBuf,
    channel: Channel,
    listing: Mutex<Listing>,
    /// The runtime answered once: from then on a missing socket is a
    /// runtime that went away (counted), not a node without one.
    answered: std::sync::atomic::AtomicBool,
}

/// The first default endpoint that is a socket, else containerd's (so a
/// runtime that starts after the agent is still found). A socket, not just
/// a path: a DaemonSet's hostPath mount of a runtime the node lacks is an
/// empty directory.
pub fn probe_endpoint() -> PathBuf {
    DEFAULT_ENDPOINTS
        .iter()
        .map(PathBuf::from)
        .find(|p| is_socket(p))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ENDPOINTS[0]))
}

fn is_socket(p: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

impl CriProvider {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        let socket: PathBuf = socket.into();
        let path = Arc::new(socket.clone());
        // The URI is a placeholder: the connector dials the unix socket.
        // Connecting lazily means a runtime that is down now is reached
        // once it is up, with no restart of the agent.
        let channel =
            Endpoint::from_static("http://cri.invalid")
                .connect_timeout(RPC_TIMEOUT)
                .timeout(RPC_TIMEOUT)
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(&*path).await?))
                    }
                }));
        Self {
            socket,
            channel,
            listing: Mutex::default(),
            answered: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    fn error(&self, status: tonic::Status) -> ProviderError {
        use tonic::Code;
        match status.code() {
            Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown => {
                ProviderError::Unreachable {
                    endpoint: self.socket.clone(),
                    source: status.message().into(),
                }
            }
            Code::NotFound => ProviderError::Unknown,
            Code::Unimplemented => ProviderError::Malformed(format!(
                "the runtime does not serve CRI runtime.v1: {}",
                status.message()
            )),
            _ => ProviderError::Malformed(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    async fn relist(&self, listing: &mut Listing) -> Result<(), ProviderError> {
        let mut client = self.client();
        let sandboxes = client
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map_err(|s| self.error(s))?
            .into_inner()
            .items;
        let containers = client
            .list_containers(ListContainersRequest { filter: None })
            .await
            .map_err(|s| self.error(s))?
            .into_inner()
            .containers;
        self.answered
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut fresh = Listing {
            at: Some(Instant::now()),
            ..Listing::default()
        };
        for s in sandboxes {
            let md = s.metadata.unwrap_or_default();
            let listed = ListedSandbox {
                name: md.name,
                namespace: md.namespace,
                uid: md.uid,
                created_ns: s.created_at,
                labels: s.labels.into_iter().collect(),
            };
            if !listed.uid.is_empty() {
                let newest = fresh
                    .by_uid
                    .get(&listed.uid)
                    .and_then(|id| fresh.sandboxes.get(id))
                    .is_none_or(|other| other.created_ns <= listed.created_ns);
                if newest {
                    fresh.by_uid.insert(listed.uid.clone(), s.id.clone());
                }
            }
            fresh.sandboxes.insert(s.id, listed);
        }
        for c in containers {
            fresh.containers.insert(
                c.id,
                Listed {
                    sandbox_id: c.pod_sandbox_id,
                    name: c.metadata.map(|m| m.name).unwrap_or_default(),
                    image: c.image.map(|i| i.image).unwrap_or_default(),
                    created_ns: c.created_at,
                    labels: c.labels.into_iter().collect(),
                },
            );
        }
        *listing = fresh;
        Ok(())
    }

    /// Runs `find` on the listing, listing again first when it does not
    /// know the answer and the last listing is older than [`RELIST`].
    async fn find<T>(&self, find: impl Fn(&Listing) -> Option<T>) -> Result<T, ProviderError> {
        let mut listing = self.listing.lock().await;
        if let Some(found) = find(&listing) {
            return Ok(found);
        }
        if listing.at.is_none_or(|at| at.elapsed() >= RELIST) {
            self.relist(&mut listing).await?;
        }
        find(&listing).ok_or(ProviderError::Unknown)
    }

    async fn container(&self, id: &str) -> Result<Metadata, ProviderError> {
        enum Found {
            Container(Listed, Option<ListedSandbox>),
            Sandbox(ListedSandbox),
        }
        let found = self
            .find(|l| {
                if let Some(c) = l.containers.get(id) {
                    return Some(Found::Container(
                        c.clone(),
                        l.sandboxes.get(&c.sandbox_id).cloned(),
                    ));
                }
                l.sandboxes.get(id).cloned().map(Found::Sandbox)
            })
            .await?;
        match found {
            Found::Container(c, sandbox) => {
                let image = self.image_name(id).await?.unwrap_or(c.image);
                let get = |k: &str| c.labels.get(k).cloned();
                Ok(Metadata {
                    name: id.to_owned(),
                    image,
                    pod: get(POD_NAME)
                        .or_else(|| sandbox.as_ref().map(|s| s.name.clone()))
                        .unwrap_or_default(),
                    namespace: get(POD_NAMESPACE)
                        .or_else(|| sandbox.as_ref().map(|s| s.namespace.clone()))
                        .unwrap_or_default(),
                    container: get(CONTAINER_NAME).unwrap_or(c.name),
                    started_at: time_of(c.created_ns),
                    labels: c.labels,
                    provider: "cri",
                    ..Metadata::default()
                })
            }
            Found::Sandbox(s) => Ok(Metadata {
                name: id.to_owned(),
                image: self.sandbox_image(id).await?.unwrap_or_default(),
                pod: s.name,
                namespace: s.namespace,
                started_at: time_of(s.created_ns),
                labels: s.labels,
                provider: "cri",
                sandbox: true,
                ..Metadata::default()
            }),
        }
    }

    /// The pod cgroup (`…/pod<uid>`): the kubelet labels it with its pod
    /// and namespace, and nothing else.
    async fn pod(&self, uid: &str) -> Result<Metadata, ProviderError> {
        let s = self
            .find(|l| {
                l.by_uid
                    .get(uid)
                    .and_then(|id| l.sandboxes.get(id))
                    .cloned()
            })
            .await?;
        Ok(Metadata {
            pod: s.name,
            namespace: s.namespace,
            labels: [(POD_UID.to_owned(), s.uid)].into(),
            provider: "cri",
            ..Metadata::default()
        })
    }

    /// The image by name (`ContainerStatus`), where the listing has the id;
    /// `None` when the status has none. A failed call is an error, not an
    /// empty image: a runtime that is down must not relabel containers.
    async fn image_name(&self, id: &str) -> Result<Option<String>, ProviderError> {
        let status = self
            .client()
            .container_status(ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            })
            .await
            .map_err(|s| self.error(s))?
            .into_inner()
            .status;
        Ok(status
            .and_then(|s| s.image)
            .map(|i| i.image)
            .filter(|i| !i.is_empty()))
    }

    /// The pause image, which only the runtime's verbose sandbox info has
    /// (containerd: `info` → `image`; `None` where the runtime does not say).
    async fn sandbox_image(&self, id: &str) -> Result<Option<String>, ProviderError> {
        let info = self
            .client()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.to_owned(),
                verbose: true,
            })
            .await
            .map_err(|s| self.error(s))?
            .into_inner()
            .info;
        Ok(info.get("info").and_then(|i| sandbox_image_from_info(i)))
    }
}

pub fn sandbox_image_from_info(info: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(info).ok()?;
    v.get("image")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn time_of(ns: i64) -> Option<SystemTime> {
    (ns > 0).then(|| UNIX_EPOCH + Duration::from_nanos(ns as u64))
}

impl Provider for CriProvider {
    fn name(&self) -> &'static str {
        "cri"
    }

    fn claims(&self, info: &ContainerInfo) -> bool {
        let id = &info.identity;
        let ours = match id.kind {
            Kind::Pod => id.pod_uid.is_some(),
            Kind::Container => {
                id.container_id.is_some()
                    && match id.runtime {
                        Some(Runtime::Containerd | Runtime::Crio) => true,
                        Some(Runtime::Docker | Runtime::Podman) => false,
                        // The cgroupfs driver's `/kubepods/…/pod<uid>/<id>`
                        // and containerd's default parent `/k8s.io/<id>`.
                        None => true,
                    }
            }
            _ => false,
        };
        ours && (self.answered.load(std::sync::atomic::Ordering::Relaxed)
            || is_socket(&self.socket))
    }

    fn metadata<'a>(&'a self, info: &'a ContainerInfo) -> MetadataFuture<'a> {
        Box::pin(async move {
            let id = &info.identity;
            match (&id.kind, &id.container_id, &id.pod_uid) {
                (Kind::Container, Some(cid), _) => self.container(cid).await,
                (Kind::Pod, _, Some(uid)) => self.pod(uid).await,
                _ => Err(ProviderError::Unknown),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_image_from_containerd_verbose_info() {
        let info = r#"{"pid":123,"processStatus":"running","image":"registry.k8s.io/pause:3.6","runtimeHandler":""}"#;
        assert_eq!(
            sandbox_image_from_info(info).as_deref(),
            Some("registry.k8s.io/pause:3.6")
        );
        assert_eq!(sandbox_image_from_info("{}"), None);
        assert_eq!(sandbox_image_from_info("not json"), None);
        assert_eq!(sandbox_image_from_info(r#"{"image":""}"#), None);
    }

    // The lazy channel needs a runtime to exist in.
    #[tokio::test]
    async fn claims_kubernetes_cgroups_of_both_drivers() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cri.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let p = CriProvider::new(&socket);
        let claims = |path: &str| {
            let info = crate::registry::ContainerInfo::for_tests(path);
            p.claims(&info)
        };
        let uid = "0b7f3f7c-4d3e-4bb4-9a57-7b7e3b4f2c11";
        let id = "a".repeat(64);
        assert!(claims(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
            uid.replace('-', "_")
        )));
        assert!(claims(&format!("/kubepods/besteffort/pod{uid}/{id}")));
        assert!(claims(&format!("/kubepods/besteffort/pod{uid}")));
        assert!(claims(&format!("/k8s.io/{id}")));
        assert!(!claims(&format!("/system.slice/docker-{id}.scope")));
        assert!(!claims("/system.slice/ssh.service"));
        assert!(!claims("/"));
        // Not a socket: what a DaemonSet's mount of an absent runtime is.
        let missing = CriProvider::new(dir.path());
        let info = crate::registry::ContainerInfo::for_tests(&format!("/kubepods/pod{uid}/{id}"));
        assert!(!missing.claims(&info));
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_not_a_hang() {
        let p = CriProvider::new("/nonexistent/cri.sock");
        let err = p.container(&"b".repeat(64)).await.unwrap_err();
        assert!(matches!(err, ProviderError::Unreachable { .. }), "{err:?}");
    }
}
