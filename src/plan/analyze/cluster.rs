//! The `[cluster]` table: its name and its provider (kind, kwok or an existing cluster) with
//! that provider's settings.

use std::path::Path;

use toml::Spanned;

use super::Analyzer;
use crate::diag::{Diagnostic, FileId, did_you_mean};
use crate::plan::model::{Cluster, PortMapping, Provider};
use crate::plan::raw::RawCluster;

impl Analyzer<'_> {
    pub(super) fn cluster(
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
}
