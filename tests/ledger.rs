//! The ledger on `up` (a sim cluster, the plan of `tests/prune.rs`): a no-op sends no request
//! per object, since the ApplySet's LIST per group-kind gives each member's uid and
//! resourceVersion and the ledger vouches for those it saw converged. Whatever the ledger
//! cannot vouch for goes through the dry run: an object written since (even where only its
//! resourceVersion changed and the plan's fields are the same, on a kind without a
//! generation), a label the plan sets changed on a Deployment (whose generation stays), a
//! ledger that is stale, a ledger that is corrupt. A Deployment that only rolled out since
//! (status written, same generation) is trusted. No drift is ever missed. The same holds for
//! a cluster reached as an existing one (`--kubeconfig`), whose ledger the state folder keeps
//! by the API server's URL.

use std::path::PathBuf;

use crate::common::{Ran, testbed};
use crate::prune::{Down, Env, V2, Version};

const LOG: &str = "warn,bookinfo_up=info,kube_client=debug";

/// The plan without the steps that need nothing pruned: the web app, its route, a namespace.
const PLAN: Version = Version {
    side: false,
    widgets: false,
    ..V2
};

/// The objects of the `app` and `routes` steps that a run sent a server-side dry run for.
fn dry_runs(r: &Ran) -> Vec<String> {
    let mut out: Vec<String> = r
        .stderr
        .lines()
        .filter(|l| l.ends_with(": requesting") && l.contains("dryRun=All"))
        .filter_map(|l| {
            let url = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("http.url="))?;
            let path = url.split('?').next()?;
            let mut parts = path.rsplit('/');
            let name = parts.next()?;
            let kind = parts.next()?;
            Some(format!("{kind}/{name}"))
        })
        .filter(|o| !o.starts_with("services/istio") && !o.starts_with("gateways/"))
        .collect();
    out.sort();
    out
}

fn ledger(env: &Env) -> PathBuf {
    env.state.path().join("clusters/prune-ledger/applied.json")
}

fn up(env: &Env) -> Ran {
    let r = env.up().env("BOOKINFO_UP_LOG", LOG).run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    r
}

#[test]
fn the_ledger_spares_requests_and_never_hides_a_drift() {
    let Some(tb) = testbed() else { return };
    let env = Env::new(&tb, "prune-ledger");
    let _down = Down(&env);
    env.write(PLAN);
    up(&env);
    // The first run recorded the objects as it created them; since then the Deployment rolled
    // out (its status written, its generation the same): the second run trusts them all.
    let quiet = up(&env);
    assert!(quiet.changed().is_empty(), "{:?}", quiet.changed());
    assert_eq!(
        dry_runs(&quiet),
        Vec::<String>::new(),
        "a no-op dry-runs nothing the ledger vouches for"
    );
    let fresh = std::fs::read(ledger(&env)).unwrap();

    // Only the resourceVersion changes: an annotation of someone else's, no field of ours.
    env.kubectl(&[
        "annotate",
        "-n",
        "shop",
        "configmap/web-config",
        "team=blue",
    ]);
    let annotated = up(&env);
    assert!(annotated.changed().is_empty(), "{:?}", annotated.changed());
    assert_eq!(
        dry_runs(&annotated),
        ["configmaps/web-config"],
        "written since: compared by a dry run"
    );
    assert_eq!(
        dry_runs(&up(&env)),
        Vec::<String>::new(),
        "then vouched again"
    );

    // A label the plan sets, changed on the Deployment (its generation stays the same): the
    // generation alone does not vouch for it; compared and repaired.
    env.kubectl(&[
        "label",
        "--overwrite",
        "-n",
        "shop",
        "deployment/web",
        "app=tampered",
    ]);
    let relabelled = up(&env);
    assert_eq!(
        relabelled.outcome("app"),
        "changed",
        "{}",
        relabelled.stdout
    );
    assert_eq!(dry_runs(&relabelled), ["deployments/web"]);
    assert_eq!(
        env.kubectl(&[
            "get",
            "-n",
            "shop",
            "deployment/web",
            "-o",
            "jsonpath={.metadata.labels.app}"
        ]),
        "web"
    );

    // A drift of a field the plan sets is repaired.
    env.kubectl(&[
        "patch",
        "-n",
        "shop",
        "configmap/web-config",
        "--type=merge",
        "-p",
        r#"{"data":{"greeting":"changed by hand"}}"#,
    ]);
    let repaired = up(&env);
    assert_eq!(repaired.outcome("app"), "changed", "{}", repaired.stdout);
    assert_eq!(
        env.kubectl(&[
            "get",
            "-n",
            "shop",
            "configmap/web-config",
            "-o",
            "jsonpath={.data.greeting}"
        ]),
        "hello"
    );

    // A stale ledger (from before the repair) vouches for nothing that was written since;
    // a drift made now is repaired just the same.
    std::fs::write(ledger(&env), &fresh).unwrap();
    env.kubectl(&["scale", "-n", "shop", "deployment/web", "--replicas=3"]);
    let stale = up(&env);
    assert_eq!(stale.outcome("app"), "changed", "{}", stale.stdout);
    let replicas = env.kubectl(&[
        "get",
        "-n",
        "shop",
        "deployment/web",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "1");
    assert!(
        dry_runs(&stale).contains(&"configmaps/web-config".to_string()),
        "the stale entry vouches for nothing: {:?}",
        dry_runs(&stale)
    );

    // A corrupt ledger is no ledger: every object is compared, nothing is missed.
    std::fs::write(ledger(&env), b"{ not json").unwrap();
    env.kubectl(&[
        "label",
        "--overwrite",
        "-n",
        "shop",
        "service/web",
        "app=tampered",
    ]);
    let corrupt = up(&env);
    assert_eq!(corrupt.outcome("app"), "changed", "{}", corrupt.stdout);
    assert_eq!(
        dry_runs(&corrupt),
        [
            "configmaps/web-config",
            "deployments/web",
            "services/web",
            "virtualservices/web"
        ],
        "no ledger: every object by a dry run"
    );
    up(&env);
    let after = up(&env);
    assert!(after.changed().is_empty(), "{:?}", after.changed());
    assert_eq!(dry_runs(&after), Vec::<String>::new());

    // The same cluster reached as an existing one (`--kubeconfig`): the engine keeps its
    // ledger in the state folder's `existing/`, by the API server's URL. The first run there
    // has none and compares every object; the next trusts what that one saw; a drift is
    // still repaired.
    let kubeconfig = env.kubeconfig();
    let existing = || {
        let r = env
            .up()
            .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
            .env("BOOKINFO_UP_LOG", LOG)
            .run();
        assert_eq!(r.code, 0, "{}", r.stderr);
        r
    };
    let first = existing();
    assert!(first.changed().is_empty(), "{:?}", first.changed());
    assert_eq!(dry_runs(&first).len(), 4, "{:?}", dry_runs(&first));
    let kept: Vec<PathBuf> = std::fs::read_dir(env.state.path().join("existing"))
        .expect("a folder for existing clusters' ledgers")
        .map(|e| e.unwrap().path().join("prune-ledger.applied.json"))
        .collect();
    assert!(
        kept.len() == 1 && kept[0].is_file(),
        "one ledger, by the server's URL: {kept:?}"
    );
    let second = existing();
    assert!(second.changed().is_empty(), "{:?}", second.changed());
    assert_eq!(dry_runs(&second), Vec::<String>::new());
    env.kubectl(&["scale", "-n", "shop", "deployment/web", "--replicas=2"]);
    let drifted = existing();
    assert_eq!(drifted.outcome("app"), "changed", "{}", drifted.stdout);
    assert_eq!(dry_runs(&drifted), ["deployments/web"]);
    assert!(existing().changed().is_empty());
}
