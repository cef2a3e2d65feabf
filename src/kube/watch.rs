//! Generic waits on the API: `watch_until`, a watch with a local copy of what it selects that
//! ends when a judge says so, and `nudge_stuck_crd`, which gets a CRD that an API server
//! restart left `Installing` established. Steps build their waits from these.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Resource;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use serde::de::DeserializeOwned;

use super::Kube;
use crate::error::{StepError, StepResult};

/// Watches the objects `api` and `config` select, keeping a local copy of them, and asks
/// `judge` after every change whether the wait is over. Watch errors are retried with the
/// watcher's backoff, except a refusal to list or watch at all.
pub async fn watch_until<K, T>(
    api: kube::Api<K>,
    config: watcher::Config,
    mut judge: impl FnMut(&BTreeMap<String, K>) -> Option<StepResult<T>>,
) -> StepResult<T>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut stream = pin!(watcher(api, config).default_backoff());
    let mut store: BTreeMap<String, K> = BTreeMap::new();
    let mut listing: BTreeMap<String, K> = BTreeMap::new();
    let mut synced = false;
    let name = |o: &K| o.meta().name.clone().unwrap_or_default();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => {
                listing.clear();
                continue;
            }
            Ok(Event::InitApply(o)) => {
                listing.insert(name(&o), o);
                continue;
            }
            Ok(Event::InitDone) => {
                store = std::mem::take(&mut listing);
                synced = true;
            }
            Ok(Event::Apply(o)) => {
                store.insert(name(&o), o);
            }
            Ok(Event::Delete(o)) => {
                store.remove(&name(&o));
            }
            Err(
                watcher::Error::InitialListFailed(kube::Error::Api(s))
                | watcher::Error::WatchStartFailed(kube::Error::Api(s)),
            ) if s.code == 403 || s.code == 401 => {
                return Err(StepError::fatal(format!(
                    "not allowed to watch: {}",
                    s.message
                )));
            }
            Err(e) => {
                tracing::debug!(error = %e, "watch interrupted; resuming");
                continue;
            }
        }
        if synced && let Some(verdict) = judge(&store) {
            return verdict;
        }
    }
    Err(StepError::transient("the watch ended"))
}

/// How long a CRD may stay `Installing` before `nudge_stuck_crd` touches it. A single API
/// server establishes a CRD at once, several within 5 s.
const CRD_NUDGE_AFTER: Duration = Duration::from_secs(10);
/// The annotation `nudge_stuck_crd` adds and removes.
const CRD_NUDGE_ANNOTATION: &str = "bookinfo-up.io/establish";

/// Gets a CRD stuck at `Established=False` (reason `Installing`) established; never returns.
///
/// An API server that restarts while a CRD is `Installing` never establishes it: its
/// establishing controller is queued only by CRD *update* events
/// (apiextensions-apiserver's `crdHandler.updateCustomResourceDefinition`), and after a
/// restart the CRD is only listed. Any update queues it, so a CRD still not established
/// `CRD_NUDGE_AFTER` after its names were accepted gets an annotation added and removed again:
/// two updates that leave its content as it was.
pub async fn nudge_stuck_crd(kube: &Kube, name: &str) -> std::convert::Infallible {
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(kube.client.clone());
    loop {
        tokio::time::sleep(CRD_NUDGE_AFTER).await;
        let Ok(Some(crd)) = api.get_opt(name).await else {
            continue;
        };
        let conditions = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let accepted = conditions
            .iter()
            .any(|c| c.type_ == "NamesAccepted" && c.status == "True");
        let established = conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if !accepted || established {
            continue;
        }
        tracing::debug!(
            crd = name,
            "CRD names accepted but not established; touching it"
        );
        // A task of its own, so that the CRD becoming established (which ends the wait and
        // drops this future) cannot come between the two patches and leave the annotation.
        let (api, name) = (api.clone(), name.to_string());
        let _ = tokio::spawn(async move {
            for value in [serde_json::json!("1"), serde_json::Value::Null] {
                let patch =
                    serde_json::json!({"metadata": {"annotations": {CRD_NUDGE_ANNOTATION: value}}});
                let _ = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
        })
        .await;
    }
}
