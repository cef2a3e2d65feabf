//! `bookinfo-down`: the plan to take down (given, or recorded by `up`), then the cluster
//! deleted whole or the steps undone in reverse.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CANCELLED, Session, fetch_remote, phase_failure, run_options, unless_cancelled};
use crate::cli::{DownArgs, EXIT_USAGE, PlanSource, load_plan, overrides, resolve_plan};
use crate::kube::Kube;
use crate::plan::Plan;
use crate::provider::{self, Overrides};
use crate::run::{Event, Outcome, Runner, StepReport};

/// How `bookinfo-down` goes on once the cluster is known.
enum Teardown {
    /// Nothing is left to run (the cluster is gone, or was deleted whole).
    Done(Vec<StepReport>),
    /// The steps' teardown, in reverse, against this client, under the cluster's lock.
    Run(Arc<Plan>, Arc<Kube>, Option<provider::ClusterLock>),
}

/// Runs `bookinfo-down` to its exit code.
pub async fn down(args: DownArgs) -> i32 {
    let c = &args.common;
    let o = overrides(c);
    let source = match plan_for_down(c.plan.as_deref(), &o) {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!(
                "nothing to take down: no cluster made by `bookinfo-up` is recorded in {}\n  = help: to take down a plan's objects from another cluster, name the plan: `bookinfo-down --context C PLAN`",
                o.state_dir.join("clusters").display()
            );
            return 0;
        }
        Err(e) => {
            eprintln!("{e}");
            return EXIT_USAGE;
        }
    };
    let Some(plan) = load_plan(&source.path) else {
        return EXIT_USAGE;
    };
    let managed = provider::managed(&plan, &o);
    let delete_cluster = managed && plan.teardown.delete_cluster && !args.keep_cluster;
    if c.dry_run {
        if delete_cluster {
            println!(
                "would delete {} cluster `{}` (if this plan created it)",
                plan.cluster.provider_name(),
                plan.cluster.name
            );
        } else {
            println!("would undo, in reverse order:");
            let order: Vec<&crate::plan::Step> = plan
                .waves
                .iter()
                .rev()
                .flat_map(|w| w.iter().rev().map(|&i| &plan.steps[i]))
                .collect();
            for s in order {
                if s.undone_by_down() {
                    println!("  {} ({})", s.id, s.kind());
                }
            }
        }
        return 0;
    }
    let session = Session::start(c, &plan);
    let cancel = session.cancel.clone();
    let tx = session.events();
    let phase = |name: &str, message: String| session.phase(name, message);

    // What runs before the runner: the cluster's existence and owner, its deletion, the
    // client and the remote manifests. Either it settles the whole teardown or it hands the
    // plan and a client to the runner.
    let setup = async {
        // Not while another run works on the cluster: a second one waits here, and says so.
        let lock = provider::lock(&plan, &o, "down", &|m| phase("cluster", m), &cancel)
            .await
            .map_err(|e| vec![phase_failure("cluster", e.to_string())])?;
        let dir = provider::cluster_dir(&plan, &o);
        if managed
            && !provider::exists(&plan, &o, &cancel)
                .await
                .map_err(|e| vec![phase_failure("cluster", e.to_string())])?
        {
            provider::ownership::forget_creation(&dir);
            phase(
                "cluster",
                format!(
                    "cluster `{}` does not exist: nothing to do",
                    plan.cluster.name
                ),
            );
            return Ok(Teardown::Done(vec![cluster_report(
                &plan,
                false,
                Duration::ZERO,
            )]));
        }
        // Nothing is deleted before the cluster is proven this plan's (or `--force` says so).
        let kube = match provider::access(&plan, &o, &cancel).await {
            Ok(a) => Kube::connect(&a.kubeconfig, a.context.as_deref())
                .await
                .map_err(|e| e.chain()),
            Err(e) => Err(e.to_string()),
        };
        let ownership = match &kube {
            Ok(kube) => {
                provider::ownership::ownership(kube, &provider::ownership::claimant(&plan, &o))
                    .await
            }
            Err(e) => provider::Ownership::Unreachable(e.clone()),
        };
        let rerun = crate::cli::rerun("bookinfo-down", c.plan.as_deref());
        let intent = provider::Intent::Down { force: args.force };
        provider::judge(&ownership, &plan, intent, &rerun)
            .map_err(|e| vec![phase_failure("cluster", e.to_string())])?;
        if delete_cluster {
            if args.force
                && !matches!(
                    ownership,
                    provider::Ownership::Marked | provider::Ownership::Created
                )
            {
                phase(
                    "cluster",
                    format!(
                        "deleting cluster `{}` unproven (--force)",
                        plan.cluster.name
                    ),
                );
            }
            let progress = |m: String| phase("cluster", m);
            let t = Instant::now();
            let deleted = provider::delete(&plan, &o, &progress, &cancel)
                .await
                .map_err(|e| vec![phase_failure("cluster", e.to_string())])?;
            provider::ownership::forget_creation(&dir);
            drop(lock);
            return Ok(Teardown::Done(vec![cluster_report(
                &plan,
                deleted,
                t.elapsed(),
            )]));
        }
        let kube = kube.map_err(|e| vec![phase_failure("cluster", e)])?;
        // Teardown needs the objects of remote manifests too (from the cache when warm).
        let mut plan = plan.clone();
        fetch_remote(&mut plan, &o, &|m| phase("fetch", m))
            .await
            .map_err(|e| vec![phase_failure("fetch", e)])?;
        Ok(Teardown::Run(Arc::new(plan), Arc::new(kube), lock))
    };
    let steps = match unless_cancelled(&cancel, setup)
        .await
        .unwrap_or_else(|| Err(vec![phase_failure("cluster", CANCELLED.into())]))
    {
        Ok(Teardown::Done(steps)) => steps,
        Ok(Teardown::Run(plan, kube, _lock)) => {
            let options = run_options(c, &o, &plan, &[], &[], true);
            let runner = Runner::new(
                Arc::new(crate::steps::Steps),
                plan,
                Some(kube),
                options,
                tx.clone(),
                cancel.clone(),
            );
            runner.run().await
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
        provider::forget_plan(&provider::cluster_dir(&plan, &o));
    }
    let report = session.report(&plan, "down", steps);
    drop(tx);
    session.finish(report).await
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

/// The plan `bookinfo-down` runs: PLAN when given, else the one recorded for the only
/// cluster `up` made. `Ok(None)`: no cluster is recorded, nothing to do.
fn plan_for_down(arg: Option<&Path>, o: &Overrides) -> Result<Option<PlanSource>, String> {
    if arg.is_some() {
        return resolve_plan(arg).map(Some);
    }
    let recorded = provider::recorded_plans(&o.state_dir);
    match recorded.as_slice() {
        [] => Ok(None),
        [(cluster, record)] => match &record.builtin {
            Some(name) => resolve_plan(Some(Path::new(name))).map(Some),
            None if !record.path.is_file() => Err(format!(
                "error: the plan that made cluster `{cluster}`, `{}`, is gone\n  = help: name a plan with the same `[cluster]`: `bookinfo-down PLAN`",
                record.path.display()
            )),
            None => Ok(Some(PlanSource {
                path: record.path.clone(),
                builtin: None,
            })),
        },
        several => {
            let lines: Vec<String> = several
                .iter()
                .map(|(cluster, r)| {
                    let plan = r
                        .builtin
                        .clone()
                        .unwrap_or_else(|| r.path.display().to_string());
                    format!(
                        "  bookinfo-down {plan}    (cluster `{cluster}`, plan `{}`)",
                        r.plan
                    )
                })
                .collect();
            Err(format!(
                "error: `bookinfo-up` made {} clusters; name the plan to take down:\n{}",
                several.len(),
                lines.join("\n")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::provider::PlanRecord;

    fn overrides_at(state: &Path) -> Overrides {
        Overrides {
            kubeconfig: None,
            context: None,
            state_dir: state.to_path_buf(),
        }
    }

    fn record(state: &Path, cluster: &str, path: &str, builtin: Option<&str>) {
        provider::record_plan(
            &state.join("clusters").join(cluster),
            &PlanRecord {
                plan: cluster.into(),
                path: path.into(),
                builtin: builtin.map(str::to_string),
            },
        )
        .unwrap();
    }

    #[test]
    fn down_without_a_plan_takes_the_recorded_one() {
        let state = tempfile::tempdir().unwrap();
        let o = overrides_at(state.path());
        assert_eq!(plan_for_down(None, &o), Ok(None));

        record(state.path(), "demo", "/work/demo/plan.toml", None);
        assert_eq!(
            plan_for_down(None, &o),
            Err(
                "error: the plan that made cluster `demo`, `/work/demo/plan.toml`, is gone\n  \
                 = help: name a plan with the same `[cluster]`: `bookinfo-down PLAN`"
                    .into()
            )
        );
        let plan = state.path().join("plan.toml");
        std::fs::write(&plan, "").unwrap();
        record(state.path(), "demo", plan.to_str().unwrap(), None);
        assert_eq!(
            plan_for_down(None, &o),
            Ok(Some(PlanSource {
                path: plan,
                builtin: None
            }))
        );
        // A PLAN given wins over the record.
        assert_eq!(
            plan_for_down(Some(Path::new("other.toml")), &o)
                .unwrap()
                .unwrap()
                .path,
            PathBuf::from("other.toml")
        );

        provider::forget_plan(&state.path().join("clusters/demo"));
        record(
            state.path(),
            "bookinfo-sim",
            "/old/copy/plans/sim.toml",
            Some("sim"),
        );
        let source = plan_for_down(None, &o).unwrap().unwrap();
        assert_eq!(source.builtin, Some("sim"));
        assert!(
            source.path.ends_with("plans/sim.toml") && source.path.is_file(),
            "a built-in plan is this binary's copy: {}",
            source.path.display()
        );
    }

    #[test]
    fn down_without_a_plan_lists_several_clusters() {
        let state = tempfile::tempdir().unwrap();
        record(
            state.path(),
            "bookinfo",
            "/data/plans/bookinfo.toml",
            Some("bookinfo"),
        );
        record(state.path(), "demo", "/work/demo/plan.toml", None);
        let err = plan_for_down(None, &overrides_at(state.path())).unwrap_err();
        assert_eq!(
            err,
            "error: `bookinfo-up` made 2 clusters; name the plan to take down:\n  \
             bookinfo-down bookinfo    (cluster `bookinfo`, plan `bookinfo`)\n  \
             bookinfo-down /work/demo/plan.toml    (cluster `demo`, plan `demo`)"
        );
    }
}
