//! Reporters: `consume` renders the runner's `Event`s as they arrive (live spinners on a
//! terminal, `tracing` records otherwise) and, when the run ends, the final table, the JSON
//! summary and JUnit XML. The formatting itself is pure and lives in `format`, `junit` and
//! `dry_run`.

mod dry_run;
mod format;
pub mod inspect;
mod junit;
mod plain;
mod tty;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::MissedTickBehavior;

pub use dry_run::dry_run;
pub use format::{
    TABLE_WIDTH, final_table, final_table_width, finished_line, format_duration, next_block,
    next_items, preflight_failure, problem_lines, problem_text, status_line, summary_line,
};
pub use junit::junit_xml;

use crate::run::{Event, RunReport};

/// How often live output is redrawn, so that elapsed times move between events.
const REDRAW: Duration = Duration::from_millis(250);

/// How events are shown while the run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReporterKind {
    /// Spinners and a final table, for a terminal.
    Tty,
    /// Human-readable `tracing` records and a final table, for logs and CI.
    Plain,
    /// `tracing` records only, the end of the run included, for `--log-format json`.
    Json,
}

/// What the CLI asked of reporting.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub kind: ReporterKind,
    /// Only failures and warnings while running; no final table.
    pub quiet: bool,
    /// Above 0, progress messages are logged (plain) or printed as lines (tty) as well.
    pub verbose: u8,
    /// ANSI colour; false when `NO_COLOR` is set or stderr is not a terminal.
    pub color: bool,
    /// Write the `RunReport` as pretty JSON to stdout at the end.
    pub output_json: bool,
    /// Write JUnit XML to this file at the end.
    pub junit: Option<PathBuf>,
}

/// How log lines look (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// When to colour output (`--color`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set (and not empty).
    #[default]
    Auto,
    Always,
    Never,
}

/// The one colour decision, for output that goes to a terminal or not (`terminal`).
pub fn use_color(choice: ColorChoice, terminal: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && terminal,
    }
}

/// Renders events until `RunFinished` (or until the runner drops its sender), then writes
/// the final outputs that `opts` asks for. Returns the final report, or `None` when the
/// channel closed without one.
pub async fn consume(mut rx: UnboundedReceiver<Event>, opts: ReportOptions) -> Option<RunReport> {
    let mut reporter: Box<dyn Reporter + Send> = match opts.kind {
        ReporterKind::Tty => Box::new(tty::TtyReporter::new(&opts)),
        ReporterKind::Plain | ReporterKind::Json => Box::new(plain::PlainReporter::new(&opts)),
    };
    let mut redraw = tokio::time::interval(REDRAW);
    redraw.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let report = loop {
        tokio::select! {
            biased;
            event = rx.recv() => match event {
                Some(Event::RunFinished(report)) => break Some(report),
                Some(event) => reporter.event(&event),
                None => break None,
            },
            _ = redraw.tick() => reporter.tick(),
        }
    };
    reporter.finish(report.as_ref());
    if let Some(report) = &report {
        write_outputs(report, &opts);
    }
    report
}

/// The report as pretty JSON, as `--output json` prints it.
pub fn json_summary(report: &RunReport) -> String {
    serde_json::to_string_pretty(report).expect("a run report always serializes")
}

/// A live renderer of events.
trait Reporter {
    fn event(&mut self, event: &Event);
    /// Called every `REDRAW` between events.
    fn tick(&mut self) {}
    /// Called once at the end, with the final report when there is one.
    fn finish(&mut self, report: Option<&RunReport>);
}

fn write_outputs(report: &RunReport, opts: &ReportOptions) {
    if opts.output_json {
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, "{}", json_summary(report)).and_then(|()| stdout.flush()) {
            // A closed pipe (`| head`) is the reader's choice, not an error worth more noise.
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                output_error(
                    opts,
                    &format!("cannot write the JSON summary to stdout: {e}"),
                );
            }
        }
    }
    if let Some(path) = &opts.junit {
        let written = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) => std::fs::create_dir_all(dir),
            None => Ok(()),
        }
        .and_then(|()| std::fs::write(path, junit_xml(report)));
        if let Err(e) = written {
            let path = crate::diag::display_path(path);
            output_error(opts, &format!("cannot write JUnit XML to `{path}`: {e}"));
        }
    }
}

fn output_error(opts: &ReportOptions, message: &str) {
    match opts.kind {
        ReporterKind::Tty => eprintln!("error: {message}"),
        ReporterKind::Plain | ReporterKind::Json => tracing::error!("{message}"),
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use std::time::Duration;

    use crate::run::{Outcome, RunReport, StepReport};

    fn step(id: &str, kind: &str, check: bool, outcome: Outcome, millis: u64) -> StepReport {
        StepReport {
            unit: crate::run::Unit::Step,
            id: id.into(),
            kind: kind.into(),
            check,
            outcome,
            elapsed: Duration::from_millis(millis),
            attempts: 1,
            artifacts: None,
        }
    }

    /// One step of each outcome, checks among them, with text that needs escaping.
    pub(crate) fn sample_report() -> RunReport {
        let mut failed = step(
            "istiod-ready",
            "wait",
            true,
            Outcome::Failed {
                cause: "deployment istio-system/istiod did not roll out: 0/1 ready\n\
                        caused by: pod <istiod-7d4f> is \"Pending\" & 'unschedulable'\n\
                        caused by: \u{1b}[31m0/1 nodes are available: insufficient memory\u{1b}[0m"
                    .into(),
            },
            300_000,
        );
        failed.attempts = 3;
        RunReport {
            plan: "bookinfo".into(),
            command: "up".into(),
            steps: vec![
                step(
                    "istio-base",
                    "helm",
                    false,
                    Outcome::Changed {
                        summary: "installed release istio-base (revision 1)".into(),
                    },
                    3_240,
                ),
                step(
                    "bookinfo-namespace",
                    "namespace",
                    false,
                    Outcome::Unchanged {
                        summary: "namespace bookinfo already as desired".into(),
                    },
                    40,
                ),
                failed,
                step(
                    "productpage",
                    "http",
                    true,
                    Outcome::Skipped {
                        reason: crate::run::SkipReason::Blocked {
                            step: "istiod-ready".into(),
                            failed: true,
                            teardown: false,
                        },
                    },
                    0,
                ),
                step(
                    "gateway",
                    "apply",
                    false,
                    Outcome::Changed {
                        summary: "created Gateway bookinfo/bookinfo-gateway & VirtualService \
                                  bookinfo/bookinfo, configured 3 more objects in the namespace"
                            .into(),
                    },
                    1_250,
                ),
            ],
            elapsed: Duration::from_millis(312_400),
            cancelled: false,
            artifacts: Some("target/bookinfo-up/artifacts/20250101-120000".into()),
            warnings: vec![crate::provider::Problem {
                what: "fs.inotify.max_user_instances is 128, below the 512 kind recommends".into(),
                fix: "sudo sysctl fs.inotify.max_user_instances=512".into(),
            }],
            errors: Vec::new(),
            next_steps: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::unbounded_channel;

    use super::*;
    use fixtures::sample_report;

    fn options(kind: ReporterKind, junit: Option<PathBuf>) -> ReportOptions {
        ReportOptions {
            kind,
            quiet: true,
            verbose: 0,
            color: false,
            output_json: false,
            junit,
        }
    }

    #[tokio::test]
    async fn returns_the_final_report_and_writes_junit() {
        let dir = tempfile::tempdir().unwrap();
        let junit = dir.path().join("reports/junit.xml");
        let (tx, rx) = unbounded_channel();
        let report = sample_report();
        tx.send(Event::RunStarted {
            plan: "bookinfo".into(),
            steps: report.steps.len(),
        })
        .unwrap();
        for step in &report.steps {
            tx.send(Event::StepStarted {
                id: step.id.clone(),
                kind: step.kind.clone(),
                attempt: 1,
            })
            .unwrap();
            tx.send(Event::StepFinished(step.clone())).unwrap();
        }
        tx.send(Event::RunFinished(report.clone())).unwrap();

        let got = consume(rx, options(ReporterKind::Plain, Some(junit.clone()))).await;
        let got = got.expect("a final report");
        assert_eq!(got.steps.len(), report.steps.len());
        assert_eq!(std::fs::read_to_string(&junit).unwrap(), junit_xml(&report));
    }

    #[tokio::test]
    async fn a_closed_channel_gives_no_report() {
        let (tx, rx) = unbounded_channel();
        tx.send(Event::Phase {
            name: "preflight".into(),
            message: "checking docker".into(),
        })
        .unwrap();
        drop(tx);
        assert!(
            consume(rx, options(ReporterKind::Json, None))
                .await
                .is_none()
        );
    }

    #[test]
    fn json_summary_is_the_serialized_report() {
        insta::assert_snapshot!(json_summary(&sample_report()));
    }
}
