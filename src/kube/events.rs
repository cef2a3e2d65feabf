//! The latest core/v1 Events of an object, for failure explanations: `latest` lists them by
//! `involvedObject`, and `format` renders one per line, oldest first.

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;

use super::{Kube, api_error};
use crate::error::StepResult;

/// When an event last happened, whichever of its timestamps is set.
pub fn last_seen(e: &Event) -> Option<Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| {
            e.series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref())
                .map(|t| t.0)
        })
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

impl Kube {
    /// The `limit` most recent Events about `kind` `namespace/name`, oldest first.
    pub async fn latest_events(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
        limit: usize,
    ) -> StepResult<Vec<Event>> {
        let api: kube::Api<Event> = kube::Api::namespaced(self.client.clone(), namespace);
        let lp = ListParams::default().fields(&format!(
            "involvedObject.kind={kind},involvedObject.name={name}"
        ));
        let mut events = api
            .list(&lp)
            .await
            .map_err(|e| {
                api_error(
                    format!("cannot list the events of {kind} {namespace}/{name}"),
                    e,
                )
            })?
            .items;
        events.sort_by_key(last_seen);
        let skip = events.len().saturating_sub(limit);
        Ok(events.into_iter().skip(skip).collect())
    }
}

/// One line per event: age, type, reason, message and repeat count.
pub fn format(events: &[Event], now: Timestamp) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let age = last_seen(e)
                .map(|t| {
                    let secs = now.duration_since(t).as_secs().max(0);
                    format!(
                        "{} ago",
                        humantime::format_duration(std::time::Duration::from_secs(secs as u64))
                    )
                })
                .unwrap_or_else(|| "at an unknown time".into());
            let count = match e.count.or_else(|| e.series.as_ref().and_then(|s| s.count)) {
                Some(n) if n > 1 => format!(" (x{n})"),
                _ => String::new(),
            };
            format!(
                "{age} {} {}: {}{count}",
                e.type_.as_deref().unwrap_or("Normal"),
                e.reason.as_deref().unwrap_or("-"),
                e.message.as_deref().unwrap_or("").trim()
            )
        })
        .collect()
}
