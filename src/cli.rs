//! The command lines of `bookinfo-up` and `bookinfo-down`: clap arguments become a `Config`,
//! and `up`/`down` drive load → analyze → provider → runner → reporters. Exit codes: 0 done,
//! 1 a step or the cluster failed, 2 the plan or the command line is wrong, 130 cancelled.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::kube::Kube;
use crate::plan::{Action, Plan};
use crate::provider::{self, Overrides, ProviderError};
use crate::report::{self, ReportOptions, ReporterKind};
use crate::run::{Event, Outcome, RunOptions, RunReport, Runner, StepReport};

pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_CANCELLED: i32 = 130;

const DEFAULT_PLAN: &str = "plans/bookinfo.toml";

const UP_EXAMPLES: &str = "\
Examples:
  bookinfo-up plans/sim.toml                 bring the simulated playground up (kwok)
  bookinfo-up                                the real one: kind, Istio, Bookinfo (plans/bookinfo.toml)
  bookinfo-up --dry-run                      show the waves and what each step would do
  bookinfo-up --context prod-eu plans/bookinfo.toml
                                             run the plan against an existing cluster
  bookinfo-up --only bookinfo --only ports   run just these steps
  bookinfo-up --output json --junit up.xml   machine-readable summary and a JUnit report
  bookinfo-up completions bash > /etc/bash_completion.d/bookinfo-up";

const DOWN_EXAMPLES: &str = "\
Examples:
  bookinfo-down plans/sim.toml               delete the simulated cluster
  bookinfo-down --keep-cluster               undo the plan's steps, keep the cluster
  bookinfo-down --context prod-eu            remove only what the plan created there";

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
    /// The plan file
    #[arg(value_name = "PLAN", default_value = DEFAULT_PLAN)]
    pub plan: PathBuf,
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
    if let Some(UpCommand::Completions { shell }) = args.command {
        let mut cmd = <UpArgs as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut cmd, "bookinfo-up", &mut std::io::stdout());
        return 0;
    }
    block_on(up(args))
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

fn preflight_message(e: &ProviderError) -> String {
    match e {
        ProviderError::Preflight(problems) => {
            let mut s = format!(
                "preflight found {} problem{}; nothing was created",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            );
            for p in problems {
                s.push_str(&format!("\n  - {}\n    fix: {}", p.what, p.fix));
            }
            s
        }
        other => other.to_string(),
    }
}

async fn up(args: UpArgs) -> i32 {
    let c = &args.common;
    let Some(mut plan) = load_plan(&c.plan) else {
        return EXIT_USAGE;
    };
    if let Err(e) = check_ids(&plan, &args.only, &args.skip) {
        eprintln!("{e}");
        return EXIT_USAGE;
    }
    if c.dry_run {
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

    let setup = async {
        phase(
            "preflight",
            "checking tools and the cluster's preconditions".into(),
        );
        provider::preflight(&plan, &o, &cancel)
            .await
            .map_err(|e| phase_failure("preflight", preflight_message(&e)))?;
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
        Ok(Arc::new(kube))
    };
    let result = unless_cancelled(&cancel, setup)
        .await
        .unwrap_or_else(|| Err(phase_failure("cluster", CANCELLED.into())));

    let (steps, cancelled) = match result {
        Ok(kube) => {
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
    finish_run(&plan, "up", steps, started, cancelled, tx, reporter).await
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
    plan: &Plan,
    command: &str,
    steps: Vec<StepReport>,
    started: Instant,
    cancelled: bool,
    tx: mpsc::UnboundedSender<Event>,
    reporter: tokio::task::JoinHandle<Option<RunReport>>,
) -> i32 {
    let report = crate::run::finish(plan, command, steps, started, cancelled);
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
    let Some(plan) = load_plan(&c.plan) else {
        return EXIT_USAGE;
    };
    let o = overrides(c);
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
    finish_run(
        &plan,
        "down",
        steps,
        started,
        cancel.is_cancelled(),
        tx,
        reporter,
    )
    .await
}
