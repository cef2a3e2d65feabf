//! Step kinds: one file each. Every step is a reconciler: observe, compare, act only on a
//! difference, verify. `run` brings a step's state about; `teardown` undoes what it did.
//!
//! This module is the one home of what the engine knows per step kind: its name in plans,
//! run, teardown, describe (`--dry-run`), whether it is a check, whether `down` undoes it,
//! the namespaces it touches, the tools it needs, and how it explains a timeout. Each is an
//! exhaustive `match` on `Action`, so a new kind makes the compiler point at every fact to
//! fill in (analysis is the other place: `plan::analyze`).

pub mod apply;
pub mod exec;
pub mod fetch;
pub mod helm;
pub mod http;
pub mod namespace;
pub mod patch;
pub mod prune;
pub mod traffic;
pub mod wait;

use crate::error::StepResult;
use crate::plan::{Action, ChartRef, Step};
use crate::run::{Outcome, StepCtx};

impl Step {
    /// The objects the step applies or patches, as the plan has them (remote manifests once
    /// fetched); none for the other kinds.
    pub fn objects(&self) -> &[crate::plan::Manifest] {
        match &self.action {
            Action::Apply(a) => &a.objects,
            Action::Patch(p) => &p.objects,
            Action::Helm(_)
            | Action::Namespace(_)
            | Action::ConfigMerge(_)
            | Action::Wait(_)
            | Action::Http(_)
            | Action::Traffic(_)
            | Action::Exec(_) => &[],
        }
    }

    /// The step kind's name as written in plans.
    pub fn kind(&self) -> &'static str {
        match &self.action {
            Action::Helm(_) => "helm",
            Action::Apply(_) => "apply",
            Action::Namespace(_) => "namespace",
            Action::Patch(_) => "patch",
            Action::ConfigMerge(_) => "patch",
            Action::Wait(_) => "wait",
            Action::Http(_) => "http",
            Action::Traffic(_) => "traffic",
            Action::Exec(_) => "exec",
        }
    }

    /// Checks verify and change nothing; JUnit reports them as such.
    pub fn is_check(&self) -> bool {
        match &self.action {
            Action::Wait(_) | Action::Http(_) => true,
            Action::Helm(_)
            | Action::Apply(_)
            | Action::Namespace(_)
            | Action::Patch(_)
            | Action::ConfigMerge(_)
            | Action::Traffic(_)
            | Action::Exec(_) => false,
        }
    }

    /// Whether `bookinfo-down` undoes the step (`teardown` changes something).
    pub fn undone_by_down(&self) -> bool {
        match &self.action {
            Action::Helm(_)
            | Action::Apply(_)
            | Action::Namespace(_)
            | Action::Patch(_)
            | Action::ConfigMerge(_) => true,
            Action::Wait(_) | Action::Http(_) | Action::Traffic(_) | Action::Exec(_) => false,
        }
    }

    /// Programs the step runs, which preflight finds on PATH before anything starts. An
    /// exec step's own command is the user's business: it fails with its own message.
    pub fn tools(&self) -> &'static [&'static str] {
        match &self.action {
            Action::Helm(_) => &["helm"],
            Action::Apply(_)
            | Action::Namespace(_)
            | Action::Patch(_)
            | Action::ConfigMerge(_)
            | Action::Wait(_)
            | Action::Http(_)
            | Action::Traffic(_)
            | Action::Exec(_) => &[],
        }
    }

    /// Namespaces the step touches, for failure diagnostics.
    pub fn namespaces(&self) -> Vec<String> {
        fn of_objects<'a>(objects: impl Iterator<Item = &'a crate::plan::Manifest>) -> Vec<String> {
            objects
                .filter_map(|m| m.object["metadata"]["namespace"].as_str())
                .map(str::to_string)
                .collect()
        }
        let ns: Vec<String> = match &self.action {
            Action::Helm(h) => vec![h.namespace.clone()],
            Action::Apply(a) => a
                .namespace
                .iter()
                .cloned()
                .chain(of_objects(a.objects.iter()))
                .collect(),
            Action::Namespace(n) => vec![n.name.clone()],
            Action::ConfigMerge(c) => vec![c.namespace.clone()],
            Action::Wait(w) => w
                .rollout
                .iter()
                .map(|(n, _)| n.clone())
                .chain(w.pods.as_ref().map(|p| p.namespace.clone()))
                .collect(),
            Action::Patch(p) => of_objects(p.objects.iter()),
            Action::Http(_) | Action::Traffic(_) | Action::Exec(_) => Vec::new(),
        };
        ns.into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// What the step says when it runs out of time, beyond "timed out": a wait says what is
    /// not ready and why.
    pub async fn explain_timeout(&self, kube: &crate::kube::Kube) -> Option<String> {
        match &self.action {
            Action::Wait(w) => Some(wait::explain(w, kube).await),
            Action::Helm(_)
            | Action::Apply(_)
            | Action::Namespace(_)
            | Action::Patch(_)
            | Action::ConfigMerge(_)
            | Action::Http(_)
            | Action::Traffic(_)
            | Action::Exec(_) => None,
        }
    }
}

/// The step kinds, as the runner runs them (`run::StepWork`).
pub struct Steps;

impl crate::run::StepWork for Steps {
    fn run<'a>(
        &'a self,
        step: &'a Step,
        ctx: &'a StepCtx,
    ) -> futures::future::BoxFuture<'a, StepResult<Outcome>> {
        Box::pin(run(step, ctx))
    }

    fn teardown<'a>(
        &'a self,
        step: &'a Step,
        ctx: &'a StepCtx,
    ) -> futures::future::BoxFuture<'a, StepResult<Outcome>> {
        Box::pin(teardown(step, ctx))
    }

    fn explain_timeout<'a>(
        &'a self,
        step: &'a Step,
        kube: &'a crate::kube::Kube,
    ) -> futures::future::BoxFuture<'a, Option<String>> {
        Box::pin(step.explain_timeout(kube))
    }
}

/// Runs one attempt of a step. Returns `Changed` or `Unchanged`; failures are errors.
pub async fn run(step: &Step, ctx: &StepCtx) -> StepResult<Outcome> {
    match &step.action {
        Action::Helm(h) => helm::run(h, ctx).await,
        Action::Apply(a) => apply::run(a, ctx).await,
        Action::Namespace(n) => namespace::run(n, ctx).await,
        Action::Patch(p) => patch::run(p, ctx).await,
        Action::ConfigMerge(c) => patch::run_config_merge(c, ctx).await,
        Action::Wait(w) => wait::run(w, ctx).await,
        Action::Http(h) => http::run(h, ctx).await,
        Action::Traffic(t) => traffic::run(t, ctx).await,
        Action::Exec(e) => exec::run(e, ctx).await,
    }
}

/// Undoes a step on a cluster the engine did not create (`bookinfo-down` on `existing`).
/// What is already gone counts as success. Checks and exec steps have nothing to undo.
pub async fn teardown(step: &Step, ctx: &StepCtx) -> StepResult<Outcome> {
    match &step.action {
        Action::Helm(h) => helm::teardown(h, ctx).await,
        Action::Apply(a) => apply::teardown(a, ctx).await,
        Action::Namespace(n) => namespace::teardown(n, ctx).await,
        Action::Patch(p) => patch::teardown(p, ctx).await,
        Action::ConfigMerge(c) => patch::teardown_config_merge(c, ctx).await,
        Action::Wait(_) | Action::Http(_) | Action::Traffic(_) | Action::Exec(_) => {
            Ok(Outcome::Unchanged {
                summary: "nothing to undo".into(),
            })
        }
    }
}

/// What `bookinfo-up diff` finds for a step against the live cluster.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", content = "items", rename_all = "kebab-case")]
pub enum Preview {
    /// The changes a run would make; none when the step is converged.
    Changes(Vec<crate::change::Change>),
    /// A check: what a run would verify (diff verifies nothing).
    WouldCheck(Vec<String>),
    /// A step whose effect cannot be known without running it (a command, traffic): what
    /// a run would do.
    WouldRun(Vec<String>),
}

/// What a run of the step would change, found by reading and by server-side dry runs: it
/// never writes. Each kind compares exactly as its `run` decides whether to act.
pub async fn preview(step: &Step, ctx: &StepCtx) -> StepResult<Preview> {
    let changes = match &step.action {
        Action::Helm(h) => helm::preview(h, ctx).await?,
        Action::Apply(a) => apply::preview(a, ctx).await?,
        Action::Namespace(n) => namespace::preview(n, ctx).await?,
        Action::Patch(p) => patch::preview(p, ctx).await?,
        Action::ConfigMerge(c) => patch::preview_config_merge(c, ctx).await?,
        Action::Wait(_) | Action::Http(_) => return Ok(Preview::WouldCheck(describe(step))),
        Action::Traffic(_) | Action::Exec(_) => return Ok(Preview::WouldRun(describe(step))),
    };
    Ok(Preview::Changes(changes))
}

/// What a step would do, in a line or a few, for `--dry-run`.
pub fn describe(step: &Step) -> Vec<String> {
    match &step.action {
        Action::Helm(h) => {
            let chart = match &h.chart {
                ChartRef::Repo {
                    repo,
                    name,
                    version,
                } => format!("{name} {version} from {repo}"),
                ChartRef::Path { path } => format!("{} (local)", crate::diag::display_path(path)),
            };
            let mut flags = Vec::new();
            if h.create_namespace {
                flags.push("--create-namespace");
            }
            if h.wait {
                flags.push("--wait");
            }
            vec![format!(
                "helm upgrade --install {} {chart} -n {}{}{}",
                h.release,
                h.namespace,
                if flags.is_empty() { "" } else { " " },
                flags.join(" ")
            )]
            .into_iter()
            .chain((h.values != serde_json::json!({})).then(|| format!("values {}", h.values)))
            .collect()
        }
        Action::Apply(a) => {
            let mut lines: Vec<String> = a
                .objects
                .iter()
                .map(|m| {
                    format!(
                        "server-side apply {}",
                        object_name(&m.object, a.namespace.as_deref())
                    )
                })
                .collect();
            lines.extend(a.urls.iter().map(|u| match &u.sha256 {
                Some(s) => format!(
                    "server-side apply the objects of {} (sha256 {}…)",
                    u.url,
                    &s[..12]
                ),
                None => format!("server-side apply the objects of {} (unpinned)", u.url),
            }));
            lines
        }
        Action::Namespace(n) => {
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![format!(
                "ensure namespace {}{}",
                n.name,
                if labels.is_empty() {
                    String::new()
                } else {
                    format!(" labelled {}", labels.join(","))
                }
            )]
        }
        Action::Patch(p) => p
            .objects
            .iter()
            .map(|m| {
                format!(
                    "server-side apply partial {} as field manager {}",
                    object_name(&m.object, None),
                    p.field_manager
                )
            })
            .collect(),
        Action::ConfigMerge(c) => vec![
            format!(
                "merge into key {} of configmap {}/{}",
                c.key, c.namespace, c.configmap
            ),
            format!(
                "restart {} if the content changed",
                c.restart
                    .iter()
                    .map(|(ns, n)| format!("deployment {ns}/{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ],
        Action::Wait(w) => {
            let mut lines = Vec::new();
            for (ns, name) in &w.rollout {
                lines.push(if name == "*" {
                    format!("wait for every deployment in {ns} to roll out")
                } else {
                    format!("wait for deployment {ns}/{name} to roll out")
                });
            }
            if let Some(p) = &w.pods {
                lines.push(format!(
                    "wait for pods in {}{} to be ready{}{}",
                    p.namespace,
                    p.selector
                        .as_deref()
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default(),
                    p.containers
                        .map(|c| format!(" with {c} containers"))
                        .unwrap_or_default(),
                    p.container
                        .as_deref()
                        .map(|c| format!(", including {c}"))
                        .unwrap_or_default()
                ));
            }
            for c in &w.crds {
                lines.push(format!("wait for CRD {c} to be established"));
            }
            if let Some(h) = &w.webhook {
                lines.push(format!(
                    "wait for webhook {} to deny a server-side dry-run of {}",
                    h.name,
                    object_name(&h.probe.object, None)
                ));
            }
            lines
        }
        Action::Http(h) => {
            let mut line = format!("GET {} expecting {}", h.url, h.status);
            if let Some(b) = &h.body_contains {
                line.push_str(&format!(" and a body containing {b:?}"));
            }
            let mut lines = vec![line];
            if !h.variants.is_empty() {
                lines.push(format!(
                    "see variants {} within {} requests",
                    h.variants.keys().cloned().collect::<Vec<_>>().join(", "),
                    h.max_requests
                ));
            }
            lines
        }
        Action::Traffic(t) => vec![format!(
            "send {} requests to {} over {}",
            t.requests,
            t.url,
            humantime::format_duration(t.over)
        )],
        Action::Exec(e) => {
            let mut lines = vec![format!("run {}", shell_words(&e.command))];
            if !e.unless.is_empty() {
                lines.push(format!("unless {} succeeds", shell_words(&e.unless)));
            }
            lines
        }
    }
}

/// Annotation on a pod template holding the sha256 of the configuration its pods read.
pub const CONFIG_CHECKSUM: &str = "bookinfo-up.io/config-sha256";

/// Folds each ConfigMap merge into the plan's own manifest of that ConfigMap, when an apply
/// step of the plan creates it (Kiali's addon manifest holds the ConfigMap that the
/// `kiali-grafana` step patches). Otherwise the two steps would fight on every run: the apply
/// would put the key back as the manifest has it, the merge would change it again and restart
/// Kiali. With the fold, the apply writes the merged content and the merge step finds nothing
/// to do, yet still repairs drift and still works on ConfigMaps the plan does not apply.
///
/// The Deployments the merge restarts get the merged content's sha256 in their pod template
/// (when the plan applies them too), so a change of the content rolls them exactly when it
/// happens, even when the apply step is the one that writes it. Returns the number of folds.
pub fn fold_config_merges(plan: &mut crate::plan::Plan) -> Result<usize, String> {
    use sha2::{Digest, Sha256};
    let merges: Vec<crate::plan::ConfigMerge> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::ConfigMerge(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    let mut folded = 0;
    for c in &merges {
        let mut checksum = None;
        for_each_object(plan, |m, ns| {
            let o = &m.object;
            if o["apiVersion"] != "v1"
                || o["kind"] != "ConfigMap"
                || o["metadata"]["name"] != c.configmap.as_str()
                || ns != c.namespace
            {
                return Ok(());
            }
            let Some(text) = o["data"][&c.key].as_str() else {
                return Ok(());
            };
            let mut content: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| {
                format!(
                    "key `{}` of ConfigMap {}/{} in `{}` is not YAML: {e}",
                    c.key, c.namespace, c.configmap, m.source
                )
            })?;
            crate::merge::merge(&mut content, &c.merge);
            let merged = serde_saphyr::to_string(&content).map_err(|e| e.to_string())?;
            checksum = Some(hex::encode(Sha256::digest(merged.as_bytes())));
            m.object["data"][&c.key] = serde_json::Value::String(merged);
            folded += 1;
            Ok(())
        })?;
        let Some(sum) = checksum else { continue };
        for_each_object(plan, |m, ns| {
            let o = &m.object;
            let restarted = c
                .restart
                .iter()
                .any(|(rns, name)| rns == ns && o["metadata"]["name"] == name.as_str());
            if o["kind"] == "Deployment" && restarted {
                m.object["spec"]["template"]["metadata"]["annotations"][CONFIG_CHECKSUM] =
                    serde_json::Value::String(sum.clone());
            }
            Ok(())
        })?;
    }
    Ok(folded)
}

/// Calls `f` with each object of the plan's apply steps and its effective namespace.
fn for_each_object(
    plan: &mut crate::plan::Plan,
    mut f: impl FnMut(&mut crate::plan::Manifest, &str) -> Result<(), String>,
) -> Result<(), String> {
    for step in &mut plan.steps {
        let Action::Apply(a) = &mut step.action else {
            continue;
        };
        let default_ns = a.namespace.clone().unwrap_or_else(|| "default".into());
        for m in &mut a.objects {
            let ns = m.object["metadata"]["namespace"]
                .as_str()
                .unwrap_or(&default_ns)
                .to_string();
            f(m, &ns)?;
        }
    }
    Ok(())
}

/// `kind namespace/name` of a manifest object, for messages.
pub fn object_name(object: &serde_json::Value, default_namespace: Option<&str>) -> String {
    let kind = object["kind"].as_str().unwrap_or("?");
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    match object["metadata"]["namespace"]
        .as_str()
        .or(default_namespace)
    {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.is_empty() || w.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", w.replace('\'', r"'\''"))
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
