//! The plan's ApplySet (KEP-3659, what `kubectl apply --prune --applyset` uses): which objects
//! the plan manages, recorded in the cluster the way other tools read it.
//!
//! - The **parent** is a Secret, `kube-system/bookinfo-up.<plan>`, labelled
//!   `applyset.kubernetes.io/id=<id>`, with the `tooling`, `contains-group-kinds` and
//!   `additional-namespaces` annotations. A Secret because it is kubectl's own default parent
//!   kind and needs no CRD of ours (a CRD would be one more object with a life of its own);
//!   in kube-system because that namespace outlives every namespace a plan makes, so the
//!   parent is never deleted with the objects it lists. The plan's objects span namespaces,
//!   which the KEP's `additional-namespaces` annotation exists for. One set per plan, not per
//!   namespace: one parent to widen and narrow, and cluster-scoped members (CRDs, namespaces)
//!   belong to it like the rest.
//! - Each **member** carries `applyset.kubernetes.io/part-of=<id>`.
//! - The **id** is the KEP's: `applyset-` + unpadded base64url(sha256(`name.namespace.Kind.group`))
//!   + `-v1`.
//!
//! This module reads and writes the parent and lists the members, with label-selected,
//! metadata-only LISTs: one per group-kind (across the set's namespaces when allowed, else one
//! per namespace). What to prune is decided by `steps::prune`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine as _;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{FIELD_MANAGER, Kube, PLAN_LABEL, api_error};
use crate::error::StepResult;

pub const ID_LABEL: &str = "applyset.kubernetes.io/id";
pub const PART_OF: &str = "applyset.kubernetes.io/part-of";
pub const TOOLING: &str = "applyset.kubernetes.io/tooling";
pub const CONTAINS_GROUP_KINDS: &str = "applyset.kubernetes.io/contains-group-kinds";
pub const ADDITIONAL_NAMESPACES: &str = "applyset.kubernetes.io/additional-namespaces";
/// Where every plan's parent lives.
pub const PARENT_NAMESPACE: &str = "kube-system";

/// How many LISTs run at once: one per group-kind of a plan the size of the seed's (they
/// share one HTTP/2 connection; the API server serves hundreds at once).
const CONCURRENCY: usize = 16;

/// The parent Secret's name for `plan`.
pub fn parent_name(plan: &str) -> String {
    format!("bookinfo-up.{plan}")
}

/// The KEP-3659 id of the parent `name` in `namespace` of `kind` in `group` ("" for core).
pub fn id(name: &str, namespace: &str, kind: &str, group: &str) -> String {
    let digest = Sha256::digest(format!("{name}.{namespace}.{kind}.{group}"));
    format!(
        "applyset-{}-v1",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

/// The id of `plan`'s set.
pub fn set_id(plan: &str) -> String {
    id(&parent_name(plan), PARENT_NAMESPACE, "Secret", "")
}

/// A kind without its version, as the KEP writes it: `Kind` for the core group, else
/// `Kind.group`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKind {
    pub group: String,
    pub kind: String,
}

impl GroupKind {
    pub fn of(gvk: &GroupVersionKind) -> Self {
        Self {
            group: gvk.group.clone(),
            kind: gvk.kind.clone(),
        }
    }

    /// `Kind.group` (or `Kind`) as the annotation holds it.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        let (kind, group) = text.split_once('.').unwrap_or((text, ""));
        Some(Self {
            group: group.into(),
            kind: kind.into(),
        })
    }

    pub fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.kind == "Namespace"
    }

    pub fn is_crd(&self) -> bool {
        self.group == "apiextensions.k8s.io" && self.kind == "CustomResourceDefinition"
    }
}

impl fmt::Display for GroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

/// Which object: its group-kind, namespace (`None` when cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub gk: GroupKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.gk.kind, self.name),
            None => write!(f, "{} {}", self.gk.kind, self.name),
        }
    }
}

/// What the parent records: the group-kinds and namespaces its members may be in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetScope {
    pub group_kinds: BTreeSet<GroupKind>,
    /// Every namespace a member may be in, the parent's own included.
    pub namespaces: BTreeSet<String>,
}

impl SetScope {
    pub fn union(&self, other: &SetScope) -> SetScope {
        SetScope {
            group_kinds: self
                .group_kinds
                .union(&other.group_kinds)
                .cloned()
                .collect(),
            namespaces: self.namespaces.union(&other.namespaces).cloned().collect(),
        }
    }

    /// Whether `self` covers everything `other` does.
    pub fn covers(&self, other: &SetScope) -> bool {
        self.group_kinds.is_superset(&other.group_kinds)
            && self.namespaces.is_superset(&other.namespaces)
    }

    /// The annotations that record it.
    fn annotations(&self) -> (String, String) {
        // Sorted as strings, as kubectl writes them.
        let mut gks: Vec<String> = self.group_kinds.iter().map(|g| g.to_string()).collect();
        gks.sort();
        let nss: Vec<&str> = self
            .namespaces
            .iter()
            .map(String::as_str)
            .filter(|n| *n != PARENT_NAMESPACE)
            .collect();
        (gks.join(","), nss.join(","))
    }

    fn from_annotations(annotations: &BTreeMap<String, String>) -> SetScope {
        let split = |key: &str| -> Vec<String> {
            annotations
                .get(key)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut namespaces: BTreeSet<String> = split(ADDITIONAL_NAMESPACES).into_iter().collect();
        namespaces.insert(PARENT_NAMESPACE.into());
        SetScope {
            group_kinds: split(CONTAINS_GROUP_KINDS)
                .iter()
                .filter_map(|g| GroupKind::parse(g))
                .collect(),
            namespaces,
        }
    }
}

/// The parent as read: `None` when there is none.
#[derive(Debug, Clone)]
pub struct Parent {
    pub scope: SetScope,
}

/// One member as listed: its metadata (`{"metadata": ...}`) and the API it is served by.
#[derive(Debug, Clone)]
pub struct Member {
    pub key: ObjectKey,
    pub meta: Value,
    pub resource: ApiResource,
    pub scope: Scope,
}

impl Member {
    pub fn uid(&self) -> &str {
        self.meta["metadata"]["uid"].as_str().unwrap_or_default()
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.meta["metadata"]["labels"][key].as_str()
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.meta["metadata"]["annotations"][key].as_str()
    }

    pub fn deleting(&self) -> bool {
        !self.meta["metadata"]["deletionTimestamp"].is_null()
    }
}

/// The members of a set, by key, as one round of LISTs found them.
#[derive(Debug, Clone, Default)]
pub struct Members {
    pub by_key: BTreeMap<ObjectKey, Member>,
}

impl Members {
    /// The listed metadata of the object at `key`, if it is a member.
    pub fn meta(&self, key: &ObjectKey) -> Option<&Value> {
        self.by_key.get(key).map(|m| &m.meta)
    }

    /// The group-kinds and namespaces the members are in.
    pub fn scope(&self) -> SetScope {
        let mut s = SetScope::default();
        for k in self.by_key.keys() {
            s.group_kinds.insert(k.gk.clone());
            if let Some(ns) = &k.namespace {
                s.namespaces.insert(ns.clone());
            }
        }
        s
    }
}

impl Kube {
    fn parents(&self) -> kube::Api<Secret> {
        kube::Api::namespaced(self.client.clone(), PARENT_NAMESPACE)
    }

    /// The plan's parent, if there is one. One GET.
    pub async fn applyset_parent(&self, plan: &str) -> StepResult<Option<Parent>> {
        let name = parent_name(plan);
        let found = self.parents().get_metadata_opt(&name).await.map_err(|e| {
            api_error(
                format!("cannot read the ApplySet parent Secret {PARENT_NAMESPACE}/{name}"),
                e,
            )
        })?;
        Ok(found.map(|p| Parent {
            scope: SetScope::from_annotations(&p.metadata.annotations.unwrap_or_default()),
        }))
    }

    /// Writes the parent with `scope` (server-side apply under `FIELD_MANAGER`).
    pub async fn write_applyset_parent(&self, plan: &str, scope: &SetScope) -> StepResult<()> {
        let name = parent_name(plan);
        let (gks, nss) = scope.annotations();
        let parent = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": PARENT_NAMESPACE,
                "labels": {ID_LABEL: set_id(plan), PLAN_LABEL: plan},
                "annotations": {
                    TOOLING: format!("bookinfo-up/{}", env!("CARGO_PKG_VERSION")),
                    CONTAINS_GROUP_KINDS: gks,
                    ADDITIONAL_NAMESPACES: nss,
                },
            },
        });
        self.parents()
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&parent),
            )
            .await
            .map_err(|e| {
                api_error(
                    format!("cannot write the ApplySet parent Secret {PARENT_NAMESPACE}/{name}"),
                    e,
                )
            })?;
        Ok(())
    }

    /// Deletes the plan's parent, if it is the set's (its id label), with a uid precondition.
    pub async fn delete_applyset_parent(&self, plan: &str) -> StepResult<()> {
        let name = parent_name(plan);
        let Some(live) = self
            .parents()
            .get_metadata_opt(&name)
            .await
            .map_err(|e| api_error(format!("cannot read {PARENT_NAMESPACE}/{name}"), e))?
        else {
            return Ok(());
        };
        let ours = live
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ID_LABEL))
            .is_some_and(|v| *v == set_id(plan));
        if !ours {
            return Ok(());
        }
        let dp = kube::api::DeleteParams::default().preconditions(kube::api::Preconditions {
            uid: live.metadata.uid.clone(),
            resource_version: None,
        });
        match self.parents().delete(&name, &dp).await {
            Ok(_) => Ok(()),
            Err(e) if super::is_not_found(&e) => Ok(()),
            Err(e) => Err(api_error(
                format!("cannot delete {PARENT_NAMESPACE}/{name}"),
                e,
            )),
        }
    }

    /// The API serving `gk`: at `version` when given (and served), else the group's preferred
    /// version. `None` when the server does not serve the kind (a CRD gone: no members left).
    pub async fn resolve_group_kind(
        &self,
        gk: &GroupKind,
        version: Option<&str>,
    ) -> StepResult<Option<(ApiResource, ApiCapabilities)>> {
        if let Some(v) = version
            && let Some(found) = self
                .try_resolve(&GroupVersionKind::gvk(&gk.group, v, &gk.kind))
                .await?
        {
            return Ok(Some(found));
        }
        let preferred = if gk.group.is_empty() {
            "v1".to_string()
        } else {
            match kube::discovery::group(&self.client, &gk.group).await {
                Ok(g) => g.preferred_version_or_latest().to_string(),
                Err(e) if super::is_not_found(&e) || matches!(e, kube::Error::Discovery(_)) => {
                    return Ok(None);
                }
                Err(e) => return Err(api_error(format!("cannot discover group {}", gk.group), e)),
            }
        };
        self.try_resolve(&GroupVersionKind::gvk(&gk.group, &preferred, &gk.kind))
            .await
    }

    /// Every member of set `id` in `scope`: a metadata-only LIST selected by the `part-of`
    /// label per group-kind (across namespaces, or per namespace where that is not allowed),
    /// concurrently. `versions` names a served version per group-kind where the plan knows one.
    pub async fn applyset_members(
        &self,
        id: &str,
        scope: &SetScope,
        versions: &BTreeMap<GroupKind, String>,
    ) -> StepResult<Members> {
        let lists: Vec<_> = scope
            .group_kinds
            .iter()
            .map(|gk| self.members_of_kind(id, gk, versions.get(gk).map(String::as_str), scope))
            .collect();
        let results: Vec<StepResult<Vec<Member>>> = stream::iter(lists)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut members = Members::default();
        for r in results {
            for m in r? {
                members.by_key.insert(m.key.clone(), m);
            }
        }
        Ok(members)
    }

    async fn members_of_kind(
        &self,
        id: &str,
        gk: &GroupKind,
        version: Option<&str>,
        scope: &SetScope,
    ) -> StepResult<Vec<Member>> {
        let Some((ar, caps)) = self.resolve_group_kind(gk, version).await? else {
            return Ok(Vec::new());
        };
        let params = ListParams::default().labels(&format!("{PART_OF}={id}"));
        let doing = || format!("cannot list the ApplySet's {gk} objects");
        let mut metas = Vec::new();
        match caps.scope {
            Scope::Cluster => {
                let api: kube::Api<kube::api::DynamicObject> =
                    kube::Api::all_with(self.client.clone(), &ar);
                let list = api
                    .list_metadata(&params)
                    .await
                    .map_err(|e| api_error(doing(), e))?;
                metas.extend(list.items);
            }
            Scope::Namespaced => {
                let all: kube::Api<kube::api::DynamicObject> =
                    kube::Api::all_with(self.client.clone(), &ar);
                let across = if scope.namespaces.len() > 1 {
                    match all.list_metadata(&params).await {
                        Ok(list) => Some(list.items),
                        // Not allowed to list across namespaces: one LIST per namespace.
                        Err(kube::Error::Api(s)) if s.code == 403 => None,
                        Err(e) => return Err(api_error(doing(), e)),
                    }
                } else {
                    None
                };
                match across {
                    Some(items) => metas.extend(items.into_iter().filter(|o| {
                        o.metadata
                            .namespace
                            .as_ref()
                            .is_some_and(|ns| scope.namespaces.contains(ns))
                    })),
                    None => {
                        for ns in &scope.namespaces {
                            let api: kube::Api<kube::api::DynamicObject> =
                                kube::Api::namespaced_with(self.client.clone(), ns, &ar);
                            match api.list_metadata(&params).await {
                                Ok(list) => metas.extend(list.items),
                                Err(e) if super::is_not_found(&e) => {}
                                Err(e) => return Err(api_error(doing(), e)),
                            }
                        }
                    }
                }
            }
        }
        Ok(metas
            .into_iter()
            .map(|mut o| {
                // Kept for the run: what the ledger, the namespace step and the prune read
                // (uid, resourceVersion, generation, labels, annotations). managedFields,
                // often most of an object's metadata, is not among them.
                o.metadata.managed_fields = None;
                let key = ObjectKey {
                    gk: gk.clone(),
                    namespace: match caps.scope {
                        Scope::Cluster => None,
                        Scope::Namespaced => o.metadata.namespace.clone(),
                    },
                    name: o.metadata.name.clone().unwrap_or_default(),
                };
                Member {
                    key,
                    meta: json!({"metadata": serde_json::to_value(&o.metadata).unwrap_or_default()}),
                    resource: ar.clone(),
                    scope: caps.scope.clone(),
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_keps() {
        // kubectl's own test vector (staging/src/k8s.io/kubectl/pkg/cmd/apply/applyset_test.go).
        assert_eq!(
            id("my-set", "test", "Secret", ""),
            "applyset-0eFHV8ySqp7XoShsGvyWFQD3s96yqwHmzc4e0HR1dsY-v1"
        );
        assert_eq!(
            set_id("demo"),
            id("bookinfo-up.demo", "kube-system", "Secret", "")
        );
        assert_ne!(set_id("demo"), set_id("other"));
    }

    #[test]
    fn group_kinds_read_and_write_as_the_kep_does() {
        let gk = GroupKind::parse("Deployment.apps").unwrap();
        assert_eq!(
            (gk.kind.as_str(), gk.group.as_str()),
            ("Deployment", "apps")
        );
        assert_eq!(gk.to_string(), "Deployment.apps");
        let core = GroupKind::parse("ConfigMap").unwrap();
        assert_eq!(core.to_string(), "ConfigMap");
        let istio = GroupKind::parse("VirtualService.networking.istio.io").unwrap();
        assert_eq!(istio.group, "networking.istio.io");
        assert!(GroupKind::parse(" ").is_none());
    }

    #[test]
    fn scopes_round_trip_through_the_annotations_sorted() {
        let scope = SetScope {
            group_kinds: ["Service", "Deployment.apps", "ConfigMap"]
                .iter()
                .filter_map(|g| GroupKind::parse(g))
                .collect(),
            namespaces: ["kube-system", "bookinfo", "istio-system"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let (gks, nss) = scope.annotations();
        assert_eq!(gks, "ConfigMap,Deployment.apps,Service");
        assert_eq!(nss, "bookinfo,istio-system", "the parent's own is implied");
        let annotations = BTreeMap::from([
            (CONTAINS_GROUP_KINDS.to_string(), gks),
            (ADDITIONAL_NAMESPACES.to_string(), nss),
        ]);
        assert_eq!(SetScope::from_annotations(&annotations), scope);
        let empty = SetScope::from_annotations(&BTreeMap::from([(
            CONTAINS_GROUP_KINDS.to_string(),
            String::new(),
        )]));
        assert!(empty.group_kinds.is_empty());
        assert!(scope.union(&empty).covers(&scope));
        assert!(!empty.covers(&scope));
    }
}
