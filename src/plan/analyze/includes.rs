//! Plan files: reading a plan and its includes, and TOML errors as plan authors read them.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{Analyzer, Unit, absolute};
use crate::diag::{Diagnostic, FileId, did_you_mean};
use crate::plan::raw::RawPlan;

impl Analyzer<'_> {
    /// Reads and parses one plan file, its includes first (depth first, each once).
    pub(super) fn read_unit(
        &mut self,
        path: &Path,
        from: Option<(FileId, Range<usize>)>,
        units: &mut Vec<Unit>,
        stack: &mut Vec<PathBuf>,
    ) -> Option<()> {
        if stack.iter().any(|p| p == path) {
            let (file, span) = from.expect("the first plan cannot include itself");
            let chain: Vec<String> = stack
                .iter()
                .chain(std::iter::once(&path.to_path_buf()))
                .map(|p| crate::diag::display_path(p))
                .collect();
            self.diags.push(
                Diagnostic::new(format!("plans include each other: {}", chain.join(" -> ")))
                    .at(file, span)
                    .help("remove this `include`; a shared file should not include the plans that use it"),
            );
            return None;
        }
        if units.iter().any(|u| self.sources.get(u.file).path == path) {
            return Some(());
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let d = Diagnostic::new(format!(
                    "cannot read plan `{}`: {e}",
                    crate::diag::display_path(path)
                ));
                self.diags.push(match from {
                    Some((f, s)) => d
                        .at(f, s)
                        .help("paths in `include` are relative to the plan file that names them"),
                    None => d.help("pass the path of a plan, e.g. `plans/sim.toml`"),
                });
                return None;
            }
        };
        let file = self.sources.add(path, text.clone());
        let raw: RawPlan = match toml::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                self.diags.push(
                    Diagnostic::new(toml_message(&e))
                        .at(file, span)
                        .help(toml_help(&e)),
                );
                return None;
            }
        };
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        stack.push(path.to_path_buf());
        if let Some(meta) = &raw.plan {
            for inc in &meta.include {
                let p = absolute(&dir.join(inc.get_ref()));
                self.read_unit(&p, Some((file, inc.span())), units, stack);
            }
        }
        stack.pop();
        units.push(Unit { file, dir, raw });
        Some(())
    }
}

fn toml_message(e: &toml::de::Error) -> String {
    let m = e.message().trim_end_matches('\n');
    let first = m.lines().next().unwrap_or("invalid TOML");
    // serde lists every key it expected; the help names the closest one instead, so the
    // message only says which key is wrong.
    let first = match first.split_once(", expected") {
        Some((head, _)) if first.starts_with("unknown field") => head,
        _ => first,
    };
    // Plan authors write numbers, not Rust integer types.
    first.replace("expected u32", "expected a whole number")
}

fn toml_help(e: &toml::de::Error) -> String {
    let m = e.message();
    if let Some(rest) = m.strip_prefix("unknown field `") {
        let (key, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let keys: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        match did_you_mean(key, keys.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None if keys.is_empty() => "remove the key".to_string(),
            None => {
                let keys: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
                format!("expected one of {}", keys.join(", "))
            }
        }
    } else if let Some(rest) = m.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        format!("add `{field} = ...` to this table; see docs/plan.md")
    } else if m.contains("invalid type") {
        "see docs/plan.md for the type each key takes".to_string()
    } else {
        "fix the TOML syntax; see docs/plan.md".to_string()
    }
}
