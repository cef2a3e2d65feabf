//! plans/sim.toml end to end on a kwok cluster built from the testbed: from nothing to all
//! green, the cluster in the shape the seed ends with, a second run with zero changes, then
//! `bookinfo-down` twice. istiod is real (pilot-discovery from the pinned Istio commit): pods
//! are injected by it and Istio objects validated by it, as on a real cluster. What it cannot
//! run: HTTP through the gateway (no data plane).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::{
    Bin, Product, Ran, SIM_STEPS, listening_addresses, processes_mentioning, step_outcomes, testbed,
};

fn run(bin: Bin, state: &Path, path_env: &str, log: Option<&str>) -> Ran {
    let mut run = Product::new(bin)
        .path(path_env)
        .plan("plans/sim.toml")
        .state(state);
    if let Some(filter) = log {
        run = run.env("BOOKINFO_UP_LOG", filter);
    }
    run.run()
}

/// Discovery requests (`GET /api` and `GET /apis` aggregated, `GET /api/v1`,
/// `GET /apis/<group>/<version>`) in kube-client's debug lines, by path, with how many times
/// each was sent.
fn discovery_requests(log: &str) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for line in log.lines().filter(|l| l.ends_with(": requesting")) {
        let Some(url) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http.url="))
        else {
            continue;
        };
        // The span's field ends the line's `HTTP{...}:` prefix; a query follows a `?`.
        let url = url.trim_end_matches("}:");
        let url = url.split('?').next().unwrap_or_default();
        let path = url.splitn(4, '/').nth(3).unwrap_or_default();
        let parts: Vec<&str> = path.split('/').collect();
        // `/api` and `/apis`: aggregated discovery, every group-version at once.
        let discovery = matches!(
            parts.as_slice(),
            ["api"] | ["apis"] | ["api", "v1"] | ["apis", _, _]
        );
        if discovery {
            *seen.entry(format!("/{path}")).or_insert(0) += 1;
        }
    }
    seen
}

fn outcomes(summary: &Value) -> Vec<(String, String)> {
    step_outcomes(summary).unwrap_or_else(|| panic!("the run printed no summary: {summary}"))
}

use crate::common::kubectl_at as kubectl;

#[test]
fn sim_plan_converges_then_goes_away() {
    let Some(tb) = testbed() else { return };
    let state = tempfile::Builder::new()
        .prefix("bookinfo-up-sim-")
        .tempdir()
        .unwrap();
    let path_env = tb.path_env();
    let (up, down) = (Bin::Up, Bin::Down);

    let first = run(up, state.path(), &path_env, None);
    assert_eq!(first.code, 0, "first run failed:\n{}", first.stderr);
    let first_outcomes = outcomes(&first.summary);
    let ids: Vec<&str> = first_outcomes
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| *id != "prune")
        .collect();
    assert_eq!(
        ids, SIM_STEPS,
        "the summary lists every step of the seed flow"
    );
    assert_eq!(
        first.outcome("prune"),
        "unchanged",
        "then the prune phase, with nothing to prune"
    );
    assert!(
        first_outcomes
            .iter()
            .all(|(_, o)| o == "changed" || o == "unchanged"),
        "{first_outcomes:?}"
    );

    let kubeconfig: PathBuf = state.path().join("clusters/bookinfo-sim/kubeconfig");
    let deploys: Value = serde_json::from_str(&kubectl(
        &kubeconfig,
        &path_env,
        &["get", "deploy", "-A", "-o", "json"],
    ))
    .unwrap();
    let mut names: Vec<String> = Vec::new();
    for d in deploys["items"].as_array().unwrap() {
        let name = format!(
            "{}/{}",
            d["metadata"]["namespace"].as_str().unwrap(),
            d["metadata"]["name"].as_str().unwrap()
        );
        let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
        assert_eq!(
            d["status"]["availableReplicas"].as_i64(),
            Some(want),
            "{name} available"
        );
        names.push(name);
    }
    names.sort();
    for expected in [
        "bookinfo/details-v1",
        "bookinfo/productpage-v1",
        "bookinfo/ratings-v1",
        "bookinfo/reviews-v1",
        "bookinfo/reviews-v2",
        "bookinfo/reviews-v3",
        "istio-system/grafana",
        "istio-system/istio-ingressgateway",
        "istio-system/istiod",
        "istio-system/jaeger",
        "istio-system/kiali",
        "istio-system/prometheus",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    let ports = kubectl(
        &kubeconfig,
        &path_env,
        &[
            "get",
            "svc",
            "-n",
            "istio-system",
            "istio-ingressgateway",
            "-o",
            "jsonpath={range .spec.ports[*]}{.port}/{.nodePort} {end}",
        ],
    );
    let ports: Vec<&str> = ports.split_whitespace().collect();
    assert_eq!(ports.len(), 5, "{ports:?}");
    assert!(
        ports.contains(&"666/30666") && ports.contains(&"15029/32667"),
        "{ports:?}"
    );
    // The chart's ports, with the node ports the plan pins in the static band.
    for p in ["15021/30021", "80/30080", "443/30043"] {
        assert!(ports.contains(&p), "chart port {p} kept: {ports:?}");
    }
    let kiali = kubectl(
        &kubeconfig,
        &path_env,
        &[
            "get",
            "cm",
            "-n",
            "istio-system",
            "kiali",
            "-o",
            "jsonpath={.data.config\\.yaml}",
        ],
    );
    assert!(
        kiali.contains("internal_url: http://grafana.istio-system.svc.cluster.local:3000"),
        "{kiali}"
    );
    assert!(
        kiali.contains("root_namespace: istio-system"),
        "the addon's own settings are kept"
    );
    let gw = kubectl(
        &kubeconfig,
        &path_env,
        &[
            "get",
            "gateways.networking.istio.io,virtualservices.networking.istio.io",
            "-A",
            "-o",
            "name",
        ],
    );
    for want in [
        "gateway.networking.istio.io/bookinfo-gateway",
        "gateway.networking.istio.io/kiali-gateway",
        "virtualservice.networking.istio.io/bookinfo",
        "virtualservice.networking.istio.io/kiali",
    ] {
        assert!(gw.contains(want), "{want} in {gw}");
    }
    let bookinfo_gw = kubectl(
        &kubeconfig,
        &path_env,
        &[
            "get",
            "gateways.networking.istio.io",
            "-n",
            "bookinfo",
            "bookinfo-gateway",
            "-o",
            "jsonpath={.spec.servers[0].port.number}",
        ],
    );
    assert_eq!(bookinfo_gw, "666");
    assert_injected_by_istiod(&kubeconfig, &path_env);
    assert_istiod_validates(&kubeconfig, &path_env);
    assert_analyze_is_clean(&kubeconfig, &path_env);

    // The second run logs every request kube-client sends, to count discovery; and it finds
    // first on PATH a `helm` that records each call before it runs the real one: a no-op
    // reads the releases from helm's storage and spawns no helm.
    let spy = state.path().join("helm-spy");
    std::fs::create_dir_all(&spy).unwrap();
    let calls = spy.join("calls");
    let real = tb.bin.join("helm");
    std::fs::write(
        spy.join("helm"),
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            calls.display(),
            real.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(spy.join("helm"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let spied_path = format!("{}:{path_env}", spy.display());
    let second = run(
        up,
        state.path(),
        &spied_path,
        Some("warn,bookinfo_up=info,kube_client=debug"),
    );
    assert_eq!(second.code, 0, "second run failed:\n{}", second.stderr);
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap_or_default(),
        "",
        "a no-op spawns no helm"
    );
    let discovery = discovery_requests(&second.stderr);
    let asked_twice: Vec<_> = discovery.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        !discovery.is_empty() && asked_twice.is_empty(),
        "discovery asks for each group-version once per run: {discovery:?}"
    );
    let changed: Vec<_> = outcomes(&second.summary)
        .into_iter()
        .filter(|(_, o)| o != "unchanged")
        .collect();
    assert!(
        changed.is_empty(),
        "the second run changes nothing: {changed:?}"
    );
    eprintln!(
        "sim: first run {:.1}s, second run {:.1}s with {} discovery requests ({})",
        first.secs,
        second.secs,
        discovery.len(),
        discovery.keys().cloned().collect::<Vec<_>>().join(", ")
    );

    let workdir = state.path().to_string_lossy().to_string();
    assert!(
        !processes_mentioning(&workdir).is_empty(),
        "the cluster's processes run from the state folder"
    );
    // Every component listens on loopback only: etcd speaks plain HTTP without
    // authentication, so 0.0.0.0 (kwokctl's default) would open the cluster to the network.
    let pids = state
        .path()
        .join("clusters/bookinfo-sim/kwok/clusters/bookinfo-sim/pids");
    let mut components = 0;
    for e in std::fs::read_dir(&pids).unwrap().flatten() {
        let pid: i32 = std::fs::read_to_string(e.path())
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let addresses = listening_addresses(pid);
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!addresses.is_empty(), "{name} listens on nothing");
        if name == "istiod.pid" {
            // istiod listens on the host end of its cluster's veth pair only (10.248.N.1),
            // which only the host and the cluster's own network namespace reach.
            assert!(
                addresses.iter().all(|a| match a.ip() {
                    std::net::IpAddr::V4(ip) =>
                        ip.octets()[..2] == [10, 248] && ip.octets()[3] == 1,
                    _ => false,
                }),
                "istiod listens beyond its cluster address: {addresses:?}"
            );
            components += 1;
            continue;
        }
        assert!(
            addresses.iter().all(|a| a.ip().is_loopback()),
            "{name} listens beyond loopback: {addresses:?}"
        );
        components += 1;
    }
    assert_eq!(
        components, 6,
        "etcd, apiserver, controller-manager, scheduler, kwok, istiod"
    );
    let netns = bookinfo_up::provider::istiod::net(&state.path().join("clusters/bookinfo-sim"))
        .unwrap()
        .netns();
    let netns = std::path::Path::new("/run/netns").join(netns);
    assert!(
        netns.exists(),
        "the cluster's istiod has its network namespace"
    );
    let run_down = || run(down, state.path(), &path_env, None);
    run_down().expect_code(0);
    assert_eq!(
        processes_mentioning(&workdir),
        Vec::<String>::new(),
        "no process of the cluster or of its istiod outlives down"
    );
    assert!(
        !state
            .path()
            .join("clusters/bookinfo-sim/istiod-net")
            .exists()
            && !netns.exists(),
        "down removes istiod's network namespace, and with it its veth pair and route"
    );
    let again = run_down().expect_code(0);
    assert_eq!(
        again.outcome("cluster"),
        "unchanged",
        "down again: {}",
        again.stderr
    );
    assert!(again.stderr.contains("already gone"), "{}", again.stderr);
}

/// Every Bookinfo pod carries istio-proxy as istiod injects it on Kubernetes >= 1.33 (a native
/// sidecar with its status annotation), and the gateway pod runs the proxy image the injector
/// put in place of the chart's `image: auto`.
fn assert_injected_by_istiod(kubeconfig: &Path, path_env: &str) {
    let image = format!(
        "docker.io/istio/proxyv2:{}",
        std::env::var("ISTIO_VERSION").unwrap_or_else(|_| "1.30.4".into())
    );
    let pods: Value = serde_json::from_str(&kubectl(
        kubeconfig,
        path_env,
        &["get", "pods", "-n", "bookinfo", "-o", "json"],
    ))
    .unwrap();
    let pods = pods["items"].as_array().unwrap();
    assert_eq!(pods.len(), 6, "6 Bookinfo pods");
    for p in pods {
        let name = p["metadata"]["name"].as_str().unwrap();
        assert!(
            p["metadata"]["annotations"]["sidecar.istio.io/status"].is_string(),
            "{name} was injected by istiod"
        );
        let sidecar = p["spec"]["initContainers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "istio-proxy"))
            .unwrap_or_else(|| panic!("{name}: istio-proxy is a native sidecar: {p}"));
        assert_eq!(sidecar["restartPolicy"], "Always", "{name}");
        assert_eq!(sidecar["image"], image.as_str(), "{name}");
        let ready = p["status"]["initContainerStatuses"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "istio-proxy"))
            .map(|s| s["ready"] == true && s["started"] == true);
        assert_eq!(ready, Some(true), "{name}: istio-proxy started and ready");
    }
    let gateway = kubectl(
        kubeconfig,
        path_env,
        &[
            "get",
            "pods",
            "-n",
            "istio-system",
            "-l",
            "app=istio-ingressgateway",
            "-o",
            "jsonpath={.items[*].spec.containers[*].image}",
        ],
    );
    assert_eq!(gateway, image, "the gateway's `image: auto` was injected");
}

/// istiod's validating webhook refuses an invalid Gateway that the CRD's schema accepts.
fn assert_istiod_validates(kubeconfig: &Path, path_env: &str) {
    let gateway = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: invalid\n  namespace: bookinfo\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"bookinfo.*.invalid\"]\n";
    let mut child = Command::new("kubectl")
        .env("PATH", path_env)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(gateway.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("kubectl apply of an invalid Gateway: {}", stderr.trim());
    assert!(!out.status.success(), "an invalid Gateway is refused");
    assert!(
        stderr.contains("admission webhook \"validation.istio.io\" denied the request"),
        "{stderr}"
    );
}

/// `istioctl analyze` finds no error and no pod without its proxy (IST0103).
fn assert_analyze_is_clean(kubeconfig: &Path, path_env: &str) {
    let out = Command::new("istioctl")
        .env("PATH", path_env)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["analyze", "--all-namespaces", "-o", "json"])
        .output()
        .expect("istioctl runs (the testbed builds it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let messages: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "istioctl analyze -o json: {e}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let bad: Vec<&Value> = messages
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["level"] == "Error" || m["code"] == "IST0103")
        .collect();
    eprintln!(
        "istioctl analyze: {} messages: {}",
        messages.as_array().unwrap().len(),
        messages
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{} {}", m["level"], m["code"]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(bad.is_empty(), "istioctl analyze: {bad:#?}");
}
