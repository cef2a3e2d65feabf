//! Remote manifests: fetched once, verified against their sha256 pin, cached by digest so a
//! second run works offline. Runs before any step, so a tampered file stops the run before
//! anything is applied.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::plan::model::{Manifest, PinnedUrl};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The download failed and no cached copy exists.
    #[error("cannot fetch `{url}`: {cause}")]
    Download { url: String, cause: String },
    /// The content does not match its pin.
    #[error(
        "`{url}` does not match its sha256 pin: expected {expected}, got {actual}; nothing of this step was applied"
    )]
    Mismatch {
        url: String,
        expected: String,
        actual: String,
    },
    /// The content is not a YAML stream of Kubernetes objects.
    #[error("`{url}` is not a usable manifest: {cause}")]
    Parse { url: String, cause: String },
    #[error("cannot write the download cache at `{path}`")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Fetches (or takes from the cache) and verifies one URL, returning its text.
pub async fn fetch(u: &PinnedUrl, cache_dir: &Path) -> Result<String, FetchError> {
    if let Some(expected) = &u.sha256 {
        let cached = cache_dir.join("sha256").join(expected);
        if let Ok(bytes) = tokio::fs::read(&cached).await
            && hex::encode(Sha256::digest(&bytes)) == *expected
        {
            tracing::debug!(url = %u.url, "manifest from cache");
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    let bytes = download(&u.url).await?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if let Some(expected) = &u.sha256 {
        if &actual != expected {
            return Err(FetchError::Mismatch {
                url: u.url.clone(),
                expected: expected.clone(),
                actual,
            });
        }
        let dir = cache_dir.join("sha256");
        let write = async {
            tokio::fs::create_dir_all(&dir).await?;
            let tmp = dir.join(format!(".{actual}.tmp"));
            tokio::fs::write(&tmp, &bytes).await?;
            tokio::fs::rename(&tmp, dir.join(&actual)).await
        };
        write.await.map_err(|source| FetchError::Cache {
            path: dir.clone(),
            source,
        })?;
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

async fn download(url: &str) -> Result<Vec<u8>, FetchError> {
    let fail = |cause: String| FetchError::Download {
        url: url.to_string(),
        cause,
    };
    if let Some(path) = url.strip_prefix("file://") {
        return tokio::fs::read(path).await.map_err(|e| fail(e.to_string()));
    }
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| fail(error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    Ok(resp
        .bytes()
        .await
        .map_err(|e| fail(error_chain(&e)))?
        .to_vec())
}

/// Parses fetched text into objects, templated when the step asks for it, by the same engine
/// as local manifests (`${var}`, `${env.NAME}`, `$${`), with `env` for the environment.
pub fn objects(
    u: &PinnedUrl,
    text: &str,
    vars: Option<&std::collections::BTreeMap<String, String>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Manifest>, FetchError> {
    let text = match vars {
        Some(vars) => crate::plan::template::render_plain(text, vars, env).map_err(|cause| {
            FetchError::Parse {
                url: u.url.clone(),
                cause,
            }
        })?,
        None => text.to_string(),
    };
    let parsed =
        crate::plan::analyze::parse_objects(&text, &u.url).map_err(|e| FetchError::Parse {
            url: u.url.clone(),
            cause: match e {
                crate::plan::analyze::ManifestError::Yaml(e) => {
                    e.to_string().lines().next().unwrap_or_default().to_string()
                }
                crate::plan::analyze::ManifestError::NotAnObject { index, problem } => {
                    format!("document {} {problem}", index + 1)
                }
            },
        })?;
    if parsed.is_empty() {
        return Err(FetchError::Parse {
            url: u.url.clone(),
            cause: "it holds no Kubernetes object".into(),
        });
    }
    Ok(parsed)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    crate::error::render_chain(&e.to_string(), e.source(), ": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n";

    #[tokio::test]
    async fn verifies_and_caches_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("m.yaml");
        std::fs::write(&src, DOC).unwrap();
        let sha = hex::encode(Sha256::digest(DOC.as_bytes()));
        let u = PinnedUrl {
            url: format!("file://{}", src.display()),
            sha256: Some(sha.clone()),
        };
        let cache = dir.path().join("cache");
        assert_eq!(fetch(&u, &cache).await.unwrap(), DOC);
        // With the source gone, the cache still serves it.
        std::fs::remove_file(&src).unwrap();
        assert_eq!(fetch(&u, &cache).await.unwrap(), DOC);
        assert_eq!(objects(&u, DOC, None, &|_| None).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn refuses_a_tampered_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("m.yaml");
        std::fs::write(&src, DOC.replace("x", "y")).unwrap();
        let sha = hex::encode(Sha256::digest(DOC.as_bytes()));
        let u = PinnedUrl {
            url: format!("file://{}", src.display()),
            sha256: Some(sha),
        };
        let err = fetch(&u, &dir.path().join("cache")).await.unwrap_err();
        assert!(matches!(err, FetchError::Mismatch { .. }), "{err}");
        assert!(!dir.path().join("cache").exists(), "nothing is cached");
    }

    #[tokio::test]
    async fn cold_cache_and_unreachable_url_names_both() {
        let dir = tempfile::tempdir().unwrap();
        let u = PinnedUrl {
            url: "http://127.0.0.1:9/none.yaml".into(),
            sha256: Some("0".repeat(64)),
        };
        let err = fetch(&u, dir.path()).await.unwrap_err().to_string();
        assert!(
            err.starts_with("cannot fetch `http://127.0.0.1:9/none.yaml`: "),
            "{err}"
        );
    }

    #[test]
    fn empty_streams_are_refused() {
        let u = PinnedUrl {
            url: "file:///x".into(),
            sha256: None,
        };
        let err = objects(&u, "---\n# nothing\n", None, &|_| None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "`file:///x` is not a usable manifest: it holds no Kubernetes object"
        );
    }
}
