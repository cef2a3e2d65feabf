//! The command lines of `bookinfo-up` and `bookinfo-down`: clap arguments become a `Config`,
//! and `up`/`down` drive load → analyze → provider → runner → reporters. Exit codes: 0 done,
//! 1 a step or the cluster failed, 2 the plan or the command line is wrong, 130 cancelled.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::embedded;
use crate::kube::Kube;
use crate::plan::{Action, Plan};
use crate::provider::{self, Access, Findings, Overrides, PlanRecord, ProviderError, Severity};
use crate::report::{self, ReportOptions, ReporterKind};
use crate::run::{Event, NextSteps, Outcome, RunOptions, RunReport, Runner, StepReport};

pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_CANCELLED: i32 = 130;

const UP_EXAMPLES: &str = "\
Examples:
  bookinfo-up                                the real playground: kind, Istio, Bookinfo (built-in plan `bookinfo`)
  bookinfo-up sim                            the same flow on a simulated kwok cluster (built-in plan `sim`)
  bookinfo-up my/plan.toml                   a plan file
  bookinfo-up --dry-run                      show the waves and what each step would do
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
  bookinfo-down --context prod-eu bookinfo   remove only what the plan created there";

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

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
}

#[derive(Debug, Subcommand)]
pub enum UpCommand {
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
        None => block_on(up(args)),
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
    block_on(down(args))
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

fn color_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

fn init_tracing(c: &Common, tty: bool) {
    use tracing_subscriber::EnvFilter;
    // Our own crate gets the verbosity asked for; libraries stay at info so that even -vv
    // never logs request headers (tokens) or TLS material.
    let ours = match (c.quiet, c.verbose, tty) {
        (true, _, _) => "error",
        (_, 0, true) => "warn",
        (_, 0, false) => "info",
        (_, 1, _) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("BOOKINFO_UP_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,bookinfo_up={ours}")))
        // Whatever BOOKINFO_UP_LOG asks for: rustls logs the peer's certificate chain at
        // trace, and kwok's API server presents the kubeconfig's client certificate.
        .add_directive("rustls=info".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match c.log_format {
        Some(LogFormat::Json) => builder.json().try_init(),
        _ => builder.with_ansi(color_enabled()).try_init(),
    };
}

fn report_options(c: &Common) -> (ReportOptions, bool) {
    let tty = c.log_format.is_none() && std::io::stderr().is_terminal();
    let opts = ReportOptions {
        kind: match (c.log_format, tty) {
            (Some(LogFormat::Json), _) => ReporterKind::Json,
            (_, true) => ReporterKind::Tty,
            _ => ReporterKind::Plain,
        },
        quiet: c.quiet,
        verbose: c.verbose,
        color: color_enabled(),
        output_json: c.output.is_some(),
        junit: c.junit.clone(),
    };
    (opts, tty)
}

fn overrides(c: &Common) -> Overrides {
    Overrides {
        kubeconfig: c.kubeconfig.clone(),
        context: c.context.clone(),
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

/// Ctrl-C or SIGTERM cancels the run; a second signal exits at once.
fn spawn_signal_handler(cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut signalled = false;
        loop {
            let term_recv = async {
                match term.as_mut() {
                    Some(t) => t.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { return },
                _ = term_recv => {}
            }
            if signalled {
                // No waiting: kill every tool's process group and go.
                crate::process::kill_all();
                std::process::exit(EXIT_CANCELLED);
            }
            signalled = true;
            cancel.cancel();
        }
    });
}

/// How `bookinfo-down` goes on once the cluster is known.
enum Teardown {
    /// Nothing is left to run (the cluster is gone, or was deleted whole).
    Done(Vec<StepReport>),
    /// The steps' teardown, in reverse, against this client.
    Run(Arc<Plan>, Arc<Kube>),
}

const CANCELLED: &str = "the run was cancelled";

/// How long the work before the runner gets, once the run is cancelled, to stop on its own
/// (a tool gets SIGTERM and up to 0.8 s before SIGKILL) before it is dropped. Dropping it
/// SIGKILLs the process group of any tool it still runs. Together with the report this stays
/// well inside the 2 s a Ctrl-C may take.
const CANCEL_GRACE: Duration = Duration::from_millis(1000);

/// Runs `work` to its end, or, once `cancel` fires and the grace is over, gives up on it
/// (`None`). Work that watches the token itself ends sooner and keeps its own outcome.
async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => Some(r),
        _ = cancel.cancelled() => tokio::time::timeout(CANCEL_GRACE, work).await.ok(),
    }
}

fn phase_failure(id: &str, message: String) -> StepReport {
    StepReport {
        id: id.into(),
        kind: id.into(),
        check: true,
        outcome: Outcome::Failed { cause: message },
        elapsed: Duration::ZERO,
        attempts: 1,
    }
}

async fn up(args: UpArgs) -> i32 {
    let c = &args.common;
    let source = match resolve_plan(c.plan.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_USAGE;
        }
    };
    let Some(mut plan) = load_plan(&source.path) else {
        return EXIT_USAGE;
    };
    if let Err(e) = check_ids(&plan, &args.only, &args.skip) {
        eprintln!("{e}");
        return EXIT_USAGE;
    }
    if c.dry_run {
        if let Some(name) = source.builtin {
            println!(
                "built-in plan `{name}`, written to {}",
                source.path.display()
            );
        }
        print!("{}", report::dry_run(&plan));
        return 0;
    }
    let (opts, tty) = report_options(c);
    init_tracing(c, tty);
    let o = overrides(c);
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let (tx, rx) = mpsc::unbounded_channel();
    let reporter = tokio::spawn(report::consume(rx, opts));
    let started = Instant::now();
    let _ = tx.send(Event::RunStarted {
        plan: plan.name.clone(),
        steps: plan.steps.len(),
    });
    let phase = |name: &str, message: String| {
        let _ = tx.send(Event::Phase {
            name: name.into(),
            message,
        });
    };

    // Preflight's findings, for the final report; filled before anything else can fail.
    let findings = std::sync::Mutex::new(Findings::default());
    let setup = async {
        phase(
            "preflight",
            "checking tools and the cluster's preconditions".into(),
        );
        let found = provider::preflight(&plan, &o, &cancel).await;
        // Warnings are shown as they are found; errors end the phase as its failure, each
        // with its fix, so that they are shown once.
        for problem in &found.warnings {
            let _ = tx.send(Event::Problem {
                severity: Severity::Warning,
                problem: problem.clone(),
            });
        }
        let failed = (!found.errors.is_empty())
            .then(|| phase_failure("preflight", report::preflight_failure(&found.errors)));
        *findings.lock().unwrap_or_else(|e| e.into_inner()) = found;
        if let Some(failure) = failed {
            return Err(failure);
        }
        // Remote manifests are fetched and checked against their pins before any cluster is
        // created or touched: a tampered file stops the run with nothing changed.
        fetch_remote(&mut plan, &o, &|m| phase("fetch", m))
            .await
            .map_err(|e| phase_failure("fetch", e))?;
        let progress = |m: String| phase("cluster", m);
        let access = provider::ensure(&plan, &o, &progress, &cancel)
            .await
            .map_err(|e| phase_failure("cluster", e.to_string()))?;
        let kube = Kube::connect(&access.kubeconfig, access.context.as_deref())
            .await
            .map_err(|e| phase_failure("cluster", e.chain()))?;
        if access.managed {
            match provider::owner(&kube).await {
                Ok(Some(owner)) if owner != plan.name => {
                    let e = ProviderError::NotOurs {
                        cluster: plan.cluster.name.clone(),
                        owner,
                        plan: plan.name.clone(),
                    };
                    return Err(phase_failure("cluster", e.to_string()));
                }
                Ok(_) => provider::mark_owner(&kube, &plan.name)
                    .await
                    .map_err(|e| phase_failure("cluster", e.to_string()))?,
                Err(e) => return Err(phase_failure("cluster", e.to_string())),
            }
        }
        // Which plan made the cluster, for `bookinfo-down` without a PLAN; written once the
        // cluster is known to be this plan's.
        if access.managed {
            let record = PlanRecord {
                plan: plan.name.clone(),
                path: plan.path.clone(),
                builtin: source.builtin.map(str::to_string),
            };
            let dir = provider::cluster_dir(&plan, &o);
            provider::record_plan(&dir, &record).map_err(|e| {
                phase_failure(
                    "cluster",
                    format!("cannot write the state folder `{}`: {e}", dir.display()),
                )
            })?;
        }
        if let Some(target) = &args.export_kubeconfig {
            provider::export_kubeconfig(&access, target).map_err(|e| {
                phase_failure(
                    "cluster",
                    format!("cannot write `{}`: {e}", target.display()),
                )
            })?;
            phase(
                "cluster",
                format!("kubeconfig copied to {}", target.display()),
            );
        }
        Ok((Arc::new(kube), access))
    };
    let result = unless_cancelled(&cancel, setup)
        .await
        .unwrap_or_else(|| Err(phase_failure("cluster", CANCELLED.into())));
    let access = result.as_ref().ok().map(|(_, a)| a.clone());
    let findings = findings.into_inner().unwrap_or_else(|e| e.into_inner());

    let (steps, cancelled) = match result {
        Ok((kube, _)) => {
            let plan = Arc::new(plan.clone());
            let options = run_options(c, &o, &plan, &args.only, &args.skip, false);
            let runner = Runner::new(plan, Some(kube), options, tx.clone(), cancel.clone());
            (runner.run().await, cancel.is_cancelled())
        }
        Err(failure) => {
            let _ = tx.send(Event::StepFinished(failure.clone()));
            (vec![failure], cancel.is_cancelled())
        }
    };
    let mut report = crate::run::finish(&plan, "up", steps, started, cancelled);
    report.warnings = findings.warnings;
    report.errors = findings.errors;
    if report.success() {
        report.next_steps = access.map(|a| next_steps(&plan, &a));
    }
    finish_run(report, tx, reporter).await
}

/// What to tell the user after a successful `up`: the engine's kubeconfig for the cluster,
/// then the plan's `[[plan.next]]`.
pub fn next_steps(plan: &Plan, access: &Access) -> NextSteps {
    let kubeconfig = access.kubeconfig.display().to_string();
    NextSteps {
        kubectl: format!("export KUBECONFIG={}", shell_quote(&kubeconfig)),
        kubeconfig,
        context: access.context.clone(),
        items: plan.next.clone(),
    }
}

/// `text` as one shell word: unchanged when it needs no quoting, else in single quotes.
fn shell_quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

fn run_options(
    c: &Common,
    o: &Overrides,
    plan: &Plan,
    only: &[String],
    skip: &[String],
    reverse: bool,
) -> RunOptions {
    RunOptions {
        jobs: c.jobs as usize,
        fail_fast: c.fail_fast,
        only: only.iter().cloned().collect::<BTreeSet<_>>(),
        skip: skip.iter().cloned().collect::<BTreeSet<_>>(),
        cache_dir: std::env::var_os("BOOKINFO_UP_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(default_cache_dir),
        artifacts: c
            .artifacts
            .clone()
            .unwrap_or_else(|| o.state_dir.join("artifacts")),
        cluster_logs: provider::cluster_logs(plan, o),
        reverse,
    }
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("bookinfo-up/downloads")
}

/// Fetches and verifies every remote manifest before any step runs.
async fn fetch_remote(
    plan: &mut Plan,
    _o: &Overrides,
    progress: &dyn Fn(String),
) -> Result<(), String> {
    let cache = std::env::var_os("BOOKINFO_UP_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(default_cache_dir);
    for step in &mut plan.steps {
        if let Action::Apply(a) = &mut step.action {
            let urls = std::mem::take(&mut a.urls);
            for u in &urls {
                progress(format!("fetching {}", u.url));
                let text = crate::steps::fetch::fetch(u, &cache)
                    .await
                    .map_err(|e| format!("step `{}`: {e}", step.id))?;
                let vars = a.template.then_some(&a.vars);
                let objects =
                    crate::steps::fetch::objects(u, &text, vars, &|n| std::env::var(n).ok())
                        .map_err(|e| format!("step `{}`: {e}", step.id))?;
                a.objects.extend(objects);
            }
            a.urls = urls;
        }
    }
    crate::steps::fold_config_merges(plan)?;
    Ok(())
}

async fn finish_run(
    report: RunReport,
    tx: mpsc::UnboundedSender<Event>,
    reporter: tokio::task::JoinHandle<Option<RunReport>>,
) -> i32 {
    let code = if report.cancelled {
        EXIT_CANCELLED
    } else if report.success() {
        0
    } else {
        EXIT_FAILED
    };
    let _ = tx.send(Event::RunFinished(report));
    drop(tx);
    let _ = reporter.await;
    code
}

async fn down(args: DownArgs) -> i32 {
    let c = &args.common;
    let o = overrides(c);
    let source = match plan_for_down(c.plan.as_deref(), &o) {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!(
                "nothing to take down: no cluster made by `bookinfo-up` is recorded in {}\n  = help: to take down a plan's objects from another cluster, name the plan: `bookinfo-down --context C PLAN`",
                o.state_dir.join("clusters").display()
            );
            return 0;
        }
        Err(e) => {
            eprintln!("{e}");
            return EXIT_USAGE;
        }
    };
    let Some(plan) = load_plan(&source.path) else {
        return EXIT_USAGE;
    };
    let managed = !matches!(
        provider::effective(&plan, &o),
        crate::plan::Provider::Existing { .. }
    );
    let delete_cluster = managed && plan.teardown.delete_cluster && !args.keep_cluster;
    if c.dry_run {
        if delete_cluster {
            println!(
                "would delete {} cluster `{}` (if this plan created it)",
                plan.cluster.provider_name(),
                plan.cluster.name
            );
        } else {
            println!("would undo, in reverse order:");
            let order: Vec<&crate::plan::Step> = plan
                .waves
                .iter()
                .rev()
                .flat_map(|w| w.iter().rev().map(|&i| &plan.steps[i]))
                .collect();
            for s in order {
                if matches!(
                    s.action,
                    Action::Helm(_)
                        | Action::Apply(_)
                        | Action::Namespace(_)
                        | Action::Patch(_)
                        | Action::ConfigMerge(_)
                ) {
                    println!("  {} ({})", s.id, s.kind());
                }
            }
        }
        return 0;
    }
    let (opts, tty) = report_options(c);
    init_tracing(c, tty);
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let (tx, rx) = mpsc::unbounded_channel();
    let reporter = tokio::spawn(report::consume(rx, opts));
    let started = Instant::now();
    let _ = tx.send(Event::RunStarted {
        plan: plan.name.clone(),
        steps: plan.steps.len(),
    });
    let phase = |name: &str, message: String| {
        let _ = tx.send(Event::Phase {
            name: name.into(),
            message,
        });
    };

    // What runs before the runner: the cluster's existence and owner, its deletion, the
    // client and the remote manifests. Either it settles the whole teardown or it hands the
    // plan and a client to the runner.
    let setup = async {
        if managed {
            let exists = provider::exists(&plan, &o, &cancel)
                .await
                .map_err(|e| vec![phase_failure("cluster", e.to_string())])?;
            if !exists {
                phase(
                    "cluster",
                    format!(
                        "cluster `{}` does not exist: nothing to do",
                        plan.cluster.name
                    ),
                );
                return Ok(Teardown::Done(vec![StepReport {
                    id: "cluster".into(),
                    kind: "cluster".into(),
                    check: false,
                    outcome: Outcome::Unchanged {
                        summary: format!("cluster `{}` is already gone", plan.cluster.name),
                    },
                    elapsed: Duration::ZERO,
                    attempts: 1,
                }]));
            }
            let access = provider::access_for_down(&plan, &o)
                .map_err(|e| vec![phase_failure("cluster", e.to_string())])?;
            if let Ok(kube) = Kube::connect(&access.kubeconfig, access.context.as_deref()).await
                && let Ok(Some(owner)) = provider::owner(&kube).await
                && owner != plan.name
            {
                let e = ProviderError::NotOurs {
                    cluster: plan.cluster.name.clone(),
                    owner,
                    plan: plan.name.clone(),
                };
                return Err(vec![phase_failure("cluster", e.to_string())]);
            }
            if delete_cluster {
                let progress = |m: String| phase("cluster", m);
                let t = Instant::now();
                let deleted = provider::delete(&plan, &o, &progress, &cancel)
                    .await
                    .map_err(|e| vec![phase_failure("cluster", e.to_string())])?;
                return Ok(Teardown::Done(vec![StepReport {
                    id: "cluster".into(),
                    kind: "cluster".into(),
                    check: false,
                    outcome: if deleted {
                        Outcome::Changed {
                            summary: format!(
                                "deleted {} cluster `{}`",
                                plan.cluster.provider_name(),
                                plan.cluster.name
                            ),
                        }
                    } else {
                        Outcome::Unchanged {
                            summary: format!("cluster `{}` is already gone", plan.cluster.name),
                        }
                    },
                    elapsed: t.elapsed(),
                    attempts: 1,
                }]));
            }
        }
        let access = provider::access_for_down(&plan, &o)
            .map_err(|e| vec![phase_failure("cluster", e.to_string())])?;
        let kube = Kube::connect(&access.kubeconfig, access.context.as_deref())
            .await
            .map_err(|e| vec![phase_failure("cluster", e.chain())])?;
        // Teardown needs the objects of remote manifests too (from the cache when warm).
        let mut plan = plan.clone();
        fetch_remote(&mut plan, &o, &|m| phase("fetch", m))
            .await
            .map_err(|e| vec![phase_failure("fetch", e)])?;
        Ok(Teardown::Run(Arc::new(plan), Arc::new(kube)))
    };
    let steps = match unless_cancelled(&cancel, setup)
        .await
        .unwrap_or_else(|| Err(vec![phase_failure("cluster", CANCELLED.into())]))
    {
        Ok(Teardown::Done(steps)) => steps,
        Ok(Teardown::Run(plan, kube)) => {
            let options = run_options(c, &o, &plan, &[], &[], true);
            let runner = Runner::new(plan, Some(kube), options, tx.clone(), cancel.clone());
            runner.run().await
        }
        Err(failure) => {
            for f in &failure {
                let _ = tx.send(Event::StepFinished(f.clone()));
            }
            failure
        }
    };
    if steps.iter().any(|s| {
        s.id == "cluster"
            && matches!(
                s.outcome,
                Outcome::Changed { .. } | Outcome::Unchanged { .. }
            )
    }) {
        // The cluster is gone: `down` without a PLAN no longer finds it.
        provider::forget_plan(&provider::cluster_dir(&plan, &o));
    }
    let report = crate::run::finish(&plan, "down", steps, started, cancel.is_cancelled());
    finish_run(report, tx, reporter).await
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
    use super::*;

    fn overrides_at(state: &Path) -> Overrides {
        Overrides {
            kubeconfig: None,
            context: None,
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

    #[test]
    fn kubeconfig_line_is_one_shell_word() {
        assert_eq!(
            shell_quote("/home/u/.local/state/x"),
            "/home/u/.local/state/x"
        );
        assert_eq!(
            shell_quote("/home/my user/it's"),
            r"'/home/my user/it'\''s'"
        );
    }
}
