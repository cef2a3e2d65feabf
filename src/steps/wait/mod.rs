//! The `wait` step: watch until Deployments have rolled out (`kubectl rollout status`
//! semantics), pods are ready, CRDs are established and admission webhooks serve. Every wait
//! is a kube-runtime watch with no timeout of its own: the runner bounds the step, and on
//! timeout calls `explain`, which says what is not ready, why, and the latest events.

mod explain;

pub use explain::explain;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, try_join_all};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::watcher::{self};

use crate::error::{StepError, StepResult};
use crate::kube::apply::Located;
use crate::kube::readiness::{self, Readiness};
use crate::kube::{FIELD_MANAGER, Kube, api_error, events};
use crate::plan::model;
use crate::run::{Outcome, StepCtx};

/// How long a probe object's kind may stay unknown to discovery.
const DISCOVERY_PATIENCE: Duration = Duration::from_secs(30);
/// Backoff between webhook probes while the webhook does not serve.
const PROBE_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));
/// How many not-ready objects, and events per object, `explain` shows.
const EXPLAIN_OBJECTS: usize = 3;
const EXPLAIN_EVENTS: usize = 5;
/// How long `explain` waits for a webhook probe.
const EXPLAIN_PROBE: Duration = Duration::from_secs(4);

pub async fn run(w: &model::Wait, ctx: &StepCtx) -> StepResult<Outcome> {
    let kube = ctx.kube()?;
    let board = Board::new(ctx, w);
    let mut waits: Vec<BoxFuture<'_, StepResult<Done>>> = Vec::new();
    for name in &w.crds {
        waits.push(crd(kube, name, &board).boxed());
    }
    for (ns, name) in &w.rollout {
        waits.push(rollout(kube, ns, name, &board).boxed());
    }
    if let Some(p) = &w.pods {
        waits.push(pods(kube, p, &board).boxed());
    }
    if let Some(h) = &w.webhook {
        waits.push(webhook(kube, h, &board).boxed());
    }
    if waits.is_empty() {
        return Err(StepError::fatal("nothing to wait for"));
    }
    let done = try_join_all(waits).await?;

    let deployments: BTreeSet<&String> = done
        .iter()
        .filter_map(|d| {
            if let Done::Deployments(n) = d {
                Some(n)
            } else {
                None
            }
        })
        .flatten()
        .collect();
    let pods: usize = done
        .iter()
        .map(|d| if let Done::Pods(n) = d { *n } else { 0 })
        .sum();
    let crds = done.iter().filter(|d| matches!(d, Done::Crd)).count();
    let denied = done.iter().find_map(|d| match d {
        Done::Probe(name) => Some(name),
        _ => None,
    });
    let mut parts = Vec::new();
    if !w.rollout.is_empty() {
        parts.push(format!(
            "{} deployment{} rolled out",
            deployments.len(),
            plural(deployments.len())
        ));
    }
    if w.pods.is_some() {
        parts.push(format!("{pods} pod{} ready", plural(pods)));
    }
    if crds > 0 {
        parts.push(format!("{crds} CRD{} established", plural(crds)));
    }
    if let Some(name) = denied {
        parts.push(format!("webhook {name} serving (it denied the probe)"));
    }
    Ok(Outcome::Unchanged {
        summary: parts.join(", "),
    })
}

/// What one wait found ready.
enum Done {
    /// `namespace/name` of each Deployment rolled out.
    Deployments(Vec<String>),
    Pods(usize),
    Crd,
    /// The webhook of this name denied the probe.
    Probe(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    Crds,
    Deployments,
    Pods,
    Webhooks,
}

impl Category {
    fn label(self) -> &'static str {
        match self {
            Category::Crds => "CRDs",
            Category::Deployments => "deployments",
            Category::Pods => "pods",
            Category::Webhooks => "webhook probes",
        }
    }
}

/// What is not ready and why, as the concurrent waits last saw it. Every change is sent as
/// step progress, so the latest state is with the reporters even after the runner's timeout
/// drops the waits.
struct Board<'a> {
    ctx: &'a StepCtx,
    /// Deployments are named without their namespace when the step has only one.
    one_namespace: bool,
    state: Mutex<BoardState>,
}

#[derive(Default)]
struct BoardState {
    /// Per wait: its category and its objects, `None` when ready, else why not.
    scopes: BTreeMap<String, (Category, BTreeMap<String, Option<String>>)>,
    last: String,
}

impl<'a> Board<'a> {
    fn new(ctx: &'a StepCtx, w: &model::Wait) -> Self {
        let namespaces: BTreeSet<&str> = w.rollout.iter().map(|(ns, _)| ns.as_str()).collect();
        Self {
            ctx,
            one_namespace: namespaces.len() <= 1,
            state: Mutex::new(BoardState::default()),
        }
    }

    fn deployment_name(&self, ns: &str, name: &str) -> String {
        if self.one_namespace {
            name.to_string()
        } else {
            format!("{ns}/{name}")
        }
    }

    /// Replaces what the wait `scope` reports.
    fn set(&self, scope: &str, category: Category, items: BTreeMap<String, Option<String>>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.scopes.insert(scope.to_string(), (category, items));
        let message = describe(&state.scopes);
        if message != state.last && !message.is_empty() {
            state.last = message.clone();
            self.ctx.progress(message);
        }
    }
}

/// "waiting for 3/6 deployments: reviews-v2 (1/2 ready), …; 1/1 CRDs: …"
fn describe(scopes: &BTreeMap<String, (Category, BTreeMap<String, Option<String>>)>) -> String {
    let mut by_category: BTreeMap<Category, BTreeMap<&str, &Option<String>>> = BTreeMap::new();
    for (category, items) in scopes.values() {
        let entry = by_category.entry(*category).or_default();
        for (name, status) in items {
            entry.insert(name, status);
        }
    }
    let mut parts = Vec::new();
    for (category, items) in by_category {
        let waiting: Vec<String> = items
            .iter()
            .filter_map(|(name, status)| status.as_ref().map(|why| format!("{name} ({why})")))
            .collect();
        if waiting.is_empty() {
            continue;
        }
        let shown = waiting
            .iter()
            .take(EXPLAIN_OBJECTS)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let more = if waiting.len() > EXPLAIN_OBJECTS {
            ", …"
        } else {
            ""
        };
        parts.push(format!(
            "{}/{} {}: {shown}{more}",
            waiting.len(),
            items.len(),
            category.label()
        ));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("waiting for {}", parts.join("; "))
    }
}

async fn crd(kube: &Kube, name: &str, board: &Board<'_>) -> StepResult<Done> {
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(kube.client.clone());
    let scope = format!("crd {name}");
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let watch = crate::kube::watch::watch_until(api, config, |store| {
        let status = match store.get(name).map(readiness::crd) {
            None => Some("not found yet".to_string()),
            Some(Readiness::Ready) => None,
            Some(Readiness::Waiting(why)) => Some(why),
            Some(Readiness::Failed(why)) => {
                return Some(Err(StepError::fatal(format!(
                    "CRD {name} will not become established: {why}"
                ))));
            }
        };
        let ready = status.is_none();
        board.set(
            &scope,
            Category::Crds,
            BTreeMap::from([(name.to_string(), status)]),
        );
        ready.then_some(Ok(Done::Crd))
    });
    tokio::select! {
        done = watch => done,
        never = crate::kube::watch::nudge_stuck_crd(kube, name) => match never {},
    }
}

async fn rollout(kube: &Kube, ns: &str, name: &str, board: &Board<'_>) -> StepResult<Done> {
    let api: kube::Api<Deployment> = kube::Api::namespaced(kube.client.clone(), ns);
    let scope = format!("rollout {ns}/{name}");
    let every = name == "*";
    let config = if every {
        watcher::Config::default()
    } else {
        watcher::Config::default().fields(&format!("metadata.name={name}"))
    };
    crate::kube::watch::watch_until(api, config, |store| {
        if store.is_empty() {
            let (what, why) = if every {
                (format!("{ns}/*"), "no Deployment in the namespace yet")
            } else {
                (board.deployment_name(ns, name), "not found yet")
            };
            board.set(
                &scope,
                Category::Deployments,
                BTreeMap::from([(what, Some(why.into()))]),
            );
            return None;
        }
        let mut items = BTreeMap::new();
        for (n, d) in store {
            let status = match readiness::deployment(d) {
                Readiness::Ready => None,
                Readiness::Waiting(why) => Some(why),
                Readiness::Failed(why) => {
                    return Some(Err(StepError::fatal(format!("deployment {ns}/{n} {why}"))));
                }
            };
            items.insert(board.deployment_name(ns, n), status);
        }
        let ready = items.values().all(Option::is_none);
        board.set(&scope, Category::Deployments, items);
        ready.then(|| {
            Ok(Done::Deployments(
                store.keys().map(|n| format!("{ns}/{n}")).collect(),
            ))
        })
    })
    .await
}

async fn pods(kube: &Kube, p: &model::PodsReady, board: &Board<'_>) -> StepResult<Done> {
    let api: kube::Api<Pod> = kube::Api::namespaced(kube.client.clone(), &p.namespace);
    let scope = format!("pods {}", p.namespace);
    let mut config = watcher::Config::default();
    if let Some(selector) = &p.selector {
        config = config.labels(selector);
    }
    crate::kube::watch::watch_until(api, config, |store| {
        let live: Vec<(&String, &Pod)> = store
            .iter()
            .filter(|(_, pod)| !readiness::pod_is_gone(pod))
            .collect();
        if live.is_empty() {
            let what = pods_display(p);
            board.set(
                &scope,
                Category::Pods,
                BTreeMap::from([(what, Some("no pods yet".into()))]),
            );
            return None;
        }
        let items: BTreeMap<String, Option<String>> = live
            .iter()
            .map(|(n, pod)| {
                let status = match readiness::pod(pod, p.containers, p.container.as_deref()) {
                    Readiness::Ready => None,
                    Readiness::Waiting(why) | Readiness::Failed(why) => Some(why),
                };
                ((*n).clone(), status)
            })
            .collect();
        let ready = items.values().all(Option::is_none);
        let count = items.len();
        board.set(&scope, Category::Pods, items);
        ready.then_some(Ok(Done::Pods(count)))
    })
    .await
}

fn pods_display(p: &model::PodsReady) -> String {
    match &p.selector {
        Some(s) => format!("{} pods ({s})", p.namespace),
        None => format!("{} pods", p.namespace),
    }
}

/// Probes the webhook with a server-side dry-run apply of an object it must deny, until it
/// does: only a denial by that webhook proves it serves. An admitted probe proves nothing, since
/// a webhook is often registered with `failurePolicy: Ignore` until its server patches it to
/// `Fail` (Istio's are), and then lets everything through while it does not answer. Retried
/// with backoff while the probe is admitted or the call fails; refused by anything else (the
/// schema, another webhook), the probe itself is wrong.
async fn webhook(kube: &Kube, h: &model::WebhookProbe, board: &Board<'_>) -> StepResult<Done> {
    let target = kube
        .locate(&h.probe.object, "default", DISCOVERY_PATIENCE)
        .await?;
    let scope = format!("webhook {}", h.name);
    let mut delay = PROBE_BACKOFF.0;
    loop {
        let why = match probe(&target, &h.name).await {
            Probe::Denied => {
                board.set(
                    &scope,
                    Category::Webhooks,
                    BTreeMap::from([(h.name.clone(), None)]),
                );
                return Ok(Done::Probe(h.name.clone()));
            }
            Probe::NotServing(why) => why,
            Probe::Refused(e) => {
                return Err(api_error(
                    format!(
                        "the webhook probe {} was refused, but not by webhook {}",
                        target.display(),
                        h.name
                    ),
                    e,
                ));
            }
        };
        board.set(
            &scope,
            Category::Webhooks,
            BTreeMap::from([(h.name.clone(), Some(why))]),
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(PROBE_BACKOFF.1);
    }
}

/// What one dry run of a webhook probe showed.
enum Probe {
    /// The webhook denied it: it serves.
    Denied,
    /// The webhook does not serve yet, and why.
    NotServing(String),
    /// Something else refused the probe.
    Refused(kube::Error),
}

async fn probe(target: &Located, webhook: &str) -> Probe {
    let pp = PatchParams::apply(FIELD_MANAGER).force().dry_run();
    let result = target
        .api
        .patch(&target.name, &pp, &Patch::Apply(&target.object))
        .await;
    match result {
        Ok(_) => Probe::NotServing(format!(
            "not serving: the probe was admitted, so webhook {webhook} did not answer (it is \
             not registered yet, or its failurePolicy lets requests through while it is down)"
        )),
        Err(e) if denied_by(&e, webhook) => Probe::Denied,
        Err(e) if webhook_not_serving(&e) => {
            Probe::NotServing(format!("not serving: {}", short(&e)))
        }
        Err(e) => Probe::Refused(e),
    }
}

/// Whether an API error is a denial by the admission webhook `name`: the API server words it
/// `admission webhook "NAME" denied the request`.
fn denied_by(e: &kube::Error, name: &str) -> bool {
    matches!(e, kube::Error::Api(s)
        if s.message.contains(&format!("admission webhook \"{name}\" denied the request")))
}

/// Whether an error says an admission webhook is not serving yet, rather than that it
/// refused the object.
fn webhook_not_serving(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            let m = s.message.to_lowercase();
            s.code >= 500
                || [
                    "failed calling webhook",
                    "connection refused",
                    "no endpoints available",
                    "context deadline exceeded",
                    "i/o timeout",
                ]
                .iter()
                .any(|needle| m.contains(needle))
        }
        // The API server itself could not be reached for a moment.
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

fn short(e: &kube::Error) -> String {
    let text = match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    };
    let mut text: String = text.chars().take(160).collect();
    if text.len() < e.to_string().len() {
        text.push('…');
    }
    text
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_message_names_what_waits() {
        let mut scopes = BTreeMap::new();
        scopes.insert(
            "rollout bookinfo/*".to_string(),
            (
                Category::Deployments,
                BTreeMap::from([
                    ("details-v1".to_string(), None),
                    ("reviews-v2".to_string(), Some("1/2 ready".to_string())),
                    ("ratings-v1".to_string(), None),
                ]),
            ),
        );
        assert_eq!(
            describe(&scopes),
            "waiting for 1/3 deployments: reviews-v2 (1/2 ready)"
        );
        scopes.insert(
            "crd gateways".to_string(),
            (
                Category::Crds,
                BTreeMap::from([("gateways.networking.istio.io".to_string(), None)]),
            ),
        );
        assert_eq!(
            describe(&scopes),
            "waiting for 1/3 deployments: reviews-v2 (1/2 ready)"
        );
        scopes
            .get_mut("rollout bookinfo/*")
            .unwrap()
            .1
            .insert("reviews-v2".into(), None);
        assert_eq!(describe(&scopes), "");
    }

    #[test]
    fn webhook_errors_that_mean_not_serving() {
        let status = |code: u16, message: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, "InternalError")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(webhook_not_serving(&status(
            500,
            "Internal error occurred: failed calling webhook \"validation.istio.io\": connection refused"
        )));
        assert!(!webhook_not_serving(&status(
            400,
            "admission webhook \"validation.istio.io\" denied the request"
        )));
    }
}
