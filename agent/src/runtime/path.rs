//! What the cgroup path alone says: the container id as the name, the
//! pod UID as a label. Always there, asked last.

use super::{Metadata, MetadataFuture, Provider};
use crate::registry::ContainerInfo;

/// The provider name in `Metadata::provider`: labels from the path only.
pub const NAME: &str = "path";

#[derive(Debug, Default)]
pub struct PathProvider;

pub fn from_path(info: &ContainerInfo) -> Metadata {
    let id = &info.identity;
    let mut md = Metadata {
        name: id.container_id.clone().unwrap_or_default(),
        provider: NAME,
        ..Metadata::default()
    };
    if let Some(uid) = &id.pod_uid {
        md.labels
            .insert("io.kubernetes.pod.uid".into(), uid.clone());
    }
    md
}

impl Provider for PathProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn claims(&self, _info: &ContainerInfo) -> bool {
        true
    }

    fn metadata<'a>(&'a self, info: &'a ContainerInfo) -> MetadataFuture<'a> {
        Box::pin(async move { Ok(from_path(info)) })
    }
}
