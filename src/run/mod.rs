//! Execution: the `Runner` walks the plan's DAG with a concurrency limit, timeouts, retries
//! and cancellation, and reports through `Event`s. It never prints.

mod context;
mod event;
mod runner;

pub use context::StepCtx;
pub use event::{Event, NextSteps, Outcome, RunReport, SkipReason, StepReport, Unit};
pub use runner::{RunOptions, Runner, finish};
