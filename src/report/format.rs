//! Pure text formatting shared by the reporters: durations, status lines, finished-step lines
//! and the final table. Nothing here touches a terminal, so all of it is snapshot-tested.
//!
//! Widths are counted in `char`s, which is exact for the ASCII that ids, kinds and most
//! messages are made of, and close enough for the rest.

use std::fmt::{self, Write as _};
use std::time::Duration;

use anstyle::{AnsiColor, Style};

use crate::plan::NextStep;
use crate::provider::{Problem, Severity};
use crate::run::{NextSteps, Outcome, RunReport, StepReport};

/// Width of the id column in status lines; longer ids push the rest of the line right.
const ID_WIDTH: usize = 24;
/// Width of the kind column in status lines: the longest kind is `namespace`.
const KIND_WIDTH: usize = 9;
/// Width of the elapsed-time column in status lines: "59.9s", "59m59s", "23h59m".
const TIME_WIDTH: usize = 6;
/// Width of the final table when the terminal's is unknown.
pub const TABLE_WIDTH: usize = 100;
/// The detail column never shrinks below this, even if lines then overflow the width.
const MIN_DETAIL_WIDTH: usize = 20;

/// A duration in a few characters: "0.4s", "12.3s", "2m03s", "1h05m".
pub fn format_duration(d: Duration) -> String {
    let tenths = (d.as_millis() + 50) / 100;
    if tenths < 600 {
        return format!("{}.{}s", tenths / 10, tenths % 10);
    }
    let secs = (d.as_millis() + 500) / 1000;
    if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        let mins = (secs + 30) / 60;
        format!("{}h{:02}m", mins / 60, mins % 60)
    }
}

/// The text of a running step's line, after the spinner: id, kind, time so far and what the
/// step is doing now, cut to `width` characters.
pub fn status_line(id: &str, kind: &str, elapsed: Duration, message: &str, width: usize) -> String {
    let line = format!(
        "{id:<ID_WIDTH$} {kind:<KIND_WIDTH$} {:>TIME_WIDTH$} {}",
        format_duration(elapsed),
        first_line(message)
    );
    truncate(line.trim_end(), width)
}

/// One line (or, for a failure, a few) for a step that has finished: a marker, then the
/// status line with the outcome's summary, cut to `width`. A failure is never cut: its first
/// line follows the number of attempts when there were several, and its further causes
/// follow indented.
pub fn finished_line(step: &StepReport, width: usize, color: bool) -> String {
    let mut detail = first_line(&step.outcome.detail());
    let mut width = width.saturating_sub(2);
    if let Outcome::Failed { .. } = step.outcome {
        width = usize::MAX;
        if step.attempts > 1 {
            detail = format!("after {} attempts: {detail}", step.attempts);
        }
    }
    let mut out = format!(
        "{} {}",
        paint(marker(&step.outcome), outcome_style(&step.outcome), color),
        status_line(&step.id, &step.kind, step.elapsed, &detail, width)
    );
    if let Outcome::Failed { cause } = &step.outcome {
        for line in sanitize(cause)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .skip(1)
        {
            out.push_str("\n    ");
            out.push_str(line.trim());
        }
    }
    if let Some(dir) = &step.artifacts {
        out.push_str(&format!("\n    diagnostics: {}", dir.display()));
    }
    out
}

/// The table printed when a run ends, `TABLE_WIDTH` wide.
pub fn final_table(report: &RunReport, color: bool) -> String {
    final_table_width(report, color, TABLE_WIDTH)
}

/// The table printed when a run ends: one row per step (STEP, KIND, OUTCOME, TIME, DETAIL,
/// the detail cut to fit `width`), then the totals, then where diagnostics went.
pub fn final_table_width(report: &RunReport, color: bool, width: usize) -> String {
    let mut out = String::new();
    write_table(report, color, width, &mut out).expect("writing to a String cannot fail");
    out
}

fn write_table(report: &RunReport, color: bool, width: usize, out: &mut String) -> fmt::Result {
    let id_w = column_width("STEP", report.steps.iter().map(|s| s.id.as_str()));
    let kind_w = column_width("KIND", report.steps.iter().map(|s| s.kind.as_str()));
    // A marker, a space and the longest label, "unchanged".
    let outcome_w = 11;
    let times: Vec<String> = report
        .steps
        .iter()
        .map(|s| format_duration(s.elapsed))
        .collect();
    let time_w = column_width("TIME", times.iter().map(String::as_str));
    let detail_w = width
        .saturating_sub(id_w + kind_w + outcome_w + time_w + 8)
        .max(MIN_DETAIL_WIDTH);

    let header = format!(
        "{:<id_w$}  {:<kind_w$}  {:<outcome_w$}  {:>time_w$}  DETAIL",
        "STEP", "KIND", "OUTCOME", "TIME"
    );
    writeln!(out, "{}", paint(&header, Style::new().bold(), color))?;
    for (step, time) in report.steps.iter().zip(&times) {
        let outcome = format!("{} {}", marker(&step.outcome), step.outcome.label());
        let row = format!(
            "{:<id_w$}  {:<kind_w$}  {}  {time:>time_w$}  {}",
            step.id,
            step.kind,
            paint(
                &format!("{outcome:<outcome_w$}"),
                outcome_style(&step.outcome),
                color
            ),
            truncate(&first_line(&step.outcome.detail()), detail_w)
        );
        writeln!(out, "{}", row.trim_end())?;
    }
    writeln!(out, "{}", summary_line(report, color))?;
    if let Some(artifacts) = &report.artifacts {
        writeln!(out, "diagnostics written to {artifacts}")?;
    }
    Ok(())
}

/// "12 steps: 3 changed, 8 unchanged, 0 failed, 1 skipped in 41.2s" ("12 steps and the prune
/// phase: ..." when the prune has a row), with "(cancelled)" after a cancelled run.
pub fn summary_line(report: &RunReport, color: bool) -> String {
    let failed = report.count("failed");
    let failed_text = format!("{failed} failed");
    let failed_style = if failed > 0 {
        AnsiColor::Red.on_default().bold()
    } else {
        Style::new()
    };
    // Phases that have a row (the prune, or the phase a run failed in) are named apart from
    // the plan's steps, so the count is the plan's.
    let steps = report
        .steps
        .iter()
        .filter(|s| matches!(s.unit, crate::run::Unit::Step))
        .count();
    let phases: Vec<&str> = report
        .steps
        .iter()
        .filter(|s| matches!(s.unit, crate::run::Unit::Phase))
        .map(|s| s.id.as_str())
        .collect();
    let mut rows = match (steps, phases.len()) {
        (_, 0) => String::new(),
        (0, _) => "the ".to_string(),
        _ => format!("{steps} step{} and the ", if steps == 1 { "" } else { "s" }),
    };
    match phases.as_slice() {
        [] => rows = format!("{steps} step{}", if steps == 1 { "" } else { "s" }),
        [one] => rows.push_str(&format!("{one} phase")),
        many => rows.push_str(&format!("{} phases", many.join(", "))),
    }
    let mut line = format!(
        "{rows}: {} changed, {} unchanged, {}, {} skipped in {}",
        report.count("changed"),
        report.count("unchanged"),
        paint(&failed_text, failed_style, color),
        report.count("skipped"),
        format_duration(report.elapsed)
    );
    if report.cancelled {
        let cancelled = paint("cancelled", AnsiColor::Yellow.on_default().bold(), color);
        line.push_str(&format!(" ({cancelled})"));
    }
    line
}

/// A preflight problem as the user reads it: "warning: ..." or "error: ...", then its fix
/// on the next line.
pub fn problem_lines(severity: Severity, problem: &Problem, color: bool) -> String {
    let (label, style) = match severity {
        Severity::Warning => ("warning", AnsiColor::Yellow.on_default().bold()),
        Severity::Error => ("error", AnsiColor::Red.on_default().bold()),
    };
    format!(
        "{}: {}\n  fix: {}\n",
        paint(label, style, color),
        sanitize(&problem.what),
        sanitize(&problem.fix)
    )
}

/// `problem_lines` without colour, as logs, JUnit and snapshots show it.
pub fn problem_text(severity: Severity, problem: &Problem) -> String {
    problem_lines(severity, problem, false)
}

/// The cause of a failed preflight: how many errors, then each with its fix.
pub fn preflight_failure(errors: &[Problem]) -> String {
    let mut out = format!(
        "preflight found {} error{}; nothing was created",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        out.push('\n');
        out.push_str(problem_text(Severity::Error, e).trim_end());
    }
    out
}

/// The block printed after a successful `up`: the line that points kubectl at the cluster,
/// then the plan's pointers.
pub fn next_block(next: &NextSteps, color: bool) -> String {
    let kubectl = NextStep {
        title: "kubectl".into(),
        command: Some(next.kubectl.clone()),
        url: None,
        needs: vec![],
    };
    let items: Vec<NextStep> = std::iter::once(kubectl)
        .chain(next.items.iter().cloned())
        .collect();
    format!(
        "\n{}\n{}",
        paint("what next", Style::new().bold(), color),
        next_items(&items, color)
    )
}

/// One line per pointer: its title, then the command to run and the URL it opens.
pub fn next_items(items: &[NextStep], color: bool) -> String {
    let width = items
        .iter()
        .map(|i| i.title.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for item in items {
        let url = item
            .url
            .as_deref()
            .map(|u| paint(u, AnsiColor::Cyan.on_default().underline(), color));
        let what = match (&item.command, url) {
            (Some(c), Some(u)) => format!("{c}   then {u}"),
            (Some(c), None) => c.clone(),
            (None, Some(u)) => u,
            (None, None) => String::new(),
        };
        let _ = writeln!(out, "  {:<width$}  {what}", item.title);
    }
    out
}

/// The marker drawn before a finished step.
pub fn marker(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Changed { .. } => "✔",
        Outcome::Unchanged { .. } => "·",
        Outcome::Failed { .. } => "✘",
        Outcome::Skipped { .. } => "-",
    }
}

fn outcome_style(outcome: &Outcome) -> Style {
    match outcome {
        Outcome::Changed { .. } => AnsiColor::Green.on_default(),
        Outcome::Unchanged { .. } => Style::new().dimmed(),
        Outcome::Failed { .. } => AnsiColor::Red.on_default().bold(),
        Outcome::Skipped { .. } => AnsiColor::Yellow.on_default(),
    }
}

/// `text` in `style` when `color` is on; otherwise `text` exactly, without any escape.
pub(crate) fn paint(text: &str, style: Style, color: bool) -> String {
    if color && style != Style::new() {
        format!("{style}{text}{style:#}")
    } else {
        text.to_owned()
    }
}

/// The first non-blank line of `text`, without escapes or control characters.
pub(crate) fn first_line(text: &str) -> String {
    sanitize(text)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_owned()
}

/// `text` without ANSI escape sequences or control characters other than newlines and tabs
/// (tabs become spaces). Tool output (helm, kubectl) carries colour codes that would
/// otherwise leak through `NO_COLOR` and break the table's alignment.
pub(crate) fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI sequences end at a byte in 0x40..=0x7e; other escapes are two characters.
                if chars.next_if_eq(&'[').is_some() {
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\t' => out.push(' '),
            '\n' => out.push('\n'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to `width` characters, ending in "…" when cut.
pub(crate) fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

fn column_width<'a>(header: &str, cells: impl Iterator<Item = &'a str>) -> usize {
    cells
        .map(|c| c.chars().count())
        .chain([header.len()])
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::sample_report;

    #[test]
    fn durations_are_compact() {
        let cases = [
            (0, "0.0s"),
            (40, "0.0s"),
            (50, "0.1s"),
            (400, "0.4s"),
            (12_340, "12.3s"),
            (59_940, "59.9s"),
            (59_960, "1m00s"),
            (60_000, "1m00s"),
            (123_400, "2m03s"),
            (3_599_499, "59m59s"),
            (3_599_500, "1h00m"),
            (3_900_000, "1h05m"),
            (90_000_000, "25h00m"),
        ];
        for (millis, expected) in cases {
            assert_eq!(
                format_duration(Duration::from_millis(millis)),
                expected,
                "{millis}ms"
            );
        }
    }

    #[test]
    fn status_lines() {
        let lines = [
            status_line(
                "istiod",
                "helm",
                Duration::from_millis(12_300),
                "waiting for 3/6 deployments",
                80,
            ),
            status_line("bookinfo-ready", "wait", Duration::from_secs(123), "", 80),
            status_line(
                "a-step-id-longer-than-the-column",
                "namespace",
                Duration::from_millis(400),
                "ensuring",
                80,
            ),
            status_line(
                "productpage",
                "http",
                Duration::from_secs(7),
                "GET http://localhost:8080/productpage returned 503 (upstream connect error)",
                60,
            ),
            status_line(
                "helm-repo",
                "exec",
                Duration::from_secs(1),
                "\u{1b}[1mfirst\u{1b}[0m line\nsecond line",
                80,
            ),
            status_line("tiny", "exec", Duration::ZERO, "cut", 10),
        ];
        insta::assert_snapshot!(lines.join("\n"));
    }

    #[test]
    fn finished_lines() {
        let report = sample_report();
        let lines: Vec<String> = report
            .steps
            .iter()
            .map(|s| finished_line(s, 100, false))
            .collect();
        insta::assert_snapshot!(lines.join("\n"));
    }

    #[test]
    fn final_table_plain() {
        insta::assert_snapshot!(final_table(&sample_report(), false));
    }

    #[test]
    fn final_table_narrow_and_cancelled() {
        let mut report = sample_report();
        report.cancelled = true;
        report.artifacts = None;
        report.steps.truncate(1);
        insta::assert_snapshot!(final_table_width(&report, false, 40));
    }

    #[test]
    fn no_escapes_without_color() {
        let report = sample_report();
        let plain = final_table(&report, false);
        assert!(!plain.contains('\u{1b}'), "{plain}");
        for step in &report.steps {
            assert!(!finished_line(step, 100, false).contains('\u{1b}'));
        }
        let colored = final_table(&report, true);
        assert!(colored.contains("\u{1b}["));
        // Colour changes no visible text.
        assert_eq!(sanitize(&colored), plain);
    }

    #[test]
    fn problems_and_preflight_failure() {
        let inotify = Problem {
            what: "fs.inotify.max_user_instances is 128, below the 512 kind recommends".into(),
            fix: "sudo sysctl fs.inotify.max_user_instances=512".into(),
        };
        let runtime = Problem {
            what: "kind cannot reach a container runtime: Cannot connect to the Docker daemon"
                .into(),
            fix: "start Docker".into(),
        };
        let mut out = problem_text(Severity::Warning, &inotify);
        out.push_str(&problem_text(Severity::Error, &runtime));
        out.push_str(&preflight_failure(&[runtime.clone(), inotify]));
        insta::assert_snapshot!(out);
        assert_eq!(
            problem_lines(Severity::Warning, &runtime, true)
                .lines()
                .next()
                .unwrap(),
            "\u{1b}[1m\u{1b}[33mwarning\u{1b}[0m: kind cannot reach a container runtime: Cannot connect to the Docker daemon"
        );
    }

    #[test]
    fn next_steps_block() {
        let next = NextSteps {
            kubeconfig: "/home/u/.local/state/bookinfo-up/clusters/bookinfo/kubeconfig".into(),
            context: Some("kind-bookinfo".into()),
            kubectl:
                "export KUBECONFIG=/home/u/.local/state/bookinfo-up/clusters/bookinfo/kubeconfig"
                    .into(),
            items: vec![
                NextStep {
                    title: "Bookinfo".into(),
                    command: None,
                    url: Some("http://127.0.0.1:30666/productpage".into()),
                    needs: vec![],
                },
                NextStep {
                    title: "Prometheus".into(),
                    command: Some(
                        "kubectl -n istio-system port-forward svc/prometheus 9090:9090".into(),
                    ),
                    url: Some("http://127.0.0.1:9090".into()),
                    needs: vec![],
                },
            ],
        };
        insta::assert_snapshot!(next_block(&next, false));
    }

    #[test]
    fn the_summary_counts_the_plans_steps_and_names_phases_apart() {
        let mut report = sample_report();
        let steps = report.steps.len();
        let plain = summary_line(&report, false);
        assert!(plain.starts_with(&format!("{steps} steps: ")), "{plain}");
        let mut prune = report.steps[0].clone();
        prune.unit = crate::run::Unit::Phase;
        prune.id = "prune".into();
        report.steps.push(prune.clone());
        let with_prune = summary_line(&report, false);
        assert!(
            with_prune.starts_with(&format!("{steps} steps and the prune phase: ")),
            "{with_prune}"
        );
        prune.id = "cluster".into();
        report.steps = vec![prune];
        let failed = summary_line(&report, false);
        assert!(failed.starts_with("the cluster phase: "), "{failed}");
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("abcdef", 6), "abcdef");
        assert_eq!(truncate("abcdef", 5), "abcd…");
        assert_eq!(truncate("ab   cdef", 5), "ab…");
        assert_eq!(truncate("abc", 0), "");
    }
}
