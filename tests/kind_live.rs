//! Tier 2 on our machines: the real plan (plans/bookinfo.toml) through the real product and
//! the real `kind` binary, on the testbed's kind tier (`just testbed-kind`): a node image built
//! here, and a dockerd of the tier's own whose runtime drops CAP_SYS_RESOURCE (see README,
//! "kind tier"). Two overrides point the plan at what exists here, each through a variable:
//! the node image (`KIND_NODE_IMAGE`) and, since nothing can be downloaded, the addon URLs
//! (`istio_addons_base`, the testbed's copies of the same files, the same sha256 pins); the
//! second test also takes Istio's charts from the testbed (`istio_chart_repo`,
//! `istio_chart_prefix`).
//!
//! The tests are `#[ignore]`d: `just kind-test` runs them, one at a time. Outside CI, without
//! the kind tier, they skip with one line; under `CI=true` that is a failure. Each starts the
//! tier's dockerd and stops it at the end, failed or not, then checks that no container,
//! network, bridge, dockerd process or iptables rule of it is left. Traffic goes only to
//! 127.0.0.1 (the ports kind publishes there).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Testbed, processes_mentioning, step_outcomes, testbed};

const UP: &str = env!("CARGO_BIN_EXE_bookinfo-up");
const DOWN: &str = env!("CARGO_BIN_EXE_bookinfo-down");
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

    /// Runs kubectl `args` (a `--watch`), reading its lines until `done` accepts one; panics
    /// after `limit`. The watch is killed either way.
    fn watch_until(&self, args: &str, done: impl Fn(&str) -> bool, limit: Duration) {
        let mut child = self
            .cmd("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args.split_whitespace())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if done(&line) => break true,
                Ok(line) => seen.push(line),
                Err(_) => break false,
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            found,
            "kubectl {args}: not seen within {limit:?}; saw {seen:?}"
        );
    }

    fn tool(&self, program: &str, args: &[&str]) -> String {
        let out = self.cmd(program).args(args).output().unwrap();
        ok(&format!("{program} {}", args.join(" ")), out)
    }

    /// `bookinfo-up`/`bookinfo-down` with the real plan and `args`: exit code, summary.
    fn product(&self, bin: &str, args: &[&str]) -> (i32, Value, String) {
        let start = Instant::now();
        let out = self
            .cmd(bin)
            .arg("plans/bookinfo.toml")
            .args(["--output", "json", "--log-format", "plain"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!(
            "{} plans/bookinfo.toml {} -> exit {:?} in {:.1} s",
            Path::new(bin).file_name().unwrap().to_string_lossy(),
            args.join(" "),
            out.status.code(),
            start.elapsed().as_secs_f64()
        );
        let summary = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), summary, stderr)
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

/// One `GET path` to 127.0.0.1:port: status line and body.
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
    let status = head.lines().next().unwrap_or("").to_string();
    if status.is_empty() {
        return Err(std::io::Error::other(
            "the connection closed without an answer",
        ));
    }
    Ok((status, body.to_string()))
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
    all.into_iter().filter(|(_, o)| o != "skipped").collect()
}

/// Starts the tier's dockerd, then has the real plan's cluster phase create the cluster,
/// with `extra` variables overridden besides `base_vars`.
fn start(tier: &Tier, extra: Vec<(String, String)>) -> (Dockerd, Env<'_>) {
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
    create_cluster(&env);
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
    let (status, body) = loop {
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
    eprintln!("curl http://127.0.0.1:30666/ -> {status}\n{body}");
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(
        body.trim(),
        format!("hello from pod {pod_name} on node {NODE}")
    );

    delete_cluster(&env);
    dockerd.stop_and_check();
}

/// The Istio control plane on the kind cluster through the real plan's helm steps (charts
/// from the testbed's Istio module, the release charts being out of reach): istiod
/// (pilot-discovery built here, loaded with `kind load docker-image`) becomes Ready under the
/// real kubelet and serves its validation webhook to the API server; a pod in the labelled
/// namespace is injected with istio-proxy as a native sidecar, and the kubelet reports what
/// that sidecar does with a proxyv2 image that holds pilot-agent but no Envoy: it fails to
/// start Envoy, and the pod's app container never starts.
#[test]
#[ignore = "needs the kind tier: `just kind-test`"]
fn kind_live_istiod_injects_a_native_sidecar() {
    let Some(tier) = kind_tier() else { return };
    // The testbed's copies of the charts the plan installs, by path (as plans/sim.toml).
    let charts = format!("{}/charts/", tier.testbed.istio.display());
    let (dockerd, env) = start(
        &tier,
        vec![
            ("istio_chart_repo".into(), String::new()),
            ("istio_chart_prefix".into(), charts),
        ],
    );
    let version = std::fs::read_to_string(Path::new(REPO).join("testbed/versions.env"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("ISTIO_VERSION=").map(str::to_string))
        .unwrap();
    for image in [
        format!("docker.io/istio/pilot:{version}"),
        format!("docker.io/istio/proxyv2:{version}"),
    ] {
        env.tool("kind", &["load", "docker-image", &image, "--name", CLUSTER]);
    }

    // The real plan's Istio steps, as they are.
    let steps = ["istio-base", "istio-crds", "istiod", "webhook-ready"];
    let mut args = Vec::new();
    for s in steps {
        args.extend(["--only", s]);
    }
    let (code, summary, stderr) = env.product(UP, &args);
    if code != 0 {
        let pods = env.kubectl("get pods -A -o wide");
        let events = env.kubectl("-n istio-system get events");
        panic!("the Istio steps failed:\n{stderr}\n{summary}\n{pods}\n{events}");
    }
    let outcomes = ran(&summary);
    eprintln!("steps: {outcomes:?}");
    assert_eq!(
        outcomes
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        steps
    );

    let pods: Value =
        serde_json::from_str(&env.kubectl("-n istio-system get pods -l app=istiod -o json"))
            .unwrap();
    let istiod = &pods["items"][0];
    eprintln!(
        "kubectl -n istio-system get pods -o wide:\n{}",
        env.kubectl("-n istio-system get pods -o wide")
    );
    assert_eq!(istiod["spec"]["nodeName"], NODE);
    let ready = istiod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    eprintln!(
        "istiod's Ready condition and container status, as the kubelet reports them:\n{}\n{}",
        ready, istiod["status"]["containerStatuses"][0]
    );
    assert_eq!(ready["status"], "True", "{}", istiod["status"]);
    assert_eq!(
        istiod["status"]["containerStatuses"][0]["image"],
        format!("docker.io/istio/pilot:{version}")
    );

    // A pod in the namespace the plan labelled for injection.
    env.kubectl(&format!(
        "-n bookinfo run injected --image {} --image-pull-policy Never --port 8080",
        tier.hello_image
    ));
    // The kubelet has started istio-proxy, seen it exit and restarted it: watched, until its
    // restart count reaches 2 (a second restart comes after a back-off).
    env.watch_until(
        "-n bookinfo get pod injected --watch -o jsonpath={.status.initContainerStatuses[1].restartCount}{\"\\n\"}",
        |line| line.trim().parse::<u32>().is_ok_and(|n| n >= 2),
        Duration::from_secs(180),
    );
    let pod: Value =
        serde_json::from_str(&env.kubectl("-n bookinfo get pod injected -o json")).unwrap();
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    let names: Vec<&str> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
    let excerpt = serde_json::json!({
        "spec.initContainers": init.iter().map(|c| serde_json::json!({
            "name": c["name"], "image": c["image"], "restartPolicy": c["restartPolicy"],
            "args": c["args"],
        })).collect::<Vec<_>>(),
        "spec.containers": pod["spec"]["containers"].as_array().unwrap().iter()
            .map(|c| c["name"].clone()).collect::<Vec<_>>(),
        "status.phase": pod["status"]["phase"],
        "status.initContainerStatuses": pod["status"]["initContainerStatuses"],
        "status.containerStatuses": pod["status"]["containerStatuses"],
    });
    eprintln!(
        "injected pod, spec and status as the kubelet reports them:\n{}",
        serde_json::to_string_pretty(&excerpt).unwrap()
    );
    assert_eq!(names, ["istio-init", "istio-proxy"], "injected: {names:?}");
    assert_eq!(
        init[1]["restartPolicy"], "Always",
        "istio-proxy is a native sidecar"
    );
    let statuses = pod["status"]["initContainerStatuses"].as_array().unwrap();
    assert_eq!(
        statuses[0]["state"]["terminated"]["reason"], "Completed",
        "istio-init (pilot-agent istio-iptables) ran: {}",
        statuses[0]
    );
    let proxy = &statuses[1];
    assert_eq!(proxy["name"], "istio-proxy");
    assert!(proxy["restartCount"].as_u64() >= Some(2), "{proxy}");
    assert_eq!(proxy["started"], false, "never started: {proxy}");
    assert_eq!(proxy["ready"], false, "{proxy}");
    let app = &pod["status"]["containerStatuses"][0];
    assert!(
        app["state"]["waiting"]["reason"] == "PodInitializing",
        "the app container waits for its sidecar: {app}"
    );
    let logs = env.kubectl("-n bookinfo logs injected -c istio-proxy");
    let tail: Vec<&str> = logs.lines().rev().take(4).collect();
    eprintln!(
        "kubectl -n bookinfo logs injected -c istio-proxy (last lines):\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(
        logs.contains(
            "Envoy exited with error: fork/exec /usr/local/bin/envoy: no such file or directory"
        ),
        "pilot-agent says it could not run Envoy:\n{logs}"
    );
    // The kubelet's word for it: a back-off event (watched for, since it may come a moment
    // after the restart count).
    env.watch_until(
        "-n bookinfo get events --watch --field-selector involvedObject.name=injected,reason=BackOff -o jsonpath={.message}{\"\\n\"}",
        |line| line.contains("Back-off restarting failed container istio-proxy"),
        Duration::from_secs(120),
    );
    let events =
        env.kubectl("-n bookinfo get events --field-selector involvedObject.name=injected");
    eprintln!("events of pod injected:\n{events}");

    delete_cluster(&env);
    dockerd.stop_and_check();
}
