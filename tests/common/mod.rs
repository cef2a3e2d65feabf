//! Shared test fixtures: the testbed (tier 1) and throwaway kwok clusters built from it.
//!
//! Tests that need the testbed call `testbed()`: outside CI a missing testbed skips the test
//! with one line naming `just testbed`; under `CI=true` it fails the test. The reliability
//! test binary includes this module too (`#[path]` in tests/reliability/main.rs).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bookinfo_up::provider::host_port;

/// A kubeconfig whose API server is a closed port on 127.0.0.1, for plans whose steps never
/// call the API (exec, http, traffic): the client is built, nothing is reached.
pub const UNREACHABLE_KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:9\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: x\n";

/// The steps of plans/sim.toml (the seed's flow), in plan order.
pub const SIM_STEPS: &[&str] = &[
    "istio-base",
    "istio-crds",
    "istiod",
    "webhook-ready",
    "ingress-gateway",
    "bookinfo-namespace",
    "bookinfo",
    "bookinfo-gateway",
    "addons",
    "kiali-gateway",
    "kiali-grafana",
    "ingress-ports",
    "rollout",
    "bookinfo-pods",
];

/// The testbed's binaries and Istio content, from `eval "$(just testbed-env)"`.
#[derive(Clone)]
pub struct Testbed {
    pub bin: PathBuf,
    pub istio: PathBuf,
}

pub fn testbed() -> Option<Testbed> {
    let bin = std::env::var_os("BOOKINFO_UP_TESTBED_BIN").map(PathBuf::from);
    let istio = std::env::var_os("BOOKINFO_UP_ISTIO_DIR").map(PathBuf::from);
    match (bin, istio) {
        (Some(bin), Some(istio)) if bin.join("kube-apiserver").is_file() && istio.is_dir() => {
            Some(Testbed { bin, istio })
        }
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "the testbed is missing or broken under CI=true: run `just testbed` and \
                     `eval \"$(just testbed-env)\"`"
                );
            }
            eprintln!(
                "skipped: needs the testbed; run `just testbed` then `eval \"$(just testbed-env)\"`"
            );
            None
        }
    }
}

impl Testbed {
    /// A command for one of the testbed's binaries, with the testbed first on PATH.
    pub fn cmd(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        c.env("PATH", self.path_env());
        c
    }

    pub fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}

/// Admission plugins switched off on simulated clusters: without a real istiod, Istio's
/// webhooks (failurePolicy Fail) would reject every pod and Istio object.
pub const NO_WEBHOOKS: &str = "kube-apiserver=disable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy";

/// Serialises `kwokctl create cluster` across test threads and processes. kwokctl picks each
/// component's port as the first free one counting down from 32767 and only avoids the ports
/// of clusters in its own KWOK_WORKDIR, so two clusters created at once (each in its own
/// workdir) can be handed the same ports. The lock is held until every port is listened on.
const CREATE_LOCK: &str = "bookinfo-up-kwokctl-create.lock";

/// Takes the `CREATE_LOCK` (blocking); released when the file is dropped. Also held by the
/// reliability tests while the engine creates a cluster and while an API server is down
/// (its port is free then).
pub fn create_lock() -> std::fs::File {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join(CREATE_LOCK))
        .expect("create lock file opens");
    lock.lock().expect("create lock");
    lock
}

/// A kwok cluster (binary runtime) made from the testbed's binaries, deleted on drop.
///
/// Everything it writes stays in its temporary workdir: kwokctl's state (KWOK_WORKDIR), the
/// kubeconfig (given explicitly to create and delete, so `~/.kube/config` is never touched)
/// and kubectl's discovery cache. `create` makes no node: `scale_nodes` adds untainted ones.
pub struct KwokCluster {
    pub name: String,
    pub kubeconfig: PathBuf,
    pub workdir: tempfile::TempDir,
    bin: PathBuf,
    path_env: String,
    deleted: AtomicBool,
}

impl KwokCluster {
    pub fn create(tb: &Testbed, name: &str) -> Self {
        let workdir = tempfile::Builder::new()
            .prefix("bookinfo-up-kwok-")
            .tempdir()
            .unwrap();
        let kubeconfig = workdir.path().join("kubeconfig");
        let cluster = Self {
            name: name.to_string(),
            kubeconfig,
            workdir,
            bin: tb.bin.clone(),
            path_env: tb.path_env(),
            deleted: AtomicBool::new(false),
        };
        let lock = create_lock();
        let out = cluster
            .kwokctl()
            .args([
                "create",
                "cluster",
                "--name",
                name,
                "--runtime",
                "binary",
                "--wait",
                "120s",
            ])
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args(["--extra-args", NO_WEBHOOKS])
            .output()
            .expect("kwokctl runs");
        if !out.status.success() {
            let logs = cluster.component_logs();
            cluster.delete();
            panic!(
                "kwokctl create cluster failed:\n{}{}\n{logs}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Err(e) = cluster.wait_ports_listening(Duration::from_secs(60)) {
            let logs = cluster.component_logs();
            cluster.delete();
            panic!("kwok cluster {name} did not come up: {e}\n{logs}");
        }
        drop(lock);
        cluster
    }

    /// kwokctl for this cluster: binary runtime, the testbed's binaries (never a download),
    /// this cluster's workdir and kubeconfig.
    pub fn kwokctl(&self) -> Command {
        let mut c = Command::new(self.bin.join("kwokctl"));
        c.env("PATH", &self.path_env)
            .env("KWOK_WORKDIR", self.workdir.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KWOK_RUNTIME", "binary")
            .env(
                "KWOK_KUBE_APISERVER_BINARY",
                self.bin.join("kube-apiserver"),
            )
            .env(
                "KWOK_KUBE_CONTROLLER_MANAGER_BINARY",
                self.bin.join("kube-controller-manager"),
            )
            .env(
                "KWOK_KUBE_SCHEDULER_BINARY",
                self.bin.join("kube-scheduler"),
            )
            .env("KWOK_KUBECTL_BINARY", self.bin.join("kubectl"))
            .env("KWOK_CONTROLLER_BINARY", self.bin.join("kwok"))
            .env("KWOK_ETCD_BINARY", self.bin.join("etcd"));
        c
    }

    /// Sets the number of simulated nodes (`kwokctl scale node`: 32 CPU / 256 Gi each, no
    /// taints of their own) and waits until all are Ready and untainted. The node lifecycle
    /// controller puts `node.kubernetes.io/not-ready:NoSchedule` on a new node until it sees
    /// it Ready (about a second here); a taint still there after a minute fails the test.
    pub fn scale_nodes(&self, replicas: u32) {
        let out = self
            .kwokctl()
            .args([
                "scale",
                "node",
                "--name",
                &self.name,
                "--replicas",
                &replicas.to_string(),
            ])
            .output()
            .expect("kwokctl runs");
        assert!(
            out.status.success(),
            "kwokctl scale node failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            "nodes",
            "--all",
            "--timeout=60s",
        ]);
        let start = Instant::now();
        loop {
            let taints =
                self.kubectl_ok(&["get", "nodes", "-o", "jsonpath={.items[*].spec.taints}"]);
            if taints.trim().is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "kwok nodes keep taints: {taints}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// kubectl against this cluster, for assertions (the product itself never runs kubectl).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(args).output().expect("kubectl runs")
    }

    fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin.join("kubectl"));
        c.env("PATH", &self.path_env)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.workdir.path().join("kubectl-cache"))
            .args(args);
        c
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        kubectl_stdout(args, self.kubectl(args))
    }

    /// `kubectl apply -f -` of an inline manifest.
    pub fn apply(&self, yaml: &str) -> String {
        let mut child = self
            .kubectl_cmd(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// kwokctl's own directory for this cluster (config, pki, logs, etcd data).
    pub fn cluster_dir(&self) -> PathBuf {
        self.workdir.path().join("clusters").join(&self.name)
    }

    /// Stops and deletes the cluster; later calls (and drop) do nothing.
    pub fn delete(&self) {
        if self.deleted.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self
            .kwokctl()
            .args(["delete", "cluster", "--name", &self.name])
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .output();
    }

    /// Running processes of this cluster: `pid: command line` of every process whose
    /// command line names the cluster's workdir (kwokctl starts each component from
    /// `<workdir>/clusters/<name>/bin/` with flags pointing into that directory).
    pub fn processes(&self) -> Vec<String> {
        processes_mentioning(&self.workdir.path().to_string_lossy())
    }

    /// Waits until the cluster has no process left; returns those still running after `limit`.
    pub fn wait_no_processes(&self, limit: Duration) -> Vec<String> {
        let start = Instant::now();
        loop {
            let left = self.processes();
            if left.is_empty() || start.elapsed() > limit {
                return left;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The ports the cluster's components are configured with (from kwokctl's kwok.yaml).
    fn ports(&self) -> BTreeSet<u16> {
        let conf =
            std::fs::read_to_string(self.cluster_dir().join("kwok.yaml")).unwrap_or_default();
        conf.lines()
            .filter_map(|l| {
                let (key, value) = l.trim().split_once(':')?;
                let key = key.trim_start_matches("- ");
                (key == "port" || key == "hostPort" || key.ends_with("Port")).then_some(())?;
                value.trim().parse::<u16>().ok().filter(|p| *p != 0)
            })
            .collect()
    }

    fn wait_ports_listening(&self, limit: Duration) -> Result<(), String> {
        let want = self.ports();
        if want.is_empty() {
            return Err("no ports found in kwok.yaml".into());
        }
        let start = Instant::now();
        loop {
            let listening = listening_ports();
            let missing: Vec<u16> = want.difference(&listening).copied().collect();
            if missing.is_empty() {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "ports {missing:?} of {want:?} not listened on after {limit:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of each component's log, for failure messages.
    pub fn component_logs(&self) -> String {
        let mut s = String::new();
        let Ok(entries) = std::fs::read_dir(self.cluster_dir().join("logs")) else {
            return s;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!("--- {} (last lines)\n", p.display()));
            for l in &lines[lines.len().saturating_sub(15)..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for KwokCluster {
    fn drop(&mut self) {
        self.delete();
    }
}

/// `pid: command line` of every process (other than this one) whose command line contains
/// `needle`, read from /proc.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {}", cmdline.trim_end()));
        }
    }
    found
}

/// TCP ports in LISTEN state in this network namespace (read from /proc/net/tcp{,6}, which
/// unlike a test bind cannot steal a port from a component about to bind it).
fn listening_ports() -> BTreeSet<u16> {
    host_port::listening_sockets()
        .into_iter()
        .map(|s| s.addr.port())
        .collect()
}

/// The addresses process `pid` listens on (TCP), matched through its socket inodes.
pub fn listening_addresses(pid: i32) -> Vec<std::net::SocketAddr> {
    let inodes: BTreeSet<u64> = host_port::socket_inodes(pid as u32).into_iter().collect();
    host_port::listening_sockets()
        .into_iter()
        .filter(|s| inodes.contains(&s.inode))
        .map(|s| s.addr)
        .collect()
}

/// The stdout of a kubectl run with `args`; panics with its stderr when it failed.
/// `kubectl --kubeconfig KUBECONFIG ARGS` with `path_env` as PATH; its stdout, asserting
/// success.
pub fn kubectl_at(kubeconfig: &Path, path_env: &str, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .env("PATH", path_env)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    kubectl_stdout(args, out)
}

pub fn kubectl_stdout(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every object's resourceVersion, by kind, namespace and name, and every helm release's
/// revision: what a command that must write nothing leaves unchanged. Left out: what the
/// cluster rewrites on its own clock whatever anyone does (Events, Leases, Nodes' heartbeats,
/// and the ConfigMaps istiod renews as leader-election locks, marked with the
/// `control-plane.alpha.kubernetes.io/leader` annotation).
pub fn cluster_dump(kubeconfig: &Path, path_env: &str) -> BTreeMap<String, String> {
    let kubectl = |args: &[&str]| kubectl_at(kubeconfig, path_env, args);
    let kinds: Vec<String> = kubectl(&["api-resources", "--verbs=list", "-o", "name"])
        .lines()
        .filter(|k| {
            !matches!(
                *k,
                "events" | "events.events.k8s.io" | "leases.coordination.k8s.io" | "nodes"
            )
        })
        .map(str::to_string)
        .collect();
    let all: serde_json::Value =
        serde_json::from_str(&kubectl(&["get", &kinds.join(","), "-A", "-o", "json"])).unwrap();
    let mut dump = BTreeMap::new();
    for o in all["items"].as_array().unwrap() {
        let m = &o["metadata"];
        if m["annotations"]["control-plane.alpha.kubernetes.io/leader"].is_string() {
            continue;
        }
        let key = format!(
            "{} {}/{}",
            o["kind"].as_str().unwrap_or_default(),
            m["namespace"].as_str().unwrap_or_default(),
            m["name"].as_str().unwrap_or_default()
        );
        let rv = m["resourceVersion"].as_str().unwrap_or_default();
        dump.insert(key, rv.to_string());
    }
    let helm = Command::new("helm")
        .env("PATH", path_env)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["list", "-A", "-a", "-o", "json"])
        .output()
        .unwrap();
    let releases: serde_json::Value = serde_json::from_slice(&helm.stdout).unwrap();
    for r in releases.as_array().unwrap() {
        dump.insert(
            format!("helm release {}/{}", r["namespace"], r["name"]),
            r["revision"].to_string(),
        );
    }
    dump
}

/// `cluster_dump` once the cluster has settled after a change (controllers done reacting to
/// it): two dumps `gap` apart that agree, within a minute.
pub fn settled_dump(kubeconfig: &Path, path_env: &str, gap: Duration) -> BTreeMap<String, String> {
    let start = Instant::now();
    let mut last = cluster_dump(kubeconfig, path_env);
    loop {
        std::thread::sleep(gap);
        let now = cluster_dump(kubeconfig, path_env);
        if now == last {
            return now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the cluster does not settle"
        );
        last = now;
    }
}

/// (step, outcome) of every step in a `--output json` summary; `None` when it lists no steps
/// (the run printed no summary).
pub fn step_outcomes(summary: &serde_json::Value) -> Option<Vec<(String, String)>> {
    let steps = summary["steps"].as_array()?;
    Some(
        steps
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap_or_default().to_string(),
                    s["outcome"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    )
}

/// A port on 127.0.0.1 that nothing listens on (bound by the kernel's choice, then let go).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Which binary a `Product` run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bin {
    Up,
    Down,
}

/// One run of `bookinfo-up` or `bookinfo-down` as a user starts it: from the repository (or
/// a folder of the test's), with a plan, a state folder (and a download cache inside it) of
/// the test's own, variables (`BOOKINFO_UP_VAR_<name>`), arguments, and by default plain logs
/// and the JSON summary on stdout. Every test that runs the product builds its runs here.
///
/// ```ignore
/// let ran = Product::up(&tb).plan("plans/sim.toml").state(dir).args(["--only", "x"]).expect(0);
/// assert_eq!(ran.outcome("x"), "changed");
/// let diff = Product::up(&tb).sub("diff").plan("plans/sim.toml").state(dir).expect(1);
/// ```
#[derive(Debug, Clone)]
pub struct Product {
    bin: Bin,
    sub: Option<String>,
    plan: Option<String>,
    state: Option<PathBuf>,
    cwd: Option<PathBuf>,
    vars: Vec<(String, String)>,
    envs: Vec<(String, String)>,
    removed: Vec<String>,
    args: Vec<String>,
    json: bool,
    path_env: Option<String>,
}

/// What a `Product` run did: its exit code, its parsed summary (`Null` when it printed
/// none), its output, and how long it took.
#[derive(Debug, Clone)]
pub struct Ran {
    pub code: i32,
    pub summary: serde_json::Value,
    pub stdout: String,
    pub stderr: String,
    pub secs: f64,
}

impl Product {
    /// `bookinfo-up` with the testbed first on PATH.
    pub fn up(tb: &Testbed) -> Self {
        Self::new(Bin::Up).path(&tb.path_env())
    }

    /// `bookinfo-down` with the testbed first on PATH.
    pub fn down(tb: &Testbed) -> Self {
        Self::new(Bin::Down).path(&tb.path_env())
    }

    /// A run with the caller's PATH (a test that needs no testbed).
    pub fn new(bin: Bin) -> Self {
        Self {
            bin,
            sub: None,
            plan: None,
            state: None,
            cwd: None,
            vars: Vec::new(),
            envs: Vec::new(),
            removed: Vec::new(),
            args: Vec::new(),
            json: true,
            path_env: None,
        }
    }

    /// A subcommand (`diff`, `status`, `init`, `completions`): first on the command line, and
    /// without `--log-format`, which only runs take.
    pub fn sub(mut self, sub: &str) -> Self {
        self.sub = Some(sub.to_string());
        self
    }

    pub fn plan(mut self, plan: impl AsRef<Path>) -> Self {
        self.plan = Some(plan.as_ref().display().to_string());
        self
    }

    pub fn state(mut self, dir: &Path) -> Self {
        self.state = Some(dir.to_path_buf());
        self
    }

    /// Runs from `dir` instead of the repository.
    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    pub fn path(mut self, path_env: &str) -> Self {
        self.path_env = Some(path_env.to_string());
        self
    }

    /// Overrides plan variable `name` (`BOOKINFO_UP_VAR_<name>`).
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.push((name.into(), value.into()));
        self
    }

    pub fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.envs
            .push((name.into(), value.as_ref().to_string_lossy().into_owned()));
        self
    }

    pub fn env_remove(mut self, name: &str) -> Self {
        self.removed.push(name.into());
        self
    }

    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Without `--output json` (and `--log-format plain`): the output a user reads.
    pub fn text(mut self) -> Self {
        self.json = false;
        self
    }

    /// The same run as `bin`: the plan, state, variables, environment and PATH; no
    /// subcommand or arguments.
    pub fn then(&self, bin: Bin) -> Self {
        Self {
            bin,
            sub: None,
            args: Vec::new(),
            ..self.clone()
        }
    }

    /// The binary's path, for a test that wraps it (`runuser -u nobody -- env ... PROGRAM`).
    pub fn program(&self) -> &'static str {
        match self.bin {
            Bin::Up => env!("CARGO_BIN_EXE_bookinfo-up"),
            Bin::Down => env!("CARGO_BIN_EXE_bookinfo-down"),
        }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(self.program());
        c.current_dir(
            self.cwd
                .clone()
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
        );
        if let Some(path) = &self.path_env {
            c.env("PATH", path);
        }
        if let Some(sub) = &self.sub {
            c.arg(sub);
        }
        c.args(&self.args);
        if self.json {
            c.args(["--output", "json"]);
            if self.sub.is_none() {
                c.args(["--log-format", "plain"]);
            }
        }
        if let Some(plan) = &self.plan {
            c.arg(plan);
        }
        if let Some(state) = &self.state {
            c.env("BOOKINFO_UP_STATE_DIR", state)
                .env("BOOKINFO_UP_CACHE_DIR", state.join("cache"));
        }
        for (name, value) in &self.vars {
            c.env(format!("BOOKINFO_UP_VAR_{name}"), value);
        }
        for (name, value) in &self.envs {
            c.env(name, value);
        }
        for name in &self.removed {
            c.env_remove(name);
        }
        c
    }

    /// Starts it without waiting (for runs side by side, signals).
    pub fn spawn(&self) -> std::process::Child {
        self.command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the product starts")
    }

    pub fn run(&self) -> Ran {
        let start = Instant::now();
        let mut ran = Ran::from(self.command().output().expect("the product runs"));
        ran.secs = start.elapsed().as_secs_f64();
        ran
    }

    /// Runs it and asserts its exit code.
    pub fn expect(&self, code: i32) -> Ran {
        let ran = self.run();
        assert_eq!(
            ran.code, code,
            "{:?} {:?} {:?}: exit {} (expected {code})\n{}{}",
            self.bin, self.sub, self.args, ran.code, ran.stdout, ran.stderr
        );
        ran
    }
}

impl From<Output> for Ran {
    fn from(out: Output) -> Self {
        Ran {
            code: out.status.code().unwrap_or(-1),
            summary: serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            secs: 0.0,
        }
    }
}

impl Ran {
    pub fn step(&self, id: &str) -> Option<&serde_json::Value> {
        self.summary["steps"]
            .as_array()?
            .iter()
            .find(|s| s["id"] == id)
    }

    /// Steps that did not end unchanged.
    pub fn changed(&self) -> Vec<String> {
        self.outcomes()
            .into_iter()
            .filter(|(_, o)| o != "unchanged")
            .map(|(id, o)| format!("{id}={o}"))
            .collect()
    }

    /// (step, cause) of every failed step.
    pub fn failures(&self) -> Vec<(String, String)> {
        self.summary["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["outcome"] == "failed")
            .map(|s| {
                (
                    s["id"].as_str().unwrap_or_default().to_string(),
                    s["cause"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// One line for reports: exit code, time and per-outcome counts.
    pub fn brief(&self) -> String {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for (_, o) in self.outcomes() {
            *counts.entry(o).or_default() += 1;
        }
        let counts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        format!(
            "exit {} in {:.1}s ({})",
            self.code,
            self.secs,
            counts.join(", ")
        )
    }

    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Asserts the exit code; the run, for more assertions.
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit {} (expected {code})\n{}",
            self.code, self.stderr
        );
        self
    }

    /// (step, outcome) of every step and phase in the summary; none when it printed no
    /// summary.
    pub fn outcomes(&self) -> Vec<(String, String)> {
        step_outcomes(&self.summary).unwrap_or_default()
    }

    /// The outcome of step or phase `id` (`changed`, `unchanged`, `failed`, `skipped`).
    pub fn outcome(&self, id: &str) -> String {
        self.outcomes()
            .into_iter()
            .find_map(|(i, o)| (i == id).then_some(o))
            .unwrap_or_else(|| panic!("no `{id}` in the summary:\n{}", self.summary))
    }

    /// The failure cause of step or phase `id`, or "".
    pub fn cause(&self, id: &str) -> String {
        self.summary["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["id"] == id)
            .and_then(|s| s["cause"].as_str())
            .unwrap_or_default()
            .to_string()
    }
}
