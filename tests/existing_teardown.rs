//! `up` then `down` of plans/sim.toml against a cluster the plan did not create (a kwok
//! cluster made by hand, reached with `--kubeconfig`): what existed before is still there
//! afterwards, nothing carrying the plan's label remains, and the plan's namespaces are gone.
//! That cluster runs no istiod, so `up` leaves out the checks that need one.

use crate::common::{Bin, KwokCluster, Product, testbed};

const BEFORE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: keep-me
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: precious
  namespace: default
data:
  a: b
"#;

fn bookinfo(cmd: &str, cluster: &KwokCluster, state: &std::path::Path, path_env: &str) -> String {
    let k = cluster.kubeconfig.to_str().unwrap();
    let mut run = Product::new(if cmd == "up" { Bin::Up } else { Bin::Down })
        .path(path_env)
        .plan("plans/sim.toml")
        .state(state)
        .text()
        .args(["--kubeconfig", k, "--log-format", "plain"]);
    if cmd == "up" {
        // The hand-made cluster runs no istiod (and has webhooks off): the two checks that
        // need a serving istiod are left out; on this cluster they fail, as they must.
        run = run.args(["--skip", "webhook-ready", "--skip", "bookinfo-pods"]);
    }
    run.expect(0).stderr
}

#[test]
fn down_on_an_existing_cluster_removes_only_what_the_plan_created() {
    let Some(tb) = testbed() else { return };
    let cluster = KwokCluster::create(&tb, "existing-teardown");
    cluster.scale_nodes(1);
    cluster.apply(BEFORE);
    let state = tempfile::tempdir().unwrap();
    let path_env = tb.path_env();

    bookinfo("up", &cluster, state.path(), &path_env);
    let labelled = cluster.kubectl_ok(&[
        "get",
        "deploy,svc,cm,sa,ns",
        "-A",
        "-l",
        "bookinfo-up.io/plan=bookinfo-sim",
        "-o",
        "name",
    ]);
    assert!(
        labelled.contains("namespace/bookinfo")
            && labelled.contains("deployment.apps/productpage-v1"),
        "{labelled}"
    );
    assert!(
        !state.path().join("clusters").exists(),
        "no cluster was created for an existing one"
    );

    let down = bookinfo("down", &cluster, state.path(), &path_env);
    assert!(down.contains("deleted namespace bookinfo"), "{down}");

    // What existed before is untouched.
    cluster.kubectl_ok(&["get", "namespace", "keep-me"]);
    assert_eq!(
        cluster.kubectl_ok(&[
            "get",
            "cm",
            "-n",
            "default",
            "precious",
            "-o",
            "jsonpath={.data.a}"
        ]),
        "b"
    );
    // Nothing of the plan remains, and its namespaces are gone.
    let left = cluster.kubectl_ok(&[
        "get",
        "all,cm,sa,secret,ns,crd",
        "-A",
        "-l",
        "bookinfo-up.io/plan",
        "-o",
        "name",
    ]);
    assert!(left.trim().is_empty(), "left behind: {left}");
    let namespaces = cluster.kubectl_ok(&["get", "ns", "-o", "name"]);
    assert!(
        !namespaces.contains("namespace/bookinfo")
            && !namespaces.contains("namespace/istio-system"),
        "{namespaces}"
    );
    // Istio's CRDs stay: the base chart marks them `helm.sh/resource-policy: keep`, so that
    // uninstalling never deletes every Istio resource of the cluster with them.
    let crds = cluster.kubectl_ok(&["get", "crd", "-o", "name"]);
    assert!(crds.contains("gateways.networking.istio.io"), "{crds}");

    // A second `down` finds nothing to do and succeeds.
    bookinfo("down", &cluster, state.path(), &path_env);
}
