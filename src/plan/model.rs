//! The analyzed plan: variables resolved, paths absolute, manifests read and counted, the DAG
//! checked. This is all that execution sees; it never goes back to the TOML.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    pub description: String,
    /// The plan file given on the command line.
    pub path: PathBuf,
    pub cluster: Cluster,
    pub teardown: Teardown,
    pub prune: Prune,
    pub steps: Vec<Step>,
    /// Indices into `steps`, grouped so that each wave needs only earlier waves.
    pub waves: Vec<Vec<usize>>,
    /// What to tell the user after a successful `up` (`[[plan.next]]`).
    pub next: Vec<NextStep>,
}

/// One pointer shown after a successful `up`: a URL to open, a command to run, or a command
/// and then the URL it makes reachable (a port-forward).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextStep {
    pub title: String,
    pub command: Option<String>,
    pub url: Option<String>,
    /// The steps whose work it points at: it is shown only when each of them ran (neither
    /// the plan's `skip` nor `--only`/`--skip` left it out).
    #[serde(skip)]
    pub needs: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub name: String,
    pub provider: Provider,
}

impl Cluster {
    pub fn provider_name(&self) -> &'static str {
        match self.provider {
            Provider::Kind { .. } => "kind",
            Provider::Kwok { .. } => "kwok",
            Provider::Existing { .. } => "existing",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum Provider {
    Kind {
        node_image: String,
        port_mappings: Vec<PortMapping>,
        min_memory_bytes: Option<u64>,
    },
    Kwok {
        nodes: u32,
        binaries: Option<PathBuf>,
        apiserver_args: Vec<String>,
        kube_version: Option<String>,
        /// pilot-discovery: a real istiod runs beside the cluster (`provider::istiod`).
        istiod: Option<PathBuf>,
    },
    Existing {
        kubeconfig: Option<PathBuf>,
        context: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub node_port: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct Teardown {
    pub delete_cluster: bool,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
}

/// What `up` does with the members of the plan's ApplySet that the plan no longer has
/// (`steps::prune`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Prune {
    pub enabled: bool,
    /// CRDs are pruned too (deleting a CRD deletes its custom resources).
    pub crds: bool,
    /// A plan that asks for no object prunes everything of its set.
    pub empty: bool,
}

impl Default for Prune {
    fn default() -> Self {
        Self {
            enabled: true,
            crds: false,
            empty: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub id: String,
    pub description: Option<String>,
    /// Indices of the steps this one needs.
    pub needs: Vec<usize>,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    pub retries: u32,
    #[serde(with = "humantime_serde_compat")]
    pub backoff: Duration,
    /// Why the plan leaves this step out (its `skip`, interpolated and not empty): the run
    /// reports it skipped with this reason, and its dependents run as if it had passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip: Option<String>,
    pub action: Action,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    Helm(Helm),
    Apply(Apply),
    Namespace(Namespace),
    Patch(Patch),
    ConfigMerge(ConfigMerge),
    Wait(Wait),
    Http(Http),
    Traffic(Traffic),
    Exec(Exec),
}

#[derive(Debug, Clone, Serialize)]
pub struct Helm {
    pub release: String,
    pub namespace: String,
    pub chart: ChartRef,
    /// Inline values and the contents of values files, merged in that order.
    pub values: serde_json::Value,
    pub values_files: Vec<PathBuf>,
    pub create_namespace: bool,
    pub wait: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum ChartRef {
    Repo {
        repo: String,
        name: String,
        version: String,
    },
    Path {
        path: PathBuf,
    },
}

/// One Kubernetes object read from a manifest, with where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub source: String,
    pub object: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Apply {
    pub namespace: Option<String>,
    /// Objects from local files, read and parsed at analysis.
    pub objects: Vec<Manifest>,
    /// Remote manifests, fetched and verified before the run starts.
    pub urls: Vec<PinnedUrl>,
    /// Whether `${var}` substitution applies to URL contents too.
    pub template: bool,
    #[serde(skip)]
    pub vars: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PinnedUrl {
    pub url: String,
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Server-side apply of partial objects under a field manager of their own.
#[derive(Debug, Clone, Serialize)]
pub struct Patch {
    pub field_manager: String,
    pub objects: Vec<Manifest>,
}

/// A merge into YAML held in a ConfigMap key, with restarts of what reads it.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigMerge {
    pub namespace: String,
    pub configmap: String,
    pub key: String,
    pub merge: serde_json::Value,
    /// `(namespace, name)` of Deployments to restart when the content changed.
    pub restart: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Wait {
    /// `(namespace, name)`; name `*` means every Deployment of the namespace.
    pub rollout: Vec<(String, String)>,
    pub pods: Option<PodsReady>,
    pub crds: Vec<String>,
    pub webhook: Option<WebhookProbe>,
}

/// An admission webhook that serves: it denies `probe` (a dry run), by `name`.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookProbe {
    pub name: String,
    pub probe: Manifest,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodsReady {
    pub namespace: String,
    pub selector: Option<String>,
    pub containers: Option<u32>,
    pub container: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Http {
    /// An absolute URL, or a path on `service`.
    pub url: String,
    pub service: Option<ServiceRef>,
    pub status: u16,
    pub body_contains: Option<String>,
    pub variants: BTreeMap<String, String>,
    pub max_requests: u32,
    #[serde(with = "humantime_serde_compat")]
    pub deadline: Duration,
}

/// A Service port reached through the API server's proxy.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct Traffic {
    pub url: String,
    pub requests: u32,
    #[serde(with = "humantime_serde_compat")]
    pub over: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Exec {
    pub command: Vec<String>,
    pub unless: Vec<String>,
    pub dir: PathBuf,
}

/// Durations serialize as humantime text ("5m", "1s 500ms").
mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}
