//! The `kind` provider: a real cluster in containers, via the `kind` CLI. Preflight checks
//! what kind needs before anything is created and sorts what it finds into errors (the run
//! would fail: no runtime, no kind or an old one, a host port taken, far too little memory)
//! and warnings (it may cause trouble: inotify limits below kind's recommendation, memory
//! near the plan's minimum). NodePorts reach the host only through `extraPortMappings` fixed
//! at creation, so the config is rendered from the plan.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::host_port::{self, Holder, PortState};
use super::{Access, Findings, Problem, ProviderError, Severity};
use crate::plan::PortMapping;
use crate::process::{Tool, ToolError};

/// inotify limits kind recommends; below them a cluster may fail with "too many open files"
/// (kind's known-issues page), though one cluster often runs on the stock values.
pub const MIN_INOTIFY_WATCHES: u64 = 524_288;
pub const MIN_INOTIFY_INSTANCES: u64 = 512;

/// The oldest kind whose release notes publish the pinned node image.
pub const MIN_KIND: (u32, u32) = (0, 33);

/// How long `kind create cluster` may take in all, the node image pull (about 1 GB)
/// included; kind's own `--wait` only bounds the wait for the control plane.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The container runtime kind uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Podman,
}

impl Engine {
    pub fn program(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Docker => "Docker",
            Engine::Podman => "Podman",
        }
    }
}

/// What the runtime says about itself (`docker info` / `podman info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// Memory the runtime's containers may use, in bytes, when it says.
    pub mem_total: Option<u64>,
    /// A rootless runtime cannot publish ports below the unprivileged port floor.
    pub rootless: bool,
}

/// Which runtime kind will use, found the way kind finds it: `KIND_EXPERIMENTAL_PROVIDER`
/// when set, else Docker when `docker -v` is Docker's, else Podman when `podman -v` is
/// Podman's (a `docker` that is Podman's shim counts as Podman).
async fn engine(cancel: &CancellationToken) -> Option<Engine> {
    match std::env::var("KIND_EXPERIMENTAL_PROVIDER").as_deref() {
        Ok("podman") => return Some(Engine::Podman),
        Ok("docker") => return Some(Engine::Docker),
        _ => {}
    }
    for (engine, banner) in [
        (Engine::Docker, "Docker version"),
        (Engine::Podman, "podman version"),
    ] {
        if crate::process::which(engine.program()).is_none() {
            continue;
        }
        if let Ok(o) = Tool::new(engine.program()).arg("-v").run(cancel).await
            && o.stdout.starts_with(banner)
        {
            return Some(engine);
        }
    }
    None
}

/// `kind`, told to use Podman when that is the runtime here. kind finds Podman by itself
/// only when no Docker CLI answers; saying so keeps kind and this preflight on one runtime.
fn kind_tool(engine: Option<Engine>) -> Tool {
    let tool = Tool::new("kind");
    match engine {
        Some(Engine::Podman) if std::env::var_os("KIND_EXPERIMENTAL_PROVIDER").is_none() => {
            tool.env("KIND_EXPERIMENTAL_PROVIDER", "podman")
        }
        _ => tool,
    }
}

/// `kind` for the cluster commands after preflight.
async fn kind(cancel: &CancellationToken) -> Tool {
    kind_tool(engine(cancel).await)
}

/// The kind cluster configuration for the plan.
pub fn render_config(node_image: &str, ports: &[PortMapping]) -> String {
    let mut out = String::from(
        "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n  - role: control-plane\n",
    );
    out.push_str(&format!("    image: {node_image}\n"));
    if !ports.is_empty() {
        out.push_str("    extraPortMappings:\n");
        for p in ports {
            out.push_str(&format!(
                "      - containerPort: {}\n        hostPort: {}\n        listenAddress: \"127.0.0.1\"\n        protocol: TCP\n",
                p.node_port, p.host_port
            ));
        }
    }
    out
}

/// The `kind create cluster` command line.
pub fn create_command(kind: Tool, name: &str, dir: &Path) -> Tool {
    kind.args(["create", "cluster", "--name", name, "--config"])
        .arg(dir.join("kind.yaml"))
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .args(["--wait", "180s"])
}

pub async fn preflight(
    ports: &[PortMapping],
    min_memory: Option<u64>,
    name: &str,
    cancel: &CancellationToken,
) -> Findings {
    let mut found = Findings::default();
    let engine = engine(cancel).await;
    if crate::process::which("kind").is_none() {
        found.error(Problem {
            what: "`kind` is not on PATH".into(),
            fix: "install kind v0.33.0 or newer (`go install sigs.k8s.io/kind@v0.33.0`, or see https://kind.sigs.k8s.io/docs/user/quick-start/#installation)".into(),
        });
    } else {
        let out = kind_tool(engine).arg("version").run(cancel).await;
        if let Ok(o) = &out {
            let v = o.stdout.split_whitespace().nth(1).unwrap_or("");
            if let Some(problem) = old_kind(v) {
                found.error(problem);
            }
        }
        // kind's own view of the runtime: it lists clusters through the runtime's CLI.
        if let Ok(o) = kind_tool(engine)
            .args(["get", "clusters"])
            .run(cancel)
            .await
            && !o.success
        {
            let lines: Vec<&str> = o.stderr.lines().chain(o.stdout.lines()).collect();
            let why = ["Cannot connect", "executable file not found", "ERROR"]
                .iter()
                .find_map(|needle| lines.iter().find(|l| l.contains(needle)))
                .map(|l| {
                    l.trim()
                        .trim_start_matches("Command Output:")
                        .trim()
                        .to_string()
                })
                .unwrap_or_else(|| "`kind get clusters` failed".into());
            found.error(Problem {
                what: format!("kind cannot reach a container runtime: {why}"),
                fix: "start Docker (`sudo systemctl start docker`, or Docker Desktop) so that `kind get clusters` works".into(),
            });
        }
    }
    let info = match engine {
        Some(engine) => runtime_info(engine, min_memory, cancel, &mut found).await,
        None => {
            found.error(Problem {
                what: "no container runtime: neither Docker's `docker` nor Podman's `podman` answers on PATH".into(),
                fix: "install Docker (https://docs.docker.com/engine/install/) and start it; or run the simulated plan (`bookinfo-up sim`, or `just sim` in a clone)".into(),
            });
            None
        }
    };
    if engine == Some(Engine::Podman) {
        found.warning(Problem {
            what: "only Podman is here: kind runs on it with KIND_EXPERIMENTAL_PROVIDER=podman, which kind calls experimental".into(),
            fix: "nothing to do if it works; Docker is kind's well-trodden path (https://kind.sigs.k8s.io/docs/user/rootless/ for rootless Podman)".into(),
        });
    }
    for p in inotify_problems(
        read_number("/proc/sys/fs/inotify/max_user_watches"),
        read_number("/proc/sys/fs/inotify/max_user_instances"),
    ) {
        found.warning(p);
    }
    // Ports in use by the plan's own cluster are fine: a re-run finds them taken by it.
    let ours = match engine {
        Some(engine) => exists_with(kind_tool(Some(engine)), name, cancel)
            .await
            .unwrap_or(false),
        None => false,
    };
    if !ours {
        for p in ports {
            if let Some((severity, problem)) =
                port_problem(p.host_port, &host_port::probe(p.host_port), engine, info)
            {
                found.add(severity, problem);
            }
        }
    }
    found
}

fn old_kind(version: &str) -> Option<Problem> {
    let v = version.trim_start_matches('v');
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    ((major, minor) < MIN_KIND).then(|| Problem {
        what: format!(
            "kind {version} is older than v{}.{}, the release the pinned node image was published for",
            MIN_KIND.0, MIN_KIND.1
        ),
        fix: "install kind v0.33.0 or newer (`go install sigs.k8s.io/kind@v0.33.0`)".into(),
    })
}

/// Asks the runtime about itself: an error when it does not answer, an error when it has far
/// too little memory (under half the plan's minimum), a warning when it has somewhat too
/// little.
async fn runtime_info(
    engine: Engine,
    min_memory: Option<u64>,
    cancel: &CancellationToken,
    found: &mut Findings,
) -> Option<RuntimeInfo> {
    let runtime = engine.program();
    let args: &[&str] = match engine {
        Engine::Docker => &["info", "--format", "{{json .}}"],
        Engine::Podman => &["info", "--format", "json"],
    };
    let out = match Tool::new(runtime).args(args).run(cancel).await {
        Ok(o) if o.success => o,
        Ok(o) => {
            found.error(Problem {
                what: format!(
                    "the container runtime is not running: `{runtime} info` failed: {}",
                    first_line(&o.tail(3))
                ),
                fix: format!(
                    "start it (`sudo systemctl start {runtime}`, or open Docker Desktop) and check `{runtime} info`"
                ),
            });
            return None;
        }
        Err(e) => {
            found.error(Problem {
                what: format!("cannot run `{runtime} info`: {e}"),
                fix: format!("check the `{runtime}` installation"),
            });
            return None;
        }
    };
    let info = parse_info(engine, &out.stdout)?;
    if let (Some(total), Some(min)) = (info.mem_total, min_memory)
        && let Some((severity, problem)) = memory_problem(runtime, total, min)
    {
        found.add(severity, problem);
    }
    Some(info)
}

/// Reads memory and rootlessness from `docker info --format '{{json .}}'` or
/// `podman info --format json`.
pub fn parse_info(engine: Engine, json: &str) -> Option<RuntimeInfo> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
    let (mem, rootless) = match engine {
        Engine::Docker => (
            v.pointer("/MemTotal"),
            v.pointer("/SecurityOptions")
                .and_then(|o| o.as_array())
                .is_some_and(|o| o.iter().any(|s| s.as_str() == Some("name=rootless"))),
        ),
        Engine::Podman => (
            v.pointer("/host/memTotal"),
            v.pointer("/host/security/rootless")
                .and_then(|r| r.as_bool())
                .unwrap_or(false),
        ),
    };
    Some(RuntimeInfo {
        mem_total: mem.and_then(|m| m.as_u64()).filter(|m| *m > 0),
        rootless,
    })
}

/// Memory below the plan's minimum: a warning, or an error under half of it.
pub fn memory_problem(runtime: &str, total: u64, min: u64) -> Option<(Severity, Problem)> {
    if total >= min {
        return None;
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let severity = if total < min / 2 {
        Severity::Error
    } else {
        Severity::Warning
    };
    let what = match severity {
        Severity::Error => format!(
            "{runtime} offers {:.1} GiB of memory, far below the {:.1} GiB the plan needs: pods would not schedule",
            gib(total),
            gib(min)
        ),
        Severity::Warning => format!(
            "{runtime} offers {:.1} GiB of memory, under the {:.1} GiB the plan asks for: some pods may stay Pending",
            gib(total),
            gib(min)
        ),
    };
    Some((
        severity,
        Problem {
            what,
            fix: format!("give {runtime} more memory (Docker Desktop: Settings → Resources)"),
        },
    ))
}

/// What stands in the way of publishing `port` on 127.0.0.1, and how bad it is. A port taken
/// by another process is an error. A privileged port this user may not bind is no obstacle
/// for rootful Docker, whose docker-proxy runs as root and publishes it: a warning then, so
/// the user knows why it works here and would not elsewhere; an error for a rootless runtime,
/// which cannot publish it at all.
pub fn port_problem(
    port: u16,
    state: &PortState,
    engine: Option<Engine>,
    info: Option<RuntimeInfo>,
) -> Option<(Severity, Problem)> {
    let map_another =
        "or give the plan another host port (`host_port` in `[cluster.kind] port_mappings`)";
    match state {
        PortState::Free => None,
        PortState::Taken { holder } => Some((
            Severity::Error,
            Problem {
                what: format!(
                    "host port {port} on 127.0.0.1 is taken{}",
                    holder.as_ref().map(holder_text).unwrap_or_default()
                ),
                fix: match holder {
                    Some(Holder {
                        process: Some((pid, _)),
                        ..
                    }) => format!("stop it (`kill {pid}`), {map_another}"),
                    _ => format!(
                        "`sudo ss -ltnp 'sport = :{port}'` names the process; stop it, {map_another}"
                    ),
                },
            },
        )),
        PortState::NotAllowed { uid, user, floor } => {
            let who = match user {
                Some(u) => format!("user {u} (uid {uid})"),
                None => format!("uid {uid}"),
            };
            let why = format!(
                "host port {port} on 127.0.0.1 is privileged: {who} may not bind ports below {floor} (net.ipv4.ip_unprivileged_port_start)"
            );
            let fix_port = format!(
                "map a host port of {floor} or above (the plan's default is 30666), or lower the floor: `sudo sysctl net.ipv4.ip_unprivileged_port_start={port}`"
            );
            // Whether the runtime is rootless is known only when it answered `info`.
            Some(match (engine, info.map(|i| i.rootless)) {
                (Some(e), Some(true)) => (
                    Severity::Error,
                    Problem {
                        what: format!("{why}; rootless {} cannot publish it", e.name()),
                        fix: fix_port,
                    },
                ),
                (Some(Engine::Docker), Some(false)) => (
                    Severity::Warning,
                    Problem {
                        what: format!(
                            "{why}; rootful Docker publishes it anyway (docker-proxy runs as root), rootless Docker and Podman would not"
                        ),
                        fix: format!("nothing to do with this Docker; elsewhere, {fix_port}"),
                    },
                ),
                _ => (
                    Severity::Warning,
                    Problem {
                        what: format!(
                            "{why}; rootful Docker or rootful Podman can still publish it, rootless ones cannot"
                        ),
                        fix: fix_port,
                    },
                ),
            })
        }
        PortState::Failed(e) => Some((
            Severity::Error,
            Problem {
                what: format!("cannot bind host port {port} on 127.0.0.1 to check it: {e}"),
                fix: format!("check the loopback interface (`ip addr show lo`), {map_another}"),
            },
        )),
    }
}

/// " by python3 (pid 4242, user root)", or " by a process of user root (uid 0)" when its
/// descriptors are not this user's to read.
fn holder_text(h: &Holder) -> String {
    let user = h.user.clone().unwrap_or_else(|| format!("uid {}", h.uid));
    match &h.process {
        Some((pid, comm)) => format!(" by {comm} (pid {pid}, user {user})"),
        None => format!(
            " by a process of user {user} (uid {}) that this user cannot look into",
            h.uid
        ),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim()
}

fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// inotify limits below kind's recommendation: warnings, since one cluster often runs on the
/// stock values (128 instances on Debian and Ubuntu).
pub fn inotify_problems(watches: Option<u64>, instances: Option<u64>) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(w) = watches.filter(|w| *w < MIN_INOTIFY_WATCHES) {
        problems.push(Problem {
            what: format!("fs.inotify.max_user_watches is {w}, below the {MIN_INOTIFY_WATCHES} kind recommends: pods may fail with \"too many open files\""),
            fix: format!("sudo sysctl fs.inotify.max_user_watches={MIN_INOTIFY_WATCHES}"),
        });
    }
    if let Some(i) = instances.filter(|i| *i < MIN_INOTIFY_INSTANCES) {
        problems.push(Problem {
            what: format!("fs.inotify.max_user_instances is {i}, below the {MIN_INOTIFY_INSTANCES} kind recommends: pods may fail with \"too many open files\""),
            fix: format!("sudo sysctl fs.inotify.max_user_instances={MIN_INOTIFY_INSTANCES}"),
        });
    }
    problems
}

pub async fn exists(name: &str, cancel: &CancellationToken) -> Result<bool, ProviderError> {
    exists_with(kind(cancel).await, name, cancel).await
}

async fn exists_with(
    kind: Tool,
    name: &str,
    cancel: &CancellationToken,
) -> Result<bool, ProviderError> {
    let out = kind
        .args(["get", "clusters"])
        .run(cancel)
        .await
        .map_err(tool)?;
    if !out.success {
        return Err(ProviderError::Tool {
            message: format!("kind get clusters failed:\n{}", out.tail(10)),
        });
    }
    Ok(out.stdout.lines().any(|l| l.trim() == name))
}

pub async fn ensure(
    name: &str,
    node_image: &str,
    ports: &[PortMapping],
    dir: &Path,
    progress: &dyn Fn(String),
    cancel: &CancellationToken,
) -> Result<Access, ProviderError> {
    std::fs::create_dir_all(dir).map_err(|e| ProviderError::Tool {
        message: format!("cannot create the state folder `{}`: {e}", dir.display()),
    })?;
    let kubeconfig = dir.join("kubeconfig");
    let kind = kind(cancel).await;
    if exists_with(kind.clone(), name, cancel).await? {
        progress(format!("kind cluster `{name}` exists"));
        let out = kind
            .args(["get", "kubeconfig", "--name", name])
            .run(cancel)
            .await
            .map_err(tool)?;
        if !out.success {
            return Err(ProviderError::Tool {
                message: format!("kind get kubeconfig failed:\n{}", out.tail(10)),
            });
        }
        std::fs::write(&kubeconfig, out.stdout).map_err(|e| ProviderError::Tool {
            message: format!("cannot write `{}`: {e}", kubeconfig.display()),
        })?;
    } else {
        std::fs::write(dir.join("kind.yaml"), render_config(node_image, ports)).map_err(|e| {
            ProviderError::Tool {
                message: format!("cannot write the kind config: {e}"),
            }
        })?;
        progress(format!("creating kind cluster `{name}` ({node_image})"));
        let create = create_command(kind.clone(), name, dir);
        // Dropping the run at the deadline kills kind's process group; the node container
        // it may have left behind is deleted, so the next run starts clean.
        let out = match tokio::time::timeout(CREATE_TIMEOUT, create.run(cancel)).await {
            Ok(out) => out.map_err(tool)?,
            Err(_) => {
                let _ = kind
                    .args(["delete", "cluster", "--name", name])
                    .run(cancel)
                    .await;
                return Err(ProviderError::Tool {
                    message: create_timed_out(name, node_image, CREATE_TIMEOUT),
                });
            }
        };
        if !out.success {
            return Err(ProviderError::Tool {
                message: format!("kind create cluster {name} failed:\n{}", out.tail(20)),
            });
        }
    }
    Ok(Access {
        kubeconfig,
        context: Some(format!("kind-{name}")),
        managed: true,
    })
}

/// Why `kind create cluster` was stopped, and what to try.
pub fn create_timed_out(name: &str, node_image: &str, limit: Duration) -> String {
    format!(
        "kind create cluster {name} did not finish within {}; it was stopped and its node deleted. \
         The node image is about 1 GB: pull it first (`docker pull {node_image}`), then run again",
        humantime::format_duration(limit)
    )
}

pub async fn delete(
    name: &str,
    dir: &Path,
    progress: &dyn Fn(String),
    cancel: &CancellationToken,
) -> Result<bool, ProviderError> {
    let kind = kind(cancel).await;
    if !exists_with(kind.clone(), name, cancel).await? {
        return Ok(false);
    }
    progress(format!("deleting kind cluster `{name}`"));
    let out = kind
        .args(["delete", "cluster", "--name", name, "--kubeconfig"])
        .arg(dir.join("kubeconfig"))
        .run(cancel)
        .await
        .map_err(tool)?;
    if !out.success {
        return Err(ProviderError::Tool {
            message: format!("kind delete cluster {name} failed:\n{}", out.tail(10)),
        });
    }
    Ok(true)
}

fn tool(e: ToolError) -> ProviderError {
    match e {
        ToolError::Cancelled { .. } => ProviderError::Cancelled,
        ToolError::NotFound { .. } => ProviderError::Tool {
            message: format!(
                "{e}: install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
            ),
        },
        other => ProviderError::Tool {
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_maps_node_ports_on_loopback() {
        let cfg = render_config(
            "kindest/node:v1.34.11@sha256:44e2",
            &[
                PortMapping {
                    host_port: 666,
                    node_port: 30666,
                },
                PortMapping {
                    host_port: 15029,
                    node_port: 31029,
                },
            ],
        );
        insta::assert_snapshot!(cfg);
    }

    #[test]
    fn create_command_uses_the_engine_kubeconfig() {
        let t = create_command(
            Tool::new("kind"),
            "bookinfo",
            Path::new("/state/clusters/bookinfo"),
        );
        assert_eq!(
            t.display(),
            "kind create cluster --name bookinfo --config /state/clusters/bookinfo/kind.yaml --kubeconfig /state/clusters/bookinfo/kubeconfig --wait 180s"
        );
    }

    #[test]
    fn low_inotify_limits_say_how_to_raise_them() {
        let p = inotify_problems(Some(8192), Some(128));
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].fix, "sudo sysctl fs.inotify.max_user_watches=524288");
        assert!(inotify_problems(Some(524288), Some(512)).is_empty());
    }

    #[test]
    fn kind_older_than_the_node_image_is_refused() {
        assert!(old_kind("v0.20.0").is_some());
        assert!(old_kind("v0.30.0").is_some());
        assert!(old_kind("v0.33.0").is_none());
        assert!(old_kind("v0.34.1").is_none());
        assert!(old_kind("v1.0.0").is_none());
    }

    #[test]
    fn runtime_info_reads_memory_and_rootlessness() {
        let docker = r#"{"MemTotal": 8254017536, "SecurityOptions": ["name=seccomp,profile=builtin", "name=rootless", "name=cgroupns"]}"#;
        assert_eq!(
            parse_info(Engine::Docker, docker),
            Some(RuntimeInfo {
                mem_total: Some(8_254_017_536),
                rootless: true
            })
        );
        let rootful = r#"{"MemTotal": 0, "SecurityOptions": null}"#;
        assert_eq!(
            parse_info(Engine::Docker, rootful),
            Some(RuntimeInfo {
                mem_total: None,
                rootless: false
            })
        );
        let podman = r#"{"host": {"memTotal": 4294967296, "security": {"rootless": true}}}"#;
        assert_eq!(
            parse_info(Engine::Podman, podman),
            Some(RuntimeInfo {
                mem_total: Some(4 << 30),
                rootless: true
            })
        );
        assert_eq!(parse_info(Engine::Docker, "not json"), None);
    }

    #[test]
    fn memory_near_the_minimum_warns_far_below_it_stops() {
        let min = 6u64 << 30;
        assert_eq!(memory_problem("docker", 8 << 30, min), None);
        assert_eq!(
            memory_problem("docker", 5 << 30, min).unwrap().0,
            Severity::Warning
        );
        assert_eq!(
            memory_problem("docker", 2 << 30, min).unwrap().0,
            Severity::Error
        );
    }

    /// Every message a host port can get, as the user reads it.
    #[test]
    fn host_port_messages() {
        let rootful = Some(RuntimeInfo {
            mem_total: None,
            rootless: false,
        });
        let rootless = Some(RuntimeInfo {
            mem_total: None,
            rootless: true,
        });
        let nobody = PortState::NotAllowed {
            uid: 65534,
            user: Some("nobody".into()),
            floor: 1024,
        };
        /// A case's name, the port, what a bind found, and the runtime.
        type Case = (
            &'static str,
            u16,
            PortState,
            Option<Engine>,
            Option<RuntimeInfo>,
        );
        let cases: Vec<Case> = vec![
            (
                "free",
                30666,
                PortState::Free,
                Some(Engine::Docker),
                rootful,
            ),
            (
                "taken, holder named",
                30666,
                PortState::Taken {
                    holder: Some(Holder {
                        uid: 0,
                        user: Some("root".into()),
                        process: Some((4242, "python3".into())),
                    }),
                },
                Some(Engine::Docker),
                rootful,
            ),
            (
                "taken by another user's process",
                30666,
                PortState::Taken {
                    holder: Some(Holder {
                        uid: 0,
                        user: Some("root".into()),
                        process: None,
                    }),
                },
                Some(Engine::Docker),
                rootful,
            ),
            (
                "taken, holder not found",
                32667,
                PortState::Taken { holder: None },
                None,
                None,
            ),
            (
                "privileged, rootful Docker",
                666,
                nobody.clone(),
                Some(Engine::Docker),
                rootful,
            ),
            (
                "privileged, rootless Docker",
                666,
                nobody.clone(),
                Some(Engine::Docker),
                rootless,
            ),
            (
                "privileged, rootless Podman",
                666,
                nobody.clone(),
                Some(Engine::Podman),
                rootless,
            ),
            (
                "privileged, Docker not answering",
                666,
                nobody.clone(),
                Some(Engine::Docker),
                None,
            ),
            ("privileged, runtime unknown", 666, nobody, None, None),
            (
                "bind failed otherwise",
                30666,
                PortState::Failed("Cannot assign requested address (os error 99)".into()),
                Some(Engine::Docker),
                rootful,
            ),
        ];
        let mut out = String::new();
        for (name, port, state, engine, info) in cases {
            out.push_str(&format!("# {name}\n"));
            match port_problem(port, &state, engine, info) {
                Some((severity, p)) => out.push_str(&crate::report::problem_text(severity, &p)),
                None => out.push_str("(no problem)\n"),
            }
            out.push('\n');
        }
        insta::assert_snapshot!(out);
    }

    #[test]
    fn create_timeout_message() {
        insta::assert_snapshot!(create_timed_out(
            "bookinfo",
            "kindest/node:v1.34.11@sha256:44e2",
            CREATE_TIMEOUT
        ));
    }
}
