//! Value checks: numbers and their ranges, durations, sizes, paths, URLs and their pins,
//! step ids and namespace names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::{Analyzer, absolute};
use crate::diag::{Diagnostic, FileId};
use crate::plan::model::PinnedUrl;
use crate::plan::raw::{RawNum, RawUrl, S};

impl Analyzer<'_> {
    pub(super) fn num(
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

    pub(super) fn duration(&mut self, s: &S, file: FileId) -> Option<Duration> {
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

    pub(super) fn path(&mut self, s: &S, file: FileId, dir: &Path) -> Option<PathBuf> {
        let text = self.interp(s, file)?;
        Some(absolute(&dir.join(text)))
    }

    pub(super) fn bytes(&mut self, s: &S, file: FileId) -> Option<u64> {
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

    /// A path the testbed provides (a folder, or a file): resolved, and reported when it is
    /// missing, with how to build it.
    pub(super) fn testbed_path(
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

    pub(super) fn url(&mut self, s: &S, file: FileId) -> Option<String> {
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

    /// A manifest URL: http(s) or file, and pinned by its sha256 unless the plan allows
    /// unpinned URLs.
    pub(super) fn pinned_url(
        &mut self,
        u: &RawUrl,
        file: FileId,
        allow_unpinned: bool,
    ) -> Option<PinnedUrl> {
        let url = self.interp(&u.url, file)?;
        let scheme_ok = ["https://", "http://", "file://"]
            .iter()
            .any(|s| url.starts_with(s));
        if !scheme_ok {
            self.diags.push(
                Diagnostic::new(format!("`{url}` is not an http(s) or file URL"))
                    .at(file, u.url.span())
                    .help("use an https:// URL, or file:// for a manifest on this machine"),
            );
            return None;
        }
        let sha256 = match &u.sha256 {
            Some(s) => {
                let text = self.interp(s, file)?;
                let hexpart = text
                    .strip_prefix("sha256:")
                    .unwrap_or(&text)
                    .to_ascii_lowercase();
                if hexpart.len() != 64 || !hexpart.chars().all(|c| c.is_ascii_hexdigit()) {
                    self.diags.push(
                        Diagnostic::new(format!("`{text}` is not a sha256 digest"))
                            .at(file, s.span())
                            .help(
                                "a sha256 is 64 hexadecimal characters; `sha256sum FILE` prints it",
                            ),
                    );
                    return None;
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
                return None;
            }
        };
        Some(PinnedUrl { url, sha256 })
    }
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

pub(super) fn valid_id(id: &str) -> bool {
    id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub(super) fn valid_dns_label(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}
