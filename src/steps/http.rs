//! `http`: a check that a URL answers with a status and body, and that every named variant
//! (say, the three reviews versions) shows up within a bounded number of requests. Failing
//! attempts are retried with backoff until the check's deadline.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::error::{StepError, StepResult};
use crate::plan::model::Http;
use crate::run::{Outcome, StepCtx};

/// One response, as the check sees it.
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Where the check stands after a round of requests.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass(String),
    /// Not yet: why, to retry until the deadline.
    Fail(String),
}

/// The client of checks and traffic. It never uses a proxy from the environment
/// (`HTTP_PROXY`, `ALL_PROXY`, ...): checks go to 127.0.0.1, where a user's corporate proxy
/// would answer for the cluster or not at all.
pub fn client() -> StepResult<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| StepError::fatal("cannot build an HTTP client").with_source(e))
}

pub async fn run(h: &Http, ctx: &StepCtx) -> StepResult<Outcome> {
    let client = client()?;
    let deadline = tokio::time::Instant::now() + h.deadline;
    let mut delay = Duration::from_millis(250);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let verdict = round(h, ctx, |n| get(h, ctx, &client, n)).await?;
        match verdict {
            Verdict::Pass(summary) => return Ok(Outcome::Unchanged { summary }),
            Verdict::Fail(why) => {
                if tokio::time::Instant::now() + delay > deadline {
                    return Err(StepError::fatal(format!(
                        "{} did not pass within {} ({attempt} attempts): {why}",
                        target(h),
                        humantime::format_duration(h.deadline)
                    )));
                }
                ctx.progress(format!("attempt {attempt}: {why}; retrying"));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctx.cancel.cancelled() => return Err(StepError::fatal("cancelled")),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn target(h: &Http) -> String {
    match &h.service {
        Some(s) => format!(
            "GET {} on service {}/{}:{}",
            h.url, s.namespace, s.name, s.port
        ),
        None => format!("GET {}", h.url),
    }
}

async fn get(
    h: &Http,
    ctx: &StepCtx,
    client: &reqwest::Client,
    _n: u32,
) -> Result<Response, String> {
    match &h.service {
        Some(s) => {
            let kube = ctx.kube().map_err(|e| e.to_string())?;
            let path = format!(
                "/api/v1/namespaces/{}/services/{}:{}/proxy{}",
                s.namespace, s.name, s.port, h.url
            );
            let req = http::Request::get(path)
                .body(Vec::new())
                .map_err(|e| e.to_string())?;
            match kube.client.request_text(req).await {
                Ok(body) => Ok(Response { status: 200, body }),
                Err(kube::Error::Api(status)) => Ok(Response {
                    status: status.code,
                    body: status.message.clone(),
                }),
                Err(e) => Err(e.to_string()),
            }
        }
        None => {
            let resp = client.get(&h.url).send().await.map_err(|e| {
                let mut s = e.to_string();
                if let Some(src) = std::error::Error::source(&e) {
                    s.push_str(&format!(": {src}"));
                }
                s
            })?;
            let status = resp.status().as_u16();
            let body = resp.text().await.map_err(|e| e.to_string())?;
            Ok(Response { status, body })
        }
    }
}

/// One round of the check: a single request, or up to `max_requests` looking for variants.
pub async fn round<F, Fut>(h: &Http, ctx: &StepCtx, mut send: F) -> StepResult<Verdict>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<Response, String>>,
{
    let mut seen = BTreeSet::new();
    let requests = if h.variants.is_empty() {
        1
    } else {
        h.max_requests
    };
    for n in 1..=requests {
        if ctx.cancel.is_cancelled() {
            return Err(StepError::fatal("cancelled"));
        }
        let resp = match send(n).await {
            Ok(r) => r,
            Err(e) => return Ok(Verdict::Fail(format!("request failed: {e}"))),
        };
        if let Some(why) = check_one(h, &resp) {
            return Ok(Verdict::Fail(why));
        }
        for (name, needle) in &h.variants {
            if resp.body.contains(needle.as_str()) {
                seen.insert(name.clone());
            }
        }
        if seen.len() == h.variants.len() {
            return Ok(Verdict::Pass(if h.variants.is_empty() {
                format!("{} answered {}", target(h), resp.status)
            } else {
                format!("saw all {} variants in {n} requests", h.variants.len())
            }));
        }
        if n % 5 == 0 {
            ctx.progress(format!(
                "seen {}/{} variants after {n} requests",
                seen.len(),
                h.variants.len()
            ));
        }
    }
    let missing: Vec<&str> = h
        .variants
        .keys()
        .filter(|k| !seen.contains(*k))
        .map(String::as_str)
        .collect();
    Ok(Verdict::Fail(format!(
        "variants {} not seen in {requests} requests",
        missing
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// Why a single response fails the check, if it does.
pub fn check_one(h: &Http, r: &Response) -> Option<String> {
    if r.status != h.status {
        return Some(format!("status {} instead of {}", r.status, h.status));
    }
    if let Some(needle) = &h.body_contains
        && !r.body.contains(needle.as_str())
    {
        return Some(format!("the body does not contain {needle:?}"));
    }
    None
}
