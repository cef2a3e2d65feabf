//! `traffic`: sends a number of requests spread evenly over a duration, so that metrics and
//! Kiali's graph show rates rather than a spike. Changes nothing in the cluster.

use crate::error::{StepError, StepResult};
use crate::plan::model::Traffic;
use crate::run::{Outcome, StepCtx};

pub async fn run(t: &Traffic, ctx: &StepCtx) -> StepResult<Outcome> {
    let client = super::http::client()?;
    let mut ticks = tokio::time::interval(t.over / t.requests.max(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut ok, mut failed) = (0u32, 0u32);
    let mut last_error = None;
    for n in 1..=t.requests {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = ctx.cancel.cancelled() => return Err(StepError::fatal("cancelled")),
        }
        match client.get(&t.url).send().await {
            Ok(r) if r.status().is_success() => ok += 1,
            Ok(r) => {
                failed += 1;
                last_error = Some(format!("status {}", r.status()));
            }
            Err(e) => {
                failed += 1;
                last_error = Some(e.to_string());
            }
        }
        if n % 50 == 0 {
            ctx.progress(format!("{n}/{} requests sent, {failed} failed", t.requests));
        }
    }
    // A few failures are normal while sidecars warm up; most failing means no traffic.
    if ok < t.requests / 2 {
        return Err(StepError::fatal(format!(
            "only {ok} of {} requests to {} succeeded; last error: {}",
            t.requests,
            t.url,
            last_error.unwrap_or_default()
        )));
    }
    Ok(Outcome::Unchanged {
        summary: format!("{ok}/{} requests succeeded", t.requests),
    })
}
