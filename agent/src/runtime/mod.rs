//! Container metadata (name, image, Kubernetes pod/namespace/container)
//! from pluggable providers, asked in order when a container is discovered.
//! The registry stores what they say; the export only reads the registry.
//! A provider that is down costs one warning and empty labels, never a
//! stalled pipeline: every request has a deadline.

pub mod docker;
pub mod path;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::{
    errors::ErrorCounts,
    registry::{ContainerInfo, Msg, Snapshot},
};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The `name` label: the runtime's name, else the container id.
    pub name: String,
    pub image: String,
    pub pod: String,
    pub namespace: String,
    /// The `container` label (Kubernetes container name).
    pub container: String,
    pub labels: BTreeMap<String, String>,
    pub started_at: Option<SystemTime>,
    /// Which provider said so.
    pub provider: &'static str,
    /// `container_label_<key>` pairs the label policy exports.
    pub exported_labels: Vec<(String, String)>,
}

/// Which runtime labels become `container_label_*` series labels: none by
/// default (the kubelet's fixed set), all, or a list. Environment variables
/// are never exported (cAdvisor's leak secrets and explode cardinality).
#[derive(Debug, Clone, Default)]
pub struct LabelPolicy {
    pub store_all: bool,
    pub whitelist: Vec<String>,
}

/// `io.kubernetes.pod.name` → `container_label_io_kubernetes_pod_name`.
pub fn label_name(key: &str) -> String {
    let clean: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("container_label_{clean}")
}

impl LabelPolicy {
    /// The pairs to export. With a whitelist every listed key is there (empty
    /// when the container lacks it), so a family's label names do not vary.
    pub fn export(&self, labels: &BTreeMap<String, String>) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = if self.store_all {
            labels
                .iter()
                .map(|(k, v)| (label_name(k), v.clone()))
                .collect()
        } else {
            self.whitelist
                .iter()
                .map(|k| (label_name(k), labels.get(k).cloned().unwrap_or_default()))
                .collect()
        };
        // Sanitising can map two keys to one name: the first wins.
        let mut seen = HashSet::new();
        out.retain(|(k, _)| seen.insert(k.clone()));
        out
    }
}

#[derive(Debug, Error)]
pub enum ProviderError {
    #[error("{0} is not reachable: {1}")]
    Unreachable(String, String),
    #[error("the runtime does not know this container")]
    Unknown,
    #[error("unexpected answer: {0}")]
    Malformed(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

pub type MetadataFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Metadata, ProviderError>> + Send + 'a>>;

pub trait Provider: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    /// Whether this provider knows containers like this one.
    fn claims(&self, info: &ContainerInfo) -> bool;
    fn metadata<'a>(&'a self, info: &'a ContainerInfo) -> MetadataFuture<'a>;
}

/// How long one provider may take for one container.
const DEADLINE: Duration = Duration::from_secs(5);
/// Containers looked up at once.
const CONCURRENT: usize = 8;

/// Asks the providers, in order, about every new live container and sends
/// the answer to the registry. The path provider comes last and always
/// answers.
pub fn spawn(
    providers: Vec<Arc<dyn Provider>>,
    policy: LabelPolicy,
    mut registry: watch::Receiver<Arc<Snapshot>>,
    tx: mpsc::Sender<Msg>,
    errors: Arc<ErrorCounts>,
) {
    let policy = Arc::new(policy);
    tokio::spawn(async move {
        let mut asked: HashSet<Arc<str>> = HashSet::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
        while registry.changed().await.is_ok() {
            let snapshot = registry.borrow_and_update().clone();
            let live: HashMap<&Arc<str>, &Arc<ContainerInfo>> = snapshot
                .containers
                .iter()
                .filter(|c| c.is_live())
                .map(|c| (&c.path, c))
                .collect();
            asked.retain(|p| live.contains_key(p));
            for (path, info) in live {
                if !asked.insert(path.clone()) {
                    continue;
                }
                let (providers, info, tx, errors, permits, policy) = (
                    providers.clone(),
                    info.clone(),
                    tx.clone(),
                    errors.clone(),
                    permits.clone(),
                    policy.clone(),
                );
                tokio::spawn(async move {
                    let Ok(_permit) = permits.acquire_owned().await else {
                        return;
                    };
                    let mut md = lookup(&providers, &info, &errors).await;
                    md.exported_labels = policy.export(&md.labels);
                    let _ = tx
                        .send(Msg::Metadata {
                            path: info.path.clone(),
                            metadata: Arc::new(md),
                        })
                        .await;
                });
            }
        }
    });
}

/// The first provider that claims the container and answers.
pub async fn lookup(
    providers: &[Arc<dyn Provider>],
    info: &ContainerInfo,
    errors: &ErrorCounts,
) -> Metadata {
    for p in providers.iter().filter(|p| p.claims(info)) {
        match tokio::time::timeout(DEADLINE, p.metadata(info)).await {
            Ok(Ok(md)) => return md,
            Ok(Err(ProviderError::Unknown)) => {}
            Ok(Err(e)) => errors.record(p.name(), format!("{} for {}: {e}", p.name(), info.path)),
            Err(_) => errors.record(
                p.name(),
                format!(
                    "{} for {}: {}",
                    p.name(),
                    info.path,
                    ProviderError::Timeout(DEADLINE)
                ),
            ),
        }
    }
    path::from_path(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_policy() {
        let labels: BTreeMap<String, String> = [
            ("io.kubernetes.pod.name", "web-0"),
            ("app", "x"),
            ("a.b", "1"),
            ("a_b", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert!(LabelPolicy::default().export(&labels).is_empty());
        let wl = LabelPolicy {
            store_all: false,
            whitelist: vec!["app".into(), "team".into()],
        };
        assert_eq!(
            wl.export(&labels),
            [
                ("container_label_app".to_owned(), "x".to_owned()),
                ("container_label_team".to_owned(), String::new())
            ]
        );
        let all = LabelPolicy {
            store_all: true,
            whitelist: vec![],
        }
        .export(&labels);
        assert_eq!(
            all.iter()
                .filter(|(k, _)| k == "container_label_a_b")
                .count(),
            1,
            "{all:?}"
        );
        assert!(all.contains(&(
            "container_label_io_kubernetes_pod_name".to_owned(),
            "web-0".to_owned()
        )));
    }
}
