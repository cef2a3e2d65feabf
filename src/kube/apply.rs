//! Server-side apply of one manifest object, writing only on a difference. `Kube::locate`
//! finds an object's API and namespace; `Kube::apply_owned` creates or converges it under
//! `FIELD_MANAGER` with plan ownership; `Kube::apply_partial` converges a partial object under
//! a manager of its own; `Kube::delete_owned` deletes only what a plan created.

use std::time::Duration;

use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::runtime::wait::{await_condition, conditions};
use serde_json::Value;

use super::{FIELD_MANAGER, Kube, PLAN_LABEL, STEP_ANNOTATION, api_error, gvk_of, is_not_found};
use crate::error::{StepError, StepResult};

/// What applying one object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

/// What deleting one object did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Deleted; `uid` identifies it while it finalizes.
    Deleted { uid: String },
    /// Already gone, or its kind is no longer served.
    Gone,
    /// Not labelled with the plan: left alone.
    NotOurs,
}

/// Who creates objects: the plan (its `PLAN_LABEL` value) and the step.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub plan: &'a str,
    pub step: &'a str,
}

/// A manifest object bound to its API: the namespace defaulted for namespaced kinds and
/// removed from cluster-scoped ones.
pub struct Located {
    pub object: Value,
    pub gvk: GroupVersionKind,
    pub name: String,
    pub namespace: Option<String>,
    pub api: kube::Api<DynamicObject>,
    /// The kind's API resource, for reads across namespaces.
    pub resource: kube::discovery::ApiResource,
}

impl Located {
    /// `Kind namespace/name`, for messages.
    pub fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.gvk.kind, self.name),
            None => format!("{} {}", self.gvk.kind, self.name),
        }
    }

    /// Which object this is, as the ApplySet's member lists key it.
    pub fn key(&self) -> super::applyset::ObjectKey {
        super::applyset::ObjectKey {
            gk: super::applyset::GroupKind::of(&self.gvk),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// The object's key in the ledger, as applied by `manager`.
    pub fn ledger_key(&self, manager: &str) -> String {
        super::ledger::key(
            &self.gvk.api_version(),
            &self.gvk.kind,
            self.namespace.as_deref(),
            &self.name,
            manager,
        )
    }

    /// The live object, or `None` when there is none.
    pub async fn get(&self) -> StepResult<Option<Value>> {
        match self.api.get_opt(&self.name).await {
            Ok(found) => Ok(found.map(to_value)),
            Err(e) => Err(api_error(format!("cannot read {}", self.display()), e)),
        }
    }

    /// Waits (watch-based, no timeout of its own) until the object with `uid` is gone.
    pub async fn deleted(&self, uid: &str) -> StepResult<()> {
        await_condition(self.api.clone(), &self.name, conditions::is_deleted(uid))
            .await
            .map(|_| ())
            .map_err(|e| {
                StepError::transient(format!("lost the watch on {}", self.display())).with_source(e)
            })
    }
}

impl Kube {
    /// Binds a manifest object to its API. A kind the server does not serve yet is retried
    /// with backoff for up to `patience` (see `resolve`).
    pub async fn locate(
        &self,
        object: &Value,
        default_namespace: &str,
        patience: Duration,
    ) -> StepResult<Located> {
        let gvk = gvk_of(object);
        let (ar, caps) = self.resolve(&gvk, patience).await?;
        Ok(self.bind(object, gvk, &ar, &caps, default_namespace))
    }

    /// Like `locate`, but `None` when the server does not serve the kind (any more): for
    /// teardown, where a kind whose CRD is gone means its objects are gone too.
    pub async fn locate_if_served(
        &self,
        object: &Value,
        default_namespace: &str,
    ) -> StepResult<Option<Located>> {
        let gvk = gvk_of(object);
        Ok(self
            .try_resolve(&gvk)
            .await?
            .map(|(ar, caps)| self.bind(object, gvk, &ar, &caps, default_namespace)))
    }

    fn bind(
        &self,
        object: &Value,
        gvk: GroupVersionKind,
        ar: &kube::discovery::ApiResource,
        caps: &kube::discovery::ApiCapabilities,
        default_namespace: &str,
    ) -> Located {
        let mut object = object.clone();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let namespace = match caps.scope {
            Scope::Namespaced => {
                let ns = object["metadata"]["namespace"]
                    .as_str()
                    .filter(|ns| !ns.is_empty())
                    .unwrap_or(default_namespace)
                    .to_string();
                object["metadata"]["namespace"] = Value::String(ns.clone());
                Some(ns)
            }
            Scope::Cluster => {
                if let Some(meta) = object["metadata"].as_object_mut() {
                    meta.remove("namespace");
                }
                None
            }
        };
        let api = self.dynamic_api(ar, caps, namespace.as_deref());
        Located {
            object,
            gvk,
            name,
            namespace,
            api,
            resource: ar.clone(),
        }
    }

    /// Creates or converges a whole object under `FIELD_MANAGER`, forcing ownership of the
    /// fields it sets. An object it creates gets the plan label and step annotation; an object
    /// that existed without the label is applied without it, so the plan never claims (and
    /// teardown never deletes) what it did not create.
    ///
    /// A member of the plan's ApplySet that the ledger vouches for (listed before the run with
    /// the uid and resourceVersion a run found converged to the same desired object) is
    /// unchanged without a request of its own.
    pub async fn apply_owned(
        &self,
        target: &Located,
        owner: Owner<'_>,
    ) -> StepResult<ApplyOutcome> {
        if let Some(meta) = self.members.meta(&target.key()) {
            let desired = with_ownership(&target.object, Some(meta), owner);
            if self
                .ledger
                .vouches(&target.ledger_key(FIELD_MANAGER), meta, &desired)
            {
                return Ok(ApplyOutcome::Unchanged);
            }
        }
        let live = target.get().await?;
        let desired = with_ownership(&target.object, live.as_ref(), owner);
        let (outcome, after) = match live {
            None => {
                let pp = PatchParams::apply(FIELD_MANAGER).force();
                let created = target
                    .api
                    .patch(&target.name, &pp, &Patch::Apply(&desired))
                    .await
                    .map_err(|e| api_error(format!("cannot create {}", target.display()), e))?;
                (ApplyOutcome::Created, to_value(created))
            }
            Some(live) => converge(target, &desired, FIELD_MANAGER, true, live).await?,
        };
        self.ledger
            .record(target.ledger_key(FIELD_MANAGER), &after, &desired);
        Ok(outcome)
    }

    /// Converges a partial object under `manager`, without forcing: a field another manager
    /// owns with a different value is a conflict, not a silent takeover, which keeps
    /// `retract_partial` exact. The object must exist: a patch never creates.
    pub async fn apply_partial(&self, target: &Located, manager: &str) -> StepResult<ApplyOutcome> {
        let Some(live) = target.get().await? else {
            return Err(StepError::fatal(format!(
                "cannot patch {}: it does not exist",
                target.display()
            )));
        };
        // Unwritten since a run found it converged to the same partial object: no dry run.
        if self
            .ledger
            .vouches(&target.ledger_key(manager), &live, &target.object)
        {
            return Ok(ApplyOutcome::Unchanged);
        }
        let (outcome, after) = converge(target, &target.object, manager, false, live).await?;
        self.ledger
            .record(target.ledger_key(manager), &after, &target.object);
        Ok(outcome)
    }

    /// Removes every field `manager` owns and no other manager shares, by applying an object
    /// that sets nothing under that manager (server-side apply drops what a manager stops
    /// applying). For a list merged by key, such as Service ports, this removes exactly the
    /// manager's items. Returns whether anything was written.
    pub async fn retract_partial(&self, target: &Located, manager: &str) -> StepResult<bool> {
        let Some(live) = target.get().await? else {
            return Ok(false);
        };
        if !manages(&live, manager) {
            return Ok(false);
        }
        let mut skeleton = serde_json::json!({
            "apiVersion": target.object["apiVersion"],
            "kind": target.object["kind"],
            "metadata": {"name": target.name},
        });
        if let Some(ns) = &target.namespace {
            skeleton["metadata"]["namespace"] = Value::String(ns.clone());
        }
        target
            .api
            .patch(
                &target.name,
                &PatchParams::apply(manager),
                &Patch::Apply(&skeleton),
            )
            .await
            .map_err(|e| {
                api_error(
                    format!(
                        "cannot revert the fields of `{manager}` on {}",
                        target.display()
                    ),
                    e,
                )
            })?;
        Ok(true)
    }

    /// Deletes the object if it carries `PLAN_LABEL=plan`; a uid precondition makes sure the
    /// object deleted is the one inspected.
    pub async fn delete_owned(&self, target: &Located, plan: &str) -> StepResult<DeleteOutcome> {
        let Some(live) = target.get().await? else {
            return Ok(DeleteOutcome::Gone);
        };
        if live["metadata"]["labels"][PLAN_LABEL].as_str() != Some(plan) {
            return Ok(DeleteOutcome::NotOurs);
        }
        let uid = live["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let dp = DeleteParams::background().preconditions(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        });
        match target.api.delete(&target.name, &dp).await {
            Ok(_) => Ok(DeleteOutcome::Deleted { uid }),
            Err(e) if is_not_found(&e) => Ok(DeleteOutcome::Gone),
            Err(e) => Err(api_error(format!("cannot delete {}", target.display()), e)),
        }
    }
}

/// Applies `desired` only when it would change the object; returns the object afterwards.
///
/// How "would change" is decided: a server-side dry run of the same apply returns the object
/// as the apply would leave it, without persisting anything. Since nothing is written, the
/// dry-run result keeps the live resourceVersion whether or not the content would change, so
/// the comparison is on content: the result equals the live object, ignoring
/// resourceVersion, status and managedFields timestamps, exactly when the apply is a no-op.
/// Only this manager's managedFields entry is compared, so another controller updating its
/// status between our GET and the dry run does not count as a change, while an apply that only
/// takes over ownership of a field does. The API server's own defaulting, validation and list
/// merging decide, which no client-side diff could reproduce. A converged object costs one GET
/// and one dry-run PATCH and is never written, so second runs leave resourceVersions alone.
async fn converge(
    target: &Located,
    desired: &Value,
    manager: &str,
    force: bool,
    live: Value,
) -> StepResult<(ApplyOutcome, Value)> {
    let dry = dry_run(target, desired, manager, force)
        .await
        .map_err(|e| dry_run_error(target, e))?;
    if !differs(&live, &dry, manager) {
        return Ok((ApplyOutcome::Unchanged, live));
    }
    let applied = target
        .api
        .patch(
            &target.name,
            &params(manager, force),
            &Patch::Apply(desired),
        )
        .await
        .map_err(|e| api_error(format!("cannot apply {}", target.display()), e))?;
    Ok((ApplyOutcome::Configured, to_value(applied)))
}

fn params(manager: &str, force: bool) -> PatchParams {
    let pp = PatchParams::apply(manager);
    if force { pp.force() } else { pp }
}

/// The object as the apply would leave it, from a server-side dry run (nothing persisted).
/// The API error is the caller's to word: a run fails on it, a preview reports it.
async fn dry_run(
    target: &Located,
    desired: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, kube::Error> {
    target
        .api
        .patch(
            &target.name,
            &params(manager, force).dry_run(),
            &Patch::Apply(desired),
        )
        .await
        .map(to_value)
}

fn dry_run_error(target: &Located, e: kube::Error) -> StepError {
    api_error(format!("cannot apply {} (dry run)", target.display()), e)
}

/// Whether an apply by `manager` that the server answers with `dry` changes `live`.
fn differs(live: &Value, dry: &Value, manager: &str) -> bool {
    comparable(live, manager) != comparable(dry, manager)
}

/// What an apply would do to one object, found without changing anything, by the same
/// dry run and comparison the apply itself decides by.
#[derive(Debug, Clone, PartialEq)]
pub enum Preview {
    /// No such object: the apply would create this.
    Create(Value),
    Unchanged,
    /// The live object, and the object as the apply would leave it.
    Update {
        live: Value,
        after: Value,
    },
    /// A partial object whose target does not exist: the patch would fail.
    Missing,
    /// The API server refused the dry run (a field another manager owns, a webhook, a
    /// schema): the apply would fail with this message.
    Refused(String),
}

impl Kube {
    /// What `apply_owned` would do. An object the ledger vouches for (unwritten since a run
    /// found it converged to the same desired object) is unchanged without a dry run.
    pub async fn preview_owned(&self, target: &Located, owner: Owner<'_>) -> StepResult<Preview> {
        let meta = self.live_meta(target).await?;
        let desired = with_ownership(&target.object, meta.as_ref(), owner);
        let Some(meta) = meta else {
            return Ok(Preview::Create(desired));
        };
        if self
            .ledger
            .vouches(&target.ledger_key(FIELD_MANAGER), &meta, &desired)
        {
            return Ok(Preview::Unchanged);
        }
        let Some(live) = target.get().await? else {
            return Ok(Preview::Create(desired));
        };
        preview(target, &desired, FIELD_MANAGER, true, live).await
    }

    /// What `apply_partial` would do.
    pub async fn preview_partial(&self, target: &Located, manager: &str) -> StepResult<Preview> {
        let Some(meta) = self.live_meta(target).await? else {
            return Ok(Preview::Missing);
        };
        if self
            .ledger
            .vouches(&target.ledger_key(manager), &meta, &target.object)
        {
            return Ok(Preview::Unchanged);
        }
        let Some(live) = target.get().await? else {
            return Ok(Preview::Missing);
        };
        preview(target, &target.object, manager, false, live).await
    }
}

async fn preview(
    target: &Located,
    desired: &Value,
    manager: &str,
    force: bool,
    live: Value,
) -> StepResult<Preview> {
    let dry = match dry_run(target, desired, manager, force).await {
        Ok(dry) => dry,
        Err(kube::Error::Api(s))
            if (400..500).contains(&s.code) && s.code != 401 && s.code != 403 =>
        {
            return Ok(Preview::Refused(s.message.clone()));
        }
        Err(e) => return Err(dry_run_error(target, e)),
    };
    Ok(if differs(&live, &dry, manager) {
        Preview::Update { live, after: dry }
    } else {
        Preview::Unchanged
    })
}

/// The parts of an object an apply by `manager` can change: everything but status, the
/// resourceVersion and other managers' managedFields entries, and without timestamps.
pub fn comparable(object: &Value, manager: &str) -> Value {
    let mut o = object.clone();
    if let Some(map) = o.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = o["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
        let mine: Vec<Value> = meta
            .get("managedFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| e["manager"] == manager)
            .map(|e| {
                let mut e = e.clone();
                if let Some(m) = e.as_object_mut() {
                    m.remove("time");
                }
                e
            })
            .collect();
        meta.insert("managedFields".into(), Value::Array(mine));
    }
    o
}

/// Whether `manager` has a server-side apply entry in the object's managedFields.
pub fn manages(object: &Value, manager: &str) -> bool {
    object["metadata"]["managedFields"]
        .as_array()
        .is_some_and(|entries| {
            entries
                .iter()
                .any(|e| e["manager"] == manager && e["operation"] == "Apply")
        })
}

/// The object to apply given what is live: a new object gets the plan label, the step
/// annotation and the plan's ApplySet `part-of` label; an existing one keeps whatever plan
/// label, step annotation and `part-of` label it has (applying without them would drop them
/// if this manager set them), and gets none otherwise, except that an object this plan made
/// (an earlier version labelled it with the plan only) joins the plan's ApplySet.
pub fn with_ownership(object: &Value, live: Option<&Value>, owner: Owner<'_>) -> Value {
    let mut desired = object.clone();
    let set = || super::applyset::set_id(owner.plan);
    let (label, annotation, part_of) = match live {
        None => (
            Some(owner.plan.to_string()),
            Some(owner.step.to_string()),
            Some(set()),
        ),
        Some(live) => {
            let label = live["metadata"]["labels"][PLAN_LABEL].as_str();
            let part_of = live["metadata"]["labels"][super::applyset::PART_OF]
                .as_str()
                .map(str::to_string)
                .or_else(|| (label == Some(owner.plan)).then(set));
            (
                label.map(str::to_string),
                live["metadata"]["annotations"][STEP_ANNOTATION]
                    .as_str()
                    .map(str::to_string),
                part_of,
            )
        }
    };
    if let Some(label) = label {
        set_string(&mut desired, "labels", PLAN_LABEL, label);
    }
    if let Some(part_of) = part_of {
        set_string(&mut desired, "labels", super::applyset::PART_OF, part_of);
    }
    if let Some(annotation) = annotation {
        set_string(&mut desired, "annotations", STEP_ANNOTATION, annotation);
    }
    desired
}

fn set_string(object: &mut Value, map: &str, key: &str, value: String) {
    if !object["metadata"][map].is_object() {
        object["metadata"][map] = Value::Object(Default::default());
    }
    object["metadata"][map][key] = Value::String(value);
}

fn to_value(o: DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OWNER: Owner<'static> = Owner {
        plan: "demo",
        step: "apply-crds",
    };

    #[test]
    fn new_objects_are_labelled() {
        let o = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let d = with_ownership(&o, None, OWNER);
        assert_eq!(d["metadata"]["labels"][PLAN_LABEL], "demo");
        assert_eq!(d["metadata"]["annotations"][STEP_ANNOTATION], "apply-crds");
    }

    #[test]
    fn existing_unlabelled_objects_are_not_claimed() {
        let o = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "b"}}});
        let live = json!({"metadata": {"name": "c", "labels": {"a": "b"}}});
        let d = with_ownership(&o, Some(&live), OWNER);
        assert_eq!(d, o);
    }

    #[test]
    fn existing_labelled_objects_keep_their_label() {
        let o = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let live = json!({"metadata": {"labels": {PLAN_LABEL: "other"}, "annotations": {STEP_ANNOTATION: "s"}}});
        let d = with_ownership(&o, Some(&live), OWNER);
        assert_eq!(d["metadata"]["labels"][PLAN_LABEL], "other");
        assert_eq!(d["metadata"]["annotations"][STEP_ANNOTATION], "s");
    }

    #[test]
    fn new_objects_join_the_plans_applyset() {
        let o = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let d = with_ownership(&o, None, OWNER);
        assert_eq!(
            d["metadata"]["labels"][crate::kube::applyset::PART_OF],
            crate::kube::applyset::set_id("demo").as_str()
        );
        // Made by an earlier version (the plan label, no part-of): it joins.
        let old = json!({"metadata": {"labels": {PLAN_LABEL: "demo"}}});
        let d = with_ownership(&o, Some(&old), OWNER);
        assert_eq!(
            d["metadata"]["labels"][crate::kube::applyset::PART_OF],
            crate::kube::applyset::set_id("demo").as_str()
        );
        // Another plan's, or nobody's: never.
        for live in [
            json!({"metadata": {"labels": {PLAN_LABEL: "other"}}}),
            json!({"metadata": {"labels": {"app": "c"}}}),
        ] {
            let d = with_ownership(&o, Some(&live), OWNER);
            assert!(
                d["metadata"]["labels"][crate::kube::applyset::PART_OF].is_null(),
                "{live}"
            );
        }
        // Whatever set it is in, it stays in.
        let other =
            json!({"metadata": {"labels": {crate::kube::applyset::PART_OF: "applyset-x-v1"}}});
        let d = with_ownership(&o, Some(&other), OWNER);
        assert_eq!(
            d["metadata"]["labels"][crate::kube::applyset::PART_OF],
            "applyset-x-v1"
        );
    }

    #[test]
    fn comparison_ignores_status_versions_and_other_managers() {
        let a = json!({"metadata": {"name": "c", "resourceVersion": "1", "managedFields": [
            {"manager": "bookinfo-up", "operation": "Apply", "time": "t1", "fieldsV1": {"f:data": {}}},
            {"manager": "kube-controller-manager", "operation": "Update", "time": "t1"}]},
            "spec": {"x": 1}, "status": {"ready": 0}});
        let b = json!({"metadata": {"name": "c", "resourceVersion": "2", "managedFields": [
            {"manager": "bookinfo-up", "operation": "Apply", "time": "t2", "fieldsV1": {"f:data": {}}},
            {"manager": "kube-controller-manager", "operation": "Update", "time": "t2", "fieldsV1": {}}]},
            "spec": {"x": 1}, "status": {"ready": 1}});
        assert_eq!(comparable(&a, "bookinfo-up"), comparable(&b, "bookinfo-up"));
        let mut c = b.clone();
        c["metadata"]["managedFields"][0]["fieldsV1"] = json!({"f:data": {"f:k": {}}});
        assert_ne!(comparable(&a, "bookinfo-up"), comparable(&c, "bookinfo-up"));
    }
}
