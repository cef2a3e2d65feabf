//! The plan file as written: serde types for the TOML schema, with spans on every value that
//! analysis may need to point at. Unknown keys are rejected everywhere.
//!
//! Strings are not interpolated here; `analyze` resolves `${...}` and checks everything.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A string with its place in the plan file.
pub type S = Spanned<String>;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    pub plan: Option<RawMeta>,
    #[serde(default)]
    pub vars: BTreeMap<String, Spanned<RawVar>>,
    pub cluster: Option<Spanned<RawCluster>>,
    pub teardown: Option<RawTeardown>,
    pub prune: Option<RawPrune>,
    #[serde(default)]
    pub step: Vec<Spanned<RawStep>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeta {
    pub name: Option<S>,
    pub description: Option<S>,
    /// Other plan files whose vars and steps this plan shares (paths relative to this file).
    #[serde(default)]
    pub include: Vec<S>,
    /// `KEY=VALUE` files (like testbed/versions.env) whose entries become variables.
    #[serde(default)]
    pub vars_files: Vec<S>,
    /// Allows `apply` URLs without a sha256 pin.
    #[serde(default)]
    pub allow_unpinned_urls: bool,
    /// What to tell the user after a successful `up`: URLs, port-forwards.
    #[serde(default)]
    pub next: Vec<Spanned<RawNext>>,
}

/// One `[[plan.next]]` entry: a title and a URL, a command, or both; `needs`: the steps
/// whose work it points at, without which it is not shown.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNext {
    pub title: S,
    pub command: Option<S>,
    pub url: Option<S>,
    #[serde(default)]
    pub needs: Vec<S>,
}

/// A variable value: TOML strings, integers and booleans are all usable in `${...}`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawVar {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl RawVar {
    pub fn as_text(&self) -> String {
        match self {
            RawVar::Str(s) => s.clone(),
            RawVar::Int(i) => i.to_string(),
            RawVar::Bool(b) => b.to_string(),
        }
    }
}

/// A number that may also be written as a string holding `${var}`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawNum {
    Int(i64),
    Str(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub provider: S,
    /// Cluster name for `kind` and `kwok`; defaults to the plan name.
    pub name: Option<S>,
    pub kind: Option<RawKind>,
    pub kwok: Option<RawKwok>,
    pub existing: Option<RawExisting>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKind {
    pub node_image: S,
    /// NodePorts published on 127.0.0.1 (`extraPortMappings`, containerPort = nodePort).
    #[serde(default)]
    pub port_mappings: Vec<Spanned<RawPortMapping>>,
    /// Minimum memory the container runtime must offer, e.g. "4GiB".
    pub min_memory: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPortMapping {
    pub host_port: Spanned<RawNum>,
    pub node_port: Spanned<RawNum>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKwok {
    #[serde(default)]
    pub nodes: Option<Spanned<RawNum>>,
    /// Folder holding kube-apiserver, kube-controller-manager, kube-scheduler, etcd and kwok.
    pub binaries: Option<S>,
    /// Extra kube-apiserver arguments, `key=value` without leading dashes.
    #[serde(default)]
    pub apiserver_args: Vec<S>,
    /// Kubernetes version kwokctl should report and, with internet, download; also the
    /// kubelet version the simulated nodes report.
    pub kube_version: Option<S>,
    /// A real istiod beside the simulated kubelets.
    pub istiod: Option<Spanned<RawIstiod>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIstiod {
    /// pilot-discovery, built from the pinned Istio commit.
    pub binary: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExisting {
    pub kubeconfig: Option<S>,
    pub context: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTeardown {
    /// Delete the cluster when the engine created it (default true).
    pub delete_cluster: Option<bool>,
    /// How long `bookinfo-down` waits for namespaces to disappear.
    pub timeout: Option<S>,
}

/// `[prune]`: what `up` does with objects of the plan's ApplySet that the plan no longer has.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrune {
    /// Delete them (default true); `up --no-prune` turns it off for one run.
    pub enabled: Option<bool>,
    /// CRDs too, with every custom resource of them (default false).
    pub crds: Option<bool>,
    /// Even when the plan asks for no object at all (default false).
    pub empty: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub id: S,
    pub description: Option<S>,
    #[serde(default)]
    pub needs: Vec<S>,
    pub timeout: Option<S>,
    pub retries: Option<Spanned<u32>>,
    /// First delay between retries; doubles on each retry.
    pub backoff: Option<S>,
    /// Why the step does not run (interpolated); empty or absent: it runs.
    pub skip: Option<S>,
    pub helm: Option<Spanned<RawHelm>>,
    pub apply: Option<Spanned<RawApply>>,
    pub namespace: Option<Spanned<RawNamespace>>,
    pub patch: Option<Spanned<RawPatch>>,
    pub wait: Option<Spanned<RawWait>>,
    pub http: Option<Spanned<RawHttp>>,
    pub traffic: Option<Spanned<RawTraffic>>,
    pub exec: Option<Spanned<RawExec>>,
}

/// The step kinds: each variant of `RawStepKind` with its table's type and name, in one list
/// from which the enum, `NAMES`, `name` and `span` are all made, so that they cannot drift.
macro_rules! step_kinds {
    ($($variant:ident($table:ty) = $name:literal),* $(,)?) => {
        /// One step kind's table, as written in a step.
        #[derive(Debug, Clone, Copy)]
        pub enum RawStepKind<'a> {
            $($variant(&'a Spanned<$table>)),*
        }

        impl RawStepKind<'_> {
            /// Every kind's table name, for messages; in the order of the variants.
            pub const NAMES: &'static [&'static str] = &[$($name),*];

            /// The table name (`[step.helm]`).
            pub fn name(&self) -> &'static str {
                match self {
                    $(RawStepKind::$variant(_) => $name),*
                }
            }

            /// Where the table is written.
            pub fn span(&self) -> std::ops::Range<usize> {
                match self {
                    $(RawStepKind::$variant(k) => k.span()),*
                }
            }
        }
    };
}

step_kinds! {
    Helm(RawHelm) = "helm",
    Apply(RawApply) = "apply",
    Namespace(RawNamespace) = "namespace",
    Patch(RawPatch) = "patch",
    Wait(RawWait) = "wait",
    Http(RawHttp) = "http",
    Traffic(RawTraffic) = "traffic",
    Exec(RawExec) = "exec",
}

impl RawStep {
    /// The kind tables the step has, in the order written. Every field is named here, so a
    /// new kind's field makes the compiler point at this list.
    pub fn kinds(&self) -> Vec<RawStepKind<'_>> {
        let RawStep {
            id: _,
            description: _,
            needs: _,
            timeout: _,
            retries: _,
            backoff: _,
            skip: _,
            helm,
            apply,
            namespace,
            patch,
            wait,
            http,
            traffic,
            exec,
        } = self;
        let mut kinds: Vec<RawStepKind<'_>> = [
            helm.as_ref().map(RawStepKind::Helm),
            apply.as_ref().map(RawStepKind::Apply),
            namespace.as_ref().map(RawStepKind::Namespace),
            patch.as_ref().map(RawStepKind::Patch),
            wait.as_ref().map(RawStepKind::Wait),
            http.as_ref().map(RawStepKind::Http),
            traffic.as_ref().map(RawStepKind::Traffic),
            exec.as_ref().map(RawStepKind::Exec),
        ]
        .into_iter()
        .flatten()
        .collect();
        kinds.sort_by_key(|k| k.span().start);
        kinds
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHelm {
    pub release: S,
    pub namespace: S,
    /// A chart name in `repo`, or a local chart folder.
    pub chart: S,
    pub repo: Option<S>,
    pub version: Option<S>,
    /// Values as a TOML table, passed to helm as a values file.
    pub values: Option<Spanned<toml::Table>>,
    #[serde(default)]
    pub values_files: Vec<S>,
    #[serde(default)]
    pub create_namespace: bool,
    #[serde(default)]
    pub wait: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApply {
    /// Namespace given to namespaced objects that name none.
    pub namespace: Option<S>,
    /// Files, folders (their *.yaml and *.yml) and globs.
    #[serde(default)]
    pub files: Vec<S>,
    #[serde(default)]
    pub urls: Vec<Spanned<RawUrl>>,
    /// Replace `${var}` in the manifests with plan variables before parsing them.
    #[serde(default)]
    pub template: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUrl {
    pub url: S,
    pub sha256: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamespace {
    pub name: S,
    #[serde(default)]
    pub labels: BTreeMap<String, S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPatch {
    /// Server-side apply of a partial object under its own field manager.
    pub file: Option<S>,
    pub field_manager: Option<S>,
    #[serde(default)]
    pub template: bool,
    /// Merge into YAML nested in a ConfigMap key.
    pub configmap: Option<S>,
    pub namespace: Option<S>,
    pub key: Option<S>,
    /// The YAML (a file) merged into the key's content.
    pub merge_file: Option<S>,
    /// Deployments (`namespace/name` or `name`) restarted when the content changed.
    #[serde(default)]
    pub restart: Vec<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWait {
    /// Deployments to see rolled out: `namespace/name`, or `namespace/*` for all of them.
    #[serde(default)]
    pub rollout: Vec<S>,
    pub pods: Option<Spanned<RawPods>>,
    /// CustomResourceDefinitions to see Established, by name.
    #[serde(default)]
    pub crds: Vec<S>,
    /// An admission webhook that must be serving: it denies a probe object.
    pub webhook: Option<Spanned<RawWebhook>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// The webhook's name, as in its configuration (`validation.istio.io`).
    pub name: S,
    /// A manifest of an object that the webhook refuses: sent as a server-side dry-run until
    /// the webhook denies it.
    pub probe: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPods {
    pub namespace: S,
    pub selector: Option<S>,
    /// Containers every pod must have, all ready.
    pub containers: Option<Spanned<RawNum>>,
    /// A container every pod must have (istio-proxy).
    pub container: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// An absolute URL, or with `service` a path on that Service.
    pub url: S,
    /// `namespace/name:port`: reach the Service through the API server's proxy, so checks
    /// work on any cluster without a port-forward.
    pub service: Option<S>,
    pub status: Option<Spanned<RawNum>>,
    pub body_contains: Option<S>,
    /// Distinct variants, by name and a body substring, that must all be seen.
    #[serde(default)]
    pub variants: BTreeMap<String, S>,
    /// At most this many requests to see every variant.
    pub max_requests: Option<Spanned<RawNum>>,
    /// Keep retrying a failing check until this long has passed.
    pub deadline: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTraffic {
    pub url: S,
    pub requests: Spanned<RawNum>,
    /// The requests are spread evenly over this long.
    pub over: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExec {
    pub command: Vec<S>,
    /// A command whose success means the step has nothing to do.
    #[serde(default)]
    pub unless: Vec<S>,
}
