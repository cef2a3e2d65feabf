//! Malformed plans: every file in tests/plans/bad/ makes `bookinfo-up` exit with code 2
//! before it runs a tool or contacts a cluster, and its rendered diagnostics are
//! snapshot-tested (tests/snapshots/lib__bad_plans__*.snap).
//!
//! Each bad plan opens with a comment line saying what is wrong with it. The snapshots are
//! reviewed by hand: each must show `--> file:line:column`, the source line, a caret under
//! the offending text and a useful help. The binary runs with a cleared environment, no
//! tools on PATH and a kubeconfig pointing at a port where nothing listens.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{Bin, KwokCluster, Product, testbed};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The bad plans, sorted, as paths relative to the crate root (the binary's working
/// directory, so that diagnostics show `tests/plans/bad/...`).
fn bad_plans() -> Vec<PathBuf> {
    let dir = Path::new(ROOT).join("tests/plans/bad");
    let mut plans: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/plans/bad exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            p.strip_prefix(ROOT)
                .expect("below the crate root")
                .to_path_buf()
        })
        .collect();
    plans.sort();
    plans
}

/// The snapshot name of a plan: its file name without `.toml`.
fn name_of(plan: &Path) -> String {
    plan.file_stem().unwrap().to_string_lossy().into_owned()
}

/// What a bad plan says is wrong with it: its opening comment, without the `#`s.
fn what_is_wrong(plan: &Path) -> String {
    let text = std::fs::read_to_string(Path::new(ROOT).join(plan)).unwrap();
    let comment: Vec<&str> = text
        .lines()
        .map_while(|l| l.strip_prefix('#'))
        .map(str::trim)
        .collect();
    assert!(
        !comment.is_empty(),
        "{} must open with a comment saying what is wrong",
        plan.display()
    );
    comment.join(" ")
}

/// A folder standing in for everything the binary could touch outside the repository:
/// HOME, the state and cache folders, and a kubeconfig whose server nothing listens on.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bookinfo-up-bad-plans-")
            .tempdir()
            .unwrap();
        for d in ["home", "state", "cache"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(
            dir.path().join("kubeconfig"),
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: unreachable\n  cluster:\n    server: https://127.0.0.1:9\n\
             users:\n\
             - name: nobody\n  user:\n    token: not-a-token\n\
             contexts:\n\
             - name: unreachable\n  context:\n    cluster: unreachable\n    user: nobody\n\
             current-context: unreachable\n",
        )
        .unwrap();
        Self { dir }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// The binary with a cleared environment: PATH empty (no tool can run), HOME, state
    /// and cache in the sandbox, KUBECONFIG unreachable.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Product::new(Bin::Up).text().args(args).command();
        c.env_clear()
            .env("PATH", "")
            .env("HOME", self.dir.path().join("home"))
            .env("BOOKINFO_UP_STATE_DIR", self.dir.path().join("state"))
            .env("BOOKINFO_UP_CACHE_DIR", self.dir.path().join("cache"))
            .env("KUBECONFIG", self.kubeconfig())
            .env("NO_COLOR", "1");
        c
    }

    /// Files written under the sandbox's HOME, state and cache folders.
    fn written(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in ["home", "state", "cache"] {
            walk(&self.dir.path().join(d), &mut out);
        }
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        }
        out.push(p);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts exit code 2 and an empty stdout; returns stderr.
fn expect_usage_error(plan: &Path, out: &Output) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}: expected exit code 2\nstdout:\n{}\nstderr:\n{stderr}",
        plan.display(),
        text(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "{}: expected nothing on stdout, got:\n{}",
        plan.display(),
        text(&out.stdout)
    );
    stderr
}

#[test]
fn bad_plans_are_rejected_with_located_diagnostics() {
    let sandbox = Sandbox::new();
    let plans = bad_plans();
    assert!(
        plans.len() >= 34,
        "expected at least 34 bad plans, found {}",
        plans.len()
    );
    let mut failed = Vec::new();
    for plan in &plans {
        let name = name_of(plan);
        let out = sandbox
            .command(&["--dry-run", &plan.to_string_lossy()])
            .output()
            .expect("bookinfo-up runs");
        let stderr = expect_usage_error(plan, &out);
        assert!(
            stderr.contains(" --> ") && stderr.contains('^'),
            "{}: every diagnostic points into a file with a caret:\n{stderr}",
            plan.display()
        );
        assert!(
            stderr.contains("= help: "),
            "{}: expected a help line:\n{stderr}",
            plan.display()
        );
        assert!(
            stderr.ends_with("nothing was changed\n"),
            "{}: expected the closing summary line:\n{stderr}",
            plan.display()
        );
        let mut settings = insta::Settings::clone_current();
        settings.set_description(what_is_wrong(plan));
        settings.set_omit_expression(true);
        // Run every plan even when one snapshot differs, then name all that did.
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            settings.bind(|| insta::assert_snapshot!(name.as_str(), stderr));
        }));
        if checked.is_err() {
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "snapshots differ for: {}",
        failed.join(", ")
    );
    assert!(
        sandbox.written().is_empty(),
        "analysis wrote files: {:?}",
        sandbox.written()
    );
}

/// Several bad plans reported together: every problem of the plan, and a count that agrees.
#[test]
fn several_problems_are_reported_together() {
    let sandbox = Sandbox::new();
    for (plan, n) in [
        ("tests/plans/bad/56-several-problems.toml", 5),
        ("tests/plans/bad/57-several-problems-in-files.toml", 4),
    ] {
        let out = sandbox
            .command(&["--dry-run", plan])
            .output()
            .expect("bookinfo-up runs");
        let stderr = expect_usage_error(Path::new(plan), &out);
        let located = stderr.matches(" --> ").count();
        assert_eq!(located, n, "{plan}: expected {n} diagnostics:\n{stderr}");
        assert!(
            stderr.contains(&format!(
                "error: the plan has {n} problems; nothing was changed"
            )),
            "{plan}: {stderr}"
        );
    }
}

/// Without `--dry-run` a bad plan fails the same way, before any tool runs (PATH is empty)
/// or the API server is contacted (the kubeconfig points at a closed port): the output is
/// exactly the dry run's, with no preflight or cluster message, and nothing is written.
#[test]
fn bad_plans_fail_before_any_tool_or_api_call() {
    let sandbox = Sandbox::new();
    let kubeconfig = sandbox.kubeconfig();
    for name in [
        "15-unknown-needs",
        "21-unknown-provider",
        "27-manifest-broken-yaml",
        "49-port-out-of-range",
        "56-several-problems",
    ] {
        let plan = PathBuf::from(format!("tests/plans/bad/{name}.toml"));
        let plan_arg = plan.to_string_lossy().into_owned();
        let dry = sandbox
            .command(&["--dry-run", &plan_arg])
            .output()
            .expect("bookinfo-up runs");
        let expected = expect_usage_error(&plan, &dry);
        for args in [
            vec![plan_arg.as_str()],
            vec!["--kubeconfig", kubeconfig.to_str().unwrap(), &plan_arg],
        ] {
            let out = sandbox.command(&args).output().expect("bookinfo-up runs");
            let stderr = expect_usage_error(&plan, &out);
            assert_eq!(stderr, expected, "{name} with {args:?}");
        }
    }
    assert!(
        sandbox.written().is_empty(),
        "a bad plan wrote files: {:?}",
        sandbox.written()
    );
}

/// A fake testbed layout: what plans/sim.toml checks at analysis (the binaries folder exists,
/// each local chart has a Chart.yaml, the istiod binary is a file), with nothing in it that
/// could run.
fn fake_testbed(sandbox: &Sandbox) -> (PathBuf, PathBuf) {
    let bin = sandbox.dir.path().join("testbed/bin");
    let istio = sandbox.dir.path().join("testbed/istio");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("pilot-discovery"), "").unwrap();
    for chart in ["base", "istiod", "gateway"] {
        let dir = istio.join("charts").join(chart);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Chart.yaml"),
            format!("apiVersion: v2\nname: {chart}\nversion: 0.0.0\n"),
        )
        .unwrap();
    }
    (bin, istio)
}

/// Step ids of a plan, as `id = "..."` lines of the plan and of the files it includes.
fn step_ids(plan: &str) -> Vec<String> {
    let path = Path::new(ROOT).join(plan);
    let mut files = vec![path.clone()];
    let text = std::fs::read_to_string(&path).unwrap();
    for line in text.lines() {
        if let Some(list) = line.strip_prefix("include = [") {
            for inc in list.trim_end_matches(']').split(',') {
                let inc = inc.trim().trim_matches('"');
                if !inc.is_empty() {
                    files.push(path.parent().unwrap().join(inc));
                }
            }
        }
    }
    let mut ids = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut in_step = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_step = line == "[[step]]";
            } else if in_step && let Some(id) = line.strip_prefix("id = ") {
                ids.push(id.trim_matches('"').to_string());
                in_step = false;
            }
        }
    }
    ids
}

/// The real plans pass analysis with no tool on PATH and no cluster reachable, and the dry
/// run names every step.
#[test]
fn real_plans_pass_a_dry_run() {
    let sandbox = Sandbox::new();
    let (bin, istio) = fake_testbed(&sandbox);
    for plan in ["plans/sim.toml", "plans/bookinfo.toml"] {
        let out = sandbox
            .command(&["--dry-run", plan])
            .env("BOOKINFO_UP_TESTBED_BIN", &bin)
            .env("BOOKINFO_UP_ISTIO_DIR", &istio)
            .output()
            .expect("bookinfo-up runs");
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{plan}: expected exit code 0\nstdout:\n{stdout}\nstderr:\n{}",
            text(&out.stderr)
        );
        let ids = step_ids(plan);
        assert!(ids.len() >= 14, "{plan}: found only {ids:?}");
        for id in ids {
            assert!(
                stdout.contains(&id),
                "{plan}: the dry run does not name step `{id}`:\n{stdout}"
            );
        }
    }
    assert!(
        sandbox.written().is_empty(),
        "a dry run wrote files: {:?}",
        sandbox.written()
    );
}

/// `--only` with a step the plan does not have is a usage error, with a suggestion.
#[test]
fn only_with_an_unknown_step_is_a_usage_error() {
    let sandbox = Sandbox::new();
    let (bin, istio) = fake_testbed(&sandbox);
    for (args, expected) in [
        (
            vec!["--dry-run", "--only", "istiod2", "plans/sim.toml"],
            "error: --only names unknown step `istiod2`; did you mean `istiod`?",
        ),
        (
            vec!["--only", "istiod2", "plans/sim.toml"],
            "error: --only names unknown step `istiod2`; did you mean `istiod`?",
        ),
        (
            vec!["--dry-run", "--skip", "zzz", "plans/sim.toml"],
            "error: --skip names unknown step `zzz`; steps are: istio-base,",
        ),
    ] {
        let out = sandbox
            .command(&args)
            .env("BOOKINFO_UP_TESTBED_BIN", &bin)
            .env("BOOKINFO_UP_ISTIO_DIR", &istio)
            .output()
            .expect("bookinfo-up runs");
        let stderr = expect_usage_error(Path::new("plans/sim.toml"), &out);
        assert!(
            stderr.starts_with(expected),
            "{args:?}: expected `{expected}`, got:\n{stderr}"
        );
    }
}

/// The objects of a cluster as sorted `kind namespace/name resourceVersion` lines.
fn cluster_state(cluster: &KwokCluster) -> Vec<String> {
    let json = cluster.kubectl_ok(&["get", "all,cm,secrets,ns,crd", "-A", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&json).expect("kubectl prints JSON");
    let mut state: Vec<String> = list["items"]
        .as_array()
        .expect("a List")
        .iter()
        .map(|o| {
            let m = &o["metadata"];
            format!(
                "{} {}/{} {}",
                o["kind"].as_str().unwrap_or_default(),
                m["namespace"].as_str().unwrap_or_default(),
                m["name"].as_str().unwrap_or_default(),
                m["resourceVersion"].as_str().unwrap_or_default()
            )
        })
        .collect();
    state.sort();
    state
}

/// Every bad plan, run for real against a live cluster, exits 2 and leaves the cluster as it
/// was: no object created, changed or deleted.
#[test]
fn bad_plans_leave_a_live_cluster_untouched() {
    let Some(tb) = testbed() else { return };
    let cluster = KwokCluster::create(&tb, "bookinfo-up-bad-plans");
    // A new cluster's controllers still create objects for a while (the root CA ConfigMap
    // of each namespace, late when the machine is busy): wait until every namespace has
    // its root CA ConfigMap and two looks a second apart agree.
    let settled = |state: &[String]| {
        ["default", "kube-node-lease", "kube-public", "kube-system"]
            .iter()
            .all(|ns| {
                state
                    .iter()
                    .any(|l| l.starts_with(&format!("ConfigMap {ns}/kube-root-ca.crt ")))
            })
    };
    let mut before = cluster_state(&cluster);
    for _ in 0..120 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let now = cluster_state(&cluster);
        if now == before && settled(&now) {
            break;
        }
        before = now;
    }
    assert!(settled(&before), "the cluster did not settle: {before:?}");
    assert!(
        before.iter().any(|l| l.starts_with("Namespace /default ")),
        "the state lists the cluster's objects: {before:?}"
    );
    let sandbox = Sandbox::new();
    let kubeconfig = cluster.kubeconfig.to_string_lossy().into_owned();
    for plan in bad_plans() {
        let out = sandbox
            .command(&["--kubeconfig", &kubeconfig, &plan.to_string_lossy()])
            .env("PATH", tb.path_env())
            .output()
            .expect("bookinfo-up runs");
        expect_usage_error(&plan, &out);
    }
    let after = cluster_state(&cluster);
    assert_eq!(before, after, "a bad plan changed the cluster");
}
