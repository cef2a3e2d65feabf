//! Embeds the plans, the manifests they apply and the version pins in the binary, so that
//! `bookinfo-up` runs from any folder. Every file under `plans/` and `manifests/` is listed,
//! so a file added or edited there is picked up by the next build without touching this.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What the binary carries, relative to the crate root: folders (all of their files) and files.
const EMBEDDED: &[&str] = &["plans", "manifests", "testbed/versions.env"];

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let mut files = Vec::new();
    for entry in EMBEDDED {
        // A folder is scanned whole for changes: files added, removed or edited.
        println!("cargo:rerun-if-changed={entry}");
        collect(&root, &root.join(entry), &mut files);
    }
    files.sort();
    let mut out = String::from(
        "/// Every embedded file: its path relative to the crate root, and its bytes.\n\
         pub static FILES: &[(&str, &[u8])] = &[\n",
    );
    for rel in &files {
        let abs = root.join(rel);
        writeln!(
            out,
            "    ({rel:?}, include_bytes!({:?})),",
            abs.display().to_string()
        )
        .expect("writing to a String cannot fail");
    }
    out.push_str("];\n");
    let dest =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("embedded.rs");
    std::fs::write(dest, out).expect("OUT_DIR is writable");
}

/// Adds `path` (a file, or every file below a folder) to `files`, relative to `root` with `/`.
fn collect(root: &Path, path: &Path, files: &mut Vec<String>) {
    if path.is_dir() {
        let entries = std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            // Editor swap files and the like are not part of the plans.
            if !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                collect(root, &path, files);
            }
        }
    } else if path.is_file() {
        let rel = path.strip_prefix(root).expect("below the crate root");
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        files.push(parts.join("/"));
    } else {
        panic!("{} is missing: the binary embeds it", path.display());
    }
}
