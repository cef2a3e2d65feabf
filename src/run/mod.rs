//! Execution: the `Runner` walks the plan's DAG with a concurrency limit, timeouts, retries
//! and cancellation, and reports through `Event`s. It never prints.

mod context;
mod event;
mod runner;

pub use context::StepCtx;
pub use event::{Event, NextSteps, Outcome, RunReport, SkipReason, StepReport, Unit};
pub use runner::{RunOptions, Runner, finish};

use futures::future::BoxFuture;

use crate::error::StepResult;
use crate::plan::Step;

/// What running a step means, given to the `Runner` by its caller (`steps::Steps` in the
/// product). The runner schedules, times out, retries, cancels and reports; it does not know
/// what a step does.
pub trait StepWork: Send + Sync {
    /// One attempt at reaching the step's desired state.
    fn run<'a>(&'a self, step: &'a Step, ctx: &'a StepCtx) -> BoxFuture<'a, StepResult<Outcome>>;
    /// One attempt at undoing the step (`bookinfo-down`).
    fn teardown<'a>(
        &'a self,
        step: &'a Step,
        ctx: &'a StepCtx,
    ) -> BoxFuture<'a, StepResult<Outcome>>;
    /// What the step says when it runs out of time, beyond "timed out".
    fn explain_timeout<'a>(
        &'a self,
        step: &'a Step,
        kube: &'a crate::kube::Kube,
    ) -> BoxFuture<'a, Option<String>>;
}
