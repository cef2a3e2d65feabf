//! The `namespace` step: make sure a namespace exists and carries the plan's labels. It
//! creates the namespace (claiming it with the plan label) or adds the missing labels with a
//! server-side apply of just those labels, and writes nothing when they are already there.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::change::{Change, ChangeKind};
use crate::error::{StepError, StepResult};
use crate::kube::apply::DeleteOutcome;
use crate::kube::applyset::{PART_OF, set_id};
use crate::kube::{FIELD_MANAGER, PLAN_LABEL, STEP_ANNOTATION, api_error};
use crate::plan::model;
use crate::run::{Outcome, StepCtx};

pub async fn run(n: &model::Namespace, ctx: &StepCtx) -> StepResult<Outcome> {
    let kube = ctx.kube()?;
    // A member of the plan's ApplySet, listed before the run with every label it should
    // carry: nothing to read or write.
    let key = crate::kube::applyset::ObjectKey {
        gk: crate::kube::applyset::GroupKind {
            group: String::new(),
            kind: "Namespace".into(),
        },
        namespace: None,
        name: n.name.clone(),
    };
    if let Some(meta) = kube.members.meta(&key)
        && meta["metadata"]["deletionTimestamp"].is_null()
    {
        let labels: BTreeMap<String, String> =
            serde_json::from_value(meta["metadata"]["labels"].clone()).unwrap_or_default();
        let wanted = wanted_labels(n, &labels, &ctx.plan_name);
        if wanted.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return Ok(Outcome::Unchanged {
                summary: format!("namespace {} exists{}", n.name, labelled(&n.labels)),
            });
        }
    }
    let (api, live) = read(kube, &n.name).await?;
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let Some(live) = live else {
        let mut labels = n.labels.clone();
        labels.insert(PLAN_LABEL.into(), ctx.plan_name.clone());
        labels.insert(PART_OF.into(), set_id(&ctx.plan_name));
        let object = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": n.name, "labels": labels, "annotations": {STEP_ANNOTATION: ctx.id}},
        });
        api.patch(&n.name, &pp, &Patch::Apply(&object))
            .await
            .map_err(|e| api_error(format!("cannot create namespace {}", n.name), e))?;
        return Ok(Outcome::Changed {
            summary: format!("created namespace {}{}", n.name, labelled(&n.labels)),
        });
    };
    if live.metadata.deletion_timestamp.is_some() {
        return Err(StepError::transient(format!(
            "namespace {} is being deleted",
            n.name
        )));
    }
    let live_labels = live.metadata.labels.clone().unwrap_or_default();
    let wanted = wanted_labels(n, &live_labels, &ctx.plan_name);
    let missing: BTreeMap<String, String> = wanted
        .iter()
        .filter(|(k, v)| live_labels.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if missing.is_empty() {
        return Ok(Outcome::Unchanged {
            summary: format!("namespace {} exists{}", n.name, labelled(&n.labels)),
        });
    }
    // Server-side apply makes this manager's applied labels the whole set it owns: keep the
    // labels and annotations it already owns (set by this or another step, including the plan
    // label and step annotation), so adding labels never removes anything.
    let live_value = serde_json::to_value(&live).unwrap_or(Value::Null);
    let live_annotations = live.metadata.annotations.clone().unwrap_or_default();
    let keep = |map: &str, live: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        owned_keys(&live_value, FIELD_MANAGER, map)
            .into_iter()
            .filter_map(|k| live.get(&k).map(|v| (k, v.clone())))
            .collect()
    };
    let mut labels = keep("f:labels", &live_labels);
    labels.extend(wanted);
    let annotations = keep("f:annotations", &live_annotations);
    let object = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": n.name, "labels": labels, "annotations": annotations},
    });
    api.patch(&n.name, &pp, &Patch::Apply(&object))
        .await
        .map_err(|e| api_error(format!("cannot label namespace {}", n.name), e))?;
    Ok(Outcome::Changed {
        summary: format!("labelled namespace {} {}", n.name, pairs(&missing)),
    })
}

/// The labels the namespace should carry: the step's, and the plan's ApplySet label when the
/// plan made it (an earlier version labelled it with the plan only).
fn wanted_labels(
    n: &model::Namespace,
    live: &BTreeMap<String, String>,
    plan: &str,
) -> BTreeMap<String, String> {
    let mut wanted = n.labels.clone();
    if live.get(PLAN_LABEL).map(String::as_str) == Some(plan) && !live.contains_key(PART_OF) {
        wanted.insert(PART_OF.into(), set_id(plan));
    }
    wanted
}

/// The namespaces' API and the namespace `name`, if it exists.
async fn read(
    kube: &crate::kube::Kube,
    name: &str,
) -> StepResult<(kube::Api<Namespace>, Option<Namespace>)> {
    let api: kube::Api<Namespace> = kube::Api::all(kube.client.clone());
    let live = api
        .get_opt(name)
        .await
        .map_err(|e| api_error(format!("cannot read namespace {name}"), e))?;
    Ok((api, live))
}

/// What `run` would change: the namespace created, or the plan's labels it lacks.
pub async fn preview(n: &model::Namespace, ctx: &StepCtx) -> StepResult<Vec<Change>> {
    let (_, live) = read(ctx.kube()?, &n.name).await?;
    let target = format!("Namespace {}", n.name);
    let Some(live) = live else {
        let mut labels = n.labels.clone();
        labels.insert(PLAN_LABEL.into(), ctx.plan_name.clone());
        labels.insert(PART_OF.into(), set_id(&ctx.plan_name));
        let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n.name, "labels": labels}});
        return Ok(vec![Change::create(target, &object, None)]);
    };
    if live.metadata.deletion_timestamp.is_some() {
        return Ok(vec![Change::note(
            ChangeKind::Create,
            target,
            "is being deleted: a run waits for it to go, then creates it".into(),
        )]);
    }
    let before = live.metadata.labels.clone().unwrap_or_default();
    let mut after = before.clone();
    after.extend(wanted_labels(n, &before, &ctx.plan_name));
    if after == before {
        return Ok(Vec::new());
    }
    let object = |labels: &BTreeMap<String, String>| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n.name, "labels": labels}});
    Ok(vec![Change::update(
        target,
        &object(&before),
        &object(&after),
    )])
}

pub async fn teardown(n: &model::Namespace, ctx: &StepCtx) -> StepResult<Outcome> {
    let kube = ctx.kube()?;
    let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n.name}});
    let target = kube.locate(&object, "default", Duration::ZERO).await?;
    // What is not the plan's keeps the namespace (and itself) alive.
    if let Some(live) = target.get().await?
        && live["metadata"]["labels"][PLAN_LABEL].as_str() == Some(ctx.plan_name.as_str())
    {
        let foreign = super::prune::foreign_objects(kube, &n.name, &ctx.plan_name).await?;
        if !foreign.is_empty() {
            return Ok(Outcome::Unchanged {
                summary: format!(
                    "namespace {} holds objects that are not the plan's ({}): left in place",
                    n.name,
                    foreign.join(", ")
                ),
            });
        }
    }
    match kube.delete_owned(&target, &ctx.plan_name).await? {
        DeleteOutcome::Gone => Ok(Outcome::Unchanged {
            summary: format!("namespace {} already gone", n.name),
        }),
        DeleteOutcome::NotOurs => Ok(Outcome::Unchanged {
            summary: format!(
                "namespace {} was not created by this plan; left alone",
                n.name
            ),
        }),
        DeleteOutcome::Deleted { uid } => {
            ctx.progress(format!("waiting for namespace {} to go", n.name));
            target.deleted(&uid).await?;
            Ok(Outcome::Changed {
                summary: format!("deleted namespace {}", n.name),
            })
        }
    }
}

/// The keys of metadata map `map` ("f:labels", "f:annotations") that `manager` owns through
/// server-side apply, from managedFields.
fn owned_keys(object: &Value, manager: &str, map: &str) -> Vec<String> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["manager"] == manager && e["operation"] == "Apply")
        .filter_map(|e| e["fieldsV1"]["f:metadata"][map].as_object())
        .flat_map(|labels| {
            labels
                .keys()
                .filter_map(|k| k.strip_prefix("f:"))
                .map(str::to_string)
        })
        .collect()
}

/// " labelled a=b,c=d", or nothing without labels.
fn labelled(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!(" labelled {}", pairs(labels))
    }
}

fn pairs(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_keys_come_from_apply_entries_of_the_manager() {
        let ns = json!({"metadata": {"managedFields": [
            {"manager": "bookinfo-up", "operation": "Apply",
             "fieldsV1": {"f:metadata": {"f:labels": {"f:istio-injection": {}, "f:bookinfo-up.io/plan": {}}}}},
            {"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:metadata": {"f:labels": {"f:other": {}}}}}
        ]}});
        assert_eq!(
            owned_keys(&ns, "bookinfo-up", "f:labels"),
            vec!["bookinfo-up.io/plan", "istio-injection"]
        );
    }
}
