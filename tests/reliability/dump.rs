//! The normalised dump of everything plans/sim.toml owns, so that runs on different clusters,
//! or the same cluster after different histories, can be compared for equality.
//!
//! # What is in it
//!
//! Every object of every listable kind, cluster-scoped or in any namespace, that the plan
//! owns:
//! - objects the engine created: label `bookinfo-up.io/plan=bookinfo-sim` (namespaces,
//!   Bookinfo, the addons, the Gateways and VirtualServices, the kiali ConfigMap it merges
//!   Grafana's settings into);
//! - objects its Helm releases created: label `app.kubernetes.io/managed-by=Helm` or
//!   annotation `meta.helm.sh/release-name` (istio-base, istiod, istio-ingressgateway,
//!   including the Service whose ports the plan patches);
//! - each Helm release as `helm list` and `helm get values` show it: name, namespace, chart,
//!   app version, status and the user-supplied values.
//!
//! Left out, as made by controllers rather than by the plan: objects with a controller owner
//! reference (ReplicaSets, Pods, EndpointSlices), and the kinds events, leases, endpoints,
//! endpointslices, pods, replicasets and controllerrevisions. Helm's release Secrets
//! (`type: helm.sh/release.v1`) are replaced by the `helm list` view: they hold timestamps and
//! a revision number that counts attempts, not state.
//!
//! # Normalisation
//!
//! Removed from every object: `status`; `metadata.uid`, `resourceVersion`, `generation`,
//! `creationTimestamp`, `managedFields`, `selfLink`, the uids of owner references; the
//! annotations `deployment.kubernetes.io/revision` (a counter the Deployment controller keeps)
//! and `kubectl.kubernetes.io/last-applied-configuration`; in pod templates the annotation
//! `kubectl.kubernetes.io/restartedAt` (when Kiali was last restarted: history, not state).
//! Removed from Services: `spec.clusterIP` and `spec.clusterIPs` (allocated by the API server)
//! and every port's `nodePort` except those the plan pins (the `*_node_port` variables of
//! plans/shared/bookinfo-flow.toml: 30666 and 32667); the chart's ports get node ports the
//! API server picks at random. From Helm releases: the revision and the update time. Empty
//! label and annotation maps, and maps left empty by these removals, are removed too.
//!
//! Everything else (spec, data, labels, annotations, the pinned node ports) must be
//! identical, except in Istio's validating webhook
//! configurations (those of the istio-base and istiod releases, `istio-validator-*` and
//! `istiod-default-validator`) and the sidecar injector's mutating one
//! (`istio-sidecar-injector`): each validating webhook's `failurePolicy` and every `caBundle`
//! (each istiod makes its own CA) belong to istiod's webhook controller, which sets them at run time; the charts write
//! `failurePolicy: Ignore` on install and nothing on upgrade (which the API server defaults to
//! `Fail`), so a release upgraded once (say after an interrupted install) differs there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::harness::{PLAN_NAME, Sim, repo};

/// Kinds not listed at all: controller-made, or volatile.
const SKIPPED_KINDS: &[&str] = &[
    "events",
    "events.events.k8s.io",
    "leases.coordination.k8s.io",
    "endpoints",
    "endpointslices.discovery.k8s.io",
    "pods",
    "replicasets.apps",
    "controllerrevisions.apps",
    "componentstatuses",
];

/// Every object of every listable kind but `SKIPPED_KINDS`, as one `kubectl get -o json`
/// list; `kubectl` runs kubectl against the cluster and returns its stdout.
pub fn list_stable_objects(kubectl: &dyn Fn(&[&str]) -> String) -> Value {
    let kinds: Vec<String> = kubectl(&["api-resources", "--verbs=list", "-o", "name"])
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !SKIPPED_KINDS.contains(k))
        .map(str::to_string)
        .collect();
    serde_json::from_str(&kubectl(&["get", &kinds.join(","), "-A", "-o", "json"]))
        .expect("kubectl prints JSON")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    /// `kind.group ns/name` → normalised object.
    pub objects: BTreeMap<String, Value>,
    /// `ns/release` → what helm shows of it.
    pub releases: BTreeMap<String, Value>,
}

/// The node ports the plan pins: every `*_node_port` variable of the shared flow.
pub fn pinned_node_ports() -> BTreeSet<i64> {
    let text = std::fs::read_to_string(repo().join("plans/shared/bookinfo-flow.toml")).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let ports: BTreeSet<i64> = doc["vars"]
        .as_table()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.ends_with("_node_port"))
        .filter_map(|(_, v)| v.as_integer())
        .collect();
    assert!(!ports.is_empty(), "the flow pins node ports");
    ports
}

impl Dump {
    /// Reads the dump from the cluster of `sim`.
    pub fn take(sim: &Sim) -> Self {
        Self::take_with(sim, &sim.kubeconfig())
    }

    pub fn take_with(sim: &Sim, kubeconfig: &Path) -> Self {
        let cache = sim.dir().join("kubectl-cache");
        let kubectl = |args: &[&str]| {
            let out = crate::harness::kubectl(&sim.tb, kubeconfig, &cache, args);
            assert!(
                out.status.success(),
                "kubectl {:?}: {}",
                &args[..args.len().min(3)],
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let list = list_stable_objects(&kubectl);
        let pinned = pinned_node_ports();
        let mut objects = BTreeMap::new();
        for o in list["items"].as_array().into_iter().flatten() {
            if !owned(o) {
                continue;
            }
            let api_version = o["apiVersion"].as_str().unwrap_or_default();
            let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
            let key = format!(
                "{}.{} {}/{}",
                o["kind"].as_str().unwrap_or_default(),
                if group.is_empty() { "core" } else { group },
                o["metadata"]["namespace"].as_str().unwrap_or("-"),
                o["metadata"]["name"].as_str().unwrap_or_default()
            );
            objects.insert(key, normalise(o.clone(), &pinned));
        }

        let helm = |args: &[&str]| {
            let out = std::process::Command::new(sim.tb.bin.join("helm"))
                .env("PATH", &sim.path_env)
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(args)
                .output()
                .expect("helm runs");
            assert!(
                out.status.success(),
                "helm {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
        };
        let mut releases = BTreeMap::new();
        for r in helm(&["list", "-A", "-a", "-o", "json"])
            .as_array()
            .into_iter()
            .flatten()
        {
            let (name, ns) = (
                r["name"].as_str().unwrap_or_default(),
                r["namespace"].as_str().unwrap_or_default(),
            );
            let values = helm(&["get", "values", name, "-n", ns, "-o", "json"]);
            releases.insert(
                format!("{ns}/{name}"),
                serde_json::json!({
                    "chart": r["chart"], "app_version": r["app_version"],
                    "status": r["status"], "values": values,
                }),
            );
        }
        Dump { objects, releases }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} objects, {} helm releases",
            self.objects.len(),
            self.releases.len()
        )
    }

    /// `None` when equal; otherwise what differs, readable.
    pub fn diff(&self, other: &Dump) -> Option<String> {
        if self == other {
            return None;
        }
        let mut out = String::new();
        for (label, a, b) in [
            ("object", &self.objects, &other.objects),
            ("release", &self.releases, &other.releases),
        ] {
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                out.push_str(&format!("only in the first: {label} {k}\n"));
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push_str(&format!("only in the second: {label} {k}\n"));
            }
            for (k, va) in a {
                if let Some(vb) = b.get(k)
                    && va != vb
                {
                    out.push_str(&format!("differs: {label} {k}\n{}", line_diff(va, vb)));
                }
            }
        }
        Some(out)
    }

    /// Writes the dump as pretty JSON (for a human to diff after a failure).
    pub fn save(&self, path: &Path) {
        let v = serde_json::json!({"objects": self.objects, "releases": self.releases});
        let _ = std::fs::create_dir_all(path.parent().unwrap());
        std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
}

/// Asserts two dumps are equal, saving both under the target folder when not.
pub fn assert_same(reference: &Dump, got: &Dump, what: &str) {
    if let Some(d) = reference.diff(got) {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-dumps");
        let name: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        reference.save(&dir.join(format!("{name}.reference.json")));
        got.save(&dir.join(format!("{name}.got.json")));
        panic!(
            "{what}: the dump differs from the reference (both saved in {}):\n{d}",
            dir.display()
        );
    }
}

/// Whether the plan owns this object (see the module documentation).
fn owned(o: &Value) -> bool {
    let meta = &o["metadata"];
    if meta["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["controller"] == true))
    {
        return false;
    }
    if o["kind"] == "Secret" && o["type"] == "helm.sh/release.v1" {
        return false;
    }
    meta["labels"]["bookinfo-up.io/plan"] == PLAN_NAME
        || meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        || meta["annotations"]["meta.helm.sh/release-name"].is_string()
}

/// Applies the normalisation of the module documentation.
pub fn normalise(mut o: Value, pinned_node_ports: &BTreeSet<i64>) -> Value {
    let obj = o.as_object_mut().unwrap();
    obj.remove("status");
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(k);
        }
        if let Some(refs) = meta
            .get_mut("ownerReferences")
            .and_then(Value::as_array_mut)
        {
            for r in refs {
                if let Some(r) = r.as_object_mut() {
                    r.remove("uid");
                }
            }
        }
        for m in ["labels", "annotations"] {
            if meta
                .get(m)
                .and_then(Value::as_object)
                .is_some_and(|o| o.is_empty())
            {
                meta.remove(m);
            }
        }
        remove_keys(
            meta,
            "annotations",
            &[
                "deployment.kubernetes.io/revision",
                "kubectl.kubernetes.io/last-applied-configuration",
            ],
        );
    }
    if let Some(tmeta) = o
        .pointer_mut("/spec/template/metadata")
        .and_then(Value::as_object_mut)
    {
        remove_keys(tmeta, "annotations", &["kubectl.kubernetes.io/restartedAt"]);
    }
    let release = o["metadata"]["annotations"]["meta.helm.sh/release-name"].as_str();
    let validating = o["kind"] == "ValidatingWebhookConfiguration";
    if (validating || o["kind"] == "MutatingWebhookConfiguration")
        && matches!(release, Some("istio-base" | "istiod"))
    {
        for w in o["webhooks"].as_array_mut().into_iter().flatten() {
            if validating && let Some(w) = w.as_object_mut() {
                w.remove("failurePolicy");
            }
            if let Some(c) = w.get_mut("clientConfig").and_then(Value::as_object_mut) {
                c.remove("caBundle");
            }
        }
    }
    if o["kind"] == "Service"
        && let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
        for p in spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let pinned = p["nodePort"]
                .as_i64()
                .is_some_and(|n| pinned_node_ports.contains(&n));
            if !pinned && let Some(p) = p.as_object_mut() {
                p.remove("nodePort");
            }
        }
    }
    o
}

fn remove_keys(meta: &mut serde_json::Map<String, Value>, map: &str, keys: &[&str]) {
    if let Some(m) = meta.get_mut(map).and_then(Value::as_object_mut) {
        for k in keys {
            m.remove(*k);
        }
        if m.is_empty() {
            meta.remove(map);
        }
    }
}

/// The lines of the pretty JSON of `a` missing from `b` (-) and the other way round (+).
fn line_diff(a: &Value, b: &Value) -> String {
    let la: Vec<String> = serde_json::to_string_pretty(a)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let lb: Vec<String> = serde_json::to_string_pretty(b)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let sa: BTreeSet<&String> = la.iter().collect();
    let sb: BTreeSet<&String> = lb.iter().collect();
    let mut out = String::new();
    for l in la.iter().filter(|l| !sb.contains(l)).take(20) {
        out.push_str(&format!("  - {l}\n"));
    }
    for l in lb.iter().filter(|l| !sa.contains(l)).take(20) {
        out.push_str(&format!("  + {l}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalisation_drops_what_the_server_or_history_decides() {
        let pinned: BTreeSet<i64> = [30666].into();
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "uid": "u", "resourceVersion": "7", "creationTimestamp": "t",
                "managedFields": [], "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"],
                "ports": [{"port": 666, "nodePort": 30666}, {"port": 80, "nodePort": 31234}]},
            "status": {"loadBalancer": {}}
        });
        assert_eq!(
            normalise(svc, &pinned),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                "spec": {"ports": [{"port": 666, "nodePort": 30666}, {"port": 80}]}})
        );
        let deploy = json!({"kind": "Deployment", "metadata": {"name": "d", "generation": 3,
            "annotations": {"deployment.kubernetes.io/revision": "2", "keep": "x"}},
            "spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "t"}}}}});
        assert_eq!(
            normalise(deploy, &pinned),
            json!({"kind": "Deployment", "metadata": {"name": "d", "annotations": {"keep": "x"}},
                "spec": {"template": {"metadata": {}}}})
        );
    }

    #[test]
    fn ownership() {
        assert!(owned(
            &json!({"metadata": {"labels": {"bookinfo-up.io/plan": PLAN_NAME}}})
        ));
        assert!(owned(
            &json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "Helm"}}})
        ));
        assert!(!owned(
            &json!({"metadata": {"labels": {"bookinfo-up.io/plan": "other"}}})
        ));
        assert!(!owned(
            &json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "Helm"},
            "ownerReferences": [{"controller": true}]}})
        ));
        assert!(!owned(
            &json!({"kind": "Secret", "type": "helm.sh/release.v1",
            "metadata": {"labels": {"app.kubernetes.io/managed-by": "Helm"}}})
        ));
        assert_eq!(pinned_node_ports(), [30666, 32667].into());
    }
}
