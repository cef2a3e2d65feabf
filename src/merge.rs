//! The one deep merge of JSON-shaped values, as Helm merges values files: mappings key by key,
//! recursively; anything else (a list, a scalar, a mapping over a non-mapping) replaces what
//! was there. Helm values (`steps/helm.rs`), ConfigMap key merges (`steps/patch.rs`) and their
//! folding into the plan's own manifests (`steps/mod.rs`) all merge through it.

use serde_json::Value;

/// Merges `over` into `base`.
pub fn merge(base: &mut Value, over: &Value) {
    merge_recording(base, over, &mut |_, _| {});
}

/// Merges `over` into `base`, telling `replaced` each path whose value it set, with the value
/// there before (`None`: the key was absent), outermost first: what undoing the merge needs.
pub fn merge_recording(
    base: &mut Value,
    over: &Value,
    replaced: &mut dyn FnMut(&[String], Option<&Value>),
) {
    merge_at(base, over, &mut Vec::new(), replaced);
}

fn merge_at(
    base: &mut Value,
    over: &Value,
    path: &mut Vec<String>,
    replaced: &mut dyn FnMut(&[String], Option<&Value>),
) {
    let (Some(b), Some(o)) = (base.as_object_mut(), over.as_object()) else {
        replaced(path, Some(base));
        *base = over.clone();
        return;
    };
    for (k, v) in o {
        path.push(k.clone());
        match b.get_mut(k) {
            Some(existing) if existing.is_object() && v.is_object() => {
                merge_at(existing, v, path, replaced);
            }
            existing => {
                replaced(path, existing.map(|e| &*e));
                b.insert(k.clone(), v.clone());
            }
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_maps_and_replaces_lists() {
        let mut base = json!({"a": {"b": 1, "c": [1, 2]}, "d": 1});
        merge(&mut base, &json!({"a": {"c": [3], "e": true}}));
        assert_eq!(base, json!({"a": {"b": 1, "c": [3], "e": true}, "d": 1}));
    }

    #[test]
    fn a_mapping_replaces_a_non_mapping_at_any_depth() {
        let mut base = json!({"a": "scalar"});
        merge(&mut base, &json!({"a": {"b": 1}}));
        assert_eq!(base, json!({"a": {"b": 1}}));
        let mut base = json!([1, 2]);
        merge(&mut base, &json!({"b": 1}));
        assert_eq!(base, json!({"b": 1}));
    }

    #[test]
    fn merging_twice_changes_nothing() {
        let over = json!({"a": {"b": [1, 2], "c": {"d": "e"}}});
        let mut once = json!({"a": {"b": [3], "z": true}});
        merge(&mut once, &over);
        let mut twice = once.clone();
        merge(&mut twice, &over);
        assert_eq!(once, twice);
    }

    #[test]
    fn records_what_it_replaced() {
        let mut base = json!({"x": {"keep": 1, "old": false}});
        let mut seen = Vec::new();
        merge_recording(
            &mut base,
            &json!({"x": {"old": true, "new": 2}}),
            &mut |path, before| seen.push((path.join("."), before.cloned())),
        );
        assert_eq!(
            seen,
            [
                ("x.new".to_string(), None),
                ("x.old".to_string(), Some(json!(false)))
            ]
        );
    }
}
