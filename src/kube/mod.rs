//! The Kubernetes layer: `Kube`, a kube-rs client for one cluster with a discovery cache, and
//! the operations steps build on. Only this module talks to the API server.
//!
//! Submodules: `apply` (server-side apply with change detection and plan ownership),
//! `readiness` (pure readiness rules for Deployments, Pods and CRDs), `events` (the latest
//! core/v1 Events of an object) and `diagnostics` (what is written to the artifacts folder
//! when a step fails).

pub mod apply;
pub mod applyset;
pub mod client;
pub mod diagnostics;
pub mod events;
pub mod health;
pub mod ledger;
pub mod read_only;
pub mod readiness;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{GroupVersion, GroupVersionKind};
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use tokio::sync::Mutex;

use crate::error::{StepError, StepResult};

/// Field manager of everything the engine applies, except patches with managers of their own.
pub const FIELD_MANAGER: &str = "bookinfo-up";
/// Label put on every object a plan created; its value is the plan name.
pub const PLAN_LABEL: &str = "bookinfo-up.io/plan";
/// Annotation naming the step that created an object.
pub const STEP_ANNOTATION: &str = "bookinfo-up.io/step";

/// The resources of one group-version, as discovery lists them.
type Resources = Vec<(ApiResource, ApiCapabilities)>;

/// The discovery cache: each group-version's resources, filled on first use.
pub type Discovery = std::sync::Mutex<HashMap<GroupVersion, Arc<Mutex<Option<Resources>>>>>;

/// A connection to one cluster.
pub struct Kube {
    /// Built by `client::build`, the same stack for every command: TCP_NODELAY, HTTP/2 where
    /// the server offers it, the kubeconfig's `proxy-url`.
    pub client: kube::Client,
    /// What went over the client's wire (connections, HTTP versions).
    pub wire: Arc<client::Wire>,
    /// The kubeconfig the client was built from, passed on to helm.
    pub kubeconfig: PathBuf,
    pub context: Option<String>,
    /// The API server's URL, as the kubeconfig's context names it.
    pub server: String,
    /// Discovery results by group/version, filled on demand: one request per group-version
    /// however many of its kinds a plan uses, and however many steps ask at once (they wait
    /// on the slot's lock for the first answer).
    /// Shared by every `Kube` of the process for the same cluster (`client::shared`).
    groups: Arc<Discovery>,
    /// What the last run saw of the objects it applied (`ledger`).
    pub ledger: ledger::Ledger,
    /// The plan's ApplySet members as `up` listed them before its first apply (one LIST per
    /// group-kind): an object listed here that the ledger vouches for is not read or sent
    /// again. Empty for other commands.
    pub members: applyset::Members,
    /// The helm releases this plan installed, as `up` listed them before its first step:
    /// (namespace, release) → the metadata of helm's storage Secret of the latest revision.
    /// A release the ledger vouches for by it is not read again.
    pub releases: std::collections::BTreeMap<(String, String), serde_json::Value>,
    /// Read-only clients (`diff`, `status`) read the metadata of each kind's objects in a
    /// namespace with one LIST, kept for the client's life: enough to say what is missing and
    /// what the ledger vouches for; only the rest is read whole. `None`: a run, whose every
    /// read is a GET of its own.
    snapshot: Option<std::sync::Mutex<HashMap<String, Snapshot>>>,
}

/// The metadata of one kind's objects in one namespace, by name, listed once.
type Snapshot = Arc<Mutex<Option<HashMap<String, serde_json::Value>>>>;

/// The `proxy-url` of the kubeconfig's cluster for `context` (else the current context).
fn kubeconfig_proxy(config: &Kubeconfig, context: Option<&str>) -> Option<String> {
    let context = context.or(config.current_context.as_deref())?;
    let cluster = config
        .contexts
        .iter()
        .find(|c| c.name == context)?
        .context
        .as_ref()?
        .cluster
        .clone();
    config
        .clusters
        .iter()
        .find(|c| c.name == cluster)?
        .cluster
        .as_ref()?
        .proxy_url
        .clone()
}

impl Kube {
    /// Builds a client from a kubeconfig file and optional context. Makes no API call.
    pub async fn connect(kubeconfig: &Path, context: Option<&str>) -> StepResult<Self> {
        Self::connect_with(kubeconfig, context, false).await
    }

    /// Like `connect`, for `diff` and `status`: the client refuses, before sending, every
    /// request that could change the cluster (see `read_only`).
    pub async fn connect_read_only(kubeconfig: &Path, context: Option<&str>) -> StepResult<Self> {
        Self::connect_with(kubeconfig, context, true).await
    }

    async fn connect_with(
        kubeconfig: &Path,
        context: Option<&str>,
        read_only: bool,
    ) -> StepResult<Self> {
        let config = Kubeconfig::read_from(kubeconfig).map_err(|e| {
            StepError::fatal(format!("cannot read kubeconfig `{}`", kubeconfig.display()))
                .with_source(e)
        })?;
        let options = KubeConfigOptions {
            context: context.map(str::to_string),
            ..Default::default()
        };
        let proxy = kubeconfig_proxy(&config, context);
        let mut config = kube::Config::from_custom_kubeconfig(config, &options)
            .await
            .map_err(|e| {
                StepError::fatal(format!(
                    "kubeconfig `{}` has no usable context{}",
                    kubeconfig.display(),
                    context.map(|c| format!(" `{c}`")).unwrap_or_default()
                ))
                .with_source(e)
            })?;
        // kube-rs also takes HTTPS_PROXY from the environment; the engine does not. The
        // clusters it makes listen on 127.0.0.1, which a proxy cannot reach (kubectl, too,
        // never proxies loopback). A cluster behind a proxy names it in its kubeconfig.
        config.proxy_url = match proxy {
            Some(p) => Some(p.parse().map_err(|e| {
                StepError::fatal(format!(
                    "kubeconfig `{}` has a `proxy-url` that is not a URL: `{p}`",
                    kubeconfig.display()
                ))
                .with_source(e)
            })?),
            None => None,
        };
        let server = config.cluster_url.to_string();
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(60));
        // One client and one discovery cache per cluster and kind of client in a process: the
        // provider's reads, the owner marker and the steps share the connection.
        let key = client::Key::new(kubeconfig, context, read_only);
        let (client, wire, groups) = client::shared(key, || client::build(&config, read_only))
            .map_err(|e| StepError::fatal("cannot build a Kubernetes client").with_source(e))?;
        Ok(Self {
            client,
            wire,
            kubeconfig: kubeconfig.to_path_buf(),
            context: context.map(str::to_string),
            server,
            groups,
            ledger: ledger::Ledger::default(),
            members: applyset::Members::default(),
            releases: Default::default(),
            snapshot: read_only.then(|| std::sync::Mutex::new(HashMap::new())),
        })
    }

    /// The live object's metadata (`{"metadata": ...}`), or `None` when there is no such
    /// object: for a read-only client from the snapshot of its kind (one metadata-only LIST
    /// across namespaces the first time), else the whole object by a GET.
    pub async fn live_meta(
        &self,
        target: &apply::Located,
    ) -> StepResult<Option<serde_json::Value>> {
        let Some(snapshots) = &self.snapshot else {
            return target.get().await;
        };
        let key = format!(
            "{}/{} {}",
            target.gvk.group, target.gvk.version, target.gvk.kind
        );
        let slot = snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let mut cached = slot.lock().await;
        if cached.is_none() {
            let all: kube::Api<kube::api::DynamicObject> =
                kube::Api::all_with(self.client.clone(), &target.resource);
            let list = match all.list_metadata(&kube::api::ListParams::default()).await {
                Ok(list) => list,
                // Not allowed to list across namespaces: one GET per object then.
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    drop(cached);
                    return target.get().await;
                }
                Err(e) => return Err(api_error(format!("cannot list {}s", target.gvk.kind), e)),
            };
            let mut by_name = HashMap::new();
            for o in list.items {
                let key = format!(
                    "{}/{}",
                    o.metadata.namespace.as_deref().unwrap_or_default(),
                    o.metadata.name.as_deref().unwrap_or_default()
                );
                let meta = serde_json::to_value(&o.metadata).unwrap_or_default();
                by_name.insert(key, serde_json::json!({ "metadata": meta }));
            }
            *cached = Some(by_name);
        }
        let key = format!(
            "{}/{}",
            target.namespace.as_deref().unwrap_or_default(),
            target.name
        );
        Ok(cached.as_ref().and_then(|m| m.get(&key)).cloned())
    }

    /// The API resource serving `gvk`, from the cache or discovery. A kind the server does
    /// not serve yet (a CRD just established) is retried with backoff for up to `patience`.
    pub async fn resolve(
        &self,
        gvk: &GroupVersionKind,
        patience: Duration,
    ) -> StepResult<(ApiResource, ApiCapabilities)> {
        let start = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let error = match self.discover(gvk).await {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => None,
                Err(e) => Some(e),
            };
            if start.elapsed() + delay > patience {
                let what = format!("{}/{} {}", gvk.group, gvk.version, gvk.kind);
                let missing =
                    StepError::fatal(format!("the API server does not serve kind `{what}`"));
                return Err(match error {
                    Some(e @ kube::Error::Discovery(_)) => missing.with_source(e),
                    Some(e) => StepError::from(e),
                    None => missing,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Like `resolve` with a single discovery attempt, and `None` when the server does not
    /// serve the kind.
    pub async fn try_resolve(
        &self,
        gvk: &GroupVersionKind,
    ) -> StepResult<Option<(ApiResource, ApiCapabilities)>> {
        match self.discover(gvk).await {
            Ok(found) => Ok(found),
            Err(e) if matches!(&e, kube::Error::Discovery(_)) => Ok(None),
            Err(e) => Err(api_error(format!("cannot discover kind `{}`", gvk.kind), e)),
        }
    }

    /// `gvk` in the cached resources of its group-version; the group-version is asked for
    /// when it is not cached, or is cached without this kind (a CRD may have added it since).
    /// `None`: the server does not serve the kind (or its group-version) now.
    async fn discover(
        &self,
        gvk: &GroupVersionKind,
    ) -> Result<Option<(ApiResource, ApiCapabilities)>, kube::Error> {
        let gv = GroupVersion::gv(&gvk.group, &gvk.version);
        let find = |list: &Resources| list.iter().find(|(ar, _)| ar.kind == gvk.kind).cloned();
        let slot = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(gv.clone())
            .or_default()
            .clone();
        let mut cached = slot.lock().await;
        if let Some(found) = cached.as_ref().and_then(find) {
            return Ok(Some(found));
        }
        match kube::discovery::pinned_group(&self.client, &gv).await {
            Ok(group) => {
                let list = group.versioned_resources(&gv.version);
                let found = find(&list);
                *cached = Some(list);
                Ok(found)
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Discovers the group-versions of `gvks` all at once, for a client about to touch them
    /// at the same moment (one request per group-version, in parallel, instead of as each
    /// is first needed). What fails here is asked again when needed, with its error then.
    pub async fn prefetch_discovery(&self, gvks: &[GroupVersionKind]) {
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<&GroupVersionKind> = gvks
            .iter()
            .filter(|g| seen.insert((g.group.clone(), g.version.clone())))
            .collect();
        futures::future::join_all(firsts.into_iter().map(|g| self.discover(g))).await;
    }

    /// Like `prefetch_discovery`, by the Aggregated Discovery API when the kinds span more
    /// than two group-versions: every group-version the server serves in two requests
    /// (`/api` and `/apis`), whatever their number. A server without it (before 1.26), or a
    /// failure, leaves each group-version to be asked for on its own.
    pub async fn prefetch_discovery_aggregated(&self, gvks: &[GroupVersionKind]) {
        let distinct: std::collections::HashSet<(&str, &str)> = gvks
            .iter()
            .map(|g| (g.group.as_str(), g.version.as_str()))
            .collect();
        if distinct.len() <= 2 {
            return self.prefetch_discovery(gvks).await;
        }
        let Ok(found) = kube::discovery::Discovery::new(self.client.clone())
            .run_aggregated()
            .await
        else {
            return self.prefetch_discovery(gvks).await;
        };
        for group in found.groups() {
            for version in group.versions() {
                let gv = GroupVersion::gv(group.name(), version);
                let slot = self
                    .groups
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(gv)
                    .or_default()
                    .clone();
                let mut cached = slot.lock().await;
                if cached.is_none() {
                    *cached = Some(group.versioned_resources(version));
                }
            }
        }
    }

    /// Forgets cached discovery of `gvk`'s group-version, after CRDs changed.
    pub async fn forget(&self, gvk: &GroupVersionKind) {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&GroupVersion::gv(&gvk.group, &gvk.version));
    }

    /// A dynamic API for `ar` in `namespace` (ignored for cluster-scoped resources).
    pub fn dynamic_api(
        &self,
        ar: &ApiResource,
        caps: &ApiCapabilities,
        namespace: Option<&str>,
    ) -> kube::Api<kube::api::DynamicObject> {
        match (&caps.scope, namespace) {
            (Scope::Namespaced, Some(ns)) => {
                kube::Api::namespaced_with(self.client.clone(), ns, ar)
            }
            (Scope::Namespaced, None) => {
                kube::Api::default_namespaced_with(self.client.clone(), ar)
            }
            (Scope::Cluster, _) => kube::Api::all_with(self.client.clone(), ar),
        }
    }
}

/// A step error for a failed API call, saying what was being done. Keeps whether another
/// attempt may succeed (conflicts, throttling, server errors, connection problems).
pub fn api_error(doing: impl std::fmt::Display, e: kube::Error) -> StepError {
    let base = StepError::from(e);
    StepError {
        message: format!("{doing}: {}", base.message),
        ..base
    }
}

/// Whether an API error is a 404: the object (or its kind) is not there.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The group/version/kind of a manifest object.
pub fn gvk_of(object: &serde_json::Value) -> GroupVersionKind {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    GroupVersionKind::gvk(group, version, kind)
}
