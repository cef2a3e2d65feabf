//! Cluster providers: `kind`, `kwok` and `existing`. A provider checks its preconditions
//! (preflight), makes sure the cluster exists, and yields the kubeconfig the engine uses. The
//! engine keeps its own kubeconfig per cluster in its state folder; it never writes the
//! user's `~/.kube/config` unless asked (`--export-kubeconfig`).

pub mod existing;
pub mod host_port;
pub mod istiod;
pub mod kind;
pub mod kwok;
pub mod ownership;

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::plan::{Plan, Provider};

pub use ownership::{
    ClusterLock, Intent, OWNER_MARKER, Ownership, Verdict, judge, lock, mark_owner, owner,
};

/// How to reach the plan's cluster.
#[derive(Debug, Clone)]
pub struct Access {
    pub kubeconfig: PathBuf,
    pub context: Option<String>,
    /// The engine created (and may delete) this cluster.
    pub managed: bool,
}

/// A precondition that does not hold, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

/// How bad a preflight problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// It may cause trouble: shown with its fix, and the run goes on.
    Warning,
    /// It will fail: the run stops before anything is created.
    Error,
}

/// What preflight found, sorted by severity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Findings {
    pub fn add(&mut self, severity: Severity, problem: Problem) {
        match severity {
            Severity::Warning => self.warnings.push(problem),
            Severity::Error => self.errors.push(problem),
        }
    }

    pub fn error(&mut self, problem: Problem) {
        self.add(Severity::Error, problem);
    }

    pub fn warning(&mut self, problem: Problem) {
        self.add(Severity::Warning, problem);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A provider tool failed.
    #[error("{message}")]
    Tool { message: String },
    /// The cluster belongs to another plan.
    #[error(
        "cluster `{cluster}` was created by plan `{owner}`, not `{plan}`: refusing to touch it"
    )]
    NotOurs {
        cluster: String,
        owner: String,
        plan: String,
    },
    /// Nothing proves that the cluster is the plan's (no owner marker, or no answer).
    #[error("{message}")]
    Unproven { message: String },
    #[error("the run was cancelled")]
    Cancelled,
    #[error("{0}")]
    Kube(#[from] crate::error::StepError),
}

/// The one mapping of a provider tool's failure: cancelled stays cancelled; a tool that is not
/// installed says where to get it.
impl From<crate::process::ToolError> for ProviderError {
    fn from(e: crate::process::ToolError) -> Self {
        use crate::process::ToolError;
        let install = |program: &str| match program {
            "kind" => Some("https://kind.sigs.k8s.io/docs/user/quick-start/#installation"),
            "kwokctl" => Some("https://kwok.sigs.k8s.io/docs/user/installation/"),
            _ => None,
        };
        match e {
            ToolError::Cancelled { .. } => ProviderError::Cancelled,
            ToolError::NotFound { ref program } if install(program).is_some() => {
                ProviderError::Tool {
                    message: format!(
                        "{e}: install {program} ({})",
                        install(program).unwrap_or_default()
                    ),
                }
            }
            other => ProviderError::Tool {
                message: other.to_string(),
            },
        }
    }
}

/// Where the engine keeps what it knows of clusters: kubeconfigs, provider work folders,
/// records, locks.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Where the engine keeps kubeconfigs and provider work folders.
    pub state_dir: PathBuf,
}

/// The engine's state folder: `$BOOKINFO_UP_STATE_DIR`, else `$XDG_STATE_HOME/bookinfo-up`,
/// else `~/.local/state/bookinfo-up`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BOOKINFO_UP_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("bookinfo-up");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/bookinfo-up")
}

/// The provider a run uses: the plan's, or `existing` when `--kubeconfig` or `--context` is
/// given (keeping what an `existing` plan names and the command line does not). Worked out
/// once, when the command line becomes an `Invocation`, which puts it in the plan it holds.
pub fn effective(
    provider: &Provider,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
) -> Provider {
    if kubeconfig.is_none() && context.is_none() {
        return provider.clone();
    }
    let (planned_kubeconfig, planned_context) = match provider {
        Provider::Existing {
            kubeconfig,
            context,
        } => (kubeconfig.clone(), context.clone()),
        _ => (None, None),
    };
    Provider::Existing {
        kubeconfig: kubeconfig.or(planned_kubeconfig),
        context: context.or(planned_context),
    }
}

/// Whether the engine makes (and may delete) the run's cluster: any provider but `existing`.
pub fn managed(plan: &Plan) -> bool {
    !matches!(plan.cluster.provider, Provider::Existing { .. })
}

/// The folder holding this cluster's kubeconfig and work files.
pub fn cluster_dir(plan: &Plan, o: &Overrides) -> PathBuf {
    o.state_dir.join("clusters").join(&plan.cluster.name)
}

/// Writes what `<tool> get kubeconfig --name NAME` (kind, kwokctl) prints to `path`.
async fn write_kubeconfig(
    tool: crate::process::Tool,
    name: &str,
    path: &Path,
    cancel: &CancellationToken,
) -> Result<(), ProviderError> {
    let program = tool.program().to_string();
    let out = tool
        .args(["get", "kubeconfig", "--name", name])
        .run(cancel)
        .await?;
    if !out.success {
        return Err(ProviderError::Tool {
            message: format!("{program} get kubeconfig failed:\n{}", out.tail(10)),
        });
    }
    std::fs::write(path, out.stdout).map_err(|e| ProviderError::Tool {
        message: format!("cannot write `{}`: {e}", path.display()),
    })
}

/// Whether `<tool> get clusters` (kind, kwokctl) lists cluster `name`.
async fn lists_cluster(
    tool: crate::process::Tool,
    name: &str,
    cancel: &CancellationToken,
) -> Result<bool, ProviderError> {
    let program = tool.program().to_string();
    let out = tool.args(["get", "clusters"]).run(cancel).await?;
    if !out.success {
        return Err(ProviderError::Tool {
            message: format!("{program} get clusters failed:\n{}", out.tail(10)),
        });
    }
    Ok(out.stdout.lines().any(|l| l.trim() == name))
}

/// Logs of the cluster's own processes that no pod holds: a kwok cluster's istiod.
pub fn cluster_logs(plan: &Plan, o: &Overrides) -> Vec<PathBuf> {
    match plan.cluster.provider.clone() {
        Provider::Kwok {
            istiod: Some(_), ..
        } => vec![kwok::component_log(
            &cluster_dir(plan, o),
            &plan.cluster.name,
            istiod::COMPONENT,
        )],
        _ => Vec::new(),
    }
}

/// Which plan made a cluster, kept in its state folder, so that `bookinfo-down` without a
/// PLAN finds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanRecord {
    /// The plan's name (`[plan] name`).
    pub plan: String,
    /// The plan file `up` ran.
    pub path: PathBuf,
    /// The built-in plan's name, when it was one: `down` runs the binary's own copy.
    pub builtin: Option<String>,
}

const PLAN_RECORD: &str = "plan.json";

/// Records that `record.plan` made the cluster whose state folder is `dir`.
pub fn record_plan(dir: &Path, record: &PlanRecord) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(record).expect("a record always serializes");
    std::fs::write(dir.join(PLAN_RECORD), json + "\n")
}

/// Forgets which plan made the cluster of `dir` (it was deleted).
pub fn forget_plan(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(PLAN_RECORD));
}

/// The clusters `up` made that are still recorded, by cluster name.
pub fn recorded_plans(state_dir: &Path) -> Vec<(String, PlanRecord)> {
    let mut found: Vec<(String, PlanRecord)> = std::fs::read_dir(state_dir.join("clusters"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join(PLAN_RECORD)).ok()?;
            let record = serde_json::from_str(&text).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), record))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Checks preconditions before anything is created. Providers other than kind report
/// errors only.
pub async fn preflight(plan: &Plan, cancel: &CancellationToken) -> Findings {
    let mut found = match plan.cluster.provider.clone() {
        Provider::Kind {
            port_mappings,
            min_memory_bytes,
            ..
        } => kind::preflight(&port_mappings, min_memory_bytes, &plan.cluster.name, cancel).await,
        Provider::Kwok {
            binaries, istiod, ..
        } => Findings {
            errors: kwok::preflight(binaries.as_deref(), istiod.as_deref()),
            warnings: Vec::new(),
        },
        Provider::Existing { kubeconfig, .. } => Findings {
            errors: existing::preflight(kubeconfig.as_deref()),
            warnings: Vec::new(),
        },
    };
    let tools: std::collections::BTreeSet<&str> = plan
        .steps
        .iter()
        .flat_map(|s| s.tools().iter().copied())
        .collect();
    for tool in tools {
        if crate::process::which(tool).is_none() {
            found.error(Problem {
                what: format!("`{tool}` is not on PATH; the plan has {tool} steps"),
                fix: match tool {
                    "helm" => "install Helm 3 (https://helm.sh/docs/intro/install/), or `eval \"$(just testbed-env)\"` here".into(),
                    other => format!("install {other}"),
                },
            });
        }
    }
    found
}

/// Makes sure the cluster exists and returns how to reach it.
pub async fn ensure(
    plan: &Plan,
    o: &Overrides,
    progress: &dyn Fn(String),
    cancel: &CancellationToken,
) -> Result<Access, ProviderError> {
    let dir = cluster_dir(plan, o);
    let provider = plan.cluster.provider.clone();
    // kind and kwok keep their kubeconfig and work files in the cluster's state folder.
    if !matches!(provider, Provider::Existing { .. }) {
        std::fs::create_dir_all(&dir).map_err(|e| ProviderError::Tool {
            message: format!("cannot create the state folder `{}`: {e}", dir.display()),
        })?;
    }
    match provider {
        Provider::Kind {
            node_image,
            port_mappings,
            ..
        } => {
            kind::ensure(
                &plan.cluster.name,
                &plan.name,
                &node_image,
                &port_mappings,
                &dir,
                progress,
                cancel,
            )
            .await
        }
        Provider::Kwok {
            nodes,
            binaries,
            apiserver_args,
            kube_version,
            istiod,
        } => {
            let spec = kwok::Spec {
                name: &plan.cluster.name,
                plan: &plan.name,
                nodes,
                binaries: binaries.as_deref(),
                apiserver_args: &apiserver_args,
                kube_version: kube_version.as_deref(),
                istiod: istiod.as_deref(),
            };
            kwok::ensure(&spec, &dir, progress, cancel).await
        }
        Provider::Existing {
            kubeconfig,
            context,
        } => existing::access(kubeconfig, context),
    }
}

/// Whether the cluster exists now (for `down`), without creating anything.
pub async fn exists(
    plan: &Plan,
    o: &Overrides,
    cancel: &CancellationToken,
) -> Result<bool, ProviderError> {
    match plan.cluster.provider.clone() {
        Provider::Kind { .. } => kind::exists(&plan.cluster.name, cancel).await,
        Provider::Kwok { .. } => {
            kwok::exists(&plan.cluster.name, &cluster_dir(plan, o), cancel).await
        }
        Provider::Existing { .. } => Ok(true),
    }
}

/// How to reach a cluster that exists, without creating or starting anything. The engine's
/// kubeconfig for a kind or kwok cluster is written again when it is missing (a state folder
/// emptied, or a cluster made elsewhere), so that its owner marker can be read.
pub async fn access(
    plan: &Plan,
    o: &Overrides,
    cancel: &CancellationToken,
) -> Result<Access, ProviderError> {
    let dir = cluster_dir(plan, o);
    let kubeconfig = dir.join("kubeconfig");
    let context = match plan.cluster.provider.clone() {
        Provider::Existing {
            kubeconfig,
            context,
        } => return existing::access(kubeconfig, context),
        Provider::Kind { .. } => {
            if !kubeconfig.is_file() {
                std::fs::create_dir_all(&dir).map_err(|e| ProviderError::Tool {
                    message: format!("cannot create the state folder `{}`: {e}", dir.display()),
                })?;
                kind::write_kubeconfig(&plan.cluster.name, &kubeconfig, cancel).await?;
            }
            Some(format!("kind-{}", plan.cluster.name))
        }
        Provider::Kwok { .. } => {
            if !kubeconfig.is_file() {
                write_kubeconfig(kwok::kwokctl(&dir), &plan.cluster.name, &kubeconfig, cancel)
                    .await?;
            }
            None
        }
    };
    Ok(Access {
        kubeconfig,
        context,
        managed: true,
    })
}

/// Deletes a cluster the engine created.
pub async fn delete(
    plan: &Plan,
    o: &Overrides,
    progress: &dyn Fn(String),
    cancel: &CancellationToken,
) -> Result<bool, ProviderError> {
    let dir = cluster_dir(plan, o);
    match plan.cluster.provider.clone() {
        Provider::Kind { .. } => kind::delete(&plan.cluster.name, &dir, progress, cancel).await,
        Provider::Kwok { .. } => kwok::delete(&plan.cluster.name, &dir, progress, cancel).await,
        Provider::Existing { .. } => Ok(false),
    }
}

/// Copies the engine's kubeconfig into `~/.kube/config`'s place only when asked.
pub fn export_kubeconfig(access: &Access, target: &Path) -> std::io::Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(&access.kubeconfig, target).map(|_| ())
}
