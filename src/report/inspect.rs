//! The text of `bookinfo-up diff` and `bookinfo-up status`. Pure, so snapshot-tested.

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};

use super::format::{next_block, paint};
use crate::change::{Change, ChangeKind};
use serde::Serialize;

use crate::steps::Preview;

/// One step's preview, for the renderers and the JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct StepPreview {
    pub id: String,
    pub kind: &'static str,
    /// How many things a run would change.
    pub changes: usize,
    #[serde(flatten)]
    pub preview: Option<Preview>,
    /// Why the step could not be compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a step stands, for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Converged,
    /// It exists but differs from the plan.
    Drifted,
    /// What it makes does not exist.
    Missing,
    /// A check does not pass, or the step could not be compared.
    Failing,
    /// Its effect cannot be known without running it (a command, traffic).
    NotChecked,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepStatus {
    pub id: String,
    pub kind: &'static str,
    pub state: State,
    pub summary: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<crate::change::Change>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseStatus {
    pub release: String,
    pub namespace: String,
    /// helm's status (`deployed`, `failed`, `pending-upgrade`, ...), or `not installed`.
    pub status: String,
    pub chart: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub plan: String,
    pub cluster: String,
    pub healthy: bool,
    pub steps: Vec<StepStatus>,
    pub releases: Vec<ReleaseStatus>,
    pub unhealthy: crate::kube::health::Unhealthy,
    /// Members of the plan's ApplySet (and helm releases it installed) that the plan no
    /// longer has and a run deletes.
    pub orphaned: Vec<String>,
    /// Members the plan no longer has that a run keeps, each with why (opted out, a CRD, a
    /// step left out...): listed, not counted against convergence.
    pub kept: Vec<String>,
    pub next: crate::run::NextSteps,
}

fn marker(kind: ChangeKind) -> (&'static str, Style) {
    match kind {
        ChangeKind::Create => ("+", AnsiColor::Green.on_default()),
        ChangeKind::Update => ("~", AnsiColor::Yellow.on_default()),
        ChangeKind::Delete => ("-", AnsiColor::Red.on_default()),
    }
}

/// One change: its marker, target and summary, then its unified diff.
fn change_text(c: &Change, color: bool, out: &mut String) {
    let (m, style) = marker(c.kind);
    let _ = writeln!(
        out,
        "{} {}: {}",
        paint(m, style.bold(), color),
        paint(&c.target, Style::new().bold(), color),
        c.summary
    );
    for line in c.diff.lines() {
        let style = if line.starts_with("+++") || line.starts_with("---") {
            Style::new().bold()
        } else if line.starts_with('+') {
            AnsiColor::Green.on_default()
        } else if line.starts_with('-') {
            AnsiColor::Red.on_default()
        } else if line.starts_with("@@") {
            AnsiColor::Cyan.on_default()
        } else {
            Style::new()
        };
        let _ = writeln!(out, "{}", paint(line, style, color));
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `diff`'s text: each step that would change, with its changes; what checks would verify;
/// steps that could not be compared; then one line of totals ("no changes" when converged).
pub fn diff_text(steps: &[StepPreview], color: bool) -> String {
    let mut out = String::new();
    let dim = AnsiColor::BrightBlack.on_default();
    for s in steps {
        let head = |what: &str| {
            format!(
                "{}: {}",
                paint(
                    &format!("{} ({})", s.id, s.kind),
                    Style::new().bold(),
                    color
                ),
                what
            )
        };
        if let Some(e) = &s.error {
            let _ = writeln!(
                out,
                "{}",
                head(&paint(
                    &format!("could not be compared: {e}"),
                    AnsiColor::Red.on_default(),
                    color
                ))
            );
            continue;
        }
        match &s.preview {
            Some(Preview::Changes(changes)) if !changes.is_empty() => {
                let _ = writeln!(
                    out,
                    "{}",
                    head(&format!(
                        "{} change{}",
                        changes.len(),
                        plural(changes.len())
                    ))
                );
                for c in changes {
                    change_text(c, color, &mut out);
                }
            }
            Some(Preview::WouldCheck(lines)) => {
                for l in lines {
                    let _ = writeln!(
                        out,
                        "{}",
                        paint(&format!("{}: would check: {l}", s.id), dim, color)
                    );
                }
            }
            Some(Preview::WouldRun(lines)) => {
                for l in lines {
                    let _ = writeln!(
                        out,
                        "{}",
                        paint(
                            &format!("{}: would run (not previewed): {l}", s.id),
                            dim,
                            color
                        )
                    );
                }
            }
            _ => {}
        }
    }
    let changes: usize = steps.iter().map(|s| s.changes).sum();
    let changed = steps.iter().filter(|s| s.changes > 0).count();
    let failed = steps.iter().filter(|s| s.error.is_some()).count();
    let compared = steps
        .iter()
        .filter(|s| matches!(s.preview, Some(Preview::Changes(_))))
        .count();
    let mut total = if changes == 0 {
        format!("no changes ({compared} step{} compared)", plural(compared))
    } else {
        format!(
            "{changes} change{} in {changed} step{} ({compared} step{} compared)",
            plural(changes),
            plural(changed),
            plural(compared)
        )
    };
    if failed > 0 {
        total.push_str(&format!(
            "; {failed} step{} could not be compared",
            plural(failed)
        ));
    }
    let _ = writeln!(out, "{}", paint(&total, Style::new().bold(), color));
    out
}

fn state_style(state: State) -> (&'static str, Style) {
    match state {
        State::Converged => ("converged", AnsiColor::Green.on_default()),
        State::Drifted => ("drifted", AnsiColor::Yellow.on_default()),
        State::Missing => ("missing", AnsiColor::Yellow.on_default()),
        State::Failing => ("failing", AnsiColor::Red.on_default()),
        State::NotChecked => ("not checked", AnsiColor::BrightBlack.on_default()),
    }
}

/// `status`'s text: a line per step, helm releases, what is not healthy, the verdict, and
/// where to find the environment.
pub fn status_text(r: &StatusReport, color: bool) -> String {
    let mut out = String::new();
    let bold = Style::new().bold();
    let _ = writeln!(
        out,
        "{}",
        paint(
            &format!("plan {} on cluster {}", r.plan, r.cluster),
            bold,
            color
        )
    );
    let id_width = r.steps.iter().map(|s| s.id.len()).max().unwrap_or(0);
    for s in &r.steps {
        let (word, style) = state_style(s.state);
        let line = format!(
            "  {:<id_width$}  {}  {}",
            s.id,
            paint(&format!("{word:<11}"), style, color),
            first_line(&s.summary)
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if !r.releases.is_empty() {
        let _ = writeln!(out, "\n{}", paint("helm releases", bold, color));
        let width = r
            .releases
            .iter()
            .map(|x| x.namespace.len() + x.release.len() + 1)
            .max()
            .unwrap_or(0);
        for rel in &r.releases {
            let style = if rel.status == "deployed" {
                AnsiColor::Green.on_default()
            } else {
                AnsiColor::Red.on_default()
            };
            let chart = if rel.chart.is_empty() {
                String::new()
            } else {
                format!("  {} {}", rel.chart, rel.version)
            };
            let name = format!("{}/{}", rel.namespace, rel.release);
            let _ = writeln!(
                out,
                "  {name:<width$}  {}{chart}",
                paint(&rel.status, style, color)
            );
        }
    }
    for (title, items) in [
        ("Deployments not available", &r.unhealthy.deployments),
        ("pods not ready", &r.unhealthy.pods),
        (
            "orphaned: no longer in the plan, a run prunes them",
            &r.orphaned,
        ),
        ("no longer in the plan, kept", &r.kept),
    ] {
        if items.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{}", paint(title, bold, color));
        for i in items {
            let _ = writeln!(out, "  {}", first_line(i));
        }
    }
    let not_ok = r
        .steps
        .iter()
        .filter(|s| !matches!(s.state, State::Converged | State::NotChecked))
        .count();
    let verdict = if r.healthy {
        paint(
            "converged and healthy",
            AnsiColor::Green.on_default().bold(),
            color,
        )
    } else {
        let mut parts = Vec::new();
        if not_ok > 0 {
            parts.push(format!("{not_ok} step{} not converged", plural(not_ok)));
        }
        let bad_releases = r.releases.iter().filter(|x| x.status != "deployed").count();
        if bad_releases > 0 {
            parts.push(format!(
                "{bad_releases} release{} not deployed",
                plural(bad_releases)
            ));
        }
        if !r.orphaned.is_empty() {
            parts.push(format!(
                "{} orphaned object{}",
                r.orphaned.len(),
                plural(r.orphaned.len())
            ));
        }
        let unhealthy = r.unhealthy.deployments.len() + r.unhealthy.pods.len();
        if unhealthy > 0 {
            parts.push(format!(
                "{unhealthy} workload{} not ready",
                plural(unhealthy)
            ));
        }
        let differs = r
            .steps
            .iter()
            .any(|s| matches!(s.state, State::Drifted | State::Missing));
        let detail = if differs {
            "; `bookinfo-up diff` shows the differences"
        } else {
            ""
        };
        paint(
            &format!("not converged: {}{detail}", parts.join(", ")),
            AnsiColor::Red.on_default().bold(),
            color,
        )
    };
    let _ = writeln!(out, "\n{verdict}");
    out.push_str(&next_block(&r.next, color));
    out
}

/// A summary's first line, for one-line listings (explanations of waits run longer).
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::health::Unhealthy;
    use serde_json::json;

    fn steps() -> Vec<StepPreview> {
        let live = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "details-v1", "namespace": "bookinfo"},
            "spec": {"replicas": 0}});
        let plan = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "details-v1", "namespace": "bookinfo"},
            "spec": {"replicas": 1}});
        vec![
            StepPreview {
                id: "istio-base".into(),
                kind: "helm",
                changes: 0,
                preview: Some(Preview::Changes(vec![])),
                error: None,
            },
            StepPreview {
                id: "bookinfo".into(),
                kind: "apply",
                changes: 1,
                preview: Some(Preview::Changes(vec![Change::update(
                    "Deployment bookinfo/details-v1".into(),
                    &live,
                    &plan,
                )])),
                error: None,
            },
            StepPreview {
                id: "rollout".into(),
                kind: "wait",
                changes: 0,
                preview: Some(Preview::WouldCheck(vec![
                    "wait for every deployment in bookinfo to roll out".into(),
                ])),
                error: None,
            },
        ]
    }

    #[test]
    fn diff_of_a_scaled_deployment() {
        insta::assert_snapshot!(diff_text(&steps(), false));
    }

    #[test]
    fn diff_without_changes_says_so() {
        let mut s = steps();
        s.remove(1);
        let text = diff_text(&s, false);
        assert!(text.ends_with("no changes (1 step compared)\n"), "{text}");
    }

    #[test]
    fn colour_only_when_asked() {
        assert!(!diff_text(&steps(), false).contains('\x1b'));
        assert!(diff_text(&steps(), true).contains("\x1b["));
    }

    #[test]
    fn status_of_a_drifted_environment() {
        let r = StatusReport {
            plan: "bookinfo-sim".into(),
            cluster: "bookinfo-sim".into(),
            healthy: false,
            steps: vec![
                StepStatus {
                    id: "istiod".into(),
                    kind: "helm",
                    state: State::Converged,
                    summary: String::new(),
                    changes: vec![],
                },
                StepStatus {
                    id: "bookinfo".into(),
                    kind: "apply",
                    state: State::Drifted,
                    summary: "Deployment bookinfo/details-v1: spec.replicas".into(),
                    changes: vec![],
                },
                StepStatus {
                    id: "bookinfo-gateway".into(),
                    kind: "apply",
                    state: State::Missing,
                    summary: "VirtualService bookinfo/bookinfo: would be created".into(),
                    changes: vec![],
                },
            ],
            releases: vec![ReleaseStatus {
                release: "istiod".into(),
                namespace: "istio-system".into(),
                status: "pending-upgrade".into(),
                chart: "istiod".into(),
                version: "1.30.4".into(),
            }],
            unhealthy: Unhealthy {
                deployments: vec![],
                pods: vec![
                    "bookinfo/details-v1-abc: container details is waiting: ImagePullBackOff"
                        .into(),
                ],
            },
            orphaned: vec!["VirtualService bookinfo/reviews-canary".into()],
            kept: vec![
                "CustomResourceDefinition wasmplugins.extensions.istio.io: a CRD: deleting it deletes all its custom resources; `[prune] crds = true` allows it".into(),
            ],
            next: crate::run::NextSteps {
                kubeconfig: "/state/kubeconfig".into(),
                context: None,
                kubectl: "export KUBECONFIG=/state/kubeconfig".into(),
                items: vec![],
            },
        };
        insta::assert_snapshot!(status_text(&r, false));
    }
}
