//! Readiness rules, as pure functions of one object: `deployment` (the rules of
//! `kubectl rollout status`), `pod` (the Ready condition, container counts) and `crd`
//! (Established). Each returns a `Readiness`; waits and failure explanations share them.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
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

/// A pod is ready when its Ready condition is True (not when its phase is Running). With
/// `containers`, it must have exactly that many containers, all ready; with `container`, one
/// of them must have that name (a sidecar such as `istio-proxy`) and be ready.
pub fn pod(p: &Pod, containers: Option<u32>, container: Option<&str>) -> Readiness {
    let spec_containers: Vec<&str> = p
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| c.name.as_str())
        .collect();
    let status = p.status.as_ref();
    let statuses = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    if let Some(n) = containers
        && spec_containers.len() != n as usize
    {
        return Readiness::Waiting(format!(
            "has {} container{} ({}), expected {n}",
            spec_containers.len(),
            if spec_containers.len() == 1 { "" } else { "s" },
            spec_containers.join(", ")
        ));
    }
    if let Some(name) = container
        && !spec_containers.contains(&name)
    {
        return Readiness::Waiting(format!(
            "has no container `{name}` ({})",
            spec_containers.join(", ")
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
        let waiting: Vec<String> = statuses
            .iter()
            .filter(|s| !s.ready)
            .map(|s| {
                let why = s.state.as_ref().and_then(|st| {
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
                    Some(why) => format!("{} {why}", s.name),
                    None => format!("{} not ready", s.name),
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
    let unready: Vec<&str> = statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    if containers.is_some() && !unready.is_empty() {
        return Readiness::Waiting(format!("containers not ready: {}", unready.join(", ")));
    }
    if let Some(name) = container
        && !statuses.iter().any(|s| s.name == name && s.ready)
    {
        return Readiness::Waiting(format!("container `{name}` not ready"));
    }
    Readiness::Ready
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
            Readiness::Waiting("has no container `istio-proxy` (app)".into())
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
