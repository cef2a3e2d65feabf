//! The `patch` step, in two forms. `run`: server-side apply of partial objects under a field
//! manager of their own (ports added to a chart's Service without touching the chart's), undone
//! by `teardown` applying that manager with nothing. `run_config_merge`: a deep merge into YAML
//! held in a ConfigMap key (Kiali's `config.yaml`), written with a resourceVersion precondition
//! and followed by a rollout restart of the Deployments that read it; the original values of
//! the merged settings are kept in an annotation so `teardown_config_merge` can restore them.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;

use crate::change::{Change, ChangeKind};
use crate::error::{StepError, StepResult};
use crate::kube::apply::{ApplyOutcome, Preview};
use crate::kube::{FIELD_MANAGER, Kube, api_error, is_not_found};
use crate::plan::model;
use crate::run::{Outcome, StepCtx};

/// How long a patched kind may stay unknown to discovery before it is an error.
const DISCOVERY_PATIENCE: Duration = Duration::from_secs(30);
/// How many times a ConfigMap write is retried after a resourceVersion conflict.
const CONFLICT_ATTEMPTS: u32 = 5;
/// The pod template annotation `kubectl rollout restart` sets.
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

pub async fn run(p: &model::Patch, ctx: &StepCtx) -> StepResult<Outcome> {
    let kube = ctx.kube()?;
    if p.objects.is_empty() {
        return Err(StepError::fatal(
            "nothing to patch: the patch file holds no objects",
        ));
    }
    let mut changed = Vec::new();
    let mut unchanged = Vec::new();
    for m in &p.objects {
        let target = kube
            .locate(&m.object, "default", DISCOVERY_PATIENCE)
            .await?;
        match kube.apply_partial(&target, &p.field_manager).await? {
            ApplyOutcome::Unchanged => unchanged.push(target.display()),
            _ => changed.push(target.display()),
        }
    }
    let manager = &p.field_manager;
    Ok(if changed.is_empty() {
        Outcome::Unchanged {
            summary: format!("{} already patched by `{manager}`", unchanged.join(", ")),
        }
    } else {
        let mut summary = format!("patched {} as `{manager}`", changed.join(", "));
        if !unchanged.is_empty() {
            summary.push_str(&format!("; {} already patched", unchanged.join(", ")));
        }
        Outcome::Changed { summary }
    })
}

/// What `run` would change: each partial object's dry run under its manager.
pub async fn preview(p: &model::Patch, ctx: &StepCtx) -> StepResult<Vec<Change>> {
    let kube = ctx.kube()?;
    let mut changes = Vec::new();
    for m in &p.objects {
        let name = crate::steps::object_name(&m.object, Some("default"));
        let Some(target) = kube.locate_if_served(&m.object, "default").await? else {
            changes.push(Change::note(
                ChangeKind::Update,
                name,
                "would be patched once its kind is served (it comes with an earlier step)".into(),
            ));
            continue;
        };
        let change = match kube.preview_partial(&target, &p.field_manager).await? {
            Preview::Unchanged => continue,
            Preview::Update { live, after } => Change::update(target.display(), &live, &after),
            Preview::Missing | Preview::Create(_) => Change::note(
                ChangeKind::Update,
                target.display(),
                "does not exist yet: patched once an earlier step creates it".into(),
            ),
            Preview::Refused(why) => Change::note(
                ChangeKind::Update,
                target.display(),
                format!("the patch would fail: {why}"),
            ),
        };
        changes.push(change);
    }
    Ok(changes)
}

pub async fn teardown(p: &model::Patch, ctx: &StepCtx) -> StepResult<Outcome> {
    let kube = ctx.kube()?;
    let mut reverted = Vec::new();
    for m in &p.objects {
        if let Some(target) = kube.locate_if_served(&m.object, "default").await?
            && kube.retract_partial(&target, &p.field_manager).await?
        {
            reverted.push(target.display());
        }
    }
    let manager = &p.field_manager;
    Ok(if reverted.is_empty() {
        Outcome::Unchanged {
            summary: format!("nothing left of field manager `{manager}` to revert"),
        }
    } else {
        Outcome::Changed {
            summary: format!(
                "removed the fields of `{manager}` from {}",
                reverted.join(", ")
            ),
        }
    })
}

/// What a merge replaced, so teardown can put it back: the key's content before the first
/// merge, one entry per replaced setting, in the order recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Record {
    /// The ConfigMap had no such key before: teardown removes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    key_absent: bool,
    originals: Vec<Original>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Original {
    path: Vec<String>,
    /// The setting did not exist: restoring removes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    absent: bool,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    value: Value,
}

pub async fn run_config_merge(c: &model::ConfigMerge, ctx: &StepCtx) -> StepResult<Outcome> {
    let kube = ctx.kube()?;
    let cm = ConfigMapKey::new(kube, c);
    let mut conflicts = 0;
    loop {
        let Some(live) = cm.get().await? else {
            return Err(StepError::fatal(format!(
                "configmap {}/{} does not exist",
                c.namespace, c.configmap
            )));
        };
        let rv = live.metadata.resource_version.clone().unwrap_or_default();
        let text = live.data.as_ref().and_then(|d| d.get(&c.key));
        let current = cm.parse(text.map(String::as_str))?;
        let mut merged = current.clone();
        let originals = merge_recording(&mut merged, &c.merge);
        let pending = annotation(&live, &cm.pending_annotation).is_some();

        if merged == current {
            if pending && !c.restart.is_empty() {
                // An earlier attempt wrote the content but did not finish its restarts.
                let restarted = cm.restart_and_settle(&c.restart).await?;
                return Ok(Outcome::Changed {
                    summary: format!(
                        "{} already merged; restarted {restarted} (left over from an earlier attempt)",
                        cm.what
                    ),
                });
            }
            return Ok(Outcome::Unchanged {
                summary: format!("{} already merged", cm.what),
            });
        }

        let mut record: Record = annotation(&live, &cm.original_annotation)
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_else(|| Record {
                key_absent: text.is_none(),
                originals: Vec::new(),
            });
        for o in originals {
            let covered = record.originals.iter().any(|r| o.path.starts_with(&r.path));
            if !covered {
                record.originals.push(o);
            }
        }
        let content = to_yaml(&merged)?;
        let mut annotations = json!({ cm.original_annotation.as_str(): serde_json::to_string(&record).unwrap_or_default() });
        if !c.restart.is_empty() {
            annotations[cm.pending_annotation.as_str()] = Value::String(restart_list(&c.restart));
        }
        let patch = json!({
            "metadata": {"resourceVersion": rv, "annotations": annotations},
            "data": { c.key.as_str(): content },
        });
        match cm.write(&patch).await {
            Ok(()) => break,
            Err(e) if is_conflict(&e) && conflicts + 1 < CONFLICT_ATTEMPTS => {
                conflicts += 1;
                ctx.progress(format!("{} changed while merging; merging again", cm.what));
            }
            Err(e) => return Err(api_error(format!("cannot write {}", cm.what), e)),
        }
    }
    let mut summary = format!("merged into {}", cm.what);
    if !c.restart.is_empty() {
        ctx.progress("restarting what reads the configuration");
        summary.push_str(&format!(
            "; restarted {}",
            cm.restart_and_settle(&c.restart).await?
        ));
    }
    Ok(Outcome::Changed { summary })
}

/// What `run_config_merge` would change: the key's content before and after the merge, and
/// the restarts that would follow.
pub async fn preview_config_merge(
    c: &model::ConfigMerge,
    ctx: &StepCtx,
) -> StepResult<Vec<Change>> {
    let kube = ctx.kube()?;
    let cm = ConfigMapKey::new(kube, c);
    let target = format!("ConfigMap {}/{}", c.namespace, c.configmap);
    let Some(live) = cm.get().await? else {
        return Ok(vec![Change::note(
            ChangeKind::Update,
            target,
            format!(
                "does not exist yet: {} is merged once an earlier step creates it",
                c.key
            ),
        )]);
    };
    let text = live.data.as_ref().and_then(|d| d.get(&c.key));
    let current = cm.parse(text.map(String::as_str))?;
    let mut merged = current.clone();
    crate::merge::merge(&mut merged, &c.merge);
    let restarts = restart_list(&c.restart).replace(',', ", ");
    if merged == current {
        if annotation(&live, &cm.pending_annotation).is_some() && !c.restart.is_empty() {
            return Ok(vec![Change::note(
                ChangeKind::Update,
                target,
                format!("restart of {restarts} left over from an earlier run"),
            )]);
        }
        return Ok(Vec::new());
    }
    let key = c.key.clone();
    let wrap = |v: &Value| json!({ "data": { key.as_str(): crate::change::to_yaml(v) } });
    let mut change = Change::update(target, &wrap(&current), &wrap(&merged));
    change.fields = crate::change::changed_paths(&current, &merged)
        .into_iter()
        .map(|f| format!("{}:{f}", c.key))
        .collect();
    change.summary = crate::change::fields_summary(&change.fields);
    change.diff = crate::change::unified(
        &crate::change::to_yaml(&current),
        &crate::change::to_yaml(&merged),
        &format!("{} (live)", cm.what),
        &format!("{} (plan)", cm.what),
    );
    if !c.restart.is_empty() {
        change
            .summary
            .push_str(&format!("; then restarts {restarts}"));
    }
    Ok(vec![change])
}

pub async fn teardown_config_merge(c: &model::ConfigMerge, ctx: &StepCtx) -> StepResult<Outcome> {
    let kube = ctx.kube()?;
    let cm = ConfigMapKey::new(kube, c);
    let mut conflicts = 0;
    let restore_needed = loop {
        let Some(live) = cm.get().await? else {
            return Ok(Outcome::Unchanged {
                summary: format!("configmap {}/{} already gone", c.namespace, c.configmap),
            });
        };
        let Some(record) = annotation(&live, &cm.original_annotation) else {
            return Ok(Outcome::Unchanged {
                summary: format!("nothing merged into {} to restore", cm.what),
            });
        };
        let record: Record = serde_json::from_str(record).map_err(|e| {
            StepError::fatal(format!(
                "annotation `{}` of {} is not a merge record",
                cm.original_annotation, cm.what
            ))
            .with_source(e)
        })?;
        let rv = live.metadata.resource_version.clone().unwrap_or_default();
        let text = live.data.as_ref().and_then(|d| d.get(&c.key));
        let current = cm.parse(text.map(String::as_str))?;
        let mut restored = current.clone();
        restore(&mut restored, &record.originals);
        let changed = restored != current || (record.key_absent && text.is_some());
        let data = if record.key_absent {
            Value::Null
        } else {
            Value::String(to_yaml(&restored)?)
        };
        let mut annotations = json!({ cm.original_annotation.as_str(): null });
        if changed && !c.restart.is_empty() {
            annotations[cm.pending_annotation.as_str()] = Value::String(restart_list(&c.restart));
        }
        let mut patch = json!({"metadata": {"resourceVersion": rv, "annotations": annotations}});
        if changed {
            patch["data"] = json!({ c.key.as_str(): data });
        }
        match cm.write(&patch).await {
            Ok(()) => break changed,
            Err(e) if is_conflict(&e) && conflicts + 1 < CONFLICT_ATTEMPTS => {
                conflicts += 1;
                ctx.progress(format!(
                    "{} changed while restoring; restoring again",
                    cm.what
                ));
            }
            Err(e) => return Err(api_error(format!("cannot write {}", cm.what), e)),
        }
    };
    if !restore_needed {
        return Ok(Outcome::Changed {
            summary: format!(
                "{} already as before the merge; removed the merge record",
                cm.what
            ),
        });
    }
    let mut summary = format!("restored {}", cm.what);
    if !c.restart.is_empty() {
        summary.push_str(&format!(
            "; restarted {}",
            cm.restart_and_settle(&c.restart).await?
        ));
    }
    Ok(Outcome::Changed { summary })
}

/// One key of one ConfigMap, and the annotations that track merges into it.
struct ConfigMapKey<'a> {
    kube: &'a Kube,
    c: &'a model::ConfigMerge,
    api: kube::Api<ConfigMap>,
    /// "key config.yaml of configmap istio-system/kiali", for messages.
    what: String,
    original_annotation: String,
    pending_annotation: String,
}

impl<'a> ConfigMapKey<'a> {
    fn new(kube: &'a Kube, c: &'a model::ConfigMerge) -> Self {
        Self {
            kube,
            c,
            api: kube::Api::namespaced(kube.client.clone(), &c.namespace),
            what: format!("key {} of configmap {}/{}", c.key, c.namespace, c.configmap),
            original_annotation: annotation_name("merge-original-", &c.key),
            pending_annotation: annotation_name("restart-pending-", &c.key),
        }
    }

    async fn get(&self) -> StepResult<Option<ConfigMap>> {
        self.api.get_opt(&self.c.configmap).await.map_err(|e| {
            api_error(
                format!(
                    "cannot read configmap {}/{}",
                    self.c.namespace, self.c.configmap
                ),
                e,
            )
        })
    }

    /// The key's YAML as a mapping; a missing or empty key is an empty mapping.
    fn parse(&self, text: Option<&str>) -> StepResult<Value> {
        let text = text.unwrap_or_default();
        if text.trim().is_empty() {
            return Ok(Value::Object(Default::default()));
        }
        match serde_saphyr::from_str::<Value>(text) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(Value::Null) => Ok(Value::Object(Default::default())),
            Ok(_) => Err(StepError::fatal(format!(
                "{} does not hold a YAML mapping",
                self.what
            ))),
            Err(e) => {
                Err(StepError::fatal(format!("{} is not valid YAML", self.what)).with_source(e))
            }
        }
    }

    /// A JSON merge patch; a `metadata.resourceVersion` in it makes the API server refuse the
    /// write with 409 Conflict if the ConfigMap changed since it was read.
    async fn write(&self, patch: &Value) -> Result<(), kube::Error> {
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        self.api
            .patch(&self.c.configmap, &pp, &Patch::Merge(patch))
            .await
            .map(|_| ())
    }

    /// Restarts each Deployment once, then clears the pending-restart mark that was written
    /// with the content (so an attempt that fails in between restarts on the next one).
    async fn restart_and_settle(&self, deployments: &[(String, String)]) -> StepResult<String> {
        let restarted = restart(self.kube, deployments).await?;
        let clear =
            json!({"metadata": {"annotations": { self.pending_annotation.as_str(): null }}});
        self.write(&clear)
            .await
            .map_err(|e| api_error(format!("cannot write {}", self.what), e))?;
        Ok(restarted)
    }
}

/// Rollout restart, as `kubectl rollout restart` does it: a new timestamp in the pod
/// template's annotations, so the Deployment rolls out new pods. Each Deployment once, even if
/// named twice. The timestamp has sub-second precision so two restarts never collide.
async fn restart(kube: &Kube, deployments: &[(String, String)]) -> StepResult<String> {
    let mut done: Vec<&(String, String)> = Vec::new();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    for d in deployments {
        if done.contains(&d) {
            continue;
        }
        let (ns, name) = d;
        let api: kube::Api<Deployment> = kube::Api::namespaced(kube.client.clone(), ns);
        let patch =
            json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}});
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.patch(name, &pp, &Patch::Strategic(&patch)).await {
            Ok(_) => done.push(d),
            Err(e) if is_not_found(&e) => {
                return Err(StepError::fatal(format!(
                    "cannot restart deployment {ns}/{name}: it does not exist"
                )));
            }
            Err(e) => {
                return Err(api_error(
                    format!("cannot restart deployment {ns}/{name}"),
                    e,
                ));
            }
        }
    }
    Ok(done
        .iter()
        .map(|(ns, n)| format!("deployment {ns}/{n}"))
        .collect::<Vec<_>>()
        .join(", "))
}

fn restart_list(deployments: &[(String, String)]) -> String {
    deployments
        .iter()
        .map(|(ns, n)| format!("{ns}/{n}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn annotation<'o>(cm: &'o ConfigMap, name: &str) -> Option<&'o str> {
    cm.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(name))
        .map(String::as_str)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn to_yaml(v: &Value) -> StepResult<String> {
    serde_saphyr::to_string(v)
        .map_err(|e| StepError::fatal("cannot write the merged YAML").with_source(e))
}

/// `bookinfo-up.io/<prefix><key>`, or a digest of the key where the key would make an
/// invalid annotation name (too long, or not ending in a letter or digit).
fn annotation_name(prefix: &str, key: &str) -> String {
    let name = format!("{prefix}{key}");
    let valid = name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        format!("bookinfo-up.io/{name}")
    } else {
        let digest = hex::encode(sha2::Sha256::digest(key.as_bytes()));
        format!("bookinfo-up.io/{prefix}{}", &digest[..16])
    }
}

/// Merges `over` into `content` (see `crate::merge`); returns what it replaced, for undoing.
fn merge_recording(content: &mut Value, over: &Value) -> Vec<Original> {
    let mut originals = Vec::new();
    crate::merge::merge_recording(content, over, &mut |path, before| {
        originals.push(Original {
            path: path.to_vec(),
            absent: before.is_none(),
            value: before.cloned().unwrap_or(Value::Null),
        });
    });
    originals
}

/// Puts recorded settings back, latest record first, so that the earliest (the true
/// original) wins where records overlap.
fn restore(content: &mut Value, originals: &[Original]) {
    for o in originals.iter().rev() {
        restore_one(content, &o.path, o);
    }
}

/// Sets (or removes) the setting at `path` below `at`, creating missing mappings only when
/// there is a value to put back.
fn restore_one(at: &mut Value, path: &[String], o: &Original) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(map) = at.as_object_mut() else {
        return;
    };
    if rest.is_empty() {
        if o.absent {
            map.remove(first);
        } else {
            map.insert(first.clone(), o.value.clone());
        }
        return;
    }
    if !map.contains_key(first) {
        if o.absent {
            return;
        }
        map.insert(first.clone(), Value::Object(Default::default()));
    }
    if let Some(next) = map.get_mut(first) {
        restore_one(next, rest, o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_recursive_and_records_what_it_replaced() {
        let mut base = json!({"auth": {"strategy": "anonymous"}, "external_services": {"grafana": {"enabled": false}, "x": 1}});
        let merge = json!({"external_services": {"grafana": {"enabled": true, "internal_url": "http://grafana:3000"}}});
        let originals = merge_recording(&mut base, &merge);
        assert_eq!(
            base,
            json!({"auth": {"strategy": "anonymous"}, "external_services": {"grafana": {"enabled": true, "internal_url": "http://grafana:3000"}, "x": 1}})
        );
        assert_eq!(originals.len(), 2);
        assert_eq!(
            originals[0].path,
            ["external_services", "grafana", "enabled"]
        );
        assert_eq!(originals[0].value, json!(false));
        assert!(originals[1].absent);
        restore(&mut base, &originals);
        assert_eq!(
            base,
            json!({"auth": {"strategy": "anonymous"}, "external_services": {"grafana": {"enabled": false}, "x": 1}})
        );
    }

    #[test]
    fn restore_latest_first_keeps_the_true_original() {
        let mut content = json!({"a": {"b": {"c": 1}}});
        let originals = vec![
            Original {
                path: vec!["a".into(), "b".into(), "c".into()],
                absent: true,
                value: Value::Null,
            },
            Original {
                path: vec!["a".into(), "b".into()],
                absent: false,
                value: json!({"c": 1}),
            },
        ];
        content["a"]["b"] = json!("replaced");
        restore(&mut content, &originals);
        assert_eq!(content, json!({"a": {"b": {}}}));
    }

    #[test]
    fn annotation_names_stay_valid() {
        assert_eq!(
            annotation_name("merge-original-", "config.yaml"),
            "bookinfo-up.io/merge-original-config.yaml"
        );
        let long = annotation_name("merge-original-", &"k".repeat(60));
        assert!(long.len() <= "bookinfo-up.io/".len() + 63, "{long}");
        assert!(
            annotation_name("merge-original-", "x.").starts_with("bookinfo-up.io/merge-original-")
        );
        assert_ne!(
            annotation_name("merge-original-", "x."),
            "bookinfo-up.io/merge-original-x."
        );
    }

    #[test]
    fn records_round_trip_with_null_values() {
        let r = Record {
            key_absent: false,
            originals: vec![
                Original {
                    path: vec!["a".into()],
                    absent: false,
                    value: Value::Null,
                },
                Original {
                    path: vec!["b".into()],
                    absent: true,
                    value: Value::Null,
                },
            ],
        };
        let back: Record = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
