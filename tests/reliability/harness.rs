//! What every reliability test stands on: the testbed (skip or fail), a gate that keeps live
//! tests from starving each other of the machine's two cores, and `Sim`, one state folder of
//! the engine holding at most the `bookinfo-sim` kwok cluster, with the binaries run against
//! it, the processes it owns, and cleanup on drop.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PLAN: &str = "plans/sim.toml";
pub const PLAN_NAME: &str = "bookinfo-sim";
pub use crate::common::Bin;

/// The steps of plans/sim.toml, in plan order.
pub use crate::common::SIM_STEPS as STEPS;
/// The testbed, shared with the other test binary (missing: skip, or fail under `CI=true`).
pub use crate::common::{Testbed, testbed};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// --- the live gate ---------------------------------------------------------------------------

/// How many live tests run at once (`BOOKINFO_UP_RELIABILITY_JOBS`, default 1). Each live
/// test drives a whole control plane; two at once on two cores makes API servers slow enough
/// for controller-manager leader elections to lapse during fault injection.
fn live_jobs() -> usize {
    std::env::var("BOOKINFO_UP_RELIABILITY_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

static GATE: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// A slot among the live tests allowed to run at once; released on drop.
pub struct LiveSlot(());

pub fn live_slot() -> LiveSlot {
    let (lock, cv) = &GATE;
    let mut running = lock.lock().unwrap_or_else(|e| e.into_inner());
    while *running >= live_jobs() {
        running = cv.wait(running).unwrap_or_else(|e| e.into_inner());
    }
    *running += 1;
    LiveSlot(())
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        let (lock, cv) = &GATE;
        let mut running = lock.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        cv.notify_all();
    }
}

// --- the port lock ---------------------------------------------------------------------------

/// The lock tests/common/mod.rs takes around `kwokctl create cluster`: kwokctl gives each new
/// cluster the first free ports counting down from 32767, so a cluster created while another
/// one is being created, or while a killed API server's port is free, can take that port.
/// Held while the engine creates a cluster and while an API server is down.
pub fn port_lock() -> std::fs::File {
    crate::common::create_lock()
}

// --- runs ------------------------------------------------------------------------------------

/// A finished run of a binary (the builder's, shared with the other test binary).
pub use crate::common::Ran as Run;

/// A running binary whose stderr lines arrive as they are written.
pub struct Running {
    pub child: Child,
    pub started: Instant,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    /// Held until the engine has made its cluster (see `port_lock`).
    lock: Option<std::fs::File>,
    /// The last stderr line read.
    pub last: String,
}

impl Running {
    pub fn spawn(mut cmd: Command, lock: Option<std::fs::File>) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().expect("the binary starts");
        let mut out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let (tx, lines) = mpsc::channel();
        let all = Arc::new(Mutex::new(String::new()));
        let all2 = all.clone();
        let stderr_thread = std::thread::spawn(move || {
            let mut r = BufReader::new(err);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        all2.lock().unwrap().push_str(&line);
                        let _ = tx.send(line.trim_end().to_string());
                    }
                }
            }
        });
        Self {
            child,
            started,
            lines,
            stderr: all,
            stdout: Some(stdout),
            stderr_thread: Some(stderr_thread),
            lock,
            last: String::new(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Releases the port lock once the cluster phase is over (first line after it).
    fn note(&mut self, line: &str) {
        self.last = line.to_string();
        if self.lock.is_some()
            && (line.contains("phase=fetch")
                || line.contains(" started step=")
                || line.contains("skipped:")
                || line.contains(" failed"))
        {
            self.lock = None;
        }
    }

    /// Waits for a stderr line matching `pred`; `Err` says why none came.
    pub fn wait_line(
        &mut self,
        pred: impl Fn(&str) -> bool,
        limit: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.note(&line);
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("no such line within {limit:?}"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("the run ended before such a line".into());
                }
            }
        }
    }

    /// Waits until, for each group of `patterns`, a line has held all of the group.
    pub fn wait_all(&mut self, patterns: &[&[&str]], limit: Duration) -> Result<(), String> {
        let mut seen = vec![false; patterns.len()];
        let deadline = Instant::now() + limit;
        while !seen.iter().all(|s| *s) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.wait_line(|_| true, left)?;
            for (i, group) in patterns.iter().enumerate() {
                if group.iter().all(|p| line.contains(p)) {
                    seen[i] = true;
                }
            }
        }
        Ok(())
    }

    /// Consumes lines for at most `d` (keeps the lock logic going), returns early on exit.
    pub fn pump(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.lines.recv_timeout(left) {
                Ok(line) => self.note(&line),
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => {
                    self.lock = None;
                    std::thread::sleep(left);
                    return;
                }
            }
        }
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the exit (killing the run after `limit`) and collects its output.
    pub fn finish(mut self, limit: Duration) -> Run {
        let deadline = self.started + limit;
        let status = loop {
            while let Ok(line) = self.lines.try_recv() {
                self.note(&line);
            }
            if let Some(s) = self.try_exit() {
                break s;
            }
            if Instant::now() > deadline {
                self.stop();
                let _ = self.child.wait();
                let stderr = self.stderr.lock().unwrap().clone();
                panic!("the run did not end within {limit:?}; stderr:\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let secs = self.started.elapsed().as_secs_f64();
        self.lock = None;
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let stdout = self
            .stdout
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        let stderr = self.stderr.lock().unwrap().clone();
        Run {
            code: status.code().unwrap_or(-1),
            summary: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr,
            secs,
        }
    }

    /// Stops a run that outlived its test: SIGINT (the engine then stops its tools), SIGKILL
    /// after 5 s.
    fn stop(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        signal(self.pid(), libc::SIGINT);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if self.try_exit().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal(self.pid(), libc::SIGKILL);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
        let _ = self.child.try_wait();
    }
}

/// kill(2) to one process this test started.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid; no memory is shared.
    unsafe { libc::kill(pid, sig) };
}

// --- Sim -------------------------------------------------------------------------------------

/// One state folder of the engine, for plans/sim.toml. Drop deletes its cluster.
pub struct Sim {
    pub tb: Testbed,
    pub state: tempfile::TempDir,
    pub path_env: String,
}

impl Sim {
    pub fn new(tb: &Testbed, label: &str) -> Self {
        let state = tempfile::Builder::new()
            .prefix(&format!("bookinfo-up-rel-{label}-"))
            .tempdir()
            .unwrap();
        Self {
            tb: tb.clone(),
            state,
            path_env: tb.path_env(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.state.path()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir().join("clusters/bookinfo-sim/kubeconfig")
    }

    /// kwokctl's KWOK_WORKDIR for the cluster.
    pub fn kwok_workdir(&self) -> PathBuf {
        self.dir().join("clusters/bookinfo-sim/kwok")
    }

    /// kwokctl's folder of the cluster (pids/, logs/, pki/, kwok.yaml).
    pub fn kwok_cluster_dir(&self) -> PathBuf {
        self.kwok_workdir().join("clusters/bookinfo-sim")
    }

    /// `bin` on the sim plan with this state folder, its own download cache, the testbed on
    /// PATH, run from the repository, the JSON summary on stdout; none of the caller's
    /// BOOKINFO_UP_LOG, KUBECONFIG or NO_COLOR.
    pub fn product(&self, bin: Bin) -> crate::common::Product {
        crate::common::Product::new(bin)
            .path(&self.path_env)
            .state(self.dir())
            .plan(PLAN)
            .env_remove("BOOKINFO_UP_LOG")
            .env_remove("KUBECONFIG")
            .env_remove("NO_COLOR")
    }

    /// `bookinfo-up plans/sim.toml --output json --log-format plain EXTRA` to its end.
    pub fn up(&self, extra: &[&str]) -> Run {
        self.spawn_up(extra).finish(Duration::from_secs(600))
    }

    /// The same, running; holds the port lock until the cluster exists.
    pub fn spawn_up(&self, extra: &[&str]) -> Running {
        let c = self.product(Bin::Up).args(extra).command();
        Running::spawn(c, Some(port_lock()))
    }

    pub fn down(&self, extra: &[&str]) -> Run {
        let c = self.product(Bin::Down).args(extra).command();
        Running::spawn(c, None).finish(Duration::from_secs(600))
    }

    /// Creates the cluster (and its owner marker) without running a step.
    pub fn prepare(&self) {
        let r = self.up_cluster_only();
        assert_eq!(r.code, 0, "creating the cluster failed:\n{}", r.stderr);
    }

    /// `up` with every step skipped: only the cluster phase runs.
    pub fn up_cluster_only(&self) -> Run {
        let mut args = Vec::new();
        for s in STEPS {
            args.push("--skip");
            args.push(s);
        }
        self.up(&args)
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl(
            &self.tb,
            &self.kubeconfig(),
            &self.dir().join("kubectl-cache"),
            args,
        )
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        crate::common::kubectl_stdout(args, self.kubectl(args))
    }

    /// `port/nodePort` of each port of the istio-ingressgateway Service.
    pub fn ingress_ports(&self) -> Vec<String> {
        self.kubectl_ok(&[
            "get",
            "svc",
            "-n",
            "istio-system",
            "istio-ingressgateway",
            "-o",
            "jsonpath={range .spec.ports[*]}{.port}/{.nodePort} {end}",
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect()
    }

    /// Pids of the cluster's components, from kwokctl's pid files.
    pub fn component_pids(&self) -> BTreeSet<i32> {
        let mut pids = BTreeSet::new();
        if let Ok(entries) = std::fs::read_dir(self.kwok_cluster_dir().join("pids")) {
            for e in entries.flatten() {
                if let Ok(t) = std::fs::read_to_string(e.path())
                    && let Ok(p) = t.trim().parse()
                {
                    pids.insert(p);
                }
            }
        }
        pids
    }

    /// Live processes started for this state folder (its path in their command line or
    /// `BOOKINFO_UP_STATE_DIR` pointing at it in their environment) other than the cluster's
    /// components and their children (kwokctl starts each component in a session of its own:
    /// the istiod component's `kubectl wait` is in istiod's): after a run has exited, any such
    /// process is an orphan of that run.
    pub fn strays(&self) -> Vec<String> {
        let components = self.component_pids();
        marked_processes(self.dir())
            .into_iter()
            .filter(|(pid, _)| !components.contains(pid) && !components.contains(&session_of(*pid)))
            .map(|(pid, cmd)| format!("{pid}: {cmd}"))
            .collect()
    }

    /// Strays still alive after `grace` (a process may take a moment to be reaped).
    pub fn strays_after(&self, grace: Duration) -> Vec<String> {
        let t = Instant::now();
        loop {
            let s = self.strays();
            if s.is_empty() || t.elapsed() > grace {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn cluster_exists(&self) -> bool {
        self.kwok_cluster_dir().join("kwok.yaml").is_file()
    }

    /// Deletes the cluster with kwokctl and kills what is left of this state folder's
    /// processes (all started by this test, directly or through the engine).
    pub fn cleanup(&self) {
        if self.kwok_workdir().is_dir() {
            let _ = Command::new(self.tb.bin.join("kwokctl"))
                .env("PATH", &self.path_env)
                .env("KWOK_WORKDIR", self.kwok_workdir())
                .args(["delete", "cluster", "--name", PLAN_NAME])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for (pid, _) in marked_processes(self.dir()) {
            signal(pid, libc::SIGKILL);
        }
        // kwokctl knows nothing of the network namespace of the cluster's istiod, which
        // `bookinfo-down` removes: remove it here (and with it its veth pair and route).
        let cluster = self.dir().join("clusters").join(PLAN_NAME);
        if cluster.join("istiod-net").is_file()
            && let Ok(net) = bookinfo_up::provider::istiod::net(&cluster)
        {
            let _ = Command::new("ip")
                .args(["netns", "del", &net.netns()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if std::env::var_os("BOOKINFO_UP_RELIABILITY_KEEP").is_some() {
            let dir = std::mem::replace(
                &mut self.state,
                tempfile::Builder::new()
                    .prefix("bookinfo-up-rel-gone-")
                    .tempdir()
                    .unwrap(),
            )
            .keep();
            eprintln!("kept (BOOKINFO_UP_RELIABILITY_KEEP): {}", dir.display());
            return;
        }
        self.cleanup();
    }
}

pub fn kubectl(tb: &Testbed, kubeconfig: &Path, cache: &Path, args: &[&str]) -> Output {
    tb.cmd("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .expect("kubectl runs")
}

/// (pid, command line) of live processes (not zombies, not this one) whose command line
/// contains `dir` or whose environment has `BOOKINFO_UP_STATE_DIR=dir`.
/// The session id of a process (field 6 of /proc/PID/stat), or 0 when it is gone.
fn session_of(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
            let (_, rest) = s.rsplit_once(')')?;
            rest.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(0)
}

pub fn marked_processes(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let env_needle = format!("BOOKINFO_UP_STATE_DIR={needle}");
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        if status.is_empty() || status.contains("State:\tZ") {
            continue;
        }
        let cmd =
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default())
                .replace('\0', " ");
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let in_env = env.split(|b| *b == 0).any(|kv| kv == env_needle.as_bytes());
        if cmd.contains(&needle) || in_env {
            found.push((pid, cmd.trim_end().chars().take(200).collect()));
        }
    }
    found
}

/// A small seeded generator (splitmix64), so that "random" instants can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn range_f64(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
    }
}
