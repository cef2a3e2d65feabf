//! Analysis: from a plan file on disk to a checked `Plan`, or every problem found at once.
//!
//! Reads the plan and its includes, resolves variables, reads and counts manifests, checks
//! pins, durations and step references, and orders the steps. It touches no cluster and runs
//! no tool; the only IO is reading local files and environment variables.
//!
//! One `Analyzer` gathers the diagnostics; this file holds the entry point and the order of
//! the work, and its methods live in the files of this folder by concern: `includes` (plan
//! files), `variables` (variables and templating), `values` (value checks), `cluster`,
//! `steps` and `manifests`.

mod cluster;
mod includes;
mod manifests;
mod steps;
#[cfg(test)]
mod tests;
mod values;
mod variables;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::dag;
use super::model::*;
use super::raw::*;
use crate::diag::{Diagnostic, Diagnostics, FileId, Sources};

pub use manifests::{ManifestError, parse_objects};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_BACKOFF: Duration = Duration::from_secs(2);

/// Reads and analyzes the plan at `path`. `env` supplies `${env.NAME}` values.
pub fn load(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Sources, Result<Plan, Diagnostics>) {
    let mut a = Analyzer {
        sources: Sources::default(),
        diags: Vec::new(),
        vars: BTreeMap::new(),
        resolved: HashMap::new(),
        env,
    };
    let plan = a.run(path);
    let result = if a.diags.is_empty() {
        Ok(plan.expect("a plan without diagnostics"))
    } else {
        Err(Diagnostics { items: a.diags })
    };
    (a.sources, result)
}

/// A parsed plan file and where it lies.
struct Unit {
    file: FileId,
    dir: PathBuf,
    raw: RawPlan,
}

/// A variable as declared: its raw text and where.
struct VarDecl {
    text: String,
    file: FileId,
    span: Range<usize>,
    /// Declared in a `KEY=VALUE` file: taken literally, never interpolated.
    literal: bool,
}

/// The analysis under way: the files read, the problems found and the plan's variables.
struct Analyzer<'e> {
    sources: Sources,
    diags: Vec<Diagnostic>,
    vars: BTreeMap<String, VarDecl>,
    resolved: HashMap<String, Option<String>>,
    env: &'e dyn Fn(&str) -> Option<String>,
}

impl Analyzer<'_> {
    fn run(&mut self, path: &Path) -> Option<Plan> {
        let path = absolute(path);
        let mut units = Vec::new();
        let mut stack = Vec::new();
        self.read_unit(&path, None, &mut units, &mut stack)?;
        if !self.diags.is_empty() {
            return None;
        }
        let main = units.len() - 1;

        // Variables: vars files first, then includes in order, then the plan itself.
        self.declare_vars(&units);

        let main_unit = &units[main];
        let meta = main_unit.raw.plan.as_ref();
        let name = match meta.and_then(|m| m.name.as_ref()) {
            Some(n) => self.interp(n, main_unit.file).unwrap_or_default(),
            None => {
                let text = &self.sources.get(main_unit.file).text;
                let help = if meta.is_some() {
                    "add `name = \"...\"` under `[plan]`"
                } else {
                    "add `[plan]` with `name = \"...\"`"
                };
                let at = table_span(text, "plan");
                self.diags.push(
                    Diagnostic::new("the plan has no name")
                        .at(main_unit.file, at)
                        .help(help),
                );
                String::new()
            }
        };
        let description = meta
            .and_then(|m| m.description.as_ref())
            .and_then(|d| self.interp(d, main_unit.file))
            .unwrap_or_default();
        let allow_unpinned = units
            .iter()
            .any(|u| u.raw.plan.as_ref().is_some_and(|m| m.allow_unpinned_urls));

        // The cluster and teardown of the plan itself win over those of includes.
        let cluster_unit = units.iter().rev().find(|u| u.raw.cluster.is_some());
        let cluster = match cluster_unit {
            Some(u) => self.cluster(u.raw.cluster.as_ref().unwrap(), u.file, &u.dir, &name),
            None => {
                let at = table_span(&self.sources.get(main_unit.file).text, "cluster");
                self.diags.push(
                    Diagnostic::new("the plan has no `[cluster]`")
                        .at(main_unit.file, at)
                        .help("add `[cluster]` with `provider = \"kind\"`, `\"kwok\"` or `\"existing\"`"),
                );
                None
            }
        };
        let teardown = units
            .iter()
            .rev()
            .find_map(|u| u.raw.teardown.as_ref().map(|t| (t, u.file)));
        let teardown = Teardown {
            delete_cluster: teardown.and_then(|(t, _)| t.delete_cluster).unwrap_or(true),
            timeout: teardown
                .and_then(|(t, f)| t.timeout.as_ref().map(|d| (d, f)))
                .and_then(|(d, f)| self.duration(d, f))
                .unwrap_or(DEFAULT_TIMEOUT),
        };

        let prune = units
            .iter()
            .rev()
            .find_map(|u| u.raw.prune.as_ref())
            .map(|p| {
                let d = Prune::default();
                Prune {
                    enabled: p.enabled.unwrap_or(d.enabled),
                    crds: p.crds.unwrap_or(d.crds),
                    empty: p.empty.unwrap_or(d.empty),
                }
            })
            .unwrap_or_default();

        // Steps: ids first, so that `needs` can be checked against all of them.
        let (ids, all) = self.step_ids(&units);
        if all.is_empty() {
            let at = table_span(&self.sources.get(main_unit.file).text, "step");
            self.diags.push(
                Diagnostic::new("the plan has no steps")
                    .at(main_unit.file, at)
                    .help("add at least one `[[step]]`"),
            );
        }

        let mut steps = Vec::new();
        for (step, file, dir) in &all {
            if let Some(s) = self.step(step, *file, dir, &ids, allow_unpinned) {
                steps.push(s);
            }
        }
        if !self.diags.is_empty() {
            return None;
        }

        let needs: Vec<Vec<usize>> = steps.iter().map(|s| s.needs.clone()).collect();
        let waves = match dag::waves(&needs) {
            Ok(w) => w,
            Err(cycle) => {
                let path: Vec<&str> = cycle.iter().map(|&i| steps[i].id.as_str()).collect();
                let (_, file, _) = &all[cycle[0]];
                let step = all[cycle[0]].0.get_ref();
                let next = &steps[cycle[1 % cycle.len()]].id;
                let span = step
                    .needs
                    .iter()
                    .find(|n| n.get_ref() == next)
                    .map(|n| n.span())
                    .unwrap_or(step.id.span());
                self.diags.push(
                    Diagnostic::new(format!(
                        "steps form a cycle: {} -> {}",
                        path.join(" -> "),
                        path[0]
                    ))
                    .at(*file, span)
                    .help("remove one of these `needs` so that the steps can be ordered"),
                );
                return None;
            }
        };

        let mut next = Vec::new();
        for unit in &units {
            for n in unit.raw.plan.iter().flat_map(|m| &m.next) {
                if let Some(n) = self.next_step(n, unit.file, &ids) {
                    next.push(n);
                }
            }
        }
        if !self.diags.is_empty() {
            return None;
        }

        Some(Plan {
            name,
            description,
            path,
            cluster: cluster?,
            teardown,
            prune,
            steps,
            waves,
            next,
        })
    }

    /// A `[[plan.next]]` entry: a title, and a URL to open, a command to run, or both.
    fn next_step(
        &mut self,
        n: &Spanned<RawNext>,
        file: FileId,
        ids: &steps::StepIds,
    ) -> Option<NextStep> {
        let raw = n.get_ref();
        let mut needs = Vec::new();
        for s in &raw.needs {
            let id = s.get_ref();
            if ids.contains_key(id) {
                needs.push(id.clone());
                continue;
            }
            let mut d = Diagnostic::new(format!(
                "`[[plan.next]]` entry `{}` needs unknown step `{id}`",
                raw.title.get_ref()
            ))
            .at(file, s.span());
            if let Some(s) = crate::diag::did_you_mean(id, ids.keys().map(String::as_str)) {
                d = d.help(format!("did you mean `{s}`?"));
            }
            self.diags.push(d);
        }
        let title = self.interp(&raw.title, file);
        let command = raw.command.as_ref().map(|c| self.interp(c, file));
        let url = raw.url.as_ref().map(|u| self.url(u, file));
        if command.is_none() && url.is_none() {
            self.diags.push(
                Diagnostic::new("a `[[plan.next]]` entry needs a `url`, a `command`, or both")
                    .at(file, n.span())
                    .help("e.g. url = \"http://127.0.0.1:30666/productpage\", or command = \"kubectl -n istio-system port-forward svc/grafana 3000\""),
            );
            return None;
        }
        // `Some(None)`: given, but a diagnostic was recorded for it.
        if matches!(command, Some(None)) || matches!(url, Some(None)) {
            return None;
        }
        (needs.len() == raw.needs.len()).then_some(())?;
        Some(NextStep {
            title: title?,
            command: command.flatten(),
            url: url.flatten(),
            needs,
        })
    }
}

/// Where a plan-wide problem about `[table]` is drawn: that table's header when the file has
/// one, else the first line that is not blank or a comment.
fn table_span(text: &str, table: &str) -> Range<usize> {
    let header = format!("[{table}]");
    let mut first = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let code = line.split('#').next().unwrap_or_default();
        let start = offset + (code.len() - code.trim_start().len());
        if code.trim() == header {
            return start..start + header.len();
        }
        if first.is_none() && !code.trim().is_empty() {
            first = Some(start..start + code.trim().len());
        }
        offset += line.len();
    }
    first.unwrap_or(0..0)
}

fn absolute(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    // Normalise `.` and `..` without touching the file system, so missing files still
    // get readable paths in messages.
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
