//! `bookinfo-down`: the plan to take down (given, or recorded by `up`), then, once the cluster
//! is proven the plan's, the cluster deleted whole or the steps undone in reverse.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CANCELLED, Session, fetch_remote, phase_failure, run_options, unless_cancelled};
use crate::invocation::{DownOptions, Invocation};
use crate::kube::Kube;
use crate::plan::Plan;
use crate::provider;
use crate::run::{Event, Outcome, Runner, StepReport};

/// How `bookinfo-down` goes on once the cluster is known.
enum Teardown {
    /// Nothing is left to run (the cluster is gone, or was deleted whole).
    Done(Vec<StepReport>),
    /// The steps' teardown, in reverse, against this client, under the cluster's lock.
    Run(Arc<Plan>, Arc<Kube>, Option<provider::ClusterLock>),
}

/// Runs `bookinfo-down` to its exit code.
pub async fn down(inv: Invocation, options: DownOptions) -> i32 {
    let plan = &inv.plan;
    let delete_cluster =
        provider::managed(plan) && plan.teardown.delete_cluster && !options.keep_cluster;
    if inv.run.dry_run {
        print_dry_run(plan, delete_cluster);
        return 0;
    }
    let session = Session::start(&inv.output, plan);
    let tx = session.events();
    let steps = match unless_cancelled(&session.cancel, prepare(&inv, options, &session))
        .await
        .unwrap_or_else(|| Err(vec![phase_failure("cluster", CANCELLED.into())]))
    {
        Ok(Teardown::Done(steps)) => steps,
        Ok(Teardown::Run(plan, kube, _lock)) => {
            let options = run_options(&inv, &plan, true);
            let runner = Runner::new(
                Arc::new(crate::steps::Steps),
                plan.clone(),
                Some(kube.clone()),
                options,
                tx.clone(),
                session.cancel.clone(),
            );
            let mut steps = runner.run().await;
            let succeeded = steps
                .iter()
                .all(|s| !matches!(s.outcome, Outcome::Failed { .. }));
            // A down of some steps leaves the rest, and the set that lists them.
            let whole = inv.select.only.is_empty() && inv.select.skip.is_empty();
            if succeeded && whole && !session.cancel.is_cancelled() {
                let report = dismantle(&plan, &kube, &session).await;
                if !matches!(report.outcome, Outcome::Failed { .. }) {
                    // Nothing of the plan is left for the ledger to vouch for.
                    let ledger = super::up::ledger_path(&plan, &inv.target, &kube.server);
                    let _ = std::fs::remove_file(ledger);
                }
                let _ = tx.send(Event::StepFinished(report.clone()));
                steps.push(report);
            }
            steps
        }
        Err(failure) => {
            for f in &failure {
                let _ = tx.send(Event::StepFinished(f.clone()));
            }
            failure
        }
    };
    if steps.iter().any(|s| {
        s.id == "cluster"
            && matches!(
                s.outcome,
                Outcome::Changed { .. } | Outcome::Unchanged { .. }
            )
    }) {
        // The cluster is gone: `down` without a PLAN no longer finds it.
        provider::forget_plan(&provider::cluster_dir(plan, &inv.target));
    }
    let report = session.report(plan, "down", steps);
    drop(tx);
    session.finish(report).await
}

/// The plan's ApplySet taken apart once the steps are undone (`prune::dismantle`), as a phase
/// of the report.
async fn dismantle(plan: &Plan, kube: &Kube, session: &Session) -> StepReport {
    let started = Instant::now();
    let progress = |m: String| session.phase("prune", m);
    let settings = crate::steps::prune::Settings {
        plan,
        off: None,
        timeout: plan.teardown.timeout,
        cancel: &session.cancel,
        progress: &progress,
    };
    let outcome = match crate::steps::prune::dismantle(kube, &settings).await {
        Ok(o) => o,
        Err(e) => Outcome::Failed { cause: e.chain() },
    };
    super::prune_report(outcome, started)
}

/// What `--dry-run` says `down` would do.
fn print_dry_run(plan: &Plan, delete_cluster: bool) {
    if delete_cluster {
        println!(
            "would delete {} cluster `{}` (if it is proven this plan's)",
            plan.cluster.provider_name(),
            plan.cluster.name
        );
        return;
    }
    println!("would undo, in reverse order:");
    let order = plan
        .waves
        .iter()
        .rev()
        .flat_map(|w| w.iter().rev().map(|&i| &plan.steps[i]));
    for s in order.filter(|s| s.undone_by_down()) {
        println!("  {} ({})", s.id, s.kind());
    }
}

/// What runs before the runner: the cluster's lock, its existence, its ownership proven
/// (`ownership::judge`; nothing is deleted before), then either its deletion or a client and
/// the remote manifests for the steps' teardown.
async fn prepare(
    inv: &Invocation,
    options: DownOptions,
    session: &Session,
) -> Result<Teardown, Vec<StepReport>> {
    let (plan, o, cancel) = (&inv.plan, &inv.target, &session.cancel);
    let phase = |name: &str, message: String| session.phase(name, message);
    let fail = |e: String| vec![phase_failure("cluster", e)];
    // Not while another run works on the cluster: a second one waits here, and says so.
    let lock = provider::lock(plan, o, "down", &|m| phase("cluster", m), cancel)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let dir = provider::cluster_dir(plan, o);
    let managed = provider::managed(plan);
    if managed
        && !provider::exists(plan, o, cancel)
            .await
            .map_err(|e| fail(e.to_string()))?
    {
        provider::ownership::forget_creation(&dir);
        let name = &plan.cluster.name;
        phase(
            "cluster",
            format!("cluster `{name}` does not exist: nothing to do"),
        );
        return Ok(Teardown::Done(vec![cluster_report(
            plan,
            false,
            Duration::ZERO,
        )]));
    }
    let kube = match provider::access(plan, o, cancel).await {
        Ok(a) => Kube::connect(&a.kubeconfig, a.context.as_deref())
            .await
            .map_err(|e| e.chain()),
        Err(e) => Err(e.to_string()),
    };
    let ownership = match &kube {
        Ok(kube) => {
            provider::ownership::ownership(kube, &provider::ownership::claimant(plan, o)).await
        }
        Err(e) => provider::Ownership::Unreachable(e.clone()),
    };
    let intent = provider::Intent::Down {
        force: options.force,
    };
    provider::judge(&ownership, plan, intent, &inv.rerun("bookinfo-down"))
        .map_err(|e| fail(e.to_string()))?;
    if managed && plan.teardown.delete_cluster && !options.keep_cluster {
        let deleted = delete(inv, &ownership, session).await.map_err(fail)?;
        return Ok(Teardown::Done(vec![deleted]));
    }
    let kube = kube.map_err(fail)?;
    // Teardown needs the objects of remote manifests too (from the cache when warm).
    let mut plan = plan.clone();
    fetch_remote(&mut plan, &inv.select, &|m| phase("fetch", m))
        .await
        .map_err(|e| vec![phase_failure("fetch", e)])?;
    Ok(Teardown::Run(Arc::new(plan), Arc::new(kube), lock))
}

/// Deletes the cluster that `judge` let `down` delete (proven the plan's, or `--force`d).
async fn delete(
    inv: &Invocation,
    ownership: &provider::Ownership,
    session: &Session,
) -> Result<StepReport, String> {
    let (plan, o) = (&inv.plan, &inv.target);
    let phase = |message: String| session.phase("cluster", message);
    let proven = matches!(
        ownership,
        provider::Ownership::Marked | provider::Ownership::Created
    );
    if !proven {
        let name = &plan.cluster.name;
        phase(format!("deleting cluster `{name}` unproven (--force)"));
    }
    let t = Instant::now();
    let deleted = provider::delete(plan, o, &phase, &session.cancel)
        .await
        .map_err(|e| e.to_string())?;
    provider::ownership::forget_creation(&provider::cluster_dir(plan, o));
    Ok(cluster_report(plan, deleted, t.elapsed()))
}

/// The cluster phase's report: the cluster deleted, or already gone.
fn cluster_report(plan: &Plan, deleted: bool, elapsed: Duration) -> StepReport {
    let name = &plan.cluster.name;
    StepReport {
        unit: crate::run::Unit::Phase,
        id: "cluster".into(),
        kind: "cluster".into(),
        check: false,
        outcome: if deleted {
            Outcome::Changed {
                summary: format!("deleted {} cluster `{name}`", plan.cluster.provider_name()),
            }
        } else {
            Outcome::Unchanged {
                summary: format!("cluster `{name}` is already gone"),
            }
        },
        elapsed,
        attempts: 1,
        artifacts: None,
    }
}
