//! Every sha256 pin of plans/bookinfo.toml matches the file in the testbed's Istio content,
//! and the pinned URLs name a full 40-character commit (ISTIO_ADDONS_COMMIT).

use std::path::Path;

use bookinfo_up::plan::Action;
use sha2::{Digest, Sha256};

use crate::common::testbed;

fn versions() -> std::collections::BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/versions.env"))
            .unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn addon_pins_match_the_testbed_content() {
    let Some(tb) = testbed() else { return };
    let plan_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/bookinfo.toml");
    let (sources, plan) = bookinfo_up::plan::load(&plan_path, &|_| None);
    let plan = plan.unwrap_or_else(|d| panic!("{}", d.render(&sources)));
    let v = versions();
    assert!(
        v["ISTIO_MODULE_VERSION"].ends_with(v["ISTIO_COMMIT"].as_str()),
        "ISTIO_COMMIT names the module's commit"
    );
    let commit = &v["ISTIO_ADDONS_COMMIT"];
    assert!(
        commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "ISTIO_ADDONS_COMMIT is a full commit: {commit}"
    );
    let mut checked = 0;
    for step in &plan.steps {
        let Action::Apply(a) = &step.action else {
            continue;
        };
        for u in &a.urls {
            let sha = u.sha256.as_deref().expect("the real plan pins every URL");
            assert!(
                u.url.contains(&format!("/{commit}/samples/addons/")),
                "{} is not at commit {commit}",
                u.url
            );
            let file = u.url.rsplit('/').next().unwrap();
            let local = tb.istio.join("samples/addons").join(file);
            let bytes =
                std::fs::read(&local).unwrap_or_else(|e| panic!("{}: {e}", local.display()));
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                sha,
                "pin of {file} in step `{}`",
                step.id
            );
            checked += 1;
        }
    }
    assert_eq!(
        checked, 4,
        "prometheus, grafana, jaeger and kiali are pinned"
    );
}
