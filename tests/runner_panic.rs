//! A panic in a step is that step's failure: with `--jobs 4` and other steps running, the step
//! that panicked is the one reported failed, with the panic's message, its dependent is
//! skipped, the others finish, and the run exits 1. The panic comes from a debug-only hook
//! (`BOOKINFO_UP_DEBUG_PANIC_IN_STEP`); the steps are `exec` steps, which need no API server.

use std::process::Command;

use serde_json::Value;

use crate::common::step_outcomes;

#[test]
fn a_panic_is_reported_as_its_own_steps_failure() {
    let dir = tempfile::tempdir().unwrap();
    // A kubeconfig that points nowhere: exec steps never call the API.
    std::fs::write(
        dir.path().join("kubeconfig"),
        crate::common::UNREACHABLE_KUBECONFIG,
    )
    .unwrap();
    // `first` and `slow` are running when `boom` panics; `after` needs `boom`.
    std::fs::write(
        dir.path().join("plan.toml"),
        r#"[plan]
name = "panic"
[cluster]
provider = "existing"
[cluster.existing]
kubeconfig = "kubeconfig"
[[step]]
id = "first"
[step.exec]
command = ["sleep", "0.6"]
[[step]]
id = "boom"
[step.exec]
command = ["true"]
[[step]]
id = "slow"
[step.exec]
command = ["sleep", "0.8"]
[[step]]
id = "after"
needs = ["boom"]
[step.exec]
command = ["true"]
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bookinfo-up"))
        .arg(dir.path().join("plan.toml"))
        .args(["--jobs", "4", "--output", "json", "--log-format", "plain"])
        .env("BOOKINFO_UP_STATE_DIR", dir.path().join("state"))
        .env("BOOKINFO_UP_DEBUG_PANIC_IN_STEP", "boom")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcomes = step_outcomes(&summary).unwrap();
    assert_eq!(
        outcomes,
        [
            ("first".to_string(), "changed".to_string()),
            ("boom".into(), "failed".into()),
            ("slow".into(), "changed".into()),
            ("after".into(), "skipped".into()),
        ],
        "{stderr}"
    );
    let boom = summary["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "boom")
        .unwrap();
    let cause = boom["cause"].as_str().unwrap_or_default();
    assert!(
        cause.contains("the step panicked")
            && cause.contains("BOOKINFO_UP_DEBUG_PANIC_IN_STEP names step `boom`"),
        "{boom}"
    );
}
