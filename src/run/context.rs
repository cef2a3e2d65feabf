//! `StepCtx`: what a running step may use: the cluster, progress reporting, cancellation,
//! the download cache and the artifacts folder.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::event::Event;
use crate::error::{StepError, StepResult};
use crate::kube::Kube;

pub struct StepCtx {
    /// The id of the running step.
    pub id: String,
    pub plan_name: String,
    kube: Option<Arc<Kube>>,
    events: UnboundedSender<Event>,
    pub cancel: CancellationToken,
    /// Downloads cached by sha256, so second runs are offline.
    pub cache_dir: PathBuf,
    /// Where failure diagnostics go.
    pub artifacts: PathBuf,
    /// The step's time limit, for tools that take one of their own (helm `--timeout`).
    pub timeout: Option<std::time::Duration>,
    /// Logs of the cluster's own processes, for failure diagnostics.
    pub cluster_logs: Vec<PathBuf>,
}

impl StepCtx {
    pub fn new(
        id: impl Into<String>,
        plan_name: impl Into<String>,
        kube: Option<Arc<Kube>>,
        events: UnboundedSender<Event>,
        cancel: CancellationToken,
        cache_dir: PathBuf,
        artifacts: PathBuf,
    ) -> Self {
        Self {
            id: id.into(),
            plan_name: plan_name.into(),
            kube,
            events,
            cancel,
            cache_dir,
            artifacts,
            timeout: None,
            cluster_logs: Vec::new(),
        }
    }

    /// Sets the step's time limit.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the logs of the cluster's own processes.
    pub fn with_cluster_logs(mut self, logs: Vec<PathBuf>) -> Self {
        self.cluster_logs = logs;
        self
    }

    /// The cluster connection; steps that need one call this.
    pub fn kube(&self) -> StepResult<&Kube> {
        self.kube
            .as_deref()
            .ok_or_else(|| StepError::fatal("this step needs a cluster connection"))
    }

    /// Tells reporters what the step is doing now.
    pub fn progress(&self, message: impl Into<String>) {
        let _ = self.events.send(Event::StepProgress {
            id: self.id.clone(),
            message: message.into(),
        });
    }

    /// A sender for events, for work the step hands to other tasks.
    pub fn events(&self) -> UnboundedSender<Event> {
        self.events.clone()
    }
}
