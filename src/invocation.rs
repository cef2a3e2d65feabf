//! One command line, parsed once into what a session runs: `Invocation`, with the plan it
//! names resolved and loaded, where its cluster is, which steps run, and how to report.
//! `cli.rs` builds it from clap's arguments; `session` takes it and nothing else from the
//! command line. Also here: which plan a PLAN names (a file or a built-in plan), `--only` and
//! `--skip` checked against it, and the exit codes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::embedded;
use crate::plan::Plan;
use crate::provider::{self, Overrides};
use crate::report::{ColorChoice, LogFormat};

pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_CANCELLED: i32 = 130;
/// `diff` and `status`, as `kubectl diff`: 1 differences (or, for `status`, anything not
/// converged and healthy), 2 plan or usage error, 3 or more the comparison could not be made.
pub const EXIT_DIFFERENT: i32 = 1;
/// The cluster does not exist, does not answer, or belongs to another plan.
pub const EXIT_CLUSTER: i32 = 3;
/// A step could not be compared (an API error, helm, a remote manifest).
pub const EXIT_INCOMPLETE: i32 = 4;

/// A command line, resolved: everything a session needs to run it.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The plan file and, when it is a built-in plan, its name.
    pub source: PlanSource,
    /// PLAN as the user wrote it, for the command lines that messages suggest.
    pub plan_arg: Option<PathBuf>,
    /// The plan, loaded and analyzed, its provider the one the run uses: `existing` when
    /// `--kubeconfig` or `--context` is given.
    pub plan: Plan,
    /// The engine's state folder. (Where the cluster is, `--kubeconfig` and `--context`
    /// included, is the plan's provider.)
    pub target: Overrides,
    /// `--only` and `--skip`, checked against the plan.
    pub select: Selection,
    pub run: RunSettings,
    pub output: OutputSettings,
}

/// What only `up` takes.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// Also copy the engine's kubeconfig here.
    pub export_kubeconfig: Option<PathBuf>,
    /// Take over a same-named cluster that carries no owner marker.
    pub adopt: bool,
    /// Delete nothing that left the plan (`steps::prune`).
    pub no_prune: bool,
}

/// What only `down` takes.
#[derive(Debug, Clone, Copy, Default)]
pub struct DownOptions {
    /// Undo the steps but keep the cluster.
    pub keep_cluster: bool,
    /// Delete what cannot be proven the plan's.
    pub force: bool,
}

/// How steps run.
#[derive(Debug, Clone, Default)]
pub struct RunSettings {
    pub dry_run: bool,
    pub jobs: usize,
    pub fail_fast: bool,
    /// Where failure diagnostics go; `None`: the state folder's `artifacts`.
    pub artifacts: Option<PathBuf>,
}

/// How the run reports.
#[derive(Debug, Clone, Default)]
pub struct OutputSettings {
    pub log_format: Option<LogFormat>,
    /// The summary document on stdout (`--output json`).
    pub json: bool,
    pub junit: Option<PathBuf>,
    pub verbose: u8,
    pub quiet: bool,
    pub color: ColorChoice,
}

/// The parts of a command line that name the plan and its cluster.
#[derive(Debug, Clone, Default)]
pub struct PlanArgs {
    pub plan: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub only: Vec<String>,
    pub skip: Vec<String>,
}

impl Invocation {
    /// Resolves and loads the plan PLAN names, and checks `--only`/`--skip` against it. `Err`
    /// is the exit code, its message printed.
    pub fn new(args: PlanArgs, run: RunSettings, output: OutputSettings) -> Result<Self, i32> {
        let source = resolve_plan(args.plan.as_deref()).map_err(|e| {
            eprintln!("{e}");
            EXIT_USAGE
        })?;
        Self::with_source(source, args, run, output)
    }

    /// `bookinfo-down`'s: PLAN when given, else the plan recorded for the only cluster `up`
    /// made. `Ok(None)`: no cluster is recorded, nothing to do (said on stderr).
    pub fn for_down(
        args: PlanArgs,
        run: RunSettings,
        output: OutputSettings,
    ) -> Result<Option<Self>, i32> {
        let target = target();
        match plan_for_down(args.plan.as_deref(), &target) {
            Ok(Some(source)) => Self::with_source(source, args, run, output).map(Some),
            Ok(None) => {
                eprintln!(
                    "nothing to take down: no cluster made by `bookinfo-up` is recorded in {}\n  = help: to take down a plan's objects from another cluster, name the plan: `bookinfo-down --context C PLAN`",
                    target.state_dir.join("clusters").display()
                );
                Ok(None)
            }
            Err(e) => {
                eprintln!("{e}");
                Err(EXIT_USAGE)
            }
        }
    }

    fn with_source(
        source: PlanSource,
        args: PlanArgs,
        run: RunSettings,
        output: OutputSettings,
    ) -> Result<Self, i32> {
        let mut plan = load_plan(&source.path).ok_or(EXIT_USAGE)?;
        // The provider the run uses, worked out once: `--kubeconfig`/`--context` make it
        // `existing`.
        plan.cluster.provider =
            provider::effective(&plan.cluster.provider, args.kubeconfig, args.context);
        check_ids(&plan, &args.only, &args.skip).map_err(|e| {
            eprintln!("{e}");
            EXIT_USAGE
        })?;
        Ok(Self {
            source,
            plan_arg: args.plan,
            plan,
            target: target(),
            select: Selection {
                only: args.only.into_iter().collect(),
                skip: args.skip.into_iter().collect(),
            },
            run,
            output,
        })
    }

    /// `command` again, with the plan as the user named it (`bookinfo-down sim`).
    pub fn rerun(&self, command: &str) -> String {
        match &self.plan_arg {
            Some(p) => format!("{command} {}", p.display()),
            None => command.to_string(),
        }
    }
}

/// The steps `--only` and `--skip` leave in.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only these (none: all).
    pub only: BTreeSet<String>,
    pub skip: BTreeSet<String>,
}

impl Selection {
    /// Whether step `id` is left in.
    pub fn includes(&self, id: &str) -> bool {
        (self.only.is_empty() || self.only.contains(id)) && !self.skip.contains(id)
    }
}

/// The plan a command runs: a file, or a built-in plan written out of the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSource {
    pub path: PathBuf,
    /// The built-in plan's name, when it is one.
    pub builtin: Option<&'static str>,
}

/// What PLAN means: a built-in plan when it is a bare name (no `/`, no `.toml`), a file
/// otherwise. Built-in plans are written to the user's data folder first (`embedded`), so
/// that messages about them point at real files.
pub fn resolve_plan(arg: Option<&Path>) -> Result<PlanSource, String> {
    let name = match arg {
        None => embedded::DEFAULT_PLAN,
        Some(p) => {
            let text = p.to_string_lossy();
            if text.contains('/') || p.extension().is_some_and(|e| e == "toml") {
                return Ok(PlanSource {
                    path: p.to_path_buf(),
                    builtin: None,
                });
            }
            let names: Vec<&str> = embedded::PLANS.iter().map(|(n, _)| *n).collect();
            match names.iter().copied().find(|n| *n == text) {
                Some(n) => n,
                None => {
                    let hint = crate::diag::did_you_mean(&text, names.iter().copied())
                        .map(|s| format!("did you mean `{s}`? "))
                        .unwrap_or_default();
                    return Err(format!(
                        "error: `{text}` is neither a plan file nor a built-in plan\n  = help: {hint}built-in plans: {}; a plan file is a path (`./{text}`) or ends in `.toml`",
                        names.join(", ")
                    ));
                }
            }
        }
    };
    let file = embedded::plan_file(name).expect("a built-in plan has a file");
    let dir = embedded::default_dir();
    let root = embedded::materialize(&dir).map_err(|e| {
        format!(
            "error: cannot write the built-in plans to `{}`: {e}\n  = help: set XDG_DATA_HOME to a writable folder, or run a plan file",
            dir.display()
        )
    })?;
    Ok(PlanSource {
        path: root.join(file),
        builtin: Some(name),
    })
}

/// Reads and analyzes the plan; prints every problem and returns `None` when there are any.
pub fn load_plan(path: &std::path::Path) -> Option<Plan> {
    let (sources, result) = crate::plan::load(path, &|name| std::env::var(name).ok());
    match result {
        Ok(plan) => Some(plan),
        Err(diags) => {
            eprint!("{}", diags.render(&sources));
            None
        }
    }
}

/// The engine's state folder, from the environment.
fn target() -> Overrides {
    Overrides {
        state_dir: provider::default_state_dir(),
    }
}

/// Checks `--only`/`--skip` ids against the plan.
fn check_ids(plan: &Plan, only: &[String], skip: &[String]) -> Result<(), String> {
    let ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
    for (flag, list) in [("--only", only), ("--skip", skip)] {
        for id in list {
            if !ids.contains(&id.as_str()) {
                let hint = crate::diag::did_you_mean(id, ids.iter().copied())
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| format!("; steps are: {}", ids.join(", ")));
                return Err(format!("error: {flag} names unknown step `{id}`{hint}"));
            }
        }
    }
    Ok(())
}

/// The plan `bookinfo-down` runs: PLAN when given, else the one recorded for the only
/// cluster `up` made. `Ok(None)`: no cluster is recorded, nothing to do.
fn plan_for_down(arg: Option<&Path>, o: &Overrides) -> Result<Option<PlanSource>, String> {
    if arg.is_some() {
        return resolve_plan(arg).map(Some);
    }
    let recorded = provider::recorded_plans(&o.state_dir);
    match recorded.as_slice() {
        [] => Ok(None),
        [(cluster, record)] => match &record.builtin {
            Some(name) => resolve_plan(Some(Path::new(name))).map(Some),
            None if !record.path.is_file() => Err(format!(
                "error: the plan that made cluster `{cluster}`, `{}`, is gone\n  = help: name a plan with the same `[cluster]`: `bookinfo-down PLAN`",
                record.path.display()
            )),
            None => Ok(Some(PlanSource {
                path: record.path.clone(),
                builtin: None,
            })),
        },
        several => {
            let lines: Vec<String> = several
                .iter()
                .map(|(cluster, r)| {
                    let plan = r
                        .builtin
                        .clone()
                        .unwrap_or_else(|| r.path.display().to_string());
                    format!(
                        "  bookinfo-down {plan}    (cluster `{cluster}`, plan `{}`)",
                        r.plan
                    )
                })
                .collect();
            Err(format!(
                "error: `bookinfo-up` made {} clusters; name the plan to take down:\n{}",
                several.len(),
                lines.join("\n")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::provider::PlanRecord;

    fn overrides_at(state: &Path) -> Overrides {
        Overrides {
            state_dir: state.to_path_buf(),
        }
    }

    fn record(state: &Path, cluster: &str, path: &str, builtin: Option<&str>) {
        provider::record_plan(
            &state.join("clusters").join(cluster),
            &PlanRecord {
                plan: cluster.into(),
                path: path.into(),
                builtin: builtin.map(str::to_string),
            },
        )
        .unwrap();
    }

    #[test]
    fn down_without_a_plan_takes_the_recorded_one() {
        let state = tempfile::tempdir().unwrap();
        let o = overrides_at(state.path());
        assert_eq!(plan_for_down(None, &o), Ok(None));

        record(state.path(), "demo", "/work/demo/plan.toml", None);
        assert_eq!(
            plan_for_down(None, &o),
            Err(
                "error: the plan that made cluster `demo`, `/work/demo/plan.toml`, is gone\n  \
                 = help: name a plan with the same `[cluster]`: `bookinfo-down PLAN`"
                    .into()
            )
        );
        let plan = state.path().join("plan.toml");
        std::fs::write(&plan, "").unwrap();
        record(state.path(), "demo", plan.to_str().unwrap(), None);
        assert_eq!(
            plan_for_down(None, &o),
            Ok(Some(PlanSource {
                path: plan,
                builtin: None
            }))
        );
        // A PLAN given wins over the record.
        assert_eq!(
            plan_for_down(Some(Path::new("other.toml")), &o)
                .unwrap()
                .unwrap()
                .path,
            PathBuf::from("other.toml")
        );

        provider::forget_plan(&state.path().join("clusters/demo"));
        record(
            state.path(),
            "bookinfo-sim",
            "/old/copy/plans/sim.toml",
            Some("sim"),
        );
        let source = plan_for_down(None, &o).unwrap().unwrap();
        assert_eq!(source.builtin, Some("sim"));
        assert!(
            source.path.ends_with("plans/sim.toml") && source.path.is_file(),
            "a built-in plan is this binary's copy: {}",
            source.path.display()
        );
    }

    #[test]
    fn down_without_a_plan_lists_several_clusters() {
        let state = tempfile::tempdir().unwrap();
        record(
            state.path(),
            "bookinfo",
            "/data/plans/bookinfo.toml",
            Some("bookinfo"),
        );
        record(state.path(), "demo", "/work/demo/plan.toml", None);
        let err = plan_for_down(None, &overrides_at(state.path())).unwrap_err();
        assert_eq!(
            err,
            "error: `bookinfo-up` made 2 clusters; name the plan to take down:\n  \
             bookinfo-down bookinfo    (cluster `bookinfo`, plan `bookinfo`)\n  \
             bookinfo-down /work/demo/plan.toml    (cluster `demo`, plan `demo`)"
        );
    }
}
