//! Analysis: from a plan file on disk to a checked `Plan`, or every problem found at once.
//!
//! Reads the plan and its includes, resolves variables, reads and counts manifests, checks
//! pins, durations and step references, and orders the steps. It touches no cluster and runs
//! no tool; the only IO is reading local files and environment variables.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::dag;
use super::model::*;
use super::raw::*;
use super::template::{self, Ref, valid_var_name};
use crate::diag::{Diagnostic, Diagnostics, FileId, Sources, did_you_mean, offset_of};

/// Step kinds as written in plans, for messages.
const STEP_KINDS: &[&str] = &[
    "helm",
    "apply",
    "namespace",
    "patch",
    "wait",
    "http",
    "traffic",
    "exec",
];

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
        for unit in &units {
            if let Some(meta) = &unit.raw.plan {
                for vf in &meta.vars_files {
                    let p = unit.dir.join(vf.get_ref());
                    self.read_vars_file(&p, unit.file, vf.span());
                }
            }
        }
        for unit in &units {
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
        let names: Vec<String> = self.vars.keys().cloned().collect();
        for name in names {
            self.resolve_var(&name, &mut Vec::new());
        }

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

        // Steps: ids first, so that `needs` can be checked against all of them.
        let mut ids: HashMap<String, (usize, FileId, Range<usize>)> = HashMap::new();
        let mut all = Vec::new();
        for unit in &units {
            for step in &unit.raw.step {
                let id = step.get_ref().id.get_ref().clone();
                let span = step.get_ref().id.span();
                if !valid_id(&id) {
                    self.diags.push(
                        Diagnostic::new(format!("step id `{id}` is not valid"))
                            .at(unit.file, span.clone())
                            .help("use lowercase letters, digits and `-`, starting with a letter"),
                    );
                }
                if let Some((_, f, s)) = ids.get(&id) {
                    let (line, col, _) = crate::diag::locate(&self.sources.get(*f).text, s.start);
                    let first = format!("{}:{line}:{col}", self.sources.get(*f).display);
                    self.diags.push(
                        Diagnostic::new(format!("duplicate step id `{id}`"))
                            .at(unit.file, span)
                            .help(format!(
                                "the first step `{id}` is at {first}; ids must be unique"
                            )),
                    );
                    continue;
                }
                ids.insert(id, (all.len(), unit.file, span));
                all.push((step, unit.file, unit.dir.clone()));
            }
        }
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
                if let Some(n) = self.next_step(n, unit.file) {
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
            steps,
            waves,
            next,
        })
    }

    /// A `[[plan.next]]` entry: a title, and a URL to open, a command to run, or both.
    fn next_step(&mut self, n: &Spanned<RawNext>, file: FileId) -> Option<NextStep> {
        let raw = n.get_ref();
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
        Some(NextStep {
            title: title?,
            command: command.flatten(),
            url: url.flatten(),
        })
    }

    /// Reads and parses one plan file, its includes first (depth first, each once).
    fn read_unit(
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
    fn expand(
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
    fn interp(&mut self, s: &S, file: FileId) -> Option<String> {
        // The span covers the quotes of a basic string; positions inside skip the first one.
        let base = s.span().start + 1;
        self.expand(s.get_ref(), file, base, &mut Vec::new())
    }

    fn num(
        &mut self,
        n: &Spanned<RawNum>,
        file: FileId,
        what: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let value = match n.get_ref() {
            RawNum::Int(i) => *i,
            RawNum::Str(s) => {
                let text = self.expand(s, file, n.span().start + 1, &mut Vec::new())?;
                match text.trim().parse::<i64>() {
                    Ok(i) => i,
                    Err(_) => {
                        self.diags.push(
                            Diagnostic::new(format!("`{what}` must be a whole number, got `{text}`"))
                                .at(file, n.span())
                                .help("write a number, or a string holding a `${var}` whose value is a number"),
                        );
                        return None;
                    }
                }
            }
        };
        if value < min || value > max {
            self.diags.push(
                Diagnostic::new(format!(
                    "`{what}` must be between {min} and {max}, got {value}"
                ))
                .at(file, n.span())
                .help(range_help(what, min, max)),
            );
            return None;
        }
        Some(value)
    }

    fn duration(&mut self, s: &S, file: FileId) -> Option<Duration> {
        let text = self.interp(s, file)?;
        match humantime::parse_duration(&text) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.diags.push(
                    Diagnostic::new("a duration must be longer than zero")
                        .at(file, s.span())
                        .help("write durations like \"90s\", \"5m\" or \"1m 30s\""),
                );
                None
            }
            Err(e) => {
                self.diags.push(
                    Diagnostic::new(format!("`{text}` is not a duration: {e}"))
                        .at(file, s.span())
                        .help("write durations like \"90s\", \"5m\" or \"1m 30s\""),
                );
                None
            }
        }
    }

    fn path(&mut self, s: &S, file: FileId, dir: &Path) -> Option<PathBuf> {
        let text = self.interp(s, file)?;
        Some(absolute(&dir.join(text)))
    }

    fn cluster(
        &mut self,
        c: &Spanned<RawCluster>,
        file: FileId,
        dir: &Path,
        plan_name: &str,
    ) -> Option<Cluster> {
        let raw = c.get_ref();
        let provider_name = self.interp(&raw.provider, file)?;
        let name = match &raw.name {
            Some(n) => self.interp(n, file)?,
            None => plan_name.to_string(),
        };
        let settings = [
            ("kind", raw.kind.is_some()),
            ("kwok", raw.kwok.is_some()),
            ("existing", raw.existing.is_some()),
        ];
        for (k, present) in settings {
            if present && k != provider_name {
                self.diags.push(
                    Diagnostic::new(format!(
                        "`[cluster.{k}]` is given but the provider is `{provider_name}`"
                    ))
                    .at(file, raw.provider.span())
                    .help(format!(
                        "remove `[cluster.{k}]` or set `provider = \"{k}\"`"
                    )),
                );
            }
        }
        let provider = match provider_name.as_str() {
            "kind" => {
                let Some(k) = &raw.kind else {
                    self.diags.push(
                        Diagnostic::new("the kind provider needs `[cluster.kind]` with `node_image`")
                            .at(file, raw.provider.span())
                            .help("add `[cluster.kind]` with `node_image = \"kindest/node:vX.Y.Z@sha256:...\"`"),
                    );
                    return None;
                };
                let node_image = self.interp(&k.node_image, file)?;
                if !node_image.contains("@sha256:") {
                    self.diags.push(
                        Diagnostic::new(format!(
                            "node image `{node_image}` is not pinned by digest"
                        ))
                        .at(file, k.node_image.span())
                        .help("use the `image:tag@sha256:...` form from kind's release notes"),
                    );
                }
                let mut port_mappings = Vec::new();
                for m in &k.port_mappings {
                    let host = self.num(&m.get_ref().host_port, file, "host_port", 1, 65535);
                    let node = self.num(&m.get_ref().node_port, file, "node_port", 30000, 32767);
                    if let (Some(h), Some(n)) = (host, node) {
                        port_mappings.push(PortMapping {
                            host_port: h as u16,
                            node_port: n as u16,
                        });
                    }
                }
                let min_memory_bytes = match &k.min_memory {
                    Some(m) => Some(self.bytes(m, file)?),
                    None => None,
                };
                Provider::Kind {
                    node_image,
                    port_mappings,
                    min_memory_bytes,
                }
            }
            "kwok" => {
                let k = raw.kwok.as_ref();
                let nodes = match k.and_then(|k| k.nodes.as_ref()) {
                    Some(n) => self.num(n, file, "nodes", 1, 100)? as u32,
                    None => 1,
                };
                let binaries = match k.and_then(|k| k.binaries.as_ref()) {
                    Some(b) => Some(self.testbed_path(
                        b,
                        file,
                        dir,
                        "binaries folder",
                        true,
                        "run `just testbed` and `eval \"$(just testbed-env)\"`",
                    )?),
                    None => None,
                };
                let mut apiserver_args = Vec::new();
                for a in k.map(|k| k.apiserver_args.as_slice()).unwrap_or_default() {
                    let text = self.interp(a, file)?;
                    if text.starts_with('-') || !text.contains('=') {
                        self.diags.push(
                            Diagnostic::new(format!("apiserver argument `{text}` is not `key=value`"))
                                .at(file, a.span())
                                .help("write it without dashes, e.g. \"disable-admission-plugins=MutatingAdmissionWebhook\""),
                        );
                    }
                    apiserver_args.push(text);
                }
                let kube_version = match k.and_then(|k| k.kube_version.as_ref()) {
                    Some(v) => Some(self.interp(v, file)?),
                    None => None,
                };
                let istiod = match k.and_then(|k| k.istiod.as_ref()) {
                    Some(i) => Some(self.testbed_path(
                        &i.get_ref().binary,
                        file,
                        dir,
                        "istiod binary",
                        false,
                        "run `just testbed` (it builds pilot-discovery) and `eval \"$(just testbed-env)\"`",
                    )?),
                    None => None,
                };
                Provider::Kwok {
                    nodes,
                    binaries,
                    apiserver_args,
                    kube_version,
                    istiod,
                }
            }
            "existing" => {
                let e = raw.existing.as_ref();
                let kubeconfig = match e.and_then(|e| e.kubeconfig.as_ref()) {
                    Some(k) => Some(self.path(k, file, dir)?),
                    None => None,
                };
                let context = match e.and_then(|e| e.context.as_ref()) {
                    Some(c) => Some(self.interp(c, file)?),
                    None => None,
                };
                Provider::Existing {
                    kubeconfig,
                    context,
                }
            }
            other => {
                let mut d = Diagnostic::new(format!("unknown cluster provider `{other}`"))
                    .at(file, raw.provider.span());
                d = match did_you_mean(other, ["kind", "kwok", "existing"]) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => d.help("use `kind`, `kwok` or `existing`"),
                };
                self.diags.push(d);
                return None;
            }
        };
        Some(Cluster { name, provider })
    }

    fn bytes(&mut self, s: &S, file: FileId) -> Option<u64> {
        let text = self.interp(s, file)?;
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let mult = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => 0,
        };
        match n.parse::<u64>() {
            Ok(n) if mult > 0 => Some(n * mult),
            _ => {
                self.diags.push(
                    Diagnostic::new(format!("`{text}` is not a size"))
                        .at(file, s.span())
                        .help("write sizes like \"4GiB\" or \"512MiB\""),
                );
                None
            }
        }
    }

    fn step(
        &mut self,
        step: &Spanned<RawStep>,
        file: FileId,
        dir: &Path,
        ids: &HashMap<String, (usize, FileId, Range<usize>)>,
        allow_unpinned: bool,
    ) -> Option<Step> {
        let raw = step.get_ref();
        let id = raw.id.get_ref().clone();
        let mut needs = Vec::new();
        for n in &raw.needs {
            match ids.get(n.get_ref()) {
                Some((i, _, _)) if n.get_ref() == &id => {
                    let _ = i;
                    self.diags.push(
                        Diagnostic::new(format!("step `{id}` needs itself"))
                            .at(file, n.span())
                            .help(format!("remove `{id}` from its own `needs`")),
                    );
                }
                Some((i, _, _)) => needs.push(*i),
                None => {
                    let mut d = Diagnostic::new(format!(
                        "step `{id}` needs unknown step `{}`",
                        n.get_ref()
                    ))
                    .at(file, n.span());
                    if let Some(s) = did_you_mean(n.get_ref(), ids.keys().map(String::as_str)) {
                        d = d.help(format!("did you mean `{s}`?"));
                    }
                    self.diags.push(d);
                }
            }
        }
        let timeout = match &raw.timeout {
            Some(t) => self.duration(t, file),
            None => Some(DEFAULT_TIMEOUT),
        };
        let backoff = match &raw.backoff {
            Some(t) => self.duration(t, file),
            None => Some(DEFAULT_BACKOFF),
        };
        let description = raw.description.as_ref().and_then(|d| self.interp(d, file));

        let mut kinds: Vec<(&str, Range<usize>)> = [
            raw.helm.as_ref().map(|k| ("helm", k.span())),
            raw.apply.as_ref().map(|k| ("apply", k.span())),
            raw.namespace.as_ref().map(|k| ("namespace", k.span())),
            raw.patch.as_ref().map(|k| ("patch", k.span())),
            raw.wait.as_ref().map(|k| ("wait", k.span())),
            raw.http.as_ref().map(|k| ("http", k.span())),
            raw.traffic.as_ref().map(|k| ("traffic", k.span())),
            raw.exec.as_ref().map(|k| ("exec", k.span())),
        ]
        .into_iter()
        .flatten()
        .collect();
        // In the order written, so that the caret points at the second kind of the step.
        kinds.sort_by_key(|(_, span)| span.start);
        if kinds.is_empty() {
            self.diags.push(
                Diagnostic::new(format!("step `{id}` has no step kind"))
                    .at(file, raw.id.span())
                    .help(format!("give it exactly one of: {}", STEP_KINDS.join(", "))),
            );
            return None;
        }
        if kinds.len() > 1 {
            let names: Vec<&str> = kinds.iter().map(|(k, _)| *k).collect();
            self.diags.push(
                Diagnostic::new(format!(
                    "step `{id}` has {} step kinds ({}); a step has exactly one",
                    names.len(),
                    names.join(", ")
                ))
                .at(file, kinds[1].1.clone())
                .help("split it into several steps joined by `needs`"),
            );
            return None;
        }

        let action = if let Some(h) = &raw.helm {
            self.helm(h.get_ref(), file, dir).map(Action::Helm)
        } else if let Some(a) = &raw.apply {
            self.apply(a, file, dir, allow_unpinned).map(Action::Apply)
        } else if let Some(n) = &raw.namespace {
            self.namespace(n.get_ref(), file).map(Action::Namespace)
        } else if let Some(p) = &raw.patch {
            self.patch(p, file, dir)
        } else if let Some(w) = &raw.wait {
            self.wait(w, file, dir).map(Action::Wait)
        } else if let Some(h) = &raw.http {
            self.http(h.get_ref(), file).map(Action::Http)
        } else if let Some(t) = &raw.traffic {
            self.traffic(t.get_ref(), file).map(Action::Traffic)
        } else if let Some(e) = &raw.exec {
            self.exec(e, file, dir).map(Action::Exec)
        } else {
            None
        };

        Some(Step {
            id,
            description,
            needs,
            timeout: timeout?,
            retries: raw.retries.as_ref().map(|r| *r.get_ref()).unwrap_or(0),
            backoff: backoff?,
            action: action?,
        })
    }

    fn helm(&mut self, h: &RawHelm, file: FileId, dir: &Path) -> Option<Helm> {
        let release = self.interp(&h.release, file);
        let namespace = self.interp(&h.namespace, file);
        let chart_text = self.interp(&h.chart, file)?;
        // An empty `repo` (after interpolation) means a local chart, so one step can serve
        // a plan that installs from a repository and one that installs from a folder.
        let repo = match &h.repo {
            Some(r) => {
                let text = self.interp(r, file)?;
                (!text.is_empty()).then_some((r, text))
            }
            None => None,
        };
        let chart = match repo {
            Some((repo, repo_url)) => {
                if !(repo_url.starts_with("https://")
                    || repo_url.starts_with("http://")
                    || repo_url.starts_with("oci://"))
                {
                    self.diags.push(
                        Diagnostic::new(format!("chart repository `{repo_url}` is not a URL"))
                            .at(file, repo.span())
                            .help("use an https://, http:// or oci:// URL, or leave `repo` out for a local chart"),
                    );
                }
                let Some(version) = &h.version else {
                    self.diags.push(
                        Diagnostic::new(format!(
                            "chart `{chart_text}` from a repository has no `version`"
                        ))
                        .at(file, h.chart.span())
                        .help("pin the chart: version = \"1.30.0\""),
                    );
                    return None;
                };
                ChartRef::Repo {
                    repo: repo_url,
                    name: chart_text,
                    version: self.interp(version, file)?,
                }
            }
            None => {
                let path = absolute(&dir.join(&chart_text));
                if !path.join("Chart.yaml").is_file() {
                    self.diags.push(
                        Diagnostic::new(format!(
                            "chart folder `{}` has no Chart.yaml",
                            crate::diag::display_path(&path)
                        ))
                        .at(file, h.chart.span())
                        .help("give a local chart folder, or `repo` and `version` for a chart from a repository"),
                    );
                    return None;
                }
                ChartRef::Path { path }
            }
        };
        let mut values = serde_json::Value::Object(Default::default());
        if let Some(v) = &h.values {
            let table = toml::Value::Table(v.get_ref().clone());
            let json = serde_json::to_value(&table).unwrap_or_default();
            values = self.interp_json(json, file, v.span())?;
        }
        let mut values_files = Vec::new();
        for f in &h.values_files {
            let p = self.path(f, file, dir)?;
            match std::fs::read_to_string(&p) {
                Ok(text) => {
                    let vf = self.sources.add(&p, text.clone());
                    if let Err(e) = serde_saphyr::from_str::<serde_json::Value>(&text) {
                        self.yaml_error(vf, &e);
                    }
                    values_files.push(p);
                }
                Err(e) => self.diags.push(
                    Diagnostic::new(format!(
                        "cannot read values file `{}`: {e}",
                        crate::diag::display_path(&p)
                    ))
                    .at(file, f.span())
                    .help("paths are relative to the plan file that names them"),
                ),
            }
        }
        Some(Helm {
            release: release?,
            namespace: namespace?,
            chart,
            values,
            values_files,
            create_namespace: h.create_namespace,
            wait: h.wait,
        })
    }

    /// Interpolates every string inside a JSON value; errors point at `span`.
    fn interp_json(
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

    /// Reports a YAML error at its line and column in `file` as written. Templating keeps
    /// lines where they are, so the position holds for templated files too.
    fn yaml_error(&mut self, file: FileId, e: &serde_saphyr::Error) {
        let at = e
            .location()
            .map(|l| {
                offset_of(
                    &self.sources.get(file).text,
                    l.line() as usize,
                    l.column() as usize,
                )
            })
            .unwrap_or(0);
        let msg = e.without_snippet().to_string();
        let msg = msg.lines().next().unwrap_or("invalid YAML");
        // The position is drawn below; in a templated file the parser's column may be off.
        let msg = msg.split(" at line ").next().unwrap_or(msg).to_string();
        self.diags.push(
            Diagnostic::new(format!("invalid YAML: {msg}"))
                .at(file, at..at + 1)
                .help("fix the manifest so that it parses as YAML"),
        );
    }

    /// Expands file, folder and glob entries to the manifest files they name.
    fn manifest_paths(&mut self, entries: &[S], file: FileId, dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in entries {
            let Some(p) = self.path(e, file, dir) else {
                continue;
            };
            let text = p.to_string_lossy().to_string();
            let mut found: Vec<PathBuf> = if text.contains(['*', '?', '[']) {
                match glob::glob(&text) {
                    Ok(paths) => paths
                        .filter_map(Result::ok)
                        .filter(|p| p.is_file())
                        .collect(),
                    Err(err) => {
                        self.diags.push(
                            Diagnostic::new(format!("`{}` is not a valid glob: {err}", e.get_ref()))
                                .at(file, e.span())
                                .help("`*` and `?` match within a name, `[abc]` one of a set of characters"),
                        );
                        continue;
                    }
                }
            } else if p.is_dir() {
                std::fs::read_dir(&p)
                    .map(|rd| {
                        rd.filter_map(Result::ok)
                            .map(|d| d.path())
                            .filter(|p| {
                                p.is_file()
                                    && matches!(
                                        p.extension().and_then(|x| x.to_str()),
                                        Some("yaml" | "yml")
                                    )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            } else if p.is_file() {
                vec![p.clone()]
            } else {
                self.diags.push(
                    Diagnostic::new(format!(
                        "manifest `{}` does not exist",
                        crate::diag::display_path(&p)
                    ))
                    .at(file, e.span())
                    .help("paths are relative to the plan file that names them"),
                );
                continue;
            };
            if found.is_empty() {
                self.diags.push(
                    Diagnostic::new(format!("`{}` matches no manifest file", e.get_ref()))
                        .at(file, e.span())
                        .help("paths are relative to the plan file that names them; a folder gives its *.yaml and *.yml files"),
                );
            }
            found.sort();
            out.extend(found);
        }
        out
    }

    /// Reads, optionally templates, parses and checks the objects of manifest files.
    fn manifests(
        &mut self,
        paths: &[PathBuf],
        template: bool,
        from: (FileId, Range<usize>),
    ) -> Vec<Manifest> {
        let mut out = Vec::new();
        for p in paths {
            let text = match std::fs::read_to_string(p) {
                Ok(t) => t,
                Err(e) => {
                    self.diags.push(
                        Diagnostic::new(format!(
                            "cannot read `{}`: {e}",
                            crate::diag::display_path(p)
                        ))
                        .at(from.0, from.1.clone())
                        .help("check that the file is readable"),
                    );
                    continue;
                }
            };
            let file = self.sources.add(p, text.clone());
            // Positions are taken in the file as written: templating keeps lines and
            // documents where they are but moves every byte after a variable.
            let original = text;
            let text = if template {
                match self.expand(&original, file, 0, &mut Vec::new()) {
                    Some(t) => t,
                    None => continue,
                }
            } else {
                original.clone()
            };
            let source = crate::diag::display_path(p);
            match parse_objects(&text, &source) {
                Ok(objects) if objects.is_empty() => self.diags.push(
                    Diagnostic::new(format!("`{source}` holds no Kubernetes object"))
                        .at(file, 0..original.len().min(1))
                        .help("a YAML stream can parse to zero documents; check that the file is not empty or commented out"),
                ),
                Ok(objects) => out.extend(objects),
                Err(ManifestError::Yaml(e)) => self.yaml_error(file, &e),
                Err(ManifestError::NotAnObject { index, problem }) => {
                    let at = document_offset(&original, index);
                    self.diags.push(
                        Diagnostic::new(format!("document {} of `{source}` {problem}", index + 1))
                            .at(file, at..at + 1)
                            .help("every document needs `apiVersion`, `kind` and `metadata.name`"),
                    )
                }
            }
        }
        out
    }

    fn apply(
        &mut self,
        a: &Spanned<RawApply>,
        file: FileId,
        dir: &Path,
        allow_unpinned: bool,
    ) -> Option<Apply> {
        let raw = a.get_ref();
        if raw.files.is_empty() && raw.urls.is_empty() {
            self.diags.push(
                Diagnostic::new("an apply step needs `files` or `urls`")
                    .at(file, a.span())
                    .help("e.g. files = [\"manifests/bookinfo/*.yaml\"]"),
            );
            return None;
        }
        let namespace = match &raw.namespace {
            Some(n) => Some(self.interp(n, file)?),
            None => None,
        };
        let paths = self.manifest_paths(&raw.files, file, dir);
        let objects = self.manifests(&paths, raw.template, (file, a.span()));
        let mut urls = Vec::new();
        for u in &raw.urls {
            let u = u.get_ref();
            let Some(url) = self.interp(&u.url, file) else {
                continue;
            };
            let scheme_ok = ["https://", "http://", "file://"]
                .iter()
                .any(|s| url.starts_with(s));
            if !scheme_ok {
                self.diags.push(
                    Diagnostic::new(format!("`{url}` is not an http(s) or file URL"))
                        .at(file, u.url.span())
                        .help("use an https:// URL, or file:// for a manifest on this machine"),
                );
                continue;
            }
            let sha256 = match &u.sha256 {
                Some(s) => {
                    let Some(text) = self.interp(s, file) else {
                        continue;
                    };
                    let hexpart = text
                        .strip_prefix("sha256:")
                        .unwrap_or(&text)
                        .to_ascii_lowercase();
                    if hexpart.len() != 64 || !hexpart.chars().all(|c| c.is_ascii_hexdigit()) {
                        self.diags.push(
                            Diagnostic::new(format!("`{text}` is not a sha256 digest"))
                                .at(file, s.span())
                                .help("a sha256 is 64 hexadecimal characters; `sha256sum FILE` prints it"),
                        );
                        continue;
                    }
                    Some(hexpart)
                }
                None if allow_unpinned => None,
                None => {
                    self.diags.push(
                        Diagnostic::new(format!("URL `{url}` has no sha256 pin"))
                            .at(file, u.url.span())
                            .help("add `sha256 = \"...\"` (see `sha256sum`), or set `allow_unpinned_urls = true` under `[plan]`"),
                    );
                    continue;
                }
            };
            urls.push(PinnedUrl { url, sha256 });
        }
        let vars = if raw.template {
            self.all_vars()
        } else {
            BTreeMap::new()
        };
        Some(Apply {
            namespace,
            objects,
            urls,
            template: raw.template,
            vars,
        })
    }

    fn all_vars(&self) -> BTreeMap<String, String> {
        self.resolved
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect()
    }

    fn namespace(&mut self, n: &RawNamespace, file: FileId) -> Option<Namespace> {
        let name = self.interp(&n.name, file)?;
        if !valid_dns_label(&name) {
            self.diags.push(
                Diagnostic::new(format!("`{name}` is not a valid namespace name"))
                    .at(file, n.name.span())
                    .help("lowercase letters, digits and `-`, at most 63 characters"),
            );
        }
        let mut labels = BTreeMap::new();
        for (k, v) in &n.labels {
            labels.insert(k.clone(), self.interp(v, file)?);
        }
        Some(Namespace { name, labels })
    }

    fn patch(&mut self, p: &Spanned<RawPatch>, file: FileId, dir: &Path) -> Option<Action> {
        let raw = p.get_ref();
        match (&raw.file, &raw.configmap) {
            (Some(f), None) => {
                let Some(manager) = &raw.field_manager else {
                    self.diags.push(
                        Diagnostic::new("a patch from a file needs its own `field_manager`")
                            .at(file, f.span())
                            .help("e.g. field_manager = \"bookinfo-up-ports\"; it is what lets the patch be reverted exactly"),
                    );
                    return None;
                };
                let field_manager = self.interp(manager, file)?;
                let paths = self.manifest_paths(std::slice::from_ref(f), file, dir);
                let objects = self.manifests(&paths, raw.template, (file, f.span()));
                Some(Action::Patch(Patch {
                    field_manager,
                    objects,
                }))
            }
            (None, Some(cm)) => {
                let missing: Vec<String> = [
                    ("namespace", raw.namespace.is_none()),
                    ("key", raw.key.is_none()),
                    ("merge_file", raw.merge_file.is_none()),
                ]
                .into_iter()
                .filter(|(_, m)| *m)
                .map(|(n, _)| format!("`{n}`"))
                .collect();
                if !missing.is_empty() {
                    self.diags.push(
                        Diagnostic::new(format!("a ConfigMap patch also needs {}", missing.join(", ")))
                            .at(file, cm.span())
                            .help("a ConfigMap patch merges `merge_file` into the YAML held in `key` of ConfigMap `namespace`/`configmap`"),
                    );
                    return None;
                }
                let namespace = self.interp(raw.namespace.as_ref().unwrap(), file)?;
                let configmap = self.interp(cm, file)?;
                let key = self.interp(raw.key.as_ref().unwrap(), file)?;
                let mf = raw.merge_file.as_ref().unwrap();
                let path = self.path(mf, file, dir)?;
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        self.diags.push(
                            Diagnostic::new(format!(
                                "cannot read `{}`: {e}",
                                crate::diag::display_path(&path)
                            ))
                            .at(file, mf.span())
                            .help("paths are relative to the plan file that names them"),
                        );
                        return None;
                    }
                };
                let mfile = self.sources.add(&path, text.clone());
                let text = if raw.template {
                    self.expand(&text, mfile, 0, &mut Vec::new())?
                } else {
                    text
                };
                let merge = match serde_saphyr::from_str::<serde_json::Value>(&text) {
                    Ok(v @ serde_json::Value::Object(_)) => v,
                    Ok(_) => {
                        self.diags.push(
                            Diagnostic::new("the merge file must hold a YAML mapping")
                                .at(mfile, 0..1)
                                .help("write the keys to merge, e.g. `external_services:` with the settings below it"),
                        );
                        return None;
                    }
                    Err(e) => {
                        self.yaml_error(mfile, &e);
                        return None;
                    }
                };
                let mut restart = Vec::new();
                for r in &raw.restart {
                    let text = self.interp(r, file)?;
                    let text = text
                        .strip_prefix("deployment/")
                        .unwrap_or(&text)
                        .to_string();
                    restart.push(match text.split_once('/') {
                        Some((ns, name)) => (ns.to_string(), name.to_string()),
                        None => (namespace.clone(), text),
                    });
                }
                Some(Action::ConfigMerge(ConfigMerge {
                    namespace,
                    configmap,
                    key,
                    merge,
                    restart,
                }))
            }
            (Some(f), Some(_)) => {
                self.diags.push(
                    Diagnostic::new("a patch has either `file` (server-side apply) or `configmap` (nested merge), not both")
                        .at(file, f.span())
                        .help("split it into two patch steps"),
                );
                None
            }
            (None, None) => {
                self.diags.push(
                    Diagnostic::new("a patch needs `file` (with `field_manager`) or `configmap` (with `namespace`, `key`, `merge_file`)")
                        .at(file, p.span())
                        .help("e.g. file = \"manifests/istio/ingress-ports.yaml\" and field_manager = \"bookinfo-up-ports\""),
                );
                None
            }
        }
    }

    fn wait(&mut self, w: &Spanned<RawWait>, file: FileId, dir: &Path) -> Option<Wait> {
        let raw = w.get_ref();
        if raw.rollout.is_empty()
            && raw.pods.is_none()
            && raw.crds.is_empty()
            && raw.webhook.is_none()
        {
            self.diags.push(
                Diagnostic::new("a wait step needs `rollout`, `pods`, `crds` or `webhook`")
                    .at(file, w.span())
                    .help("e.g. rollout = [\"bookinfo/*\"] waits for every Deployment of namespace bookinfo"),
            );
            return None;
        }
        let mut rollout = Vec::new();
        for r in &raw.rollout {
            let text = self.interp(r, file)?;
            match text.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                    rollout.push((ns.to_string(), name.to_string()))
                }
                _ => self.diags.push(
                    Diagnostic::new(format!("`{text}` is not `namespace/name`"))
                        .at(file, r.span())
                        .help("write `bookinfo/productpage-v1`, or `bookinfo/*` for every Deployment of a namespace"),
                ),
            }
        }
        let pods = match &raw.pods {
            Some(p) => {
                let rp = p.get_ref();
                Some(PodsReady {
                    namespace: self.interp(&rp.namespace, file)?,
                    selector: match &rp.selector {
                        Some(s) => Some(self.interp(s, file)?),
                        None => None,
                    },
                    containers: match &rp.containers {
                        Some(c) => Some(self.num(c, file, "containers", 1, 64)? as u32),
                        None => None,
                    },
                    // An empty name (from a variable) means no named container is required.
                    container: match &rp.container {
                        Some(c) => Some(self.interp(c, file)?).filter(|c| !c.is_empty()),
                        None => None,
                    },
                })
            }
            None => None,
        };
        let mut crds = Vec::new();
        for c in &raw.crds {
            crds.push(self.interp(c, file)?);
        }
        let webhook = match &raw.webhook {
            Some(h) => {
                let h = h.get_ref();
                let name = self.interp(&h.name, file)?;
                let paths = self.manifest_paths(std::slice::from_ref(&h.probe), file, dir);
                let mut probes = self.manifests(&paths, false, (file, h.probe.span()));
                if probes.len() > 1 {
                    self.diags.push(
                        Diagnostic::new(format!(
                            "a webhook probe is one object; `{}` holds {}",
                            h.probe.get_ref(),
                            probes.len()
                        ))
                        .at(file, h.probe.span())
                        .help("keep one object that the webhook denies in the probe file"),
                    );
                    return None;
                }
                Some(WebhookProbe {
                    name,
                    probe: probes.pop()?,
                })
            }
            None => None,
        };
        Some(Wait {
            rollout,
            pods,
            crds,
            webhook,
        })
    }

    /// A path the testbed provides (a folder, or a file): resolved, and reported when it is
    /// missing, with how to build it.
    fn testbed_path(
        &mut self,
        s: &S,
        file: FileId,
        dir: &Path,
        what: &str,
        folder: bool,
        help: &str,
    ) -> Option<PathBuf> {
        let p = self.path(s, file, dir)?;
        if (folder && !p.is_dir()) || (!folder && !p.is_file()) {
            self.diags.push(
                Diagnostic::new(format!(
                    "{what} `{}` does not exist",
                    crate::diag::display_path(&p)
                ))
                .at(file, s.span())
                .help(help),
            );
        }
        Some(p)
    }

    fn url(&mut self, s: &S, file: FileId) -> Option<String> {
        let url = self.interp(s, file)?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            self.diags.push(
                Diagnostic::new(format!("`{url}` is not an http(s) URL"))
                    .at(file, s.span())
                    .help("write the whole URL, e.g. \"http://127.0.0.1:666/productpage\""),
            );
            return None;
        }
        Some(url)
    }

    fn http(&mut self, h: &RawHttp, file: FileId) -> Option<Http> {
        let (url, service) = match &h.service {
            Some(svc) => {
                let text = self.interp(svc, file)?;
                let parsed = text.split_once('/').and_then(|(ns, rest)| {
                    let (name, port) = rest.split_once(':')?;
                    Some(ServiceRef {
                        namespace: ns.to_string(),
                        name: name.to_string(),
                        port: port.parse().ok()?,
                    })
                });
                let Some(parsed) = parsed else {
                    self.diags.push(
                        Diagnostic::new(format!("`{text}` is not `namespace/name:port`"))
                            .at(file, svc.span())
                            .help("e.g. service = \"istio-system/prometheus:9090\""),
                    );
                    return None;
                };
                let path = self.interp(&h.url, file)?;
                if !path.starts_with('/') {
                    self.diags.push(
                        Diagnostic::new(format!(
                            "with `service`, `url` is a path starting with `/`, got `{path}`"
                        ))
                        .at(file, h.url.span())
                        .help("e.g. url = \"/api/v1/query?query=up\""),
                    );
                    return None;
                }
                (Some(path), Some(parsed))
            }
            None => (self.url(&h.url, file), None),
        };
        let status = match &h.status {
            Some(s) => self.num(s, file, "status", 100, 599).map(|s| s as u16),
            None => Some(200),
        };
        let body_contains = match &h.body_contains {
            Some(b) => Some(self.interp(b, file)?),
            None => None,
        };
        let mut variants = BTreeMap::new();
        for (k, v) in &h.variants {
            variants.insert(k.clone(), self.interp(v, file)?);
        }
        let max_requests = match &h.max_requests {
            Some(m) => self
                .num(m, file, "max_requests", 1, 100_000)
                .map(|m| m as u32),
            None => Some(if variants.is_empty() { 1 } else { 60 }),
        };
        let deadline = match &h.deadline {
            Some(d) => self.duration(d, file),
            None => Some(Duration::from_secs(60)),
        };
        Some(Http {
            url: url?,
            service,
            status: status?,
            body_contains,
            variants,
            max_requests: max_requests?,
            deadline: deadline?,
        })
    }

    fn traffic(&mut self, t: &RawTraffic, file: FileId) -> Option<Traffic> {
        let url = self.url(&t.url, file);
        let requests = self
            .num(&t.requests, file, "requests", 1, 1_000_000)
            .map(|r| r as u32);
        let over = match &t.over {
            Some(d) => self.duration(d, file),
            None => Some(Duration::from_secs(60)),
        };
        Some(Traffic {
            url: url?,
            requests: requests?,
            over: over?,
        })
    }

    fn exec(&mut self, e: &Spanned<RawExec>, file: FileId, dir: &Path) -> Option<Exec> {
        let raw = e.get_ref();
        if raw.command.is_empty() {
            self.diags.push(
                Diagnostic::new("an exec step needs a non-empty `command`")
                    .at(file, e.span())
                    .help("e.g. command = [\"sh\", \"-c\", \"echo hello\"]"),
            );
            return None;
        }
        let command: Option<Vec<String>> =
            raw.command.iter().map(|c| self.interp(c, file)).collect();
        let unless: Option<Vec<String>> = raw.unless.iter().map(|c| self.interp(c, file)).collect();
        Some(Exec {
            command: command?,
            unless: unless?,
            dir: dir.to_path_buf(),
        })
    }
}

/// Why a manifest could not be turned into objects.
pub enum ManifestError {
    Yaml(serde_saphyr::Error),
    NotAnObject { index: usize, problem: String },
}

/// Parses a YAML stream into Kubernetes objects, skipping empty documents and unrolling `List`s.
pub fn parse_objects(text: &str, source: &str) -> Result<Vec<Manifest>, ManifestError> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(ManifestError::Yaml)?;
    let mut out = Vec::new();
    for (index, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let problem = match &doc {
            serde_json::Value::Object(o) => {
                if !o.get("apiVersion").is_some_and(|v| v.is_string()) {
                    Some("has no `apiVersion`")
                } else if !o.get("kind").is_some_and(|v| v.is_string()) {
                    Some("has no `kind`")
                } else if o
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .is_some_and(|k| k.ends_with("List"))
                {
                    None
                } else if !doc.pointer("/metadata/name").is_some_and(|v| v.is_string()) {
                    Some("has no `metadata.name`")
                } else {
                    None
                }
            }
            _ => Some("is not a mapping"),
        };
        if let Some(problem) = problem {
            return Err(ManifestError::NotAnObject {
                index,
                problem: problem.to_string(),
            });
        }
        if doc["kind"].as_str().is_some_and(|k| k.ends_with("List")) {
            for item in doc["items"].as_array().cloned().unwrap_or_default() {
                out.push(Manifest {
                    source: source.to_string(),
                    object: item,
                });
            }
        } else {
            out.push(Manifest {
                source: source.to_string(),
                object: doc,
            });
        }
    }
    Ok(out)
}

/// Byte offset of the first line of the `index`-th document of a YAML stream (best effort).
/// Documents without content (only comments, or nothing between two `---`) are not counted,
/// as the YAML parser drops them too.
fn document_offset(text: &str, index: usize) -> usize {
    let mut done = 0;
    let mut in_document = false;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let marker = line.starts_with("---") || line.starts_with("...");
        let rest = if marker { &line[3..] } else { line };
        if marker && in_document {
            done += 1;
            in_document = false;
        }
        let content = !rest.trim().is_empty() && !rest.trim_start().starts_with('#');
        if content && !in_document {
            if done == index {
                return offset;
            }
            in_document = true;
        }
        offset += line.len();
    }
    0
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

/// What a number of the plan is for, when it is out of range.
fn range_help(what: &str, min: i64, max: i64) -> String {
    match what {
        "host_port" => "the port on 127.0.0.1 that kind publishes: 1 to 65535".to_string(),
        "node_port" => "a NodePort, in Kubernetes' default range 30000 to 32767".to_string(),
        "status" => "an HTTP status code, e.g. 200".to_string(),
        _ => format!("use a whole number from {min} to {max}"),
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

fn valid_id(id: &str) -> bool {
    id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_dns_label(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Analyzes `plan` written to a temp folder with `files` beside it; env from `env`.
    fn analyze(plan: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Result<Plan, String> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let path = dir.path().join("plan.toml");
        std::fs::write(&path, plan).unwrap();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (sources, result) = load(&path, &|n| env.get(n).cloned());
        result.map_err(|d| d.render(&sources))
    }

    const HEAD: &str = "[plan]\nname = \"t\"\n[cluster]\nprovider = \"existing\"\n";

    /// One template engine: a manifest renders the same from a file (at analysis) and from a
    /// `file://` URL (fetched at run time), variables, `${env.X}`, defaults and `$${` alike.
    #[tokio::test]
    async fn a_manifest_renders_the_same_from_a_file_and_from_a_url() {
        let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ${name}\ndata:\n  image: ${env.HUB}/app:${env.TAG:-latest}\n  literal: \"$${not.a.var}\"\n  dollar: $5\n";
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cm.yaml");
        std::fs::write(&file, manifest).unwrap();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(manifest.as_bytes()));
        let plan = format!(
            "{HEAD}[vars]\nname = \"settings\"\n[[step]]\nid = \"local\"\n[step.apply]\nfiles = [\"{}\"]\ntemplate = true\n[[step]]\nid = \"remote\"\n[step.apply]\nurls = [{{ url = \"file://{}\", sha256 = \"{sha}\" }}]\ntemplate = true\n",
            file.display(),
            file.display()
        );
        let env = [("HUB", "docker.io/istio")];
        let plan = analyze(&plan, &[], &env).unwrap();
        let (Action::Apply(local), Action::Apply(remote)) =
            (&plan.steps[0].action, &plan.steps[1].action)
        else {
            panic!("two apply steps");
        };
        let text = crate::steps::fetch::fetch(&remote.urls[0], &dir.path().join("cache"))
            .await
            .unwrap();
        let lookup = |n: &str| {
            env.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        };
        let fetched =
            crate::steps::fetch::objects(&remote.urls[0], &text, Some(&remote.vars), &lookup)
                .unwrap();
        assert_eq!(local.objects.len(), 1);
        assert_eq!(fetched[0].object, local.objects[0].object);
        assert_eq!(
            local.objects[0].object["data"],
            serde_json::json!({
                "image": "docker.io/istio/app:latest",
                "literal": "${not.a.var}",
                "dollar": "$5"
            })
        );
        assert_eq!(local.objects[0].object["metadata"]["name"], "settings");
    }

    fn exec_command(plan: &Plan) -> Vec<String> {
        match &plan.steps[0].action {
            Action::Exec(e) => e.command.clone(),
            other => panic!("not an exec step: {other:?}"),
        }
    }

    #[test]
    fn interpolates_vars_env_defaults_and_escapes() {
        let plan = format!(
            "{HEAD}[vars]\nport = 666\nurl = \"http://127.0.0.1:${{port}}\"\n[[step]]\nid = \"a\"\n[step.exec]\ncommand = [\"${{url}}/x\", \"${{env.HUB}}\", \"${{env.TAG:-1.20.3}}\", \"$${{literal}}\"]\n"
        );
        let p = analyze(&plan, &[], &[("HUB", "docker.io/istio")]).unwrap();
        assert_eq!(
            exec_command(&p),
            [
                "http://127.0.0.1:666/x",
                "docker.io/istio",
                "1.20.3",
                "${literal}"
            ]
        );
    }

    #[test]
    fn including_plan_overrides_included_vars() {
        let shared = "[vars]\ntag = \"1.20.3\"\n[[step]]\nid = \"a\"\n[step.exec]\ncommand = [\"echo\", \"${tag}\"]\n";
        let plan = "[plan]\nname = \"t\"\ninclude = [\"shared.toml\"]\n[cluster]\nprovider = \"existing\"\n[vars]\ntag = \"1.17.0\"\n";
        let p = analyze(plan, &[("shared.toml", shared)], &[]).unwrap();
        assert_eq!(exec_command(&p), ["echo", "1.17.0"]);
    }

    #[test]
    fn vars_files_supply_literal_values() {
        let plan = "[plan]\nname = \"t\"\nvars_files = [\"v.env\"]\n[cluster]\nprovider = \"existing\"\n[[step]]\nid = \"a\"\n[step.exec]\ncommand = [\"${V}\"]\n";
        let p = analyze(plan, &[("v.env", "# pins\nV=1.30.4\n")], &[]).unwrap();
        assert_eq!(exec_command(&p), ["1.30.4"]);
    }

    #[test]
    fn durations_parse_and_default() {
        let plan = format!(
            "{HEAD}[[step]]\nid = \"a\"\ntimeout = \"1m 30s\"\nbackoff = \"500ms\"\n[step.exec]\ncommand = [\"true\"]\n[[step]]\nid = \"b\"\n[step.exec]\ncommand = [\"true\"]\n"
        );
        let p = analyze(&plan, &[], &[]).unwrap();
        assert_eq!(p.steps[0].timeout, Duration::from_secs(90));
        assert_eq!(p.steps[0].backoff, Duration::from_millis(500));
        assert_eq!(p.steps[1].timeout, DEFAULT_TIMEOUT);
        assert_eq!(p.steps[1].backoff, DEFAULT_BACKOFF);
    }

    #[test]
    fn bad_durations_are_named() {
        let plan = format!(
            "{HEAD}[[step]]\nid = \"a\"\ntimeout = \"soon\"\n[step.exec]\ncommand = [\"true\"]\n"
        );
        let err = analyze(&plan, &[], &[]).unwrap_err();
        assert!(err.contains("`soon` is not a duration"), "{err}");
        assert!(err.contains("plan.toml:7:11"), "{err}");
    }

    #[test]
    fn all_problems_are_reported_together() {
        let plan = format!(
            "{HEAD}[[step]]\nid = \"a\"\nneeds = [\"nope\"]\ntimeout = \"x\"\n[step.exec]\ncommand = [\"${{missing}}\"]\n"
        );
        let err = analyze(&plan, &[], &[]).unwrap_err();
        assert!(err.contains("needs unknown step `nope`"), "{err}");
        assert!(err.contains("`x` is not a duration"), "{err}");
        assert!(err.contains("variable `missing` is not set"), "{err}");
        assert!(err.contains("the plan has 3 problems"), "{err}");
    }

    #[test]
    fn empty_repo_means_a_local_chart() {
        let plan = format!(
            "{HEAD}[vars]\nrepo = \"\"\n[[step]]\nid = \"a\"\n[step.helm]\nrelease = \"r\"\nnamespace = \"n\"\nrepo = \"${{repo}}\"\nchart = \"chart\"\nversion = \"1\"\n"
        );
        let p = analyze(
            &plan,
            &[("chart/Chart.yaml", "name: c\nversion: 1.0.0\n")],
            &[],
        )
        .unwrap();
        assert!(
            matches!(&p.steps[0].action, Action::Helm(h) if matches!(h.chart, ChartRef::Path { .. }))
        );
    }

    #[test]
    fn templated_manifests_take_plan_vars() {
        let plan = format!(
            "{HEAD}[vars]\nport = 666\n[[step]]\nid = \"a\"\n[step.apply]\nfiles = [\"m.yaml\"]\ntemplate = true\n"
        );
        let m = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n    - port: ${port}\n";
        let p = analyze(&plan, &[("m.yaml", m)], &[]).unwrap();
        let Action::Apply(a) = &p.steps[0].action else {
            panic!()
        };
        assert_eq!(a.objects[0].object["spec"]["ports"][0]["port"], 666);
    }
}
