//! What the last run saw of each object it applied: the object's uid and resourceVersion once
//! it was converged, and the sha256 of what was applied. Kept in the cluster's state folder
//! (`applied.json`), never in the cluster.
//!
//! `diff` and `status` use it to skip the server-side dry run of an object the ledger
//! vouches for: same uid (not deleted and recreated), same resourceVersion (nothing at all
//! has written it since: any write, by anyone, changes the resourceVersion) and the plan still
//! asks for the same object. The dry run would then answer as it did when the run verified it.
//! Any other object, or no ledger (another machine, an older run), is compared by a dry run.

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
        };
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, entry);
    }

    /// Whether `live` is, unwritten since, the object a run found converged to `applied`.
    pub fn vouches(&self, key: &str, live: &Value, applied: &Value) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).is_some_and(|e| {
            e.uid == meta(live, "uid")
                && e.resource_version == meta(live, "resourceVersion")
                && e.applied == digest(applied)
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
}
