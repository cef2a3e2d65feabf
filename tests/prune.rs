//! Pruning on a sim cluster (kwok: a real API server and controllers; Istio's CRDs from the
//! real `base` chart, a real helm release of the `gateway` chart): what leaves the plan leaves
//! the cluster by the next run, and nothing else does. A user's objects beside the plan's,
//! with similar names and labels but no ApplySet label, survive every run and `down`. `diff`
//! and `status` show a prune before it happens and write nothing. A run killed between its
//! applies and its prune leaves the set consistent; the next one finishes it. Two plans on one
//! cluster at once never prune each other's objects. A cluster made by an earlier version
//! (objects with the plan label and no ApplySet) is adopted without a deletion.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Bin, Product, Ran, Testbed, kubectl_at, testbed};

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: registry.invalid/web:1}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, labels: {app: web}}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config, labels: {app: web}}
data: {greeting: hello}
"#;

/// The objects that leave the plan in its second version: a Deployment and a VirtualService.
const WORKER: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: worker, labels: {app: worker}}
spec:
  replicas: 1
  selector: {matchLabels: {app: worker}}
  template:
    metadata: {labels: {app: worker}}
    spec: {containers: [{name: worker, image: registry.invalid/worker:1}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: worker}
spec:
  hosts: [worker]
  http: [{route: [{destination: {host: worker}}]}]
"#;

const ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http: [{route: [{destination: {host: web}}]}]
"#;

const WIDGETS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w1}
spec: {size: 3}
"#;

/// What the user adds by hand beside the plan's objects: similar names and labels (even the
/// plan's own step annotation), no ApplySet label.
const USERS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config-copy
  namespace: shop
  labels: {app: web}
  annotations: {bookinfo-up.io/step: app}
data: {greeting: mine}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: worker-2, namespace: shop, labels: {app: worker}}
spec:
  replicas: 1
  selector: {matchLabels: {app: worker-2}}
  template:
    metadata: {labels: {app: worker-2}}
    spec: {containers: [{name: worker, image: registry.invalid/worker:1}]}
"#;

/// The plan's versions, as its steps.
#[derive(Clone, Copy)]
pub(crate) struct Version {
    /// `worker.yaml` in the `app` step.
    pub(crate) worker: bool,
    /// The `side-gw` helm step.
    pub(crate) side: bool,
    /// The `widgets` step (a CRD and one of its objects).
    pub(crate) widgets: bool,
    /// `[prune] crds = true`.
    pub(crate) prune_crds: bool,
    /// An `exec` step that sleeps after the applies (for killing a run between them and the
    /// prune).
    pub(crate) sleeper: bool,
}

const V1: Version = Version {
    worker: true,
    side: true,
    widgets: true,
    prune_crds: false,
    sleeper: false,
};
pub(crate) const V2: Version = Version {
    worker: false,
    side: false,
    widgets: false,
    prune_crds: false,
    sleeper: false,
};

pub(crate) struct Env {
    tb: Testbed,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) state: tempfile::TempDir,
    name: String,
}

impl Env {
    pub(crate) fn new(tb: &Testbed, name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bookinfo-up-prune-")
            .tempdir()
            .unwrap();
        for (file, text) in [
            ("app.yaml", APP),
            ("worker.yaml", WORKER),
            ("routes.yaml", ROUTES),
            ("widgets.yaml", WIDGETS),
        ] {
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        let state = tempfile::Builder::new()
            .prefix("bookinfo-up-prune-state-")
            .tempdir()
            .unwrap();
        Self {
            tb: tb.clone(),
            dir,
            state,
            name: name.into(),
        }
    }

    fn plan(&self) -> PathBuf {
        self.dir.path().join("plan.toml")
    }

    /// Writes the plan at version `v`.
    pub(crate) fn write(&self, v: Version) {
        let mut app = vec!["app.yaml"];
        if v.worker {
            app.push("worker.yaml");
        }
        let mut plan = format!(
            r#"
[plan]
name = "{name}"

[cluster]
provider = "kwok"
name = "{name}"

[cluster.kwok]
nodes = 1
binaries = "${{env.BOOKINFO_UP_TESTBED_BIN}}"

[teardown]
delete_cluster = true

[prune]
crds = {crds}

[[step]]
id = "istio-base"
[step.helm]
release = "istio-base"
namespace = "istio-system"
create_namespace = true
chart = "${{env.BOOKINFO_UP_ISTIO_DIR}}/charts/base"
values = {{ defaultRevision = "default" }}

[[step]]
id = "istio-crds"
needs = ["istio-base"]
[step.wait]
crds = ["virtualservices.networking.istio.io"]

[[step]]
id = "shop"
[step.namespace]
name = "shop"

[[step]]
id = "app"
needs = ["shop", "istio-crds"]
[step.apply]
namespace = "shop"
files = {app:?}

[[step]]
id = "routes"
needs = ["shop", "istio-crds"]
[step.apply]
namespace = "shop"
files = ["routes.yaml"]
"#,
            name = self.name,
            crds = v.prune_crds,
        );
        if v.side {
            plan.push_str(
                r#"
[[step]]
id = "side-gw"
[step.helm]
release = "side-gw"
namespace = "side"
create_namespace = true
chart = "${env.BOOKINFO_UP_ISTIO_DIR}/charts/gateway"
values = { service = { type = "ClusterIP" } }
"#,
            );
        }
        if v.widgets {
            plan.push_str(
                r#"
[[step]]
id = "widgets"
needs = ["shop"]
[step.apply]
namespace = "shop"
files = ["widgets.yaml"]
"#,
            );
        }
        if v.sleeper {
            plan.push_str(
                r#"
[[step]]
id = "sleeper"
needs = ["app", "routes"]
timeout = "5m"
[step.exec]
command = ["sleep", "60"]
"#,
            );
        }
        std::fs::write(self.plan(), plan).unwrap();
    }

    pub(crate) fn up(&self) -> Product {
        Product::up(&self.tb)
            .plan(self.plan())
            .state(self.state.path())
    }

    pub(crate) fn kubeconfig(&self) -> PathBuf {
        self.state
            .path()
            .join("clusters")
            .join(&self.name)
            .join("kubeconfig")
    }

    pub(crate) fn kubectl(&self, args: &[&str]) -> String {
        kubectl_at(&self.kubeconfig(), &self.tb.path_env(), args)
    }

    /// Whether `kind/name` exists in namespace `ns` ("" for cluster-scoped).
    fn exists(&self, ns: &str, what: &str) -> bool {
        let mut args = vec!["get", what, "--ignore-not-found", "-o", "name"];
        if !ns.is_empty() {
            args.extend(["-n", ns]);
        }
        !self.kubectl(&args).trim().is_empty()
    }

    fn uid(&self, ns: &str, what: &str) -> String {
        self.kubectl(&["get", what, "-n", ns, "-o", "jsonpath={.metadata.uid}"])
    }

    fn settled_dump(&self) -> BTreeMap<String, String> {
        crate::common::settled_dump(
            &self.kubeconfig(),
            &self.tb.path_env(),
            Duration::from_secs(1),
        )
    }

    fn set_id(&self) -> String {
        self.kubectl(&[
            "get",
            "secret",
            "-n",
            "kube-system",
            &format!("bookinfo-up.{}", self.name),
            "-o",
            "jsonpath={.metadata.labels.applyset\\.kubernetes\\.io/id}",
        ])
    }

    fn parent_annotation(&self, key: &str) -> String {
        self.kubectl(&[
            "get",
            "secret",
            "-n",
            "kube-system",
            &format!("bookinfo-up.{}", self.name),
            "-o",
            &format!("jsonpath={{.metadata.annotations.applyset\\.kubernetes\\.io/{key}}}"),
        ])
    }
}

/// Takes the test's cluster down at the end, passed or failed.
pub(crate) struct Down<'a>(pub(crate) &'a Env);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = self.0.up().then(Bin::Down).args(["--force"]).run();
    }
}

/// Every step and phase unchanged.
fn assert_no_op(r: &Ran, what: &str) {
    assert_eq!(r.code, 0, "{what}: {}", r.stderr);
    assert!(
        r.changed().is_empty(),
        "{what}: a no-op, but {:?}",
        r.changed()
    );
}

#[test]
fn what_leaves_the_plan_leaves_the_cluster_and_nothing_else_does() {
    let Some(tb) = testbed() else { return };
    let env = Env::new(&tb, "prune-test");
    let _down = Down(&env);
    env.write(V1);
    let first = env.up().expect(0);
    assert_eq!(first.outcome("prune"), "unchanged", "{}", first.stdout);
    let users = env.dir.path().join("users.yaml");
    std::fs::write(&users, USERS).unwrap();
    env.kubectl(&["apply", "-f", users.to_str().unwrap()]);
    assert_no_op(&env.up().run(), "v1 again");

    // The members, as kubectl lists them by the KEP's label: exactly the plan's objects.
    let id = env.set_id();
    assert!(id.starts_with("applyset-") && id.ends_with("-v1"), "{id}");
    let listed = env.kubectl(&[
        "get",
        "deployments,services,configmaps,virtualservices,widgets,namespaces",
        "-A",
        "-l",
        &format!("applyset.kubernetes.io/part-of={id}"),
        "-o",
        "name",
    ]);
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "configmap/web-config",
            "deployment.apps/web",
            "deployment.apps/worker",
            "namespace/istio-system",
            "namespace/shop",
            "namespace/side",
            "service/web",
            "virtualservice.networking.istio.io/web",
            "virtualservice.networking.istio.io/worker",
            "widget.example.com/w1",
        ],
        "kubectl lists exactly the plan's members: helm's objects are helm's, the namespaces the \
         helm steps create are the plan's"
    );
    let groups = env.parent_annotation("contains-group-kinds");
    assert!(
        groups.contains("VirtualService.networking.istio.io"),
        "{groups}"
    );

    // v2: the worker Deployment and VirtualService, the side-gw release and the widgets step
    // (a CRD and a Widget) leave the plan.
    env.write(V2);
    let before = env.settled_dump();
    let diff = env.up().sub("diff").text().run();
    assert_eq!(
        diff.code, 1,
        "diff exits 1 on a pending prune:\n{}",
        diff.stdout
    );
    for line in [
        "- Deployment shop/worker",
        "- VirtualService shop/worker",
        "- Widget shop/w1",
        "- helm release side/side-gw",
        "- Namespace side",
    ] {
        assert!(
            diff.stdout.contains(line),
            "diff shows `{line}`:\n{}",
            diff.stdout
        );
    }
    assert!(
        !diff.stdout.contains("web-config-copy") && !diff.stdout.contains("worker-2"),
        "the user's objects are never in a prune:\n{}",
        diff.stdout
    );
    let dry = env.up().args(["--dry-run"]).text().expect(0);
    for line in [
        "  - Deployment shop/worker",
        "  - helm release side/side-gw",
    ] {
        assert!(
            dry.stdout.contains(line),
            "--dry-run lists `{line}`:\n{}",
            dry.stdout
        );
    }
    assert!(
        dry.stdout
            .contains("kept CustomResourceDefinition widgets.example.com"),
        "{}",
        dry.stdout
    );
    let status = env.up().sub("status").run();
    assert_eq!(
        status.code, 1,
        "status exits 1 with orphans:\n{}",
        status.stdout
    );
    let orphaned: Vec<&str> = status.summary["orphaned"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(orphaned.contains(&"Deployment shop/worker"), "{orphaned:?}");
    assert!(
        orphaned.contains(&"helm release side/side-gw"),
        "{orphaned:?}"
    );
    let kept = status.summary["kept"].to_string();
    assert!(
        kept.contains("CustomResourceDefinition widgets.example.com"),
        "{kept}"
    );
    assert_eq!(env.settled_dump(), before, "diff and status wrote nothing");

    // --no-prune: nothing deleted, and the summary says how many objects stay.
    let held = env.up().args(["--no-prune"]).expect(0);
    let summary = held.step("prune").unwrap()["summary"].to_string();
    assert!(summary.contains("pruning is off (--no-prune)"), "{summary}");
    assert!(env.exists("shop", "deployment/worker"));

    let pruned = env.up().expect(0);
    assert_eq!(pruned.outcome("prune"), "changed", "{}", pruned.stdout);
    let summary = pruned.step("prune").unwrap()["summary"].to_string();
    eprintln!("prune: {summary}");
    for gone in ["deployment/worker", "virtualservice/worker", "widget/w1"] {
        assert!(!env.exists("shop", gone), "{gone} pruned: {summary}");
    }
    assert!(!env.exists("", "namespace/side"), "{summary}");
    assert!(
        env.exists("", "crd/widgets.example.com"),
        "a CRD stays: {summary}"
    );
    let releases = std::process::Command::new("helm")
        .env("PATH", tb.path_env())
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(["list", "-A", "-q"])
        .output()
        .unwrap();
    let releases = String::from_utf8_lossy(&releases.stdout).to_string();
    assert!(
        !releases.contains("side-gw"),
        "release uninstalled: {releases}"
    );
    assert!(releases.contains("istio-base"), "{releases}");
    for mine in ["configmap/web-config-copy", "deployment/worker-2"] {
        assert!(env.exists("shop", mine), "the user's {mine} survives");
    }
    assert_no_op(&env.up().run(), "the run after the prune");
    let groups = env.parent_annotation("contains-group-kinds");
    assert!(
        !groups.contains("Widget.example.com"),
        "narrowed after the prune: {groups}"
    );

    // The CRD goes once the plan opts in.
    env.write(Version {
        prune_crds: true,
        ..V2
    });
    let crds = env.up().expect(0);
    assert_eq!(crds.outcome("prune"), "changed", "{}", crds.stdout);
    assert!(!env.exists("", "crd/widgets.example.com"));
    assert_no_op(&env.up().run(), "after the CRD");

    // down, keeping the cluster: the plan's objects go, the user's stay, and so does the
    // namespace that holds them.
    let down = env.up().then(Bin::Down).args(["--keep-cluster"]).expect(0);
    eprintln!("down: {}", down.brief());
    assert!(!env.exists("shop", "deployment/web"));
    for mine in ["configmap/web-config-copy", "deployment/worker-2"] {
        assert!(env.exists("shop", mine), "the user's {mine} survives down");
    }
    assert!(env.exists("", "namespace/shop"), "holds the user's objects");
}

#[test]
fn a_run_killed_between_apply_and_prune_is_finished_by_the_next() {
    let Some(tb) = testbed() else { return };
    let env = Env::new(&tb, "prune-kill");
    let _down = Down(&env);
    env.write(Version {
        side: false,
        widgets: false,
        ..V1
    });
    env.up().expect(0);
    // v2 with a step that sleeps after the applies: killed there, the prune never ran.
    env.write(Version {
        sleeper: true,
        ..V2
    });
    let mut child = env.up().spawn();
    let start = Instant::now();
    let stderr = child.stderr.take().unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut seen = String::new();
    for line in lines {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("step=sleeper") && line.contains("started") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{seen}");
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(env.exists("shop", "deployment/worker"), "not pruned yet");
    let groups = env.parent_annotation("contains-group-kinds");
    assert!(
        groups.contains("VirtualService.networking.istio.io") && groups.contains("Deployment.apps"),
        "the parent still covers every member: {groups}"
    );
    // The next run (the sleeper left out: the rest of the plan is the same) finishes it.
    let next = env.up().args(["--skip", "sleeper"]).expect(0);
    assert_eq!(next.outcome("prune"), "changed", "{}", next.stdout);
    assert!(!env.exists("shop", "deployment/worker"));
    assert!(!env.exists("shop", "virtualservice/worker"));
    let after = env.up().args(["--skip", "sleeper"]).expect(0);
    let changed: Vec<String> = after
        .changed()
        .into_iter()
        .filter(|c| c != "sleeper=skipped")
        .collect();
    assert!(changed.is_empty(), "the run after is a no-op: {changed:?}");
}

#[test]
fn two_plans_on_one_cluster_at_once_never_prune_each_others_objects() {
    let Some(tb) = testbed() else { return };
    // One cluster, made by plan `prune-host`; two plans of kind `existing` share it.
    let host = Env::new(&tb, "prune-host");
    let _down = Down(&host);
    host.write(Version {
        side: false,
        widgets: false,
        ..V2
    });
    host.up().expect(0);
    let plan_for = |name: &str, ns: &str, objects: &[&str]| -> PathBuf {
        let dir = host.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut yaml = String::new();
        for o in objects {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {o}, labels: {{app: shared}}}}\ndata: {{owner: {name}}}\n"
            ));
        }
        std::fs::write(dir.join("objects.yaml"), yaml).unwrap();
        let plan = format!(
            r#"
[plan]
name = "{name}"
[cluster]
provider = "existing"
name = "{name}"
[cluster.existing]
kubeconfig = "{kc}"
[[step]]
id = "objects"
[step.apply]
namespace = "{ns}"
files = ["objects.yaml"]
"#,
            kc = host.kubeconfig().display()
        );
        std::fs::write(dir.join("plan.toml"), plan).unwrap();
        dir.join("plan.toml")
    };
    let run = |plan: &Path| Product::up(&tb).plan(plan).state(host.state.path());
    // Both in the same namespace, with the same labels.
    for round in 0..3 {
        // Three objects each, both plans at once; then each drops its third, both at once.
        for keep in [3, 2] {
            let a = plan_for("team-a", "shop", &["a-1", "a-2", "a-3"][..keep]);
            let b = plan_for("team-b", "shop", &["b-1", "b-2", "b-3"][..keep]);
            let (ca, cb) = (run(&a).spawn(), run(&b).spawn());
            for (c, who) in [(ca, "a"), (cb, "b")] {
                let r = Ran::from(c.wait_with_output().unwrap());
                assert_eq!(r.code, 0, "round {round}, plan {who}: {}", r.stderr);
            }
            let left = host.kubectl(&[
                "get",
                "configmaps",
                "-n",
                "shop",
                "-l",
                "app=shared",
                "-o",
                "name",
            ]);
            let mut left: Vec<String> = left.lines().map(str::to_string).collect();
            left.sort();
            let expected: Vec<String> = ["a", "b"]
                .iter()
                .flat_map(|t| (1..=keep).map(move |i| format!("configmap/{t}-{i}")))
                .collect();
            assert_eq!(left, expected, "round {round}: each pruned only its own");
        }
    }
}

#[test]
fn a_cluster_made_by_the_previous_release_is_adopted_without_a_deletion() {
    let Some(tb) = testbed() else { return };
    let env = Env::new(&tb, "prune-old");
    let _down = Down(&env);
    let v = Version {
        side: false,
        widgets: false,
        ..V2
    };
    env.write(v);
    // The cluster and its namespace by this release, then the objects as the previous release
    // made them: the plan label and step annotation, no ApplySet label, no parent.
    env.up().args(["--only", "shop"]).expect(0);
    env.kubectl(&[
        "delete",
        "secret",
        "-n",
        "kube-system",
        "bookinfo-up.prune-old",
        "--ignore-not-found",
    ]);
    env.kubectl(&[
        "label",
        "namespace",
        "shop",
        "applyset.kubernetes.io/part-of-",
    ]);
    let old = format!(
        "{APP}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: left-behind}}\ndata: {{kept: \"yes\"}}\n"
    );
    let old_yaml = env.dir.path().join("old.yaml");
    std::fs::write(&old_yaml, &old).unwrap();
    env.kubectl(&["apply", "-n", "shop", "-f", old_yaml.to_str().unwrap()]);
    for what in [
        "deployment/web",
        "service/web",
        "configmap/web-config",
        "configmap/left-behind",
    ] {
        env.kubectl(&["label", "-n", "shop", what, "bookinfo-up.io/plan=prune-old"]);
        env.kubectl(&["annotate", "-n", "shop", what, "bookinfo-up.io/step=app"]);
    }
    let uids: Vec<String> = [
        "deployment/web",
        "service/web",
        "configmap/web-config",
        "configmap/left-behind",
    ]
    .iter()
    .map(|w| env.uid("shop", w))
    .collect();
    let adopted = env.up().args(["--only", "shop", "--only", "app"]).expect(0);
    eprintln!("adopting: {}", adopted.brief());
    // And the whole plan.
    let whole = env.up().expect(0);
    eprintln!("whole: {}", whole.brief());
    let after: Vec<String> = [
        "deployment/web",
        "service/web",
        "configmap/web-config",
        "configmap/left-behind",
    ]
    .iter()
    .map(|w| env.uid("shop", w))
    .collect();
    assert_eq!(uids, after, "nothing deleted or recreated");
    let id = env.set_id();
    let members = env.kubectl(&[
        "get",
        "deployments,services,configmaps",
        "-n",
        "shop",
        "-l",
        &format!("applyset.kubernetes.io/part-of={id}"),
        "-o",
        "name",
    ]);
    assert!(members.contains("deployment.apps/web"), "{members}");
    assert!(
        !members.contains("left-behind"),
        "an object the plan no longer has is not claimed: {members}"
    );
    assert_no_op(&env.up().run(), "after adopting");
}

/// A ValidatingAdmissionPolicy of the user's that denies deleting the worker Deployment.
const DENY_DELETE: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: keep-worker}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: ["apps"]
      apiVersions: ["v1"]
      operations: ["DELETE"]
      resources: ["deployments"]
  validations:
  - expression: "oldObject.metadata.name != 'worker'"
    message: "the worker stays"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: keep-worker}
spec:
  policyName: keep-worker
  validationActions: [Deny]
"#;

#[test]
fn a_prune_that_fails_names_the_object_and_keeps_the_set_wide() {
    let Some(tb) = testbed() else { return };
    let env = Env::new(&tb, "prune-denied");
    let _down = Down(&env);
    let v1 = Version {
        side: false,
        widgets: false,
        ..V1
    };
    env.write(v1);
    env.up().expect(0);
    let policy = env.dir.path().join("policy.yaml");
    std::fs::write(&policy, DENY_DELETE).unwrap();
    env.kubectl(&["apply", "-f", policy.to_str().unwrap()]);
    env.write(Version {
        side: false,
        widgets: false,
        ..V2
    });
    // The policy takes a moment to be enforced: a bounded wait, by server-side dry runs of
    // the delete, until it denies.
    let start = Instant::now();
    loop {
        let out = std::process::Command::new("kubectl")
            .env("PATH", tb.path_env())
            .arg("--kubeconfig")
            .arg(env.kubeconfig())
            .args([
                "delete",
                "-n",
                "shop",
                "deployment/worker",
                "--dry-run=server",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stderr).contains("the worker stays") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the policy is never enforced"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let denied = env.up().expect(1);
    let cause = denied.cause("prune");
    assert!(
        cause.contains("Deployment shop/worker") && cause.contains("the worker stays"),
        "the failure names the object and says why: {cause}"
    );
    assert!(
        denied.changed().iter().any(|c| c == "prune=failed"),
        "{:?}",
        denied.changed()
    );
    assert!(env.exists("shop", "deployment/worker"));
    let groups = env.parent_annotation("contains-group-kinds");
    assert!(
        groups.contains("Deployment.apps"),
        "as wide as its members: {groups}"
    );
    // Once the policy goes, the next run finishes the prune; the one after is a no-op.
    env.kubectl(&["delete", "-f", policy.to_str().unwrap()]);
    let mut done = false;
    for _ in 0..10 {
        let r = env.up().run();
        if r.code == 0 {
            done = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(done, "a run prunes once the policy is gone");
    assert!(!env.exists("shop", "deployment/worker"));
    assert_no_op(&env.up().run(), "after");
}
