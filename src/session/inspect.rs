//! `bookinfo-up diff` and `bookinfo-up status`: read-only looks at the cluster a plan runs
//! against. Neither creates a cluster, starts a stopped one, marks an owner or writes: the
//! client is built read-only (`kube::read_only`), helm only lists and reads, and the steps
//! contribute `steps::preview`, which reads and dry-runs. `status` also runs the plan's checks
//! once, briefly; checks only read.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::fetch_remote;
use crate::change::ChangeKind;
use crate::invocation::{EXIT_CLUSTER, EXIT_DIFFERENT, EXIT_INCOMPLETE, Invocation};
use crate::kube::Kube;
use crate::kube::health::unhealthy;
use crate::plan::{Action, Plan, Step};
use crate::provider::{self, Access, Overrides};
use crate::report::inspect::{
    self as render, ReleaseStatus, State, StatusReport, StepPreview, StepStatus,
};
use crate::run::{Outcome, StepCtx};
use crate::steps::Preview;

/// How long `status` gives each check (a wait, an HTTP check) before it calls it failing.
const CHECK_TIME: Duration = Duration::from_secs(5);

/// A plan and a read-only client for its cluster.
struct Target {
    plan: Plan,
    kube: Arc<Kube>,
    access: Access,
    options: Overrides,
    color: bool,
}

/// Finds the plan's cluster without creating it, connects read-only, fetches
/// the remote manifests. `Err` is the exit code, its message printed.
async fn prepare(inv: &Invocation) -> Result<Target, i32> {
    // Warnings to stderr; BOOKINFO_UP_LOG asks for more (`kube_client=debug`: each request).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(super::log_filter("warn"))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    let mut plan = inv.plan.clone();
    let o = inv.target.clone();
    let cancel = CancellationToken::new();
    found(inv, &cancel).await?;
    tracing::debug!("cluster found");
    let (access, kube) = connect(&plan, &o, &cancel).await?;
    tracing::debug!("client ready");
    let gvks = plan_kinds(&plan);
    // The remote manifests are read and parsed (CPU work) on a task of their own, beside the
    // requests.
    let claimant = provider::ownership::claimant(&plan, &o);
    // Steps left out are not looked at: their remote manifests are not fetched either.
    let select = inv.select.clone();
    let fetch = tokio::spawn(async move {
        let result = fetch_remote(&mut plan, &select, &|_| {}).await;
        (plan, result)
    });
    // One read that every later one depends on: whether the API server answers, and whose
    // cluster this is; at the same time, discovery of the plan's groups.
    let (ownership, ()) = tokio::join!(
        provider::ownership::ownership(&kube, &claimant),
        kube.prefetch_discovery(&gvks)
    );
    let (plan, fetched) = match fetch.await {
        Ok(done) => done,
        Err(e) => {
            eprintln!("error: reading the remote manifests failed: {e}");
            return Err(EXIT_INCOMPLETE);
        }
    };
    tracing::debug!("owner, discovery and remote manifests read");
    let rerun = inv.rerun("bookinfo-up");
    if let Err(e) = provider::judge(&ownership, &plan, provider::Intent::Inspect, &rerun) {
        eprintln!("error: {e}");
        return Err(EXIT_CLUSTER);
    }
    fetched.map_err(|e| {
        eprintln!("error: {e}");
        EXIT_INCOMPLETE
    })?;
    let color = {
        use std::io::IsTerminal as _;
        crate::report::use_color(inv.output.color, std::io::stdout().is_terminal())
    };
    Ok(Target {
        plan,
        kube: Arc::new(kube),
        access,
        options: o,
        color,
    })
}

/// Whether the plan's cluster exists (an existing cluster does, as far as the engine can
/// tell); `Err` is the exit code, the reason printed.
async fn found(inv: &Invocation, cancel: &CancellationToken) -> Result<(), i32> {
    let (plan, o) = (&inv.plan, &inv.target);
    if !provider::managed(plan) {
        return Ok(());
    }
    let cluster = &plan.cluster.name;
    match provider::exists(plan, o, cancel).await {
        Ok(true) => Ok(()),
        Ok(false) => {
            eprintln!(
                "error: {} cluster `{cluster}` does not exist: there is nothing to compare with\n  = help: `{}` creates it; `--context` or `--kubeconfig` look at another cluster",
                plan.cluster.provider_name(),
                inv.rerun("bookinfo-up")
            );
            Err(EXIT_CLUSTER)
        }
        Err(e) => {
            eprintln!("error: cannot tell whether cluster `{cluster}` exists: {e}");
            Err(EXIT_CLUSTER)
        }
    }
}

/// A read-only client for the cluster, with the ledger of the last run where the engine
/// keeps one.
async fn connect(
    plan: &Plan,
    o: &Overrides,
    cancel: &CancellationToken,
) -> Result<(Access, Kube), i32> {
    let access = provider::access(plan, o, cancel).await.map_err(|e| {
        eprintln!("error: {e}");
        EXIT_CLUSTER
    })?;
    let mut kube = Kube::connect_read_only(&access.kubeconfig, access.context.as_deref())
        .await
        .map_err(|e| {
            eprintln!("error: {}", e.chain());
            EXIT_CLUSTER
        })?;
    kube.ledger = crate::kube::ledger::Ledger::load(&super::up::ledger_path(plan, o, &kube.server));
    Ok((access, kube))
}

/// The kinds of the objects the plan's steps apply and patch (local manifests; fetched ones
/// are mostly of the same kinds).
fn plan_kinds(plan: &Plan) -> Vec<kube::core::GroupVersionKind> {
    plan.steps
        .iter()
        .flat_map(|s| s.objects())
        .map(|m| crate::kube::gvk_of(&m.object))
        .collect()
}

impl Target {
    /// The steps `--only`/`--skip` select, in plan order.
    fn steps<'a>(&'a self, inv: &Invocation) -> Vec<&'a Step> {
        self.plan
            .steps
            .iter()
            .filter(|s| inv.select.includes(&s.id) && s.skip.is_none())
            .collect()
    }

    fn ctx(&self, step: &Step) -> StepCtx {
        // Progress goes nowhere: these commands print their result only.
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        StepCtx::new(
            step.id.clone(),
            self.plan.name.clone(),
            Some(self.kube.clone()),
            tx,
            CancellationToken::new(),
            std::env::temp_dir(),
            self.options.state_dir.join("artifacts"),
        )
    }

    /// Each step's preview, in plan order, `jobs` at once.
    async fn previews(&self, steps: &[&Step], jobs: usize) -> Vec<Result<Preview, String>> {
        let work: Vec<_> = steps
            .iter()
            .map(|s| async move {
                crate::steps::preview(s, &self.ctx(s))
                    .await
                    .map_err(|e| e.chain())
            })
            .collect();
        futures::stream::iter(work).buffered(jobs).collect().await
    }
}

/// `bookinfo-up diff`.
pub async fn diff(inv: Invocation) -> i32 {
    let t = match prepare(&inv).await {
        Ok(t) => t,
        Err(code) => return code,
    };
    let steps = t.steps(&inv);
    let previews = t.previews(&steps, inv.run.jobs).await;
    tracing::debug!("steps compared");
    let items: Vec<StepPreview> = steps
        .iter()
        .zip(previews)
        .map(|(s, p)| {
            let (preview, error) = match p {
                Ok(p) => (Some(p), None),
                Err(e) => (None, Some(e)),
            };
            StepPreview {
                id: s.id.clone(),
                kind: s.kind(),
                changes: match &preview {
                    Some(Preview::Changes(c)) => c.len(),
                    _ => 0,
                },
                preview,
                error,
            }
        })
        .collect();
    let mut items = items;
    // What a run would prune, as deletions of a phase of its own.
    let includes = |id: &str| inv.select.includes(id);
    match crate::steps::prune::preview(&t.kube, &t.plan, &includes).await {
        Ok(orphans) => {
            let changes = orphans.changes();
            if !changes.is_empty() {
                items.push(StepPreview {
                    id: "prune".into(),
                    kind: "prune",
                    changes: changes.len(),
                    preview: Some(Preview::Changes(changes)),
                    error: None,
                });
            }
        }
        Err(e) => items.push(StepPreview {
            id: "prune".into(),
            kind: "prune",
            changes: 0,
            preview: None,
            error: Some(e.chain()),
        }),
    }
    let changes: usize = items.iter().map(|i| i.changes).sum();
    let failed = items.iter().filter(|i| i.error.is_some()).count();
    if inv.output.json {
        let doc = serde_json::json!({
            "plan": t.plan.name,
            "cluster": t.plan.cluster.name,
            "changes": changes,
            "steps": items,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print!("{}", render::diff_text(&items, t.color));
    }
    if failed > 0 {
        EXIT_INCOMPLETE
    } else if changes > 0 {
        EXIT_DIFFERENT
    } else {
        0
    }
}

/// A step's status with no changes listed.
fn step_status(s: &Step, state: State, summary: String) -> StepStatus {
    StepStatus {
        id: s.id.clone(),
        kind: s.kind(),
        state,
        summary,
        changes: Vec::new(),
    }
}

/// `bookinfo-up status`.
pub async fn status(inv: Invocation) -> i32 {
    let t = match prepare(&inv).await {
        Ok(t) => t,
        Err(code) => return code,
    };
    let steps = t.steps(&inv);
    let previews = t.previews(&steps, inv.run.jobs).await;
    let mut statuses = Vec::new();
    for (s, p) in steps.iter().zip(previews) {
        statuses.push(match p {
            Ok(Preview::Changes(changes)) => step_state(s, changes),
            Ok(Preview::WouldCheck(_)) => check_once(&t, s).await,
            Ok(Preview::WouldRun(lines)) => step_status(
                s,
                State::NotChecked,
                format!("not checked: a run would {}", lines.join("; ")),
            ),
            Err(e) => step_status(s, State::Failing, format!("could not be compared: {e}")),
        });
    }
    let mut releases = Vec::new();
    for s in &steps {
        if let Action::Helm(h) = &s.action {
            let found = crate::steps::helm::release_status(h, &t.ctx(s)).await;
            releases.push(match found {
                Ok(Some(d)) => ReleaseStatus {
                    release: h.release.clone(),
                    namespace: h.namespace.clone(),
                    status: d.status,
                    chart: d.chart,
                    version: d.version,
                },
                Ok(None) => ReleaseStatus {
                    release: h.release.clone(),
                    namespace: h.namespace.clone(),
                    status: "not installed".into(),
                    chart: String::new(),
                    version: String::new(),
                },
                Err(e) => ReleaseStatus {
                    release: h.release.clone(),
                    namespace: h.namespace.clone(),
                    status: format!("unknown: {}", e.message),
                    chart: String::new(),
                    version: String::new(),
                },
            });
        }
    }
    let namespaces: std::collections::BTreeSet<String> =
        steps.iter().flat_map(|s| s.namespaces()).collect();
    let unhealthy = unhealthy(&t.kube, &namespaces).await;
    let includes = |id: &str| inv.select.includes(id);
    let (orphaned, kept): (Vec<String>, Vec<String>) =
        match crate::steps::prune::preview(&t.kube, &t.plan, &includes).await {
            Ok(o) => (
                o.releases
                    .iter()
                    .map(|(ns, r)| format!("helm release {ns}/{r}"))
                    .chain(o.verdicts.delete.iter().map(|m| m.key.to_string()))
                    .collect(),
                o.verdicts
                    .kept
                    .iter()
                    .map(|(k, why)| format!("{k}: {why}"))
                    .collect(),
            ),
            Err(e) => (
                vec![format!(
                    "the plan's ApplySet could not be read: {}",
                    e.chain()
                )],
                Vec::new(),
            ),
        };
    let healthy = statuses
        .iter()
        .all(|s| matches!(s.state, State::Converged | State::NotChecked))
        && orphaned.is_empty()
        && releases.iter().all(|r| r.status == "deployed")
        && unhealthy.deployments.is_empty()
        && unhealthy.pods.is_empty();
    let report = StatusReport {
        plan: t.plan.name.clone(),
        cluster: t.plan.cluster.name.clone(),
        healthy,
        steps: statuses,
        releases,
        unhealthy,
        orphaned,
        kept,
        next: super::next_steps(&t.plan, &t.access, &|id| {
            !includes(id) || t.plan.steps.iter().any(|s| s.id == id && s.skip.is_some())
        }),
    };
    if inv.output.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", render::status_text(&report, t.color));
    }
    if healthy { 0 } else { EXIT_DIFFERENT }
}

/// A changing step's state from what a run would change.
fn step_state(s: &Step, changes: Vec<crate::change::Change>) -> StepStatus {
    let state = if changes.is_empty() {
        State::Converged
    } else if changes.iter().all(|c| c.kind == ChangeKind::Create) {
        State::Missing
    } else {
        State::Drifted
    };
    let summary = match state {
        State::Converged => String::new(),
        _ => {
            let mut parts: Vec<String> = changes
                .iter()
                .take(2)
                .map(|c| format!("{}: {}", c.target, c.summary))
                .collect();
            if changes.len() > 2 {
                parts.push(format!("and {} more", changes.len() - 2));
            }
            parts.join("; ")
        }
    };
    StepStatus {
        changes,
        ..step_status(s, state, summary)
    }
}

/// Runs a check once, for up to `CHECK_TIME`: its own summary when it passes, what it waits
/// for (the step's timeout explanation) when it does not.
async fn check_once(t: &Target, s: &Step) -> StepStatus {
    let ctx = t.ctx(s).with_timeout(CHECK_TIME);
    let (state, summary) = match tokio::time::timeout(CHECK_TIME, crate::steps::run(s, &ctx)).await
    {
        Ok(Ok(Outcome::Changed { summary } | Outcome::Unchanged { summary })) => {
            (State::Converged, summary)
        }
        Ok(Ok(other)) => (State::Failing, format!("{other:?}")),
        Ok(Err(e)) => (State::Failing, e.chain()),
        Err(_) => {
            let why = s
                .explain_timeout(&t.kube)
                .await
                .unwrap_or_else(|| format!("no answer within {}s", CHECK_TIME.as_secs()));
            (State::Failing, why)
        }
    };
    step_status(s, state, summary)
}

/// What `up --dry-run` adds about pruning: the members of the plan's ApplySet that a run
/// would delete (and keep), when the plan's cluster is there to be read; else why not. Reads
/// only: a cluster the engine made is looked for through its state folder (no container
/// engine is asked), an existing one through its kubeconfig.
pub async fn prune_dry_run(inv: &Invocation) -> String {
    let (plan, o) = (&inv.plan, &inv.target);
    let head = format!(
        "prune (ApplySet {}/{})",
        crate::kube::applyset::PARENT_NAMESPACE,
        crate::kube::applyset::parent_name(&plan.name)
    );
    if provider::managed(plan) && !provider::cluster_dir(plan, o).join("kubeconfig").is_file() {
        return format!("{head}: the cluster does not exist yet: nothing to prune\n");
    }
    let cancel = CancellationToken::new();
    let found = async {
        let (_, kube) = connect(plan, o, &cancel)
            .await
            .map_err(|_| "cannot reach the cluster".to_string())?;
        let mut plan = plan.clone();
        fetch_remote(&mut plan, &inv.select, &|_| {}).await?;
        let includes = |id: &str| inv.select.includes(id);
        crate::steps::prune::preview(&kube, &plan, &includes)
            .await
            .map_err(|e| e.chain())
    };
    let orphans = match tokio::time::timeout(Duration::from_secs(10), found).await {
        Ok(Ok(o)) => o,
        Ok(Err(why)) => {
            return format!(
                "{head}: not known ({}); `bookinfo-up diff` shows it once the cluster answers\n",
                why.lines().next().unwrap_or_default()
            );
        }
        Err(_) => {
            return format!("{head}: not known (the cluster did not answer within 10s)\n");
        }
    };
    let mut out = String::new();
    let changes = orphans.changes();
    if changes.is_empty() && orphans.verdicts.kept.is_empty() {
        out.push_str(&format!("{head}: nothing would be pruned\n"));
        return out;
    }
    out.push_str(&format!("{head}:\n"));
    for c in &changes {
        out.push_str(&format!("  - {}: {}\n", c.target, c.summary));
    }
    for (k, why) in &orphans.verdicts.kept {
        out.push_str(&format!("  kept {k}: {why}\n"));
    }
    out
}
