//! `helm`: `helm upgrade --install` through duct with the engine's kubeconfig and context.
//! Observes the release first (`helm list`, `helm get values`) and skips the call when the
//! deployed release already has the same chart, version and values.

use serde_json::Value;

use crate::change::{Change, ChangeKind};
use crate::error::{StepError, StepResult};
use crate::plan::model::{ChartRef, Helm};
use crate::process::Tool;
use crate::run::{Outcome, StepCtx};

/// What the cluster holds for a release.
#[derive(Debug, PartialEq)]
pub struct Deployed {
    pub status: String,
    pub chart: String,
    pub version: String,
    pub values: Value,
    /// The metadata of helm's storage Secret for this revision, when read through the API.
    pub record: Option<Value>,
}

pub async fn run(h: &Helm, ctx: &StepCtx) -> StepResult<Outcome> {
    let kube = ctx.kube()?;
    let desired_values = desired_values(h)?;
    let (chart_name, chart_version) = chart_identity(h)?;
    // Listed before the run (a release this plan installed), unwritten since a run found it
    // converged to the same chart and values: nothing to read.
    if let Some(record) = kube.releases.get(&(h.namespace.clone(), h.release.clone()))
        && kube.ledger.vouches(
            &ledger_key(h),
            record,
            &ledger_entry(&chart_name, &chart_version, &desired_values),
        )
    {
        return Ok(Outcome::Unchanged {
            summary: format!(
                "release {} has chart {chart_name} {chart_version} with the same values",
                h.release
            ),
        });
    }
    ctx.progress(format!("reading release {}/{}", h.namespace, h.release));
    let mut deployed = observe(h, ctx).await?;
    let mut recovered = String::new();
    if let Some(d) = &deployed
        && d.status.starts_with("pending-")
    {
        let revision = drop_pending_revision(h, ctx).await?;
        recovered = format!(
            "; revision {revision}, left {} by an interrupted helm, cleared first",
            d.status
        );
        deployed = observe(h, ctx).await?;
    }
    if let Some(d) = &deployed
        && d.status == "deployed"
        && d.chart == chart_name
        && d.version == chart_version
        && d.values == desired_values
    {
        if let Some(record) = &d.record {
            let applied = ledger_entry(&chart_name, &chart_version, &desired_values);
            kube.ledger.record(ledger_key(h), record, &applied);
        }
        return Ok(Outcome::Unchanged {
            summary: format!(
                "release {} has chart {chart_name} {chart_version} with the same values",
                h.release
            ),
        });
    }
    let values_file = tempfile::Builder::new()
        .prefix("bookinfo-up-values-")
        .suffix(".json")
        .tempfile()
        .map_err(|e| StepError::fatal("cannot write a values file").with_source(e))?;
    std::fs::write(
        values_file.path(),
        serde_json::to_vec_pretty(&h.values).unwrap_or_default(),
    )
    .map_err(|e| StepError::fatal("cannot write a values file").with_source(e))?;

    let mut tool = helm(kube).args(["upgrade", "--install", &h.release]);
    tool = match &h.chart {
        ChartRef::Repo {
            repo,
            name,
            version,
        } => tool.args([name.as_str(), "--repo", repo, "--version", version]),
        ChartRef::Path { path } => tool.arg(path),
    };
    tool = tool.args(["--namespace", &h.namespace]);
    if deployed.is_none() {
        // The mark of a release this plan installed (helm keeps it on later revisions): only
        // such a release is uninstalled when its step leaves the plan (`steps::prune`).
        tool = tool.args([
            "--labels",
            &format!("{}={}", crate::kube::PLAN_LABEL, ctx.plan_name),
        ]);
    }
    if h.create_namespace {
        tool = tool.arg("--create-namespace");
    }
    for f in &h.values_files {
        tool = tool.arg("--values").arg(f);
    }
    tool = tool.arg("--values").arg(values_file.path());
    if h.wait {
        // Helm's own deadline a little inside the step's, so its error (which resources are
        // not ready) is what the user sees rather than the step's timeout.
        let limit = ctx
            .timeout
            .map(|t| {
                t.saturating_sub(std::time::Duration::from_secs(5))
                    .max(std::time::Duration::from_secs(5))
            })
            .unwrap_or(std::time::Duration::from_secs(1800));
        tool = tool.args(["--wait", "--timeout", &format!("{}s", limit.as_secs())]);
    }
    if h.create_namespace {
        // Created here rather than by helm, so that it carries the plan's label and teardown
        // knows the plan made it.
        super::namespace::run(&namespace_of(h), ctx).await?;
    }
    let verb = if deployed.is_some() {
        "upgrading"
    } else {
        "installing"
    };
    ctx.progress(format!(
        "{verb} {} ({chart_name} {chart_version}){}",
        h.release,
        if h.wait { ", waiting for it" } else { "" }
    ));
    let out = tool.run(&ctx.cancel).await?;
    if !out.success {
        let tail = out.tail(15);
        // Helm fails this way while the API server restarts or a webhook is not yet serving.
        let transient = [
            "connection refused",
            "timeout",
            "i/o timeout",
            "failed calling webhook",
            "another operation",
            "EOF",
        ]
        .iter()
        .any(|t| tail.contains(t));
        let message = format!("helm upgrade --install {} failed:\n{tail}", h.release);
        return Err(if transient {
            StepError::transient(message)
        } else {
            StepError::fatal(message)
        });
    }
    let what = match deployed {
        Some(d) if d.version != chart_version => format!(
            "upgraded {} from {} to {chart_version}",
            h.release, d.version
        ),
        Some(_) => format!(
            "upgraded {} ({chart_name} {chart_version}): values or status differed",
            h.release
        ),
        None => format!("installed {} ({chart_name} {chart_version})", h.release),
    };
    Ok(Outcome::Changed {
        summary: format!("{what}{recovered}"),
    })
}

/// What `run` would change: the release installed, upgraded to another chart version, or
/// given other values (a diff of the values helm recorded and the plan's), or recovered
/// from a pending or failed state. Reads helm's own record; runs no helm that writes.
pub async fn preview(h: &Helm, ctx: &StepCtx) -> StepResult<Vec<Change>> {
    let desired = desired_values(h)?;
    let (chart_name, chart_version) = chart_identity(h)?;
    let target = format!("helm release {}/{}", h.namespace, h.release);
    let mut changes = Vec::new();
    if h.create_namespace {
        changes.extend(super::namespace::preview(&namespace_of(h), ctx).await?);
    }
    // A release whose storage Secret is as a run last found it converged, to the same chart
    // and values, needs no decoding.
    if let Some(meta) = latest_record_meta(h, ctx).await?
        && meta["metadata"]["labels"]["status"] == "deployed"
        && ctx.kube()?.ledger.vouches(
            &ledger_key(h),
            &meta,
            &ledger_entry(&chart_name, &chart_version, &desired),
        )
    {
        return Ok(changes);
    }
    let Some(d) = observe(h, ctx).await? else {
        let mut c = Change::create(target, &desired, None);
        c.summary = format!("would be installed: chart {chart_name} {chart_version}");
        c.diff = crate::change::unified(
            "",
            &crate::change::to_yaml(&desired),
            "(not installed)",
            &format!("values of {}", h.release),
        );
        changes.push(c);
        return Ok(changes);
    };
    let mut notes = Vec::new();
    let mut fields = Vec::new();
    if d.status == "pending-install" {
        changes.push(Change::note(
            ChangeKind::Delete,
            target.clone(),
            "left pending-install by an interrupted helm: a run uninstalls it, then installs"
                .into(),
        ));
    } else if d.status.starts_with("pending-") {
        notes.push(format!(
            "left {} by an interrupted helm: a run drops that revision first",
            d.status
        ));
    } else if d.status != "deployed" {
        notes.push(format!("status {}: a run upgrades it again", d.status));
    }
    if d.chart != chart_name || d.version != chart_version {
        fields.push("chart".to_string());
        notes.push(format!(
            "chart {} {} -> {chart_name} {chart_version}",
            d.chart, d.version
        ));
    }
    let value_fields: Vec<String> = crate::change::changed_paths(&d.values, &desired)
        .into_iter()
        .map(|f| format!("values.{f}"))
        .collect();
    if !value_fields.is_empty() {
        notes.push(crate::change::fields_summary(&value_fields));
    }
    fields.extend(value_fields);
    if notes.is_empty() {
        return Ok(changes);
    }
    changes.push(Change {
        kind: ChangeKind::Update,
        diff: crate::change::unified(
            &crate::change::to_yaml(&d.values),
            &crate::change::to_yaml(&desired),
            &format!("values of {} (deployed)", h.release),
            &format!("values of {} (plan)", h.release),
        ),
        target,
        fields,
        summary: notes.join("; "),
    });
    Ok(changes)
}

/// The release's state for `status`: its status and chart as helm recorded them, or `None`
/// when it is not installed.
pub async fn release_status(h: &Helm, ctx: &StepCtx) -> StepResult<Option<Deployed>> {
    observe(h, ctx).await
}

/// Clears a release stuck `pending-install`, `pending-upgrade` or `pending-rollback`;
/// returns the number of the pending revision.
///
/// A helm killed mid-operation (the run cancelled while helm could not record the failure,
/// the machine lost) leaves the release pending, and every later `helm upgrade` then fails
/// with "another operation (install/upgrade/rollback) is in progress", run after run. The
/// plan owns the release. A pending first install is uninstalled, so that the install that
/// follows starts from nothing (helm's adoption of what the interrupted install created would
/// keep fields the chart no longer sets). A pending upgrade or rollback loses its revision's
/// record (a Secret, or a ConfigMap under `HELM_DRIVER=configmap`,
/// `sh.helm.release.v1.<release>.v<revision>`), so that the upgrade starts from the last
/// settled revision.
async fn drop_pending_revision(h: &Helm, ctx: &StepCtx) -> StepResult<String> {
    let kube = ctx.kube()?;
    let release = releases_in(h, ctx)
        .await?
        .into_iter()
        .find(|r| r["name"] == h.release.as_str())
        .ok_or_else(|| StepError::transient(format!("release {} vanished", h.release)))?;
    let revision = match &release["revision"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if release["status"] == "pending-install" {
        ctx.progress(format!(
            "release {} is pending-install: uninstalling it first",
            h.release
        ));
        if let Err(tail) = uninstall(h, ctx, "5m").await? {
            return Err(StepError::transient(format!(
                "helm uninstall {} (pending-install) failed:\n{tail}",
                h.release
            )));
        }
        return Ok(revision);
    }
    let name = format!("sh.helm.release.v1.{}.v{revision}", h.release);
    ctx.progress(format!(
        "release {} is {}: removing revision {revision}",
        h.release,
        release["status"].as_str().unwrap_or("pending")
    ));
    let dp = kube::api::DeleteParams::default();
    let deleted = match std::env::var("HELM_DRIVER").as_deref() {
        Ok("configmap" | "configmaps") => {
            kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(
                kube.client.clone(),
                &h.namespace,
            )
            .delete(&name, &dp)
            .await
            .map(|_| ())
        }
        _ => kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
            kube.client.clone(),
            &h.namespace,
        )
        .delete(&name, &dp)
        .await
        .map(|_| ()),
    };
    match deleted {
        Ok(()) => Ok(revision),
        Err(e) if crate::kube::is_not_found(&e) => Ok(revision),
        Err(e) => Err(crate::kube::api_error(
            format!(
                "cannot remove the pending revision {name} of release {}",
                h.release
            ),
            e,
        )),
    }
}

pub async fn teardown(h: &Helm, ctx: &StepCtx) -> StepResult<Outcome> {
    if observe(h, ctx).await?.is_none() {
        return Ok(Outcome::Unchanged {
            summary: format!("release {} is not installed", h.release),
        });
    }
    ctx.progress(format!("uninstalling {}", h.release));
    if let Err(tail) = uninstall(h, ctx, "10m").await? {
        return Err(StepError::fatal(format!(
            "helm uninstall {} failed:\n{tail}",
            h.release
        )));
    }
    let mut summary = format!("uninstalled {}", h.release);
    if h.create_namespace && releases_in(h, ctx).await?.is_empty() {
        // Deleted only when this plan created it (namespace teardown checks the label) and no
        // release is left in it.
        if let Outcome::Changed { .. } = super::namespace::teardown(&namespace_of(h), ctx).await? {
            summary.push_str(&format!(", deleted namespace {}", h.namespace));
        }
    }
    Ok(Outcome::Changed { summary })
}

/// `helm uninstall --wait`; an absent release counts as uninstalled. `Err` holds helm's last
/// lines when it failed.
async fn uninstall(h: &Helm, ctx: &StepCtx, timeout: &str) -> StepResult<Result<(), String>> {
    uninstall_release(ctx.kube()?, &h.namespace, &h.release, timeout, &ctx.cancel).await
}

/// `helm uninstall --wait` of `release` in `namespace` (see `uninstall`).
pub async fn uninstall_release(
    kube: &crate::kube::Kube,
    namespace: &str,
    release: &str,
    timeout: &str,
    cancel: &tokio_util::sync::CancellationToken,
) -> StepResult<Result<(), String>> {
    let out = helm(kube)
        .args([
            "uninstall",
            release,
            "--namespace",
            namespace,
            "--wait",
            "--timeout",
            timeout,
        ])
        .run(cancel)
        .await?;
    Ok(if out.success || out.stderr.contains("not found") {
        Ok(())
    } else {
        Err(out.tail(10))
    })
}

fn namespace_of(h: &Helm) -> crate::plan::model::Namespace {
    crate::plan::model::Namespace {
        name: h.namespace.clone(),
        labels: Default::default(),
    }
}

/// The releases helm lists in the step's namespace, in any state.
async fn releases_in(h: &Helm, ctx: &StepCtx) -> StepResult<Vec<Value>> {
    let out = helm(ctx.kube()?)
        .args([
            "list",
            "--all",
            "--namespace",
            &h.namespace,
            "--output",
            "json",
        ])
        .run(&ctx.cancel)
        .await?;
    if !out.success {
        return Err(StepError::transient(format!(
            "helm list failed:\n{}",
            out.tail(10)
        )));
    }
    serde_json::from_str(out.stdout.trim())
        .map_err(|e| StepError::fatal("cannot read `helm list` output").with_source(e))
}

fn helm(kube: &crate::kube::Kube) -> Tool {
    let mut t = Tool::new("helm").arg("--kubeconfig").arg(&kube.kubeconfig);
    if let Some(c) = &kube.context {
        t = t.args(["--kube-context", c]);
    }
    t
}

/// The deployed release, or `None` when there is none.
///
/// Read from Helm's own storage (Secrets labelled `owner=helm`, the default driver) through
/// the API: one request instead of two helm processes. Other storage drivers go through
/// the helm CLI.
async fn observe(h: &Helm, ctx: &StepCtx) -> StepResult<Option<Deployed>> {
    let driver = std::env::var("HELM_DRIVER").unwrap_or_default();
    if !(driver.is_empty() || driver.starts_with("secret")) {
        return observe_cli(h, ctx).await;
    }
    use k8s_openapi::api::core::v1::Secret;
    let kube = ctx.kube()?;
    let api: kube::Api<Secret> = kube::Api::namespaced(kube.client.clone(), &h.namespace);
    let params = records_of(h);
    let secrets = api.list(&params).await.map_err(StepError::from)?;
    let latest = secrets
        .items
        .into_iter()
        .max_by_key(|s| revision_of(&s.metadata));
    let Some(secret) = latest else {
        return Ok(None);
    };
    let Some(data) = secret.data.as_ref().and_then(|d| d.get("release")) else {
        return observe_cli(h, ctx).await;
    };
    let release = decode_release(&data.0).map_err(|e| {
        StepError::fatal(format!(
            "cannot read helm's record of release {}: {e}",
            h.release
        ))
    })?;
    let mut deployed = deployed_from_record(&release);
    deployed.record = Some(serde_json::json!({"metadata": secret.metadata}));
    Ok(Some(deployed))
}

fn ledger_key(h: &Helm) -> String {
    format!("helm release {}/{}", h.namespace, h.release)
}

/// What the ledger fingerprints for a release: the chart and the values the plan asks for.
fn ledger_entry(chart: &str, version: &str, values: &Value) -> Value {
    serde_json::json!({"chart": chart, "version": version, "values": values})
}

/// The metadata (`{"metadata": ...}`) of helm's storage Secret for the release's latest
/// revision, by a metadata-only list; `None` when there is none or another storage driver
/// is in use.
async fn latest_record_meta(h: &Helm, ctx: &StepCtx) -> StepResult<Option<Value>> {
    let driver = std::env::var("HELM_DRIVER").unwrap_or_default();
    if !(driver.is_empty() || driver.starts_with("secret")) {
        return Ok(None);
    }
    use k8s_openapi::api::core::v1::Secret;
    let kube = ctx.kube()?;
    let api: kube::Api<Secret> = kube::Api::namespaced(kube.client.clone(), &h.namespace);
    let params = records_of(h);
    let list = api.list_metadata(&params).await.map_err(StepError::from)?;
    Ok(list
        .items
        .into_iter()
        .max_by_key(|s| revision_of(&s.metadata))
        .map(|s| serde_json::json!({"metadata": s.metadata})))
}

/// The list of helm's storage Secrets of the release, one per revision.
fn records_of(h: &Helm) -> kube::api::ListParams {
    kube::api::ListParams::default().labels(&format!("owner=helm,name={}", h.release))
}

/// The revision in a storage Secret's `version` label.
fn revision_of(meta: &kube::api::ObjectMeta) -> u64 {
    meta.labels
        .as_ref()
        .and_then(|l| l.get("version"))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
}

/// Helm stores a release as base64 of gzip of JSON (inside the Secret's own encoding).
pub fn decode_release(bytes: &[u8]) -> Result<Value, String> {
    use base64::Engine as _;
    use std::io::Read as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(bytes)
        .map_err(|e| e.to_string())?;
    let json = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        out
    } else {
        raw
    };
    serde_json::from_slice(&json).map_err(|e| e.to_string())
}

/// What `helm list` and `helm get values` report, from a decoded release record.
pub fn deployed_from_record(release: &Value) -> Deployed {
    let config = &release["config"];
    Deployed {
        status: release["info"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        chart: release["chart"]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        version: release["chart"]["metadata"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        values: if config.is_null() {
            Value::Object(Default::default())
        } else {
            config.clone()
        },
        record: None,
    }
}

/// The deployed release through the helm CLI (`helm list`, `helm get values`).
async fn observe_cli(h: &Helm, ctx: &StepCtx) -> StepResult<Option<Deployed>> {
    let kube = ctx.kube()?;
    // `helm list` carries the chart as `name-version`; `helm status -o json` does not.
    let Some(release) = releases_in(h, ctx)
        .await?
        .into_iter()
        .find(|r| r["name"] == h.release.as_str())
    else {
        return Ok(None);
    };
    let values = helm(kube)
        .args([
            "get",
            "values",
            &h.release,
            "--namespace",
            &h.namespace,
            "--output",
            "json",
        ])
        .run(&ctx.cancel)
        .await?;
    if !values.success {
        return Err(StepError::transient(format!(
            "helm get values {} failed:\n{}",
            h.release,
            values.tail(10)
        )));
    }
    parse_deployed(&release, &values.stdout).map(Some)
}

/// Reads one entry of `helm list -o json` and the `helm get values -o json` output.
pub fn parse_deployed(release: &Value, values: &str) -> StepResult<Deployed> {
    let v: Value = serde_json::from_str(values.trim())
        .map_err(|e| StepError::fatal("cannot read `helm get values` output").with_source(e))?;
    let chart = release["chart"].as_str().unwrap_or_default();
    let (name, version) = split_chart(chart);
    Ok(Deployed {
        status: release["status"].as_str().unwrap_or_default().to_string(),
        chart: name.to_string(),
        version: version.to_string(),
        values: if v.is_null() {
            Value::Object(Default::default())
        } else {
            v
        },
        record: None,
    })
}

/// Splits `istio-base-1.30.4` into (`istio-base`, `1.30.4`): the version starts at the first
/// `-` followed by a digit.
fn split_chart(chart: &str) -> (&str, &str) {
    let at = chart
        .match_indices('-')
        .filter(|(i, _)| chart[i + 1..].starts_with(|c: char| c.is_ascii_digit()))
        .map(|(i, _)| i)
        .next();
    match at {
        Some(i) => (&chart[..i], &chart[i + 1..]),
        None => (chart, ""),
    }
}

/// The user-supplied values helm will record: values files in order, then inline values.
fn desired_values(h: &Helm) -> StepResult<Value> {
    let mut merged = Value::Object(Default::default());
    for f in &h.values_files {
        let text = std::fs::read_to_string(f).map_err(|e| {
            StepError::fatal(format!("cannot read values file `{}`", f.display())).with_source(e)
        })?;
        let v: Value = serde_saphyr::from_str(&text).map_err(|e| {
            StepError::fatal(format!("values file `{}` is not YAML", f.display())).with_source(e)
        })?;
        crate::merge::merge(&mut merged, &v);
    }
    crate::merge::merge(&mut merged, &h.values);
    Ok(merged)
}

/// Chart name and version the step installs.
fn chart_identity(h: &Helm) -> StepResult<(String, String)> {
    match &h.chart {
        ChartRef::Repo { name, version, .. } => Ok((
            name.rsplit('/').next().unwrap_or(name).to_string(),
            version.clone(),
        )),
        ChartRef::Path { path } => {
            let file = path.join("Chart.yaml");
            let text = std::fs::read_to_string(&file).map_err(|e| {
                StepError::fatal(format!("cannot read `{}`", file.display())).with_source(e)
            })?;
            let v: Value = serde_saphyr::from_str(&text).map_err(|e| {
                StepError::fatal(format!("`{}` is not YAML", file.display())).with_source(e)
            })?;
            Ok((
                v["name"].as_str().unwrap_or_default().to_string(),
                v["version"].as_str().unwrap_or_default().to_string(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_list_entry_and_values() {
        let release = json!({"name":"istio-base","status":"deployed","chart":"istio-base-1.30.4-rc.1","app_version":"1.30.4"});
        let d = parse_deployed(&release, "null\n").unwrap();
        assert_eq!(d.status, "deployed");
        assert_eq!(
            (d.chart.as_str(), d.version.as_str()),
            ("istio-base", "1.30.4-rc.1")
        );
        assert_eq!(d.values, json!({}));
        let d = parse_deployed(&release, r#"{"service":{"type":"NodePort"}}"#).unwrap();
        assert_eq!(d.values, json!({"service": {"type": "NodePort"}}));
    }

    #[test]
    fn decodes_helm_release_records() {
        use base64::Engine as _;
        use std::io::Write as _;
        let record = json!({
            "name": "istiod",
            "info": {"status": "deployed"},
            "chart": {"metadata": {"name": "istiod", "version": "1.30.4"}},
            "config": {"pilot": {"autoscaleEnabled": false}},
            "version": 2
        });
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(record.to_string().as_bytes()).unwrap();
        let stored = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        let d = deployed_from_record(&decode_release(stored.as_bytes()).unwrap());
        assert_eq!(d.status, "deployed");
        assert_eq!((d.chart.as_str(), d.version.as_str()), ("istiod", "1.30.4"));
        assert_eq!(d.values, json!({"pilot": {"autoscaleEnabled": false}}));
        let no_values = json!({"info": {"status": "failed"}, "chart": {"metadata": {"name": "c", "version": "1"}}, "config": null});
        assert_eq!(deployed_from_record(&no_values).values, json!({}));
        assert!(decode_release(b"not base64!").is_err());
    }
}
