//! The real istiod of a kwok cluster: `pilot-discovery`, built from the pinned Istio commit,
//! runs as one of the cluster's kwokctl components and serves Istio's sidecar injection and
//! config validation to the cluster's API server, as the chart's istiod pod does on a real
//! cluster. `Net` is the small network that lets the API server reach it.
//!
//! The API server calls a webhook at an endpoint of its Service (`--enable-aggregator-routing`),
//! that is at the istiod pod's IP, which kwok assigns from the node's `podCIDR`. Endpoint
//! addresses may not be loopback, so each cluster gets a network namespace of its own: the
//! host routes the node's pod range (10.249.N.0/24) into it over a veth pair, and the namespace
//! sends every connection to a pod address back to istiod, which listens on the host end of
//! the pair (10.248.N.1) and reaches the API server on 127.0.0.1 like the other components.
//! Nothing else in the host's network changes: deleting the namespace removes the pair, its
//! addresses and the route. Setting it up needs root (CAP_NET_ADMIN).
//!
//! istiod reads its injection template once, at start, from the chart's
//! `istio-sidecar-injector` ConfigMap, and skips injection for good when that is missing; so,
//! like a kubelet that starts a container once its pod exists, the component waits for the
//! chart's istiod Deployment before it starts pilot-discovery.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::{Problem, ProviderError};
use crate::process::Tool;

/// The kwokctl component name; its pid and log files are `pids/istiod.pid` and
/// `logs/istiod.log` in kwokctl's folder for the cluster.
pub const COMPONENT: &str = "istiod";
/// istiod's namespace, as the chart installs it.
const NAMESPACE: &str = "istio-system";

/// The network of one cluster's istiod, from a slot number N chosen once per cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Net {
    /// 0-255: the third octet of the cluster's addresses.
    pub slot: u8,
    /// A short hash of the cluster's state folder, in interface and namespace names.
    id: String,
}

impl Net {
    pub fn netns(&self) -> String {
        format!("bookinfo-up-{}", self.id)
    }
    fn host_if(&self) -> String {
        format!("bu{}h", self.id)
    }
    fn ns_if(&self) -> String {
        format!("bu{}n", self.id)
    }
    /// Where istiod listens: the host's end of the veth pair.
    pub fn istiod_addr(&self) -> String {
        format!("10.248.{}.1", self.slot)
    }
    fn ns_addr(&self) -> String {
        format!("10.248.{}.2", self.slot)
    }
    /// The node's `podCIDR`: kwok gives pods addresses from it.
    pub fn pod_cidr(&self) -> String {
        format!("10.249.{}.0/24", self.slot)
    }

    /// The shell commands that create the namespace, the pair, the addresses, the route and
    /// the namespace's NAT rules.
    fn setup_script(&self) -> String {
        let (ns, h, n) = (self.netns(), self.host_if(), self.ns_if());
        let (ia, na, pods) = (self.istiod_addr(), self.ns_addr(), self.pod_cidr());
        format!(
            "ip netns add {ns}\n\
             ip link add {h} type veth peer name {n} netns {ns}\n\
             ip addr add {ia}/30 dev {h}\n\
             ip link set {h} up\n\
             ip -n {ns} addr add {na}/30 dev {n}\n\
             ip -n {ns} link set {n} up\n\
             ip -n {ns} link set lo up\n\
             ip netns exec {ns} sysctl -qw net.ipv4.ip_forward=1\n\
             ip netns exec {ns} iptables -t nat -A PREROUTING -d {pods} -p tcp -j DNAT --to-destination {ia}\n\
             ip netns exec {ns} iptables -t nat -A POSTROUTING -d {ia} -j MASQUERADE\n\
             ip route add {pods} via {na} dev {h}\n"
        )
    }
}

/// What a plan must have for istiod to run: root, `ip` and `iptables`, the binary.
pub fn preflight(binary: &Path) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !binary.is_file() {
        problems.push(Problem {
            what: format!("istiod binary `{}` is missing", binary.display()),
            fix: "run `just testbed` (it builds pilot-discovery), or point `[cluster.kwok.istiod] binary` at one".into(),
        });
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        problems.push(Problem {
            what: "the kwok cluster's istiod needs root: it gets a network namespace and a veth pair so that the API server can call its webhooks".into(),
            fix: "run as root (`sudo -E bookinfo-up ...`), or remove `[cluster.kwok.istiod]` from the plan (then no pod is injected and no Istio object validated)".into(),
        });
    }
    for tool in ["ip", "iptables"] {
        if crate::process::which(tool).is_none() {
            problems.push(Problem {
                what: format!("`{tool}` is not on PATH; the kwok cluster's istiod needs it"),
                fix: "install iproute2 and iptables (`apt-get install iproute2 iptables`)".into(),
            });
        }
    }
    problems
}

/// The cluster's network slot: the one recorded in `dir`, or a free one, recorded.
pub fn net(dir: &Path) -> Result<Net, ProviderError> {
    let id = short_hash(dir);
    let file = dir.join("istiod-net");
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(slot) = text.trim().parse::<u8>()
    {
        return Ok(Net { slot, id });
    }
    let routes = ipv4_routes();
    let start = u8::from_str_radix(&id[..2], 16).unwrap_or(0);
    let slot = (0..=255u8)
        .map(|i| start.wrapping_add(i))
        .find(|&slot| {
            let candidate = Net {
                slot,
                id: id.clone(),
            };
            [(candidate.istiod_addr(), 30), (candidate.ns_addr(), 30)]
                .into_iter()
                .chain(std::iter::once((format!("10.249.{slot}.0"), 24)))
                .all(|(addr, len)| !overlaps_any(&addr, len, &routes))
                && claim(Path::new(SLOT_CLAIMS), slot, dir)
        })
        .ok_or_else(|| ProviderError::Tool {
            message:
                "no free address range for istiod in 10.248.0.0/15: every /24 is routed already"
                    .into(),
        })?;
    std::fs::write(&file, slot.to_string()).map_err(|e| ProviderError::Tool {
        message: format!("cannot write `{}`: {e}", file.display()),
    })?;
    Ok(Net { slot, id })
}

/// Where clusters claim their slots: one file per slot, created exclusively, naming the
/// cluster's state folder. Two clusters created at once would otherwise both find the same
/// slot unrouted. On tmpfs, like the network namespaces, so a reboot clears both.
const SLOT_CLAIMS: &str = "/run/bookinfo-up/istiod-slots";

/// Claims `slot` for the cluster in `dir`; a claim whose state folder is gone, or records
/// another slot, is stale and taken over (a cluster being created has no record yet: its
/// claim holds).
fn claim(claims: &Path, slot: u8, dir: &Path) -> bool {
    use std::io::Write as _;
    let _ = std::fs::create_dir_all(claims);
    let file = claims.join(slot.to_string());
    let me = dir.to_string_lossy().to_string();
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
        {
            Ok(mut f) => return f.write_all(me.as_bytes()).is_ok(),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_to_string(&file).unwrap_or_default();
                if owner == me {
                    return true;
                }
                let recorded = std::fs::read_to_string(Path::new(&owner).join("istiod-net"))
                    .ok()
                    .and_then(|t| t.trim().parse::<u8>().ok());
                let stale = !Path::new(&owner).is_dir() || recorded.is_some_and(|r| r != slot);
                if owner.is_empty() || !stale {
                    return false;
                }
                let _ = std::fs::remove_file(&file);
            }
            Err(_) => return false,
        }
    }
    false
}

/// Gives the cluster's slot back, when the claim is its own.
pub fn release(net: &Net, dir: &Path) {
    let file = Path::new(SLOT_CLAIMS).join(net.slot.to_string());
    if std::fs::read_to_string(&file).is_ok_and(|o| o == dir.to_string_lossy()) {
        let _ = std::fs::remove_file(file);
    }
}

/// Creates the network unless it is there (a reboot removes it; the cluster's record stays).
pub async fn ensure_net(net: &Net, cancel: &CancellationToken) -> Result<(), ProviderError> {
    let present = Path::new("/run/netns").join(net.netns()).exists()
        && Path::new("/sys/class/net").join(net.host_if()).exists();
    if present {
        return Ok(());
    }
    // Whatever is left of a half-made network goes first.
    delete_net(net, cancel).await;
    let out = Tool::new("sh")
        .args(["-euc", &net.setup_script()])
        .run(cancel)
        .await?;
    if !out.success {
        delete_net(net, cancel).await;
        return Err(ProviderError::Tool {
            message: format!(
                "cannot set up the network of the cluster's istiod (namespace {}):\n{}",
                net.netns(),
                out.tail(10)
            ),
        });
    }
    Ok(())
}

/// Removes the namespace, and with it the veth pair, its addresses and the route.
pub async fn delete_net(net: &Net, cancel: &CancellationToken) {
    let _ = Tool::new("ip")
        .args(["netns", "del", &net.netns()])
        .run(cancel)
        .await;
    let _ = Tool::new("ip")
        .args(["link", "del", &net.host_if()])
        .run(cancel)
        .await;
}

/// What the component runs, written as a script into the cluster's state folder.
pub struct Launch<'a> {
    pub binary: &'a Path,
    /// kubectl, for the wait on the chart's Deployment.
    pub kubectl: PathBuf,
    pub kubeconfig: &'a Path,
    /// istiod's working folder: it resolves `./etc/istio/...` and `./var/...` against it.
    pub workdir: PathBuf,
    pub cluster: &'a str,
    pub net: &'a Net,
}

impl Launch<'_> {
    /// The component's script: wait for the chart's Deployment (a kubelet starts the
    /// container once its pod exists), then become pilot-discovery, with the arguments and
    /// environment of the chart's istiod container, every listener on the cluster's address.
    pub fn script(&self) -> String {
        let addr = self.net.istiod_addr();
        let q = |p: &Path| shell_quote(&p.to_string_lossy());
        let env = [
            ("REVISION", "default".to_string()),
            ("PILOT_CERT_PROVIDER", "istiod".into()),
            ("POD_NAME", format!("istiod-{}", self.cluster)),
            ("POD_NAMESPACE", NAMESPACE.into()),
            ("SERVICE_ACCOUNT", "istiod".into()),
            ("PILOT_TRACE_SAMPLING", "1".into()),
            ("PILOT_ENABLE_ANALYSIS", "false".into()),
            ("CLUSTER_ID", "Kubernetes".into()),
            ("GOMAXPROCS", "2".into()),
            ("PLATFORM", String::new()),
        ];
        let exports: String = env
            .iter()
            .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
            .collect();
        format!(
            "#!/bin/sh\n\
             # The istiod of kwok cluster `{cluster}`, started by kwokctl as component `{COMPONENT}`;\n\
             # written by bookinfo-up. It waits for the chart's istiod Deployment (kwokctl stops this\n\
             # script by its pid; bookinfo-down also stops the wait's kubectl by process group).\n\
             # The wait is a watch; it is started again after a second only if the API server\n\
             # went away meanwhile.\n\
             set -e\n\
             cd {workdir}\n\
             until {kubectl} --kubeconfig {kubeconfig} wait --for=create -n {NAMESPACE} deployment/istiod \\\n\
             \x20 --timeout=-1s; do sleep 1; done\n\
             {exports}\
             exec {binary} discovery --kubeconfig {kubeconfig} \\\n\
             \x20 --monitoringAddr={addr}:15014 --log_output_level=default:info --domain cluster.local \\\n\
             \x20 --keepaliveMaxServerConnectionAge 30m --httpsAddr={addr}:15017 --httpAddr={addr}:8080 \\\n\
             \x20 --grpcAddr={addr}:15010 --secureGRPCAddr={addr}:15012 --ctrlz_address={addr}\n",
            cluster = self.cluster,
            workdir = q(&self.workdir),
            kubectl = q(&self.kubectl),
            kubeconfig = q(self.kubeconfig),
            binary = q(self.binary),
        )
    }

    /// Writes the script (executable) and istiod's working folder; returns the script's path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, ProviderError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |what: &Path, e: std::io::Error| ProviderError::Tool {
            message: format!("cannot write `{}`: {e}", what.display()),
        };
        std::fs::create_dir_all(&self.workdir).map_err(|e| io(&self.workdir, e))?;
        let script = dir.join(COMPONENT);
        std::fs::write(&script, self.script()).map_err(|e| io(&script, e))?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io(&script, e))?;
        Ok(script)
    }
}

/// The `components` entry of a kwokctl configuration that runs `script` from `workdir`
/// (kwokctl's folder for the cluster, where its pid and log files go).
pub fn component_config(script: &Path, workdir: &Path) -> String {
    format!(
        "components:\n- name: {COMPONENT}\n  binary: {}\n  workDir: {}\n",
        yaml_quote(&script.to_string_lossy()),
        yaml_quote(&workdir.to_string_lossy()),
    )
}

/// Kills what is left of the component's process group (the wait's kubectl, when istiod never
/// started): kwokctl stops a component by its pid alone.
pub fn kill_group(pid: i32) {
    if pid > 1 {
        // SAFETY: signals a process group that kwokctl started with setsid for this cluster.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

fn short_hash(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(dir.to_string_lossy().as_bytes());
    hex::encode(&digest[..4])
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn yaml_quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The host's IPv4 routes as (network, prefix length), from /proc/net/route.
fn ipv4_routes() -> Vec<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?.swap_bytes();
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?.swap_bytes();
            // The default route overlaps everything and routes nothing of ours.
            (mask != 0).then_some((dest, mask.count_ones()))
        })
        .collect()
}

fn overlaps_any(addr: &str, len: u32, routes: &[(u32, u32)]) -> bool {
    let Ok(ip) = addr.parse::<std::net::Ipv4Addr>() else {
        return true;
    };
    let ip = u32::from(ip);
    routes.iter().any(|&(net, rlen)| {
        let common = len.min(rlen);
        let mask = if common == 0 {
            0
        } else {
            u32::MAX << (32 - common)
        };
        ip & mask == net & mask
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_claimed_once() {
        let claims = tempfile::tempdir().unwrap();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        assert!(claim(claims.path(), 7, a.path()));
        assert!(
            claim(claims.path(), 7, a.path()),
            "a cluster keeps its own claim"
        );
        assert!(
            !claim(claims.path(), 7, b.path()),
            "taken by a cluster being made"
        );
        std::fs::write(a.path().join("istiod-net"), "7").unwrap();
        assert!(
            !claim(claims.path(), 7, b.path()),
            "taken by a live cluster"
        );
        std::fs::write(a.path().join("istiod-net"), "9").unwrap();
        assert!(
            claim(claims.path(), 7, b.path()),
            "a stale claim is taken over"
        );
        let c = tempfile::tempdir().unwrap();
        let gone = a.path().to_path_buf();
        drop(a);
        assert!(claim(claims.path(), 9, &gone));
        assert!(
            claim(claims.path(), 9, c.path()),
            "a vanished folder's claim is stale"
        );
    }

    #[test]
    fn ranges_that_overlap_a_route_are_taken() {
        let routes = vec![(u32::from(std::net::Ipv4Addr::new(10, 249, 7, 0)), 24)];
        assert!(overlaps_any("10.249.7.0", 24, &routes));
        assert!(overlaps_any("10.249.0.0", 16, &routes));
        assert!(!overlaps_any("10.249.8.0", 24, &routes));
        assert!(!overlaps_any("10.248.7.1", 30, &routes));
    }

    #[test]
    fn the_script_waits_for_the_chart_then_becomes_pilot_discovery() {
        let net = Net {
            slot: 7,
            id: "0a1b2c3d".into(),
        };
        let launch = Launch {
            binary: Path::new("/bin dir/pilot-discovery"),
            kubectl: PathBuf::from("/usr/bin/kubectl"),
            kubeconfig: Path::new("/state/kubeconfig"),
            workdir: PathBuf::from("/state/istiod-work"),
            cluster: "sim",
            net: &net,
        };
        let s = launch.script();
        assert!(s.contains("wait --for=create -n istio-system deployment/istiod"));
        assert!(s.contains("exec '/bin dir/pilot-discovery' discovery"));
        assert!(s.contains("--httpsAddr=10.248.7.1:15017"));
        assert!(s.contains("export POD_NAMESPACE='istio-system'"));
        assert_eq!(net.pod_cidr(), "10.249.7.0/24");
        assert_eq!(net.netns(), "bookinfo-up-0a1b2c3d");
        assert!(
            net.host_if().len() <= 15,
            "interface names are at most 15 bytes"
        );
        assert!(net.setup_script().contains(
            "iptables -t nat -A PREROUTING -d 10.249.7.0/24 -p tcp -j DNAT --to-destination 10.248.7.1"
        ));
    }
}
