//! bookinfo-up: bring an Istio + Bookinfo playground to a converged state from a TOML plan.
//!
//! Pipeline: `plan::load` (parse and analyze) → `run::Runner` (concurrent, cancellable
//! execution of steps against a cluster from a `provider`) → `report` (reporters fed by
//! runner events). See ARCHITECTURE.md.

pub mod change;
pub mod cli;
pub mod diag;
pub mod embedded;
pub mod error;
pub mod invocation;
pub mod kube;
pub mod merge;
pub mod plan;
pub mod process;
pub mod provider;
pub mod report;
pub mod run;
pub mod session;
pub mod steps;
