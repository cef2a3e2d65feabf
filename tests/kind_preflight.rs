//! The real plan (the built-in `bookinfo`, run from a folder with no clone around) on a
//! machine without a running container engine: preflight stops it with errors and their
//! fixes before anything is created, and reports what may cause trouble as warnings. The
//! real `kind` binary from the testbed is asked, so its own failure is what the user sees.
//! Host ports: free ones raise nothing, for root and for an unprivileged user alike; a taken
//! one is named with the process that holds it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{Bin, Product, testbed};

/// The built-in plan's host ports.
const PORTS: [u16; 2] = [30666, 32667];

fn docker_engine_runs() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `bookinfo-up ARGS` from `home` (its HOME and working folder), with `path` as PATH.
fn up(home: &Path, path: &str, args: &[&str]) -> Command {
    Product::new(Bin::Up)
        .cwd(home)
        .path(path)
        .text()
        .env("HOME", home)
        .env("NO_COLOR", "1")
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("BOOKINFO_UP_STATE_DIR")
        .args(args)
        .command()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn inotify_is_low() -> (bool, bool) {
    let read = |f: &str| -> u64 {
        std::fs::read_to_string(f)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(u64::MAX)
    };
    (
        read("/proc/sys/fs/inotify/max_user_watches") < 524_288,
        read("/proc/sys/fs/inotify/max_user_instances") < 512,
    )
}

/// Asserts what every run here shows: errors that stop the run, inotify as warnings, no
/// port problem, nothing created.
fn assert_stopped_in_preflight(out: &Output, state: &Path) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("preflight found") && stderr.contains("nothing was created"),
        "{stderr}"
    );
    let (watches, instances) = inotify_is_low();
    assert_eq!(
        stderr.contains("warning: fs.inotify.max_user_watches"),
        watches,
        "{stderr}"
    );
    assert_eq!(
        stderr.contains("warning: fs.inotify.max_user_instances"),
        instances,
        "{stderr}"
    );
    assert!(!stderr.contains("error: fs.inotify"), "{stderr}");
    assert!(!stderr.contains("host port"), "no port problem:\n{stderr}");
    assert!(
        !state.join("clusters/bookinfo/kind.yaml").exists(),
        "no cluster config was written"
    );
    stderr
}

#[test]
fn real_plan_stops_in_preflight_without_a_container_engine() {
    let Some(tb) = testbed() else { return };
    if docker_engine_runs() {
        eprintln!("skipped: a container engine is running here; preflight would pass");
        return;
    }
    let free = PORTS
        .iter()
        .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok());
    if !free {
        eprintln!("skipped: ports {PORTS:?} are not all free here");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let path = tb.path_env();

    // As this user, with a summary document and a JUnit report.
    let out = up(
        home.path(),
        &path,
        &[
            "--log-format",
            "plain",
            "--output",
            "json",
            "--junit",
            "junit.xml",
        ],
    )
    .output()
    .unwrap();
    let stderr = assert_stopped_in_preflight(&out, &home.path().join(".local/state/bookinfo-up"));
    assert!(
        stderr.contains("kind cannot reach a container runtime"),
        "kind's own failure is shown:\n{stderr}"
    );
    assert!(stderr.contains("fix: start Docker"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let whats = |field: &str| -> Vec<String> {
        summary[field]
            .as_array()
            .unwrap_or_else(|| panic!("`{field}` is an array: {summary}"))
            .iter()
            .map(|p| {
                assert!(p["fix"].as_str().is_some_and(|f| !f.is_empty()), "{p}");
                p["what"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let errors = whats("errors");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("kind cannot reach a container runtime")),
        "{errors:?}"
    );
    let warnings = whats("warnings");
    let (watches, instances) = inotify_is_low();
    assert_eq!(
        warnings.len(),
        usize::from(watches) + usize::from(instances),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().all(|w| w.starts_with("fs.inotify.")),
        "{warnings:?}"
    );
    assert!(summary["next_steps"].is_null(), "{summary}");
    let junit = std::fs::read_to_string(home.path().join("junit.xml")).unwrap();
    assert!(
        junit.contains("name=\"preflight\"") && junit.contains("<failure"),
        "{junit}"
    );

    // As an unprivileged user: the default host ports need no privilege.
    if let Some((out, home)) = as_nobody(&tb.bin.join("kind")) {
        let stderr =
            assert_stopped_in_preflight(&out, &home.path().join(".local/state/bookinfo-up"));
        assert!(
            stderr.contains("kind cannot reach a container runtime"),
            "{stderr}"
        );
    }

    // A port held by a listener is taken, and the holder is named: this test process.
    let held = std::net::TcpListener::bind(("127.0.0.1", PORTS[0])).unwrap();
    let out = up(home.path(), &path, &["--log-format", "plain"])
        .output()
        .unwrap();
    drop(held);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let holder = format!(
        "host port {} on 127.0.0.1 is taken by {} (pid {}, user ",
        PORTS[0],
        comm.trim(),
        std::process::id()
    );
    assert!(
        stderr.contains(&holder),
        "expected {holder:?} in:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("fix: stop it (`kill {}`)", std::process::id())),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&format!("host port {}", PORTS[1])),
        "{stderr}"
    );
}

/// Runs the built-in plan as user `nobody` (when this test runs as root and `runuser`
/// exists), with a HOME of its own and the testbed's `kind` copied where it may run it.
/// Returns the output and nobody's HOME.
fn as_nobody(kind: &Path) -> Option<(Output, tempfile::TempDir)> {
    // SAFETY: getuid(2) has no preconditions.
    if unsafe { libc::getuid() } != 0 || !Path::new("/usr/sbin/runuser").exists() {
        eprintln!("part skipped: needs root and runuser to switch to user nobody");
        return None;
    }
    let home = tempfile::Builder::new()
        .prefix("bookinfo-up-nobody-")
        .tempdir()
        .unwrap();
    let bin = home.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(kind, bin.join("kind")).unwrap();
    for p in [home.path(), &bin, &bin.join("kind")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: chown(2) on a path this test created; the string outlives the call.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
    }
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display());
    let out = Command::new("/usr/sbin/runuser")
        .args(["-u", "nobody", "--", "env"])
        .arg(format!("HOME={}", home.path().display()))
        .arg(format!("PATH={path}"))
        .args([
            "NO_COLOR=1",
            Product::new(Bin::Up).program(),
            "--log-format",
            "plain",
        ])
        .current_dir(home.path())
        .output()
        .unwrap();
    Some((out, home))
}

#[test]
fn completions_and_help_need_no_plan() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Product::new(Bin::Up)
            .sub("completions")
            .text()
            .args([shell])
            .expect(0);
        assert!(out.stdout.contains("bookinfo-up"), "{shell}");
    }
    let help = Product::new(Bin::Up).text().args(["--help"]).expect(0);
    let text = &help.stdout;
    assert!(
        text.contains("Examples:") && text.contains("--dry-run"),
        "{text}"
    );
    let version = Product::new(Bin::Up).text().args(["--version"]).expect(0);
    assert_eq!(
        version.stdout.trim(),
        format!("bookinfo-up {}", env!("CARGO_PKG_VERSION"))
    );
}
