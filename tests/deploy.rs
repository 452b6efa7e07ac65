//! The deployment files in `deploy/` agree with each other and with the gateway: the
//! Kubernetes manifests (probes, ports, drain and grace period, the `ConfigMap`'s
//! gateway.yaml validated by the real config loader, the config mount), the Docker
//! image's default config, the Grafana dashboard and the Prometheus alert rules (every
//! metric, label and label value they name is one the gateway exports).
//!
//! `promtool` runs the alert rules' unit tests in `tests/e2e/prometheus.sh`; this file
//! needs no outside program.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;
use sse_gateway::config::GatewayConfig;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every YAML document of every `deploy/kubernetes/*.yaml`, with its file name.
fn manifests() -> Vec<(String, Value)> {
    let dir = deploy_dir().join("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut documents = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for document in serde_yaml::Deserializer::from_str(&read(&path)) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{name}: not valid YAML: {e}"));
            if !value.is_null() {
                documents.push((name.clone(), value));
            }
        }
    }
    documents
}

/// The one document of `kind`.
fn only(kind: &str) -> Value {
    let found: Vec<Value> = manifests()
        .into_iter()
        .filter(|(_, doc)| doc["kind"].as_str() == Some(kind))
        .map(|(_, doc)| doc)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "want exactly one {kind}, found {}",
        found.len()
    );
    found.into_iter().next().unwrap()
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: want a string, got {value:?}"))
}

fn seq<'a>(value: &'a Value, what: &str) -> &'a Vec<Value> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what}: want a list, got {value:?}"))
}

fn containers(deployment: &Value) -> &Vec<Value> {
    seq(
        &deployment["spec"]["template"]["spec"]["containers"],
        "Deployment containers",
    )
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    containers(deployment)
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container named {name}"))
}

fn gateway_container(deployment: &Value) -> &Value {
    container(deployment, "sse-gateway")
}

/// A container port given by name or number, as a number.
fn resolve_port(container: &Value, port: &Value) -> u64 {
    if let Some(number) = port.as_u64() {
        return number;
    }
    let name = text(port, "port");
    seq(&container["ports"], "container ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("container has no port named {name}"))
}

/// The `ConfigMap`'s gateway.yaml, validated by the gateway's own loader, with
/// `${VAR}` answered only for the variables the gateway container gets.
fn configmap_gateway_config() -> GatewayConfig {
    let configmap = only("ConfigMap");
    let yaml = text(
        &configmap["data"]["gateway.yaml"],
        "ConfigMap data gateway.yaml",
    );
    let env = container_env_names(&only("Deployment"));
    GatewayConfig::parse(yaml, "configmap.yaml:gateway.yaml", &|name| {
        env.contains(name).then(|| format!("test-value-of-{name}"))
    })
    .unwrap_or_else(|errors| panic!("the ConfigMap's gateway.yaml does not validate:\n{errors}"))
}

fn container_env_names(deployment: &Value) -> BTreeSet<String> {
    gateway_container(deployment)["env"]
        .as_sequence()
        .map(|env| {
            env.iter()
                .map(|e| text(&e["name"], "env name").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn kubernetes_manifests_have_every_kind() {
    let kinds: BTreeSet<String> = manifests()
        .iter()
        .map(|(file, doc)| text(&doc["kind"], &format!("{file}: kind")).to_owned())
        .collect();
    for kind in [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ] {
        assert!(
            kinds.contains(kind),
            "no {kind} in deploy/kubernetes (found {kinds:?})"
        );
    }
    let deployment = only("Deployment");
    let names: Vec<&str> = containers(&deployment)
        .iter()
        .map(|c| text(&c["name"], "container name"))
        .collect();
    assert_eq!(names, ["assistant", "sse-gateway"]);
    let assistant = container(&deployment, "assistant");
    assert_eq!(
        assistant["image"].as_str(),
        Some("ghcr.io/example/assistant:latest")
    );
    assert_eq!(assistant["ports"][0]["containerPort"].as_u64(), Some(8000));
}

/// The budget covers exactly the Deployment's pods, and lets a drain evict one at a
/// time while another keeps serving.
#[test]
fn pod_disruption_budget_keeps_a_pod_serving_during_voluntary_disruptions() {
    let pdb = only("PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"].as_str(), Some("policy/v1"));
    let deployment = only("Deployment");
    assert_eq!(
        pdb["spec"]["selector"], deployment["spec"]["selector"],
        "the budget selects the Deployment's pods"
    );
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in pdb["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels")
    {
        assert_eq!(&labels[key], value, "the pod template carries {key:?}");
    }
    assert!(
        pdb["spec"]["minAvailable"].is_null(),
        "maxUnavailable only: minAvailable could block every drain"
    );
    let max_unavailable = pdb["spec"]["maxUnavailable"]
        .as_u64()
        .expect("maxUnavailable is a number");
    let replicas = deployment["spec"]["replicas"].as_u64().expect("replicas");
    assert!(
        max_unavailable >= 1 && max_unavailable < replicas,
        "a drain may evict ({max_unavailable}) but one of {replicas} pods keeps serving"
    );
}

#[test]
fn service_exposes_only_the_gateway_port() {
    let service = only("Service");
    let deployment = only("Deployment");
    let gateway = gateway_container(&deployment);
    let ports = seq(&service["spec"]["ports"], "Service ports");
    assert_eq!(
        ports.len(),
        1,
        "the Service must expose one port: {ports:?}"
    );
    let target = &ports[0]["targetPort"];
    assert_eq!(resolve_port(gateway, target), 8080, "targetPort {target:?}");
    let config = configmap_gateway_config();
    assert_eq!(
        config.listen.port(),
        8080,
        "the gateway listens on the Service's port"
    );
    // The selector picks this Deployment's pods.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selector = service["spec"]["selector"]
        .as_mapping()
        .expect("Service selector");
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(&labels[key.as_str().unwrap()], value, "selector {key:?}");
    }
}

#[test]
fn probes_use_the_admin_port() {
    let deployment = only("Deployment");
    let gateway = gateway_container(&deployment);
    let config = configmap_gateway_config();
    assert_eq!(config.admin_listen.to_string(), "0.0.0.0:8079");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &gateway[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert_eq!(resolve_port(gateway, &get["port"]), 8079, "{probe} port");
    }
}

#[test]
fn termination_grace_period_covers_prestop_and_drain() {
    let deployment = only("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let config = configmap_gateway_config();
    assert_eq!(config.drain_timeout, Duration::from_secs(25));

    let pre_stop = &gateway_container(&deployment)["lifecycle"]["preStop"];
    let sleep = if let Some(seconds) = pre_stop["sleep"]["seconds"].as_u64() {
        seconds
    } else {
        let command = seq(&pre_stop["exec"]["command"], "preStop exec command");
        assert_eq!(command[0].as_str(), Some("sleep"), "preStop: {command:?}");
        text(&command[1], "sleep seconds")
            .parse()
            .expect("sleep seconds")
    };
    assert!(
        sleep > 0,
        "a preStop sleep lets endpoints drop the pod first"
    );
    // After the drain, ending the rest and the final scrape take at most this long.
    let final_scrape = sse_gateway::shutdown::after_drain(config.shutdown.final_scrape_wait);
    assert!(
        Duration::from_secs(grace) >= Duration::from_secs(sleep) + config.drain_timeout + final_scrape,
        "terminationGracePeriodSeconds {grace} must cover preStop {sleep}s + drain_timeout {:?} + the final scrape's {final_scrape:?}",
        config.drain_timeout
    );
}

#[test]
fn configmap_gateway_yaml_validates_and_reads_the_key_from_the_secret() {
    let config = configmap_gateway_config();
    let upstream = &config.upstreams["assistant"];
    match &upstream.target {
        sse_gateway::config::UpstreamTarget::Url { uri, .. } => {
            assert_eq!(uri.to_string(), "http://127.0.0.1:8000/");
        }
        other @ sse_gateway::config::UpstreamTarget::Demo { .. } => {
            panic!("the assistant upstream must be a url, not {other:?}")
        }
    }
    let chat = config.route("chat").expect("a route named chat");
    assert_eq!(chat.upstream, "assistant");
    assert_eq!(chat.request.method, Some(http::Method::POST));
    let api_key = chat
        .request
        .set_headers
        .iter()
        .find(|(name, _)| name.as_str() == "x-api-key")
        .expect("the chat route sets x-api-key");
    assert_eq!(
        api_key.1.to_str().unwrap(),
        "test-value-of-ASSISTANT_API_KEY"
    );
    let stream = chat
        .stream
        .as_ref()
        .expect("the chat route has a stream section");
    assert_eq!(
        stream.pipeline.rules().len(),
        4,
        "the example route's rules"
    );
    assert!(stream.pipeline.terminator().is_some());

    // Without the variable the file is invalid: the key really comes from the env.
    let configmap = only("ConfigMap");
    let yaml = text(&configmap["data"]["gateway.yaml"], "gateway.yaml");
    let errors = GatewayConfig::parse(yaml, "gateway.yaml", &|_| None)
        .expect_err("a config without ASSISTANT_API_KEY must not validate");
    assert!(errors.to_string().contains("ASSISTANT_API_KEY"), "{errors}");

    // The env var comes from the Secret, which has that key.
    let deployment = only("Deployment");
    let env = seq(&gateway_container(&deployment)["env"], "env");
    let from = &env
        .iter()
        .find(|e| e["name"].as_str() == Some("ASSISTANT_API_KEY"))
        .expect("ASSISTANT_API_KEY in the gateway's env")["valueFrom"]["secretKeyRef"];
    let secret = only("Secret");
    assert_eq!(from["name"], secret["metadata"]["name"]);
    let key = text(&from["key"], "secretKeyRef key");
    assert!(
        !secret["stringData"][key].is_null() || !secret["data"][key].is_null(),
        "the Secret has no key {key}"
    );
}

#[test]
fn config_is_mounted_as_a_directory_without_subpath() {
    let deployment = only("Deployment");
    let gateway = gateway_container(&deployment);
    let args = seq(&gateway["args"], "gateway args");
    let position = args
        .iter()
        .position(|a| a.as_str() == Some("--config"))
        .expect("--config in args");
    let config_path = Path::new(text(&args[position + 1], "--config value"));

    let mounts = seq(&gateway["volumeMounts"], "volumeMounts");
    let mount = mounts
        .iter()
        .find(|m| Some(Path::new(text(&m["mountPath"], "mountPath"))) == config_path.parent())
        .unwrap_or_else(|| panic!("no volume mounted at the directory of {config_path:?}"));
    assert!(
        mount["subPath"].is_null() && mount["subPathExpr"].is_null(),
        "a subPath mount never receives ConfigMap updates"
    );
    let volume_name = text(&mount["name"], "mount name");
    let volumes = seq(
        &deployment["spec"]["template"]["spec"]["volumes"],
        "volumes",
    );
    let volume = volumes
        .iter()
        .find(|v| v["name"].as_str() == Some(volume_name))
        .expect("the mounted volume");
    let configmap = only("ConfigMap");
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
    let file = config_path.file_name().unwrap().to_str().unwrap();
    assert!(
        !configmap["data"][file].is_null(),
        "the ConfigMap has no key {file}"
    );
}

#[test]
fn pod_is_annotated_for_prometheus_scraping() {
    let deployment = only("Deployment");
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
    let port: u16 = text(&annotations["prometheus.io/port"], "prometheus.io/port")
        .parse()
        .expect("a port number");
    assert_eq!(port, configmap_gateway_config().admin_listen.port());
}

#[test]
fn gateway_runs_as_non_root_with_a_read_only_root_filesystem_and_resources() {
    let deployment = only("Deployment");
    let gateway = gateway_container(&deployment);
    let security = &gateway["securityContext"];
    assert_eq!(security["runAsNonRoot"].as_bool(), Some(true));
    assert!(security["runAsUser"].as_u64().is_some_and(|uid| uid != 0));
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    for section in ["requests", "limits"] {
        assert!(
            !gateway["resources"][section]["memory"].is_null(),
            "resources.{section}.memory"
        );
    }
    assert!(!gateway["resources"]["requests"]["cpu"].is_null());
}

#[test]
fn docker_image_runs_its_own_config_as_non_root() {
    let dockerfile = read(&deploy_dir().join("Dockerfile"));
    let image_config = read(&deploy_dir().join("gateway.yaml"));
    let config = GatewayConfig::parse(&image_config, "deploy/gateway.yaml", &|_| None)
        .unwrap_or_else(|errors| panic!("deploy/gateway.yaml does not validate:\n{errors}"));
    // A container's listeners must be reachable from outside it.
    assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(config.admin_listen.to_string(), "0.0.0.0:8079");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .collect();
    let has = |prefix: &str| instructions.iter().any(|line| line.starts_with(prefix));
    assert!(has(
        "COPY deploy/gateway.yaml /etc/sse-gateway/gateway.yaml"
    ));
    assert!(has(r#"CMD ["--config", "/etc/sse-gateway/gateway.yaml"]"#));
    assert!(has("EXPOSE 8080 8079"));
    assert!(has("HEALTHCHECK"));
    // Both base images are pinned: an exact Rust release, a dated Debian snapshot.
    let arg = |name: &str| {
        instructions
            .iter()
            .find_map(|line| line.strip_prefix(&format!("ARG {name}=")))
            .unwrap_or_else(|| panic!("no ARG {name}"))
    };
    let build = arg("BUILD_IMAGE");
    let rust_version = env!("CARGO_PKG_RUST_VERSION");
    assert!(
        build.starts_with(&format!("rust:{rust_version}.")),
        "the build image is Cargo.toml's rust-version {rust_version}, to the patch: {build}"
    );
    let runtime = arg("RUNTIME_IMAGE");
    let date = runtime
        .strip_prefix("debian:bookworm-")
        .and_then(|rest| rest.split(['-', '@']).next())
        .unwrap_or_default();
    assert!(
        date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()),
        "the runtime image is a dated snapshot: {runtime}"
    );
    assert!(has("FROM ${BUILD_IMAGE} AS build"));
    assert!(has("FROM ${RUNTIME_IMAGE}"));
    let user = instructions
        .iter()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("a USER instruction");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric USER");
    assert_ne!(uid, 0, "the image must not run as root");
    // The pod's runAsUser is the image's user.
    let deployment = only("Deployment");
    assert_eq!(
        gateway_container(&deployment)["securityContext"]["runAsUser"].as_u64(),
        Some(u64::from(uid))
    );
}

fn dashboard() -> serde_json::Value {
    let path = deploy_dir().join("grafana/dashboard.json");
    serde_json::from_str(&read(&path)).expect("dashboard.json is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    fn walk<'a>(list: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn dashboard_exprs() -> Vec<String> {
    panels(&dashboard())
        .into_iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn every_dashboard_panel_queries_gateway_metrics_by_route() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let mut ids = BTreeSet::new();
    let mut graphs = 0;
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        if panel["type"] == "row" {
            continue;
        }
        graphs += 1;
        let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or("");
            assert!(
                expr.contains("sse_gateway_") || expr.contains("process_"),
                "panel {title:?}: {expr:?} queries no gateway metric"
            );
            assert!(
                expr.contains(r#"route=~"$route""#),
                "panel {title:?}: {expr:?} ignores the route variable"
            );
        }
        assert!(
            panel["datasource"]["uid"]
                .as_str()
                .is_some_and(|uid| uid.contains("datasource")),
            "panel {title:?} does not use the datasource variable"
        );
    }
    assert!(graphs >= 8, "only {graphs} panels");
}

#[test]
fn dashboard_has_a_multi_value_route_variable() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let route = variables
        .iter()
        .find(|v| v["name"] == "route")
        .expect("a route variable");
    assert_eq!(route["type"], "query");
    assert_eq!(route["multi"], true);
    assert_eq!(route["includeAll"], true);
    // "All" must match every series, also those of routes created after the page loaded.
    assert_eq!(route["allValue"], ".*");
    let query = route["query"]["query"].as_str().or(route["query"].as_str());
    assert_eq!(
        query,
        Some("label_values(sse_gateway_streams_active, route)")
    );
    assert!(variables
        .iter()
        .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"));
}

fn alert_rules() -> Vec<serde_yaml::Value> {
    let source = read(&deploy_dir().join("prometheus/alerts.yaml"));
    let file: Value = serde_yaml::from_str(&source).expect("alerts.yaml is YAML");
    seq(&file["groups"], "groups")
        .iter()
        .flat_map(|group| seq(&group["rules"], "rules").clone())
        .collect()
}

#[test]
fn alerts_parse_with_the_expected_rules() {
    let rules = alert_rules();
    let names: Vec<&str> = rules.iter().map(|r| text(&r["alert"], "alert")).collect();
    assert_eq!(
        names,
        [
            "SseGatewayStreamsStuck",
            "SseGatewayErrorOutcomes",
            "SseGatewaySlowFirstToken",
            "SseGatewayTruncatedAnswers",
            "SseGatewayReloadFailing",
            "SseGatewayUpstreamErrors",
            "SseGatewayServerErrors",
            "SseGatewayRequestsRefused",
            "SseGatewayUpstreamEndpointDown",
            "SseGatewayUpstreamNoHealthyEndpoint",
            "SseGatewayResumeStoreErrors",
            "SseGatewayDown"
        ]
    );
    for rule in &rules {
        let name = text(&rule["alert"], "alert");
        assert!(text(&rule["expr"], name).contains("sse_gateway_"), "{name}");
        assert!(!rule["labels"]["severity"].is_null(), "{name}: severity");
        for annotation in ["summary", "description", "runbook_url"] {
            assert!(
                !rule["annotations"][annotation].is_null(),
                "{name}: {annotation}"
            );
        }
        // The runbook has the alert's section, under the anchor the link names.
        let link = text(&rule["annotations"]["runbook_url"], name);
        let (file, anchor) = link.split_once('#').expect("runbook_url has an anchor");
        let runbook = read(&deploy_dir().join("..").join(file));
        assert_eq!(anchor, name.to_lowercase(), "{name}: {link}");
        assert!(
            runbook.contains(&format!("\n## {name}\n")),
            "{name}: no section in {file}"
        );
        // The severity a page is routed by is the one the docs give: the runbook's
        // section opens with it, and deploy/README's table lists the alert, marked
        // when it is not a warning.
        let severity = text(&rule["labels"]["severity"], name);
        let section = runbook.split(&format!("\n## {name}\n")).nth(1).unwrap();
        let section = section.split("\n## ").next().unwrap();
        assert!(
            section.contains(&format!("**Severity: {severity}.**")),
            "{name}: its runbook section does not say severity {severity}"
        );
        let table_row = match severity {
            "warning" => format!("| `{name}` |"),
            other => format!("| `{name}` ({other}) |"),
        };
        let readme = read(&deploy_dir().join("README.md"));
        assert!(
            readme.contains(&table_row),
            "{name}: deploy/README.md's alert table lacks {table_row}"
        );
    }
    let tests = read(&deploy_dir().join("prometheus/alerts_test.yaml"));
    for name in names {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "no test for {name}"
        );
    }
}

/// Metric names, label names and closed-set label values of a live registry.
struct Exported {
    names: BTreeSet<String>,
    labels: BTreeSet<String>,
    values: BTreeMap<String, BTreeSet<String>>,
}

fn exported() -> Exported {
    let metrics = sse_gateway::metrics::Metrics::new();
    let _route = metrics.route(
        "chat",
        &["repair#0"],
        sse_gateway::protocol::Protocol::OpenaiChat,
    );
    let _admission = metrics.traffic().admission("chat", Some(100));
    let _failover = metrics.traffic().failover("chat", &["a"]);
    let _healthy = metrics.traffic().endpoint_healthy("assistant", "a");
    let _resume = metrics.resume().route("chat");
    metrics.count_request(Some("chat"), &http::Method::GET, http::StatusCode::OK);
    let exposition = metrics.encode();
    let sample = regex::Regex::new(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s").unwrap();
    let label = regex::Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)""#).unwrap();
    let mut exported = Exported {
        names: BTreeSet::new(),
        // Target labels Prometheus adds to every series.
        labels: ["instance", "job"].map(String::from).into(),
        values: BTreeMap::new(),
    };
    for line in exposition.lines().filter(|line| !line.starts_with('#')) {
        let Some(captures) = sample.captures(line) else {
            continue;
        };
        exported.names.insert(captures[1].to_owned());
        for pair in label.captures_iter(captures.get(2).map_or("", |m| m.as_str())) {
            exported.labels.insert(pair[1].to_owned());
            exported
                .values
                .entry(pair[1].to_owned())
                .or_default()
                .insert(pair[2].to_owned());
        }
    }
    exported
}

#[test]
fn dashboard_and_alerts_name_only_metrics_labels_and_values_the_gateway_exports() {
    let exported = exported();
    let mut exprs = dashboard_exprs();
    exprs.extend(
        alert_rules()
            .iter()
            .map(|rule| text(&rule["expr"], "expr").to_owned()),
    );
    let metric = regex::Regex::new(r"\b(?:sse_gateway|process)_[a-z_]+\b").unwrap();
    let grouping = regex::Regex::new(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)").unwrap();
    let matcher =
        regex::Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"([^"]*)""#).unwrap();
    // Labels whose values are a fixed set in the gateway: a typo there matches nothing.
    let closed = ["outcome", "kind", "result", "direction", "reason", "limit"];
    for expr in &exprs {
        for name in metric.find_iter(expr) {
            assert!(
                exported.names.contains(name.as_str()),
                "{:?} is not a metric the gateway exports (in {expr})",
                name.as_str()
            );
        }
        for list in grouping.captures_iter(expr) {
            for label in list[1].split(',').map(str::trim).filter(|l| !l.is_empty()) {
                assert!(
                    exported.labels.contains(label),
                    "label {label:?} does not exist (in {expr})"
                );
            }
        }
        for found in matcher.captures_iter(expr) {
            let (label, value) = (&found[1], &found[2]);
            assert!(
                exported.labels.contains(label),
                "label {label:?} does not exist (in {expr})"
            );
            if closed.contains(&label) {
                for alternative in value.split('|') {
                    assert!(
                        exported.values[label].contains(alternative),
                        "{label}={alternative:?} is never exported (in {expr}); known: {:?}",
                        exported.values[label]
                    );
                }
            }
        }
    }
}
