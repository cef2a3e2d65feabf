//! Failure diagnostics: `collect` writes, for each namespace, its events, its pods (with their
//! statuses) and the logs of its pods that are not ready into an artifacts folder, one
//! subfolder per namespace. What cannot be read from the API is written down as text instead,
//! so the folder always says what happened.

use std::path::Path;

use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, LogParams};
use tokio::fs;

use super::Kube;
use super::events::{self, last_seen};
use super::readiness::{self, Readiness};

/// How many log lines to keep per container.
const LOG_LINES: i64 = 500;

/// Copies the last `LOG_LINES` lines of each log that exists into `dir`, under its own name
/// (the cluster's istiod log, which no pod holds on a kwok cluster).
pub async fn copy_logs(logs: &[std::path::PathBuf], dir: &Path) -> std::io::Result<()> {
    for log in logs {
        let (Ok(text), Some(name)) = (fs::read_to_string(log).await, log.file_name()) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_LINES as usize)..].join("\n");
        fs::create_dir_all(dir).await?;
        fs::write(dir.join(name), tail + "\n").await?;
    }
    Ok(())
}

/// Writes `<dir>/<namespace>/{events.txt, pods.txt, pods.yaml, logs/<pod>.<container>.log}`.
/// Only I/O errors on `dir` fail; API errors become the content of the files.
pub async fn collect(kube: &Kube, namespaces: &[String], dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir).await?;
    for ns in namespaces {
        let nsdir = dir.join(sanitize(ns));
        fs::create_dir_all(&nsdir).await?;
        fs::write(nsdir.join("events.txt"), events_text(kube, ns).await).await?;

        let api: kube::Api<Pod> = kube::Api::namespaced(kube.client.clone(), ns);
        let pods = match api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) => {
                fs::write(
                    nsdir.join("pods.txt"),
                    format!("cannot list the pods of {ns}: {e}\n"),
                )
                .await?;
                continue;
            }
        };
        let mut summary = String::new();
        for p in &pods {
            let status = match readiness::pod(p, None, None) {
                Readiness::Ready => "ready".to_string(),
                Readiness::Waiting(why) | Readiness::Failed(why) => why,
            };
            summary.push_str(&format!(
                "{} {status}\n",
                p.metadata.name.as_deref().unwrap_or("?")
            ));
        }
        if pods.is_empty() {
            summary.push_str("no pods\n");
        }
        fs::write(nsdir.join("pods.txt"), summary).await?;
        let stripped: Vec<Pod> = pods
            .iter()
            .cloned()
            .map(|mut p| {
                p.metadata.managed_fields = None;
                p
            })
            .collect();
        let yaml = serde_saphyr::to_string(&stripped)
            .unwrap_or_else(|e| format!("cannot render the pods: {e}\n"));
        fs::write(nsdir.join("pods.yaml"), yaml).await?;

        let not_ready: Vec<&Pod> = pods
            .iter()
            .filter(|p| !readiness::pod(p, None, None).is_ready())
            .collect();
        if not_ready.is_empty() {
            continue;
        }
        let logdir = nsdir.join("logs");
        fs::create_dir_all(&logdir).await?;
        for p in not_ready {
            let name = p.metadata.name.clone().unwrap_or_default();
            let spec = p.spec.as_ref();
            let containers: Vec<String> = spec
                .iter()
                .flat_map(|s| {
                    s.init_containers
                        .iter()
                        .flatten()
                        .chain(s.containers.iter())
                })
                .map(|c| c.name.clone())
                .collect();
            for container in containers {
                let lp = LogParams {
                    container: Some(container.clone()),
                    tail_lines: Some(LOG_LINES),
                    ..Default::default()
                };
                let text = match api.logs(&name, &lp).await {
                    Ok(text) if text.is_empty() => {
                        format!("no log output from {ns}/{name} container {container}\n")
                    }
                    Ok(text) => text,
                    Err(e) => {
                        format!("cannot fetch the logs of {ns}/{name} container {container}: {e}\n")
                    }
                };
                fs::write(
                    logdir.join(format!("{}.{}.log", sanitize(&name), sanitize(&container))),
                    text,
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// The namespace's events, oldest first, one per line.
async fn events_text(kube: &Kube, ns: &str) -> String {
    let api: kube::Api<Event> = kube::Api::namespaced(kube.client.clone(), ns);
    match api.list(&ListParams::default()).await {
        Ok(list) => {
            let mut items = list.items;
            items.sort_by_key(last_seen);
            if items.is_empty() {
                return "no events\n".into();
            }
            let lines = events::format(&items, Timestamp::now());
            items
                .iter()
                .zip(lines)
                .map(|(e, line)| {
                    let o = &e.involved_object;
                    format!(
                        "{}/{}: {line}\n",
                        o.kind.as_deref().unwrap_or("?"),
                        o.name.as_deref().unwrap_or("?")
                    )
                })
                .collect()
        }
        Err(e) => format!("cannot list the events of {ns}: {e}\n"),
    }
}

/// A name safe as one path component.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
