//! The `apply` step: server-side apply of a step's manifest objects under `FIELD_MANAGER`.
//! Namespaces and CRDs go first, CRDs are waited to Established, then everything else is
//! applied concurrently; each object is reported created, configured or unchanged.
//! `teardown` deletes, in reverse dependency order, only the objects the plan created.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::GroupVersionKind;
use kube::runtime::wait::await_condition;
use serde_json::Value;

use crate::change::{Change, ChangeKind};
use crate::error::{StepError, StepResult};
use crate::kube::Kube;
use crate::kube::apply::{ApplyOutcome, DeleteOutcome, Located, Owner, Preview};
use crate::kube::readiness::{self, Readiness};
use crate::plan::model::{self, Manifest};
use crate::run::{Outcome, StepCtx};
use crate::steps::object_name;

/// How many objects are applied or deleted at once.
const CONCURRENCY: usize = 8;
/// How long a kind may stay unknown to discovery (a CRD just established) before it is an
/// error.
const DISCOVERY_PATIENCE: Duration = Duration::from_secs(30);

/// Which objects must exist before the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    Namespace,
    Crd,
    Other,
}

fn tier(object: &Value) -> Tier {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    match object["kind"].as_str().unwrap_or_default() {
        "Namespace" if api_version == "v1" => Tier::Namespace,
        "CustomResourceDefinition" if api_version.starts_with("apiextensions.k8s.io/") => Tier::Crd,
        _ => Tier::Other,
    }
}

pub async fn run(a: &model::Apply, ctx: &StepCtx) -> StepResult<Outcome> {
    let kube = ctx.kube()?;
    if a.objects.is_empty() {
        return Err(StepError::fatal(
            "nothing to apply: the step's manifests hold no objects",
        ));
    }
    let default_namespace = a.namespace.as_deref().unwrap_or("default");
    let owner = Owner {
        plan: &ctx.plan_name,
        step: &ctx.id,
    };
    let applier = Applier {
        kube,
        ctx,
        owner,
        default_namespace,
        total: a.objects.len(),
        done: AtomicUsize::new(0),
    };

    let (first, rest): (Vec<&Manifest>, Vec<&Manifest>) = a
        .objects
        .iter()
        .partition(|m| tier(&m.object) != Tier::Other);
    let mut outcomes = applier.apply_all(&first).await?;

    let crds: Vec<&Manifest> = first
        .iter()
        .copied()
        .filter(|m| tier(&m.object) == Tier::Crd)
        .collect();
    if !crds.is_empty() && !rest.is_empty() {
        ctx.progress(format!(
            "waiting for {} CRD{} to be established",
            crds.len(),
            plural(crds.len())
        ));
        // Futures are collected first: a lazy `map` closure inside the stream would make the
        // step's future fail the runner's `Send` check (a higher-ranked lifetime limitation).
        let waits: Vec<_> = crds.iter().map(|m| established(kube, m)).collect();
        stream::iter(waits)
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
    }
    outcomes.extend(applier.apply_all(&rest).await?);

    let count = |o: ApplyOutcome| outcomes.iter().filter(|x| **x == o).count();
    let (created, configured, unchanged) = (
        count(ApplyOutcome::Created),
        count(ApplyOutcome::Configured),
        count(ApplyOutcome::Unchanged),
    );
    let summary = summarize(
        outcomes.len(),
        &[
            (created, "created"),
            (configured, "configured"),
            (unchanged, "unchanged"),
        ],
    );
    Ok(if created + configured > 0 {
        Outcome::Changed { summary }
    } else {
        Outcome::Unchanged { summary }
    })
}

/// What a run of the step would change, found with reads and server-side dry runs only.
pub async fn preview(a: &model::Apply, ctx: &StepCtx) -> StepResult<Vec<Change>> {
    let kube = ctx.kube()?;
    let default_namespace = a.namespace.as_deref().unwrap_or("default");
    let owner = Owner {
        plan: &ctx.plan_name,
        step: &ctx.id,
    };
    let previews: Vec<_> = a
        .objects
        .iter()
        .map(|m| preview_one(kube, m, default_namespace, owner))
        .collect();
    let results: Vec<StepResult<Option<Change>>> =
        stream::iter(previews).buffered(CONCURRENCY).collect().await;
    Ok(first_error(results)?.into_iter().flatten().collect())
}

async fn preview_one(
    kube: &Kube,
    m: &Manifest,
    default_namespace: &str,
    owner: Owner<'_>,
) -> StepResult<Option<Change>> {
    let name = object_name(&m.object, Some(default_namespace));
    let Some(target) = kube
        .locate_if_served(&m.object, default_namespace)
        .await
        .map_err(|e| context(e, &m.object, default_namespace, &m.source))?
    else {
        let desired = crate::kube::apply::with_ownership(&m.object, None, owner);
        let note = format!(
            "its kind is not served yet: {} comes with an earlier step",
            m.object["apiVersion"].as_str().unwrap_or("?")
        );
        return Ok(Some(Change::create(name, &desired, Some(&note))));
    };
    Ok(match kube.preview_owned(&target, owner).await? {
        Preview::Unchanged => None,
        Preview::Create(desired) => Some(Change::create(target.display(), &desired, None)),
        Preview::Update { live, after } => Some(Change::update(target.display(), &live, &after)),
        Preview::Missing => Some(Change::create(target.display(), &target.object, None)),
        Preview::Refused(why) => Some(Change::note(
            ChangeKind::Update,
            target.display(),
            format!("the API server refuses the apply: {why}"),
        )),
    })
}

struct Applier<'a> {
    kube: &'a Kube,
    ctx: &'a StepCtx,
    owner: Owner<'a>,
    default_namespace: &'a str,
    total: usize,
    done: AtomicUsize,
}

impl Applier<'_> {
    /// Applies independent objects concurrently. Every object is attempted; the first
    /// failure is returned, with how many others failed.
    async fn apply_all(&self, objects: &[&Manifest]) -> StepResult<Vec<ApplyOutcome>> {
        let applies: Vec<_> = objects.iter().map(|m| self.apply_one(m)).collect();
        let results: Vec<StepResult<ApplyOutcome>> = stream::iter(applies)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        first_error(results)
    }

    async fn apply_one(&self, m: &Manifest) -> StepResult<ApplyOutcome> {
        let target = self
            .kube
            .locate(&m.object, self.default_namespace, DISCOVERY_PATIENCE)
            .await
            .map_err(|e| context(e, &m.object, self.default_namespace, &m.source))?;
        let outcome = self.kube.apply_owned(&target, self.owner).await?;
        tracing::debug!(object = %target.display(), ?outcome, "applied");
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.ctx
            .progress(format!("applied {done}/{} objects", self.total));
        Ok(outcome)
    }
}

/// Waits (watch-based) until a CRD is Established, then drops any cached discovery of its
/// kinds so that its custom resources resolve afresh, with retry and backoff.
async fn established(kube: &Kube, m: &Manifest) -> StepResult<()> {
    let name = m.object["metadata"]["name"].as_str().unwrap_or_default();
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(kube.client.clone());
    let settled = |c: Option<&CustomResourceDefinition>| {
        c.is_some_and(|c| !matches!(readiness::crd(c), Readiness::Waiting(_)))
    };
    let crd = tokio::select! {
        crd = await_condition(api, name, settled) => crd.map_err(|e| {
            StepError::transient(format!("lost the watch on CRD {name}")).with_source(e)
        })?,
        never = crate::kube::watch::nudge_stuck_crd(kube, name) => match never {},
    };
    if let Some(crd) = crd {
        if let Readiness::Failed(why) = readiness::crd(&crd) {
            return Err(StepError::fatal(format!(
                "CRD {name} will not become established: {why}"
            )));
        }
        for v in &crd.spec.versions {
            kube.forget(&GroupVersionKind::gvk(
                &crd.spec.group,
                &v.name,
                &crd.spec.names.kind,
            ))
            .await;
        }
    }
    Ok(())
}

pub async fn teardown(a: &model::Apply, ctx: &StepCtx) -> StepResult<Outcome> {
    let kube = ctx.kube()?;
    let default_namespace = a.namespace.as_deref().unwrap_or("default");
    let total = a.objects.len();
    let done = AtomicUsize::new(0);

    // Reverse dependency order: custom resources and everything else, then CRDs, then
    // namespaces; within a tier, reverse manifest order (concurrent, as they are independent).
    let mut outcomes = Vec::new();
    let mut namespaces: Vec<(Located, String)> = Vec::new();
    for t in [Tier::Other, Tier::Crd, Tier::Namespace] {
        let objects: Vec<&Manifest> = a
            .objects
            .iter()
            .rev()
            .filter(|m| tier(&m.object) == t)
            .collect();
        let deletes: Vec<_> = objects
            .into_iter()
            .map(|m| delete_one(kube, ctx, &m.object, default_namespace, &done, total))
            .collect();
        let results: Vec<StepResult<_>> = stream::iter(deletes)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (outcome, target) in first_error(results)? {
            if let (DeleteOutcome::Deleted { uid }, Some(target)) = (&outcome, target)
                && t == Tier::Namespace
            {
                namespaces.push((target, uid.clone()));
            }
            outcomes.push(outcome);
        }
    }

    if !namespaces.is_empty() {
        let names: Vec<&str> = namespaces.iter().map(|(t, _)| t.name.as_str()).collect();
        ctx.progress(format!(
            "waiting for namespace{} {} to go",
            plural(names.len()),
            names.join(", ")
        ));
        let waits: Vec<_> = namespaces.iter().map(|(t, uid)| t.deleted(uid)).collect();
        stream::iter(waits)
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
    }

    let deleted = outcomes
        .iter()
        .filter(|o| matches!(o, DeleteOutcome::Deleted { .. }))
        .count();
    let gone = outcomes
        .iter()
        .filter(|o| **o == DeleteOutcome::Gone)
        .count();
    let not_ours = outcomes
        .iter()
        .filter(|o| **o == DeleteOutcome::NotOurs)
        .count();
    let summary = summarize(
        outcomes.len(),
        &[
            (deleted, "deleted"),
            (gone, "already gone"),
            (not_ours, "not created by this plan, left alone"),
        ],
    );
    Ok(if deleted > 0 {
        Outcome::Changed { summary }
    } else {
        Outcome::Unchanged { summary }
    })
}

/// Deletes one object if the plan created it; the located target comes back for waiting.
async fn delete_one(
    kube: &Kube,
    ctx: &StepCtx,
    object: &Value,
    default_namespace: &str,
    done: &AtomicUsize,
    total: usize,
) -> StepResult<(DeleteOutcome, Option<Located>)> {
    let outcome = match kube.locate_if_served(object, default_namespace).await? {
        None => (DeleteOutcome::Gone, None),
        Some(target) => (
            kube.delete_owned(&target, &ctx.plan_name).await?,
            Some(target),
        ),
    };
    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
    ctx.progress(format!("deleted {n}/{total} objects"));
    Ok(outcome)
}

/// "12 objects: 3 created, 9 unchanged", leaving out the zero counts.
fn summarize(total: usize, parts: &[(usize, &str)]) -> String {
    let parts: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    format!("{total} object{}: {}", plural(total), parts.join(", "))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The successes, or the first failure with a count of the others.
fn first_error<T>(results: Vec<StepResult<T>>) -> StepResult<Vec<T>> {
    let failures = results.iter().filter(|r| r.is_err()).count();
    let mut out = Vec::with_capacity(results.len());
    let mut first = None;
    for r in results {
        match r {
            Ok(v) => out.push(v),
            Err(e) if first.is_none() => first = Some(e),
            Err(_) => {}
        }
    }
    match first {
        None => Ok(out),
        Some(mut e) => {
            if failures > 1 {
                e.message.push_str(&format!(
                    " (and {} more object{} failed)",
                    failures - 1,
                    plural(failures - 1)
                ));
            }
            Err(e)
        }
    }
}

/// Names the object (and where it came from) in an error that does not.
fn context(e: StepError, object: &Value, default_namespace: &str, source: &str) -> StepError {
    StepError {
        message: format!(
            "{} (from {source}): {}",
            object_name(object, Some(default_namespace)),
            e.message
        ),
        ..e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tiers() {
        assert_eq!(
            tier(&json!({"apiVersion": "v1", "kind": "Namespace"})),
            Tier::Namespace
        );
        assert_eq!(
            tier(
                &json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition"})
            ),
            Tier::Crd
        );
        assert_eq!(
            tier(&json!({"apiVersion": "example.com/v1", "kind": "Namespace"})),
            Tier::Other
        );
    }

    #[test]
    fn summaries_leave_out_zeros() {
        assert_eq!(
            summarize(12, &[(3, "created"), (1, "configured"), (8, "unchanged")]),
            "12 objects: 3 created, 1 configured, 8 unchanged"
        );
        assert_eq!(
            summarize(1, &[(0, "created"), (1, "unchanged")]),
            "1 object: 1 unchanged"
        );
    }
}
