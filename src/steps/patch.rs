//! PLACEHOLDER: being written.
use crate::error::{StepError, StepResult};
use crate::plan::model;
use crate::run::{Outcome, StepCtx};

pub async fn run(_a: &model::Patch, _ctx: &StepCtx) -> StepResult<Outcome> {
    Err(StepError::fatal("not yet"))
}
pub async fn teardown(_a: &model::Patch, _ctx: &StepCtx) -> StepResult<Outcome> {
    Err(StepError::fatal("not yet"))
}
pub async fn run_config_merge(_a: &model::ConfigMerge, _ctx: &StepCtx) -> StepResult<Outcome> {
    Err(StepError::fatal("not yet"))
}
pub async fn teardown_config_merge(_a: &model::ConfigMerge, _ctx: &StepCtx) -> StepResult<Outcome> {
    Err(StepError::fatal("not yet"))
}
