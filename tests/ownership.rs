//! Cluster ownership on the sim (plans/sim.toml, its cluster phase and one step): two runs
//! started together both succeed, one waiting for the other under the cluster's lock; and a
//! cluster is deleted, or taken over, only when it is proven the plan's: by its owner marker,
//! or by the creation record of a run that stopped before marking it. A cluster without
//! either, or whose API server does not answer, is refused unless `--adopt` (up) or `--force`
//! (down) says otherwise.

use std::path::Path;

use crate::common::{Bin, Product, Ran, kubectl_at, testbed};

const CLUSTER: &str = "bookinfo-sim";
const ONE_STEP: [&str; 2] = ["--only", "bookinfo-namespace"];

fn sim(tb: &crate::common::Testbed, state: &Path) -> Product {
    Product::up(tb).plan("plans/sim.toml").state(state)
}

/// Takes the test's cluster down when dropped, whatever the test left it as (a failed test
/// too): `--force`, since the test may have left it unmarked or stopped.
struct ForceDown(Product);

impl Drop for ForceDown {
    fn drop(&mut self) {
        let _ = self.0.then(Bin::Down).args(["--force"]).run();
    }
}

fn cluster_exists(state: &Path) -> bool {
    state
        .join("clusters")
        .join(CLUSTER)
        .join("kwok/clusters")
        .join(CLUSTER)
        .join("kwok.yaml")
        .is_file()
}

#[test]
fn two_runs_started_together_both_succeed() {
    let Some(tb) = testbed() else { return };
    for round in 1..=3 {
        let state = tempfile::Builder::new()
            .prefix("bookinfo-up-together-")
            .tempdir()
            .unwrap();
        let up = sim(&tb, state.path()).args(ONE_STEP);
        let _cleanup = ForceDown(up.clone());
        let (a, b) = (up.spawn(), up.spawn());
        let runs: Vec<Ran> = [a, b]
            .into_iter()
            .map(|c| Ran::from(c.wait_with_output().unwrap()))
            .collect();
        for (i, r) in runs.iter().enumerate() {
            assert_eq!(r.code, 0, "round {round}, run {i} failed:\n{}", r.stderr);
        }
        let waited: Vec<&Ran> = runs
            .iter()
            .filter(|r| {
                r.stderr.contains(&format!(
                    "waiting for another run on cluster `{CLUSTER}` to finish (`up` of plan `{CLUSTER}`, pid"
                ))
            })
            .collect();
        assert_eq!(
            waited.len(),
            1,
            "round {round}: exactly one run waits, and says so:\n{}\n---\n{}",
            runs[0].stderr,
            runs[1].stderr
        );
        // The one that waited finds the cluster made and the step done.
        assert_eq!(waited[0].outcome("bookinfo-namespace"), "unchanged");
        let other = runs.iter().find(|r| !std::ptr::eq(*r, waited[0])).unwrap();
        assert_eq!(other.outcome("bookinfo-namespace"), "changed");
        eprintln!(
            "round {round}: both exit 0; one waited ({} s), the other created the cluster",
            waited[0].summary["elapsed"]
        );
        up.then(Bin::Down).expect(0);
        assert!(!cluster_exists(state.path()));
    }
}

#[test]
fn a_cluster_is_deleted_or_taken_over_only_when_proven_ours() {
    let Some(tb) = testbed() else { return };
    let state = tempfile::Builder::new()
        .prefix("bookinfo-up-owner-")
        .tempdir()
        .unwrap();
    let up = sim(&tb, state.path()).args(ONE_STEP);
    let down = up.then(Bin::Down);
    let _cleanup = ForceDown(up.clone());
    up.expect(0);
    let dir = state.path().join("clusters").join(CLUSTER);
    let kubeconfig = dir.join("kubeconfig");
    let path_env = tb.path_env();
    let kubectl = |args: &[&str]| kubectl_at(&kubeconfig, &path_env, args);
    let marker = || {
        kubectl(&[
            "get",
            "cm",
            "-n",
            "kube-system",
            "bookinfo-up-owner",
            "-o",
            "jsonpath={.data.plan}",
            "--ignore-not-found",
        ])
    };
    assert_eq!(marker(), CLUSTER);
    assert!(
        !dir.join("creating").exists(),
        "the creation record goes once the marker is written"
    );

    // Unmarked: as a cluster made by hand with the plan's name.
    kubectl(&["delete", "cm", "-n", "kube-system", "bookinfo-up-owner"]);
    let refused = down.expect(1);
    let cause = refused.cause("cluster");
    eprintln!("down on an unmarked cluster:\n{cause}");
    assert!(
        cause.contains("kwok cluster `bookinfo-sim` carries no owner marker")
            && cause.contains("nothing was deleted")
            && cause.contains("`bookinfo-down plans/sim.toml --force` deletes it anyway"),
        "{cause}"
    );
    let kept = down.clone().args(["--keep-cluster"]).expect(1);
    assert!(kept.cause("cluster").contains("carries no owner marker"));
    assert!(cluster_exists(state.path()));
    kubectl(&["get", "namespace", "bookinfo"]);
    let diff = sim(&tb, state.path()).sub("diff").text().expect(3);
    assert!(
        diff.stderr.contains("--adopt"),
        "diff refuses it as up would"
    );
    let refused = up.expect(1);
    let cause = refused.cause("cluster");
    assert!(
        cause.contains("`bookinfo-up` did not make it")
            && cause.contains("`bookinfo-up plans/sim.toml --adopt` marks it"),
        "{cause}"
    );
    assert_eq!(marker(), "", "a refused up writes no marker");
    up.clone().args(["--adopt"]).expect(0);
    assert_eq!(marker(), CLUSTER, "--adopt marks it");

    // A run that created the cluster and stopped before marking it left its record: ours.
    kubectl(&["delete", "cm", "-n", "kube-system", "bookinfo-up-owner"]);
    std::fs::write(dir.join("creating"), CLUSTER).unwrap();
    up.expect(0);
    assert_eq!(marker(), CLUSTER);
    assert!(!dir.join("creating").exists());

    // No answer: nothing can be read, so nothing is deleted without --force.
    let pid: i32 = std::fs::read_to_string(
        dir.join("kwok/clusters")
            .join(CLUSTER)
            .join("pids/kube-apiserver.pid"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    // SAFETY: the test's own cluster's API server, by the pid kwokctl recorded.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let refused = down.expect(1);
    let cause = refused.cause("cluster");
    eprintln!("down on a cluster that does not answer:\n{cause}");
    assert!(
        cause.contains("does not answer, so its owner marker cannot be read: nothing was deleted")
            && cause.contains("`bookinfo-down plans/sim.toml --force` deletes it without reading"),
        "{cause}"
    );
    assert!(cluster_exists(state.path()));
    let forced = down.clone().args(["--force"]).expect(0);
    assert_eq!(forced.outcome("cluster"), "changed");
    assert!(!cluster_exists(state.path()));
    down.expect(0);
}
