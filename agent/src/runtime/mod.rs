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
    mut registry: watch::Receiver<Arc<Snapshot>>,
    tx: mpsc::Sender<Msg>,
    errors: Arc<ErrorCounts>,
) {
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
                let (providers, info, tx, errors, permits) = (
                    providers.clone(),
                    info.clone(),
                    tx.clone(),
                    errors.clone(),
                    permits.clone(),
                );
                tokio::spawn(async move {
                    let Ok(_permit) = permits.acquire_owned().await else {
                        return;
                    };
                    let md = lookup(&providers, &info, &errors).await;
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
