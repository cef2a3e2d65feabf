//! `exec`: the escape hatch. Runs a command (in the plan's folder), unless a probe command
//! says there is nothing to do. The command runs in a process group of its own, killed
//! whole on cancellation.

use crate::error::{StepError, StepResult};
use crate::plan::model::Exec;
use crate::process::Tool;
use crate::run::{Outcome, StepCtx};

pub async fn run(e: &Exec, ctx: &StepCtx) -> StepResult<Outcome> {
    if !e.unless.is_empty() {
        ctx.progress(format!("checking `{}`", e.unless.join(" ")));
        let probe = tool(&e.unless, e, ctx).run(&ctx.cancel).await?;
        if probe.success {
            return Ok(Outcome::Unchanged {
                summary: format!("`{}` succeeded: nothing to do", e.unless.join(" ")),
            });
        }
    }
    ctx.progress(format!("running `{}`", e.command.join(" ")));
    let out = tool(&e.command, e, ctx).run(&ctx.cancel).await?;
    if !out.success {
        return Err(StepError::fatal(format!(
            "`{}` exited with {}:\n{}",
            e.command.join(" "),
            out.code
                .map(|c| format!("code {c}"))
                .unwrap_or_else(|| "a signal".into()),
            out.tail(20)
        )));
    }
    let last = out
        .stdout
        .trim_end()
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    Ok(Outcome::Changed {
        summary: if last.is_empty() { "ran".into() } else { last },
    })
}

fn tool(words: &[String], e: &Exec, ctx: &StepCtx) -> Tool {
    Tool::new(&words[0])
        .args(&words[1..])
        .dir(&e.dir)
        .env("BOOKINFO_UP_STEP", &ctx.id)
        .env("BOOKINFO_UP_PLAN", &ctx.plan_name)
}
