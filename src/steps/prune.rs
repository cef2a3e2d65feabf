//! Pruning: what leaves the plan leaves the cluster. The plan's objects are the members of
//! its ApplySet (`kube::applyset`); after a run's steps all succeed, `up` deletes the members
//! the plan no longer has, and uninstalls the helm releases it installed for steps that are
//! gone.
//!
//! The order is the KEP's: before the first apply, `begin` widens the parent to cover every
//! group-kind and namespace the plan uses, and lists the members; after the steps, `finish`
//! deletes what is no longer wanted and only then narrows the parent to what is left. A run
//! killed in between leaves the parent as wide as its members, so the next run finds the same
//! members and finishes the prune.
//!
//! Nothing is deleted on a guess. A member is deleted only when all of these hold:
//! - the plan has no such object, and the step that made it is not one `--only`/`--skip`
//!   left out of this run;
//! - it was a member, with the same uid, before this run's first apply (what another run
//!   made meanwhile is never touched), and is still labelled a member just before its delete,
//!   which carries a uid precondition;
//! - it carries no opt-out (`bookinfo-up.io/prune: disabled`, `helm.sh/resource-policy: keep`);
//! - it is not a CRD (unless `[prune] crds = true`), nor the namespace `default`,
//!   `kube-system`, `kube-public` or `kube-node-lease`, nor a namespace that holds objects that
//!   are not the plan's.
//!
//! Objects helm installed are helm's: a release goes by `helm uninstall`, and only when it
//! carries the label `bookinfo-up.io/plan=<plan>` that the helm step gives the releases it
//! installs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Preconditions};
use kube::discovery::Scope;
use kube::runtime::wait::{await_condition, conditions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::change::{Change, ChangeKind};
use crate::error::{StepError, StepResult};
use crate::kube::applyset::{self, GroupKind, Member, Members, ObjectKey, PART_OF, SetScope};
use crate::kube::{Kube, PLAN_LABEL, STEP_ANNOTATION, api_error, gvk_of, is_not_found};
use crate::plan::{Action, Plan};
use crate::run::Outcome;

/// The opt-out annotation: `bookinfo-up.io/prune: disabled` keeps an object whatever the plan.
pub const PRUNE_ANNOTATION: &str = "bookinfo-up.io/prune";
/// Namespaces never deleted, whoever's they are.
const PROTECTED_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];
/// How many deletions are sent at once.
const CONCURRENCY: usize = 8;

/// What the plan asks for: every object its steps apply or create, by key, with the set's
/// scope.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Objects, with the namespace they are applied in (also for cluster-scoped kinds, whose
    /// namespace is ignored: see `contains`).
    objects: BTreeSet<ObjectKey>,
    /// Cluster-scoped lookups: group-kind and name.
    names: BTreeSet<(GroupKind, String)>,
    pub scope: SetScope,
    /// A served version of each group-kind, as the plan writes it.
    pub versions: BTreeMap<GroupKind, String>,
    /// Every step id of the plan, and those this run leaves out.
    steps: BTreeSet<String>,
    left_out: BTreeSet<String>,
    /// Steps left out whose remote manifests were not fetched: their objects are unknown.
    unknown: Vec<String>,
    /// Helm releases, as (namespace, release).
    pub releases: BTreeSet<(String, String)>,
}

impl Desired {
    /// The plan's desired set; `includes` says which steps this run takes.
    pub fn of(plan: &Plan, includes: &dyn Fn(&str) -> bool) -> Self {
        let mut d = Desired {
            scope: SetScope {
                namespaces: BTreeSet::from([applyset::PARENT_NAMESPACE.to_string()]),
                ..Default::default()
            },
            ..Default::default()
        };
        for step in &plan.steps {
            d.steps.insert(step.id.clone());
            // Left out of this run by `--only`/`--skip`, or skipped by the plan (its `skip`):
            // either way a step still in the plan, whose objects are not pruned.
            let skipped = step.skip.as_deref().is_some_and(|r| !r.is_empty());
            if !includes(&step.id) || skipped {
                d.left_out.insert(step.id.clone());
            }
            match &step.action {
                Action::Apply(a) => {
                    if (!includes(&step.id) || skipped) && !a.urls.is_empty() {
                        d.unknown.push(step.id.clone());
                    }
                    let default_ns = a.namespace.as_deref().unwrap_or("default");
                    for m in &a.objects {
                        let gvk = gvk_of(&m.object);
                        let ns = m.object["metadata"]["namespace"]
                            .as_str()
                            .filter(|n| !n.is_empty())
                            .unwrap_or(default_ns);
                        let name = m.object["metadata"]["name"].as_str().unwrap_or_default();
                        d.add(GroupKind::of(&gvk), Some(ns), name, Some(&gvk.version));
                    }
                }
                Action::Namespace(n) => d.add(namespace_kind(), None, &n.name, Some("v1")),
                Action::Helm(h) => {
                    d.releases.insert((h.namespace.clone(), h.release.clone()));
                    if h.create_namespace {
                        d.add(namespace_kind(), None, &h.namespace, Some("v1"));
                    }
                }
                _ => {}
            }
        }
        d
    }

    fn add(&mut self, gk: GroupKind, ns: Option<&str>, name: &str, version: Option<&str>) {
        if let Some(v) = version {
            self.versions.entry(gk.clone()).or_insert_with(|| v.into());
        }
        let ns = if gk.is_namespace() || gk.is_crd() {
            None
        } else {
            ns.map(str::to_string)
        };
        if let Some(ns) = &ns {
            self.scope.namespaces.insert(ns.clone());
        }
        self.scope.group_kinds.insert(gk.clone());
        self.names.insert((gk.clone(), name.into()));
        self.objects.insert(ObjectKey {
            gk,
            namespace: ns,
            name: name.into(),
        });
    }

    /// Whether the plan has the member `m` (for a cluster-scoped kind, by name alone).
    pub fn contains(&self, m: &Member) -> bool {
        match m.scope {
            Scope::Cluster => self.names.contains(&(m.key.gk.clone(), m.key.name.clone())),
            Scope::Namespaced => self.objects.contains(&m.key),
        }
    }

    /// Whether the plan asks for nothing at all.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.releases.is_empty()
    }

    /// Drops from the scope the namespaces that only cluster-scoped objects named (their
    /// manifests' step namespace): the set's namespaces are where namespaced members live.
    pub async fn settle_scopes(&mut self, kube: &Kube) {
        let mut cluster_scoped = BTreeSet::new();
        for gk in &self.scope.group_kinds {
            let version = self.versions.get(gk).map(String::as_str);
            if let Ok(Some((_, caps))) = kube.resolve_group_kind(gk, version).await
                && caps.scope == Scope::Cluster
            {
                cluster_scoped.insert(gk.clone());
            }
        }
        let mut namespaces = BTreeSet::from([applyset::PARENT_NAMESPACE.to_string()]);
        for k in &self.objects {
            if let Some(ns) = &k.namespace
                && !cluster_scoped.contains(&k.gk)
            {
                namespaces.insert(ns.clone());
            }
        }
        self.scope.namespaces = namespaces;
    }
}

fn namespace_kind() -> GroupKind {
    GroupKind {
        group: String::new(),
        kind: "Namespace".into(),
    }
}

/// Why a member the plan no longer has stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// Its step is in the plan but left out of this run.
    LeftOut(String),
    /// Steps left out of this run have remote manifests that were not fetched: the plan's
    /// whole set is unknown.
    Unknown(Vec<String>),
    OptedOut(String),
    Crd,
    Protected,
    /// It was not a member when this run began (another run made it meanwhile).
    New,
    /// Already being deleted.
    Deleting,
    /// Pruning is off.
    Off(&'static str),
    /// The plan asks for nothing; pruning all would empty the set.
    EmptyPlan,
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kept::LeftOut(step) => write!(f, "its step `{step}` is left out of this run"),
            Kept::Unknown(steps) => write!(
                f,
                "the remote manifests of {} (left out) were not fetched; a run of the whole plan prunes",
                steps.join(", ")
            ),
            Kept::OptedOut(why) => write!(f, "opted out ({why})"),
            Kept::Crd => write!(
                f,
                "a CRD: deleting it deletes all its custom resources; `[prune] crds = true` allows it"
            ),
            Kept::Protected => write!(f, "a namespace that is never deleted"),
            Kept::New => write!(f, "it appeared while this run went on"),
            Kept::Deleting => write!(f, "already being deleted"),
            Kept::Off(why) => write!(f, "pruning is off ({why})"),
            Kept::EmptyPlan => write!(
                f,
                "the plan asks for no object; `[prune] empty = true` prunes everything"
            ),
        }
    }
}

/// What a prune would do with the members the plan no longer has.
#[derive(Debug, Clone, Default)]
pub struct Verdicts {
    pub delete: Vec<Member>,
    pub kept: Vec<(ObjectKey, Kept)>,
}

/// The rule, without any request: which members of `now` that the plan no longer has are
/// deleted, and why each other one stays. `before` is the listing from before the run's first
/// apply (for previews, `now` itself).
pub fn judge(
    desired: &Desired,
    before: &Members,
    now: &Members,
    policy: crate::plan::Prune,
    off: Option<&'static str>,
) -> Verdicts {
    let mut v = Verdicts::default();
    for m in now.by_key.values() {
        if desired.contains(m) {
            continue;
        }
        let step = m.annotation(STEP_ANNOTATION).unwrap_or_default();
        let kept = if let Some(why) = off {
            Some(Kept::Off(why))
        } else if desired.left_out.contains(step) {
            Some(Kept::LeftOut(step.into()))
        } else if !desired.unknown.is_empty() {
            Some(Kept::Unknown(desired.unknown.clone()))
        } else if desired.is_empty() && !policy.empty {
            Some(Kept::EmptyPlan)
        } else if m.annotation(PRUNE_ANNOTATION) == Some("disabled") {
            Some(Kept::OptedOut(format!("{PRUNE_ANNOTATION}: disabled")))
        } else if m.annotation("helm.sh/resource-policy") == Some("keep") {
            Some(Kept::OptedOut("helm.sh/resource-policy: keep".into()))
        } else if m.key.gk.is_crd() && !policy.crds {
            Some(Kept::Crd)
        } else if m.key.gk.is_namespace() && PROTECTED_NAMESPACES.contains(&m.key.name.as_str()) {
            Some(Kept::Protected)
        } else if m.deleting() {
            Some(Kept::Deleting)
        } else if before.by_key.get(&m.key).map(Member::uid) != Some(m.uid()) {
            Some(Kept::New)
        } else {
            None
        };
        match kept {
            Some(k) => v.kept.push((m.key.clone(), k)),
            None => v.delete.push(m.clone()),
        }
    }
    v
}

/// What `begin` found: the scope the parent now records, the members, and the releases the
/// plan installed (with the metadata of each one's latest storage Secret).
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub scope: SetScope,
    pub before: Members,
    pub releases: BTreeMap<(String, String), Value>,
}

/// Before the first apply: the parent widened to cover the plan (written only when it does
/// not already), and the members listed.
///
/// The members are listed in the plan's own scope while the parent is read: in a run whose
/// plan lost nothing, which is most runs, the parent records just that scope and the
/// inventory takes one round trip. Where the parent records more (kinds or namespaces that
/// left the plan), the members are listed again in the whole of it, after the parent is
/// widened.
pub async fn begin(kube: &Kube, plan: &str, desired: &Desired) -> StepResult<Inventory> {
    let id = applyset::set_id(plan);
    let (parent, listed, releases) = tokio::try_join!(
        kube.applyset_parent(plan),
        kube.applyset_members(&id, &desired.scope, &desired.versions),
        plan_releases(kube, plan)
    )?;
    let scope = match &parent {
        Some(p) => p.scope.union(&desired.scope),
        None => desired.scope.clone(),
    };
    if parent.is_none_or(|p| !p.scope.covers(&scope)) {
        kube.write_applyset_parent(plan, &scope).await?;
    }
    let before = if desired.scope.covers(&scope) {
        listed
    } else {
        kube.applyset_members(&id, &scope, &desired.versions)
            .await?
    };
    Ok(Inventory {
        scope,
        before,
        releases,
    })
}

/// Settings of one prune.
pub struct Settings<'a> {
    pub plan: &'a Plan,
    /// Why pruning is off for this run, if it is (`--no-prune`, the plan).
    pub off: Option<&'static str>,
    /// How long a namespace or CRD gets to go.
    pub timeout: Duration,
    pub cancel: &'a CancellationToken,
    pub progress: &'a (dyn Fn(String) + Send + Sync),
}

/// After the steps succeeded: orphaned releases uninstalled, orphaned members deleted, the
/// parent narrowed. Changed when anything was deleted.
pub async fn finish(
    kube: &Kube,
    s: &Settings<'_>,
    desired: &Desired,
    inventory: &Inventory,
) -> StepResult<Outcome> {
    let plan = &s.plan.name;
    let policy = s.plan.prune;
    let early = judge(desired, &inventory.before, &inventory.before, policy, s.off);
    let releases: Vec<(String, String)> =
        if s.off.is_some() || (desired.is_empty() && !policy.empty) {
            Vec::new()
        } else {
            inventory
                .releases
                .keys()
                .filter(|r| !desired.releases.contains(r))
                .cloned()
                .collect()
        };
    if let Some(why) = s.off {
        return Ok(Outcome::Unchanged {
            summary: match early.kept.len() {
                0 => format!("pruning is off ({why}): nothing to prune"),
                n => format!(
                    "pruning is off ({why}): {n} object{} no longer in the plan left in place: {}",
                    plural(n),
                    names(early.kept.iter().map(|(k, _)| k))
                ),
            },
        });
    }
    let mut summary = Vec::new();
    for (ns, release) in &releases {
        (s.progress)(format!(
            "uninstalling release {ns}/{release}: no longer in the plan"
        ));
        crate::steps::helm::uninstall_release(kube, ns, release, "10m", s.cancel)
            .await?
            .map_err(|tail| {
                StepError::fatal(format!(
                    "cannot uninstall release {ns}/{release}, no longer in the plan:\n{tail}"
                ))
            })?;
    }
    if !releases.is_empty() {
        summary.push(format!(
            "uninstalled {}",
            releases
                .iter()
                .map(|(ns, r)| format!("release {ns}/{r}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut remaining = inventory.before.clone();
    let mut kept = early.kept;
    if !early.delete.is_empty() {
        // Listed again now: what the steps changed, and the labels as they are just before the
        // deletes.
        let now = kube
            .applyset_members(&applyset::set_id(plan), &inventory.scope, &desired.versions)
            .await?;
        let v = judge(desired, &inventory.before, &now, policy, None);
        let deleted = delete(kube, s, &v.delete).await?;
        remaining = now;
        for key in &deleted.gone {
            remaining.by_key.remove(key);
        }
        if !deleted.gone.is_empty() {
            summary.push(format!(
                "pruned {} object{}: {}",
                deleted.gone.len(),
                plural(deleted.gone.len()),
                names(deleted.gone.iter())
            ));
        }
        kept = v.kept.into_iter().chain(deleted.kept).collect();
    }
    // Narrowed only now that the prune succeeded: to what the plan asks for and what is left.
    let narrowed = desired.scope.union(&remaining.scope());
    if narrowed != inventory.scope {
        kube.write_applyset_parent(plan, &narrowed).await?;
    }
    let kept_text = (!kept.is_empty()).then(|| {
        format!(
            "kept {} no longer in the plan: {}",
            kept.len(),
            kept.iter()
                .map(|(k, why)| format!("{k} ({why})"))
                .collect::<Vec<_>>()
                .join("; ")
        )
    });
    Ok(if summary.is_empty() {
        Outcome::Unchanged {
            summary: kept_text.unwrap_or_else(|| "nothing to prune".into()),
        }
    } else {
        summary.extend(kept_text);
        Outcome::Changed {
            summary: summary.join("; "),
        }
    })
}

/// `bookinfo-down` keeping the cluster, after the steps' teardown: the members of the set that
/// are left (the plan's steps no longer list them) deleted by the same rules, CRDs only with
/// `[prune] crds = true`; then the parent, once it has no member left.
pub async fn dismantle(kube: &Kube, s: &Settings<'_>) -> StepResult<Outcome> {
    let plan = &s.plan.name;
    let Some(parent) = kube.applyset_parent(plan).await? else {
        return Ok(Outcome::Unchanged {
            summary: "the plan has no ApplySet here".into(),
        });
    };
    let id = applyset::set_id(plan);
    let versions = BTreeMap::new();
    let members = kube.applyset_members(&id, &parent.scope, &versions).await?;
    let policy = crate::plan::Prune {
        empty: true,
        ..s.plan.prune
    };
    let v = judge(&Desired::default(), &members, &members, policy, None);
    let deleted = delete(kube, s, &v.delete).await?;
    let left = v.kept.len() + deleted.kept.len();
    let mut summary = Vec::new();
    if !deleted.gone.is_empty() {
        summary.push(format!(
            "deleted {} object{} no longer in the plan: {}",
            deleted.gone.len(),
            plural(deleted.gone.len()),
            names(deleted.gone.iter())
        ));
    }
    if left == 0 {
        kube.delete_applyset_parent(plan).await?;
        summary.push(format!(
            "deleted the ApplySet parent {}/{}",
            applyset::PARENT_NAMESPACE,
            applyset::parent_name(plan)
        ));
    } else {
        summary.push(format!(
            "kept {left} (and the ApplySet parent that lists them): {}",
            v.kept
                .iter()
                .chain(&deleted.kept)
                .map(|(k, why)| format!("{k} ({why})"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    Ok(Outcome::Changed {
        summary: summary.join("; "),
    })
}

/// What `delete` did.
#[derive(Default)]
struct Deleted {
    gone: Vec<ObjectKey>,
    kept: Vec<(ObjectKey, Kept)>,
}

/// Deletes in reverse dependency order: everything else, then CRDs (waited for: their custom
/// resources go with them), then namespaces (each only when it holds nothing that is not the
/// plan's; waited for).
async fn delete(kube: &Kube, s: &Settings<'_>, members: &[Member]) -> StepResult<Deleted> {
    use futures::StreamExt;
    let mut out = Deleted::default();
    let tier = |m: &Member| {
        if m.key.gk.is_namespace() {
            2
        } else if m.key.gk.is_crd() {
            1
        } else {
            0
        }
    };
    let id = applyset::set_id(&s.plan.name);
    let id = id.as_str();
    for t in 0..3 {
        let batch: Vec<&Member> = members.iter().filter(|m| tier(m) == t).collect();
        if batch.is_empty() {
            continue;
        }
        let mut work = Vec::new();
        for m in batch {
            if t == 2 {
                let foreign = foreign_objects(kube, &m.key.name, &s.plan.name).await?;
                if !foreign.is_empty() {
                    out.kept.push((
                        m.key.clone(),
                        Kept::OptedOut(format!(
                            "it holds objects that are not the plan's: {}",
                            foreign.join(", ")
                        )),
                    ));
                    continue;
                }
            }
            work.push(async move { (m, delete_one(kube, m, id).await) });
        }
        (s.progress)(format!(
            "pruning {} object{}",
            work.len(),
            plural(work.len())
        ));
        let results: Vec<_> = futures::stream::iter(work)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut waits = Vec::new();
        let mut failure = None;
        for (m, r) in results {
            match r {
                Ok(Some(uid)) => {
                    out.gone.push(m.key.clone());
                    if t > 0 {
                        waits.push((m, uid));
                    }
                }
                Ok(None) => out.gone.push(m.key.clone()),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        for (m, uid) in waits {
            (s.progress)(format!("waiting for {} to go", m.key));
            let api = api_of(kube, m);
            let gone = await_condition(api, &m.key.name, conditions::is_deleted(&uid));
            match tokio::time::timeout(s.timeout, gone).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(
                        StepError::transient(format!("lost the watch on {}", m.key)).with_source(e)
                    );
                }
                Err(_) => {
                    return Err(StepError::transient(format!(
                        "{} is still being deleted after {}s",
                        m.key,
                        s.timeout.as_secs()
                    )));
                }
            }
        }
    }
    Ok(out)
}

fn api_of(kube: &Kube, m: &Member) -> kube::Api<kube::api::DynamicObject> {
    match (&m.scope, &m.key.namespace) {
        (Scope::Namespaced, Some(ns)) => {
            kube::Api::namespaced_with(kube.client.clone(), ns, &m.resource)
        }
        _ => kube::Api::all_with(kube.client.clone(), &m.resource),
    }
}

/// Deletes one member: read again just before, still labelled a member with the same uid,
/// then deleted with a uid precondition. `Some(uid)` when deleted, `None` when it was gone or
/// no longer a member (another object with its name, or the label taken off).
async fn delete_one(kube: &Kube, m: &Member, id: &str) -> StepResult<Option<String>> {
    let api = api_of(kube, m);
    let live = api
        .get_metadata_opt(&m.key.name)
        .await
        .map_err(|e| api_error(format!("cannot read {} before pruning it", m.key), e))?;
    let Some(live) = live else { return Ok(None) };
    let member = live
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(PART_OF))
        .is_some_and(|v| v == id);
    if !member || live.metadata.uid.as_deref() != Some(m.uid()) {
        return Ok(None);
    }
    let dp = DeleteParams::background().preconditions(Preconditions {
        uid: Some(m.uid().to_string()),
        resource_version: None,
    });
    match api.delete(&m.key.name, &dp).await {
        Ok(_) => Ok(Some(m.uid().to_string())),
        Err(e) if is_not_found(&e) => Ok(None),
        // The uid precondition failed: another object has the name now.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(api_error(format!("cannot prune {}", m.key), e)),
    }
}

/// Objects in namespace `ns` that are not `plan`'s (a member of its set, or labelled with the
/// plan by an earlier version) and not made from one: what keeps a namespace from being
/// pruned or torn down. Objects with an owner (a ReplicaSet's pods, a Service's endpoints),
/// objects being deleted, events, and what the cluster puts in every namespace do not count.
pub async fn foreign_objects(kube: &Kube, ns: &str, plan: &str) -> StepResult<Vec<String>> {
    let id = applyset::set_id(plan);
    // Two requests (/api and /apis, aggregated) rather than one per group-version; a server
    // without aggregated discovery (before Kubernetes 1.26) is asked group by group.
    let discovery = match kube::discovery::Discovery::new(kube.client.clone())
        .run_aggregated()
        .await
    {
        Ok(d) => d,
        Err(_) => kube::discovery::Discovery::new(kube.client.clone())
            .run()
            .await
            .map_err(|e| api_error("cannot discover the API's kinds", e))?,
    };
    let mut foreign = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(kube::discovery::verbs::LIST)
                || DERIVED_KINDS.contains(&ar.kind.as_str())
            {
                continue;
            }
            let api: kube::Api<kube::api::DynamicObject> =
                kube::Api::namespaced_with(kube.client.clone(), ns, &ar);
            let list = match api.list_metadata(&ListParams::default()).await {
                Ok(l) => l,
                Err(e) if is_not_found(&e) => continue,
                Err(kube::Error::Api(s)) if s.code == 405 || s.code == 403 => continue,
                Err(e) => return Err(api_error(format!("cannot list {}s in {ns}", ar.kind), e)),
            };
            for o in list.items {
                let meta = &o.metadata;
                let name = meta.name.as_deref().unwrap_or_default();
                let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k));
                let ours = label(PART_OF).is_some_and(|v| *v == id)
                    || label(PLAN_LABEL).is_some_and(|v| v == plan);
                let derived = meta
                    .owner_references
                    .as_ref()
                    .is_some_and(|o| !o.is_empty())
                    || meta.deletion_timestamp.is_some()
                    || PER_NAMESPACE.contains(&(ar.kind.as_str(), name));
                if !ours && !derived {
                    foreign.push(format!("{} {name}", ar.kind));
                }
            }
        }
    }
    foreign.sort();
    Ok(foreign)
}

/// Kinds whose objects are made from others (or are records of them), never by a plan.
const DERIVED_KINDS: [&str; 4] = ["Event", "Endpoints", "EndpointSlice", "Lease"];
/// What the cluster (and Istio's control plane) puts in every namespace.
const PER_NAMESPACE: [(&str, &str); 3] = [
    ("ConfigMap", "kube-root-ca.crt"),
    ("ServiceAccount", "default"),
    ("ConfigMap", "istio-ca-root-cert"),
];

/// The releases this plan installed (helm's storage Secrets labelled with the plan), each
/// with the metadata (`{"metadata": ...}`) of its latest revision's Secret. One metadata-only
/// LIST across namespaces. Another storage driver than Secrets: none are known.
async fn plan_releases(kube: &Kube, plan: &str) -> StepResult<BTreeMap<(String, String), Value>> {
    let driver = std::env::var("HELM_DRIVER").unwrap_or_default();
    if !(driver.is_empty() || driver.starts_with("secret")) {
        return Ok(BTreeMap::new());
    }
    let api: kube::Api<Secret> = kube::Api::all(kube.client.clone());
    let params = ListParams::default().labels(&format!("owner=helm,{PLAN_LABEL}={plan}"));
    let list = api
        .list_metadata(&params)
        .await
        .map_err(|e| api_error("cannot list the plan's helm releases", e))?;
    let mut latest: BTreeMap<(String, String), (u64, Value)> = BTreeMap::new();
    for s in list.items {
        let m = s.metadata;
        let (Some(ns), Some(labels)) = (m.namespace.clone(), m.labels.clone()) else {
            continue;
        };
        let Some(name) = labels.get("name") else {
            continue;
        };
        let revision = labels
            .get("version")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let meta = serde_json::json!({ "metadata": m });
        let slot = latest.entry((ns, name.clone())).or_insert((0, Value::Null));
        if revision >= slot.0 {
            *slot = (revision, meta);
        }
    }
    Ok(latest.into_iter().map(|(k, (_, v))| (k, v)).collect())
}

/// What a prune would do, for `diff` and `status`: the parent and members read (no write),
/// judged as a run would judge them now.
pub struct Orphans {
    pub verdicts: Verdicts,
    pub releases: Vec<(String, String)>,
}

pub async fn preview(
    kube: &Kube,
    plan: &Plan,
    includes: &dyn Fn(&str) -> bool,
) -> StepResult<Orphans> {
    let mut desired = Desired::of(plan, includes);
    desired.settle_scopes(kube).await;
    let parent = kube.applyset_parent(&plan.name).await?;
    let Some(parent) = parent else {
        return Ok(Orphans {
            verdicts: Verdicts::default(),
            releases: Vec::new(),
        });
    };
    let members = kube
        .applyset_members(
            &applyset::set_id(&plan.name),
            &parent.scope,
            &desired.versions,
        )
        .await?;
    let off = (!plan.prune.enabled).then_some("`[prune] enabled = false`");
    let verdicts = judge(&desired, &members, &members, plan.prune, off);
    let releases = if off.is_some() || (desired.is_empty() && !plan.prune.empty) {
        Vec::new()
    } else {
        plan_releases(kube, &plan.name)
            .await?
            .into_keys()
            .filter(|r| !desired.releases.contains(r))
            .collect()
    };
    Ok(Orphans { verdicts, releases })
}

impl Orphans {
    /// The deletions a run would make, as changes.
    pub fn changes(&self) -> Vec<Change> {
        let mut out: Vec<Change> = self
            .releases
            .iter()
            .map(|(ns, r)| {
                Change::note(
                    ChangeKind::Delete,
                    format!("helm release {ns}/{r}"),
                    "no longer in the plan: `helm uninstall`".into(),
                )
            })
            .collect();
        out.extend(self.verdicts.delete.iter().map(|m| {
            Change::note(
                ChangeKind::Delete,
                m.key.to_string(),
                "no longer in the plan: pruned".into(),
            )
        }));
        out
    }
}

fn names<'a>(keys: impl Iterator<Item = &'a ObjectKey>) -> String {
    let all: Vec<String> = keys.map(|k| k.to_string()).collect();
    if all.len() > 5 {
        format!("{} and {} more", all[..5].join(", "), all.len() - 5)
    } else {
        all.join(", ")
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::GroupVersionKind;
    use serde_json::{Value, json};

    fn member(gvk: (&str, &str, &str), ns: Option<&str>, name: &str, meta: Value) -> Member {
        let gvk = GroupVersionKind::gvk(gvk.0, gvk.1, gvk.2);
        let mut meta = meta;
        meta["metadata"]["uid"] = json!(format!("uid-{name}"));
        Member {
            key: ObjectKey {
                gk: GroupKind::of(&gvk),
                namespace: ns.map(str::to_string),
                name: name.into(),
            },
            meta,
            resource: kube::discovery::ApiResource::from_gvk(&gvk),
            scope: if ns.is_some() {
                Scope::Namespaced
            } else {
                Scope::Cluster
            },
        }
    }

    fn members(list: Vec<Member>) -> Members {
        Members {
            by_key: list.into_iter().map(|m| (m.key.clone(), m)).collect(),
        }
    }

    fn desired(left_out: &[&str]) -> Desired {
        let mut d = Desired::default();
        d.steps
            .extend(["app", "ns", "gone-later"].map(String::from));
        d.left_out.extend(left_out.iter().map(|s| s.to_string()));
        d.add(
            GroupKind::parse("Deployment.apps").unwrap(),
            Some("shop"),
            "web",
            Some("v1"),
        );
        d.add(namespace_kind(), Some("default"), "shop", Some("v1"));
        d
    }

    fn step(s: &str) -> Value {
        json!({"metadata": {"annotations": {STEP_ANNOTATION: s}}})
    }

    #[test]
    fn only_what_left_the_plan_is_deleted_and_each_other_orphan_says_why() {
        let now = members(vec![
            member(
                ("apps", "v1", "Deployment"),
                Some("shop"),
                "web",
                step("app"),
            ),
            member(("", "v1", "Namespace"), None, "shop", step("ns")),
            member(
                ("apps", "v1", "Deployment"),
                Some("shop"),
                "old",
                step("app"),
            ),
            member(("apps", "v1", "Deployment"), Some("shop"), "kept", {
                let mut m = step("app");
                m["metadata"]["annotations"][PRUNE_ANNOTATION] = json!("disabled");
                m
            }),
            member(("apps", "v1", "Deployment"), Some("shop"), "helmkeep", {
                let mut m = step("app");
                m["metadata"]["annotations"]["helm.sh/resource-policy"] = json!("keep");
                m
            }),
            member(
                ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
                None,
                "widgets.example.com",
                step("gone-later"),
            ),
            member(("", "v1", "Namespace"), None, "default", step("ns")),
            member(("", "v1", "ConfigMap"), Some("shop"), "fresh", step("app")),
            member(("", "v1", "ConfigMap"), Some("shop"), "going", {
                let mut m = step("app");
                m["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                m
            }),
        ]);
        let mut before = now.clone();
        before.by_key.retain(|k, _| k.name != "fresh");
        let v = judge(
            &desired(&[]),
            &before,
            &now,
            crate::plan::Prune::default(),
            None,
        );
        let deleted: Vec<String> = v.delete.iter().map(|m| m.key.to_string()).collect();
        assert_eq!(deleted, ["Deployment shop/old"]);
        let why: BTreeMap<String, Kept> = v
            .kept
            .iter()
            .map(|(k, why)| (k.name.clone(), why.clone()))
            .collect();
        assert!(matches!(why["kept"], Kept::OptedOut(_)));
        assert!(matches!(why["helmkeep"], Kept::OptedOut(_)));
        assert_eq!(why["widgets.example.com"], Kept::Crd);
        assert_eq!(why["default"], Kept::Protected);
        assert_eq!(why["fresh"], Kept::New);
        assert_eq!(why["going"], Kept::Deleting);
        assert!(
            !why.contains_key("web") && !why.contains_key("shop"),
            "desired"
        );

        // CRDs go when the plan says so.
        let crds = crate::plan::Prune {
            crds: true,
            ..Default::default()
        };
        let v = judge(&desired(&[]), &before, &now, crds, None);
        assert!(v.delete.iter().any(|m| m.key.name == "widgets.example.com"));

        // A step left out of the run keeps its objects; pruning off keeps everything.
        let v = judge(&desired(&["app"]), &before, &now, Default::default(), None);
        assert!(v.delete.is_empty(), "{:?}", v.delete);
        let v = judge(
            &desired(&[]),
            &before,
            &now,
            Default::default(),
            Some("--no-prune"),
        );
        assert!(v.delete.is_empty());
        assert!(v.kept.iter().all(|(_, k)| *k == Kept::Off("--no-prune")));

        // A plan that asks for nothing prunes nothing, unless asked.
        let empty = Desired::default();
        let v = judge(&empty, &before, &now, Default::default(), None);
        assert!(v.delete.is_empty());
        let all = crate::plan::Prune {
            empty: true,
            ..Default::default()
        };
        let v = judge(&empty, &before, &now, all, None);
        assert!(v.delete.iter().any(|m| m.key.name == "web"));

        // Unknown manifests of a left-out step: nothing is pruned.
        let mut unknown = desired(&["gone-later"]);
        unknown.unknown.push("gone-later".into());
        let v = judge(&unknown, &before, &now, Default::default(), None);
        assert!(v.delete.is_empty());
    }

    #[test]
    fn cluster_scoped_members_match_by_name_whatever_namespace_the_step_gave() {
        let mut d = Desired::default();
        d.add(
            GroupKind::parse("ClusterRole.rbac.authorization.k8s.io").unwrap(),
            Some("istio-system"),
            "reader",
            Some("v1"),
        );
        let m = member(
            ("rbac.authorization.k8s.io", "v1", "ClusterRole"),
            None,
            "reader",
            step("app"),
        );
        assert!(d.contains(&m));
    }
}
