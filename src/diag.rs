//! Plan diagnostics: source files kept for error rendering, and `Diagnostic`, an error drawn
//! as `--> file:line:column` with the source line and a caret under the offending span.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Index of a file in `Sources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub usize);

/// One file read during loading: a plan, an included plan, a manifest or a vars file.
#[derive(Debug)]
pub struct SourceFile {
    /// The path as shown to the user (relative to the working directory where possible).
    pub display: String,
    pub path: PathBuf,
    pub text: String,
}

/// Every file that diagnostics may point into.
#[derive(Debug, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

impl Sources {
    pub fn add(&mut self, path: &Path, text: String) -> FileId {
        if let Some(i) = self.files.iter().position(|f| f.path == path) {
            return FileId(i);
        }
        self.files.push(SourceFile {
            display: display_path(path),
            path: path.to_path_buf(),
            text,
        });
        FileId(self.files.len() - 1)
    }

    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id.0]
    }
}

/// A path relative to the working directory when it lies below it, else as given.
pub fn display_path(path: &Path) -> String {
    let cwd = std::env::current_dir().ok();
    let shown = cwd
        .as_deref()
        .and_then(|cwd| path.strip_prefix(cwd).ok())
        .unwrap_or(path);
    shown.display().to_string()
}

/// Where a diagnostic points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub file: FileId,
    pub span: Range<usize>,
}

/// One problem found in a plan or in something it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    pub label: Option<Label>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            label: None,
            help: None,
        }
    }

    pub fn at(mut self, file: FileId, span: Range<usize>) -> Self {
        self.label = Some(Label { file, span });
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Draws the diagnostic the way `rustc` and `just` do, without colour.
    pub fn render(&self, sources: &Sources) -> String {
        let mut out = format!("error: {}\n", self.message);
        if let Some(label) = &self.label {
            let file = sources.get(label.file);
            let (line_no, col, line) = locate(&file.text, label.span.start);
            let gutter = line_no.to_string().len();
            let pad = " ".repeat(gutter);
            let _ = writeln!(out, "{pad}--> {}:{line_no}:{col}", file.display);
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{line_no} | {line}");
            let line_chars = line.chars().count();
            // A span may reach past the end of the file or into a character (a one-byte span
            // on a multi-byte character); the caret is then one column wide.
            let start = label.span.start.min(file.text.len());
            let end = label.span.end.clamp(start, file.text.len());
            let width = file
                .text
                .get(start..end)
                .unwrap_or_default()
                .lines()
                .next()
                .map(|s| s.chars().count())
                .unwrap_or(0)
                .clamp(1, (line_chars + 1).saturating_sub(col - 1).max(1));
            let _ = writeln!(out, "{pad} | {}{}", " ".repeat(col - 1), "^".repeat(width));
        }
        if let Some(help) = &self.help {
            let pad = self
                .label
                .as_ref()
                .map(|l| {
                    let file = sources.get(l.file);
                    locate(&file.text, l.span.start).0.to_string().len()
                })
                .unwrap_or(0);
            let _ = writeln!(out, "{} = help: {help}", " ".repeat(pad));
        }
        out
    }
}

/// 1-based line and character column of a byte offset, and the text of that line.
pub fn locate(text: &str, offset: usize) -> (usize, usize, &str) {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[offset..]
        .find('\n')
        .map(|i| offset + i)
        .unwrap_or(text.len());
    let line_no = text[..line_start].matches('\n').count() + 1;
    let col = text[line_start..offset].chars().count() + 1;
    (
        line_no,
        col,
        text[line_start..line_end].trim_end_matches('\r'),
    )
}

/// Byte offset of a 1-based line and column, for parsers that report positions that way.
pub fn offset_of(text: &str, line: usize, col: usize) -> usize {
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let within: usize = l
                .chars()
                .take(col.saturating_sub(1))
                .map(char::len_utf8)
                .sum();
            return offset + within;
        }
        offset += l.len();
    }
    text.len()
}

/// All the diagnostics of a failed analysis, rendered together.
#[derive(Debug)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn render(&self, sources: &Sources) -> String {
        let mut out = String::new();
        for d in &self.items {
            out.push_str(&d.render(sources));
            out.push('\n');
        }
        let n = self.items.len();
        let _ = writeln!(
            out,
            "error: the plan has {n} problem{}; nothing was changed",
            if n == 1 { "" } else { "s" }
        );
        out
    }
}

/// The closest candidate to `name`, if one is close enough to suggest.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_column_and_caret() {
        let mut sources = Sources::default();
        let text = "[[step]]\nid = \"a\"\nneeds = [\"istiod2\"]\n".to_string();
        let file = sources.add(Path::new("/nonexistent/x.toml"), text.clone());
        let start = text.find("\"istiod2\"").unwrap();
        let d = Diagnostic::new("step `a` needs unknown step `istiod2`")
            .at(file, start..start + 9)
            .help("did you mean `istiod`?");
        let shown = d.render(&sources);
        assert_eq!(
            shown,
            "error: step `a` needs unknown step `istiod2`\n --> /nonexistent/x.toml:3:10\n  |\n3 | needs = [\"istiod2\"]\n  |          ^^^^^^^^^\n  = help: did you mean `istiod`?\n"
        );
    }

    #[test]
    fn locate_and_offset_agree() {
        let text = "a\nbé c\nd";
        let off = offset_of(text, 2, 3);
        assert_eq!(locate(text, off), (2, 3, "bé c"));
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(did_you_mean("istiod2", ["istiod", "base"]), Some("istiod"));
        assert_eq!(did_you_mean("zzz", ["istiod", "base"]), None);
    }
}
