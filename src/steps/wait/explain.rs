//! What a timed-out wait step says: for each thing it waited for that is not ready, why, with
//! the latest events of the objects concerned (and, for pods without their sidecar, why
//! injection did not happen). The runner calls `explain` when the step runs out of time.

use super::*;

/// What of `w` is not ready now and why, with the latest events of those objects (and of the
/// pods of a Deployment that is not ready), one line each. The runner calls this when the
/// step times out, to build its error.
pub async fn explain(w: &model::Wait, kube: &Kube) -> String {
    let now = Timestamp::now();
    let mut out = Vec::new();
    for name in &w.crds {
        let api: kube::Api<CustomResourceDefinition> = kube::Api::all(kube.client.clone());
        match api.get_opt(name).await {
            Ok(None) => out.push(format!("CRD {name}: does not exist")),
            Ok(Some(c)) => match readiness::crd(&c) {
                Readiness::Ready => {}
                Readiness::Waiting(why) | Readiness::Failed(why) => {
                    out.push(format!("CRD {name}: {why}"))
                }
            },
            Err(e) => out.push(format!("CRD {name}: cannot read it: {e}")),
        }
    }
    for (ns, name) in &w.rollout {
        explain_rollout(kube, ns, name, now, &mut out).await;
    }
    if let Some(p) = &w.pods {
        explain_pods(kube, p, now, &mut out).await;
    }
    if let Some(h) = &w.webhook {
        match kube
            .locate(&h.probe.object, "default", Duration::ZERO)
            .await
        {
            Err(e) => out.push(format!(
                "webhook {}: its probe {} cannot be sent: {}",
                h.name,
                crate::steps::object_name(&h.probe.object, None),
                e.message
            )),
            // The API server waits up to the webhook's own timeout (10 s for Istio's) for a
            // webhook that does not answer: the explanation does not wait that long.
            Ok(target) => match tokio::time::timeout(EXPLAIN_PROBE, probe(&target, &h.name)).await {
                Ok(Probe::Denied) => {}
                Ok(Probe::NotServing(why)) => out.push(format!("webhook {}: {why}", h.name)),
                Ok(Probe::Refused(e)) => out.push(format!(
                    "webhook {}: the probe {} was refused by something else: {}",
                    h.name,
                    target.display(),
                    short(&e)
                )),
                Err(_) => out.push(format!(
                    "webhook {}: not serving: a dry run of the probe {} got no answer within {}s \
                     (the API server is still waiting for the webhook: is its server running?)",
                    h.name,
                    target.display(),
                    EXPLAIN_PROBE.as_secs()
                )),
            },
        }
    }
    if out.is_empty() {
        "everything this step waits for is ready now".to_string()
    } else {
        out.join("\n")
    }
}

async fn explain_rollout(kube: &Kube, ns: &str, name: &str, now: Timestamp, out: &mut Vec<String>) {
    let api: kube::Api<Deployment> = kube::Api::namespaced(kube.client.clone(), ns);
    let deployments = if name == "*" {
        match api.list(&ListParams::default()).await {
            Ok(list) if list.items.is_empty() => {
                out.push(format!("namespace {ns} has no Deployment"));
                return;
            }
            Ok(list) => list.items,
            Err(e) => {
                out.push(format!("cannot list the deployments of {ns}: {e}"));
                return;
            }
        }
    } else {
        match api.get_opt(name).await {
            Ok(Some(d)) => vec![d],
            Ok(None) => {
                out.push(format!("deployment {ns}/{name}: does not exist"));
                return;
            }
            Err(e) => {
                out.push(format!("deployment {ns}/{name}: cannot read it: {e}"));
                return;
            }
        }
    };
    for d in deployments {
        let why = match readiness::deployment(&d) {
            Readiness::Ready => continue,
            Readiness::Waiting(why) | Readiness::Failed(why) => why,
        };
        let dname = d.metadata.name.clone().unwrap_or_default();
        out.push(format!("deployment {ns}/{dname}: {why}"));
        push_events(kube, ns, "Deployment", &dname, now, out).await;
        let Some(selector) = d
            .spec
            .as_ref()
            .and_then(|s| Selector::try_from(s.selector.clone()).ok())
        else {
            continue;
        };
        let lp = ListParams::default().labels_from(&selector);
        // The newest ReplicaSet says why pods could not be created (quota, admission).
        let replicasets: kube::Api<ReplicaSet> = kube::Api::namespaced(kube.client.clone(), ns);
        if let Ok(list) = replicasets.list(&lp).await
            && let Some(rs) = list
                .items
                .iter()
                .filter(|rs| {
                    rs.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.uid == d.metadata.uid.clone().unwrap_or_default())
                })
                .max_by_key(|rs| revision(rs))
        {
            push_events(
                kube,
                ns,
                "ReplicaSet",
                rs.metadata.name.as_deref().unwrap_or_default(),
                now,
                out,
            )
            .await;
        }
        let pods: kube::Api<Pod> = kube::Api::namespaced(kube.client.clone(), ns);
        match pods.list(&lp).await {
            Ok(list) => {
                for pod in list.items.iter().filter(|p| !readiness::pod_is_gone(p)) {
                    if let Readiness::Waiting(why) = readiness::pod(pod, None, None) {
                        let pname = pod.metadata.name.clone().unwrap_or_default();
                        out.push(format!("  pod {ns}/{pname}: {why}"));
                        push_events(kube, ns, "Pod", &pname, now, out).await;
                    }
                }
            }
            Err(e) => out.push(format!("  cannot list its pods: {e}")),
        }
    }
}

async fn explain_pods(kube: &Kube, p: &model::PodsReady, now: Timestamp, out: &mut Vec<String>) {
    let api: kube::Api<Pod> = kube::Api::namespaced(kube.client.clone(), &p.namespace);
    let mut lp = ListParams::default();
    if let Some(s) = &p.selector {
        lp = lp.labels(s);
    }
    let list = match api.list(&lp).await {
        Ok(list) => list.items,
        Err(e) => {
            out.push(format!("cannot list {}: {e}", pods_display(p)));
            return;
        }
    };
    let live: Vec<&Pod> = list
        .iter()
        .filter(|pod| !readiness::pod_is_gone(pod))
        .collect();
    if live.is_empty() {
        out.push(format!("{}: none exist", pods_display(p)));
        return;
    }
    let waiting: Vec<(&Pod, String)> = live
        .iter()
        .filter_map(
            |pod| match readiness::pod(pod, p.containers, p.container.as_deref()) {
                Readiness::Ready => None,
                Readiness::Waiting(why) | Readiness::Failed(why) => Some((*pod, why)),
            },
        )
        .collect();
    if waiting.is_empty() {
        return;
    }
    out.push(format!(
        "{}: {}/{} not ready",
        pods_display(p),
        waiting.len(),
        live.len()
    ));
    for (pod, why) in waiting.iter().take(EXPLAIN_OBJECTS) {
        let pname = pod.metadata.name.clone().unwrap_or_default();
        out.push(format!("  pod {}/{pname}: {why}", p.namespace));
        push_events(kube, &p.namespace, "Pod", &pname, now, out).await;
    }
    let uninjected = p.container.is_some()
        && waiting.iter().any(|(pod, _)| {
            !readiness::injected(pod)
                && !readiness::pod(pod, None, p.container.as_deref()).is_ready()
        });
    if uninjected {
        out.push(format!(
            "  injection: {}",
            explain_injection(kube, &p.namespace).await
        ));
    }
    if waiting.len() > EXPLAIN_OBJECTS {
        out.push(format!("  and {} more", waiting.len() - EXPLAIN_OBJECTS));
    }
}

/// Why pods of `ns` may have no sidecar: the namespace's labels, and the mutating webhooks
/// that select it, with the Service each calls and what happens when it does not answer.
async fn explain_injection(kube: &Kube, ns: &str) -> String {
    let namespaces: kube::Api<Namespace> = kube::Api::all(kube.client.clone());
    let labels = match namespaces.get_opt(ns).await {
        Ok(Some(n)) => n.metadata.labels.unwrap_or_default(),
        Ok(None) => return format!("namespace {ns} does not exist"),
        Err(e) => return format!("cannot read namespace {ns}: {e}"),
    };
    let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let configs: kube::Api<MutatingWebhookConfiguration> = kube::Api::all(kube.client.clone());
    let list = match configs.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) => return format!("cannot list the mutating webhooks: {e}"),
    };
    let mut hooks = Vec::new();
    for c in &list {
        for w in c.webhooks.iter().flatten() {
            let selected = w
                .namespace_selector
                .as_ref()
                .is_none_or(|s| Selector::try_from(s.clone()).is_ok_and(|s| s.matches(&labels)));
            if !selected {
                continue;
            }
            let target = match &w.client_config.service {
                Some(s) => format!("Service {}/{}", s.namespace, s.name),
                None => w.client_config.url.clone().unwrap_or_default(),
            };
            hooks.push(format!(
                "{} ({}, calls {target}, failurePolicy {})",
                w.name,
                c.metadata.name.as_deref().unwrap_or_default(),
                w.failure_policy.as_deref().unwrap_or("Fail")
            ));
        }
    }
    format!(
        "pods were created without the sidecar; namespace {ns} has labels [{}]; {}",
        shown.join(", "),
        if hooks.is_empty() {
            "no mutating webhook selects it (is istiod installed, and the namespace labelled \
             before the pods were created?)"
                .to_string()
        } else {
            format!(
                "webhooks that select it: {}; a pod created while its webhook did not answer \
                 keeps no sidecar until it is recreated",
                hooks.join("; ")
            )
        }
    )
}

async fn push_events(
    kube: &Kube,
    ns: &str,
    kind: &str,
    name: &str,
    now: Timestamp,
    out: &mut Vec<String>,
) {
    match kube.latest_events(ns, kind, name, EXPLAIN_EVENTS).await {
        Ok(list) => {
            for line in events::format(&list, now) {
                out.push(format!("    {kind} {name}: {line}"));
            }
        }
        Err(e) => out.push(format!("    {}", e.message)),
    }
}

fn revision(rs: &ReplicaSet) -> u64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("deployment.kubernetes.io/revision"))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}
