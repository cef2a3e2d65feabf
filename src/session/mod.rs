//! A run of `bookinfo-up` or `bookinfo-down` against a cluster: `Session` carries what both
//! set up the same way (tracing, the reporter and its event channel, cancellation on Ctrl-C
//! and SIGTERM, the run's clock) and how a run ends (its report, its exit code). The flows
//! themselves are `up.rs` and `down.rs`; `cli.rs` keeps the arguments and exit codes.

mod down;
mod inspect;
mod up;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::invocation::{EXIT_CANCELLED, EXIT_FAILED, Invocation, OutputSettings, Selection};
use crate::plan::{Action, Plan};
use crate::provider;
use crate::report::{self, ReportOptions, ReporterKind};
use crate::run::{Event, Outcome, RunOptions, RunReport, StepReport};

pub use down::down;
pub use inspect::{diff, prune_dry_run, status};
pub use up::{next_steps, up};

/// What `up` and `down` share while they run.
pub struct Session {
    pub cancel: CancellationToken,
    tx: mpsc::UnboundedSender<Event>,
    reporter: tokio::task::JoinHandle<Option<RunReport>>,
    started: Instant,
}

impl Session {
    /// Tracing, the reporter, the signal handler; announces the run of `plan`.
    pub fn start(c: &OutputSettings, plan: &Plan) -> Self {
        let (opts, tty) = report_options(c);
        init_tracing(c, tty);
        let cancel = CancellationToken::new();
        spawn_signal_handler(cancel.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        let reporter = tokio::spawn(report::consume(rx, opts));
        let _ = tx.send(Event::RunStarted {
            plan: plan.name.clone(),
            steps: plan.steps.len(),
        });
        Self {
            cancel,
            tx,
            reporter,
            started: Instant::now(),
        }
    }

    /// Reports what a phase (preflight, fetch, cluster) is doing.
    pub fn phase(&self, name: &str, message: String) {
        let _ = self.tx.send(Event::Phase {
            name: name.into(),
            message,
        });
    }

    /// A sender for the reporters, for the runner and for findings.
    pub fn events(&self) -> mpsc::UnboundedSender<Event> {
        self.tx.clone()
    }

    /// The run's report from its steps, as `command` ran them.
    pub fn report(&self, plan: &Plan, command: &str, steps: Vec<StepReport>) -> RunReport {
        crate::run::finish(
            plan,
            command,
            steps,
            self.started,
            self.cancel.is_cancelled(),
        )
    }

    /// Hands the final report to the reporters, waits for them, and returns the exit code.
    pub async fn finish(self, report: RunReport) -> i32 {
        let code = if report.cancelled {
            EXIT_CANCELLED
        } else if report.success() {
            0
        } else {
            EXIT_FAILED
        };
        let _ = self.tx.send(Event::RunFinished(report));
        drop(self.tx);
        let _ = self.reporter.await;
        code
    }
}

pub(crate) const CANCELLED: &str = "the run was cancelled";

/// How long the work before the runner gets, once the run is cancelled, to stop on its own
/// (a tool gets SIGTERM and up to 0.8 s before SIGKILL) before it is dropped. Dropping it
/// SIGKILLs the process group of any tool it still runs. Together with the report this stays
/// well inside the 2 s a Ctrl-C may take.
const CANCEL_GRACE: Duration = Duration::from_millis(1000);

/// Runs `work` to its end, or, once `cancel` fires and the grace is over, gives up on it
/// (`None`). Work that watches the token itself ends sooner and keeps its own outcome.
pub(crate) async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => Some(r),
        _ = cancel.cancelled() => tokio::time::timeout(CANCEL_GRACE, work).await.ok(),
    }
}

pub(crate) fn phase_failure(id: &str, message: String) -> StepReport {
    StepReport {
        unit: crate::run::Unit::Phase,
        id: id.into(),
        kind: id.into(),
        check: true,
        outcome: Outcome::Failed { cause: message },
        elapsed: Duration::ZERO,
        attempts: 1,
        artifacts: None,
    }
}

/// The report of the prune phase after the steps (`up`, `down`), whatever it ended in.
pub(crate) fn prune_report(outcome: Outcome, started: Instant) -> StepReport {
    StepReport {
        unit: crate::run::Unit::Phase,
        id: "prune".into(),
        kind: "prune".into(),
        check: false,
        outcome,
        elapsed: started.elapsed(),
        attempts: 1,
        artifacts: None,
    }
}

pub(crate) fn run_options(inv: &Invocation, plan: &Plan, reverse: bool) -> RunOptions {
    RunOptions {
        jobs: inv.run.jobs,
        fail_fast: inv.run.fail_fast,
        only: inv.select.only.clone(),
        skip: inv.select.skip.clone(),
        cache_dir: std::env::var_os("BOOKINFO_UP_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(default_cache_dir),
        artifacts: inv
            .run
            .artifacts
            .clone()
            .unwrap_or_else(|| inv.target.state_dir.join("artifacts")),
        cluster_logs: provider::cluster_logs(plan, &inv.target),
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

/// Fetches and verifies the remote manifests of the steps `select` leaves in, before any step
/// runs: a step left out of a run, by the selection or by the plan's `skip`, needs none (and
/// its URL may be out of reach).
pub(crate) async fn fetch_remote(
    plan: &mut Plan,
    select: &Selection,
    progress: &(dyn Fn(String) + Sync),
) -> Result<(), String> {
    let cache = std::env::var_os("BOOKINFO_UP_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(default_cache_dir);
    for step in &mut plan.steps {
        if !select.includes(&step.id) || step.skip.is_some() {
            continue;
        }
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

/// Colour on stderr: a terminal, unless `NO_COLOR`.
fn color_enabled() -> bool {
    report::use_color(report::ColorChoice::Auto, std::io::stderr().is_terminal())
}

/// `BOOKINFO_UP_LOG`, else `default`; never rustls below info, whatever BOOKINFO_UP_LOG asks
/// for: rustls logs the peer's certificate chain at trace, and kwok's API server presents the
/// kubeconfig's client certificate.
pub(crate) fn log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("BOOKINFO_UP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
        .add_directive("rustls=info".parse().expect("a valid directive"))
}

fn init_tracing(c: &OutputSettings, tty: bool) {
    // Our own crate gets the verbosity asked for; libraries stay at info so that even -vv
    // never logs request headers (tokens) or TLS material.
    let ours = match (c.quiet, c.verbose, tty) {
        (true, _, _) => "error",
        (_, 0, true) => "warn",
        (_, 0, false) => "info",
        (_, 1, _) => "debug",
        _ => "trace",
    };
    let filter = log_filter(&format!("warn,bookinfo_up={ours}"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match c.log_format {
        Some(report::LogFormat::Json) => builder.json().try_init(),
        _ => builder.with_ansi(color_enabled()).try_init(),
    };
}

fn report_options(c: &OutputSettings) -> (ReportOptions, bool) {
    let tty = c.log_format.is_none() && std::io::stderr().is_terminal();
    let opts = ReportOptions {
        kind: match (c.log_format, tty) {
            (Some(report::LogFormat::Json), _) => ReporterKind::Json,
            (_, true) => ReporterKind::Tty,
            _ => ReporterKind::Plain,
        },
        quiet: c.quiet,
        verbose: c.verbose,
        color: color_enabled(),
        output_json: c.json,
        junit: c.junit.clone(),
    };
    (opts, tty)
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
