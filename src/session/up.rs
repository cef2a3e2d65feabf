//! `bookinfo-up`: preflight, remote manifests, the cluster and its owner, then the runner;
//! the report says what to do next.

use std::path::PathBuf;
use std::sync::Arc;

use super::{CANCELLED, Session, fetch_remote, run_options, unless_cancelled};
use crate::invocation::{Invocation, UpOptions};
use crate::kube::Kube;
use crate::plan::Plan;
use crate::provider::{self, Access, Findings, PlanRecord, Severity};
use crate::report;
use crate::run::{Event, NextSteps, Runner};
use crate::steps::prune::{self, Desired, Inventory};

/// A phase's failure, boxed: it travels in the `Err` of the work before the runner.
fn phase_failure(id: &str, message: String) -> Box<crate::run::StepReport> {
    Box::new(super::phase_failure(id, message))
}

/// Runs `bookinfo-up` to its exit code.
pub async fn up(inv: Invocation, options: UpOptions) -> i32 {
    if inv.run.dry_run {
        if let Some(name) = inv.source.builtin {
            println!(
                "built-in plan `{name}`, written to {}",
                inv.source.path.display()
            );
        }
        print!("{}", report::dry_run(&inv.plan));
        if !options.no_prune && inv.plan.prune.enabled {
            print!("\n{}", super::prune_dry_run(&inv).await);
        }
        return 0;
    }
    let session = Session::start(&inv.output, &inv.plan);
    let tx = session.events();
    // Preflight's findings, for the final report; filled before anything else can fail.
    let findings = std::sync::Mutex::new(Findings::default());
    let mut plan = inv.plan.clone();
    let result = unless_cancelled(
        &session.cancel,
        prepare(&inv, &options, &mut plan, &session, &findings),
    )
    .await
    .unwrap_or_else(|| Err(phase_failure("cluster", CANCELLED.into())));
    let access = result.as_ref().ok().map(|(_, a, _, _)| a.clone());
    let findings = findings.into_inner().unwrap_or_else(|e| e.into_inner());

    let steps = match result {
        // The lock is held until the runner and the prune are done.
        Ok((kube, _, _lock, inventory)) => {
            let mut steps = run_steps(&inv, plan.clone(), kube.clone(), &session).await;
            let succeeded = steps
                .iter()
                .all(|s| !matches!(s.outcome, crate::run::Outcome::Failed { .. }));
            if let Some((desired, inventory)) = inventory
                && succeeded
                && !session.cancel.is_cancelled()
            {
                let report =
                    prune(&inv, &options, &plan, &kube, &desired, &inventory, &session).await;
                let _ = tx.send(Event::StepFinished(report.clone()));
                steps.push(report);
            }
            steps
        }
        Err(failure) => {
            let _ = tx.send(Event::StepFinished((*failure).clone()));
            vec![*failure]
        }
    };
    let skipped: std::collections::BTreeSet<String> = steps
        .iter()
        .filter(|s| matches!(s.outcome, crate::run::Outcome::Skipped { .. }))
        .map(|s| s.id.clone())
        .collect();
    let mut report = session.report(&plan, "up", steps);
    report.warnings = findings.warnings;
    report.errors = findings.errors;
    if report.success() {
        report.next_steps = access.map(|a| next_steps(&plan, &a, &|id| skipped.contains(id)));
    }
    drop(tx);
    session.finish(report).await
}

/// What comes before the runner is ready: the client, the cluster's access and lock, and the
/// plan's desired set with its ApplySet as listed before the first apply (none for a plan that
/// asks for no object).
type Prepared = (
    Arc<Kube>,
    Access,
    Option<provider::ClusterLock>,
    Option<(Desired, Inventory)>,
);

/// Everything before the steps: the cluster's lock, preflight, the remote manifests (into
/// `plan`), the cluster made or found, its ownership judged and marked, the plan record and
/// an exported kubeconfig.
async fn prepare(
    inv: &Invocation,
    options: &UpOptions,
    plan: &mut Plan,
    session: &Session,
    findings: &std::sync::Mutex<Findings>,
) -> Result<Prepared, Box<crate::run::StepReport>> {
    let o = &inv.target;
    let cancel = &session.cancel;
    let phase = |name: &str, message: String| session.phase(name, message);
    // One run at a time on a cluster the engine manages: a second one waits here, and says
    // so, until the first has finished.
    let lock = provider::lock(plan, o, "up", &|m| phase("cluster", m), cancel)
        .await
        .map_err(|e| phase_failure("cluster", e.to_string()))?;
    preflight(plan, session, findings).await?;
    // Remote manifests are fetched and checked against their pins before any cluster is
    // created or touched: a tampered file stops the run with nothing changed.
    fetch_remote(plan, &inv.select, &|m| phase("fetch", m))
        .await
        .map_err(|e| phase_failure("fetch", e))?;
    let progress = |m: String| phase("cluster", m);
    let access = provider::ensure(plan, o, &progress, cancel)
        .await
        .map_err(|e| phase_failure("cluster", e.to_string()))?;
    let mut kube = Kube::connect(&access.kubeconfig, access.context.as_deref())
        .await
        .map_err(|e| phase_failure("cluster", e.chain()))?;
    kube.ledger = crate::kube::ledger::Ledger::load(&ledger_path(plan, o, &kube.server));
    claim(inv, options, plan, &access, &kube, session).await?;
    let inventory = inventory(inv, plan, &mut kube, session).await?;
    if let Some(target) = &options.export_kubeconfig {
        provider::export_kubeconfig(&access, target).map_err(|e| {
            phase_failure(
                "cluster",
                format!("cannot write `{}`: {e}", target.display()),
            )
        })?;
        phase(
            "cluster",
            format!("kubeconfig copied to {}", target.display()),
        );
    }
    Ok((Arc::new(kube), access, lock, inventory))
}

/// The plan's desired set, and its ApplySet widened to cover it and listed: the members go to
/// the client, whose ledger then vouches for them without a request each.
async fn inventory(
    inv: &Invocation,
    plan: &Plan,
    kube: &mut Kube,
    session: &Session,
) -> Result<Option<(Desired, Inventory)>, Box<crate::run::StepReport>> {
    let mut desired = Desired::of(plan, &|id| inv.select.includes(id));
    // Discovery of every group-version the chosen steps use, in two requests: the steps
    // need it, with a set or without, and the set's scope is settled from it.
    let gvks: Vec<kube::core::GroupVersionKind> = desired
        .versions
        .iter()
        .map(|(gk, v)| kube::core::GroupVersionKind::gvk(&gk.group, v, &gk.kind))
        .collect();
    kube.prefetch_discovery_aggregated(&gvks).await;
    // No set to keep: a plan that asks for no object, or one that turned pruning off (on a
    // cluster where it may not write kube-system's Secrets, say).
    if (desired.is_empty() && !plan.prune.empty) || !plan.prune.enabled {
        return Ok(None);
    }
    session.phase(
        "inventory",
        format!(
            "reading the plan's ApplySet ({}/{})",
            crate::kube::applyset::PARENT_NAMESPACE,
            crate::kube::applyset::parent_name(&plan.name)
        ),
    );
    desired.settle_scopes(kube).await;
    let inventory = prune::begin(kube, &plan.name, &desired)
        .await
        .map_err(|e| {
            let mut message = e.chain();
            if message.contains("403") || message.contains("orbidden") {
                message.push_str(
                    "\n  = help: the plan's ApplySet (what `up` prunes) needs to read and write \
                     Secrets in kube-system and to list the plan's kinds; a plan that may not \
                     sets `[prune] enabled = false`",
                );
            }
            phase_failure("inventory", message)
        })?;
    kube.members = inventory.before.clone();
    kube.releases = inventory.releases.clone();
    Ok(Some((desired, inventory)))
}

/// The prune, after every step succeeded, as a phase of its own in the report.
async fn prune(
    inv: &Invocation,
    options: &UpOptions,
    plan: &Plan,
    kube: &Kube,
    desired: &Desired,
    inventory: &Inventory,
    session: &Session,
) -> crate::run::StepReport {
    let started = std::time::Instant::now();
    let off = options.no_prune.then_some("--no-prune");
    let progress = |m: String| session.phase("prune", m);
    let settings = prune::Settings {
        plan,
        off,
        timeout: plan.teardown.timeout,
        cancel: &session.cancel,
        progress: &progress,
    };
    let outcome = match prune::finish(kube, &settings, desired, inventory).await {
        Ok(o) => o,
        Err(e) => crate::run::Outcome::Failed {
            cause: format!(
                "{}\n(nothing else was pruned; the ApplySet still lists every member, so `{}` prunes again)",
                e.chain(),
                inv.rerun("bookinfo-up")
            ),
        },
    };
    super::prune_report(outcome, started)
}

/// Preflight: warnings sent as they are found; errors end the phase as its failure, each with
/// its fix, so that they are shown once.
async fn preflight(
    plan: &Plan,
    session: &Session,
    findings: &std::sync::Mutex<Findings>,
) -> Result<(), Box<crate::run::StepReport>> {
    session.phase(
        "preflight",
        "checking tools and the cluster's preconditions".into(),
    );
    let found = provider::preflight(plan, &session.cancel).await;
    let tx = session.events();
    for problem in &found.warnings {
        let _ = tx.send(Event::Problem {
            severity: Severity::Warning,
            problem: problem.clone(),
        });
    }
    let failed = (!found.errors.is_empty())
        .then(|| phase_failure("preflight", report::preflight_failure(&found.errors)));
    *findings.lock().unwrap_or_else(|e| e.into_inner()) = found;
    failed.map_or(Ok(()), Err)
}

/// The cluster proven this plan's (`ownership::judge`), marked when it should be, and the
/// record of which plan made it, for `bookinfo-down` without a PLAN (written once the cluster
/// is known to be this plan's).
async fn claim(
    inv: &Invocation,
    options: &UpOptions,
    plan: &Plan,
    access: &Access,
    kube: &Kube,
    session: &Session,
) -> Result<(), Box<crate::run::StepReport>> {
    let o = &inv.target;
    // An existing cluster is never marked, so there is nothing to read (and a plan of exec
    // steps needs no API server at all).
    if !access.managed {
        return Ok(());
    }
    let ownership =
        provider::ownership::ownership(kube, &provider::ownership::claimant(plan, o)).await;
    let intent = provider::Intent::Up {
        adopt: options.adopt,
    };
    match provider::judge(&ownership, plan, intent, &inv.rerun("bookinfo-up")) {
        Ok(provider::Verdict::Proceed) => {}
        Ok(provider::Verdict::Mark) => {
            if ownership == provider::Ownership::Unmarked {
                session.phase(
                    "cluster",
                    format!("adopting cluster `{}` (--adopt)", plan.cluster.name),
                );
            }
            provider::mark_owner(kube, &plan.name, &provider::cluster_dir(plan, o))
                .await
                .map_err(|e| phase_failure("cluster", e.to_string()))?;
        }
        Err(e) => return Err(phase_failure("cluster", e.to_string())),
    }
    let record = PlanRecord {
        plan: plan.name.clone(),
        path: plan.path.clone(),
        builtin: inv.source.builtin.map(str::to_string),
    };
    let dir = provider::cluster_dir(plan, o);
    provider::record_plan(&dir, &record).map_err(|e| {
        phase_failure(
            "cluster",
            format!("cannot write the state folder `{}`: {e}", dir.display()),
        )
    })
}

/// The runner over the plan's steps; then the ledger of what it found converged.
async fn run_steps(
    inv: &Invocation,
    plan: Plan,
    kube: Arc<Kube>,
    session: &Session,
) -> Vec<crate::run::StepReport> {
    let plan = Arc::new(plan);
    let options = run_options(inv, &plan, false);
    let runner = Runner::new(
        Arc::new(crate::steps::Steps),
        plan.clone(),
        Some(kube.clone()),
        options,
        session.events(),
        session.cancel.clone(),
    );
    let steps = runner.run().await;
    // What this run saw converged, for `diff` and `status`; losing it only costs them time
    // (they dry-run what it does not vouch for).
    if let Err(e) = kube
        .ledger
        .save(&ledger_path(&plan, &inv.target, &kube.server))
    {
        tracing::debug!(error = %e, "cannot save the ledger of applied objects");
    }
    steps
}

/// Where a cluster's ledger of applied objects (`kube::ledger`) is kept: the state folder of
/// a cluster the engine made; for an existing cluster, a folder of the state folder's
/// `existing/` named after the API server's URL, one ledger per plan. The ledger only ever
/// spares a request for an object whose live uid it recorded, so a ledger read against
/// another cluster behind the same URL vouches for nothing.
pub fn ledger_path(plan: &Plan, o: &crate::provider::Overrides, server: &str) -> PathBuf {
    if provider::managed(plan) {
        return provider::cluster_dir(plan, o).join("applied.json");
    }
    use sha2::Digest;
    let at = hex::encode(&sha2::Sha256::digest(server.as_bytes())[..8]);
    o.state_dir
        .join("existing")
        .join(at)
        .join(format!("{}.applied.json", plan.name))
}

/// What to tell the user after a successful `up`: the engine's kubeconfig for the cluster,
/// then the plan's `[[plan.next]]`, less those that need a step `left_out` of the run (by
/// the plan's `skip`, or `--only`/`--skip`): no pointer at what is not there.
pub fn next_steps(plan: &Plan, access: &Access, left_out: &dyn Fn(&str) -> bool) -> NextSteps {
    let kubeconfig = access.kubeconfig.display().to_string();
    NextSteps {
        kubectl: format!("export KUBECONFIG={}", shell_quote(&kubeconfig)),
        kubeconfig,
        context: access.context.clone(),
        items: plan
            .next
            .iter()
            .filter(|n| !n.needs.iter().any(|id| left_out(id)))
            .cloned()
            .collect(),
    }
}

/// `text` as one shell word: unchanged when it needs no quoting, else in single quotes.
fn shell_quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_next_leaves_out_what_needs_a_step_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[plan]\nname = \"p\"\n[cluster]\nprovider = \"existing\"\n\
             [[plan.next]]\ntitle = \"always\"\nurl = \"http://127.0.0.1:1\"\n\
             [[plan.next]]\ntitle = \"addons\"\nurl = \"http://127.0.0.1:2\"\nneeds = [\"addons\"]\n\
             [[step]]\nid = \"addons\"\n[step.exec]\ncommand = [\"true\"]\n",
        )
        .unwrap();
        let (_, plan) = crate::plan::load(&path, &|_| None);
        let plan = plan.unwrap_or_else(|_| panic!("the test plan loads"));
        let access = Access {
            kubeconfig: "/k".into(),
            context: None,
            managed: true,
        };
        let titles = |left_out: &dyn Fn(&str) -> bool| -> Vec<String> {
            next_steps(&plan, &access, left_out)
                .items
                .into_iter()
                .map(|n| n.title)
                .collect()
        };
        assert_eq!(titles(&|_| false), ["always", "addons"]);
        assert_eq!(titles(&|id| id == "addons"), ["always"]);
    }

    #[test]
    fn kubeconfig_line_is_one_shell_word() {
        assert_eq!(
            shell_quote("/home/u/.local/state/x"),
            "/home/u/.local/state/x"
        );
        assert_eq!(
            shell_quote("/home/my user/it's"),
            r"'/home/my user/it'\''s'"
        );
    }
}
