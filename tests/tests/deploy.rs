//! What users deploy, checked by the tools that would read it: the
//! Kubernetes manifests (kustomize, the Kubernetes and Prometheus Operator
//! schemas, and the agent's own flag parser), the image's file list, the
//! Grafana dashboard's PromQL (promtool, and the metrics a real agent
//! serves), the systemd unit (systemd-analyze) and the Kubernetes scrape
//! config's relabelling (a real Prometheus).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;
use tests::{cgroups::wait_for, prometheus::Prometheus, require_root, skip, yaml_docs, Agent};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a tool; `None` (after saying so, or failing in strict runs) when it
/// is not installed.
fn tool(test: &str, cmd: &mut Command) -> Option<Output> {
    match cmd.output() {
        Ok(out) => Some(out),
        Err(e) => {
            let what = format!("{:?}", cmd.get_program());
            skip(&format!(
                "{test}: {what} is needed (`cargo xtask test` installs it): {e}"
            ));
            None
        }
    }
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The release binary the image ships (`cargo xtask test` builds it).
fn release_bin(test: &str) -> Option<PathBuf> {
    let bin = std::env::var_os("CGSCOPE_RELEASE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/release/cgscope"));
    if bin.exists() {
        return Some(bin);
    }
    skip(&format!(
        "{test}: {} is missing (cargo xtask test builds it)",
        bin.display()
    ));
    None
}

/// kustomize's `resources` and strategic-merge `patches`, as far as these
/// manifests use them, for machines without kubectl: lists of objects merge
/// by `name`, like the Kubernetes types' patch keys for containers,
/// volumes and mounts.
fn render_without_kustomize(dir: &Path) -> String {
    fn merge(base: &mut Value, patch: &Value) {
        match (base, patch) {
            (Value::Object(b), Value::Object(p)) => {
                for (k, v) in p {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            (Value::Array(b), Value::Array(p)) if p.iter().all(|v| v.get("name").is_some()) => {
                for v in p {
                    match b.iter_mut().find(|x| x.get("name") == v.get("name")) {
                        Some(x) => merge(x, v),
                        None => b.push(v.clone()),
                    }
                }
            }
            (b, p) => *b = p.clone(),
        }
    }
    fn docs(dir: &Path) -> Vec<Value> {
        let k = yaml_docs(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .pop()
            .unwrap();
        let mut out = Vec::new();
        for r in k["resources"].as_array().into_iter().flatten() {
            let path = dir.join(r.as_str().unwrap());
            if path.is_dir() {
                out.extend(docs(&path));
            } else {
                out.extend(yaml_docs(&std::fs::read_to_string(path).unwrap()));
            }
        }
        for p in k["patches"].as_array().into_iter().flatten() {
            let patch =
                yaml_docs(&std::fs::read_to_string(dir.join(p["path"].as_str().unwrap())).unwrap())
                    .pop()
                    .unwrap();
            let target = out
                .iter_mut()
                .find(|d| {
                    d["kind"] == patch["kind"] && d["metadata"]["name"] == patch["metadata"]["name"]
                })
                .expect("the patch's target exists");
            merge(target, &patch);
        }
        out
    }
    // JSON is YAML.
    docs(dir).iter().map(|d| format!("---\n{d}\n")).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn kubernetes_manifests_render_validate_and_agree() {
    let test = "kubernetes_manifests_render_validate_and_agree";
    let Some(bin) = release_bin(test) else { return };
    let kube = repo().join("deploy/kubernetes");
    let dir = tempfile::tempdir().unwrap();
    for variant in [
        "base",
        "overlays/privileged",
        "overlays/seccomp-localhost",
        "overlays/prometheus-operator",
    ] {
        // CGSCOPE_KUBECTL=none tries the fallback on a machine with kubectl.
        let kubectl = std::env::var("CGSCOPE_KUBECTL").unwrap_or_else(|_| "kubectl".into());
        let kustomize = Command::new(kubectl)
            .arg("kustomize")
            .arg(kube.join(variant))
            .output();
        let rendered = match kustomize {
            Ok(out) => ok(&out, &format!("kubectl kustomize {variant}")),
            Err(_) => {
                eprintln!("{test}: no kubectl: rendering {variant} by the test's own reading");
                render_without_kustomize(&kube.join(variant))
            }
        };
        let file = dir
            .path()
            .join(format!("{}.yaml", variant.replace('/', "-")));
        std::fs::write(&file, &rendered).unwrap();

        // The core API objects, strictly (unknown fields are errors).
        let out = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
            .arg(&file)
            .output()
            .expect("python3");
        if String::from_utf8_lossy(&out.stderr).contains("No module named") {
            skip(&format!(
                "{test}: kubernetes-validate (PyPI) is needed; `cargo xtask test` installs it"
            ));
            return;
        }
        ok(&out, &format!("kubernetes-validate {variant}"));

        let docs = yaml_docs(&rendered);
        let ds = find(&docs, "DaemonSet");
        let pod = &ds["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let sc = &c["securityContext"];
        assert_eq!(pod["hostPID"], true);
        assert_eq!(pod["priorityClassName"], "system-node-critical");
        assert_eq!(pod["tolerations"][0]["operator"], "Exists");
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(
            sc["privileged"].as_bool().unwrap_or(false),
            variant == "overlays/privileged",
            "{variant}: privileged only in its overlay"
        );
        // Unconfined but where the repository's own profile is installed
        // (the Podman test runs the agent under it).
        if variant == "overlays/seccomp-localhost" {
            assert_eq!(sc["seccompProfile"]["type"], "Localhost");
            assert_eq!(sc["seccompProfile"]["localhostProfile"], "cgscope.json");
            assert!(repo().join("deploy/seccomp/cgscope.json").is_file());
        } else if variant != "overlays/privileged" {
            assert_eq!(sc["seccompProfile"]["type"], "Unconfined", "{variant}");
        }
        let caps: BTreeSet<&str> = sc["capabilities"]["add"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            caps,
            [
                "BPF",
                "DAC_READ_SEARCH",
                "PERFMON",
                "SYSLOG",
                "SYS_PTRACE",
                "SYS_RESOURCE"
            ]
            .into()
        );
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(c[probe]["httpGet"]["path"], "/healthz");
            assert_eq!(c[probe]["httpGet"]["port"], "http-metrics");
        }
        assert_eq!(c["ports"][0]["name"], "http-metrics");
        // Every hostPath the agent is pointed at is mounted read-only.
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let mounts = c["volumeMounts"].as_array().unwrap();
        for arg in &args {
            if let Some(path) = arg
                .strip_prefix("--proc-root=")
                .or(arg.strip_prefix("--machine-id-file="))
            {
                assert!(
                    mounts
                        .iter()
                        .any(|m| m["mountPath"] == path && m["readOnly"] == true),
                    "{path} is not mounted read-only"
                );
            }
        }
        for m in mounts {
            assert_eq!(m["readOnly"], true, "{m}");
        }
        // The agent accepts the DaemonSet's flags (clap rejects a bad one
        // before it reaches --version).
        let out = Command::new(&bin)
            .args(&args)
            .arg("--version")
            .output()
            .unwrap();
        ok(&out, &format!("cgscope {args:?}"));

        let svc = find(&docs, "Service");
        assert_eq!(svc["spec"]["clusterIP"], "None");
        assert_eq!(svc["spec"]["ports"][0]["name"], "http-metrics");
        let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
        for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&pod_labels[k], v, "the Service selects the agent's pods");
        }

        if variant == "overlays/prometheus-operator" {
            let monitors: Vec<Value> = docs
                .iter()
                .filter(|d| d["kind"] == "ServiceMonitor")
                .cloned()
                .chain(yaml_docs(
                    &std::fs::read_to_string(kube.join(variant).join("podmonitor.yaml")).unwrap(),
                ))
                .collect();
            assert_eq!(monitors.len(), 2);
            for m in &monitors {
                for (k, v) in m["spec"]["selector"]["matchLabels"].as_object().unwrap() {
                    let labels = if m["kind"] == "ServiceMonitor" {
                        &svc["metadata"]["labels"]
                    } else {
                        pod_labels
                    };
                    assert_eq!(&labels[k], v, "{} selects cgscope", m["kind"]);
                }
            }
            // The operator's own schemas (kubernetes-validate has only the
            // core API's).
            let json = dir.path().join("monitors.json");
            std::fs::write(&json, serde_json::to_string(&monitors).unwrap()).unwrap();
            let check = repo().join("tests/deploy-check");
            if !check.join("node_modules").exists() {
                skip("the monitor schemas need `npm ci --prefix tests/deploy-check` (`cargo xtask test` runs it)");
                continue;
            }
            let Some(out) = tool(
                test,
                Command::new("node")
                    .arg(check.join("validate-monitors.mjs"))
                    .arg(&json),
            ) else {
                return;
            };
            ok(&out, "Prometheus Operator schemas");
        }
    }
}

#[test]
fn the_image_ships_what_the_build_makes() {
    let test = "the_image_ships_what_the_build_makes";
    let Some(bin) = release_bin(test) else { return };
    let containerfile = std::fs::read_to_string(repo().join("Containerfile")).unwrap();
    // The build stage runs what `cargo xtask test` ran before this test.
    let runs: Vec<&str> = containerfile
        .lines()
        .filter_map(|l| l.strip_prefix("RUN "))
        .collect();
    assert_eq!(
        runs,
        [
            "cargo xtask build-ebpf",
            "cargo build --release --locked --package agent"
        ]
    );
    let mut copied = 0;
    for line in containerfile
        .lines()
        .filter(|l| l.starts_with("COPY --from=build "))
    {
        let src = line.split_whitespace().nth(2).unwrap();
        let rel = src
            .strip_prefix("/src/")
            .expect("copies from the build dir");
        assert!(
            repo().join(rel).exists(),
            "{rel}, copied into the image, does not exist"
        );
        copied += 1;
    }
    assert!(copied >= 1);
    assert!(containerfile.contains("COPY --from=build /src/target/release/cgscope "));
    let out = Command::new(&bin).arg("--help").output().unwrap();
    assert!(ok(&out, "cgscope --help").contains("--cri-endpoint"));
    // distroless/cc has glibc and libgcc and nothing more.
    let Some(out) = tool(test, Command::new("ldd").arg(&bin)) else {
        return;
    };
    let allowed = [
        "linux-vdso.so",
        "libgcc_s.so",
        "libm.so",
        "libc.so",
        "ld-linux-x86-64.so",
        "libpthread.so",
        "libdl.so",
        "librt.so",
    ];
    for lib in ok(&out, "ldd")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        let name = Path::new(lib)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            allowed.iter().any(|a| name.starts_with(a)),
            "the binary needs {name}, which the runtime image lacks"
        );
    }
}

/// Every PromQL expression of the dashboard, with Grafana's variables
/// given values.
fn dashboard_exprs() -> Vec<String> {
    let path = repo().join("deploy/grafana/cgscope-containers.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            out.push(
                expr.replace("$__rate_interval", "1m")
                    .replace("$__range", "1h")
                    .replace("$job", "cgscope")
                    .replace("$instance", ".*")
                    .replace("$namespace", ".*"),
            );
        }
    }
    assert!(out.len() >= 10, "{out:?}");
    out
}

#[test]
fn grafana_dashboard_expressions_parse_and_use_served_metrics() {
    let test = "grafana_dashboard_expressions_parse_and_use_served_metrics";
    let exprs = dashboard_exprs();
    let dir = tempfile::tempdir().unwrap();
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "      - record: dashboard:expr_{i}\n        expr: {}\n",
                serde_json::to_string(e).unwrap()
            )
        })
        .collect();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(
        &file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    let Some(out) = tool(
        test,
        Command::new("promtool").args(["check", "rules"]).arg(&file),
    ) else {
        return;
    };
    ok(&out, "promtool check rules");

    if !require_root(test) {
        return;
    }
    let agent = Agent::start(&[]);
    // Families, also those without series right now (errors by reason).
    let served: BTreeSet<String> = agent
        .scrape()
        .0
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split_whitespace();
            let (name, kind) = (w.next()?, w.next()?);
            Some(if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_owned()
            })
        })
        .collect();
    // Series Prometheus makes itself.
    let synthetic = ["up", "scrape_duration_seconds"];
    let mut used = BTreeSet::new();
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if word.starts_with("container_")
                || word.starts_with("cgscope_")
                || word.starts_with("machine_")
                || synthetic.contains(&word)
            {
                used.insert(word.to_owned());
            }
        }
    }
    for name in &used {
        assert!(
            served.contains(name) || synthetic.contains(&name.as_str()),
            "the dashboard uses {name}, which cgscope does not serve"
        );
    }
    assert!(used.len() >= 12, "{used:?}");
}

#[test]
fn systemd_unit_verifies() {
    let test = "systemd_unit_verifies";
    let Some(bin) = release_bin(test) else { return };
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/cgscope.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/cgscope "));
    // The unit's system calls are the seccomp profile's (which the Podman
    // test runs the agent under), not a list of their own.
    let filter: BTreeSet<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
        .flat_map(str::split_whitespace)
        .collect();
    let profile: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/seccomp/cgscope.json")).unwrap(),
    )
    .unwrap();
    let allowed: BTreeSet<&str> = profile["syscalls"][0]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(
        filter, allowed,
        "SystemCallFilter= and deploy/seccomp/cgscope.json"
    );
    assert!(unit.contains("\nSystemCallErrorNumber=EPERM\n"));
    assert!(unit.contains("\nLimitNOFILE="));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cgscope.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/cgscope", bin.to_str().unwrap()),
    )
    .unwrap();
    let Some(out) = tool(
        test,
        Command::new("systemd-analyze").arg("verify").arg(&path),
    ) else {
        return;
    };
    ok(&out, "systemd-analyze verify");
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(
        !complaints.contains("cgscope.service"),
        "systemd-analyze: {complaints}"
    );
}

/// The Kubernetes scrape config of `examples/prometheus`, run by a real
/// Prometheus. Debian's Prometheus is built without Kubernetes service
/// discovery, so the pod role is replaced by a file listing the agent with
/// the `__meta_kubernetes_pod_*` labels the pod role would give it; the
/// relabelling under test is the file's own.
#[test]
fn kubernetes_scrape_config_relabels_like_the_kubelet() {
    let test = "kubernetes_scrape_config_relabels_like_the_kubelet";
    if !require_root(test) {
        return;
    }
    let agent = Agent::start(&["--housekeeping-interval", "1s"]);
    let config =
        std::fs::read_to_string(repo().join("examples/prometheus/kubernetes-scrape.yml")).unwrap();
    let sd = "    kubernetes_sd_configs:\n      - role: pod\n";
    assert!(config.contains(sd), "the example uses the pod role");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n{}",
        config.replace(sd, "    file_sd_configs:\n      - files: [pods.json]\n")
    );
    let pods = serde_json::json!([
        {
            "targets": [format!("127.0.0.1:{}", agent.port)],
            "labels": {
                "__meta_kubernetes_pod_label_app_kubernetes_io_name": "cgscope",
                "__meta_kubernetes_pod_container_port_name": "http-metrics",
                "__meta_kubernetes_pod_node_name": "node-a"
            }
        },
        {
            // Another pod's port: dropped by the relabelling.
            "targets": ["127.0.0.1:9"],
            "labels": {
                "__meta_kubernetes_pod_label_app_kubernetes_io_name": "other",
                "__meta_kubernetes_pod_container_port_name": "http-metrics",
                "__meta_kubernetes_pod_node_name": "node-a"
            }
        }
    ]);
    let Some(prom) = Prometheus::start_with_config(&config, &[("pods.json", &pods.to_string())])
    else {
        return;
    };
    wait_for(
        "the agent scraped as the kubelet's cAdvisor",
        Duration::from_secs(30),
        || {
            prom.query(r#"up{job="cadvisor", metrics_path="/metrics/cadvisor", node="node-a"}"#)
                == [1.0]
        },
    );
    assert_eq!(
        prom.query("count(up)"),
        [1.0],
        "only cgscope's pod is scraped"
    );
    // kubernetes-mixin's default cAdvisor selector finds the series.
    wait_for("mixin selector", Duration::from_secs(30), || {
        !prom
            .query(r#"container_cpu_usage_seconds_total{job="cadvisor", metrics_path="/metrics/cadvisor", id="/"}"#)
            .is_empty()
    });
}

#[test]
fn docs_list_every_flag_and_their_links_resolve() {
    let test = "docs_list_every_flag_and_their_links_resolve";
    let Some(bin) = release_bin(test) else { return };
    let help = ok(
        &Command::new(&bin).arg("--help").output().unwrap(),
        "--help",
    );
    let flags_doc = std::fs::read_to_string(repo().join("docs/flags.md")).unwrap();
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(','))
        .filter(|w| !matches!(*w, "--help" | "--version"))
        .collect();
    assert!(flags.len() > 20, "{flags:?}");
    for flag in flags {
        assert!(
            flags_doc.contains(&format!("`{flag}`")),
            "docs/flags.md does not describe {flag}"
        );
    }
    // Every relative link of the README and docs/ points at something.
    let mut pages = vec![repo().join("README.md")];
    for e in std::fs::read_dir(repo().join("docs")).unwrap() {
        pages.push(e.unwrap().path());
    }
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap();
        for link in text.split("](").skip(1).filter_map(|r| r.split(')').next()) {
            if link.starts_with("http") || link.starts_with('#') {
                continue;
            }
            let target = link.split('#').next().unwrap();
            assert!(
                page.parent().unwrap().join(target).exists(),
                "{}: link to {link} is broken",
                page.display()
            );
        }
    }
}
