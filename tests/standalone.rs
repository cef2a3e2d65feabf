//! The binary on its own, run from a folder with no clone around: the built-in plans,
//! `init`, `down` without a PLAN, and the `--output json` document with its next steps.
//! Checks and the API client never go through a proxy from the environment.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{Bin, Product, testbed};

const BIN: Bin = Bin::Up;
const DOWN: Bin = Bin::Down;

/// Proxy variables a user may have set, all pointing where nothing listens.
const DEAD_PROXY: &str = "http://127.0.0.1:9";
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// `bookinfo-up`/`bookinfo-down ARGS` as a user types it: `home` as HOME and working folder,
/// and nothing else of the caller's that bookinfo-up reads.
fn run_in(home: &Path, bin: Bin, args: &[&str]) -> Command {
    let mut run = Product::new(bin)
        .cwd(home)
        .text()
        .env("HOME", home)
        .env("NO_COLOR", "1")
        .args(args);
    for name in [
        "XDG_DATA_HOME",
        "XDG_STATE_HOME",
        "BOOKINFO_UP_STATE_DIR",
        "BOOKINFO_UP_CACHE_DIR",
        "KUBECONFIG",
    ] {
        run = run.env_remove(name);
    }
    run.command()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn the_builtin_real_plan_runs_from_any_folder() {
    let home = tempfile::tempdir().unwrap();
    let out = run_in(home.path(), BIN, &["--dry-run"]).output().unwrap();
    let stdout = ok(&out);
    let data = home.path().join(".local/share/bookinfo-up/plans");
    let written = format!(
        "built-in plan `bookinfo`, written to {}/{}-",
        data.display(),
        env!("CARGO_PKG_VERSION")
    );
    assert!(stdout.starts_with(&written), "{stdout}");
    for needle in [
        "plan bookinfo: kind + Istio",
        "ports 30666→30666, 32667→32667",
        "ingress-ports (patch)",
        "after a successful up",
        "Bookinfo    http://127.0.0.1:30666/productpage",
        "Kiali       http://127.0.0.1:32667/kiali",
        "kubectl -n istio-system port-forward svc/grafana 3000:3000",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?}:\n{stdout}");
    }
    // Messages point at the written files, which hold what the binary carries.
    let folder = std::fs::read_dir(&data)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let plan = std::fs::read_to_string(folder.join("plans/bookinfo.toml")).unwrap();
    assert_eq!(
        plan,
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/bookinfo.toml"))
            .unwrap()
    );
    assert!(folder.join("manifests/istio/ingress-ports.yaml").is_file());
    assert!(folder.join("testbed/versions.env").is_file());
}

#[test]
fn the_builtin_sim_plan_runs_by_name() {
    let Some(tb) = testbed() else { return };
    let home = tempfile::tempdir().unwrap();
    let out = run_in(home.path(), BIN, &["--dry-run", "sim"])
        .env("BOOKINFO_UP_TESTBED_BIN", &tb.bin)
        .env("BOOKINFO_UP_ISTIO_DIR", &tb.istio)
        .output()
        .unwrap();
    let stdout = ok(&out);
    assert!(stdout.starts_with("built-in plan `sim`"), "{stdout}");
    assert!(stdout.contains("plan bookinfo-sim:"), "{stdout}");
}

#[test]
fn an_unknown_plan_name_is_refused_with_the_names_there_are() {
    let home = tempfile::tempdir().unwrap();
    let out = run_in(home.path(), BIN, &["simm"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: `simm` is neither a plan file nor a built-in plan\n  = help: did you mean `sim`? built-in plans: bookinfo, sim; a plan file is a path (`./simm`) or ends in `.toml`\n"
    );
    // A path is a file, however it is named.
    let out = run_in(home.path(), BIN, &["./sim"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read plan"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn init_writes_plans_that_run_and_refuses_to_overwrite() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("x");
    let out = run_in(home.path(), BIN, &["init", "x"]).output().unwrap();
    ok(&out);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bookinfo-up x/plans/bookinfo.toml"),
        "{stderr}"
    );
    for file in [
        "plans/bookinfo.toml",
        "plans/sim.toml",
        "plans/shared/bookinfo-flow.toml",
    ] {
        assert!(dir.join(file).is_file(), "{file}");
    }
    let plan = dir.join("plans/bookinfo.toml");
    let out = run_in(home.path(), BIN, &["--dry-run", plan.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = ok(&out);
    assert!(stdout.starts_with("plan bookinfo:"), "{stdout}");

    let again = run_in(home.path(), BIN, &["init", "x"]).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    let stderr = text(&again.stderr);
    assert!(
        stderr.starts_with("error: `manifests/bookinfo/details.yaml`,")
            && stderr.contains("more files already exist in `x`; nothing was written")
            && stderr.contains("pass `--force` to overwrite them"),
        "{stderr}"
    );
    std::fs::write(&plan, "edited").unwrap();
    ok(&run_in(home.path(), BIN, &["init", "--force", "x"])
        .output()
        .unwrap());
    assert_ne!(std::fs::read_to_string(&plan).unwrap(), "edited");
}

#[test]
fn down_without_a_plan_and_nothing_made_does_nothing() {
    let home = tempfile::tempdir().unwrap();
    let out = run_in(home.path(), DOWN, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).starts_with("nothing to take down: no cluster made by `bookinfo-up`"),
        "{}",
        text(&out.stderr)
    );
}

/// Serves `body` with status 200 to every request; returns the URL and the server thread.
fn serve(body: &'static str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut sock in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf);
            let _ = write!(
                sock,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn json_carries_next_steps_and_checks_ignore_proxies() {
    let home = tempfile::tempdir().unwrap();
    let url = serve("<title>Simple Bookstore App</title> The Comedy of Errors");
    // An existing cluster's kubeconfig; the plan's steps need no API call, but the client is
    // built, and kube-rs would take HTTPS_PROXY from the environment.
    std::fs::write(
        home.path().join("kubeconfig"),
        crate::common::UNREACHABLE_KUBECONFIG,
    )
    .unwrap();
    std::fs::write(
        home.path().join("plan.toml"),
        format!(
            r#"[plan]
name = "standalone"

[[plan.next]]
title = "Bookinfo"
url = "{url}/productpage"

[[plan.next]]
title = "Grafana"
command = "kubectl -n istio-system port-forward svc/grafana 3000:3000"
url = "http://127.0.0.1:3000"

[cluster]
provider = "existing"
[cluster.existing]
kubeconfig = "kubeconfig"

[[step]]
id = "productpage"
[step.http]
url = "{url}/productpage"
body_contains = "The Comedy of Errors"
deadline = "5s"

[[step]]
id = "traffic"
needs = ["productpage"]
[step.traffic]
url = "{url}/productpage"
requests = 5
over = "500ms"
"#
        ),
    )
    .unwrap();
    let mut cmd = run_in(
        home.path(),
        BIN,
        &["plan.toml", "--output", "json", "--log-format", "plain"],
    );
    for var in PROXY_VARS {
        cmd.env(var, DEAD_PROXY);
    }
    let out = cmd
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    let stdout = ok(&out);
    let stderr = text(&out.stderr);
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let outcomes = crate::common::step_outcomes(&summary).unwrap();
    assert_eq!(
        outcomes,
        [
            ("productpage".to_string(), "unchanged".to_string()),
            ("traffic".to_string(), "unchanged".to_string())
        ],
        "{summary}"
    );
    assert_eq!(summary["warnings"], serde_json::json!([]));
    assert_eq!(summary["errors"], serde_json::json!([]));
    let kubeconfig = home.path().join("kubeconfig");
    assert_eq!(
        summary["next_steps"],
        serde_json::json!({
            "kubeconfig": kubeconfig.display().to_string(),
            "context": null,
            "kubectl": format!("export KUBECONFIG={}", kubeconfig.display()),
            "items": [
                { "title": "Bookinfo", "command": null, "url": format!("{url}/productpage") },
                {
                    "title": "Grafana",
                    "command": "kubectl -n istio-system port-forward svc/grafana 3000:3000",
                    "url": "http://127.0.0.1:3000"
                }
            ]
        })
    );
    // Under `--output json` the next steps are in the document, not on the terminal.
    assert!(!stderr.contains("what next"), "{stderr}");

    // Without it they close the terminal output.
    let out = run_in(home.path(), BIN, &["plan.toml", "--log-format", "plain"])
        .output()
        .unwrap();
    ok(&out);
    let stderr = text(&out.stderr);
    let block = stderr
        .split_once("\nwhat next\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(
        block.starts_with(&format!(
            "  kubectl   export KUBECONFIG={}\n",
            kubeconfig.display()
        )),
        "{stderr}"
    );
    assert!(
        block.contains(&format!("  Bookinfo  {url}/productpage\n")),
        "{stderr}"
    );
}

/// `--only` and `--skip` fetch only what the chosen steps need: a step left out of a run needs
/// no remote manifest, so one out of reach (a closed port on 127.0.0.1) stops only the runs
/// that include its step. The steps are exec steps and the cluster `existing` and unreachable:
/// nothing here needs an API server.
#[test]
fn only_the_chosen_steps_fetch_their_manifests() {
    let home = tempfile::tempdir().unwrap();
    let url = format!(
        "http://127.0.0.1:{}/extra.yaml",
        crate::common::closed_port()
    );
    std::fs::write(
        home.path().join("kubeconfig"),
        crate::common::UNREACHABLE_KUBECONFIG,
    )
    .unwrap();
    std::fs::write(
        home.path().join("plan.toml"),
        format!(
            r#"[plan]
name = "remote"
[cluster]
provider = "existing"
[cluster.existing]
kubeconfig = "kubeconfig"
[[step]]
id = "remote"
[step.apply]
urls = [{{ url = "{url}", sha256 = "{zeros}" }}]
[[step]]
id = "local"
[step.exec]
command = ["true"]
"#,
            zeros = "0".repeat(64)
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["plan.toml", "--log-format", "plain"];
        all.extend(args);
        run_in(home.path(), BIN, &all).output().unwrap()
    };
    for args in [["--only", "local"], ["--skip", "remote"]] {
        let out = run(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    let out = run(&[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&url), "the whole plan fetches the URL: {err}");
}
