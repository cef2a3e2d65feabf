//! `PlainReporter`: events as `tracing` records, one per event, for logs and CI. The CLI's
//! tracing subscriber decides how they look (plain text or JSON) and which levels show.

use std::collections::HashMap;

use tracing::{debug, error, info, warn};

use super::format::{final_table, first_line, format_duration, next_block};
use super::{ReportOptions, Reporter, ReporterKind};
use crate::provider::Severity;
use crate::run::{Event, Outcome, RunReport};

pub(crate) struct PlainReporter {
    quiet: bool,
    verbose: u8,
    /// With `--log-format json` the end of a run is a record too, not a table.
    table: bool,
    color: bool,
    /// Next steps go into the JSON document instead of the log.
    output_json: bool,
    /// The last progress message of each running step, so repeats are not logged again.
    progress: HashMap<String, String>,
}

impl PlainReporter {
    pub(crate) fn new(opts: &ReportOptions) -> Self {
        Self {
            quiet: opts.quiet,
            verbose: opts.verbose,
            table: opts.kind != ReporterKind::Json,
            color: opts.color,
            output_json: opts.output_json,
            progress: HashMap::new(),
        }
    }
}

impl Reporter for PlainReporter {
    fn event(&mut self, event: &Event) {
        match event {
            Event::RunStarted { plan, steps } if !self.quiet => {
                info!(plan = %plan, steps, "run started");
            }
            Event::Phase { name, message } if !self.quiet => {
                info!(phase = %name, "{message}");
            }
            Event::StepStarted { id, kind, attempt } if !self.quiet => {
                if *attempt > 1 {
                    info!(step = %id, kind = %kind, attempt, "started again");
                } else {
                    info!(step = %id, kind = %kind, "started");
                }
            }
            Event::StepProgress { id, message } if !self.quiet => {
                if self.progress.get(id) == Some(message) {
                    return;
                }
                self.progress.insert(id.clone(), message.clone());
                if self.verbose > 0 {
                    info!(step = %id, "{message}");
                } else {
                    debug!(step = %id, "{message}");
                }
            }
            Event::StepRetrying {
                id,
                attempt,
                cause,
                delay,
            } => {
                warn!(
                    step = %id,
                    attempt,
                    delay = %humantime::format_duration(*delay),
                    cause = %cause,
                    "attempt {attempt} failed, retrying: {}",
                    first_line(cause)
                );
            }
            Event::Problem { severity, problem } => match severity {
                Severity::Warning => {
                    warn!(phase = "preflight", fix = %problem.fix, "warning: {}", problem.what)
                }
                Severity::Error => {
                    error!(phase = "preflight", fix = %problem.fix, "error: {}", problem.what)
                }
            },
            Event::StepFinished(step) => {
                self.progress.remove(&step.id);
                let elapsed = format_duration(step.elapsed);
                match &step.outcome {
                    Outcome::Failed { cause } => error!(
                        step = %step.id,
                        kind = %step.kind,
                        outcome = "failed",
                        elapsed = %elapsed,
                        attempts = step.attempts,
                        cause = %cause,
                        diagnostics = step.artifacts.as_ref().map(|d| d.display().to_string()),
                        "failed: {}",
                        first_line(cause)
                    ),
                    outcome if !self.quiet => info!(
                        step = %step.id,
                        kind = %step.kind,
                        outcome = outcome.label(),
                        elapsed = %elapsed,
                        attempts = step.attempts,
                        "{}: {}",
                        outcome.label(),
                        first_line(&outcome.detail())
                    ),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn finish(&mut self, report: Option<&RunReport>) {
        let Some(report) = report else {
            warn!("the runner stopped without a final report");
            return;
        };
        if self.quiet {
            return;
        }
        let next = report.next_steps.as_ref().filter(|_| !self.output_json);
        if self.table {
            eprint!("{}", final_table(report, self.color));
            if let Some(next) = next {
                eprint!("{}", next_block(next, self.color));
            }
        } else {
            if let Some(next) = next {
                info!(kubeconfig = %next.kubeconfig, "what next: {}", next.kubectl);
                for item in &next.items {
                    info!(
                        title = %item.title,
                        command = item.command.as_deref(),
                        url = item.url.as_deref(),
                        "what next: {}",
                        item.title
                    );
                }
            }
            info!(
                plan = %report.plan,
                steps = report.steps.len(),
                changed = report.count("changed"),
                unchanged = report.count("unchanged"),
                failed = report.count("failed"),
                skipped = report.count("skipped"),
                cancelled = report.cancelled,
                elapsed = %format_duration(report.elapsed),
                artifacts = report.artifacts.as_deref(),
                "run finished"
            );
        }
    }
}
