//! `TtyReporter`: live progress on a terminal with indicatif. One spinner per running step
//! (and per phase) shows its status line; finished steps are printed above the spinners.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anstyle::{AnsiColor, Style};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::format::{
    final_table_width, finished_line, first_line, next_block, paint, problem_lines, status_line,
};
use super::{ReportOptions, Reporter};
use crate::run::{Event, Outcome, RunReport};

/// How often spinners turn.
const SPIN: Duration = Duration::from_millis(100);
/// Width used when the terminal does not say.
const FALLBACK_WIDTH: usize = 100;

pub(crate) struct TtyReporter {
    bars: MultiProgress,
    /// Running steps by id.
    running: HashMap<String, Line>,
    /// The phase in progress, if any: it ends when another begins or a step starts.
    phase: Option<Line>,
    quiet: bool,
    verbose: u8,
    color: bool,
    /// Next steps go into the JSON document instead of the terminal.
    output_json: bool,
    /// A fixed width for tests; the terminal's otherwise.
    width: Option<usize>,
}

/// One spinner line and what it shows.
struct Line {
    bar: ProgressBar,
    name: String,
    kind: String,
    started: Instant,
    message: String,
}

impl TtyReporter {
    pub(crate) fn new(opts: &ReportOptions) -> Self {
        Self::with_target(opts, ProgressDrawTarget::stderr(), None)
    }

    pub(crate) fn with_target(
        opts: &ReportOptions,
        target: ProgressDrawTarget,
        width: Option<usize>,
    ) -> Self {
        Self {
            bars: MultiProgress::with_draw_target(target),
            running: HashMap::new(),
            phase: None,
            quiet: opts.quiet,
            verbose: opts.verbose,
            color: opts.color,
            output_json: opts.output_json,
            width,
        }
    }

    fn width(&self) -> usize {
        self.width.or_else(terminal_width).unwrap_or(FALLBACK_WIDTH)
    }

    fn spinner(&self) -> ProgressBar {
        let template = if self.color {
            "{spinner:.cyan} {wide_msg}"
        } else {
            "{spinner} {wide_msg}"
        };
        let style = ProgressStyle::with_template(template)
            .expect("the spinner template is valid")
            .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ");
        let bar = self.bars.add(ProgressBar::new_spinner().with_style(style));
        bar.enable_steady_tick(SPIN);
        bar
    }

    fn start_line(&self, name: &str, kind: &str, message: &str) -> Line {
        let line = Line {
            bar: self.spinner(),
            name: name.to_owned(),
            kind: kind.to_owned(),
            started: Instant::now(),
            message: message.to_owned(),
        };
        self.draw(&line);
        line
    }

    fn draw(&self, line: &Line) {
        let width = self.width().saturating_sub(2);
        line.bar.set_message(status_line(
            &line.name,
            &line.kind,
            line.started.elapsed(),
            &line.message,
            width,
        ));
    }

    /// Writes `text` above the spinners.
    fn print(&self, text: &str) {
        // A terminal that refuses writes leaves nothing useful to do about it.
        let _ = self.bars.println(text);
    }

    fn remove(&self, line: &Line) {
        line.bar.finish_and_clear();
        self.bars.remove(&line.bar);
    }

    /// Ends the phase in progress, leaving its last message as a line.
    fn end_phase(&mut self) {
        if let Some(phase) = self.phase.take() {
            self.remove(&phase);
            if !self.quiet {
                let text = status_line(
                    &phase.name,
                    &phase.kind,
                    phase.started.elapsed(),
                    &phase.message,
                    self.width().saturating_sub(2),
                );
                self.print(&format!(
                    "{} {text}",
                    paint("▸", AnsiColor::Cyan.on_default(), self.color)
                ));
            }
        }
    }

    fn dim(&self, text: &str) -> String {
        paint(text, Style::new().dimmed(), self.color)
    }
}

impl Reporter for TtyReporter {
    fn event(&mut self, event: &Event) {
        match event {
            Event::RunStarted { .. } => {}
            Event::Phase { name, message } => {
                if self.quiet {
                    return;
                }
                match &mut self.phase {
                    Some(phase) if phase.name == *name => phase.message = message.clone(),
                    _ => {
                        self.end_phase();
                        self.phase = Some(self.start_line(name, "", message));
                    }
                }
                if let Some(phase) = &self.phase {
                    self.draw(phase);
                }
            }
            Event::StepStarted { id, kind, attempt } => {
                self.end_phase();
                if self.quiet {
                    return;
                }
                let message = if *attempt > 1 {
                    format!("attempt {attempt}")
                } else {
                    String::new()
                };
                if self.verbose > 0 {
                    self.print(&self.dim(format!("  {id}: started {message}").trim_end()));
                }
                match self.running.get_mut(id) {
                    // A retry keeps its line and the time since the first attempt.
                    Some(line) => line.message = message,
                    None => {
                        let line = self.start_line(id, kind, &message);
                        self.running.insert(id.clone(), line);
                    }
                }
                if let Some(line) = self.running.get(id) {
                    self.draw(line);
                }
            }
            Event::StepProgress { id, message } => {
                let Some(line) = self.running.get_mut(id) else {
                    return;
                };
                if line.message == *message {
                    return;
                }
                line.message = message.clone();
                if self.verbose > 0 {
                    self.print(&self.dim(&format!("  {id}: {message}")));
                }
                if let Some(line) = self.running.get(id) {
                    self.draw(line);
                }
            }
            Event::StepRetrying {
                id,
                attempt,
                cause,
                delay,
            } => {
                let message = format!(
                    "retry {attempt} after {}: {}",
                    humantime::format_duration(*delay),
                    first_line(cause)
                );
                if self.verbose > 0 && !self.quiet {
                    self.print(&self.dim(&format!("  {id}: {message}")));
                }
                if let Some(line) = self.running.get_mut(id) {
                    line.message = message;
                }
                if let Some(line) = self.running.get(id) {
                    self.draw(line);
                }
            }
            // Shown even with `--quiet`: a warning is what the user may need to act on.
            Event::Problem { severity, problem } => {
                self.print(problem_lines(*severity, problem, self.color).trim_end());
            }
            Event::StepFinished(step) => {
                if let Some(line) = self.running.remove(&step.id) {
                    self.remove(&line);
                }
                if !self.quiet || matches!(step.outcome, Outcome::Failed { .. }) {
                    self.print(&finished_line(step, self.width(), self.color));
                }
            }
            // `consume` hands the final report to `finish`.
            Event::RunFinished(_) => {}
        }
    }

    fn tick(&mut self) {
        for line in self.running.values().chain(&self.phase) {
            self.draw(line);
        }
    }

    fn finish(&mut self, report: Option<&RunReport>) {
        self.end_phase();
        for (_, line) in self.running.drain() {
            line.bar.finish_and_clear();
            self.bars.remove(&line.bar);
        }
        let _ = self.bars.clear();
        match report {
            Some(report) if !self.quiet => {
                eprint!("\n{}", final_table_width(report, self.color, self.width()));
                if let Some(next) = report.next_steps.as_ref().filter(|_| !self.output_json) {
                    eprint!("{}", next_block(next, self.color));
                }
            }
            Some(_) => {}
            None => eprintln!("the runner stopped without a final report"),
        }
    }
}

/// The width of the terminal on stderr, if it is one.
fn terminal_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ only writes a `winsize` into the struct we pass, which lives for the
    // duration of the call; on a descriptor that is not a terminal it fails and writes nothing.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::report::ReporterKind;
    use crate::report::fixtures::sample_report;

    /// A terminal that keeps the lines printed above the spinners.
    #[derive(Debug, Clone, Default)]
    struct Lines(Arc<Mutex<Vec<String>>>);

    impl indicatif::TermLike for Lines {
        fn width(&self) -> u16 {
            100
        }
        fn move_cursor_up(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> io::Result<()> {
            self.0.lock().unwrap().push(s.to_owned());
            Ok(())
        }
        fn write_str(&self, s: &str) -> io::Result<()> {
            self.0.lock().unwrap().push(s.to_owned());
            Ok(())
        }
        fn clear_line(&self) -> io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn prints_finished_steps_and_shows_progress() {
        let term = Lines::default();
        let opts = ReportOptions {
            kind: ReporterKind::Tty,
            quiet: false,
            verbose: 1,
            color: false,
            output_json: false,
            junit: None,
        };
        let target = ProgressDrawTarget::term_like(Box::new(term.clone()));
        let mut reporter = TtyReporter::with_target(&opts, target, Some(100));
        let report = sample_report();
        reporter.event(&Event::Phase {
            name: "cluster".into(),
            message: "creating kind cluster bookinfo".into(),
        });
        reporter.event(&Event::StepStarted {
            id: "istio-base".into(),
            kind: "helm".into(),
            attempt: 1,
        });
        reporter.event(&Event::StepProgress {
            id: "istio-base".into(),
            message: "waiting for 3/6 deployments".into(),
        });
        reporter.event(&Event::StepRetrying {
            id: "istio-base".into(),
            attempt: 2,
            cause: "connection refused\ncaused by: eof".into(),
            delay: Duration::from_secs(4),
        });
        assert_eq!(
            reporter.running["istio-base"].message,
            "retry 2 after 4s: connection refused"
        );
        reporter.tick();
        for step in &report.steps {
            reporter.event(&Event::StepFinished(step.clone()));
        }
        assert!(reporter.running.is_empty());
        // The final table goes to stderr, not to the test terminal; it has its own snapshot.
        reporter.quiet = true;
        reporter.finish(Some(&report));

        let printed = term.0.lock().unwrap().join("\n");
        assert!(!printed.contains('\u{1b}'), "{printed}");
        for needle in [
            "▸ cluster",
            "creating kind cluster bookinfo",
            "istio-base: waiting for 3/6 deployments",
            "istio-base: retry 2 after 4s: connection refused",
            "✔ istio-base",
            "✘ istiod-ready",
            "- productpage",
        ] {
            assert!(
                printed.contains(needle),
                "missing {needle:?} in:\n{printed}"
            );
        }
    }
}
