//! Steps: ids, `needs`, the settings every step has, and each step kind's analysis.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::values::{valid_dns_label, valid_id};
use super::{Analyzer, DEFAULT_BACKOFF, DEFAULT_TIMEOUT, Unit, absolute};
use crate::diag::{Diagnostic, FileId, did_you_mean};
use crate::plan::model::*;
use crate::plan::raw::*;

/// Step ids: the step's index among all steps, and where its id is written.
pub(super) type StepIds = HashMap<String, (usize, FileId, Range<usize>)>;

/// A step as declared: its table, its file and the folder its paths are relative to.
pub(super) type DeclaredStep<'u> = (&'u Spanned<RawStep>, FileId, PathBuf);

impl Analyzer<'_> {
    /// The steps of all units in order, each with its file and folder, and their ids. An
    /// invalid id is reported; a duplicate id is reported and its step left out.
    pub(super) fn step_ids<'u>(&mut self, units: &'u [Unit]) -> (StepIds, Vec<DeclaredStep<'u>>) {
        let mut ids: StepIds = HashMap::new();
        let mut all = Vec::new();
        for unit in units {
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
        (ids, all)
    }

    pub(super) fn step(
        &mut self,
        step: &Spanned<RawStep>,
        file: FileId,
        dir: &Path,
        ids: &StepIds,
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
        // `skip` is usually a variable that a run sets where the step cannot run (an empty
        // one, the default, runs it).
        let skip = raw
            .skip
            .as_ref()
            .and_then(|s| self.interp(s, file))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());

        // In the order written, so that the caret points at the second kind of the step.
        let kinds = raw.kinds();
        let kind = match kinds.as_slice() {
            [] => {
                self.diags.push(
                    Diagnostic::new(format!("step `{id}` has no step kind"))
                        .at(file, raw.id.span())
                        .help(format!(
                            "give it exactly one of: {}",
                            RawStepKind::NAMES.join(", ")
                        )),
                );
                return None;
            }
            [kind] => *kind,
            [_, second, ..] => {
                let names: Vec<&str> = kinds.iter().map(RawStepKind::name).collect();
                self.diags.push(
                    Diagnostic::new(format!(
                        "step `{id}` has {} step kinds ({}); a step has exactly one",
                        names.len(),
                        names.join(", ")
                    ))
                    .at(file, second.span())
                    .help("split it into several steps joined by `needs`"),
                );
                return None;
            }
        };

        let action = match kind {
            RawStepKind::Helm(h) => self.helm(h.get_ref(), file, dir).map(Action::Helm),
            RawStepKind::Apply(a) => self.apply(a, file, dir, allow_unpinned).map(Action::Apply),
            RawStepKind::Namespace(n) => self.namespace(n.get_ref(), file).map(Action::Namespace),
            RawStepKind::Patch(p) => self.patch(p, file, dir),
            RawStepKind::Wait(w) => self.wait(w, file, dir).map(Action::Wait),
            RawStepKind::Http(h) => self.http(h.get_ref(), file).map(Action::Http),
            RawStepKind::Traffic(t) => self.traffic(t.get_ref(), file).map(Action::Traffic),
            RawStepKind::Exec(e) => self.exec(e, file, dir).map(Action::Exec),
        };

        Some(Step {
            id,
            description,
            needs,
            timeout: timeout?,
            retries: raw.retries.as_ref().map(|r| *r.get_ref()).unwrap_or(0),
            backoff: backoff?,
            skip,
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
            if let Some(u) = self.pinned_url(u.get_ref(), file, allow_unpinned) {
                urls.push(u);
            }
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
