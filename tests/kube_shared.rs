//! One kwok cluster shared by the `kube_*` test modules (creating clusters is slow on small
//! machines), with one simulated node so pods schedule; each test works in namespaces of its
//! own. The cluster is deleted when the test binary exits. Also: step contexts and manifests.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bookinfo_up::kube::Kube;
use bookinfo_up::plan::model::Manifest;
use bookinfo_up::run::{Event, StepCtx};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_util::sync::CancellationToken;

use crate::common::{KwokCluster, Testbed, testbed};

pub struct Shared {
    pub tb: Testbed,
    pub cluster: KwokCluster,
}

static SHARED: OnceLock<Option<Shared>> = OnceLock::new();

/// Runs at process exit (after the test harness returns), since statics are never dropped.
extern "C" fn delete_shared() {
    if let Some(Some(s)) = SHARED.get() {
        s.cluster.delete();
        let _ = std::fs::remove_dir_all(s.cluster.workdir());
    }
}

/// The shared cluster, created on first use; `None` (test skipped) without a testbed.
pub fn shared() -> Option<&'static Shared> {
    SHARED
        .get_or_init(|| {
            let tb = testbed()?;
            let started = std::time::Instant::now();
            let cluster =
                KwokCluster::create(&tb, &format!("bookinfo-up-kube-{}", std::process::id()));
            // SAFETY: registers a plain `extern "C" fn` that only touches a `OnceLock`.
            unsafe {
                libc::atexit(delete_shared);
            }
            cluster.scale_nodes(1);
            eprintln!("shared kwok cluster ready in {:.1?}", started.elapsed());
            Some(Shared { tb, cluster })
        })
        .as_ref()
}

impl Shared {
    pub async fn kube(&self) -> Arc<Kube> {
        Arc::new(Kube::connect(&self.cluster.kubeconfig, None).await.unwrap())
    }

    pub fn istio(&self) -> PathBuf {
        self.tb.istio.clone()
    }
}

/// A step context for step `id` of plan `plan`, and the receiver of its events.
pub fn ctx(kube: &Arc<Kube>, id: &str, plan: &str) -> (StepCtx, UnboundedReceiver<Event>) {
    let (tx, rx) = unbounded_channel();
    let base = std::env::temp_dir().join(format!("bookinfo-up-kube-tests-{}", std::process::id()));
    let ctx = StepCtx::new(
        id,
        plan,
        Some(kube.clone()),
        tx,
        CancellationToken::new(),
        base.join("cache"),
        base.join("artifacts"),
    );
    (ctx, rx)
}

/// The progress messages received so far.
pub fn progress(rx: &mut UnboundedReceiver<Event>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let Event::StepProgress { message, .. } = e {
            out.push(message);
        }
    }
    out
}

/// Objects of a YAML stream, as the analyzer reads them.
pub fn manifests(yaml: &str) -> Vec<Manifest> {
    match bookinfo_up::plan::analyze::parse_objects(yaml, "test.yaml") {
        Ok(m) => m,
        Err(_) => panic!("test manifests do not parse"),
    }
}

/// `kubectl get` of one field by JSONPath.
pub fn field(s: &Shared, what: &[&str], jsonpath: &str) -> String {
    let mut args: Vec<&str> = vec!["get"];
    args.extend_from_slice(what);
    let path = format!("jsonpath={jsonpath}");
    args.extend_from_slice(&["-o", &path]);
    s.cluster.kubectl_ok(&args)
}

/// Generous bound for steps that should finish quickly; a hang fails the test instead.
pub const STEP_LIMIT: Duration = Duration::from_secs(120);
