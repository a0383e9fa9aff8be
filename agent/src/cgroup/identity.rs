//! What a cgroup path says about its owner: Kubernetes pod and container,
//! container runtime, systemd unit. Richer metadata (names, images) comes
//! from the runtime providers; this is what the path alone gives.

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
    Crio,
    Docker,
    Podman,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `/`.
    Root,
    /// A Kubernetes pod cgroup (`…/pod<uid>`).
    Pod,
    /// A container (or pod sandbox) cgroup.
    Container,
    /// A container runtime's monitor process (conmon).
    Monitor,
    /// A systemd service, scope or slice that is none of the above.
    Systemd,
    /// Anything else.
    Raw,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub kind: Kind,
    /// Pod UID with dashes, as Kubernetes prints it.
    pub pod_uid: Option<String>,
    pub qos: Option<QosClass>,
    pub container_id: Option<String>,
    pub runtime: Option<Runtime>,
    /// systemd unit of the last path component (`docker.service`).
    pub unit: Option<String>,
}

impl Identity {
    fn raw(kind: Kind) -> Self {
        Self {
            kind,
            pod_uid: None,
            qos: None,
            container_id: None,
            runtime: None,
            unit: None,
        }
    }

    pub fn parse(path: &str) -> Self {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let Some(&last) = parts.last() else {
            return Self::raw(Kind::Root);
        };
        let mut id = Self::raw(Kind::Raw);
        if last.ends_with(".service")
            || last.ends_with(".scope")
            || last.ends_with(".slice")
            || last.ends_with(".mount")
        {
            id.kind = Kind::Systemd;
            id.unit = Some(last.to_owned());
        }

        let kube = parts
            .iter()
            .position(|p| *p == "kubepods" || *p == "kubepods.slice");
        if let Some(k) = kube {
            let mut qos = None;
            for (i, part) in parts.iter().enumerate().skip(k + 1) {
                if let Some(q) = qos_of(part) {
                    qos = Some(q);
                    continue;
                }
                if let Some(uid) = pod_uid_of(part) {
                    id.pod_uid = Some(uid);
                    id.qos = Some(qos.unwrap_or(QosClass::Guaranteed));
                    match parts.get(i + 1) {
                        None => {
                            id.kind = Kind::Pod;
                            id.unit = None;
                        }
                        Some(child) => {
                            if let Some((runtime, cid)) = container_of(child) {
                                id.kind = Kind::Container;
                                id.runtime = runtime;
                                id.container_id = Some(cid);
                                id.unit = None;
                            } else if let Some((runtime, _)) = monitor_of(child) {
                                id.kind = Kind::Monitor;
                                id.runtime = Some(runtime);
                            }
                        }
                    }
                    return id;
                }
                break;
            }
            return id;
        }

        // Outside Kubernetes: the container is the last component.
        if let Some((runtime, cid)) = container_of(last) {
            let runtime = runtime.or_else(|| {
                let parent = parts.len().checked_sub(2).map(|i| parts[i]);
                match parent {
                    Some("docker") => Some(Runtime::Docker),
                    Some("libpod_parent") => Some(Runtime::Podman),
                    _ => None,
                }
            });
            // A bare hex name is only a container under a known parent
            // (`/docker/<id>`, `/k8s.io/<id>`), not anywhere at all.
            if runtime.is_some() || parts.len() >= 2 {
                id.kind = Kind::Container;
                id.runtime = runtime;
                id.container_id = Some(cid);
                id.unit = None;
            }
        } else if let Some((runtime, _)) = monitor_of(last) {
            id.kind = Kind::Monitor;
            id.runtime = Some(runtime);
        }
        id
    }
}

fn qos_of(part: &str) -> Option<QosClass> {
    match part {
        "burstable" | "kubepods-burstable.slice" => Some(QosClass::Burstable),
        "besteffort" | "kubepods-besteffort.slice" => Some(QosClass::BestEffort),
        _ => None,
    }
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice`.
fn pod_uid_of(part: &str) -> Option<String> {
    let uid = if let Some(rest) = part.strip_suffix(".slice") {
        rest.rsplit_once("-pod")?.1.replace('_', "-")
    } else {
        part.strip_prefix("pod")?.to_owned()
    };
    let ok = uid.len() >= 8 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then_some(uid)
}

const SCOPE_PREFIXES: &[(&str, Option<Runtime>)] = &[
    ("cri-containerd-", Some(Runtime::Containerd)),
    ("crio-", Some(Runtime::Crio)),
    ("docker-", Some(Runtime::Docker)),
    ("libpod-", Some(Runtime::Podman)),
];

/// A container id, bare (`<64 hex>`, cgroupfs driver) or in a runtime's
/// scope (`cri-containerd-<id>.scope`, `libpod-<id>`).
fn container_of(part: &str) -> Option<(Option<Runtime>, String)> {
    let stem = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in SCOPE_PREFIXES {
        if let Some(cid) = stem.strip_prefix(prefix) {
            return is_container_id(cid).then(|| (*runtime, cid.to_owned()));
        }
    }
    (stem == part && is_container_id(part)).then(|| (None, part.to_owned()))
}

/// conmon's scopes: `crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`.
fn monitor_of(part: &str) -> Option<(Runtime, String)> {
    let stem = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in [
        ("crio-conmon-", Runtime::Crio),
        ("libpod-conmon-", Runtime::Podman),
    ] {
        if let Some(cid) = stem.strip_prefix(prefix) {
            return is_container_id(cid).then(|| (runtime, cid.to_owned()));
        }
    }
    None
}

fn is_container_id(s: &str) -> bool {
    (12..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::{Kind::*, QosClass::*, Runtime::*, *};

    const CID: &str = "0b6a8c6f4a2e2f5f1d0c9b8a7e6d5c4b3a2918f7e6d5c4b3a29180f1e2d3c4b5";
    const UID: &str = "3426a9c5-6f2e-4a1b-9c8d-7e6f5a4b3c2d";
    const UID_: &str = "3426a9c5_6f2e_4a1b_9c8d_7e6f5a4b3c2d";

    fn check(
        path: &str,
        kind: Kind,
        pod: Option<&str>,
        qos: Option<QosClass>,
        cid: Option<&str>,
        rt: Option<Runtime>,
    ) {
        let id = Identity::parse(path);
        assert_eq!(id.kind, kind, "{path}");
        assert_eq!(id.pod_uid.as_deref(), pod, "{path}");
        assert_eq!(id.qos, qos, "{path}");
        assert_eq!(id.container_id.as_deref(), cid, "{path}");
        assert_eq!(id.runtime, rt, "{path}");
    }

    #[test]
    fn kubernetes_systemd_driver() {
        let pod =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        check(&pod, Pod, Some(UID), Some(Burstable), None, None);
        for (prefix, rt) in [
            ("cri-containerd-", Containerd),
            ("crio-", Crio),
            ("docker-", Docker),
        ] {
            check(
                &format!("{pod}/{prefix}{CID}.scope"),
                Container,
                Some(UID),
                Some(Burstable),
                Some(CID),
                Some(rt),
            );
        }
        let be = format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope");
        check(
            &be,
            Container,
            Some(UID),
            Some(BestEffort),
            Some(CID),
            Some(Containerd),
        );
        let guaranteed = format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope");
        check(
            &guaranteed,
            Container,
            Some(UID),
            Some(Guaranteed),
            Some(CID),
            Some(Crio),
        );
        let conmon = format!("{pod}/crio-conmon-{CID}.scope");
        check(
            &conmon,
            Monitor,
            Some(UID),
            Some(Burstable),
            None,
            Some(Crio),
        );
        check(
            "/kubepods.slice/kubepods-burstable.slice",
            Systemd,
            None,
            None,
            None,
            None,
        );
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        check(
            &format!("/kubepods/burstable/pod{UID}"),
            Pod,
            Some(UID),
            Some(Burstable),
            None,
            None,
        );
        check(
            &format!("/kubepods/burstable/pod{UID}/{CID}"),
            Container,
            Some(UID),
            Some(Burstable),
            Some(CID),
            None,
        );
        check(
            &format!("/kubepods/besteffort/pod{UID}/{CID}"),
            Container,
            Some(UID),
            Some(BestEffort),
            Some(CID),
            None,
        );
        check(
            &format!("/kubepods/pod{UID}/{CID}"),
            Container,
            Some(UID),
            Some(Guaranteed),
            Some(CID),
            None,
        );
        check("/kubepods/burstable", Raw, None, None, None, None);
        check("/kubepods", Raw, None, None, None, None);
    }

    #[test]
    fn runtimes_outside_kubernetes() {
        check(
            &format!("/libpod_parent/libpod-{CID}"),
            Container,
            None,
            None,
            Some(CID),
            Some(Podman),
        );
        check(
            &format!("/machine.slice/libpod-{CID}.scope"),
            Container,
            None,
            None,
            Some(CID),
            Some(Podman),
        );
        check(
            &format!("/machine.slice/libpod-conmon-{CID}.scope"),
            Monitor,
            None,
            None,
            None,
            Some(Podman),
        );
        check("/libpod_parent/conmon", Raw, None, None, None, None);
        check(
            &format!("/docker/{CID}"),
            Container,
            None,
            None,
            Some(CID),
            Some(Docker),
        );
        check(
            &format!("/system.slice/docker-{CID}.scope"),
            Container,
            None,
            None,
            Some(CID),
            Some(Docker),
        );
        check(
            &format!("/k8s.io/{CID}"),
            Container,
            None,
            None,
            Some(CID),
            None,
        );
    }

    #[test]
    fn systemd_and_raw() {
        let id = Identity::parse("/system.slice/docker.service");
        assert_eq!(
            (id.kind, id.unit.as_deref()),
            (Systemd, Some("docker.service"))
        );
        check("/", Root, None, None, None, None);
        check("", Root, None, None, None, None);
        check(
            "/user.slice/user-0.slice/session-1.scope",
            Systemd,
            None,
            None,
            None,
            None,
        );
        check("/cgscope-test/a/b", Raw, None, None, None, None);
        // Hex-looking top-level names are not containers by themselves.
        check(&format!("/{CID}"), Raw, None, None, None, None);
        check("/docker/not-an-id", Raw, None, None, None, None);
    }
}
