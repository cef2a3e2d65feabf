//! Tier 1: the `wait` step and failure diagnostics against a live API server (shared kwok
//! cluster, where kwok plays the kubelet and marks scheduled pods ready).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bookinfo_up::kube::diagnostics;
use bookinfo_up::plan::model;
use bookinfo_up::run::Outcome;
use bookinfo_up::steps::{apply, wait};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use tokio::time::timeout;

use crate::kube_shared::{STEP_LIMIT, ctx, manifests, progress, shared};

fn deployment(ns: &str, name: &str, replicas: u32, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
spec:
  replicas: {replicas}
  {extra_spec}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      {{pod_extra}}
      containers:
      - name: app
        image: example.invalid/{name}:1
"#
    )
}

fn with_pod_spec(yaml: String, pod_extra: &str) -> String {
    yaml.replace("{pod_extra}", pod_extra)
}

fn namespace(ns: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\n")
}

async fn apply_yaml(kube: &Arc<bookinfo_up::kube::Kube>, yaml: &str) {
    let step = model::Apply {
        namespace: None,
        objects: manifests(yaml),
        urls: Vec::new(),
        template: false,
        vars: Default::default(),
    };
    let (c, _rx) = ctx(kube, "setup", "kube-wait");
    timeout(STEP_LIMIT, apply::run(&step, &c))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{}", e.chain()));
}

fn rollout(ns: &str, name: &str) -> model::Wait {
    model::Wait {
        rollout: vec![(ns.into(), name.into())],
        pods: None,
        crds: Vec::new(),
        webhook: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_that_never_becomes_ready_times_out_with_an_explanation() {
    let Some(s) = shared() else { return };
    let kube = s.kube().await;
    let ns = "kube-wait-stuck";
    // No node has this label: the pod stays Pending, unschedulable, for ever.
    let yaml = namespace(ns)
        + &with_pod_spec(
            deployment(ns, "stuck", 1, ""),
            "nodeSelector: {bookinfo-up.io/no-such-node: \"true\"}",
        );
    apply_yaml(&kube, &yaml).await;

    let w = rollout(ns, "stuck");
    let (c, mut rx) = ctx(&kube, "wait-stuck", "kube-wait");
    let limit = Duration::from_secs(5);
    let started = Instant::now();
    let result = timeout(limit, wait::run(&w, &c)).await;
    assert!(result.is_err(), "the wait must not finish: {result:?}");
    assert!(started.elapsed() >= limit);
    let messages = progress(&mut rx);
    eprintln!("progress while waiting: {messages:?}");
    assert_eq!(
        messages.last().map(String::as_str),
        Some("waiting for 1/1 deployments: stuck (0/1 ready)")
    );

    let why = wait::explain(&w, &kube).await;
    eprintln!("explain():\n{why}");
    assert!(
        why.contains("deployment kube-wait-stuck/stuck: 0/1 ready"),
        "{why}"
    );
    assert!(why.contains("not scheduled"), "{why}");
    assert!(why.contains("FailedScheduling"), "{why}");
    assert!(why.contains("ScalingReplicaSet"), "{why}");

    // Failure diagnostics for the same namespace.
    let dir = tempfile::tempdir().unwrap();
    diagnostics::collect(&kube, &[ns.to_string()], dir.path())
        .await
        .unwrap();
    let events = std::fs::read_to_string(dir.path().join(ns).join("events.txt")).unwrap();
    assert!(events.contains("FailedScheduling"), "{events}");
    let pods = std::fs::read_to_string(dir.path().join(ns).join("pods.txt")).unwrap();
    assert!(pods.contains("not scheduled"), "{pods}");
    let yaml = std::fs::read_to_string(dir.path().join(ns).join("pods.yaml")).unwrap();
    assert!(yaml.contains("Unschedulable"), "{yaml}");
    let logs: Vec<_> = std::fs::read_dir(dir.path().join(ns).join("logs"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(logs.len(), 1);
    let log = std::fs::read_to_string(logs[0].path()).unwrap();
    eprintln!("log file {}: {log}", logs[0].path().display());
    // The pod never ran: the file says there is no output (or why logs could not be read).
    assert!(
        log.starts_with("cannot fetch the logs of kube-wait-stuck/stuck-")
            || log.starts_with("no log output from kube-wait-stuck/stuck-"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_rollout_is_seen_within_a_second() {
    let Some(s) = shared() else { return };
    let kube = s.kube().await;
    let ns = "kube-wait-ok";
    apply_yaml(&kube, &namespace(ns)).await;

    // An independent watcher notes when `web` is first available with both replicas.
    let available: Arc<Mutex<Option<Instant>>> = Arc::default();
    let seen = available.clone();
    let api: kube::Api<Deployment> = kube::Api::namespaced(kube.client.clone(), ns);
    let observer = tokio::spawn(async move {
        let config = watcher::Config::default().fields("metadata.name=web");
        let mut stream = std::pin::pin!(watcher(api, config).applied_objects());
        while let Some(Ok(d)) = stream.next().await {
            let st = d.status.unwrap_or_default();
            if st.observed_generation >= d.metadata.generation
                && st.available_replicas == Some(2)
                && st.updated_replicas == Some(2)
                && st.replicas == Some(2)
            {
                seen.lock().unwrap().get_or_insert_with(Instant::now);
                return;
            }
        }
    });

    // The wait starts before the Deployment exists.
    let waiting = tokio::spawn({
        let kube = kube.clone();
        async move {
            let (c, rx) = ctx(&kube, "wait-ok", "kube-wait");
            let out = wait::run(&rollout("kube-wait-ok", "web"), &c).await;
            (out, Instant::now(), rx)
        }
    });
    let applied_at = Instant::now();
    let yaml = with_pod_spec(deployment(ns, "web", 2, ""), "")
        + "---\n"
        + &with_pod_spec(deployment(ns, "api", 1, ""), "");
    apply_yaml(&kube, &yaml).await;

    let (out, returned, mut rx) = timeout(STEP_LIMIT, waiting).await.unwrap().unwrap();
    let out = out.unwrap_or_else(|e| panic!("{}", e.chain()));
    timeout(STEP_LIMIT, observer).await.unwrap().unwrap();
    let seen_at = available
        .lock()
        .unwrap()
        .expect("the observer saw it available");
    let (latency, order) = if returned >= seen_at {
        (returned - seen_at, "after")
    } else {
        (seen_at - returned, "before")
    };
    eprintln!(
        "rollout latency: applied→available {:.0?}; wait returned {latency:.1?} {order} the observer saw it available; progress {:?}",
        seen_at - applied_at,
        progress(&mut rx)
    );
    assert_eq!(
        out,
        Outcome::Unchanged {
            summary: "1 deployment rolled out".into()
        }
    );
    assert!(
        latency < Duration::from_secs(1),
        "wait returned {latency:?} {order} the deployment became available"
    );

    // Every Deployment of the namespace, once they exist and have rolled out.
    let (c, _rx) = ctx(&kube, "wait-ok", "kube-wait");
    let started = Instant::now();
    let again = timeout(STEP_LIMIT, wait::run(&rollout(ns, "*"), &c))
        .await
        .unwrap()
        .unwrap();
    eprintln!(
        "wait on {ns}/* after the rollout: {:.0?}",
        started.elapsed()
    );
    assert_eq!(
        again,
        Outcome::Unchanged {
            summary: "2 deployments rolled out".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_deadline_exceeded_fails_fast() {
    let Some(s) = shared() else { return };
    let kube = s.kube().await;
    let ns = "kube-wait-deadline";
    let yaml = namespace(ns)
        + &with_pod_spec(
            deployment(ns, "late", 1, "progressDeadlineSeconds: 1"),
            "nodeSelector: {bookinfo-up.io/no-such-node: \"true\"}",
        );
    apply_yaml(&kube, &yaml).await;
    let (c, _rx) = ctx(&kube, "wait-deadline", "kube-wait");
    let started = Instant::now();
    let e = timeout(STEP_LIMIT, wait::run(&rollout(ns, "late"), &c))
        .await
        .unwrap()
        .unwrap_err();
    eprintln!("failed after {:.1?}: {}", started.elapsed(), e.chain());
    assert!(
        e.message
            .contains("deployment kube-wait-deadline/late exceeded its progress deadline"),
        "{}",
        e.message
    );
    assert!(!e.retryable);
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_crds_and_webhook_probe() {
    let Some(s) = shared() else { return };
    let kube = s.kube().await;
    let ns = "kube-wait-pods";
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.bookinfo-up.io
spec:
  group: example.bookinfo-up.io
  scope: Namespaced
  names: {kind: Gadget, plural: gadgets}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
"#;
    let yaml = namespace(ns) + crd + &with_pod_spec(deployment(ns, "pods", 2, ""), "");
    apply_yaml(&kube, &yaml).await;

    let probe = manifests(&format!(
        "apiVersion: example.bookinfo-up.io/v1\nkind: Gadget\nmetadata:\n  name: probe\n  namespace: {ns}\n"
    ));
    let w = model::Wait {
        rollout: Vec::new(),
        pods: Some(model::PodsReady {
            namespace: ns.into(),
            selector: Some("app=pods".into()),
            containers: Some(1),
            container: Some("app".into()),
        }),
        crds: vec!["gadgets.example.bookinfo-up.io".into()],
        webhook: None,
    };
    let (c, _rx) = ctx(&kube, "wait-pods", "kube-wait");
    let out = timeout(STEP_LIMIT, wait::run(&w, &c))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{}", e.chain()));
    assert_eq!(
        out,
        Outcome::Unchanged {
            summary: "2 pods ready, 1 CRD established".into()
        }
    );

    // A webhook probe that is admitted proves nothing (no webhook denied it): the wait goes
    // on, and says why.
    let webhook = model::Wait {
        rollout: Vec::new(),
        pods: None,
        crds: Vec::new(),
        webhook: Some(model::WebhookProbe {
            name: "validation.example.bookinfo-up.io".into(),
            probe: probe.into_iter().next().unwrap(),
        }),
    };
    let (c, mut rx) = ctx(&kube, "wait-webhook", "kube-wait");
    assert!(
        timeout(Duration::from_secs(3), wait::run(&webhook, &c))
            .await
            .is_err(),
        "an admitted probe must not count as a serving webhook"
    );
    let last = progress(&mut rx).pop().unwrap_or_default();
    assert!(last.contains("probe was admitted"), "{last}");
    let why = wait::explain(&webhook, &kube).await;
    assert!(
        why.starts_with(
            "webhook validation.example.bookinfo-up.io: not serving: the probe was admitted"
        ),
        "{why}"
    );
    // The probe was a dry run: nothing was created.
    assert!(
        !s.cluster
            .kubectl(&["get", "gadget", "probe", "-n", ns])
            .status
            .success()
    );

    // Two containers (an istio-proxy sidecar) are expected but the pods have one: not ready.
    let mut sidecar = w.clone();
    sidecar.pods.as_mut().unwrap().containers = Some(2);
    sidecar.pods.as_mut().unwrap().container = Some("istio-proxy".into());
    let (c, mut rx) = ctx(&kube, "wait-sidecar", "kube-wait");
    assert!(
        timeout(Duration::from_secs(3), wait::run(&sidecar, &c))
            .await
            .is_err()
    );
    let last = progress(&mut rx).pop().unwrap_or_default();
    assert!(
        last.contains("2/2 pods") && last.contains("has 1 container (app), expected 2"),
        "{last}"
    );
    let why = wait::explain(&sidecar, &kube).await;
    eprintln!("explain():\n{why}");
    assert!(
        why.contains("kube-wait-pods pods (app=pods): 2/2 not ready"),
        "{why}"
    );
    assert!(why.contains("has 1 container (app), expected 2"), "{why}");
}
