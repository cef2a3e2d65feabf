//! The plans, manifests and version pins compiled into the binary (`build.rs` lists them), so
//! that `bookinfo-up` works from any folder. `materialize` writes them once into a folder of
//! the user's data directory named by the binary's version and a hash of the files, and runs
//! the plans from there, so error messages point at real files. `write_tree` is `init`.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

mod files {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

pub use files::FILES;

/// The built-in plans, by the name that `bookinfo-up NAME` takes, and their files.
pub const PLANS: &[(&str, &str)] = &[
    ("bookinfo", "plans/bookinfo.toml"),
    ("sim", "plans/sim.toml"),
];

/// The plan run when no PLAN is given.
pub const DEFAULT_PLAN: &str = "bookinfo";

/// The file of built-in plan `name`.
pub fn plan_file(name: &str) -> Option<&'static str> {
    PLANS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The first 12 hex digits of the sha256 over every embedded path and its bytes.
pub fn content_hash() -> String {
    let mut h = Sha256::new();
    for (path, bytes) in FILES {
        h.update((path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())[..12].to_string()
}

/// Where the embedded files are written: `$XDG_DATA_HOME/bookinfo-up/plans/<version>-<hash>`,
/// else `~/.local/share/bookinfo-up/plans/<version>-<hash>`.
pub fn default_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("bookinfo-up/plans")
        .join(format!("{}-{}", env!("CARGO_PKG_VERSION"), content_hash()))
}

/// Makes sure `dir` holds exactly the embedded bytes of every file (a file edited there by
/// hand is put back), and returns `dir`. Files are replaced by rename, so concurrent runs
/// never read a half-written one.
pub fn materialize(dir: &Path) -> io::Result<PathBuf> {
    for (rel, bytes) in FILES {
        let target = dir.join(rel);
        if std::fs::read(&target).is_ok_and(|b| b == *bytes) {
            continue;
        }
        let parent = target.parent().expect("embedded files are below a folder");
        std::fs::create_dir_all(parent)?;
        let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
        io::Write::write_all(&mut tmp, bytes)?;
        tmp.persist(&target).map_err(|e| e.error)?;
    }
    Ok(dir.to_path_buf())
}

/// Why `init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Some files exist already and `--force` was not given.
    #[error("{} already exist{} in `{}`", describe(.existing), if .existing.len() == 1 { "s" } else { "" }, .dir.display())]
    Exists { dir: PathBuf, existing: Vec<String> },
    #[error("cannot write `{}`", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn describe(existing: &[String]) -> String {
    let shown: Vec<String> = existing.iter().take(3).map(|p| format!("`{p}`")).collect();
    match existing.len() {
        0..=3 => shown.join(", "),
        n => format!("{} and {} more files", shown.join(", "), n - 3),
    }
}

/// Writes every embedded file below `dir` (its plans, manifests and pins, in the layout the
/// plans' relative paths expect) and returns the paths written. Nothing is written when any
/// of them exists, unless `force`.
pub fn write_tree(dir: &Path, force: bool) -> Result<Vec<PathBuf>, InitError> {
    if !force {
        let existing: Vec<String> = FILES
            .iter()
            .filter(|(rel, _)| dir.join(rel).exists())
            .map(|(rel, _)| rel.to_string())
            .collect();
        if !existing.is_empty() {
            return Err(InitError::Exists {
                dir: dir.to_path_buf(),
                existing,
            });
        }
    }
    let mut written = Vec::new();
    for (rel, bytes) in FILES {
        let path = dir.join(rel);
        let result = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, bytes));
        result.map_err(|source| InitError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plan_file_and_manifest_of_the_repository_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (rel, bytes) in FILES {
            assert_eq!(
                std::fs::read(root.join(rel)).unwrap(),
                *bytes,
                "{rel} differs from the repository's"
            );
        }
        for (_, file) in PLANS {
            assert!(FILES.iter().any(|(rel, _)| rel == file), "{file}");
        }
        for needed in [
            "plans/shared/bookinfo-flow.toml",
            "manifests/istio/bookinfo-gateway.yaml",
            "testbed/versions.env",
        ] {
            assert!(FILES.iter().any(|(rel, _)| *rel == needed), "{needed}");
        }
    }

    #[test]
    fn materialize_restores_edited_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = materialize(dir.path()).unwrap();
        let plan = root.join("plans/bookinfo.toml");
        std::fs::write(&plan, "edited").unwrap();
        materialize(dir.path()).unwrap();
        assert_eq!(
            std::fs::read(&plan).unwrap(),
            FILES
                .iter()
                .find(|(r, _)| *r == "plans/bookinfo.toml")
                .unwrap()
                .1
        );
    }

    #[test]
    fn write_tree_refuses_to_overwrite_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_tree(dir.path(), false).unwrap();
        assert_eq!(written.len(), FILES.len());
        let err = write_tree(dir.path(), false).unwrap_err();
        assert!(
            err.to_string()
                .contains("`manifests/bookinfo/details.yaml`"),
            "{err}"
        );
        write_tree(dir.path(), true).unwrap();
    }
}
