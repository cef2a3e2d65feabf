//! The command lines of `bookinfo-up` and `bookinfo-down`: clap arguments, the plan they name
//! (a file, or a built-in plan), `init` and completions, and exit codes: 0 done, 1 a step or
//! the cluster failed, 2 the plan or the command line is wrong, 130 cancelled. The runs
//! themselves are `session`'s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::embedded;
use crate::invocation::{
    DownOptions, Invocation, OutputSettings, PlanArgs, RunSettings, UpOptions,
};

pub use crate::invocation::{
    EXIT_CANCELLED, EXIT_CLUSTER, EXIT_DIFFERENT, EXIT_FAILED, EXIT_INCOMPLETE, EXIT_USAGE,
};
pub use crate::report::{ColorChoice, LogFormat};

const UP_EXAMPLES: &str = "\
Examples:
  bookinfo-up                                the real playground: kind, Istio, Bookinfo (built-in plan `bookinfo`)
  bookinfo-up sim                            the same flow on a simulated kwok cluster (built-in plan `sim`)
  bookinfo-up my/plan.toml                   a plan file
  bookinfo-up --dry-run                      show the waves and what each step would do
  bookinfo-up diff sim                       what a run would change on the running cluster
  bookinfo-up status --context prod-eu       converged, drifted or failing, step by step
  bookinfo-up init plans-here                write the built-in plans and manifests out for editing
  bookinfo-up --context prod-eu bookinfo     run the plan against an existing cluster
  bookinfo-up --only bookinfo --only ports   run just these steps
  bookinfo-up --output json --junit up.xml   machine-readable summary and a JUnit report
  bookinfo-up completions bash > /etc/bash_completion.d/bookinfo-up";

const DOWN_EXAMPLES: &str = "\
Examples:
  bookinfo-down                              take down the cluster `bookinfo-up` made
  bookinfo-down sim                          delete the simulated cluster
  bookinfo-down --keep-cluster bookinfo      undo the plan's steps, keep the cluster
  bookinfo-down --force bookinfo             delete a cluster that carries no owner marker
  bookinfo-down --context prod-eu bookinfo   remove only what the plan created there";

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
}

/// Options shared by both commands.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// A plan file, or a built-in plan: `bookinfo` (kind; the default of `up`) or `sim` (kwok)
    #[arg(value_name = "PLAN")]
    pub plan: Option<PathBuf>,
    /// Print what would be done, touch nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Run against the cluster of this kubeconfig (as provider `existing`)
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (as provider `existing`)
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Steps to run at once
    #[arg(long, short = 'j', default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Stop everything at the first failure
    #[arg(long)]
    pub fail_fast: bool,
    /// Write a summary document to stdout
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub output: Option<OutputFormat>,
    /// Write a JUnit XML report, one testcase per step and check
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Log lines instead of live progress
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Where failure diagnostics go [default: <state>/artifacts/<plan>]
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// More detail (-v, -vv)
    #[arg(long, short = 'v', action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Parser)]
#[command(
    name = "bookinfo-up",
    version,
    about = "Bring an Istio + Bookinfo playground to a healthy, converged state from a TOML plan",
    after_help = UP_EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct UpArgs {
    #[command(subcommand)]
    pub command: Option<UpCommand>,
    #[command(flatten)]
    pub common: Common,
    /// Run only these steps (repeatable)
    #[arg(long, value_name = "ID")]
    pub only: Vec<String>,
    /// Leave these steps out (repeatable)
    #[arg(long, value_name = "ID")]
    pub skip: Vec<String>,
    /// Also copy the engine's kubeconfig for the cluster to FILE
    #[arg(long, value_name = "FILE")]
    pub export_kubeconfig: Option<PathBuf>,
    /// Take over a cluster of the plan's name that `bookinfo-up` did not make: mark it as
    /// this plan's (then `bookinfo-down` may delete it)
    #[arg(long)]
    pub adopt: bool,
    /// Leave in place the objects of the plan's ApplySet that the plan no longer has (the
    /// summary counts them); `[prune] enabled = false` in the plan does the same
    #[arg(long)]
    pub no_prune: bool,
}

/// `bookinfo-up diff` and `bookinfo-up status`: read-only looks at a running environment.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A plan file, or a built-in plan: `bookinfo` (kind; the default) or `sim` (kwok)
    #[arg(value_name = "PLAN")]
    pub plan: Option<PathBuf>,
    /// Look at the cluster of this kubeconfig (as provider `existing`)
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (as provider `existing`)
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Write a machine-readable document to stdout instead
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub output: Option<OutputFormat>,
    /// Only these steps (repeatable)
    #[arg(long, value_name = "ID")]
    pub only: Vec<String>,
    /// Leave these steps out (repeatable)
    #[arg(long, value_name = "ID")]
    pub skip: Vec<String>,
    /// Steps compared at once
    #[arg(long, short = 'j', default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Colour: on a terminal unless NO_COLOR is set (auto), always, never
    #[arg(long, value_enum, value_name = "WHEN", default_value = "auto")]
    pub color: ColorChoice,
}

const DIFF_HELP: &str = "\
Shows what `bookinfo-up PLAN` would change on the running cluster, without changing it: a
unified diff per object (server-side dry run against the live object; status and managed
fields left out), helm chart and values changes, namespace labels, merged ConfigMap keys.
Checks are listed as `would check`. Secrets show which keys change, never their values.
Creates no cluster and writes nothing: the client refuses any request but reads and dry runs.

Exit status: 0 no differences, 1 differences, 2 plan or usage error, 3 the cluster does not
exist, does not answer or belongs to another plan, 4 a step could not be compared.

Examples:
  bookinfo-up diff                           the built-in plan `bookinfo` against its kind cluster
  bookinfo-up diff sim                       the simulated cluster
  bookinfo-up diff --context prod-eu my.toml a plan against an existing cluster
  bookinfo-up diff --output json sim | jq '.steps[] | select(.changes > 0)'";

const STATUS_HELP: &str = "\
One read-only look at a running environment: each step converged, drifted (with what
differs), missing or failing (checks are run once, for a few seconds); Deployments not
available and pods not ready, with their reasons; helm releases and their status; where the
environment answers, and its kubeconfig.

Exit status: 0 everything converged and healthy, 1 anything else, 2 plan or usage error,
3 the cluster does not exist, does not answer or belongs to another plan.

Examples:
  bookinfo-up status                         the built-in plan `bookinfo` on its kind cluster
  bookinfo-up status sim && echo healthy     gate on it in CI
  bookinfo-up status --output json sim       the same, as JSON";

#[derive(Debug, Subcommand)]
pub enum UpCommand {
    /// What a run would change on the running cluster, as a unified diff (read-only)
    #[command(after_help = DIFF_HELP)]
    Diff(InspectArgs),
    /// Converged, drifted, missing or failing, step by step, and the environment's health (read-only)
    #[command(after_help = STATUS_HELP)]
    Status(InspectArgs),
    /// Print shell completions
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the built-in plans, their manifests and the version pins into DIR, for editing
    Init {
        /// Where to write them
        #[arg(value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Overwrite files that exist
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Parser)]
#[command(
    name = "bookinfo-down",
    version,
    about = "Take down what `bookinfo-up` brought up: the cluster it created, or the plan's objects on an existing one",
    after_help = DOWN_EXAMPLES
)]
pub struct DownArgs {
    #[command(flatten)]
    pub common: Common,
    /// Undo the plan's steps but keep the cluster
    #[arg(long)]
    pub keep_cluster: bool,
    /// Delete even when nothing proves the cluster is this plan's (it has no owner marker,
    /// or its API server does not answer). A cluster marked by another plan is still refused
    #[arg(long)]
    pub force: bool,
}

impl Common {
    fn plan_args(&self) -> PlanArgs {
        PlanArgs {
            plan: self.plan.clone(),
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            ..PlanArgs::default()
        }
    }

    fn run(&self) -> RunSettings {
        RunSettings {
            dry_run: self.dry_run,
            jobs: self.jobs as usize,
            fail_fast: self.fail_fast,
            artifacts: self.artifacts.clone(),
        }
    }

    fn output(&self) -> OutputSettings {
        OutputSettings {
            log_format: self.log_format,
            json: self.output.is_some(),
            junit: self.junit.clone(),
            verbose: self.verbose,
            quiet: self.quiet,
            color: ColorChoice::Auto,
        }
    }
}

impl InspectArgs {
    fn invocation(&self) -> Result<Invocation, i32> {
        let plan = PlanArgs {
            plan: self.plan.clone(),
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            only: self.only.clone(),
            skip: self.skip.clone(),
        };
        let run = RunSettings {
            jobs: self.jobs as usize,
            ..RunSettings::default()
        };
        let output = OutputSettings {
            json: self.output.is_some(),
            color: self.color,
            ..OutputSettings::default()
        };
        Invocation::new(plan, run, output)
    }
}

/// Entry point of `bookinfo-up`; returns the exit code.
pub fn up_main() -> i32 {
    let args = UpArgs::parse();
    match args.command {
        Some(UpCommand::Completions { shell }) => {
            let mut cmd = <UpArgs as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "bookinfo-up", &mut std::io::stdout());
            0
        }
        Some(UpCommand::Init { dir, force }) => init(&dir, force),
        Some(UpCommand::Diff(a)) => match a.invocation() {
            Ok(inv) => block_on(crate::session::diff(inv)),
            Err(code) => code,
        },
        Some(UpCommand::Status(a)) => match a.invocation() {
            Ok(inv) => block_on(crate::session::status(inv)),
            Err(code) => code,
        },
        None => {
            let options = UpOptions {
                export_kubeconfig: args.export_kubeconfig.clone(),
                adopt: args.adopt,
                no_prune: args.no_prune,
            };
            let plan = PlanArgs {
                only: args.only.clone(),
                skip: args.skip.clone(),
                ..args.common.plan_args()
            };
            match Invocation::new(plan, args.common.run(), args.common.output()) {
                Ok(inv) => block_on(crate::session::up(inv, options)),
                Err(code) => code,
            }
        }
    }
}

/// `bookinfo-up init DIR`: the built-in plans, manifests and pins, written out for editing.
fn init(dir: &Path, force: bool) -> i32 {
    match embedded::write_tree(dir, force) {
        Ok(written) => {
            eprintln!(
                "wrote {} files into {}",
                written.len(),
                crate::diag::display_path(dir)
            );
            for (name, file) in embedded::PLANS {
                eprintln!(
                    "  {:<9} bookinfo-up {}",
                    name,
                    crate::diag::display_path(&dir.join(file))
                );
            }
            0
        }
        Err(e @ embedded::InitError::Exists { .. }) => {
            eprintln!(
                "error: {e}; nothing was written\n  = help: pass `--force` to overwrite them, or choose another folder"
            );
            EXIT_USAGE
        }
        Err(e) => {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            eprintln!("error: {e}{cause}");
            EXIT_FAILED
        }
    }
}

/// Entry point of `bookinfo-down`; returns the exit code.
pub fn down_main() -> i32 {
    let args = DownArgs::parse();
    let options = DownOptions {
        keep_cluster: args.keep_cluster,
        force: args.force,
    };
    let c = &args.common;
    match Invocation::for_down(c.plan_args(), c.run(), c.output()) {
        Ok(Some(inv)) => block_on(crate::session::down(inv, options)),
        Ok(None) => 0,
        Err(code) => code,
    }
}

/// Runs a command to its exit code. The exit does not wait on a blocking task that is still
/// at work (a tool's reaper): it gets a short grace, then the process exits anyway.
fn block_on(command: impl std::future::Future<Output = i32>) -> i32 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let code = runtime.block_on(command);
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}
