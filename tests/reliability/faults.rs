//! 1. Fault injection: the kube-apiserver is SIGKILLed at five points of a cold
//! `bookinfo-up plans/sim.toml` (during an apply, a wait, a patch, a helm step and a check) and
//! started again `BOOKINFO_UP_FAULT_DOWN_SECS` (default 3) seconds later. The run either
//! completes through retries or fails with a message naming the step and the cause; no process
//! of the run outlives it; a re-run converges to the reference dump with 5 ingress ports.
//!
//! Each point is found in the run's `-v` log: a step's own progress line where it has one
//! ("applied 5/23 objects", "waiting for 1/3 CRDs", "installing istio-ingressgateway"), so the
//! kill lands in the middle of the step's work; else the step's `started` line (the patch and
//! the check take milliseconds, and every other step is over by then).

use std::time::Duration;

use crate::control_plane::ControlPlane;
use crate::harness::{STEPS, Sim, live_slot, testbed};
use crate::{assert_converged, reference};

struct Point {
    what: &'static str,
    step: &'static str,
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
    let line = match run.wait_line(
        |l| p.trigger.iter().all(|t| l.contains(t)),
        Duration::from_secs(300),
    ) {
        Ok(l) => l,
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
    let rerun = sim.up(&[]);
    let account = assert_converged(
        &sim,
        &rerun,
        &reference,
        &format!("re-run after the fault during {}", p.what),
    );
    eprintln!("  re-run: {account}");
}

#[test]
#[ignore = "slow: `just reliability`"]
fn apiserver_killed_during_an_apply() {
    fault(&Point {
        what: "an apply",
        step: "addons",
        trigger: &["applied 5/", "step=addons"],
    });
}

#[test]
#[ignore = "slow: `just reliability`"]
fn apiserver_killed_during_a_wait() {
    fault(&Point {
        what: "a wait",
        step: "istio-crds",
        trigger: &["waiting for", "step=istio-crds"],
    });
}

#[test]
#[ignore = "slow: `just reliability`"]
fn apiserver_killed_during_a_patch() {
    fault(&Point {
        what: "a patch",
        step: "ingress-ports",
        trigger: &["started step=ingress-ports"],
    });
}

#[test]
#[ignore = "slow: `just reliability`"]
fn apiserver_killed_during_a_helm_step() {
    fault(&Point {
        what: "a helm step",
        step: "ingress-gateway",
        trigger: &["installing istio-ingressgateway", "step=ingress-gateway"],
    });
}

#[test]
#[ignore = "slow: `just reliability`"]
fn apiserver_killed_during_a_check() {
    fault(&Point {
        what: "a check",
        step: "bookinfo-pods",
        trigger: &["started step=bookinfo-pods"],
    });
}
