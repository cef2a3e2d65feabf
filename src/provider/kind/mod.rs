//! The `kind` provider: a real cluster in containers, via the `kind` CLI. Preflight checks
//! what kind needs before anything is created and sorts what it finds into errors (the run
//! would fail: no runtime, no kind or an old one, a host port taken, far too little memory)
//! and warnings (it may cause trouble: inotify limits below kind's recommendation, memory
//! near the plan's minimum). NodePorts reach the host only through `extraPortMappings` fixed
//! at creation, so the config is rendered from the plan.

mod preflight;

pub use preflight::*;

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::host_port::{self, Holder, PortState};
use super::{Access, Findings, Problem, ProviderError, Severity};
use crate::plan::PortMapping;
use crate::process::Tool;

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

pub async fn exists(name: &str, cancel: &CancellationToken) -> Result<bool, ProviderError> {
    exists_with(kind(cancel).await, name, cancel).await
}

async fn exists_with(
    kind: Tool,
    name: &str,
    cancel: &CancellationToken,
) -> Result<bool, ProviderError> {
    super::lists_cluster(kind, name, cancel).await
}

/// Makes sure kind cluster `name` exists; `plan` names the run that creates it (its creation
/// record is written first, see `ownership`).
pub async fn ensure(
    name: &str,
    plan: &str,
    node_image: &str,
    ports: &[PortMapping],
    dir: &Path,
    progress: &dyn Fn(String),
    cancel: &CancellationToken,
) -> Result<Access, ProviderError> {
    let kubeconfig = dir.join("kubeconfig");
    let kind = kind(cancel).await;
    if exists_with(kind.clone(), name, cancel).await? {
        progress(format!("kind cluster `{name}` exists"));
        super::write_kubeconfig(kind, name, &kubeconfig, cancel).await?;
    } else {
        std::fs::write(dir.join("kind.yaml"), render_config(node_image, ports)).map_err(|e| {
            ProviderError::Tool {
                message: format!("cannot write the kind config: {e}"),
            }
        })?;
        super::ownership::record_creation(dir, plan)?;
        progress(format!("creating kind cluster `{name}` ({node_image})"));
        let create = create_command(kind.clone(), name, dir);
        // Dropping the run at the deadline kills kind's process group; the node container
        // it may have left behind is deleted, so the next run starts clean.
        let out = match tokio::time::timeout(CREATE_TIMEOUT, create.run(cancel)).await {
            Ok(out) => out?,
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

/// Writes the kubeconfig of kind cluster `name` to `path` (`kind get kubeconfig`).
pub async fn write_kubeconfig(
    name: &str,
    path: &Path,
    cancel: &CancellationToken,
) -> Result<(), ProviderError> {
    super::write_kubeconfig(kind(cancel).await, name, path, cancel).await
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
        .await?;
    if !out.success {
        return Err(ProviderError::Tool {
            message: format!("kind delete cluster {name} failed:\n{}", out.tail(10)),
        });
    }
    Ok(true)
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
