//! PLACEHOLDER: being written.
use crate::error::{StepError, StepResult};
use crate::plan::model;
use crate::run::{Outcome, StepCtx};

pub async fn run(_a: &model::Wait, _ctx: &StepCtx) -> StepResult<Outcome> {
    Err(StepError::fatal("not yet"))
}
