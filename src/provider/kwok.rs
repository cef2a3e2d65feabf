//! The `kwok` provider: `kwokctl` with its binary runtime. A real etcd, kube-apiserver,
//! controller-manager and scheduler run as local processes; kwok fakes nodes and kubelets so
//! pods become Ready without containers. No container engine is needed.
//!
//! kwokctl's work folder (`KWOK_WORKDIR`) and the kubeconfig live in the engine's state
//! folder for the cluster, so nothing is written to `~/.kwok` or `~/.kube/config`.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use tokio_util::sync::CancellationToken;

use super::istiod::{self, Launch, Net};
use super::{Access, Problem, ProviderError};
use crate::kube::{FIELD_MANAGER, Kube};
use crate::process::Tool;

/// Binaries kwokctl needs for the binary runtime, by the flag that names each.
pub const BINARIES: &[(&str, &str)] = &[
    ("kube-apiserver", "--kube-apiserver-binary"),
    (
        "kube-controller-manager",
        "--kube-controller-manager-binary",
    ),
    ("kube-scheduler", "--kube-scheduler-binary"),
    ("kwok", "--kwok-controller-binary"),
    ("etcd", "--etcd-binary"),
];

/// What the plan asks of the kwok cluster.
pub struct Spec<'a> {
    pub name: &'a str,
    /// The plan whose run creates the cluster (its creation record, see `ownership`).
    pub plan: &'a str,
    pub nodes: u32,
    pub binaries: Option<&'a Path>,
    pub apiserver_args: &'a [String],
    pub kube_version: Option<&'a str>,
    /// pilot-discovery, to run a real istiod beside the cluster (see `istiod`).
    pub istiod: Option<&'a Path>,
}

pub fn preflight(binaries: Option<&Path>, istiod: Option<&Path>) -> Vec<Problem> {
    let mut problems = istiod.map(istiod::preflight).unwrap_or_default();
    if crate::process::which("kwokctl").is_none() {
        problems.push(Problem {
            what: "`kwokctl` is not on PATH".into(),
            fix: "install kwokctl (https://kwok.sigs.k8s.io/docs/user/installation/), or here `just testbed` then `eval \"$(just testbed-env)\"`".into(),
        });
    }
    // kwokctl's binary runtime starts etcd and the control plane through kubectl-free
    // processes but uses kubectl for some operations.
    if crate::process::which("kubectl").is_none() {
        problems.push(Problem {
            what: "`kubectl` is not on PATH; kwokctl's binary runtime needs it".into(),
            fix: "install kubectl, or `eval \"$(just testbed-env)\"`".into(),
        });
    }
    if let Some(dir) = binaries {
        for (bin, _) in BINARIES {
            if !dir.join(bin).is_file() {
                problems.push(Problem {
                    what: format!("`{}` is missing", dir.join(bin).display()),
                    fix: "run `just testbed`, or point `[cluster.kwok] binaries` at a folder holding kube-apiserver, kube-controller-manager, kube-scheduler, kwok and etcd".into(),
                });
            }
        }
    }
    problems
}

pub(super) fn kwokctl(dir: &Path) -> Tool {
    Tool::new("kwokctl").env("KWOK_WORKDIR", dir.join("kwok"))
}

/// The `kwokctl create cluster` command line for a spec.
pub fn create_command(spec: &Spec<'_>, dir: &Path) -> Tool {
    let mut t = kwokctl(dir)
        .arg("--config")
        .arg(dir.join(PORTS_CONFIG))
        .args([
            "create",
            "cluster",
            "--name",
            spec.name,
            "--runtime",
            "binary",
            "--wait",
            "120s",
        ])
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"));
    if let Some(b) = spec.binaries {
        for (bin, flag) in BINARIES {
            t = t.arg(*flag).arg(b.join(bin));
        }
    }
    if let Some(v) = spec.kube_version {
        t = t.env("KWOK_KUBE_VERSION", v);
    }
    for a in spec.apiserver_args {
        t = t.arg("--extra-args").arg(format!("kube-apiserver={a}"));
    }
    if spec.istiod.is_some() {
        // Webhooks are called at an endpoint of their Service (the istiod pod's address, routed
        // to istiod), not at its ClusterIP, which nothing serves without kube-proxy.
        t = t
            .arg("--extra-args")
            .arg("kube-apiserver=enable-aggregator-routing=true");
    }
    t
}

/// kwokctl configuration file, in the cluster's state folder, that fixes the component ports
/// and the address they listen on.
pub const PORTS_CONFIG: &str = "kwokctl-ports.yaml";

/// Ports chosen by the kernel for each component, written as a kwokctl configuration, with
/// every component bound to 127.0.0.1: kwokctl's default, 0.0.0.0, would put etcd (plain
/// HTTP, no authentication) and the API server on every network the machine is on.
///
/// kwokctl picks ports by counting down from 32767 and only avoids clusters of its own work
/// folder, so two clusters created at once from different state folders (parallel CI jobs,
/// tests) can take the same ports, and a component then fails to listen. Ephemeral ports
/// from the kernel (held until all are chosen) avoid that race.
pub fn ports_config() -> std::io::Result<String> {
    let listeners: Vec<std::net::TcpListener> = (0..6)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?;
    Ok(format!(
        "kind: KwokctlConfiguration\napiVersion: config.kwok.x-k8s.io/v1alpha1\noptions:\n  bindAddress: 127.0.0.1\n  etcdPort: {}\n  etcdPeerPort: {}\n  kubeApiserverPort: {}\n  kubeControllerManagerPort: {}\n  kubeSchedulerPort: {}\n  kwokControllerPort: {}\n",
        ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]
    ))
}

/// Whether kwokctl has the cluster: what `kwokctl get clusters` lists (a folder under its
/// workdir's `clusters/` holding `kwok.yaml`, kwok's `ListClusters`), read directly rather
/// than by spawning it.
pub async fn exists(
    name: &str,
    dir: &Path,
    _cancel: &CancellationToken,
) -> Result<bool, ProviderError> {
    Ok(dir
        .join("kwok/clusters")
        .join(name)
        .join("kwok.yaml")
        .is_file())
}

pub async fn ensure(
    spec: &Spec<'_>,
    dir: &Path,
    progress: &dyn Fn(String),
    cancel: &CancellationToken,
) -> Result<Access, ProviderError> {
    let kubeconfig = dir.join("kubeconfig");
    let cluster_dir = dir.join("kwok/clusters").join(spec.name);
    let net = match spec.istiod {
        Some(binary) => {
            let net = istiod::net(dir)?;
            istiod::ensure_net(&net, cancel).await?;
            launch(spec, binary, dir, &kubeconfig, &net).write(dir)?;
            Some(net)
        }
        None => None,
    };
    if exists(spec.name, dir, cancel).await? {
        progress(format!("kwok cluster `{}` exists", spec.name));
        let stopped = stopped_components(&cluster_dir);
        if stopped.is_empty() && answers(&kubeconfig).await {
            return ready(spec, dir, kubeconfig, net.as_ref(), cancel).await;
        }
        // Stopped (a reboot, a killed component): `kwokctl start` brings back what is not
        // running and leaves the rest alone. It judges by the pid files with signal 0, which a
        // zombie still answers (an init that reaps late), so a stopped component's pid file
        // goes first: without one, kwokctl starts the component.
        for name in &stopped {
            let _ = std::fs::remove_file(cluster_dir.join("pids").join(format!("{name}.pid")));
        }
        if stopped.is_empty() {
            progress(format!("starting kwok cluster `{}`", spec.name));
        } else {
            progress(format!(
                "restarting stopped components of kwok cluster `{}`: {}",
                spec.name,
                stopped.join(", ")
            ));
        }
        let out = kwokctl(dir)
            .args(["start", "cluster", "--name", spec.name, "--wait", "120s"])
            .run(cancel)
            .await?;
        if !out.success {
            return Err(ProviderError::Tool {
                message: format!(
                    "kwokctl start cluster {} failed:\n{}",
                    spec.name,
                    out.tail(15)
                ),
            });
        }
    } else {
        super::ownership::record_creation(dir, spec.plan)?;
        progress(format!("creating kwok cluster `{}`", spec.name));
        let mut config = ports_config().map_err(|e| ProviderError::Tool {
            message: format!("cannot choose ports for the cluster: {e}"),
        })?;
        if spec.istiod.is_some() {
            config.push_str(&istiod::component_config(
                &dir.join(istiod::COMPONENT),
                &cluster_dir,
            ));
        }
        std::fs::write(dir.join(PORTS_CONFIG), config).map_err(|e| ProviderError::Tool {
            message: format!("cannot write `{}`: {e}", dir.join(PORTS_CONFIG).display()),
        })?;
        let out = create_command(spec, dir).run(cancel).await?;
        if !out.success {
            return Err(ProviderError::Tool {
                message: format!(
                    "kwokctl create cluster {} failed:\n{}",
                    spec.name,
                    out.tail(20)
                ),
            });
        }
    }
    if !kubeconfig.is_file() {
        super::write_kubeconfig(kwokctl(dir), spec.name, &kubeconfig, cancel).await?;
    }
    ready(spec, dir, kubeconfig, net.as_ref(), cancel).await
}

/// The log file of a component of the cluster, in kwokctl's folder for it.
pub fn component_log(dir: &Path, name: &str, component: &str) -> PathBuf {
    dir.join("kwok/clusters")
        .join(name)
        .join("logs")
        .join(format!("{component}.log"))
}

/// How the cluster's istiod component starts (see `istiod::Launch`).
fn launch<'a>(
    spec: &'a Spec<'_>,
    binary: &'a Path,
    dir: &Path,
    kubeconfig: &'a Path,
    net: &'a Net,
) -> Launch<'a> {
    let kubectl = spec
        .binaries
        .map(|b| b.join("kubectl"))
        .filter(|k| k.is_file())
        .or_else(|| crate::process::which("kubectl"))
        .unwrap_or_else(|| PathBuf::from("kubectl"));
    Launch {
        binary,
        kubectl,
        kubeconfig,
        workdir: dir.join("istiod-work"),
        cluster: spec.name,
        net,
    }
}

/// The cluster's nodes, made and Ready, and how to reach it.
/// Stops at once when the run is cancelled: nothing here runs a tool that needs a grace.
async fn ready(
    spec: &Spec<'_>,
    dir: &Path,
    kubeconfig: PathBuf,
    net: Option<&Net>,
    cancel: &CancellationToken,
) -> Result<Access, ProviderError> {
    let log = dir
        .join("kwok/clusters")
        .join(spec.name)
        .join("logs/kwok-controller.log");
    let nodes = async {
        let kube = Kube::connect(&kubeconfig, None).await?;
        let node = NodeShape {
            kubelet_version: spec.kube_version,
            pod_cidr: net.map(Net::pod_cidr),
        };
        ensure_nodes(&kube, spec.nodes, &node, &log).await
    };
    tokio::select! {
        r = nodes => r?,
        _ = cancel.cancelled() => return Err(ProviderError::Cancelled),
    }
    Ok(Access {
        kubeconfig,
        context: None,
        managed: true,
    })
}

/// Components of a kwokctl binary-runtime cluster (by the pid files in its folder) whose
/// process is gone, sorted. A cluster that was never started has no pid files: nothing here.
fn stopped_components(cluster_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(cluster_dir.join("pids")) else {
        return Vec::new();
    };
    let mut stopped: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let name = path.file_stem()?.to_string_lossy().into_owned();
            let pid: i32 = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
            (!process_alive(pid)).then_some(name)
        })
        .collect();
    stopped.sort();
    stopped
}

/// Whether process `pid` exists and is not a zombie (a killed component nobody reaped yet).
fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only asks whether the process exists (EPERM: it does).
    let exists = pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
    // /proc/<pid>/stat: "pid (comm) state ...", comm may hold spaces and parentheses.
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    exists && !zombie
}

/// Whether the API server of a kubeconfig answers within 2 s.
async fn answers(kubeconfig: &Path) -> bool {
    if !kubeconfig.is_file() {
        return false;
    }
    let Ok(kube) = Kube::connect(kubeconfig, None).await else {
        return false;
    };
    matches!(
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            kube.client.apiserver_version()
        )
        .await,
        Ok(Ok(_))
    )
}

/// Fake nodes that kwok manages, without taints so every pod can be scheduled.
async fn ensure_nodes(
    kube: &Kube,
    count: u32,
    shape: &NodeShape<'_>,
    controller_log: &Path,
) -> Result<(), ProviderError> {
    let api: kube::Api<Node> = kube::Api::all(kube.client.clone());
    // One LIST says which nodes exist and which are Ready already (on every run but the
    // first, all of them: nothing more to ask).
    let listed = api
        .list(&kube::api::ListParams::default())
        .await
        .map_err(crate::error::StepError::from)?;
    let existing: std::collections::BTreeMap<String, bool> = listed
        .items
        .iter()
        .map(|n| (n.metadata.name.clone().unwrap_or_default(), node_ready(n)))
        .collect();
    let wanted: Vec<String> = (0..count).map(|i| format!("kwok-node-{i}")).collect();
    if wanted.iter().all(|n| existing.get(n) == Some(&true)) {
        return Ok(());
    }
    for name in &wanted {
        if existing.contains_key(name) {
            continue;
        }
        let name = name.clone();
        let node: Node = serde_json::from_value(node_manifest(&name, shape)).expect("a valid Node");
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await
        .map_err(crate::error::StepError::from)?;
    }
    // The scheduler places nothing on a node until kwok reports it Ready (it carries the
    // not-ready taint until then). A node that never gets there means the kwok controller is
    // not running; say so here rather than let every rollout time out later.
    for i in 0..count {
        let name = format!("kwok-node-{i}");
        let ready = kube::runtime::wait::await_condition(api.clone(), &name, |n: Option<&Node>| {
            n.is_some_and(node_ready)
        });
        match tokio::time::timeout(std::time::Duration::from_secs(60), ready).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(ProviderError::Tool {
                    message: format!("cannot watch node {name}: {e}"),
                });
            }
            Err(_) => {
                return Err(ProviderError::Tool {
                    message: format!(
                        "node {name} did not become Ready within 60s: is the kwok controller running? see {}",
                        controller_log.display()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Ready, and free of the taints that keep pods off a node.
fn node_ready(n: &Node) -> bool {
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let tainted = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| {
            t.iter()
                .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        });
    ready && !tainted
}

/// What a node reports beyond kwok's defaults.
#[derive(Debug, Default)]
pub struct NodeShape<'a> {
    /// The kubelet version the node reports. Istio injects native sidecars when every node's
    /// kubelet is 1.33 or newer, so the simulated nodes report the real plan's Kubernetes
    /// version, not kwok's own (`kwok-v0.7.0`).
    pub kubelet_version: Option<&'a str>,
    /// The range kwok gives pod addresses from (routed to the cluster's istiod).
    pub pod_cidr: Option<String>,
}

/// A node kwok takes over (by its annotation), with room for the whole playground.
pub fn node_manifest(name: &str, shape: &NodeShape<'_>) -> serde_json::Value {
    let mut node = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": { "kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0" },
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
            },
        },
        "status": {
            "allocatable": { "cpu": "32", "memory": "256Gi", "pods": "110" },
            "capacity": { "cpu": "32", "memory": "256Gi", "pods": "110" },
        },
    });
    if let Some(v) = shape.kubelet_version {
        node["status"]["nodeInfo"] = serde_json::json!({ "kubeletVersion": v });
    }
    if let Some(cidr) = &shape.pod_cidr {
        node["spec"] = serde_json::json!({ "podCIDR": cidr, "podCIDRs": [cidr] });
    }
    node
}

pub async fn delete(
    name: &str,
    dir: &Path,
    progress: &dyn Fn(String),
    cancel: &CancellationToken,
) -> Result<bool, ProviderError> {
    if !exists(name, dir, cancel).await? {
        delete_istiod_net(dir, cancel).await?;
        return Ok(false);
    }
    progress(format!("deleting kwok cluster `{name}`"));
    let istiod_pid: Option<i32> = std::fs::read_to_string(
        dir.join("kwok/clusters")
            .join(name)
            .join("pids")
            .join(format!("{}.pid", istiod::COMPONENT)),
    )
    .ok()
    .and_then(|p| p.trim().parse().ok());
    let out = kwokctl(dir)
        .args(["delete", "cluster", "--name", name, "--kubeconfig"])
        .arg(dir.join("kubeconfig"))
        .run(cancel)
        .await?;
    if !out.success {
        return Err(ProviderError::Tool {
            message: format!("kwokctl delete cluster {name} failed:\n{}", out.tail(15)),
        });
    }
    if let Some(pid) = istiod_pid {
        istiod::kill_group(pid);
    }
    delete_istiod_net(dir, cancel).await?;
    let _ = std::fs::remove_file(dir.join("kubeconfig"));
    Ok(true)
}

/// Removes the network of the cluster's istiod, if it has one.
async fn delete_istiod_net(dir: &Path, cancel: &CancellationToken) -> Result<(), ProviderError> {
    if dir.join("istiod-net").is_file() {
        let net = istiod::net(dir)?;
        istiod::delete_net(&net, cancel).await;
        istiod::release(&net, dir);
        let _ = std::fs::remove_file(dir.join("istiod-net"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_components_are_those_whose_process_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        assert!(stopped_components(dir.path()).is_empty(), "no pids folder");
        let pids = dir.path().join("pids");
        std::fs::create_dir(&pids).unwrap();
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        gone.wait().unwrap();
        std::fs::write(
            pids.join("kube-apiserver.pid"),
            std::process::id().to_string(),
        )
        .unwrap();
        std::fs::write(pids.join("kwok-controller.pid"), gone_pid.to_string()).unwrap();
        std::fs::write(pids.join("etcd.pid"), format!("{}\n", std::process::id())).unwrap();
        // A zombie: waitid(WNOWAIT) returns once `true` has exited and leaves it unreaped.
        let zombie = std::process::Command::new("true").spawn().unwrap();
        // SAFETY: waitid on our own child; `info` is a plain C struct it fills.
        let r = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                zombie.id(),
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(r, 0, "waitid: {}", std::io::Error::last_os_error());
        std::fs::write(pids.join("kube-scheduler.pid"), zombie.id().to_string()).unwrap();
        assert_eq!(
            stopped_components(dir.path()),
            vec!["kube-scheduler", "kwok-controller"]
        );
        drop(zombie);
    }
}
