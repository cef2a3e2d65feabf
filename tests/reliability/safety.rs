//! Issue #6, item 4. Safety of `bookinfo-down`:
//! - against a cluster the plan did not create (a kwok cluster made by hand, given as
//!   `existing` through `--kubeconfig`) holding objects of its own, some where the plan puts
//!   its own (a namespace `bookinfo` that already exists, a ServiceAccount of the same name as
//!   one of Bookinfo's), `up` then `down` delete only what the plan created: every object
//!   that was there before is still there, with the same uid;
//! - against a cluster of the kwok provider whose owner marker names another plan, `down`
//!   refuses with a clear message and the cluster lives on;
//! - `down` twice succeeds, on both.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::dump::list_stable_objects;
use crate::harness::{Bin, Sim, Testbed, kubectl, live_slot, port_lock, testbed};

/// A kwok cluster made by hand, as a user would: kwokctl, one node, admission webhooks off.
struct HandCluster {
    tb: Testbed,
    workdir: tempfile::TempDir,
    name: String,
}

impl HandCluster {
    fn create(tb: &Testbed) -> Self {
        let c = Self {
            tb: tb.clone(),
            workdir: tempfile::Builder::new()
                .prefix("bookinfo-up-rel-hand-")
                .tempdir()
                .unwrap(),
            name: format!("hand-{}", std::process::id()),
        };
        let lock = port_lock();
        let out = c
            .kwokctl()
            .args(["create", "cluster", "--name", &c.name, "--runtime", "binary", "--wait", "120s"])
            .arg("--kubeconfig")
            .arg(c.kubeconfig())
            .args([
                "--extra-args",
                "kube-apiserver=disable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy",
            ])
            .output()
            .unwrap();
        drop(lock);
        assert!(
            out.status.success(),
            "kwokctl create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = c
            .kwokctl()
            .args(["scale", "node", "--name", &c.name, "--replicas", "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kwokctl scale: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c.kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            "nodes",
            "--all",
            "--timeout=60s",
        ]);
        let t = Instant::now();
        while !c
            .kubectl_ok(&["get", "nodes", "-o", "jsonpath={.items[*].spec.taints}"])
            .trim()
            .is_empty()
        {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the node keeps its taints"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        c
    }

    fn kubeconfig(&self) -> PathBuf {
        self.workdir.path().join("kubeconfig")
    }

    fn kwokctl(&self) -> Command {
        let b = &self.tb.bin;
        let mut c = Command::new(b.join("kwokctl"));
        c.env("PATH", self.tb.path_env())
            .env("KWOK_WORKDIR", self.workdir.path())
            .env("KWOK_RUNTIME", "binary")
            .env("KWOK_KUBE_APISERVER_BINARY", b.join("kube-apiserver"))
            .env(
                "KWOK_KUBE_CONTROLLER_MANAGER_BINARY",
                b.join("kube-controller-manager"),
            )
            .env("KWOK_KUBE_SCHEDULER_BINARY", b.join("kube-scheduler"))
            .env("KWOK_KUBECTL_BINARY", b.join("kubectl"))
            .env("KWOK_CONTROLLER_BINARY", b.join("kwok"))
            .env("KWOK_ETCD_BINARY", b.join("etcd"));
        c
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = kubectl(
            &self.tb,
            &self.kubeconfig(),
            &self.workdir.path().join("kcache"),
            args,
        );
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, yaml: &str) {
        let f = self.workdir.path().join("apply.yaml");
        std::fs::write(&f, yaml).unwrap();
        self.kubectl_ok(&["apply", "-f", f.to_str().unwrap()]);
    }

    /// `kind.group ns/name` → (uid, plan label) of every object but the volatile kinds
    /// (`dump::SKIPPED_KINDS`).
    fn inventory(&self) -> BTreeMap<String, (String, Option<String>)> {
        let list = list_stable_objects(&|args| self.kubectl_ok(args));
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| {
                // Controllers' own offspring come and go.
                !o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["controller"] == true))
            })
            .map(|o| {
                let m = &o["metadata"];
                (
                    format!(
                        "{}.{} {}/{}",
                        o["kind"].as_str().unwrap_or_default(),
                        o["apiVersion"]
                            .as_str()
                            .unwrap_or_default()
                            .rsplit_once('/')
                            .map(|x| x.0)
                            .unwrap_or("core"),
                        m["namespace"].as_str().unwrap_or("-"),
                        m["name"].as_str().unwrap_or_default()
                    ),
                    (
                        m["uid"].as_str().unwrap_or_default().to_string(),
                        m["labels"]["bookinfo-up.io/plan"]
                            .as_str()
                            .map(str::to_string),
                    ),
                )
            })
            .collect()
    }
}

impl Drop for HandCluster {
    fn drop(&mut self) {
        let _ = self
            .kwokctl()
            .args(["delete", "cluster", "--name", &self.name])
            .output();
    }
}

/// Objects of someone else, some where the plan puts its own.
const FOREIGN: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bookinfo, labels: {team: someone-else}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: keep-me, namespace: bookinfo}
data: {owner: someone-else}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bookinfo-ratings, namespace: bookinfo, labels: {team: someone-else}}
---
apiVersion: v1
kind: Namespace
metadata: {name: elsewhere}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: bystander, namespace: elsewhere}
spec:
  replicas: 1
  selector: {matchLabels: {app: bystander}}
  template:
    metadata: {labels: {app: bystander}}
    spec: {containers: [{name: c, image: example.invalid/bystander:1}]}
---
apiVersion: v1
kind: Service
metadata: {name: bystander, namespace: elsewhere}
spec: {selector: {app: bystander}, ports: [{port: 80}]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: bystander}
rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
"#;

#[test]
#[ignore = "slow: `just reliability`"]
fn down_on_a_cluster_the_plan_did_not_create_deletes_only_the_plans_objects() {
    let Some(tb) = testbed() else { return };
    let _slot = live_slot();
    let hand = HandCluster::create(&tb);
    hand.apply(FOREIGN);
    let before = hand.inventory();
    let sim = Sim::new(&tb, "safety-existing");
    let kc = hand.kubeconfig();
    let kc = kc.to_str().unwrap();

    // The hand-made cluster runs no istiod (and has webhooks off): the two checks that need a
    // serving istiod, the webhook probe and the sidecars of the Bookinfo pods, are left out
    // (on it they fail, as they must); every step that creates something runs.
    let run = |bin: Bin| {
        let mut run = sim.product(bin).args(["--kubeconfig", kc]);
        if bin == Bin::Up {
            run = run.args(["--skip", "webhook-ready", "--skip", "bookinfo-pods"]);
        }
        crate::harness::Running::spawn(run.command(), None).finish(Duration::from_secs(600))
    };
    let up = run(Bin::Up);
    assert_eq!(up.code, 0, "up on the hand-made cluster:\n{}", up.stderr);
    assert!(
        !sim.cluster_exists(),
        "no kwok cluster is created for an existing one"
    );
    let during = hand.inventory();
    let claimed: Vec<&String> = before
        .iter()
        .filter(|(k, (_, label))| {
            label.is_none() && during.get(*k).is_some_and(|(_, l)| l.is_some())
        })
        .map(|(k, _)| k)
        .collect();
    assert!(
        claimed.is_empty(),
        "up claimed objects that existed before: {claimed:?}"
    );

    let down = run(Bin::Down);
    assert_eq!(
        down.code, 0,
        "down on the hand-made cluster:\n{}",
        down.stderr
    );
    let after = hand.inventory();
    let mut lost = Vec::new();
    for (k, (uid, _)) in &before {
        match after.get(k) {
            None => lost.push(format!("{k} deleted")),
            Some((u, _)) if u != uid => lost.push(format!("{k} replaced (uid {uid} → {u})")),
            _ => {}
        }
    }
    assert!(
        lost.is_empty(),
        "down touched objects the plan did not create:\n{}",
        lost.join("\n")
    );
    let labelled: Vec<&String> = after
        .iter()
        .filter(|(_, (_, l))| l.as_deref() == Some(crate::harness::PLAN_NAME))
        .map(|(k, _)| k)
        .collect();
    assert!(
        labelled.is_empty(),
        "objects of the plan left after down: {labelled:?}"
    );
    let leftovers: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let releases = hand.kubectl_ok(&["get", "secrets", "-A", "-l", "owner=helm", "-o", "name"]);
    assert!(
        releases.trim().is_empty(),
        "helm releases left after down: {releases}"
    );
    let created = during.keys().filter(|k| !before.contains_key(*k)).count();

    let again = run(Bin::Down);
    assert_eq!(
        again.code, 0,
        "second down on the hand-made cluster:\n{}",
        again.stderr
    );
    eprintln!(
        "safety (existing): {} objects before up, {created} added by up ({}), down removed {} of them ({}); \
         all {} pre-existing objects kept with their uids; second down {}",
        before.len(),
        up.brief(),
        created - leftovers.len(),
        down.brief(),
        before.len(),
        again.brief()
    );
    if !leftovers.is_empty() {
        eprintln!("  left after down, unlabelled (not the plan's to delete): {leftovers:?}");
    }
}

#[test]
#[ignore = "slow: `just reliability`"]
fn down_refuses_another_plans_cluster_and_twice_is_fine() {
    let Some(tb) = testbed() else { return };
    let _slot = live_slot();
    let sim = Sim::new(&tb, "safety-owner");
    sim.prepare();
    let marker = sim.dir().join("marker.yaml");
    let write_marker = |plan: &str| {
        std::fs::write(
            &marker,
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bookinfo-up-owner, namespace: kube-system}}\ndata: {{plan: {plan}}}\n"
            ),
        )
        .unwrap();
        sim.kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            marker.to_str().unwrap(),
        ]);
    };
    write_marker("someone-elses-plan");
    let refused = sim.down(&[]);
    assert_eq!(
        refused.code, 1,
        "down on another plan's cluster:\n{}",
        refused.stderr
    );
    let text = refused.all_output();
    assert!(
        text.contains(
            "was created by plan `someone-elses-plan`, not `bookinfo-sim`: refusing to touch it"
        ),
        "the refusal names both plans:\n{text}"
    );
    assert!(sim.cluster_exists(), "the cluster is still there");
    sim.kubectl_ok(&["get", "--raw", "/readyz"]);
    let up_refused = sim.up(&[]);
    assert_eq!(
        up_refused.code, 1,
        "up on another plan's cluster:\n{}",
        up_refused.stderr
    );
    let first_line = |r: &crate::harness::Run| {
        r.failures()
            .first()
            .map(|(id, c)| format!("{id}: {}", c.lines().next().unwrap_or_default()))
            .unwrap_or_default()
    };
    eprintln!("safety (owner): down refused: {}", first_line(&refused));
    eprintln!(
        "safety (owner): up refused too: {}",
        first_line(&up_refused)
    );

    write_marker(crate::harness::PLAN_NAME);
    let first = sim.down(&[]);
    assert_eq!(first.code, 0, "down of our own cluster:\n{}", first.stderr);
    assert!(!sim.cluster_exists(), "the cluster is gone");
    let strays = sim.strays_after(Duration::from_secs(5));
    assert!(strays.is_empty(), "processes outlive down: {strays:#?}");
    let second = sim.down(&[]);
    assert_eq!(second.code, 0, "second down:\n{}", second.stderr);
    assert!(second.stderr.contains("already gone"), "{}", second.stderr);
    eprintln!(
        "safety (owner): own marker restored: down {}; down again {}",
        first.brief(),
        second.brief()
    );
}
