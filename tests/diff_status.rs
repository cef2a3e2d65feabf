//! `bookinfo-up diff` and `bookinfo-up status` on a sim cluster (real API server, real
//! istiod): converged, they say so and exit 0; after each drift a user causes, and after each
//! plan edit, `diff` names the object and field and exits 1, `status` calls the step drifted
//! or missing and exits 1; and neither changes anything: every object's resourceVersion and
//! every helm release's revision are the same after them as before. A Secret planted in an
//! applied manifest never shows its value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::common::{Bin, Product, testbed};

struct Env {
    state: tempfile::TempDir,
    /// The plans and manifests, written out by `bookinfo-up init` so the test can edit them.
    root: PathBuf,
    path_env: String,
}

impl Env {
    fn plan(&self) -> PathBuf {
        self.root.join("plans/sim.toml")
    }

    fn kubeconfig(&self) -> PathBuf {
        self.state.path().join("clusters/bookinfo-sim/kubeconfig")
    }

    /// The product on this environment's plan copy and state folder (NO_COLOR unset, so that
    /// colour follows the terminal, which a test's output is not).
    fn product(&self, bin: Bin) -> Product {
        Product::new(bin)
            .path(&self.path_env)
            .state(self.state.path())
            .env_remove("NO_COLOR")
    }

    /// A run of the plan, expected to succeed: converges whatever a scenario left.
    fn up(&self) {
        self.product(Bin::Up).plan(self.plan()).expect(0);
    }

    /// `diff` or `status` on the plan: (exit code, stdout, stderr).
    fn inspect(&self, command: &str, json: bool) -> (i32, String, String) {
        let mut run = self.product(Bin::Up).sub(command).plan(self.plan());
        if !json {
            run = run.text();
        }
        let out = run.run();
        (out.code, out.stdout, out.stderr)
    }

    fn kubectl(&self, args: &[&str]) -> String {
        crate::common::kubectl_at(&self.kubeconfig(), &self.path_env, args)
    }

    /// The cluster's dump (`common::cluster_dump`): with the whole plan on it, well over a
    /// hundred objects.
    fn dump(&self) -> BTreeMap<String, String> {
        let dump = crate::common::cluster_dump(&self.kubeconfig(), &self.path_env);
        assert!(dump.len() > 100, "the dump covers the cluster: {dump:?}");
        dump
    }

    fn settled_dump(&self) -> BTreeMap<String, String> {
        crate::common::settled_dump(&self.kubeconfig(), &self.path_env, Duration::from_secs(2))
    }
}

/// Takes the cluster down at the end, passed or failed.
struct Down<'a>(&'a Env);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        self.0.product(Bin::Down).plan(self.0.plan()).run();
    }
}

/// The changes `diff --output json` lists for a step.
fn changes_of(doc: &Value, step: &str) -> Vec<Value> {
    let s = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == step)
        .unwrap_or_else(|| panic!("no step {step} in {doc}"));
    assert_eq!(s["type"], "changes", "{s}");
    s["items"].as_array().unwrap().clone()
}

fn state_of(doc: &Value, step: &str) -> String {
    doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == step)
        .unwrap_or_else(|| panic!("no step {step} in {doc}"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// One drift: what `diff` must name, and the states `status` may give the step.
struct Expect<'a> {
    step: &'a str,
    target: &'a str,
    field: &'a str,
    states: &'a [&'a str],
}

/// Runs `diff` and `status` (text and JSON) on a drifted or edited cluster; checks what they
/// say and that the cluster is the same after them. Returns `diff`'s text.
fn check(env: &Env, scenario: &str, expect: &Expect) -> String {
    let before = env.settled_dump();
    let (code, text, err) = env.inspect("diff", false);
    assert_eq!(code, 1, "{scenario}: diff exits 1\n{text}\n{err}");
    assert!(
        text.contains(expect.target),
        "{scenario}: diff names {}:\n{text}",
        expect.target
    );
    let (code, json, err) = env.inspect("diff", true);
    assert_eq!(code, 1, "{scenario}: diff --output json exits 1: {err}");
    let doc: Value = serde_json::from_str(&json).unwrap();
    let changes = changes_of(&doc, expect.step);
    let change = changes
        .iter()
        .find(|c| c["target"] == expect.target)
        .unwrap_or_else(|| panic!("{scenario}: {} not in {changes:?}", expect.target));
    if !expect.field.is_empty() {
        let fields: Vec<&str> = change["fields"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            fields.contains(&expect.field),
            "{scenario}: field {} in {fields:?}",
            expect.field
        );
    }
    let (code, out, err) = env.inspect("status", false);
    assert_eq!(code, 1, "{scenario}: status exits 1\n{out}\n{err}");
    let (code, json, _) = env.inspect("status", true);
    assert_eq!(code, 1, "{scenario}: status --output json exits 1");
    let status: Value = serde_json::from_str(&json).unwrap();
    let state = state_of(&status, expect.step);
    assert!(
        expect.states.contains(&state.as_str()),
        "{scenario}: status calls {} {state}",
        expect.step
    );
    assert_eq!(status["healthy"], false);
    let after = env.dump();
    let moved = changed(&before, &after);
    assert!(
        moved.is_empty(),
        "{scenario}: diff and status changed the cluster: {moved:?}"
    );
    eprintln!(
        "{scenario}: diff and status found {} {}, {} objects and releases unchanged",
        expect.target,
        if expect.field.is_empty() {
            ""
        } else {
            expect.field
        },
        after.len()
    );
    text
}

#[test]
fn diff_and_status_see_drift_and_change_nothing() {
    let Some(tb) = testbed() else { return };
    let state = tempfile::Builder::new()
        .prefix("bookinfo-up-diff-")
        .tempdir()
        .unwrap();
    let root = state.path().join("plans-copy");
    let env = Env {
        root: root.clone(),
        state,
        path_env: tb.path_env(),
    };
    env.product(Bin::Up)
        .sub("init")
        .text()
        .args([root.to_str().unwrap()])
        .expect(0);
    // A Secret among the applied manifests, whose value must never be printed.
    let secret_file = root.join("manifests/bookinfo/zz-secret.yaml");
    let secret = |value: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: planted\nstringData:\n  password: {value}\n"
        )
    };
    std::fs::write(&secret_file, secret("hunter2-first-value")).unwrap();

    env.up();
    let _down = Down(&env);
    // The charts' HorizontalPodAutoscalers get their first status from the controller-manager
    // up to a sync period (15 s) after they are made: the cluster's own write, awaited here so
    // that it cannot land between two dumps.
    env.kubectl(&[
        "wait",
        "-n",
        "istio-system",
        "hpa",
        "--all",
        "--for=condition=AbleToScale",
        "--timeout=90s",
    ]);

    // Converged: no changes, healthy.
    let before = env.settled_dump();
    let (code, text, err) = env.inspect("diff", false);
    assert_eq!(code, 0, "converged diff exits 0:\n{text}\n{err}");
    assert!(text.contains("no changes"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let (code, out, err) = env.inspect("status", false);
    assert_eq!(code, 0, "converged status exits 0:\n{out}\n{err}");
    assert!(out.contains("converged and healthy"), "{out}");
    assert!(out.contains("export KUBECONFIG="), "{out}");
    let moved = changed(&before, &env.dump());
    assert!(
        moved.is_empty(),
        "converged: diff and status changed {moved:?}"
    );

    // Drift a user causes, each repaired by a run before the next.
    let ports = env.kubectl(&[
        "get",
        "svc",
        "-n",
        "istio-system",
        "istio-ingressgateway",
        "-o",
        "jsonpath={.spec.ports[*].port}",
    ]);
    let index = ports
        .split_whitespace()
        .position(|p| p == "666")
        .expect("port 666");
    let drifts: Vec<(&str, Vec<Vec<String>>, Expect)> = vec![
        (
            "port 666 removed from the ingress Service",
            vec![vec![
                "patch".into(),
                "svc".into(),
                "-n".into(),
                "istio-system".into(),
                "istio-ingressgateway".into(),
                "--type=json".into(),
                "-p".into(),
                format!("[{{\"op\":\"remove\",\"path\":\"/spec/ports/{index}\"}}]"),
            ]],
            Expect {
                step: "ingress-ports",
                target: "Service istio-system/istio-ingressgateway",
                field: "spec.ports[name=http-bookinfo]",
                states: &["drifted"],
            },
        ),
        (
            "a Deployment scaled to 0",
            vec![
                strings(&[
                    "scale",
                    "-n",
                    "bookinfo",
                    "deploy/details-v1",
                    "--replicas=0",
                ]),
                strings(&[
                    "wait",
                    "-n",
                    "bookinfo",
                    "--for=delete",
                    "pod",
                    "-l",
                    "app=details",
                    "--timeout=60s",
                ]),
            ],
            Expect {
                step: "bookinfo",
                target: "Deployment bookinfo/details-v1",
                field: "spec.replicas",
                states: &["drifted"],
            },
        ),
        (
            "a VirtualService deleted",
            vec![strings(&[
                "delete",
                "-n",
                "bookinfo",
                "virtualservices.networking.istio.io",
                "bookinfo",
            ])],
            Expect {
                step: "bookinfo-gateway",
                target: "VirtualService bookinfo/bookinfo",
                field: "",
                states: &["missing", "drifted"],
            },
        ),
        (
            "the injection label removed",
            vec![strings(&["label", "ns", "bookinfo", "istio-injection-"])],
            Expect {
                step: "bookinfo-namespace",
                target: "Namespace bookinfo",
                field: "metadata.labels.istio-injection",
                states: &["drifted"],
            },
        ),
        (
            "Kiali's ConfigMap overwritten",
            vec![strings(&[
                "patch",
                "cm",
                "-n",
                "istio-system",
                "kiali",
                "--type=merge",
                "-p",
                r#"{"data":{"config.yaml":"server:\n  port: 20001\n"}}"#,
            ])],
            Expect {
                step: "kiali-grafana",
                target: "ConfigMap istio-system/kiali",
                field: "config.yaml:external_services",
                states: &["drifted"],
            },
        ),
    ];
    for (scenario, commands, expect) in &drifts {
        for c in commands {
            let args: Vec<&str> = c.iter().map(String::as_str).collect();
            env.kubectl(&args);
        }
        check(&env, scenario, expect);
        env.up();
    }

    // Plan edits: a helm value, an image tag, the Secret's value.
    let flow = root.join("plans/shared/bookinfo-flow.toml");
    let original = std::fs::read_to_string(&flow).unwrap();
    let edited = original.replace(
        "values = { defaultRevision = \"default\" }",
        "values = { defaultRevision = \"canary\" }",
    );
    assert_ne!(
        original, edited,
        "the istio-base values are where the test expects"
    );
    std::fs::write(&flow, edited).unwrap();
    let text = check(
        &env,
        "a changed value in a helm step's plan values",
        &Expect {
            step: "istio-base",
            target: "helm release istio-system/istio-base",
            field: "values.defaultRevision",
            states: &["drifted"],
        },
    );
    assert!(
        text.contains("-defaultRevision: default") && text.contains("+defaultRevision: canary"),
        "{text}"
    );
    std::fs::write(&flow, &original).unwrap();

    let details = root.join("manifests/bookinfo/details.yaml");
    let original = std::fs::read_to_string(&details).unwrap();
    let edited = original.replace(
        "examples-bookinfo-details-v1:${bookinfo_tag}",
        "examples-bookinfo-details-v1:1.20.2",
    );
    assert_ne!(original, edited, "the image is where the test expects");
    std::fs::write(&details, edited).unwrap();
    check(
        &env,
        "an image tag edited in a manifest",
        &Expect {
            step: "bookinfo",
            target: "Deployment bookinfo/details-v1",
            field: "spec.template.spec.containers[name=details].image",
            states: &["drifted"],
        },
    );
    let (_, json, _) = env.inspect("diff", true);
    let doc: Value = serde_json::from_str(&json).unwrap();
    let changes = changes_of(&doc, "bookinfo");
    assert_eq!(changes.len(), 1, "one object changes: {changes:?}");
    assert_eq!(
        changes[0]["fields"],
        serde_json::json!(["spec.template.spec.containers[name=details].image"]),
        "exactly the one field"
    );
    let diff = changes[0]["diff"].as_str().unwrap();
    let edits: Vec<&str> = diff
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .collect();
    assert_eq!(
        edits,
        vec![
            "-      - image: registry.istio.io/release/examples-bookinfo-details-v1:1.20.3",
            "+      - image: registry.istio.io/release/examples-bookinfo-details-v1:1.20.2",
        ],
        "one line out, one line in:\n{diff}"
    );
    let total: usize = doc["changes"].as_u64().unwrap() as usize;
    assert_eq!(total, 1, "nothing else in the plan changes: {json}");
    std::fs::write(&details, &original).unwrap();

    std::fs::write(&secret_file, secret("swordfish-second-value")).unwrap();
    let text = check(
        &env,
        "a Secret's value edited in a manifest",
        &Expect {
            step: "bookinfo",
            target: "Secret bookinfo/planted",
            field: "",
            states: &["drifted"],
        },
    );
    let (_, json, _) = env.inspect("diff", true);
    let (_, status, _) = env.inspect("status", true);
    for value in ["hunter2-first-value", "swordfish-second-value"] {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        for (what, out) in [
            ("diff", &text),
            ("diff --output json", &json),
            ("status", &status),
        ] {
            assert!(
                !out.contains(value) && !out.contains(&encoded),
                "{what} printed the Secret's value:\n{out}"
            );
        }
    }
    assert!(
        text.contains("*** (before)") && text.contains("*** (after)"),
        "the changed key shows as changed:\n{text}"
    );
    eprintln!("the Secret's value never printed; its key shown as changed");
}

/// The keys whose value differs between two dumps, or that only one has.
fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let mut keys: Vec<String> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: {v} -> {:?}", after.get(k)))
        .collect();
    keys.extend(
        after
            .keys()
            .filter(|k| !before.contains_key(*k))
            .map(|k| format!("{k}: new")),
    );
    keys
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn diff_and_status_on_a_missing_cluster_say_so() {
    let Some(tb) = testbed() else { return };
    let state = tempfile::tempdir().unwrap();
    for command in ["diff", "status"] {
        let out = Product::up(&tb)
            .sub(command)
            .text()
            .plan("plans/sim.toml")
            .state(state.path())
            .run();
        let err = &out.stderr;
        assert_eq!(out.code, 3, "{command}: {err}");
        assert!(
            err.contains("cluster `bookinfo-sim` does not exist"),
            "{command}: {err}"
        );
        assert!(
            std::fs::read_dir(state.path()).unwrap().next().is_none(),
            "{command} created nothing in the state folder"
        );
    }
}
