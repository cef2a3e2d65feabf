//! Tier 1: the `patch` step against a live API server (shared kwok cluster): ports added by
//! server-side apply to the Service of the real istio gateway chart (installed with the real
//! helm), and a nested merge into the real Kiali addon's ConfigMap.

use std::time::Instant;

use bookinfo_up::plan::model;
use bookinfo_up::run::Outcome;
use bookinfo_up::steps::{apply, patch};
use serde_json::{Value, json};
use tokio::time::timeout;

use crate::kube_shared::{STEP_LIMIT, ctx, field, manifests, progress, shared};

const PORTS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: istio-ingressgateway
  namespace: istio-system
spec:
  ports:
  - name: http-bookinfo
    port: 666
    protocol: TCP
    targetPort: 666
    nodePort: 30666
  - name: http-kiali
    port: 15029
    protocol: TCP
    targetPort: 15029
    nodePort: 31029
"#;

const MANAGER: &str = "bookinfo-up-ports";

/// `port/protocol/nodePort` of each Service port, sorted by port.
fn ports(s: &crate::kube_shared::Shared) -> Vec<String> {
    let out = field(
        s,
        &["service", "istio-ingressgateway", "-n", "istio-system"],
        r#"{range .spec.ports[*]}{.port}/{.protocol}/{.nodePort}/{.name}{"\n"}{end}"#,
    );
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort_by_key(|l| l.split('/').next().unwrap().parse::<u32>().unwrap());
    v
}

fn managers(s: &crate::kube_shared::Shared) -> String {
    s.cluster.kubectl_ok(&[
        "get",
        "service",
        "istio-ingressgateway",
        "-n",
        "istio-system",
        "--show-managed-fields",
        "-o",
        r#"jsonpath={range .metadata.managedFields[*]}{.manager}:{.operation} {end}"#,
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn ports_patch_on_the_gateway_chart_service_adds_and_reverts_exactly_two_ports() {
    let Some(s) = shared() else { return };
    let kube = s.kube().await;
    let chart = s.istio().join("charts/gateway");
    let started = Instant::now();
    let out =
        s.tb.cmd("helm")
            .args(["upgrade", "--install", "istio-ingressgateway"])
            .arg(&chart)
            .args([
                "-n",
                "istio-system",
                "--create-namespace",
                "--set",
                "service.type=NodePort",
                // As the plans do: the chart's node ports in the static band, so that a random
                // one cannot be 30666 or 31029 below.
                "--set-json",
                r#"service.ports=[{"name":"status-port","port":15021,"protocol":"TCP","targetPort":15021,"nodePort":30021},{"name":"http2","port":80,"protocol":"TCP","targetPort":80,"nodePort":30080},{"name":"https","port":443,"protocol":"TCP","targetPort":443,"nodePort":30043}]"#,
                "--kubeconfig",
            ])
            .arg(&s.cluster.kubeconfig)
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "helm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "helm installed the gateway chart in {:.1?}",
        started.elapsed()
    );
    let chart_ports = ports(s);
    eprintln!("chart ports: {chart_ports:?}");
    assert_eq!(chart_ports.len(), 3);
    assert!(chart_ports[0].starts_with("80/TCP/") && chart_ports[1].starts_with("443/TCP/"));
    assert!(chart_ports[2].starts_with("15021/TCP/"));

    let p = model::Patch {
        field_manager: MANAGER.into(),
        objects: manifests(PORTS),
    };
    let (c, _rx) = ctx(&kube, "gateway-ports", "kube-patch");
    let first = timeout(STEP_LIMIT, patch::run(&p, &c))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{}", e.chain()));
    assert_eq!(
        first,
        Outcome::Changed {
            summary: format!("patched Service istio-system/istio-ingressgateway as `{MANAGER}`")
        }
    );
    let rv = field(
        s,
        &["service", "istio-ingressgateway", "-n", "istio-system"],
        "{.metadata.resourceVersion}",
    );
    for run in 2..=3 {
        let again = timeout(STEP_LIMIT, patch::run(&p, &c))
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(again, Outcome::Unchanged { .. }),
            "run {run}: {again:?}"
        );
    }
    let rv_after = field(
        s,
        &["service", "istio-ingressgateway", "-n", "istio-system"],
        "{.metadata.resourceVersion}",
    );
    eprintln!("resourceVersion after the first patch {rv}, after two more runs {rv_after}");
    assert_eq!(rv, rv_after, "re-running the patch must write nothing");

    let patched = ports(s);
    eprintln!("ports after three runs: {patched:?}");
    assert_eq!(patched.len(), 5);
    // The chart's ports, node ports included, are untouched.
    assert_eq!(patched[0], chart_ports[0]);
    assert_eq!(patched[1], chart_ports[1]);
    assert_eq!(patched[2], "666/TCP/30666/http-bookinfo");
    assert_eq!(patched[3], chart_ports[2]);
    assert_eq!(patched[4], "15029/TCP/31029/http-kiali");
    let m = managers(s);
    eprintln!("managers: {m}");
    assert!(
        m.contains("helm:Update") && m.contains(&format!("{MANAGER}:Apply")),
        "{m}"
    );

    let down = timeout(STEP_LIMIT, patch::teardown(&p, &c))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        down,
        Outcome::Changed {
            summary: format!(
                "removed the fields of `{MANAGER}` from Service istio-system/istio-ingressgateway"
            )
        }
    );
    let reverted = ports(s);
    eprintln!("ports after teardown: {reverted:?}");
    assert_eq!(reverted, chart_ports);
    assert!(!managers(s).contains(MANAGER));
    let again = timeout(STEP_LIMIT, patch::teardown(&p, &c))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(again, Outcome::Unchanged { .. }), "{again:?}");
}

fn merge_spec() -> model::ConfigMerge {
    model::ConfigMerge {
        namespace: "istio-system".into(),
        configmap: "kiali".into(),
        key: "config.yaml".into(),
        merge: json!({"external_services": {"grafana": {
            "enabled": true,
            "internal_url": "http://grafana.istio-system:3000",
            "external_url": "http://localhost:3000",
        }}}),
        restart: vec![
            ("istio-system".into(), "kiali".into()),
            ("istio-system".into(), "kiali".into()),
        ],
    }
}

fn config(s: &crate::kube_shared::Shared) -> Value {
    let text = field(
        s,
        &["configmap", "kiali", "-n", "istio-system"],
        r#"{.data.config\.yaml}"#,
    );
    serde_saphyr::from_str(&text).unwrap()
}

fn deployment(s: &crate::kube_shared::Shared, jsonpath: &str) -> String {
    field(s, &["deployment", "kiali", "-n", "istio-system"], jsonpath)
}

#[tokio::test(flavor = "multi_thread")]
async fn kiali_configmap_merge_keeps_other_keys_restarts_once_and_reverts() {
    let Some(s) = shared() else { return };
    let kube = s.kube().await;
    // istio-system may not exist yet (the gateway test creates it too): make sure it does.
    s.cluster.kubectl(&["create", "namespace", "istio-system"]);
    let kiali = std::fs::read_to_string(s.istio().join("samples/addons/kiali.yaml")).unwrap();
    let addon = model::Apply {
        namespace: Some("istio-system".into()),
        objects: manifests(&kiali),
        urls: Vec::new(),
        template: false,
        vars: Default::default(),
    };
    let (c, _rx) = ctx(&kube, "kiali", "kube-patch");
    let applied = timeout(STEP_LIMIT, apply::run(&addon, &c))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{}", e.chain()));
    eprintln!("kiali addon: {applied:?}");

    let original = config(s);
    let generation: u64 = deployment(s, "{.metadata.generation}").parse().unwrap();
    let merge = merge_spec();
    let (c, mut rx) = ctx(&kube, "kiali-grafana", "kube-patch");
    let first = timeout(STEP_LIMIT, patch::run_config_merge(&merge, &c))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{}", e.chain()));
    eprintln!("merge: {first:?}; progress {:?}", progress(&mut rx));
    assert_eq!(
        first,
        Outcome::Changed {
            summary: "merged into key config.yaml of configmap istio-system/kiali; restarted deployment istio-system/kiali"
                .into()
        }
    );

    let merged = config(s);
    let mut expected = original.clone();
    expected["external_services"]["grafana"] = merge.merge["external_services"]["grafana"].clone();
    assert_eq!(merged, expected, "only the Grafana settings change");
    assert_eq!(
        merged["external_services"]["prometheus"]["enabled"],
        json!(true)
    );
    assert_eq!(merged["server"]["web_root"], json!("/kiali"));
    let restarted = deployment(
        s,
        r#"{.spec.template.metadata.annotations.kubectl\.kubernetes\.io/restartedAt}"#,
    );
    assert!(!restarted.is_empty());
    let after: u64 = deployment(s, "{.metadata.generation}").parse().unwrap();
    eprintln!("kiali deployment generation {generation} -> {after}, restartedAt {restarted}");
    assert_eq!(after, generation + 1, "named twice, restarted exactly once");

    let rv = field(
        s,
        &["configmap", "kiali", "-n", "istio-system"],
        "{.metadata.resourceVersion}",
    );
    let again = timeout(STEP_LIMIT, patch::run_config_merge(&merge, &c))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again,
        Outcome::Unchanged {
            summary: "key config.yaml of configmap istio-system/kiali already merged".into()
        }
    );
    assert_eq!(
        field(
            s,
            &["configmap", "kiali", "-n", "istio-system"],
            "{.metadata.resourceVersion}"
        ),
        rv
    );
    assert_eq!(
        deployment(s, "{.metadata.generation}"),
        after.to_string(),
        "a re-run restarts nothing"
    );
    eprintln!("re-run: configmap resourceVersion stays {rv}, generation stays {after}");

    let down = timeout(STEP_LIMIT, patch::teardown_config_merge(&merge, &c))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        down,
        Outcome::Changed {
            summary: "restored key config.yaml of configmap istio-system/kiali; restarted deployment istio-system/kiali"
                .into()
        }
    );
    assert_eq!(
        config(s),
        original,
        "teardown restores the original settings"
    );
    assert_eq!(
        deployment(s, "{.metadata.generation}"),
        (after + 1).to_string()
    );
    let annotations = field(
        s,
        &["configmap", "kiali", "-n", "istio-system"],
        "{.metadata.annotations}",
    );
    assert!(
        !annotations.contains("merge-original") && !annotations.contains("restart-pending"),
        "{annotations}"
    );
    let again = timeout(STEP_LIMIT, patch::teardown_config_merge(&merge, &c))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(again, Outcome::Unchanged { .. }), "{again:?}");
}
