//! Runner events: what reporters consume. The runner only ever sends these; it never prints.

use std::time::Duration;

use serde::Serialize;

use crate::plan::NextStep;
use crate::provider::{Problem, Severity};

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// The step changed the cluster (or the world) to reach its desired state.
    Changed { summary: String },
    /// Everything was already as desired; nothing was written.
    Unchanged { summary: String },
    /// The step failed; `cause` is the full error chain, one cause per line.
    Failed { cause: String },
    /// The step did not run.
    Skipped {
        #[serde(serialize_with = "display")]
        reason: SkipReason,
    },
}

/// Why a step did not run (or stopped without an outcome of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The plan's `skip` setting says why it does not run.
    ByPlan(String),
    /// `--skip` names it.
    LeftOut,
    /// `--only` names other steps.
    NotSelected,
    /// A step it needs (or, in teardown, one that needs it) failed or did not run.
    Blocked {
        step: String,
        failed: bool,
        teardown: bool,
    },
    /// The run was cancelled before it started.
    Cancelled,
    /// `--fail-fast`: another step failed before it started.
    FailFast,
    /// The run was cancelled while it ran.
    CancelledWhileRunning,
    /// `--fail-fast` stopped it while it ran.
    StoppedByFailFast,
    /// The run was cancelled while it waited to retry.
    CancelledBeforeRetry,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::ByPlan(why) => write!(f, "skipped by the plan: {why}"),
            SkipReason::LeftOut => f.write_str("left out by --skip"),
            SkipReason::NotSelected => f.write_str("not selected by --only"),
            SkipReason::Blocked {
                step,
                failed,
                teardown,
            } => write!(
                f,
                "{} `{step}`, which {}",
                if *teardown { "is needed by" } else { "needs" },
                if *failed { "failed" } else { "did not run" }
            ),
            SkipReason::Cancelled => f.write_str("the run was cancelled"),
            SkipReason::FailFast => f.write_str("--fail-fast: a step failed"),
            SkipReason::CancelledWhileRunning => f.write_str("cancelled while running"),
            SkipReason::StoppedByFailFast => f.write_str("stopped by --fail-fast"),
            SkipReason::CancelledBeforeRetry => f.write_str("cancelled while waiting to retry"),
        }
    }
}

fn display<S: serde::Serializer>(v: &impl std::fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Changed { .. } => "changed",
            Outcome::Unchanged { .. } => "unchanged",
            Outcome::Failed { .. } => "failed",
            Outcome::Skipped { .. } => "skipped",
        }
    }

    pub fn detail(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Outcome::Changed { summary } | Outcome::Unchanged { summary } => summary.into(),
            Outcome::Failed { cause } => cause.into(),
            Outcome::Skipped { reason } => reason.to_string().into(),
        }
    }
}

/// What a report is about: a step of the plan, or a phase of the run around the steps
/// (preflight, fetch, the cluster), which reports only when it fails or settles the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Step,
    Phase,
}

/// The result of one step (or of a phase that ended the run), as reported at its end.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub unit: Unit,
    pub id: String,
    pub kind: String,
    pub check: bool,
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    pub attempts: u32,
    /// Where the failure diagnostics of a failed step were written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<std::path::PathBuf>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// The whole run, for the final table, JSON and JUnit.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub plan: String,
    pub command: String,
    pub steps: Vec<StepReport>,
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    pub cancelled: bool,
    /// Where failure diagnostics were written, if any step failed.
    pub artifacts: Option<String>,
    /// Preflight problems that may cause trouble; the run went on.
    pub warnings: Vec<Problem>,
    /// Preflight problems that stopped the run before anything was created.
    pub errors: Vec<Problem>,
    /// How to use what the run brought up; only after a successful `up`.
    pub next_steps: Option<NextSteps>,
}

/// What a user does after a successful `up`: the line that points kubectl at the cluster,
/// then the plan's own pointers (`[[plan.next]]`: URLs, port-forwards).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextSteps {
    /// The engine's kubeconfig for the cluster.
    pub kubeconfig: String,
    /// The context in it, when the provider names one.
    pub context: Option<String>,
    /// The shell line to paste: `export KUBECONFIG=...`.
    pub kubectl: String,
    pub items: Vec<NextStep>,
}

impl RunReport {
    pub fn count(&self, label: &str) -> usize {
        self.steps
            .iter()
            .filter(|s| s.outcome.label() == label)
            .count()
    }

    pub fn success(&self) -> bool {
        !self.cancelled && self.count("failed") == 0
    }
}

/// Everything the runner tells reporters, in order.
#[derive(Debug, Clone)]
pub enum Event {
    RunStarted {
        plan: String,
        steps: usize,
    },
    /// A phase outside the steps: preflight, cluster creation, fetching manifests.
    Phase {
        name: String,
        message: String,
    },
    StepStarted {
        id: String,
        kind: String,
        attempt: u32,
    },
    /// What a running step is doing now ("waiting for 3/6 deployments").
    StepProgress {
        id: String,
        message: String,
    },
    /// A failed attempt that will be retried after `delay`.
    StepRetrying {
        id: String,
        attempt: u32,
        cause: String,
        delay: Duration,
    },
    /// A preflight problem, as soon as it is known.
    Problem {
        severity: Severity,
        problem: Problem,
    },
    StepFinished(StepReport),
    RunFinished(RunReport),
}
