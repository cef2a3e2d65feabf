//! Cancellation: SIGINT during a long `exec` step that starts children exits 130 within 2 s
//! and leaves no process of the run behind.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{Bin, Product, processes_mentioning};

#[test]
fn sigint_stops_the_run_and_its_children() {
    let dir = tempfile::tempdir().unwrap();
    // A kubeconfig that points nowhere: the plan's only step is an exec, which needs no API.
    std::fs::write(
        dir.path().join("kubeconfig"),
        crate::common::UNREACHABLE_KUBECONFIG,
    )
    .unwrap();
    // A duration unique to this test run marks the children so that the test can look for
    // them afterwards.
    let tag = format!("371.{}", std::process::id());
    let marker = dir.path().join("started");
    std::fs::write(
        dir.path().join("plan.toml"),
        format!(
            r#"[plan]
name = "cancel"
[cluster]
provider = "existing"
[cluster.existing]
kubeconfig = "kubeconfig"
[[step]]
id = "long"
timeout = "10m"
[step.exec]
command = ["sh", "-c", "sleep {tag} & sleep {tag} & touch {}; wait"]
"#,
            marker.display()
        ),
    )
    .unwrap();
    let mut child = Product::new(Bin::Up)
        .plan(dir.path().join("plan.toml"))
        .state(&dir.path().join("state"))
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = KillOnDrop(Some(child.id()));
    let start = Instant::now();
    while !marker.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the exec step never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The shell and its two sleeps.
    assert_eq!(
        processes_mentioning(&tag).len(),
        3,
        "the shell and both children run"
    );

    let sent = Instant::now();
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "bookinfo-up did not exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = sent.elapsed();
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    eprintln!("exit after SIGINT took {took:?}");
    assert_eq!(status.code(), Some(130), "stderr:\n{stderr}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(
        stderr.contains("cancelled"),
        "the summary says the run was cancelled:\n{stderr}"
    );
    guard.0 = None;
    let left = processes_mentioning(&tag);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

/// Kills the run if the test fails before it has ended, so a failure leaves nothing behind.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: signalling a child process this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}
