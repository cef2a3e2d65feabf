//! plans/bookinfo.toml on a machine without a running container engine: preflight stops it
//! with what is missing and how to fix it, before anything is created. The real `kind`
//! binary from the testbed is asked, so its own failure is what the user sees.

use std::process::Command;

use crate::common::testbed;

#[test]
fn real_plan_stops_in_preflight_without_a_container_engine() {
    let Some(tb) = testbed() else { return };
    // Where a Docker engine answers, this test has nothing to show.
    let engine = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if engine {
        eprintln!("skipped: a container engine is running here; preflight would pass");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bookinfo-up"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["plans/bookinfo.toml", "--log-format", "plain", "--junit"])
        .arg(state.path().join("junit.xml"))
        .env("BOOKINFO_UP_STATE_DIR", state.path())
        .env("PATH", tb.path_env())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing was created"), "{stderr}");
    assert!(
        stderr.contains("kind cannot reach a container runtime"),
        "kind's own failure is shown:\n{stderr}"
    );
    assert!(stderr.contains("fix: start Docker"), "{stderr}");
    assert!(
        !state.path().join("clusters/bookinfo/kind.yaml").exists(),
        "no cluster config was written"
    );
    let junit = std::fs::read_to_string(state.path().join("junit.xml")).unwrap();
    assert!(
        junit.contains("name=\"preflight\"") && junit.contains("<failure"),
        "{junit}"
    );
}

#[test]
fn completions_and_help_need_no_plan() {
    let bin = env!("CARGO_BIN_EXE_bookinfo-up");
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("bookinfo-up"),
            "{shell}"
        );
    }
    let help = Command::new(bin).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("Examples:") && text.contains("--dry-run"),
        "{text}"
    );
    let version = Command::new(bin).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("bookinfo-up {}", env!("CARGO_PKG_VERSION"))
    );
}
