//! Issue #6, item 5. Secrets: at the most verbose level (`-vv` with `BOOKINFO_UP_LOG=trace`), in the JSON
//! summary, the JUnit report and the failure artifacts (`--artifacts DIR` after a forced
//! failure), no client key, token or certificate of the kubeconfig appears.
//!
//! Three kubeconfigs reach the same cluster: the engine's own (files), one with everything
//! inline (`*-data`), one with a service account's bearer token. The test looks for each
//! secret in every form a log could take: the kubeconfig's base64, the PEM's body lines, the
//! DER in base64, in hex (as `{:?}` of bytes in rustls and elsewhere) and as a decimal byte
//! list, and the token and its signature.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{Bin, PLAN, Running, Sim, live_slot, testbed};

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn b64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let Some(v) = B64.iter().position(|x| *x == c) else {
            continue;
        };
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Strings that would betray a PEM file's secret, however it were logged. For a private key
/// they come from the end of the DER (the private exponent and primes): its beginning holds
/// the modulus, which the certificate publishes too.
fn pem_needles(name: &str, pem: &str, private: bool) -> Vec<(String, String)> {
    let body: Vec<&str> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
        .collect();
    let joined = body.concat();
    let der = b64_decode(&joined);
    assert!(der.len() > 200, "{name} is a PEM");
    // Where to take the DER and text slices from.
    let (d, t) = if private {
        (der.len() - 100, joined.len() - 200)
    } else {
        (60, 120)
    };
    let mut v = vec![
        // The kubeconfig's `*-data` value, past the common "-----BEGIN" prefix.
        (format!("{name} as kubeconfig data"), {
            let data = b64_encode(pem.as_bytes());
            let at = if private { data.len() - 200 } else { 80 };
            data[at..at + 60].to_string()
        }),
        (
            format!("{name} DER in base64"),
            joined[t..t + 60].to_string(),
        ),
        (
            format!("{name} DER in hex"),
            der[d..d + 40].iter().map(|b| format!("{b:02x}")).collect(),
        ),
        (
            format!("{name} DER in HEX"),
            der[d..d + 40].iter().map(|b| format!("{b:02X}")).collect(),
        ),
        (
            format!("{name} DER as a byte list"),
            der[60..76]
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ];
    // Every full line of a certificate; the second half of a key's.
    let first = if private { body.len() / 2 } else { 1 };
    for (i, l) in body.iter().enumerate().skip(first) {
        if l.len() >= 40 {
            v.push((format!("{name} PEM line {}", i + 1), l.to_string()));
        }
    }
    v
}

/// Every file under `dir`, with its text.
fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push((
                p.clone(),
                String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned(),
            ));
        }
    }
    out
}

const FAILING_PLAN: &str = r#"
[plan]
name = "secrets-probe"
description = "fails on purpose: a Deployment no node can take"

[cluster]
provider = "existing"

[[step]]
id = "probe-namespace"
[step.namespace]
name = "secrets-probe"

[[step]]
id = "stuck"
needs = ["probe-namespace"]
[step.apply]
namespace = "secrets-probe"
files = ["stuck.yaml"]

[[step]]
id = "stuck-ready"
needs = ["stuck"]
timeout = "5s"
[step.wait]
rollout = ["secrets-probe/stuck"]
"#;

const STUCK: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: stuck}
spec:
  replicas: 1
  selector: {matchLabels: {app: stuck}}
  template:
    metadata: {labels: {app: stuck}}
    spec:
      nodeSelector: {no-such-node: "true"}
      containers: [{name: c, image: example.invalid/stuck:1}]
"#;

#[test]
#[ignore = "slow: `just reliability`"]
fn no_key_token_or_certificate_in_logs_or_artifacts() {
    let Some(tb) = testbed() else { return };
    let _slot = live_slot();
    let sim = Sim::new(&tb, "secrets");
    sim.prepare();
    let pki = sim.kwok_cluster_dir().join("pki");
    let read = |f: &str| std::fs::read_to_string(pki.join(f)).unwrap();
    let (ca, crt, key) = (read("ca.crt"), read("admin.crt"), read("admin.key"));
    let engine_kc = std::fs::read_to_string(sim.kubeconfig()).unwrap();
    let server = engine_kc
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("the kubeconfig names its server")
        .to_string();

    // A service account with a token, bound to cluster-admin.
    sim.kubectl_ok(&[
        "create",
        "serviceaccount",
        "secrets-probe",
        "-n",
        "kube-system",
    ]);
    sim.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "secrets-probe",
        "--clusterrole=cluster-admin",
        "--serviceaccount=kube-system:secrets-probe",
    ]);
    let token = sim
        .kubectl_ok(&[
            "create",
            "token",
            "secrets-probe",
            "-n",
            "kube-system",
            "--duration=1h",
        ])
        .trim()
        .to_string();
    assert!(token.split('.').count() == 3, "a JWT: {token}");

    let dir = sim.dir().join("secrets");
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = |user: String| {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user:\n{user}",
            b64_encode(ca.as_bytes())
        )
    };
    let inline = dir.join("inline.kubeconfig");
    std::fs::write(
        &inline,
        kubeconfig(format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64_encode(crt.as_bytes()),
            b64_encode(key.as_bytes())
        )),
    )
    .unwrap();
    let with_token = dir.join("token.kubeconfig");
    std::fs::write(&with_token, kubeconfig(format!("    token: {token}\n"))).unwrap();
    std::fs::write(dir.join("plan.toml"), FAILING_PLAN).unwrap();
    std::fs::write(dir.join("stuck.yaml"), STUCK).unwrap();

    let mut needles = Vec::new();
    needles.extend(pem_needles("client key", &key, true));
    needles.extend(pem_needles("client certificate", &crt, false));
    needles.extend(pem_needles("CA certificate", &ca, false));
    let sig = token.rsplit('.').next().unwrap();
    needles.push(("token".into(), token.clone()));
    needles.push((
        "token signature".into(),
        sig[..40.min(sig.len())].to_string(),
    ));
    needles.push((
        "token payload".into(),
        token.split('.').nth(1).unwrap()[..40].to_string(),
    ));

    let trace = |plan: &Path, kc: Option<&Path>, artifacts: &Path, junit: &Path| {
        let mut run = sim
            .product(Bin::Up)
            .plan(plan)
            .args(["-vv", "--artifacts", artifacts.to_str().unwrap()])
            .args(["--junit", junit.to_str().unwrap()])
            .env("BOOKINFO_UP_LOG", "trace");
        if let Some(kc) = kc {
            run = run.args(["--kubeconfig", kc.to_str().unwrap()]);
        }
        Running::spawn(run.command(), None).finish(Duration::from_secs(600))
    };
    let mut searched: Vec<(String, String)> = Vec::new();
    let mut account = Vec::new();
    let cases: [(&str, PathBuf, Option<&Path>, i32); 4] = [
        (
            "sim plan, engine's kubeconfig",
            PathBuf::from(PLAN),
            None,
            0,
        ),
        (
            "sim plan, inline kubeconfig",
            PathBuf::from(PLAN),
            Some(&inline),
            0,
        ),
        (
            "forced failure, token kubeconfig",
            dir.join("plan.toml"),
            Some(&with_token),
            1,
        ),
        (
            "forced failure, inline kubeconfig",
            dir.join("plan.toml"),
            Some(&inline),
            1,
        ),
    ];
    for (i, (what, plan, kc, code)) in cases.iter().enumerate() {
        let artifacts = dir.join(format!("artifacts-{i}"));
        let junit = dir.join(format!("junit-{i}.xml"));
        let r = trace(plan, *kc, &artifacts, &junit);
        assert_eq!(r.code, *code, "{what}:\n{}", r.stderr);
        let files = files_under(&artifacts);
        if *code == 1 {
            assert!(
                files.iter().any(|(p, _)| p.ends_with("pods.yaml")),
                "{what}: the forced failure wrote artifacts: {files:?}"
            );
        }
        account.push(format!(
            "{what}: {} bytes of log, {} artifact files",
            r.stderr.len() + r.stdout.len(),
            files.len()
        ));
        searched.push((format!("{what}: stderr"), r.stderr));
        searched.push((format!("{what}: stdout"), r.stdout));
        searched.push((
            format!("{what}: junit"),
            std::fs::read_to_string(&junit).unwrap_or_default(),
        ));
        for (p, text) in files {
            searched.push((format!("{what}: {}", p.display()), text));
        }
    }
    let mut found = Vec::new();
    for (name, needle) in &needles {
        for (where_, text) in &searched {
            if let Some(at) = text.find(needle.as_str()) {
                let line_start = text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
                let line: String = text[line_start..].chars().take(200).collect();
                found.push(format!("{name} in {where_}: {line}"));
            }
        }
    }
    for a in &account {
        eprintln!("secrets: {a}");
    }
    eprintln!(
        "secrets: {} needles (key, certificates, token) searched in {} outputs and files: {} found",
        needles.len(),
        searched.len(),
        found.len()
    );
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
}

#[test]
fn base64_round_trips() {
    for s in [
        "",
        "a",
        "ab",
        "abc",
        "abcd",
        "-----BEGIN CERTIFICATE-----\n",
    ] {
        assert_eq!(b64_decode(&b64_encode(s.as_bytes())), s.as_bytes());
    }
    assert_eq!(b64_encode(b"-----BEGIN"), "LS0tLS1CRUdJTg==");
}
