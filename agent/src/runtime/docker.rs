//! The Docker Engine API over its unix socket (Docker, and Podman's
//! `podman system service`): name, image, labels, start time.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt as _, UnixConnector, Uri};
use serde::Deserialize;

use super::{Metadata, MetadataFuture, Provider, ProviderError};
use crate::{cgroup::identity::Runtime, registry::ContainerInfo};

/// Answers larger than this are refused (a container's inspect JSON is a
/// few KiB).
const MAX_BODY: usize = 1 << 20;

#[derive(Debug)]
pub struct DockerProvider {
    socket: PathBuf,
    client: Client<UnixConnector, Full<Bytes>>,
}

impl DockerProvider {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            client: Client::unix(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    name: Option<String>,
    config: Option<Config>,
    state: Option<State>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Config {
    image: Option<String>,
    labels: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct State {
    started_at: Option<String>,
}

/// Turns an inspect answer into metadata (Kubernetes labels, when the
/// container has them, become the pod/namespace/container labels).
pub fn parse_inspect(body: &[u8], fallback_name: &str) -> Result<Metadata, ProviderError> {
    let i: Inspect =
        serde_json::from_slice(body).map_err(|e| ProviderError::Malformed(e.to_string()))?;
    let config = i.config.unwrap_or(Config {
        image: None,
        labels: None,
    });
    let labels = config.labels.unwrap_or_default();
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    Ok(Metadata {
        name: i
            .name
            .map(|n| n.trim_start_matches('/').to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| fallback_name.to_owned()),
        image: config.image.unwrap_or_default(),
        pod: get("io.kubernetes.pod.name"),
        namespace: get("io.kubernetes.pod.namespace"),
        container: get("io.kubernetes.container.name"),
        started_at: i
            .state
            .and_then(|s| s.started_at)
            .and_then(|t| humantime::parse_rfc3339_weak(t.get(..19)?).ok()),
        // dockershim's (and cri-dockerd's) pod sandbox.
        sandbox: labels.get("io.kubernetes.docker.type").map(String::as_str) == Some("podsandbox"),
        labels,
        provider: "docker",
        exported_labels: Vec::new(),
    })
}

impl Provider for DockerProvider {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn claims(&self, info: &ContainerInfo) -> bool {
        info.identity.container_id.is_some()
            && matches!(
                info.identity.runtime,
                Some(Runtime::Docker | Runtime::Podman) | None
            )
            && self.socket.exists()
    }

    fn metadata<'a>(&'a self, info: &'a ContainerInfo) -> MetadataFuture<'a> {
        Box::pin(async move {
            let id = info
                .identity
                .container_id
                .as_deref()
                .ok_or(ProviderError::Unknown)?;
            let uri: hyper::Uri = Uri::new(&self.socket, &format!("/containers/{id}/json")).into();
            let response = self
                .client
                .get(uri)
                .await
                .map_err(|e| ProviderError::Unreachable {
                    endpoint: self.socket.clone(),
                    source: e.into(),
                })?;
            match response.status().as_u16() {
                200 => {}
                404 => return Err(ProviderError::Unknown),
                other => return Err(ProviderError::Malformed(format!("HTTP {other}"))),
            }
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| ProviderError::Malformed(e.to_string()))?
                .to_bytes();
            parse_inspect(&body, id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_of_a_podman_container() {
        let body = br#"{"Id":"abc","Name":"/web","Config":{"Image":"localhost/busybox:latest","Labels":{"app":"x"}},"State":{"StartedAt":"2026-11-29T01:02:03.123456789Z"}}"#;
        let md = parse_inspect(body, "abc").unwrap();
        assert_eq!(
            (md.name.as_str(), md.image.as_str()),
            ("web", "localhost/busybox:latest")
        );
        assert_eq!(md.labels.get("app").map(String::as_str), Some("x"));
        assert!(md.started_at.is_some());
        assert_eq!(md.container, "");
    }

    #[test]
    fn kubernetes_labels_and_odd_answers() {
        let body = br#"{"Name":"k8s_app_pod","Config":{"Image":"nginx","Labels":{"io.kubernetes.pod.name":"web-0","io.kubernetes.pod.namespace":"prod","io.kubernetes.container.name":"nginx"}}}"#;
        let md = parse_inspect(body, "id").unwrap();
        assert_eq!(
            (
                md.pod.as_str(),
                md.namespace.as_str(),
                md.container.as_str()
            ),
            ("web-0", "prod", "nginx")
        );
        assert!(matches!(
            parse_inspect(b"{not json", "id"),
            Err(ProviderError::Malformed(_))
        ));
        let md = parse_inspect(b"{}", "abc123").unwrap();
        assert_eq!((md.name.as_str(), md.image.as_str()), ("abc123", ""));
    }
}
