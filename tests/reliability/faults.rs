//! Issue #6, item 1. Fault injection: the kube-apiserver is SIGKILLed at five points of a cold
//! `bookinfo-up plans/sim.toml` (during an apply, a wait, a patch, a helm step and a check) and
//! started again `BOOKINFO_UP_FAULT_DOWN_SECS` (default 3) seconds later. The run either
//! completes through retries or fails with a message naming the step and the cause; no process
//! of the run outlives it; a re-run converges to the reference dump with 5 ingress ports.
//!
//! Each point is found in the run's `-v` log: a step's own progress line where it has one
//! ("applied 5/23 objects", "waiting for 1/3 CRDs", "installing istio-ingressgateway"), so the
//! kill lands in the middle of the step's work. The patch (`ingress-ports`) and the check
//! (`webhook-ready`) take milliseconds, less than it takes to see their `started` line and
//! kill: for them the API server is first frozen (SIGSTOP) when the steps they need have
//! finished, so that their first request hangs, and killed when their `started` line shows.
//!
//! One outcome needs time rather than the engine: an API server killed between allocating a
//! Service's node port and storing the Service leaks the port (the allocation is written to
//! etcd first), and only its repair loop frees a leaked port, on its third pass, 3 minutes
//! apart. The plan pins node ports 30666 and 32667, so a re-run then fails with "provided port
//! is already allocated" until the repair; the test checks that no Service holds the port,
//! re-runs every 20 s for up to `BOOKINFO_UP_LEAK_WAIT_SECS` (default 480) and reports it.

use std::time::{Duration, Instant};

use crate::control_plane::ControlPlane;
use crate::harness::{STEPS, Sim, live_slot, testbed};
use crate::{assert_converged, reference};

struct Point {
    what: &'static str,
    step: &'static str,
    /// Freeze the API server once, for each group, a line has held all of it.
    freeze_after: &'static [&'static [&'static str]],
    /// Every one of these is in the line the kill follows.
    trigger: &'static [&'static str],
}

fn down_secs() -> f64 {
    std::env::var("BOOKINFO_UP_FAULT_DOWN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0)
}

fn fault(p: &Point) {
    let Some(tb) = testbed() else { return };
    let _slot = live_slot();
    let reference = reference(&tb);
    let sim = Sim::new(&tb, &format!("fault-{}", p.step));
    sim.prepare();
    let mut cp = ControlPlane::snapshot(&sim);

    let mut run = sim.spawn_up(&["-v"]);
    if !p.freeze_after.is_empty() {
        if let Err(why) = run.wait_all(p.freeze_after, Duration::from_secs(300)) {
            let r = run.finish(Duration::from_secs(600));
            panic!("{}: {why}; stderr:\n{}", p.what, r.stderr);
        }
        cp.freeze_apiserver();
    }
    let frozen = !p.freeze_after.is_empty();
    let line = match run.wait_line(
        |l| p.trigger.iter().all(|t| l.contains(t)),
        Duration::from_secs(if frozen { 30 } else { 300 }),
    ) {
        Ok(l) => l,
        // Frozen, the run may wait on the API server before it gets there: kill anyway.
        Err(why) if frozen => format!("({why})"),
        Err(why) => {
            let r = run.finish(Duration::from_secs(600));
            panic!("{}: {why}; stderr:\n{}", p.what, r.stderr);
        }
    };
    let at = run.started.elapsed().as_secs_f64();
    let outage = cp.kill_apiserver();
    std::thread::sleep(Duration::from_secs_f64(down_secs()));
    let restored = cp.restore(&sim, outage);
    let faulty = run.finish(Duration::from_secs(900));

    let strays = sim.strays_after(Duration::from_secs(2));
    assert!(
        strays.is_empty(),
        "{}: processes left behind by the run: {strays:#?}",
        p.what
    );
    let failures = faulty.failures();
    match faulty.code {
        0 => assert!(failures.is_empty()),
        1 => {
            assert!(
                !failures.is_empty(),
                "exit 1 without a failed step:\n{}",
                faulty.stderr
            );
            for (id, cause) in &failures {
                assert!(
                    STEPS.contains(&id.as_str()),
                    "{}: the failure is not a step's: {id}: {cause}",
                    p.what
                );
                let first = cause.lines().next().unwrap_or_default();
                assert!(
                    !first.trim().is_empty(),
                    "{}: step {id} failed without a cause",
                    p.what
                );
                let logged = faulty.stderr.lines().any(|l| {
                    l.contains(&format!("step={id} "))
                        && l.contains("failed: ")
                        && l.contains(first)
                });
                assert!(
                    logged,
                    "{}: no log line names step {id} with its cause `{first}`:\n{}",
                    p.what, faulty.stderr
                );
            }
        }
        c => panic!("{}: exit code {c}:\n{}", p.what, faulty.stderr),
    }
    let target = faulty.step(p.step).cloned().unwrap_or_default();
    let attempts = target["attempts"].as_u64().unwrap_or(0);
    let elapsed = target["elapsed"].as_f64().unwrap_or(0.0);
    // The step saw the outage: it failed, retried, or was still at work when the API came
    // back (watches resume by themselves).
    let hit = attempts > 1 || target["outcome"] == "failed" || elapsed >= 1.0;
    eprintln!(
        "fault during {} (step {}): killed at {at:.1}s on `{}`; {restored}",
        p.what,
        p.step,
        line.split_once(" INFO ").map(|(_, l)| l).unwrap_or(&line)
    );
    eprintln!(
        "  faulty run: {}; {}: {} after {attempts} attempt(s), {elapsed:.1}s{}",
        faulty.brief(),
        p.step,
        target["outcome"].as_str().unwrap_or("?"),
        if failures.is_empty() {
            String::new()
        } else {
            format!(
                "; failed: {}",
                failures
                    .iter()
                    .map(|(id, c)| format!("{id}: {}", c.lines().next().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        }
    );
    assert!(
        hit,
        "{}: step {} did not see the outage (it ended before the kill):\n{}",
        p.what, p.step, faulty.stderr
    );
    let mut rerun = sim.up(&[]);
    if rerun.code != 0 && leaked_node_port(&sim, &rerun) {
        eprintln!(
            "  re-run: {}: {}",
            rerun.brief(),
            rerun.failures()[0].1.lines().next().unwrap_or_default()
        );
        eprintln!(
            "  (no Service holds that node port: kube-apiserver leaked it; waiting for its repair loop)"
        );
        let limit: f64 = std::env::var("BOOKINFO_UP_LEAK_WAIT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(480.0);
        let t = Instant::now();
        while rerun.code != 0 && leaked_node_port(&sim, &rerun) && t.elapsed().as_secs_f64() < limit
        {
            std::thread::sleep(Duration::from_secs(20));
            rerun = sim.up(&[]);
        }
        eprintln!(
            "  the node port was free again {:.0}s later",
            t.elapsed().as_secs_f64()
        );
    }
    let account = assert_converged(
        &sim,
        &rerun,
        &reference,
        &format!("re-run after the fault during {}", p.what),
    );
    eprintln!("  re-run: {account}");
}

/// Whether the run failed only because a node port is allocated that no Service holds.
fn leaked_node_port(sim: &Sim, run: &crate::harness::Run) -> bool {
    let failures = run.failures();
    let ports: Vec<String> = failures
        .iter()
        .filter_map(|(_, cause)| {
            let (_, rest) = cause.split_once("nodePort: Invalid value: ")?;
            let (port, why) = rest.split_once(':')?;
            why.trim_start()
                .starts_with("provided port is already allocated")
                .then(|| port.trim().to_string())
        })
        .collect();
    if ports.is_empty() || ports.len() != failures.len() {
        return false;
    }
    let held = sim.kubectl_ok(&[
        "get",
        "svc",
        "-A",
        "-o",
        "jsonpath={range .items[*].spec.ports[*]}{.nodePort} {end}",
    ]);
    let held: Vec<&str> = held.split_whitespace().collect();
    ports.iter().all(|p| !held.contains(&p.as_str()))
}

#[test]
#[ignore = "slow: `just reliability`"]
fn apiserver_killed_during_an_apply() {
    fault(&Point {
        what: "an apply",
        step: "addons",
        freeze_after: &[],
        trigger: &["applied 5/", "step=addons"],
    });
}

#[test]
#[ignore = "slow: `just reliability`"]
fn apiserver_killed_during_a_wait() {
    fault(&Point {
        what: "a wait",
        step: "istio-crds",
        freeze_after: &[],
        trigger: &["waiting for", "step=istio-crds"],
    });
}

#[test]
#[ignore = "slow: `just reliability`"]
fn apiserver_killed_during_a_patch() {
    fault(&Point {
        what: "a patch",
        step: "ingress-ports",
        // What it needs: the gateway's release.
        freeze_after: &[&["step=ingress-gateway", "outcome="]],
        trigger: &["started step=ingress-ports"],
    });
}

#[test]
#[ignore = "slow: `just reliability`"]
fn apiserver_killed_during_a_helm_step() {
    fault(&Point {
        what: "a helm step",
        step: "ingress-gateway",
        freeze_after: &[],
        trigger: &["installing istio-ingressgateway", "step=ingress-gateway"],
    });
}

#[test]
#[ignore = "slow: `just reliability`"]
fn apiserver_killed_during_a_check() {
    fault(&Point {
        what: "a check",
        step: "webhook-ready",
        // What it needs: istiod and the CRDs.
        freeze_after: &[
            &["step=istiod", "outcome="],
            &["step=istio-crds", "outcome="],
        ],
        trigger: &["started step=webhook-ready"],
    });
}

/// The helm side of the same: a `helm upgrade --install` SIGKILLed while it waits, its release
/// recorded `pending-install` (what an interrupted run can leave, and what made every later
/// `helm upgrade` fail with "another operation (install/upgrade/rollback) is in progress"),
/// and with values of its own (pods no node takes). The next run converges to the reference.
#[test]
#[ignore = "slow: `just reliability`"]
fn helm_killed_mid_install_then_a_run_converges() {
    let Some(tb) = testbed() else { return };
    let _slot = live_slot();
    let reference = reference(&tb);
    let sim = Sim::new(&tb, "helm-killed");
    let first = sim.up(&["--only", "istio-base", "--only", "istiod"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let helm = |args: &[&str]| {
        let mut c = std::process::Command::new(tb.bin.join("helm"));
        c.env("PATH", &sim.path_env)
            .arg("--kubeconfig")
            .arg(sim.kubeconfig())
            .args(args);
        c
    };
    let chart = tb.istio.join("charts/gateway");
    let mut child = helm(&[
        "upgrade",
        "--install",
        "istio-ingressgateway",
        chart.to_str().unwrap(),
        "-n",
        "istio-system",
        "--set",
        "service.type=NodePort",
        // Its pods can go nowhere: helm waits, the release stays pending-install.
        "--set",
        "nodeSelector.bookinfo-up-reliability=nowhere",
        "--wait",
        "--timeout",
        "5m",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let status = |name: &str| {
        let out = helm(&["list", "-a", "-n", "istio-system", "-o", "json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == name)
            .and_then(|r| r["status"].as_str().map(str::to_string))
    };
    let t = Instant::now();
    while status("istio-ingressgateway").as_deref() != Some("pending-install") {
        assert!(
            t.elapsed() < Duration::from_secs(60) && child.try_wait().unwrap().is_none(),
            "helm never showed the release pending-install"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(
        status("istio-ingressgateway").as_deref(),
        Some("pending-install")
    );
    let run = sim.up(&[]);
    let account = assert_converged(
        &sim,
        &run,
        &reference,
        "run after helm was killed mid-install",
    );
    let step = run.step("ingress-gateway").cloned().unwrap_or_default();
    eprintln!(
        "helm killed with its release pending-install; next run: {account}; ingress-gateway: {}",
        step["summary"].as_str().unwrap_or_default()
    );
}
