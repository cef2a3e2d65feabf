//! `--dry-run` output: `dry_run` renders an analyzed `Plan` as the cluster it would use and,
//! wave by wave, what each step would do.

use std::fmt::{self, Write as _};
use std::time::Duration;

use crate::diag::display_path;
use crate::plan::{Plan, Provider, Step};

// These mirror the defaults that analysis fills in, so that only what a plan sets stands out.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_BACKOFF: Duration = Duration::from_secs(2);

/// The plan as text: its name, the cluster (provider and name), then each wave with each
/// step's id, kind, needs, timeout and retries when not the defaults, and what it would do.
pub fn dry_run(plan: &Plan) -> String {
    let mut out = String::new();
    write_plan(plan, &mut out).expect("writing to a String cannot fail");
    out
}

fn write_plan(plan: &Plan, out: &mut String) -> fmt::Result {
    write!(out, "plan {}", plan.name)?;
    if !plan.description.is_empty() {
        write!(out, ": {}", plan.description)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "cluster {}: {}",
        plan.cluster.name,
        provider(&plan.cluster.provider)
    )?;
    for (n, wave) in plan.waves.iter().enumerate() {
        writeln!(out, "\nwave {}", n + 1)?;
        for &index in wave {
            let step = &plan.steps[index];
            writeln!(out, "  {}", step_header(plan, step))?;
            for line in crate::steps::describe(step) {
                writeln!(out, "    {line}")?;
            }
        }
    }
    // As after the run: no pointer at what a step the plan skips would have made.
    let skipped = |id: &str| plan.steps.iter().any(|s| s.id == id && s.skip.is_some());
    let next: Vec<_> = plan
        .next
        .iter()
        .filter(|n| !n.needs.iter().any(|id| skipped(id)))
        .cloned()
        .collect();
    if !next.is_empty() {
        writeln!(out, "\nafter a successful up")?;
        out.push_str(&super::format::next_items(&next, false));
    }
    Ok(())
}

/// "istiod (helm) needs istio-base; timeout 10m; retries 2, backoff 5s"
fn step_header(plan: &Plan, step: &Step) -> String {
    let mut settings = Vec::new();
    if !step.needs.is_empty() {
        let needs: Vec<&str> = step
            .needs
            .iter()
            .map(|&i| plan.steps[i].id.as_str())
            .collect();
        settings.push(format!("needs {}", needs.join(", ")));
    }
    if step.timeout != DEFAULT_TIMEOUT {
        settings.push(format!(
            "timeout {}",
            humantime::format_duration(step.timeout)
        ));
    }
    if step.retries > 0 {
        let mut retries = format!("retries {}", step.retries);
        if step.backoff != DEFAULT_BACKOFF {
            retries.push_str(&format!(
                ", backoff {}",
                humantime::format_duration(step.backoff)
            ));
        }
        settings.push(retries);
    }
    if let Some(why) = &step.skip {
        settings.push(format!("skipped by the plan: {why}"));
    }
    let mut header = format!("{} ({})", step.id, step.kind());
    if !settings.is_empty() {
        header.push(' ');
        header.push_str(&settings.join("; "));
    }
    header
}

/// "kind (node image kindest/node:v1.34.0; ports 8080→30080, 8443→30443)"
fn provider(provider: &Provider) -> String {
    let (name, details) = match provider {
        Provider::Kind {
            node_image,
            port_mappings,
            min_memory_bytes,
        } => {
            let mut details = vec![format!("node image {node_image}")];
            if !port_mappings.is_empty() {
                let ports: Vec<String> = port_mappings
                    .iter()
                    .map(|p| format!("{}→{}", p.host_port, p.node_port))
                    .collect();
                details.push(format!("ports {}", ports.join(", ")));
            }
            if let Some(bytes) = min_memory_bytes {
                details.push(format!("at least {} of memory", gibibytes(*bytes)));
            }
            ("kind", details)
        }
        Provider::Kwok {
            nodes,
            binaries,
            apiserver_args,
            kube_version,
            istiod,
        } => {
            let mut details = vec![format!(
                "{nodes} node{}",
                if *nodes == 1 { "" } else { "s" }
            )];
            if let Some(version) = kube_version {
                details.push(format!("kubernetes {version}"));
            }
            if let Some(path) = binaries {
                details.push(format!("binaries from {}", display_path(path)));
            }
            if !apiserver_args.is_empty() {
                details.push(format!("apiserver args {}", apiserver_args.join(" ")));
            }
            if let Some(path) = istiod {
                details.push(format!("a real istiod ({})", display_path(path)));
            }
            ("kwok", details)
        }
        Provider::Existing {
            kubeconfig,
            context,
        } => {
            let details = vec![
                match context {
                    Some(context) => format!("context {context}"),
                    None => "current context".to_owned(),
                },
                match kubeconfig {
                    Some(path) => format!("kubeconfig {}", display_path(path)),
                    None => "default kubeconfig".to_owned(),
                },
            ];
            ("existing", details)
        }
    };
    format!("{name} ({})", details.join("; "))
}

/// "8 GiB", "7.5 GiB"
fn gibibytes(bytes: u64) -> String {
    let gib = bytes as f64 / f64::from(1u32 << 30);
    if gib.fract() == 0.0 {
        format!("{gib:.0} GiB")
    } else {
        format!("{gib:.1} GiB")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::plan::{
        Action, Apply, ChartRef, Cluster, Exec, Helm, Http, Manifest, Namespace, NextStep,
        PinnedUrl, PortMapping, Teardown, Wait,
    };

    fn step(id: &str, needs: Vec<usize>, action: Action) -> Step {
        Step {
            id: id.to_owned(),
            description: None,
            needs,
            timeout: DEFAULT_TIMEOUT,
            retries: 0,
            backoff: DEFAULT_BACKOFF,
            skip: None,
            action,
        }
    }

    fn sample_plan() -> Plan {
        let mut istiod = step(
            "istiod",
            vec![0],
            Action::Helm(Helm {
                release: "istiod".into(),
                namespace: "istio-system".into(),
                chart: ChartRef::Repo {
                    repo: "https://istio-release.storage.googleapis.com/charts".into(),
                    name: "istiod".into(),
                    version: "1.27.1".into(),
                },
                values: json!({"pilot": {"resources": {"requests": {"memory": "128Mi"}}}}),
                values_files: vec![],
                create_namespace: true,
                wait: true,
            }),
        );
        istiod.timeout = Duration::from_secs(600);
        istiod.retries = 2;
        istiod.backoff = Duration::from_secs(5);

        let mut ready = step(
            "istiod-ready",
            vec![1],
            Action::Wait(Wait {
                rollout: vec![("istio-system".into(), "istiod".into())],
                pods: None,
                crds: vec!["gateways.networking.istio.io".into()],
                webhook: None,
            }),
        );
        ready.retries = 1;

        Plan {
            name: "bookinfo".into(),
            description: "istio and bookinfo on a kind cluster".into(),
            path: PathBuf::from("/plans/bookinfo.toml"),
            cluster: Cluster {
                name: "bookinfo".into(),
                provider: Provider::Kind {
                    node_image: "kindest/node:v1.34.0".into(),
                    port_mappings: vec![
                        PortMapping {
                            host_port: 8080,
                            node_port: 30080,
                        },
                        PortMapping {
                            host_port: 8443,
                            node_port: 30443,
                        },
                    ],
                    min_memory_bytes: Some(8 << 30),
                },
            },
            teardown: Teardown {
                delete_cluster: true,
                timeout: DEFAULT_TIMEOUT,
            },
            prune: crate::plan::Prune::default(),
            steps: vec![
                step(
                    "istio-system",
                    vec![],
                    Action::Namespace(Namespace {
                        name: "istio-system".into(),
                        labels: BTreeMap::new(),
                    }),
                ),
                istiod,
                ready,
                step(
                    "bookinfo",
                    vec![0],
                    Action::Apply(Apply {
                        namespace: Some("bookinfo".into()),
                        objects: vec![Manifest {
                            source: "manifests/gateway.yaml".into(),
                            object: json!({
                                "kind": "Gateway",
                                "metadata": {"name": "bookinfo-gateway"}
                            }),
                        }],
                        urls: vec![PinnedUrl {
                            url: "https://raw.githubusercontent.com/istio/istio/1.27.1/samples/bookinfo/platform/kube/bookinfo.yaml".into(),
                            sha256: Some("0123456789abcdef0123456789abcdef".into()),
                        }],
                        template: false,
                        vars: BTreeMap::new(),
                    }),
                ),
                step(
                    "productpage",
                    vec![2, 3],
                    Action::Http(Http {
                        url: "http://localhost:8080/productpage".into(),
                        service: None,
                        status: 200,
                        body_contains: Some("<title>Simple Bookstore App</title>".into()),
                        variants: BTreeMap::new(),
                        max_requests: 30,
                        deadline: Duration::from_secs(60),
                    }),
                ),
                step(
                    "say-done",
                    vec![4],
                    Action::Exec(Exec {
                        command: vec!["echo".into(), "bookinfo is up".into()],
                        unless: vec![],
                        dir: PathBuf::from("/plans"),
                    }),
                ),
            ],
            waves: vec![vec![0], vec![1, 3], vec![2], vec![4], vec![5]],
            next: vec![
                NextStep {
                    title: "Bookinfo".into(),
                    command: None,
                    url: Some("http://127.0.0.1:30666/productpage".into()),
                    needs: vec![],
                },
                NextStep {
                    title: "Grafana".into(),
                    command: Some(
                        "kubectl -n istio-system port-forward svc/grafana 3000:3000".into(),
                    ),
                    url: Some("http://127.0.0.1:3000".into()),
                    needs: vec![],
                },
            ],
        }
    }

    #[test]
    fn renders_waves_and_steps() {
        insta::assert_snapshot!(dry_run(&sample_plan()));
    }

    #[test]
    fn what_next_leaves_out_what_a_step_the_plan_skips_would_make() {
        let mut plan = sample_plan();
        let addons = plan.steps[0].id.clone();
        plan.next[1].needs = vec![addons];
        assert!(dry_run(&plan).contains("Grafana"));
        plan.steps[0].skip = Some("no images of the addons here".into());
        let text = dry_run(&plan);
        assert!(
            !text.contains("Grafana") && text.contains("Bookinfo"),
            "{text}"
        );
    }

    #[test]
    fn renders_other_providers() {
        let kwok = Provider::Kwok {
            nodes: 3,
            binaries: Some(PathBuf::from("/opt/kwok/bin")),
            apiserver_args: vec!["--max-requests-inflight=800".into()],
            kube_version: Some("v1.33.0".into()),
            istiod: None,
        };
        let existing = Provider::Existing {
            kubeconfig: None,
            context: Some("kind-bookinfo".into()),
        };
        insta::assert_snapshot!(format!("{}\n{}", provider(&kwok), provider(&existing)));
    }
}
