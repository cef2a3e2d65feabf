//! Tier 1: the `apply` and `namespace` steps against a live API server (shared kwok cluster).

use std::time::Instant;

use bookinfo_up::kube::{PLAN_LABEL, STEP_ANNOTATION};
use bookinfo_up::plan::model;
use bookinfo_up::run::Outcome;
use bookinfo_up::steps::{apply, namespace};
use tokio::time::timeout;

use crate::kube_shared::{STEP_LIMIT, ctx, field, manifests, progress, shared};

/// Custom resource first, CRD and namespace last: the step must order them itself.
const CRD_AND_CR: &str = r#"
apiVersion: example.bookinfo-up.io/v1
kind: Widget
metadata:
  name: w1
spec:
  size: 3
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  colour: blue
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: kube-apply-crd-reader
  namespace: should-be-dropped
rules:
- apiGroups: ["example.bookinfo-up.io"]
  resources: ["widgets"]
  verbs: ["get", "list"]
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.bookinfo-up.io
spec:
  group: example.bookinfo-up.io
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-preserve-unknown-fields: true
---
apiVersion: v1
kind: Namespace
metadata:
  name: kube-apply-crd
"#;

fn apply_step(yaml: &str, namespace: Option<&str>) -> model::Apply {
    model::Apply {
        namespace: namespace.map(str::to_string),
        objects: manifests(yaml),
        urls: Vec::new(),
        template: false,
        vars: Default::default(),
    }
}

fn versions(s: &crate::kube_shared::Shared) -> Vec<String> {
    vec![
        field(
            s,
            &["widget", "w1", "-n", "kube-apply-crd"],
            "{.metadata.resourceVersion}",
        ),
        field(
            s,
            &["configmap", "settings", "-n", "kube-apply-crd"],
            "{.metadata.resourceVersion}",
        ),
        field(
            s,
            &["clusterrole", "kube-apply-crd-reader"],
            "{.metadata.resourceVersion}",
        ),
        field(
            s,
            &["crd", "widgets.example.bookinfo-up.io"],
            "{.metadata.resourceVersion}",
        ),
        field(
            s,
            &["namespace", "kube-apply-crd"],
            "{.metadata.resourceVersion}",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn crd_and_custom_resource_apply_first_time_and_second_run_writes_nothing() {
    let Some(s) = shared() else { return };
    let kube = s.kube().await;
    let step = apply_step(CRD_AND_CR, Some("kube-apply-crd"));

    let (c, mut rx) = ctx(&kube, "crds", "kube-tests");
    let started = Instant::now();
    let first = timeout(STEP_LIMIT, apply::run(&step, &c))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{}", e.chain()));
    eprintln!("first run in {:.2?}: {first:?}", started.elapsed());
    assert_eq!(
        first,
        Outcome::Changed {
            summary: "5 objects: 5 created".into()
        }
    );
    let messages = progress(&mut rx);
    assert!(
        messages.iter().any(|m| m == "applied 5/5 objects"),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("CRD to be established")),
        "{messages:?}"
    );

    // The custom resource got the step's namespace; the cluster-scoped role got none; what
    // the step created carries the plan label and step annotation.
    assert_eq!(
        field(s, &["widget", "w1", "-n", "kube-apply-crd"], "{.spec.size}"),
        "3"
    );
    let role_ns = field(
        s,
        &["clusterrole", "kube-apply-crd-reader"],
        "{.metadata.namespace}",
    );
    assert_eq!(role_ns, "");
    let label = format!("{{.metadata.labels.{}}}", PLAN_LABEL.replace('.', "\\."));
    assert_eq!(
        field(s, &["widget", "w1", "-n", "kube-apply-crd"], &label),
        "kube-tests"
    );
    let annotation = format!(
        "{{.metadata.annotations.{}}}",
        STEP_ANNOTATION.replace('.', "\\.")
    );
    assert_eq!(
        field(
            s,
            &["configmap", "settings", "-n", "kube-apply-crd"],
            &annotation
        ),
        "crds"
    );

    let before = versions(s);
    let (c, _rx) = ctx(&kube, "crds", "kube-tests");
    let started = Instant::now();
    let second = timeout(STEP_LIMIT, apply::run(&step, &c))
        .await
        .unwrap()
        .unwrap();
    eprintln!("second run in {:.2?}: {second:?}", started.elapsed());
    assert_eq!(
        second,
        Outcome::Unchanged {
            summary: "5 objects: 5 unchanged".into()
        }
    );
    let after = versions(s);
    eprintln!("resourceVersions before {before:?} after {after:?}");
    assert_eq!(before, after, "a second run must write nothing");

    // A changed object is configured, and only that one is written.
    let changed = apply_step(
        &CRD_AND_CR.replace("colour: blue", "colour: green"),
        Some("kube-apply-crd"),
    );
    let (c, _rx) = ctx(&kube, "crds", "kube-tests");
    let third = timeout(STEP_LIMIT, apply::run(&changed, &c))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        third,
        Outcome::Changed {
            summary: "5 objects: 1 configured, 4 unchanged".into()
        }
    );
    let now = versions(s);
    assert_ne!(now[1], before[1]);
    assert_eq!(
        (&now[0], &now[2], &now[3], &now[4]),
        (&before[0], &before[2], &before[3], &before[4])
    );
    assert_eq!(
        field(
            s,
            &["configmap", "settings", "-n", "kube-apply-crd"],
            "{.data.colour}"
        ),
        "green"
    );
    // Still ours after a reconfiguring apply.
    assert_eq!(
        field(
            s,
            &["configmap", "settings", "-n", "kube-apply-crd"],
            &label
        ),
        "kube-tests"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_objects_is_an_error() {
    let Some(s) = shared() else { return };
    let kube = s.kube().await;
    let (c, _rx) = ctx(&kube, "empty", "kube-tests");
    let e = apply::run(&apply_step("", None), &c).await.unwrap_err();
    assert!(e.message.contains("no objects"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_teardown_deletes_only_what_the_plan_created() {
    let Some(s) = shared() else { return };
    let kube = s.kube().await;
    // Objects that exist before the plan: never claimed, never deleted.
    s.cluster
        .kubectl_ok(&["create", "namespace", "kube-td-existing"]);
    s.cluster.kubectl_ok(&[
        "create",
        "configmap",
        "before",
        "-n",
        "kube-td-existing",
        "--from-literal=a=1",
    ]);

    let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: kube-td-existing}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: before, namespace: kube-td-existing}
data: {a: "1", b: "2"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ours, namespace: kube-td-existing}
data: {x: "y"}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-td-new}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: robot}
"#;
    let step = apply_step(yaml, Some("kube-td-new"));
    let (c, _rx) = ctx(&kube, "objects", "kube-td");
    let outcome = timeout(STEP_LIMIT, apply::run(&step, &c))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Changed {
            summary: "5 objects: 3 created, 1 configured, 1 unchanged".into()
        }
    );
    let label = format!("{{.metadata.labels.{}}}", PLAN_LABEL.replace('.', "\\."));
    assert_eq!(
        field(
            s,
            &["configmap", "before", "-n", "kube-td-existing"],
            &label
        ),
        ""
    );
    assert_eq!(
        field(
            s,
            &["configmap", "before", "-n", "kube-td-existing"],
            "{.data.b}"
        ),
        "2"
    );
    assert_eq!(field(s, &["namespace", "kube-td-existing"], &label), "");
    assert_eq!(
        field(s, &["serviceaccount", "robot", "-n", "kube-td-new"], &label),
        "kube-td"
    );

    let (c, mut rx) = ctx(&kube, "objects", "kube-td");
    let started = Instant::now();
    let down = timeout(STEP_LIMIT, apply::teardown(&step, &c))
        .await
        .unwrap()
        .unwrap();
    eprintln!("teardown in {:.2?}: {down:?}", started.elapsed());
    assert_eq!(
        down,
        Outcome::Changed {
            summary: "5 objects: 3 deleted, 2 not created by this plan, left alone".into()
        }
    );
    assert!(
        progress(&mut rx)
            .iter()
            .any(|m| m.contains("waiting for namespace kube-td-new to go"))
    );
    // The namespace was waited for: it is gone, not terminating.
    let gone = s.cluster.kubectl(&["get", "namespace", "kube-td-new"]);
    assert!(!gone.status.success());
    let left = s
        .cluster
        .kubectl_ok(&["get", "configmap", "-n", "kube-td-existing", "-o", "name"]);
    assert!(
        left.contains("configmap/before") && !left.contains("configmap/ours"),
        "{left}"
    );

    let (c, _rx) = ctx(&kube, "objects", "kube-td");
    let again = timeout(STEP_LIMIT, apply::teardown(&step, &c))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again,
        Outcome::Unchanged {
            summary: "5 objects: 3 already gone, 2 not created by this plan, left alone".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_step_is_idempotent_and_tears_down_only_its_own() {
    let Some(s) = shared() else { return };
    let kube = s.kube().await;
    let ns = model::Namespace {
        name: "kube-ns-new".into(),
        labels: [("istio-injection".to_string(), "enabled".to_string())].into(),
    };
    let (c, _rx) = ctx(&kube, "ns", "kube-ns");
    let first = namespace::run(&ns, &c).await.unwrap();
    assert_eq!(
        first,
        Outcome::Changed {
            summary: "created namespace kube-ns-new labelled istio-injection=enabled".into()
        }
    );
    let rv = field(
        s,
        &["namespace", "kube-ns-new"],
        "{.metadata.resourceVersion}",
    );
    let second = namespace::run(&ns, &c).await.unwrap();
    assert_eq!(
        second,
        Outcome::Unchanged {
            summary: "namespace kube-ns-new exists labelled istio-injection=enabled".into()
        }
    );
    assert_eq!(
        field(
            s,
            &["namespace", "kube-ns-new"],
            "{.metadata.resourceVersion}"
        ),
        rv
    );

    // A label added later keeps the plan label and step annotation set at creation.
    let mut more = ns.clone();
    more.labels.insert("team".into(), "mesh".into());
    let third = namespace::run(&more, &c).await.unwrap();
    assert_eq!(
        third,
        Outcome::Changed {
            summary: "labelled namespace kube-ns-new team=mesh".into()
        }
    );
    let labels = field(s, &["namespace", "kube-ns-new"], "{.metadata.labels}");
    assert!(
        labels.contains("\"istio-injection\":\"enabled\"") && labels.contains("\"team\":\"mesh\""),
        "{labels}"
    );
    assert!(
        labels.contains(&format!("\"{PLAN_LABEL}\":\"kube-ns\"")),
        "{labels}"
    );
    let annotation = format!(
        "{{.metadata.annotations.{}}}",
        STEP_ANNOTATION.replace('.', "\\.")
    );
    assert_eq!(field(s, &["namespace", "kube-ns-new"], &annotation), "ns");

    // A namespace that existed before is labelled but never claimed, so teardown leaves it.
    s.cluster
        .kubectl_ok(&["create", "namespace", "kube-ns-existing"]);
    let existing = model::Namespace {
        name: "kube-ns-existing".into(),
        labels: ns.labels.clone(),
    };
    assert!(matches!(
        namespace::run(&existing, &c).await.unwrap(),
        Outcome::Changed { .. }
    ));
    assert_eq!(
        namespace::teardown(&existing, &c).await.unwrap(),
        Outcome::Unchanged {
            summary: "namespace kube-ns-existing was not created by this plan; left alone".into()
        }
    );
    assert_eq!(
        field(
            s,
            &["namespace", "kube-ns-existing"],
            "{.metadata.labels.istio-injection}"
        ),
        "enabled"
    );

    let started = Instant::now();
    let down = timeout(STEP_LIMIT, namespace::teardown(&more, &c))
        .await
        .unwrap()
        .unwrap();
    eprintln!(
        "namespace teardown (deleted and gone) in {:.2?}",
        started.elapsed()
    );
    assert_eq!(
        down,
        Outcome::Changed {
            summary: "deleted namespace kube-ns-new".into()
        }
    );
    assert!(
        !s.cluster
            .kubectl(&["get", "namespace", "kube-ns-new"])
            .status
            .success()
    );
    assert_eq!(
        namespace::teardown(&more, &c).await.unwrap(),
        Outcome::Unchanged {
            summary: "namespace kube-ns-new already gone".into()
        }
    );
}
