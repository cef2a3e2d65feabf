//! What the last run saw of each object it applied: the object's uid and resourceVersion once
//! it was converged, and the sha256 of what was applied. Kept in the cluster's state folder
//! (`applied.json`), never in the cluster.
//!
//! `up`, `diff` and `status` use it to skip the server-side dry run of an object the ledger
//! vouches for: same uid (not deleted and recreated), the plan still asks for the same object,
//! and nothing that the plan sets has been written since. That last is known in one of two
//! ways:
//! - the same resourceVersion: nothing at all has written the object (any write, by anyone,
//!   changes it);
//! - for an object with a `metadata.generation`, the same generation and, in the live
//!   metadata, every label and annotation the plan sets at its value. The API server raises
//!   the generation on every write outside `metadata` and `status`, so what changed since is
//!   the status (a controller's, such as a Deployment's rollout) or metadata the plan does not
//!   set. Without this, every Deployment that rolled out after a run would be dry-run again.
//!
//! The dry run would then answer as it did when the run verified it. Any other object, or no
//! ledger (another machine, an older run), is compared by a dry run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub uid: String,
    pub resource_version: String,
    /// sha256 of the applied object, as sent.
    pub applied: String,
    /// The object's `metadata.generation` then, for the kinds that keep one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    entries: Mutex<BTreeMap<String, Entry>>,
}

/// The ledger's key for an object applied by `manager`.
pub fn key(
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    manager: &str,
) -> String {
    format!(
        "{api_version} {kind} {}/{name} by {manager}",
        namespace.unwrap_or_default()
    )
}

fn digest(applied: &Value) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_vec(applied).unwrap_or_default(),
    ))
}

fn meta<'a>(live: &'a Value, field: &str) -> &'a str {
    live["metadata"][field].as_str().unwrap_or_default()
}

fn generation(live: &Value) -> Option<i64> {
    live["metadata"]["generation"].as_i64().filter(|g| *g > 0)
}

/// Whether the live metadata holds every label and annotation `applied` sets, at its value,
/// and is not being deleted. An applied object that sets other metadata (finalizers, owner
/// references) is never vouched for this way.
fn metadata_as_applied(live: &Value, applied: &Value) -> bool {
    let (live, applied) = (&live["metadata"], &applied["metadata"]);
    let Some(set) = applied.as_object() else {
        return applied.is_null();
    };
    if live.get("deletionTimestamp").is_some_and(|d| !d.is_null()) {
        return false;
    }
    set.iter().all(|(field, value)| match field.as_str() {
        "name" | "namespace" => true,
        "labels" | "annotations" => value.as_object().is_some_and(|m| {
            m.iter()
                .all(|(k, v)| live[field.as_str()].get(k) == Some(v))
        }),
        _ => false,
    })
}

impl Ledger {
    /// The ledger in `path`; empty when there is none or it cannot be read.
    pub fn load(path: &Path) -> Self {
        let entries = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            entries: Mutex::new(entries),
        }
    }

    /// Writes the ledger (atomically: a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&*entries).unwrap_or_default(),
        )?;
        std::fs::rename(tmp, path)
    }

    /// Records that `live` is converged to `applied`.
    pub fn record(&self, key: String, live: &Value, applied: &Value) {
        let (uid, rv) = (meta(live, "uid"), meta(live, "resourceVersion"));
        if uid.is_empty() || rv.is_empty() {
            return;
        }
        let entry = Entry {
            uid: uid.into(),
            resource_version: rv.into(),
            applied: digest(applied),
            generation: generation(live),
        };
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, entry);
    }

    /// Whether `live` is the object a run found converged to `applied`, with nothing that
    /// `applied` sets written since (see the module's documentation).
    pub fn vouches(&self, key: &str, live: &Value, applied: &Value) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).is_some_and(|e| {
            e.uid == meta(live, "uid")
                && e.applied == digest(applied)
                && (e.resource_version == meta(live, "resourceVersion")
                    || (e.generation.is_some()
                        && e.generation == generation(live)
                        && metadata_as_applied(live, applied)))
        })
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vouches_only_for_the_same_unwritten_object_and_plan() {
        let l = Ledger::default();
        let live = json!({"metadata": {"uid": "u1", "resourceVersion": "10"}});
        let applied = json!({"spec": {"replicas": 1}});
        let k = key(
            "apps/v1",
            "Deployment",
            Some("bookinfo"),
            "details-v1",
            "bookinfo-up",
        );
        l.record(k.clone(), &live, &applied);
        assert!(l.vouches(&k, &live, &applied));
        let written = json!({"metadata": {"uid": "u1", "resourceVersion": "11"}});
        assert!(!l.vouches(&k, &written, &applied), "written since");
        let recreated = json!({"metadata": {"uid": "u2", "resourceVersion": "10"}});
        assert!(!l.vouches(&k, &recreated, &applied), "another object");
        assert!(
            !l.vouches(&k, &live, &json!({"spec": {"replicas": 2}})),
            "the plan changed"
        );
        assert!(!l.vouches("other", &live, &applied));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("applied.json");
        l.save(&path).unwrap();
        assert!(Ledger::load(&path).vouches(&k, &live, &applied));
        assert!(Ledger::load(&dir.path().join("none.json")).is_empty());
    }

    #[test]
    fn by_generation_only_status_and_metadata_of_others_may_change() {
        let l = Ledger::default();
        let k = "apps/v1 Deployment shop/web by bookinfo-up".to_string();
        let applied = json!({
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"replicas": 1},
        });
        let at = |rv: &str, generation: i64, labels: Value, extra: Value| {
            let mut m = json!({"uid": "u1", "resourceVersion": rv, "generation": generation,
                               "labels": labels, "annotations": {"deployment.kubernetes.io/revision": "1"}});
            m.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            json!({"metadata": m})
        };
        let ours = json!({"app": "web", "team": "blue"});
        l.record(
            k.clone(),
            &at("10", 1, json!({"app": "web"}), json!({})),
            &applied,
        );
        assert!(
            l.vouches(&k, &at("14", 1, ours.clone(), json!({})), &applied),
            "a rollout's status and someone's label written since"
        );
        assert!(
            !l.vouches(&k, &at("15", 2, ours.clone(), json!({})), &applied),
            "the spec written since"
        );
        assert!(
            !l.vouches(
                &k,
                &at("15", 1, json!({"app": "tampered"}), json!({})),
                &applied
            ),
            "a label the plan sets written since"
        );
        assert!(
            !l.vouches(&k, &at("15", 1, json!({}), json!({})), &applied),
            "a label the plan sets taken away"
        );
        assert!(
            !l.vouches(
                &k,
                &at(
                    "15",
                    1,
                    ours.clone(),
                    json!({"deletionTimestamp": "2026-01-01T00:00:00Z"})
                ),
                &applied
            ),
            "being deleted"
        );
        // Kinds without a generation (ConfigMaps, Services): the resourceVersion only.
        let cm = "v1 ConfigMap shop/web-config by bookinfo-up".to_string();
        let plain = json!({"metadata": {"name": "web-config", "labels": {"app": "web"}}, "data": {"a": "b"}});
        l.record(
            cm.clone(),
            &json!({"metadata": {"uid": "u2", "resourceVersion": "3", "labels": {"app": "web"}}}),
            &plain,
        );
        assert!(!l.vouches(
            &cm,
            &json!({"metadata": {"uid": "u2", "resourceVersion": "4", "labels": {"app": "web"}}}),
            &plain
        ));
        // Finalizers in the plan: never by generation.
        let fin = json!({"metadata": {"name": "web", "finalizers": ["x"]}, "spec": {}});
        l.record(
            k.clone(),
            &at("20", 3, json!({}), json!({"finalizers": ["x"]})),
            &fin,
        );
        assert!(!l.vouches(
            &k,
            &at("21", 3, json!({}), json!({"finalizers": ["x"]})),
            &fin
        ));
        assert!(l.vouches(
            &k,
            &at("20", 3, json!({}), json!({"finalizers": ["x"]})),
            &fin
        ));
    }
}
