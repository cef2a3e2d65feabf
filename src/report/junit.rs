//! JUnit XML for CI: `junit_xml` renders a `RunReport` as one test suite named after the plan,
//! with one test case per step, checks and actions alike.

use std::fmt::Write as _;
use std::time::Duration;

use super::format::{first_line, sanitize};
use crate::run::{Outcome, RunReport};

/// The report as JUnit XML: a `<testsuite>` named after the plan, and per step a `<testcase>`
/// with `classname="<plan>.<kind>"`. Failures carry their first line as the message and the
/// whole cause as text; skipped steps carry the reason.
pub fn junit_xml(report: &RunReport) -> String {
    let mut out = String::new();
    write_junit(report, &mut out).expect("writing to a String cannot fail");
    out
}

fn write_junit(report: &RunReport, out: &mut String) -> std::fmt::Result {
    let plan = escape(&report.plan);
    let counts = format!(
        r#"tests="{}" failures="{}" errors="0" skipped="{}" time="{}""#,
        report.steps.len(),
        report.count("failed"),
        report.count("skipped"),
        seconds(report.elapsed)
    );
    writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
    writeln!(out, r#"<testsuites name="{plan}" {counts}>"#)?;
    writeln!(out, r#"  <testsuite name="{plan}" {counts}>"#)?;
    writeln!(out, "    <properties>")?;
    let mut properties = vec![
        ("command", escape(&report.command)),
        ("cancelled", report.cancelled.to_string()),
    ];
    if let Some(artifacts) = &report.artifacts {
        properties.push(("artifacts", escape(artifacts)));
    }
    for (name, value) in properties {
        writeln!(out, r#"      <property name="{name}" value="{value}"/>"#)?;
    }
    writeln!(out, "    </properties>")?;
    for step in &report.steps {
        writeln!(
            out,
            r#"    <testcase classname="{plan}.{}" name="{}" time="{}">"#,
            escape(&step.kind),
            escape(&step.id),
            seconds(step.elapsed)
        )?;
        match &step.outcome {
            Outcome::Changed { summary } | Outcome::Unchanged { summary } => writeln!(
                out,
                "      <system-out>{}: {}</system-out>",
                step.outcome.label(),
                escape_text(&sanitize(summary))
            )?,
            Outcome::Failed { cause } => writeln!(
                out,
                r#"      <failure message="{}" type="failed">{}</failure>"#,
                escape(&first_line(cause)),
                escape_text(&sanitize(&match &step.artifacts {
                    Some(dir) => format!("{cause}\ndiagnostics: {}", dir.display()),
                    None => cause.clone(),
                }))
            )?,
            Outcome::Skipped { reason } => writeln!(
                out,
                r#"      <skipped message="{}"/>"#,
                escape(&sanitize(&reason.to_string()))
            )?,
        }
        writeln!(out, "    </testcase>")?;
    }
    writeln!(out, "  </testsuite>")?;
    writeln!(out, "</testsuites>")
}

fn seconds(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// `text` made safe for an XML 1.0 attribute value: markup characters become entities,
/// line breaks and tabs become character references (attribute normalization would turn
/// them into spaces), and characters XML 1.0 cannot hold at all, such as the escape that
/// starts a colour code, become U+FFFD.
fn escape(text: &str) -> String {
    escape_xml(text, true)
}

/// `text` made safe for XML 1.0 element content; newlines and tabs stay as they are.
fn escape_text(text: &str) -> String {
    escape_xml(text, false)
}

fn escape_xml(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' if !attribute => out.push(c),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::sample_report;

    #[test]
    fn one_case_per_step_with_escaping() {
        insta::assert_snapshot!(junit_xml(&sample_report()));
    }

    #[test]
    fn text_keeps_line_breaks() {
        assert_eq!(escape_text("a\n\tb\r<c>"), "a\n\tb&#13;&lt;c&gt;");
    }

    #[test]
    fn escapes_markup_and_drops_what_xml_cannot_hold() {
        assert_eq!(
            escape("a<b>&\"c\"'d'\n\u{1b}[0m"),
            "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;&#10;\u{fffd}[0m"
        );
    }
}
