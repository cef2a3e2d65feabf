//! Smoke tests of the tier-1 testbed itself: a kwok cluster from the built binaries runs a
//! Deployment to Available, leaves no process behind once deleted, and does NOT report a
//! Deployment that cannot be scheduled as Available (so the check can fail).

use std::time::Duration;

use crate::common::{KwokCluster, testbed};

fn deployment(name: &str, replicas: u32, node_selector: Option<(&str, &str)>) -> String {
    let selector = match node_selector {
        Some((k, v)) => format!("      nodeSelector:\n        {k}: \"{v}\"\n"),
        None => String::new(),
    };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: default
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
{selector}      containers:
      - name: app
        image: registry.invalid/smoke:1
"#
    )
}

#[test]
fn deployment_becomes_available_and_delete_leaves_no_process() {
    let Some(tb) = testbed() else { return };
    let cluster = KwokCluster::create(&tb, &format!("smoke-ok-{}", std::process::id()));
    cluster.scale_nodes(1);

    // kwokctl's nodes must not keep a NoSchedule taint, or nothing would ever schedule
    // (scale_nodes waits for the transient not-ready taint to go).
    let taints = cluster.kubectl_ok(&["get", "nodes", "-o", "jsonpath={.items[*].spec.taints}"]);
    assert_eq!(taints.trim(), "", "kwokctl's node has taints");

    cluster.apply(&deployment("web", 3, None));
    let out = cluster.kubectl(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    assert!(
        out.status.success(),
        "rollout status failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let available = cluster.kubectl_ok(&[
        "get",
        "deployment/web",
        "-o",
        "jsonpath={.status.availableReplicas}/{.status.readyReplicas}",
    ]);
    assert_eq!(available, "3/3");
    let ready = cluster.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        r#"jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
    ]);
    assert_eq!(
        ready.lines().collect::<Vec<_>>(),
        ["True", "True", "True"],
        "pods: {ready}"
    );

    // The process check sees the running cluster (etcd, kube-apiserver, kube-controller-manager,
    // kube-scheduler, kwok-controller), so its empty answer after delete means something.
    let running = cluster.processes();
    assert!(
        running.len() >= 5,
        "expected the cluster's 5 processes, found: {running:#?}"
    );

    cluster.delete();
    let left = cluster.wait_no_processes(Duration::from_secs(20));
    assert!(
        left.is_empty(),
        "processes left after kwokctl delete cluster: {left:#?}"
    );
    assert!(
        !cluster.cluster_dir().exists(),
        "kwokctl left {}",
        cluster.cluster_dir().display()
    );
}

#[test]
fn unschedulable_deployment_is_not_available() {
    let Some(tb) = testbed() else { return };
    let cluster = KwokCluster::create(&tb, &format!("smoke-stuck-{}", std::process::id()));
    cluster.scale_nodes(1);

    cluster.apply(&deployment(
        "stuck",
        2,
        Some(("bookinfo-up.test/no-such-node", "true")),
    ));
    let out = cluster.kubectl(&["rollout", "status", "deployment/stuck", "--timeout=8s"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("rollout status of an unschedulable Deployment (expected to fail):\n{text}");
    assert!(
        !out.status.success(),
        "rollout status succeeded for an unschedulable Deployment: {text}"
    );
    assert!(
        text.contains("timed out"),
        "unexpected rollout status failure: {text}"
    );

    let available = cluster.kubectl_ok(&[
        "get",
        "deployment/stuck",
        "-o",
        r#"jsonpath={.status.availableReplicas}|{.status.conditions[?(@.type=="Available")].status}"#,
    ]);
    assert_eq!(
        available, "|False",
        "Deployment should have no available replica"
    );
    let reasons = cluster.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=stuck",
        "-o",
        r#"jsonpath={range .items[*]}{.status.phase}/{.status.conditions[?(@.type=="PodScheduled")].reason}{"\n"}{end}"#,
    ]);
    assert_eq!(
        reasons.lines().collect::<Vec<_>>(),
        ["Pending/Unschedulable", "Pending/Unschedulable"],
        "pods: {reasons}"
    );
}
