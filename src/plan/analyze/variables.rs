//! Variables: declared in plans and vars files, resolved once, and interpolated into plan
//! strings, Helm values and manifests by the one template engine.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use super::{Analyzer, Unit, VarDecl};
use crate::diag::{Diagnostic, FileId, did_you_mean};
use crate::plan::raw::S;
use crate::plan::template::{self, Ref, valid_var_name};

/// The environment prefix that overrides a plan variable: `BOOKINFO_UP_VAR_<name>=value`.
pub const VAR_OVERRIDE_PREFIX: &str = "BOOKINFO_UP_VAR_";

impl Analyzer<'_> {
    /// Declares the variables of all units, each overriding those before it, then resolves them.
    pub(super) fn declare_vars(&mut self, units: &[Unit]) {
        for unit in units {
            if let Some(meta) = &unit.raw.plan {
                for vf in &meta.vars_files {
                    let p = unit.dir.join(vf.get_ref());
                    self.read_vars_file(&p, unit.file, vf.span());
                }
            }
        }
        for unit in units {
            for (name, value) in &unit.raw.vars {
                self.vars.insert(
                    name.clone(),
                    VarDecl {
                        text: value.get_ref().as_text(),
                        file: unit.file,
                        span: value.span(),
                        literal: false,
                    },
                );
            }
        }
        // `BOOKINFO_UP_VAR_<name>` overrides a declared variable, taken literally: how a run
        // points a plan elsewhere without editing it (the testbed's kind tier sets
        // BOOKINFO_UP_VAR_KIND_NODE_IMAGE to its locally built node image).
        let env = self.env;
        for (name, decl) in self.vars.iter_mut() {
            if let Some(value) = env(&format!("{VAR_OVERRIDE_PREFIX}{name}")) {
                decl.text = value;
                decl.literal = true;
            }
        }
        let names: Vec<String> = self.vars.keys().cloned().collect();
        for name in names {
            self.resolve_var(&name, &mut Vec::new());
        }
    }

    fn read_vars_file(&mut self, path: &Path, from: FileId, span: Range<usize>) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.diags.push(
                    Diagnostic::new(format!(
                        "cannot read vars file `{}`: {e}",
                        crate::diag::display_path(path)
                    ))
                    .at(from, span)
                    .help("paths in `vars_files` are relative to the plan file that names them"),
                );
                return;
            }
        };
        let file = self.sources.add(path, text.clone());
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let trimmed = line.trim();
            if !trimmed.is_empty() && !trimmed.starts_with('#') {
                match trimmed.split_once('=') {
                    Some((k, v)) if valid_var_name(k.trim()) => {
                        self.vars.insert(
                            k.trim().to_string(),
                            VarDecl {
                                text: v.trim().trim_matches('"').to_string(),
                                file,
                                span: offset..offset + line.trim_end().len(),
                                literal: true,
                            },
                        );
                    }
                    _ => self.diags.push(
                        Diagnostic::new("expected `NAME=value` in a vars file")
                            .at(file, offset..offset + line.trim_end().len())
                            .help("one `NAME=value` a line; names are letters, digits and `_`; `#` starts a comment"),
                    ),
                }
            }
            offset += line.len();
        }
    }

    fn resolve_var(&mut self, name: &str, visiting: &mut Vec<String>) -> Option<String> {
        if let Some(v) = self.resolved.get(name) {
            return v.clone();
        }
        let decl = self.vars.get(name)?;
        if decl.literal {
            let v = decl.text.clone();
            self.resolved.insert(name.to_string(), Some(v.clone()));
            return Some(v);
        }
        if visiting.iter().any(|v| v == name) {
            let (file, span) = (decl.file, decl.span.clone());
            visiting.push(name.to_string());
            self.diags.push(
                Diagnostic::new(format!(
                    "variables refer to each other: {}",
                    visiting.join(" -> ")
                ))
                .at(file, span)
                .help("give one of these variables a value that does not use the others"),
            );
            self.resolved.insert(name.to_string(), None);
            return None;
        }
        visiting.push(name.to_string());
        let (text, file, span) = (decl.text.clone(), decl.file, decl.span.clone());
        let value = self.expand(&text, file, span.start + 1, visiting);
        visiting.pop();
        self.resolved.insert(name.to_string(), value.clone());
        value
    }

    /// Replaces `${name}`, `${env.NAME}` and `${env.NAME:-default}` in `text`; `$${` is a
    /// literal `${` (the one engine of `template`). `base` is the byte offset of `text` in
    /// `file`, for error positions.
    pub(super) fn expand(
        &mut self,
        text: &str,
        file: FileId,
        base: usize,
        visiting: &mut Vec<String>,
    ) -> Option<String> {
        let at = |r: Range<usize>| base + r.start..base + r.end;
        let rendered = template::render(text, |reference, span| {
            let span = at(span);
            let value = match reference {
                Ref::Env { name, default } => {
                    let value = template::env_value(name, *default, self.env);
                    if value.is_none() {
                        self.diags.push(
                            Diagnostic::new(format!("environment variable `{name}` is not set"))
                                .at(file, span)
                                .help(if ["BOOKINFO_UP_TESTBED_BIN", "BOOKINFO_UP_ISTIO_DIR"].contains(name) {
                                    // The testbed's variables: say where they come from.
                                    "the testbed sets it: run `just testbed`, then `eval \"$(just testbed-env)\"`".to_string()
                                } else {
                                    format!("set it, or give a default: `${{env.{name}:-value}}`")
                                }),
                        );
                    }
                    value
                }
                Ref::Var(name) if self.vars.contains_key(*name) => self.resolve_var(name, visiting),
                Ref::Var(name) => {
                    let names: Vec<&str> = self.vars.keys().map(String::as_str).collect();
                    let mut d =
                        Diagnostic::new(format!("variable `{name}` is not set")).at(file, span);
                    d = match did_you_mean(name, names) {
                        Some(s) => d.help(format!("did you mean `{s}`?")),
                        None => d.help(format!("define it under `[vars]`: {name} = \"...\"")),
                    };
                    self.diags.push(d);
                    None
                }
            };
            value.ok_or(())
        });
        match rendered {
            Ok(text) => Some(text),
            Err(errors) => {
                for e in errors {
                    match e {
                        template::Error::Unclosed { at: span } => self.diags.push(
                            Diagnostic::new("unclosed `${` in a string")
                                .at(file, at(span))
                                .help("close it with `}`, or write `$${` for a literal `${`"),
                        ),
                        template::Error::NotAReference { expr, at: span } => self.diags.push(
                            Diagnostic::new(format!("`${{{expr}}}` is not a variable reference"))
                                .at(file, at(span))
                                .help(
                                    "write `${name}` or `${env.NAME}`; `$${` gives a literal `${`",
                                ),
                        ),
                        // Reported by the lookup itself.
                        template::Error::Lookup(()) => {}
                    }
                }
                None
            }
        }
    }

    /// Interpolates a plan string; `None` when a diagnostic was recorded.
    pub(super) fn interp(&mut self, s: &S, file: FileId) -> Option<String> {
        // The span covers the quotes of a basic string; positions inside skip the first one.
        let base = s.span().start + 1;
        self.expand(s.get_ref(), file, base, &mut Vec::new())
    }

    /// Interpolates every string inside a JSON value; errors point at `span`.
    pub(super) fn interp_json(
        &mut self,
        v: serde_json::Value,
        file: FileId,
        span: Range<usize>,
    ) -> Option<serde_json::Value> {
        use serde_json::Value;
        Some(match v {
            Value::String(s) => {
                let before = self.diags.len();
                let out = self.expand(&s, file, span.start, &mut Vec::new());
                for d in &mut self.diags[before..] {
                    d.label = Some(crate::diag::Label {
                        file,
                        span: span.clone(),
                    });
                }
                Value::String(out?)
            }
            Value::Array(a) => Value::Array(
                a.into_iter()
                    .map(|x| self.interp_json(x, file, span.clone()))
                    .collect::<Option<_>>()?,
            ),
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, x)| Some((k, self.interp_json(x, file, span.clone())?)))
                    .collect::<Option<_>>()?,
            ),
            other => other,
        })
    }

    pub(super) fn all_vars(&self) -> BTreeMap<String, String> {
        self.resolved
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect()
    }
}
