//! Container metadata (name, image, Kubernetes pod/namespace/container)
//! from pluggable providers, asked in order when a container is discovered.
//! The registry stores what they say; the export only reads the registry.
//! A provider that is down costs one warning and empty labels, never a
//! stalled pipeline: every request has a deadline.

pub mod cri;
mod cri_api;
pub mod docker;
pub mod path;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::{
    config::Config,
    errors::{Chain, ErrorCounts},
    messages::{Metadata, Msg},
    registry::{ContainerInfo, Handle, Snapshot},
    supervise::Tasks,
    telemetry::Metrics,
};

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
    #[error("{} is not reachable", endpoint.display())]
    Unreachable {
        endpoint: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
/// A lookup that was not final is tried again after 0.25 s, 0.5 s, … up to
/// [`RETRY_MAX`]: a runtime creates a container's cgroup before it lists
/// the container, and a runtime that is down or starts after the agent must
/// not leave containers unlabelled for a whole refresh period.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often the due lookups are looked for.
const TICK: Duration = Duration::from_secs(1);

/// Asks the providers, in order, about every new live container, again
/// every `refresh` (sooner while the answer is not final), and sends the answer to
/// the registry when it changed. The path provider comes last and always
/// answers. This task owns the schedule; lookups run beside it, at most
/// [`CONCURRENT`] at once.
async fn run(
    providers: Vec<Arc<dyn Provider>>,
    policy: LabelPolicy,
    refresh: Duration,
    mut registry: watch::Receiver<Arc<Snapshot>>,
    tx: mpsc::Sender<Msg>,
    errors: Arc<ErrorCounts>,
) {
    let policy = Arc::new(policy);
    // When to ask again, and how many lookups in a row were not final.
    let mut due: HashMap<Arc<str>, (Instant, u32)> = HashMap::new();
    let mut in_flight: HashSet<Arc<str>> = HashSet::new();
    let (done_tx, mut done) = mpsc::unbounded_channel::<(Arc<str>, Metadata, bool)>();
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = registry.changed() => if changed.is_err() { return },
            Some((path, md, final_answer)) = done.recv() => {
                in_flight.remove(&path);
                let tries = due.get(&path).map_or(0, |d| d.1);
                let (after, tries) = if final_answer {
                    (refresh, 0)
                } else {
                    (RETRY_FIRST.saturating_mul(1 << tries.min(10)).min(RETRY_MAX), tries + 1)
                };
                due.insert(path.clone(), (Instant::now() + after, tries));
                let snapshot = registry.borrow().clone();
                let current = snapshot
                    .containers
                    .binary_search_by(|c| (*c.path).cmp(&path))
                    .ok()
                    .map(|i| &snapshot.containers[i]);
                // A runtime that is restarting or briefly down must not
                // take away labels it gave: that would end every series
                // of its containers and start unlabelled ones.
                let keep = current.is_some_and(|c| {
                    c.metadata.as_deref().is_some_and(|m| {
                        m.provider != path::NAME && (!final_answer || md.provider == path::NAME)
                    })
                });
                let changed = !keep
                    && current.is_some_and(|c| c.is_live() && c.metadata.as_deref() != Some(&md));
                if changed {
                    let msg = Msg::Metadata { path, metadata: Arc::new(md) };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let snapshot = registry.borrow_and_update().clone();
        let now = Instant::now();
        let live: HashMap<&Arc<str>, &Arc<ContainerInfo>> = snapshot
            .containers
            .iter()
            .filter(|c| c.is_live())
            .map(|c| (&c.path, c))
            .collect();
        due.retain(|p, _| live.contains_key(p));
        for (path, info) in live {
            if in_flight.contains(path) || due.get(path).is_some_and(|d| d.0 > now) {
                continue;
            }
            in_flight.insert(path.clone());
            let (providers, info, done_tx, errors, permits, policy) = (
                providers.clone(),
                info.clone(),
                done_tx.clone(),
                errors.clone(),
                permits.clone(),
                policy.clone(),
            );
            tokio::spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                let (mut md, final_answer) = lookup(&providers, &info, &errors).await;
                md.exported_labels = policy.export(&md.labels);
                let _ = done_tx.send((info.path.clone(), md, final_answer));
            });
        }
    }
}

/// The first provider that claims the container and answers, and whether
/// that answer is final: it is not when a provider before it failed, or
/// did not know the container (yet).
pub async fn lookup(
    providers: &[Arc<dyn Provider>],
    info: &ContainerInfo,
    errors: &ErrorCounts,
) -> (Metadata, bool) {
    let mut final_answer = true;
    for p in providers.iter().filter(|p| p.claims(info)) {
        let md = tokio::time::timeout(DEADLINE, p.metadata(info)).await;
        final_answer &= matches!(md, Ok(Ok(_)));
        let error = match md {
            Ok(Ok(md)) => return (md, final_answer),
            Ok(Err(ProviderError::Unknown)) => continue,
            Ok(Err(e)) => e,
            Err(_) => ProviderError::Timeout(DEADLINE),
        };
        errors.record(
            p.name(),
            format!("{} for {}: {}", p.name(), info.path, Chain(&error)),
        );
    }
    (path::from_path(info), final_answer)
}

/// Starts asking the runtimes (CRI, then Docker, then the path) about the
/// registry's containers, their failures counted by provider.
pub fn start(config: &Config, registry: &Handle, tasks: &mut Tasks, metrics: &mut Metrics) {
    let errors = Arc::new(ErrorCounts::by("runtime", "provider"));
    errors.register(
        metrics,
        "Container runtime provider failures by provider (labels stay empty); each is logged once",
    );
    let cri = config
        .cri_endpoint
        .clone()
        .unwrap_or_else(cri::probe_endpoint);
    tracing::info!(cri = %cri.display(), docker = %config.docker_endpoint.display(), "runtime endpoints");
    let providers: Vec<Arc<dyn Provider>> = vec![
        Arc::new(cri::CriProvider::new(cri)),
        Arc::new(docker::DockerProvider::new(&config.docker_endpoint)),
        Arc::new(path::PathProvider),
    ];
    let policy = LabelPolicy {
        store_all: config.store_container_labels,
        whitelist: config
            .whitelisted_container_labels
            .iter()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect(),
    };
    let lookups = run(
        providers,
        policy,
        config.metadata_refresh,
        registry.snapshot.clone(),
        registry.tx.clone(),
        errors.clone(),
    );
    tasks.spawn("runtime", lookups);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Says(Result<&'static str, fn() -> ProviderError>);

    impl Provider for Says {
        fn name(&self) -> &'static str {
            "says"
        }
        fn claims(&self, _: &ContainerInfo) -> bool {
            true
        }
        fn metadata<'a>(&'a self, _: &'a ContainerInfo) -> MetadataFuture<'a> {
            let answer = self.0.map_err(|e| e()).map(|name| Metadata {
                name: name.into(),
                ..Metadata::default()
            });
            Box::pin(async move { answer })
        }
    }

    #[tokio::test]
    async fn an_answer_is_final_only_when_nobody_failed_or_did_not_know() {
        let info = ContainerInfo::for_tests("/docker/0123456789ab");
        let errors = ErrorCounts::new("test");
        let ask = |providers: Vec<Says>| {
            let providers: Vec<Arc<dyn Provider>> = providers
                .into_iter()
                .map(|p| Arc::new(p) as Arc<dyn Provider>)
                .chain([Arc::new(path::PathProvider) as Arc<dyn Provider>])
                .collect();
            let errors = &errors;
            let info = &info;
            async move {
                let (md, final_answer) = lookup(&providers, info, errors).await;
                (md.name, final_answer)
            }
        };
        assert_eq!(ask(vec![Says(Ok("web"))]).await, ("web".into(), true));
        // The runtime does not list it yet: the path's answer, asked again.
        assert_eq!(
            ask(vec![Says(Err(|| ProviderError::Unknown))]).await,
            ("0123456789ab".into(), false)
        );
        assert_eq!(
            ask(vec![
                Says(Err(|| ProviderError::Unreachable {
                    endpoint: "s".into(),
                    source: "down".into()
                })),
                Says(Ok("web"))
            ])
            .await,
            ("web".into(), false)
        );
        assert_eq!(ask(vec![]).await, ("0123456789ab".into(), true));
    }

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
