//! Readiness rules, as pure functions of one object: `deployment` (the rules of
//! `kubectl rollout status`), `pod` (the Ready condition, container counts) and `crd`
//! (Established). Each returns a `Readiness`; waits and failure explanations share them.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// Where an object stands on its way to ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not ready yet, and why, in a few words ("1/2 available").
    Waiting(String),
    /// Will not become ready without a change: waiting on is pointless.
    Failed(String),
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }
}

/// A Deployment's rollout, as `kubectl rollout status` judges it: the controller has observed
/// the latest spec, every desired replica is updated, ready and available, no old replica is
/// left, and a Progressing condition with reason `ProgressDeadlineExceeded` is a failure.
pub fn deployment(d: &Deployment) -> Readiness {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(status) = &d.status else {
        return Readiness::Waiting("no status yet".into());
    };
    if status.observed_generation.unwrap_or(0) < generation {
        return Readiness::Waiting("spec update not observed yet".into());
    }
    // Only a condition about the observed generation counts, as in kubectl.
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing")
        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        return Readiness::Failed(format!(
            "exceeded its progress deadline{}",
            c.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let replicas = status.replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < desired {
        return Readiness::Waiting(format!("{updated}/{desired} replicas updated"));
    }
    if replicas > updated {
        return Readiness::Waiting(format!(
            "{} old replicas pending termination",
            replicas - updated
        ));
    }
    if ready < desired || available < desired {
        return Readiness::Waiting(format!("{}/{desired} ready", ready.min(available)));
    }
    if updated != desired || replicas != desired || ready != desired || available != desired {
        // Scaled down with surplus pods not yet gone.
        return Readiness::Waiting(format!("{replicas} replicas, {desired} desired"));
    }
    Readiness::Ready
}

/// Whether a pod no longer counts: it finished, or it is being deleted.
pub fn pod_is_gone(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
        || matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// The containers that run for a pod's whole life, in order: its containers, then its native
/// sidecars (init containers with `restartPolicy: Always`, which Kubernetes >= 1.29 keeps
/// running beside the containers; Istio injects `istio-proxy` that way when every node's
/// kubelet is 1.33 or newer). Each with its status, from `containerStatuses` or
/// `initContainerStatuses`, once the kubelet has reported one.
pub fn running_containers(p: &Pod) -> Vec<(&str, Option<&ContainerStatus>)> {
    let Some(spec) = &p.spec else {
        return Vec::new();
    };
    let status = p.status.as_ref();
    fn find<'p>(list: Option<&'p Vec<ContainerStatus>>, name: &str) -> Option<&'p ContainerStatus> {
        list.into_iter().flatten().find(|s| s.name == name)
    }
    let containers = spec.containers.iter().map(|c| {
        let st = find(status.and_then(|s| s.container_statuses.as_ref()), &c.name);
        (c.name.as_str(), st)
    });
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| {
            let st = find(
                status.and_then(|s| s.init_container_statuses.as_ref()),
                &c.name,
            );
            (c.name.as_str(), st)
        });
    containers.chain(sidecars).collect()
}

/// Whether a running container is ready: a native sidecar must also have started.
fn container_ready(s: Option<&ContainerStatus>) -> bool {
    s.is_some_and(|s| s.ready && s.started != Some(false))
}

/// A pod is ready when its Ready condition is True (not when its phase is Running). With
/// `containers`, it must run exactly that many containers (native sidecars included), all
/// ready; with `container`, one of them must have that name (a sidecar such as
/// `istio-proxy`, as a container or as a native sidecar) and be ready. One rule for a real
/// kubelet and for kwok's, whichever way the sidecar was injected.
pub fn pod(p: &Pod, containers: Option<u32>, container: Option<&str>) -> Readiness {
    let running = running_containers(p);
    let names: Vec<&str> = running.iter().map(|(n, _)| *n).collect();
    let status = p.status.as_ref();
    if let Some(n) = containers
        && names.len() != n as usize
    {
        return Readiness::Waiting(format!(
            "has {} container{} ({}), expected {n}",
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        ));
    }
    if let Some(name) = container
        && !names.contains(&name)
    {
        return Readiness::Waiting(format!(
            "has no container `{name}` ({}){}",
            names.join(", "),
            if injected(p) {
                ""
            } else {
                ": no sidecar was injected (no `sidecar.istio.io/status` annotation)"
            }
        ));
    }
    let conditions = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let ready = conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        if let Some(c) = conditions
            .iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        {
            return Readiness::Waiting(format!(
                "not scheduled{}",
                c.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        }
        let waiting: Vec<String> = running
            .iter()
            .filter(|(_, s)| !container_ready(*s))
            .map(|(name, s)| {
                let why = s.and_then(|s| s.state.as_ref()).and_then(|st| {
                    st.waiting
                        .as_ref()
                        .map(|w| w.reason.clone().unwrap_or_else(|| "waiting".into()))
                        .or_else(|| {
                            st.terminated
                                .as_ref()
                                .map(|t| t.reason.clone().unwrap_or_else(|| "terminated".into()))
                        })
                });
                match why {
                    Some(why) => format!("{name} {why}"),
                    None => format!("{name} not ready"),
                }
            })
            .collect();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        return Readiness::Waiting(if waiting.is_empty() {
            format!("{phase}, not ready")
        } else {
            format!("{phase}, {}", waiting.join(", "))
        });
    }
    let unready: Vec<&str> = running
        .iter()
        .filter(|(_, s)| !container_ready(*s))
        .map(|(n, _)| *n)
        .collect();
    if containers.is_some() && !unready.is_empty() {
        return Readiness::Waiting(format!("containers not ready: {}", unready.join(", ")));
    }
    if let Some(name) = container
        && !running
            .iter()
            .any(|(n, s)| *n == name && container_ready(*s))
    {
        return Readiness::Waiting(format!("container `{name}` not ready"));
    }
    Readiness::Ready
}

/// Whether Istio's injector mutated the pod: it stamps `sidecar.istio.io/status`.
pub fn injected(p: &Pod) -> bool {
    p.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("sidecar.istio.io/status"))
}

/// A CRD is usable once Established; names rejected (NamesAccepted False) will not fix
/// themselves.
pub fn crd(c: &CustomResourceDefinition) -> Readiness {
    let conditions = c
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    if conditions
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True")
    {
        return Readiness::Ready;
    }
    if let Some(n) = conditions
        .iter()
        .find(|c| c.type_ == "NamesAccepted" && c.status == "False")
    {
        return Readiness::Failed(format!(
            "names not accepted{}",
            n.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    Readiness::Waiting("not established yet".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy(v: serde_json::Value) -> Deployment {
        serde_json::from_value(v).unwrap()
    }

    fn pod_of(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn deployment_rollout_complete() {
        let d = deploy(json!({
            "metadata": {"name": "d", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}
        }));
        assert_eq!(deployment(&d), Readiness::Ready);
    }

    #[test]
    fn deployment_spec_not_observed() {
        let d = deploy(json!({
            "metadata": {"name": "d", "generation": 3},
            "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}
        }));
        assert_eq!(
            deployment(&d),
            Readiness::Waiting("spec update not observed yet".into())
        );
    }

    #[test]
    fn deployment_replicas_default_to_one() {
        let d = deploy(json!({
            "metadata": {"name": "d", "generation": 1},
            "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1}
        }));
        assert_eq!(deployment(&d), Readiness::Waiting("0/1 ready".into()));
    }

    #[test]
    fn deployment_old_replicas_pending() {
        let d = deploy(json!({
            "metadata": {"name": "d", "generation": 1},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2}
        }));
        assert_eq!(
            deployment(&d),
            Readiness::Waiting("1 old replicas pending termination".into())
        );
    }

    #[test]
    fn deployment_progress_deadline_fails() {
        let d = deploy(json!({
            "metadata": {"name": "d", "generation": 1},
            "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet \"d-1\" has timed out progressing."}]}
        }));
        assert!(matches!(deployment(&d), Readiness::Failed(m) if m.contains("progress deadline")));
    }

    #[test]
    fn pod_ready_is_the_condition_not_the_phase() {
        let p = pod_of(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": "app", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        }));
        assert_eq!(
            pod(&p, None, None),
            Readiness::Waiting("Running, app CrashLoopBackOff".into())
        );
    }

    #[test]
    fn pod_container_count_and_name() {
        let p = pod_of(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "x", "imageID": ""}]}
        }));
        assert_eq!(pod(&p, Some(1), None), Readiness::Ready);
        assert_eq!(
            pod(&p, Some(2), None),
            Readiness::Waiting("has 1 container (app), expected 2".into())
        );
        assert_eq!(
            pod(&p, None, Some("istio-proxy")),
            Readiness::Waiting(
                "has no container `istio-proxy` (app): no sidecar was injected (no `sidecar.istio.io/status` annotation)"
                    .into()
            )
        );
    }

    /// A Bookinfo pod as the sim's istiod injected it (native sidecar: `istio-proxy` is an
    /// init container with `restartPolicy: Always`) and kwok reported it, saved from a run.
    fn injected_pod() -> Pod {
        serde_json::from_str(include_str!("testdata/injected-pod.json")).unwrap()
    }

    #[test]
    fn a_native_sidecar_counts_as_a_running_container() {
        let p = injected_pod();
        assert!(injected(&p));
        let names: Vec<&str> = running_containers(&p).iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["details", "istio-proxy"], "istio-init is not one");
        assert_eq!(pod(&p, Some(2), Some("istio-proxy")), Readiness::Ready);
        assert_eq!(
            pod(&p, Some(1), None),
            Readiness::Waiting("has 2 containers (details, istio-proxy), expected 1".into())
        );
    }

    #[test]
    fn a_native_sidecar_not_ready_or_not_started_keeps_the_pod_waiting() {
        for (field, value) in [("ready", false), ("started", false)] {
            let mut v: serde_json::Value =
                serde_json::from_str(include_str!("testdata/injected-pod.json")).unwrap();
            for s in v["status"]["initContainerStatuses"].as_array_mut().unwrap() {
                if s["name"] == "istio-proxy" {
                    s[field] = json!(value);
                }
            }
            let p = pod_of(v);
            assert_eq!(
                pod(&p, Some(2), Some("istio-proxy")),
                Readiness::Waiting("containers not ready: istio-proxy".into()),
                "{field}: {value}"
            );
            assert_eq!(
                pod(&p, None, Some("istio-proxy")),
                Readiness::Waiting("container `istio-proxy` not ready".into())
            );
        }
    }

    #[test]
    fn a_classic_sidecar_passes_the_same_rule() {
        // The shape istiod injects when a node's kubelet is older than 1.33.
        let mut v: serde_json::Value =
            serde_json::from_str(include_str!("testdata/injected-pod.json")).unwrap();
        let init = v["spec"]["initContainers"].as_array_mut().unwrap();
        let i = init
            .iter()
            .position(|c| c["name"] == "istio-proxy")
            .unwrap();
        let mut proxy = init.remove(i);
        proxy.as_object_mut().unwrap().remove("restartPolicy");
        v["spec"]["containers"].as_array_mut().unwrap().push(proxy);
        let statuses = v["status"]["initContainerStatuses"].as_array_mut().unwrap();
        let i = statuses
            .iter()
            .position(|s| s["name"] == "istio-proxy")
            .unwrap();
        let status = statuses.remove(i);
        v["status"]["containerStatuses"]
            .as_array_mut()
            .unwrap()
            .push(status);
        assert_eq!(
            pod(&pod_of(v), Some(2), Some("istio-proxy")),
            Readiness::Ready
        );
    }

    #[test]
    fn pod_unschedulable_says_why() {
        let p = pod_of(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/1 nodes are available"}]}
        }));
        assert_eq!(
            pod(&p, None, None),
            Readiness::Waiting("not scheduled: 0/1 nodes are available".into())
        );
    }

    #[test]
    fn crd_established_or_rejected() {
        let c: CustomResourceDefinition = serde_json::from_value(json!({
            "metadata": {"name": "foos.example.com"},
            "spec": {"group": "example.com", "names": {"kind": "Foo", "plural": "foos"}, "scope": "Namespaced", "versions": []},
            "status": {"conditions": [{"type": "NamesAccepted", "status": "False", "message": "conflict"}]}
        }))
        .unwrap();
        assert_eq!(
            crd(&c),
            Readiness::Failed("names not accepted: conflict".into())
        );
    }
}
