//! What is unwell in a set of namespaces: Deployments not available and pods not ready, each
//! with why, judged by `readiness`'s rules. `status` reports it.

use serde::Serialize;

use super::Kube;
use super::readiness::{self, Readiness};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Unhealthy {
    /// `namespace/name: why`
    pub deployments: Vec<String>,
    pub pods: Vec<String>,
}

/// Deployments not available and pods not ready in the plan's namespaces, with why.
pub async fn unhealthy(kube: &Kube, namespaces: &std::collections::BTreeSet<String>) -> Unhealthy {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    let mut out = Unhealthy::default();
    let lp = kube::api::ListParams::default();
    for ns in namespaces {
        let deployments: kube::Api<Deployment> = kube::Api::namespaced(kube.client.clone(), ns);
        match deployments.list(&lp).await {
            Ok(list) => {
                for d in &list.items {
                    if let Readiness::Waiting(why) | Readiness::Failed(why) =
                        readiness::deployment(d)
                    {
                        let name = d.metadata.name.clone().unwrap_or_default();
                        out.deployments.push(format!("{ns}/{name}: {why}"));
                    }
                }
            }
            Err(e) if super::is_not_found(&e) => {}
            Err(e) => out
                .deployments
                .push(format!("{ns}: cannot list Deployments: {e}")),
        }
        let pods: kube::Api<Pod> = kube::Api::namespaced(kube.client.clone(), ns);
        match pods.list(&lp).await {
            Ok(list) => {
                for p in &list.items {
                    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                    if readiness::pod_is_gone(p) || phase == Some("Succeeded") {
                        continue;
                    }
                    if let Readiness::Waiting(why) | Readiness::Failed(why) =
                        readiness::pod(p, None, None)
                    {
                        let name = p.metadata.name.clone().unwrap_or_default();
                        out.pods.push(format!("{ns}/{name}: {why}"));
                    }
                }
            }
            Err(e) if super::is_not_found(&e) => {}
            Err(e) => out.pods.push(format!("{ns}: cannot list pods: {e}")),
        }
    }
    out
}
