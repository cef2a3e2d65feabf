//! Manifests: the files an entry names, reading and templating them, parsing them into
//! Kubernetes objects (`parse_objects`, also used for fetched manifests), and YAML errors at
//! their place in the file as written.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::Analyzer;
use crate::diag::{Diagnostic, FileId, offset_of};
use crate::plan::model::Manifest;
use crate::plan::raw::S;

impl Analyzer<'_> {
    /// Reports a YAML error at its line and column in `file` as written. Templating keeps
    /// lines where they are, so the position holds for templated files too.
    pub(super) fn yaml_error(&mut self, file: FileId, e: &serde_saphyr::Error) {
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
    pub(super) fn manifest_paths(
        &mut self,
        entries: &[S],
        file: FileId,
        dir: &Path,
    ) -> Vec<PathBuf> {
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
    pub(super) fn manifests(
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
