//! `Runner`: executes a plan's steps as their needs allow, at most `jobs` at once, each
//! inside its timeout with retries and doubling backoff. A failed step skips its dependents
//! and lets independent branches finish (`fail_fast` stops everything). Cancellation stops
//! running steps (their tools' process groups are killed) and skips the rest.

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Event, Outcome, RunReport, SkipReason, StepCtx, StepReport};
use crate::error::StepError;
use crate::kube::Kube;
use crate::plan::{Plan, Step};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub jobs: usize,
    pub fail_fast: bool,
    /// Run only these steps (none: all).
    pub only: BTreeSet<String>,
    pub skip: BTreeSet<String>,
    pub cache_dir: PathBuf,
    pub artifacts: PathBuf,
    /// Logs of the cluster's own processes (a kwok cluster's istiod), whose tail goes into a
    /// failed step's diagnostics.
    pub cluster_logs: Vec<PathBuf>,
    /// Teardown: undo steps in reverse dependency order.
    pub reverse: bool,
}

pub struct Runner {
    work: Arc<dyn super::StepWork>,
    plan: Arc<Plan>,
    kube: Option<Arc<Kube>>,
    opts: RunOptions,
    events: UnboundedSender<Event>,
    cancel: CancellationToken,
}

#[derive(Debug, Clone)]
enum State {
    Pending,
    Running,
    Done(Outcome),
}

impl Runner {
    /// A runner of `plan`'s steps, each attempt done by `work`.
    pub fn new(
        work: Arc<dyn super::StepWork>,
        plan: Arc<Plan>,
        kube: Option<Arc<Kube>>,
        opts: RunOptions,
        events: UnboundedSender<Event>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            work,
            plan,
            kube,
            opts,
            events,
            cancel,
        }
    }

    /// Runs the steps and returns their reports in plan order.
    pub async fn run(&self) -> Vec<StepReport> {
        let n = self.plan.steps.len();
        let mut walk = Walk {
            deps: self.dependencies(),
            state: vec![State::Pending; n],
            reports: HashMap::new(),
            tasks: JoinSet::new(),
            task_step: HashMap::new(),
            stop: self.cancel.child_token(),
        };
        self.leave_out(&mut walk);
        loop {
            self.start_what_can(&mut walk);
            let Some(joined) = walk.tasks.join_next_with_id().await else {
                break;
            };
            let (i, r) = match joined {
                Ok((_, x)) => x,
                Err(e) => {
                    // Panics are caught inside the task; this is a task that ended otherwise
                    // (aborted by the runtime's shutdown), reported as its own step's failure.
                    let i = walk.task_step[&e.id()];
                    let cause = format!("the step's task ended without a report: {e}");
                    let r = report(
                        &self.plan.steps[i],
                        Outcome::Failed { cause },
                        Duration::ZERO,
                        1,
                    );
                    (i, r)
                }
            };
            if matches!(r.outcome, Outcome::Failed { .. }) && self.opts.fail_fast {
                walk.stop.cancel();
            }
            self.finish_step(&mut walk, i, r);
        }
        let mut out: Vec<(usize, StepReport)> = walk.reports.into_iter().collect();
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, r)| r).collect()
    }

    /// What each step waits for. For teardown the edges flip: a step is undone after
    /// everything that needed it.
    fn dependencies(&self) -> Vec<Vec<usize>> {
        let steps = &self.plan.steps;
        if !self.opts.reverse {
            return steps.iter().map(|s| s.needs.clone()).collect();
        }
        let mut d = vec![Vec::new(); steps.len()];
        for (i, s) in steps.iter().enumerate() {
            for &need in &s.needs {
                d[need].push(i);
            }
        }
        d
    }

    /// Steps left out by the plan's `skip`, --only or --skip: reported skipped, and done for
    /// their dependents.
    fn leave_out(&self, walk: &mut Walk) {
        for (i, s) in self.plan.steps.iter().enumerate() {
            let reason = if let Some(why) = &s.skip {
                SkipReason::ByPlan(why.clone())
            } else if self.opts.skip.contains(&s.id) {
                SkipReason::LeftOut
            } else if !self.opts.only.is_empty() && !self.opts.only.contains(&s.id) {
                SkipReason::NotSelected
            } else {
                continue;
            };
            let r = report(s, Outcome::Skipped { reason }, Duration::ZERO, 0);
            let _ = self.events.send(Event::StepFinished(r.clone()));
            walk.reports.insert(i, r);
            walk.state[i] = State::Done(Outcome::Unchanged {
                summary: String::new(),
            });
        }
    }

    /// Skips what can no longer run (a need failed or was skipped; the run is stopping) and
    /// starts what can, up to `--jobs` at once, until nothing more changes.
    fn start_what_can(&self, walk: &mut Walk) {
        let mut progressed = true;
        while progressed {
            progressed = false;
            for i in 0..self.plan.steps.len() {
                if !matches!(walk.state[i], State::Pending) {
                    continue;
                }
                if let Some(reason) = self.why_not(walk, i) {
                    let r = report(
                        &self.plan.steps[i],
                        Outcome::Skipped { reason },
                        Duration::ZERO,
                        0,
                    );
                    self.finish_step(walk, i, r);
                    progressed = true;
                    continue;
                }
                let ready = walk.deps[i]
                    .iter()
                    .all(|&d| matches!(walk.state[d], State::Done(_)));
                if ready && walk.tasks.len() < self.opts.jobs.max(1) {
                    self.spawn(walk, i);
                    progressed = true;
                }
            }
        }
    }

    /// Why step `i` will not run: the run is stopping, or one of its needs failed or was
    /// skipped.
    fn why_not(&self, walk: &Walk, i: usize) -> Option<SkipReason> {
        if self.cancel.is_cancelled() {
            return Some(SkipReason::Cancelled);
        }
        if walk.stop.is_cancelled() {
            return Some(SkipReason::FailFast);
        }
        let &d = walk.deps[i].iter().find(|&&d| {
            matches!(
                &walk.state[d],
                State::Done(Outcome::Failed { .. } | Outcome::Skipped { .. })
            )
        })?;
        Some(SkipReason::Blocked {
            step: self.plan.steps[d].id.clone(),
            failed: matches!(&walk.state[d], State::Done(Outcome::Failed { .. })),
            teardown: self.opts.reverse,
        })
    }

    /// Starts step `i` on a task of its own.
    fn spawn(&self, walk: &mut Walk, i: usize) {
        walk.state[i] = State::Running;
        let step = self.plan.steps[i].clone();
        let ctx = StepCtx::new(
            step.id.clone(),
            self.plan.name.clone(),
            self.kube.clone(),
            self.events.clone(),
            walk.stop.child_token(),
            self.opts.cache_dir.clone(),
            self.opts.artifacts.clone(),
        )
        .with_timeout(step.timeout)
        .with_cluster_logs(self.opts.cluster_logs.clone());
        let reverse = self.opts.reverse;
        let cancel = self.cancel.clone();
        let work = self.work.clone();
        let task = walk.tasks.spawn(async move {
            // A panic is the failure of the step that panicked: caught here, inside its own
            // task, so that no other step takes the blame.
            let started = Instant::now();
            let failed = step.clone();
            let run = AssertUnwindSafe(attempt_loop(work, step, ctx, reverse, cancel));
            let r = run.catch_unwind().await.unwrap_or_else(|panic| {
                let cause = format!(
                    "the step panicked (a bug in bookinfo-up): {}",
                    panic_message(panic.as_ref())
                );
                report(&failed, Outcome::Failed { cause }, started.elapsed(), 1)
            });
            (i, r)
        });
        walk.task_step.insert(task.id(), i);
    }

    /// Records step `i`'s report and tells the reporters.
    fn finish_step(&self, walk: &mut Walk, i: usize, r: StepReport) {
        let _ = self.events.send(Event::StepFinished(r.clone()));
        walk.state[i] = State::Done(r.outcome.clone());
        walk.reports.insert(i, r);
    }
}

/// Where a run of the DAG stands.
struct Walk {
    /// What each step waits for (flipped for teardown).
    deps: Vec<Vec<usize>>,
    state: Vec<State>,
    reports: HashMap<usize, StepReport>,
    tasks: JoinSet<(usize, StepReport)>,
    /// Which step each task runs, for a task that ends without a report.
    task_step: HashMap<tokio::task::Id, usize>,
    /// Cancelled by Ctrl-C (through its parent) or, with --fail-fast, by a failure.
    stop: CancellationToken,
}

/// The message a panic carried (`panic!` with a literal or a formatted string).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn report(step: &Step, outcome: Outcome, elapsed: Duration, attempts: u32) -> StepReport {
    StepReport {
        unit: crate::run::Unit::Step,
        id: step.id.clone(),
        kind: step.kind().to_string(),
        check: step.is_check(),
        outcome,
        elapsed,
        attempts,
        artifacts: None,
    }
}

/// Runs a step with its timeout and retries, and turns the result into a report.
async fn attempt_loop(
    runs: Arc<dyn super::StepWork>,
    step: Step,
    ctx: StepCtx,
    reverse: bool,
    run_cancel: CancellationToken,
) -> StepReport {
    let start = Instant::now();
    let mut delay = step.backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let _ = ctx.events().send(Event::StepStarted {
            id: step.id.clone(),
            kind: step.kind().into(),
            attempt,
        });
        let work = async {
            if reverse {
                runs.teardown(&step, &ctx).await
            } else {
                runs.run(&step, &ctx).await
            }
        };
        let result = tokio::select! {
            r = tokio::time::timeout(step.timeout, work) => match r {
                Ok(r) => r,
                Err(_) => Err(timed_out(runs.as_ref(), &step, &ctx).await),
            },
            _ = ctx.cancel.cancelled() => {
                let reason = if run_cancel.is_cancelled() { SkipReason::CancelledWhileRunning } else { SkipReason::StoppedByFailFast };
                return report(&step, Outcome::Skipped { reason }, start.elapsed(), attempt);
            }
        };
        match result {
            Ok(outcome) => return report(&step, outcome, start.elapsed(), attempt),
            Err(e) if attempt <= step.retries && !ctx.cancel.is_cancelled() => {
                let _ = ctx.events().send(Event::StepRetrying {
                    id: step.id.clone(),
                    attempt,
                    cause: e.chain(),
                    delay,
                });
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctx.cancel.cancelled() => {
                        return report(&step, Outcome::Skipped { reason: SkipReason::CancelledBeforeRetry }, start.elapsed(), attempt);
                    }
                }
                delay *= 2;
            }
            Err(e) => {
                if ctx.cancel.is_cancelled() {
                    return report(
                        &step,
                        Outcome::Skipped {
                            reason: SkipReason::CancelledWhileRunning,
                        },
                        start.elapsed(),
                        attempt,
                    );
                }
                let cause = e.chain();
                let mut r = report(&step, Outcome::Failed { cause }, start.elapsed(), attempt);
                r.artifacts = collect_artifacts(&step, &ctx).await;
                return r;
            }
        }
    }
}

/// The error of a step that ran out of time; waits explain what is not ready.
async fn timed_out(runs: &dyn super::StepWork, step: &Step, ctx: &StepCtx) -> StepError {
    let limit = humantime::format_duration(step.timeout);
    let mut message = format!("step `{}` timed out after {limit}", step.id);
    if let Ok(kube) = ctx.kube()
        && let Ok(Some(why)) =
            tokio::time::timeout(Duration::from_secs(10), runs.explain_timeout(step, kube)).await
    {
        message.push_str(":\n");
        message.push_str(&why);
    }
    StepError::fatal(message)
}

/// Writes events, pod statuses and logs of the step's namespaces; returns the folder.
async fn collect_artifacts(step: &Step, ctx: &StepCtx) -> Option<PathBuf> {
    let kube = ctx.kube().ok()?;
    let namespaces = step.namespaces();
    if namespaces.is_empty() {
        return None;
    }
    let dir = ctx.artifacts.join(&step.id);
    let collect = async {
        crate::kube::diagnostics::collect(kube, &namespaces, &dir).await?;
        crate::kube::diagnostics::copy_logs(&ctx.cluster_logs, &dir.join("cluster")).await
    };
    match tokio::time::timeout(Duration::from_secs(20), collect).await {
        Ok(Ok(())) => Some(dir),
        _ => None,
    }
}

/// Builds the final report of a run.
pub fn finish(
    plan: &Plan,
    command: &str,
    steps: Vec<StepReport>,
    started: Instant,
    cancelled: bool,
) -> RunReport {
    // The folder that holds every failed step's diagnostics.
    let artifacts = steps
        .iter()
        .find_map(|s| s.artifacts.as_deref())
        .map(|dir| {
            dir.parent()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| dir.display().to_string())
        });
    RunReport {
        plan: plan.name.clone(),
        command: command.to_string(),
        steps,
        elapsed: started.elapsed(),
        cancelled,
        artifacts,
        warnings: Vec::new(),
        errors: Vec::new(),
        next_steps: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StepResult;
    use crate::run::StepWork;
    use futures::future::BoxFuture;

    /// Steps that take a while, one of which (`boom`) panics meanwhile.
    struct Boom;

    impl StepWork for Boom {
        fn run<'a>(&'a self, step: &'a Step, _: &'a StepCtx) -> BoxFuture<'a, StepResult<Outcome>> {
            Box::pin(async move {
                if step.id == "boom" {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    panic!("`boom` panics on purpose");
                }
                let ms = if step.id == "slow" { 400 } else { 200 };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Outcome::Changed {
                    summary: "done".into(),
                })
            })
        }

        fn teardown<'a>(
            &'a self,
            step: &'a Step,
            ctx: &'a StepCtx,
        ) -> BoxFuture<'a, StepResult<Outcome>> {
            self.run(step, ctx)
        }

        fn explain_timeout<'a>(
            &'a self,
            _: &'a Step,
            _: &'a Kube,
        ) -> BoxFuture<'a, Option<String>> {
            Box::pin(async { None })
        }
    }

    /// `steps` (TOML after the `[cluster]` table; `{exec}` stands for a step's `[step.exec]`
    /// of `true`) as a plan on an existing cluster, loaded and run by the `Boom` steps with
    /// `jobs` at once.
    async fn run_boom(vars: &str, steps: &str, jobs: usize) -> (Arc<Plan>, Vec<StepReport>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kubeconfig"), "").unwrap();
        let path = dir.path().join("plan.toml");
        let steps = steps.replace("{exec}", "[step.exec]\ncommand = [\"true\"]\n");
        std::fs::write(
            &path,
            format!(
                "[plan]\nname = \"boom\"\n{vars}[cluster]\nprovider = \"existing\"\n\
                 [cluster.existing]\nkubeconfig = \"kubeconfig\"\n{steps}"
            ),
        )
        .unwrap();
        let (_, plan) = crate::plan::load(&path, &|_| None);
        let plan = Arc::new(plan.unwrap_or_else(|_| panic!("the test plan loads")));
        let opts = RunOptions {
            jobs,
            fail_fast: false,
            only: BTreeSet::new(),
            skip: BTreeSet::new(),
            cache_dir: dir.path().join("cache"),
            artifacts: dir.path().join("artifacts"),
            cluster_logs: Vec::new(),
            reverse: false,
        };
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let runner = Runner::new(
            Arc::new(Boom),
            plan.clone(),
            None,
            opts,
            tx,
            CancellationToken::new(),
        );
        (plan, runner.run().await)
    }

    /// A panic in a step is that step's failure: with other steps running, the step that
    /// panicked is the one reported failed, with the panic's message; its dependent is
    /// skipped; the others finish.
    #[tokio::test]
    async fn a_panic_is_reported_as_its_own_steps_failure() {
        let (_, reports) = run_boom(
            "",
            "[[step]]\nid = \"first\"\n{exec}[[step]]\nid = \"boom\"\n{exec}\
             [[step]]\nid = \"slow\"\n{exec}[[step]]\nid = \"after\"\nneeds = [\"boom\"]\n{exec}",
            4,
        )
        .await;
        let outcomes: Vec<(&str, &str)> = reports
            .iter()
            .map(|r| (r.id.as_str(), r.outcome.label()))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("first", "changed"),
                ("boom", "failed"),
                ("slow", "changed"),
                ("after", "skipped")
            ]
        );
        let Outcome::Failed { cause } = &reports[1].outcome else {
            unreachable!()
        };
        assert_eq!(
            cause,
            "the step panicked (a bug in bookinfo-up): `boom` panics on purpose"
        );
    }

    /// A step whose `skip` is not empty (here through a variable) is reported skipped with
    /// that reason and never run; its dependents run as after a step left out by --skip. An
    /// empty `skip` (the variable's default) runs the step.
    #[tokio::test]
    async fn a_step_the_plan_skips_is_reported_with_its_reason_and_never_run() {
        // `boom` would panic if it ran.
        let (plan, reports) = run_boom(
            "[vars]\nwhy = \"no addons here\"\nnothing = \"\"\n",
            "[[step]]\nid = \"boom\"\nskip = \"${why}\"\n{exec}\
             [[step]]\nid = \"after\"\nneeds = [\"boom\"]\nskip = \"${nothing}\"\n{exec}",
            2,
        )
        .await;
        assert_eq!(plan.steps[0].skip.as_deref(), Some("no addons here"));
        assert_eq!(plan.steps[1].skip, None);
        let outcomes: Vec<(&str, String)> = reports
            .iter()
            .map(|r| {
                (
                    r.id.as_str(),
                    format!("{}: {}", r.outcome.label(), r.outcome.detail()),
                )
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                (
                    "boom",
                    "skipped: skipped by the plan: no addons here".to_string()
                ),
                ("after", "changed: done".to_string())
            ]
        );
    }
}
