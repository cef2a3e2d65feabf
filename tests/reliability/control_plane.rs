//! Killing and restarting the simulated cluster's kube-apiserver.
//!
//! kwokctl's binary runtime starts each component as a session leader (`setsid`), output
//! appended to `logs/<name>.log`, pid in `pids/<name>.pid`. `kwokctl start cluster` does not
//! bring back a killed API server (it sees the cluster as started and waits for it in vain),
//! so the test restarts it as kwokctl started it: the exact command line, environment and
//! working folder read from /proc before the kill, a new session, the same log, the new pid
//! written back so that `kwokctl delete cluster` (and `bookinfo-down`) stop it.
//!
//! kube-controller-manager and kube-scheduler give up when they cannot renew their leader
//! lease for 10 s; a real node's kubelet would restart them. `restore` does what that
//! supervisor would: any component that exited during the outage is started again the same
//! way, and reported.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Sim, port_lock, signal};

/// How a component was started.
#[derive(Debug, Clone)]
struct Component {
    name: String,
    pid: i32,
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: PathBuf,
}

/// The cluster's components as they run now.
pub struct ControlPlane {
    dir: PathBuf,
    components: Vec<Component>,
}

/// An API server that is down; holds the port lock so that no test cluster takes its port.
pub struct Outage {
    _lock: std::fs::File,
    pub since: Instant,
}

impl ControlPlane {
    /// Reads every component's pid file and /proc entries.
    pub fn snapshot(sim: &Sim) -> Self {
        let dir = sim.kwok_cluster_dir();
        let mut components = Vec::new();
        for e in std::fs::read_dir(dir.join("pids"))
            .expect("the cluster has pid files")
            .flatten()
        {
            let name = e
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".pid")
                .to_string();
            let pid: i32 = std::fs::read_to_string(e.path())
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let split = |bytes: Vec<u8>| -> Vec<OsString> {
                bytes
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| OsString::from_vec(s.to_vec()))
                    .collect()
            };
            let argv = split(std::fs::read(proc.join("cmdline")).unwrap_or_default());
            assert!(
                !argv.is_empty(),
                "component {name} (pid {pid}) is not running"
            );
            let env = split(std::fs::read(proc.join("environ")).unwrap_or_default())
                .into_iter()
                .filter_map(|kv| {
                    let b = kv.into_vec();
                    let i = b.iter().position(|c| *c == b'=')?;
                    Some((
                        OsString::from_vec(b[..i].to_vec()),
                        OsString::from_vec(b[i + 1..].to_vec()),
                    ))
                })
                .collect();
            let cwd = std::fs::read_link(proc.join("cwd")).unwrap_or_else(|_| dir.clone());
            components.push(Component {
                name,
                pid,
                argv,
                env,
                cwd,
            });
        }
        Self { dir, components }
    }

    fn get(&self, name: &str) -> &Component {
        self.components
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no component {name}"))
    }

    /// SIGSTOPs the API server: requests in flight hang until `kill_apiserver`, which pins
    /// the kill inside a step that takes only milliseconds.
    pub fn freeze_apiserver(&self) {
        signal(self.get("kube-apiserver").pid, libc::SIGSTOP);
    }

    /// SIGKILLs the API server and waits until it is gone.
    pub fn kill_apiserver(&self) -> Outage {
        let lock = port_lock();
        let pid = self.get("kube-apiserver").pid;
        signal(pid, libc::SIGKILL);
        let t = Instant::now();
        while alive(pid) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(pid), "kube-apiserver {pid} survived SIGKILL");
        Outage {
            _lock: lock,
            since: Instant::now(),
        }
    }

    /// Starts the API server again, waits until it is ready, restarts any other component
    /// that exited meanwhile; returns what was restarted and how long the API was down.
    pub fn restore(&mut self, sim: &Sim, outage: Outage) -> String {
        let mut restarted = vec![self.relaunch("kube-apiserver")];
        let t = Instant::now();
        loop {
            let out = sim.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "kube-apiserver is not ready 90 s after its restart: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let down = outage.since.elapsed();
        drop(outage);
        let names: Vec<String> = self
            .components
            .iter()
            .filter(|c| c.name != "kube-apiserver" && !alive(c.pid))
            .map(|c| c.name.clone())
            .collect();
        for n in names {
            restarted.push(self.relaunch(&n));
        }
        format!(
            "API down {:.1}s; restarted {}",
            down.as_secs_f64(),
            restarted.join(", ")
        )
    }

    /// Starts a component as kwokctl did, in a session of its own, and records its pid.
    fn relaunch(&mut self, name: &str) -> String {
        let c = self.get(name).clone();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs").join(format!("{name}.log")))
            .unwrap();
        let mut cmd = Command::new(&c.argv[0]);
        cmd.args(&c.argv[1..])
            .env_clear()
            .envs(c.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&c.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: setsid() in the child between fork and exec touches no shared state.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot restart {name}: {e}"));
        let pid = child.id() as i32;
        std::fs::write(
            self.dir.join("pids").join(format!("{name}.pid")),
            pid.to_string(),
        )
        .unwrap();
        // Reap it whenever it ends (kwokctl delete kills it by pid).
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        for comp in &mut self.components {
            if comp.name == name {
                comp.pid = pid;
            }
        }
        name.to_string()
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| !s.contains("State:\tZ"))
}
