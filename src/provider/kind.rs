//! The `kind` provider: a real cluster in containers, via the `kind` CLI. Preflight checks
//! what kind needs before anything is created: a running container runtime with enough
//! memory, inotify limits, free host ports. NodePorts reach the host only through
//! `extraPortMappings` fixed at creation, so the config is rendered from the plan.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::{Access, Problem, ProviderError};
use crate::plan::PortMapping;
use crate::process::{Tool, ToolError};

/// inotify limits below which kind clusters fail with "too many open files".
pub const MIN_INOTIFY_WATCHES: u64 = 524_288;
pub const MIN_INOTIFY_INSTANCES: u64 = 512;

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
pub fn create_command(name: &str, dir: &Path) -> Tool {
    Tool::new("kind")
        .args(["create", "cluster", "--name", name, "--config"])
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
) -> Vec<Problem> {
    let mut problems = Vec::new();
    if crate::process::which("kind").is_none() {
        problems.push(Problem {
            what: "`kind` is not on PATH".into(),
            fix: "install kind (`go install sigs.k8s.io/kind@v0.33.0`, or see https://kind.sigs.k8s.io/docs/user/quick-start/#installation)".into(),
        });
    } else {
        let out = Tool::new("kind").arg("version").run(cancel).await;
        if let Ok(o) = &out {
            let v = o.stdout.split_whitespace().nth(1).unwrap_or("");
            if let Some(problem) = old_kind(v) {
                problems.push(problem);
            }
        }
        // kind's own view of the runtime: it lists clusters through the runtime's CLI.
        if let Ok(o) = Tool::new("kind")
            .args(["get", "clusters"])
            .run(cancel)
            .await
            && !o.success
        {
            let lines: Vec<&str> = o.stderr.lines().chain(o.stdout.lines()).collect();
            let why = ["Cannot connect", "executable file not found", "ERROR"]
                .iter()
                .find_map(|needle| lines.iter().find(|l| l.contains(needle)))
                .map(|l| l.trim().to_string())
                .unwrap_or_else(|| "`kind get clusters` failed".into());
            problems.push(Problem {
                what: format!("kind cannot reach a container runtime: {why}"),
                fix: "start Docker (`sudo systemctl start docker`, or Docker Desktop) so that `kind get clusters` works".into(),
            });
        }
    }
    problems.extend(runtime_problems(min_memory, cancel).await);
    problems.extend(inotify_problems(
        read_number("/proc/sys/fs/inotify/max_user_watches"),
        read_number("/proc/sys/fs/inotify/max_user_instances"),
    ));
    // Ports in use by the plan's own cluster are fine: a re-run finds them taken by it.
    if !exists(name, cancel).await.unwrap_or(false) {
        for p in ports {
            if std::net::TcpListener::bind(("127.0.0.1", p.host_port)).is_err() {
                problems.push(Problem {
                    what: format!("host port {} on 127.0.0.1 is taken", p.host_port),
                    fix: format!("free it (`ss -ltnp 'sport = :{}'` shows who holds it) or map another host port in the plan", p.host_port),
                });
            }
        }
    }
    problems
}

fn old_kind(version: &str) -> Option<Problem> {
    let v = version.trim_start_matches('v');
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major == 0 && minor < 30).then(|| Problem {
        what: format!("kind {version} is too old for the pinned node image"),
        fix: "install kind v0.30.0 or newer (`go install sigs.k8s.io/kind@v0.33.0`)".into(),
    })
}

/// Docker (or Podman through kind's provider detection) must answer and have memory.
async fn runtime_problems(min_memory: Option<u64>, cancel: &CancellationToken) -> Vec<Problem> {
    let Some(runtime) = ["docker", "podman"]
        .into_iter()
        .find(|r| crate::process::which(r).is_some())
    else {
        return vec![Problem {
            what: "no container runtime: neither `docker` nor `podman` is on PATH".into(),
            fix: "install Docker (https://docs.docker.com/engine/install/) and start it; or run the simulated plan `just sim`".into(),
        }];
    };
    let out = Tool::new(runtime)
        .args(["info", "--format", "{{json .MemTotal}}"])
        .run(cancel)
        .await;
    match out {
        Ok(o) if o.success => {
            let total: u64 = o.stdout.trim().parse().unwrap_or(0);
            match min_memory {
                Some(min) if total > 0 && total < min => vec![Problem {
                    what: format!(
                        "{runtime} offers {:.1} GiB of memory; the plan needs {:.1} GiB",
                        total as f64 / (1u64 << 30) as f64,
                        min as f64 / (1u64 << 30) as f64
                    ),
                    fix: format!(
                        "give {runtime} more memory (Docker Desktop: Settings → Resources)"
                    ),
                }],
                _ => Vec::new(),
            }
        }
        Ok(o) => vec![Problem {
            what: format!(
                "the container runtime is not running: `{runtime} info` failed: {}",
                first_line(&o.tail(3))
            ),
            fix: format!(
                "start it (`sudo systemctl start {runtime}`, or open Docker Desktop) and check `{runtime} info`"
            ),
        }],
        Err(e) => vec![Problem {
            what: format!("cannot run `{runtime} info`: {e}"),
            fix: format!("check the `{runtime}` installation"),
        }],
    }
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim()
}

fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn inotify_problems(watches: Option<u64>, instances: Option<u64>) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(w) = watches.filter(|w| *w < MIN_INOTIFY_WATCHES) {
        problems.push(Problem {
            what: format!("fs.inotify.max_user_watches is {w}, below {MIN_INOTIFY_WATCHES}: kind fails with \"too many open files\""),
            fix: format!("sudo sysctl fs.inotify.max_user_watches={MIN_INOTIFY_WATCHES}"),
        });
    }
    if let Some(i) = instances.filter(|i| *i < MIN_INOTIFY_INSTANCES) {
        problems.push(Problem {
            what: format!("fs.inotify.max_user_instances is {i}, below {MIN_INOTIFY_INSTANCES}"),
            fix: format!("sudo sysctl fs.inotify.max_user_instances={MIN_INOTIFY_INSTANCES}"),
        });
    }
    problems
}

pub async fn exists(name: &str, cancel: &CancellationToken) -> Result<bool, ProviderError> {
    let out = Tool::new("kind")
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
    if exists(name, cancel).await? {
        progress(format!("kind cluster `{name}` exists"));
        let out = Tool::new("kind")
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
        let out = create_command(name, dir).run(cancel).await.map_err(tool)?;
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

pub async fn delete(
    name: &str,
    dir: &Path,
    progress: &dyn Fn(String),
    cancel: &CancellationToken,
) -> Result<bool, ProviderError> {
    if !exists(name, cancel).await? {
        return Ok(false);
    }
    progress(format!("deleting kind cluster `{name}`"));
    let out = Tool::new("kind")
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
        let t = create_command("bookinfo", Path::new("/state/clusters/bookinfo"));
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
    fn old_kind_versions_are_refused() {
        assert!(old_kind("v0.20.0").is_some());
        assert!(old_kind("v0.33.0").is_none());
    }
}
