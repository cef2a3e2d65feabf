//! What a run would change, as `bookinfo-up diff` and `bookinfo-up status` show it: one
//! `Change` per object, release, namespace or ConfigMap key that differs, each with the paths
//! of the fields that change and a unified diff of before and after. Pure: the steps observe
//! (`steps::preview`), this module words and draws.
//!
//! Secrets never show their values: `mask_secret` replaces each `data`/`stringData` value by
//! `***`, marked `(before)`/`(after)` where it changes, before anything is rendered.

use serde::Serialize;
use serde_json::Value;

/// What a run would do to one thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    /// It does not exist; a run creates (installs) it.
    Create,
    /// It exists and differs; a run changes it.
    Update,
    /// It exists; a run removes it (a release left pending-install).
    Delete,
}

/// One thing a run would change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// `Deployment bookinfo/details-v1`, `helm release istio-system/istiod`, ...
    pub target: String,
    /// Paths of the fields that change (`spec.replicas`,
    /// `spec.template.spec.containers[name=details].image`); empty for a creation.
    pub fields: Vec<String>,
    /// One line: what changes, for `status` and the diff's header.
    pub summary: String,
    /// A unified diff, live before plan; empty when there is nothing to draw.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub diff: String,
}

impl Change {
    /// A thing that does not exist yet: its whole desired form as added lines.
    pub fn create(target: String, desired: &Value, note: Option<&str>) -> Self {
        let shown = display(desired);
        let mut summary = "would be created".to_string();
        if let Some(n) = note {
            summary.push_str(&format!(" ({n})"));
        }
        Self {
            kind: ChangeKind::Create,
            diff: unified("", &to_yaml(&shown), "(absent)", &target),
            target,
            fields: Vec::new(),
            summary,
        }
    }

    /// A thing that exists and would change from `before` to `after` (both full objects as
    /// the API server returns them, or any two documents).
    pub fn update(target: String, before: &Value, after: &Value) -> Self {
        let (mut before, mut after) = (strip(before), strip(after));
        mask_secret(&mut before, &mut after);
        let fields = changed_paths(&before, &after);
        let summary = if fields.is_empty() {
            // Only field ownership differs: a run takes the fields over, values stay.
            "field ownership would move to bookinfo-up; no value changes".to_string()
        } else {
            fields_summary(&fields)
        };
        Self {
            kind: ChangeKind::Update,
            diff: unified(
                &to_yaml(&before),
                &to_yaml(&after),
                &format!("{target} (live)"),
                &format!("{target} (plan)"),
            ),
            target,
            fields,
            summary,
        }
    }

    /// A change with a summary only (no document to draw).
    pub fn note(kind: ChangeKind, target: String, summary: String) -> Self {
        Self {
            kind,
            target,
            fields: Vec::new(),
            summary,
            diff: String::new(),
        }
    }
}

/// `spec.replicas, metadata.labels.app` (at most four, then how many more).
pub fn fields_summary(fields: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut s = fields
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if fields.len() > SHOWN {
        s.push_str(&format!(" and {} more", fields.len() - SHOWN));
    }
    s
}

/// An object as a diff shows it: without status and the server's bookkeeping (managedFields,
/// resourceVersion, generation), which change on every write and say nothing of the content.
pub fn display(object: &Value) -> Value {
    let mut o = strip(object);
    let mut other = o.clone();
    mask_secret(&mut o, &mut other);
    o
}

/// Without status and the server's bookkeeping; Secrets not masked yet.
fn strip(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(map) = o.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in ["managedFields", "resourceVersion", "generation"] {
            meta.remove(k);
        }
        if meta
            .get("annotations")
            .is_some_and(|a| a.as_object().is_some_and(serde_json::Map::is_empty))
        {
            meta.remove("annotations");
        }
    }
    o
}

/// The value that stands for a Secret's value.
const MASK: &str = "***";

/// Replaces the values of Secrets (`data`, `stringData`, and the last-applied annotation,
/// which holds them too) by `***`; where a key's value differs between the two, by
/// `*** (before)` and `*** (after)`, so that a change shows without its content.
pub fn mask_secret(before: &mut Value, after: &mut Value) {
    let is_secret = |v: &Value| v["kind"] == "Secret" && v["apiVersion"] == "v1";
    if !is_secret(before) && !is_secret(after) {
        return;
    }
    for field in ["data", "stringData"] {
        let b = before.get(field).cloned();
        let a = after.get(field).cloned();
        let mark = |side: &mut Value, own: &Option<Value>, other: &Option<Value>, label: &str| {
            let Some(Value::Object(map)) = own else {
                return;
            };
            let masked: serde_json::Map<String, Value> = map
                .iter()
                .map(|(k, v)| {
                    let same = other
                        .as_ref()
                        .and_then(|o| o.get(k))
                        .is_some_and(|o| o == v);
                    let shown = if same || v.as_str() == Some(MASK) {
                        MASK.to_string()
                    } else {
                        format!("{MASK} ({label})")
                    };
                    (k.clone(), Value::String(shown))
                })
                .collect();
            side[field] = Value::Object(masked);
        };
        mark(before, &b, &a, "before");
        mark(after, &a, &b, "after");
    }
    for side in [before, after] {
        if let Some(ann) = side
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
            && ann.contains_key(LAST_APPLIED)
        {
            ann.insert(LAST_APPLIED.into(), Value::String(MASK.into()));
        }
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// YAML for a diff: keys in a stable order, strings with newlines as blocks.
pub fn to_yaml(v: &Value) -> String {
    if v.is_null() {
        return String::new();
    }
    serde_saphyr::to_string(v).unwrap_or_else(|_| format!("{v:#}\n"))
}

/// A unified diff of two texts with three lines of context; empty when they are equal.
pub fn unified(before: &str, after: &str, from: &str, to: &str) -> String {
    if before == after {
        return String::new();
    }
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(from, to)
        .missing_newline_hint(false)
        .to_string()
}

/// The paths at which two documents differ, in document order. Lists of objects with a
/// `name` (containers, ports, env) are matched by name, as server-side apply merges them;
/// other lists by position, or as a whole when their lengths differ.
pub fn changed_paths(before: &Value, after: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(before, after, String::new(), &mut out);
    out
}

fn walk(a: &Value, b: &Value, path: String, out: &mut Vec<String>) {
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().collect();
            keys.extend(y.keys().filter(|k| !x.contains_key(*k)));
            for k in keys {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                walk(va, vb, join(&path, k), out);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            let named = |l: &Vec<Value>| l.iter().all(|e| e["name"].is_string());
            if named(x) && named(y) && !x.is_empty() && !y.is_empty() {
                let mut names: Vec<&str> = x.iter().filter_map(|e| e["name"].as_str()).collect();
                names.extend(
                    y.iter()
                        .filter_map(|e| e["name"].as_str())
                        .filter(|n| !x.iter().any(|e| e["name"] == *n)),
                );
                for n in names {
                    let find = |l: &Vec<Value>| {
                        l.iter()
                            .find(|e| e["name"] == n)
                            .cloned()
                            .unwrap_or(Value::Null)
                    };
                    walk(&find(x), &find(y), format!("{path}[name={n}]"), out);
                }
            } else if x.len() == y.len() {
                for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                    walk(va, vb, format!("{path}[{i}]"), out);
                }
            } else {
                out.push(path);
            }
        }
        _ => out.push(if path.is_empty() { ".".into() } else { path }),
    }
}

/// `spec.replicas`, or `data["config.yaml"]` for a key that is not a plain word.
fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{key:?}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_of_a_changed_image_and_replicas() {
        let a = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "details", "image": "d:1", "ports": [{"containerPort": 9080}]}]}}}});
        let mut b = a.clone();
        b["spec"]["template"]["spec"]["containers"][0]["image"] = json!("d:2");
        assert_eq!(
            changed_paths(&a, &b),
            vec!["spec.template.spec.containers[name=details].image"]
        );
        b["spec"]["replicas"] = json!(0);
        assert_eq!(changed_paths(&a, &b).len(), 2);
    }

    #[test]
    fn paths_of_list_items_and_odd_keys() {
        let a = json!({"spec": {"ports": [{"name": "http2", "port": 80}]},
            "data": {"config.yaml": "a: 1\n"}});
        let b = json!({"spec": {"ports": [{"name": "http2", "port": 80}, {"name": "tcp", "port": 666}]},
            "data": {"config.yaml": "a: 2\n"}});
        assert_eq!(
            changed_paths(&a, &b),
            vec!["data[\"config.yaml\"]", "spec.ports[name=tcp]"]
        );
        assert_eq!(
            changed_paths(&json!({"l": [1, 2]}), &json!({"l": [1]})),
            vec!["l"]
        );
    }

    #[test]
    fn secret_values_never_show() {
        let before = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s",
            "annotations": {LAST_APPLIED: "{\"data\":{\"password\":\"aHVudGVyMg==\"}}"}},
            "data": {"password": "aHVudGVyMg==", "user": "YWRtaW4="}});
        let mut after = before.clone();
        after["data"]["password"] = json!("c3dvcmRmaXNo");
        after["stringData"] = json!({"token": "plain-secret"});
        let c = Change::update("Secret default/s".into(), &before, &after);
        let text = serde_json::to_string(&c).unwrap();
        for secret in ["aHVudGVyMg==", "YWRtaW4=", "c3dvcmRmaXNo", "plain-secret"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(
            c.diff.contains("-  password: \"*** (before)\""),
            "{}",
            c.diff
        );
        assert!(
            c.diff.contains("+  password: \"*** (after)\""),
            "{}",
            c.diff
        );
        assert!(
            c.fields.contains(&"data.password".to_string()),
            "{:?}",
            c.fields
        );
        assert!(
            !c.fields.contains(&"data.user".to_string()),
            "{:?}",
            c.fields
        );
        let created = Change::create("Secret default/s".into(), &after, None);
        assert!(
            !serde_json::to_string(&created)
                .unwrap()
                .contains("c3dvcmRmaXNo")
        );
    }

    #[test]
    fn updates_leave_out_bookkeeping() {
        let live = json!({"kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "7",
            "managedFields": [{"manager": "kubectl"}], "generation": 1}, "data": {"a": "1"}});
        let plan = json!({"kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "7",
            "managedFields": [{"manager": "bookinfo-up"}], "generation": 2}, "data": {"a": "2"}});
        let c = Change::update("ConfigMap default/c".into(), &live, &plan);
        assert_eq!(c.fields, vec!["data.a"]);
        assert!(!c.diff.contains("managedFields") && !c.diff.contains("resourceVersion"));
        assert!(
            c.diff.contains("-  a: \"1\"") && c.diff.contains("+  a: \"2\""),
            "{}",
            c.diff
        );
        let owned = Change::update("ConfigMap default/c".into(), &live, &live);
        assert!(owned.fields.is_empty() && owned.summary.contains("ownership"));
    }
}
