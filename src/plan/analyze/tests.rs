//! Tests of the analysis: each analyzes a small plan, end to end through `load`.

use super::*;

/// Analyzes `plan` written to a temp folder with `files` beside it; env from `env`.
fn analyze(plan: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Result<Plan, String> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, plan).unwrap();
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (sources, result) = load(&path, &|n| env.get(n).cloned());
    result.map_err(|d| d.render(&sources))
}

const HEAD: &str = "[plan]\nname = \"t\"\n[cluster]\nprovider = \"existing\"\n";

/// One template engine: a manifest renders the same from a file (at analysis) and from a
/// `file://` URL (fetched at run time), variables, `${env.X}`, defaults and `$${` alike.
#[tokio::test]
async fn a_manifest_renders_the_same_from_a_file_and_from_a_url() {
    let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ${name}\ndata:\n  image: ${env.HUB}/app:${env.TAG:-latest}\n  literal: \"$${not.a.var}\"\n  dollar: $5\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cm.yaml");
    std::fs::write(&file, manifest).unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(manifest.as_bytes()));
    let plan = format!(
        "{HEAD}[vars]\nname = \"settings\"\n[[step]]\nid = \"local\"\n[step.apply]\nfiles = [\"{}\"]\ntemplate = true\n[[step]]\nid = \"remote\"\n[step.apply]\nurls = [{{ url = \"file://{}\", sha256 = \"{sha}\" }}]\ntemplate = true\n",
        file.display(),
        file.display()
    );
    let env = [("HUB", "docker.io/istio")];
    let plan = analyze(&plan, &[], &env).unwrap();
    let (Action::Apply(local), Action::Apply(remote)) =
        (&plan.steps[0].action, &plan.steps[1].action)
    else {
        panic!("two apply steps");
    };
    let text = crate::steps::fetch::fetch(&remote.urls[0], &dir.path().join("cache"))
        .await
        .unwrap();
    let lookup = |n: &str| {
        env.iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.to_string())
    };
    let fetched =
        crate::steps::fetch::objects(&remote.urls[0], &text, Some(&remote.vars), &lookup).unwrap();
    assert_eq!(local.objects.len(), 1);
    assert_eq!(fetched[0].object, local.objects[0].object);
    assert_eq!(
        local.objects[0].object["data"],
        serde_json::json!({
            "image": "docker.io/istio/app:latest",
            "literal": "${not.a.var}",
            "dollar": "$5"
        })
    );
    assert_eq!(local.objects[0].object["metadata"]["name"], "settings");
}

fn exec_command(plan: &Plan) -> Vec<String> {
    match &plan.steps[0].action {
        Action::Exec(e) => e.command.clone(),
        other => panic!("not an exec step: {other:?}"),
    }
}

#[test]
fn interpolates_vars_env_defaults_and_escapes() {
    let plan = format!(
        "{HEAD}[vars]\nport = 666\nurl = \"http://127.0.0.1:${{port}}\"\n[[step]]\nid = \"a\"\n[step.exec]\ncommand = [\"${{url}}/x\", \"${{env.HUB}}\", \"${{env.TAG:-1.20.3}}\", \"$${{literal}}\"]\n"
    );
    let p = analyze(&plan, &[], &[("HUB", "docker.io/istio")]).unwrap();
    assert_eq!(
        exec_command(&p),
        [
            "http://127.0.0.1:666/x",
            "docker.io/istio",
            "1.20.3",
            "${literal}"
        ]
    );
}

#[test]
fn including_plan_overrides_included_vars() {
    let shared = "[vars]\ntag = \"1.20.3\"\n[[step]]\nid = \"a\"\n[step.exec]\ncommand = [\"echo\", \"${tag}\"]\n";
    let plan = "[plan]\nname = \"t\"\ninclude = [\"shared.toml\"]\n[cluster]\nprovider = \"existing\"\n[vars]\ntag = \"1.17.0\"\n";
    let p = analyze(plan, &[("shared.toml", shared)], &[]).unwrap();
    assert_eq!(exec_command(&p), ["echo", "1.17.0"]);
}

#[test]
fn vars_files_supply_literal_values() {
    let plan = "[plan]\nname = \"t\"\nvars_files = [\"v.env\"]\n[cluster]\nprovider = \"existing\"\n[[step]]\nid = \"a\"\n[step.exec]\ncommand = [\"${V}\"]\n";
    let p = analyze(plan, &[("v.env", "# pins\nV=1.30.4\n")], &[]).unwrap();
    assert_eq!(exec_command(&p), ["1.30.4"]);
}

#[test]
fn the_environment_overrides_declared_variables_literally() {
    let plan = "[plan]\nname = \"t\"\nvars_files = [\"v.env\"]\n[cluster]\nprovider = \"existing\"\n[vars]\nrepo = \"https://charts\"\nurl = \"${repo}/x\"\n[[step]]\nid = \"a\"\n[step.exec]\ncommand = [\"${IMAGE}\", \"${url}\"]\n";
    let files = [("v.env", "IMAGE=kindest/node:v1@sha256:00\n")];
    let p = analyze(plan, &files, &[]).unwrap();
    assert_eq!(
        exec_command(&p),
        ["kindest/node:v1@sha256:00", "https://charts/x"]
    );
    let env = [
        ("BOOKINFO_UP_VAR_IMAGE", "local/node:v1"),
        ("BOOKINFO_UP_VAR_repo", "/charts/${not-templated}"),
        ("BOOKINFO_UP_VAR_undeclared", "ignored"),
    ];
    let p = analyze(plan, &files, &env).unwrap();
    assert_eq!(
        exec_command(&p),
        ["local/node:v1", "/charts/${not-templated}/x"]
    );
}

#[test]
fn durations_parse_and_default() {
    let plan = format!(
        "{HEAD}[[step]]\nid = \"a\"\ntimeout = \"1m 30s\"\nbackoff = \"500ms\"\n[step.exec]\ncommand = [\"true\"]\n[[step]]\nid = \"b\"\n[step.exec]\ncommand = [\"true\"]\n"
    );
    let p = analyze(&plan, &[], &[]).unwrap();
    assert_eq!(p.steps[0].timeout, Duration::from_secs(90));
    assert_eq!(p.steps[0].backoff, Duration::from_millis(500));
    assert_eq!(p.steps[1].timeout, DEFAULT_TIMEOUT);
    assert_eq!(p.steps[1].backoff, DEFAULT_BACKOFF);
}

#[test]
fn bad_durations_are_named() {
    let plan = format!(
        "{HEAD}[[step]]\nid = \"a\"\ntimeout = \"soon\"\n[step.exec]\ncommand = [\"true\"]\n"
    );
    let err = analyze(&plan, &[], &[]).unwrap_err();
    assert!(err.contains("`soon` is not a duration"), "{err}");
    assert!(err.contains("plan.toml:7:11"), "{err}");
}

#[test]
fn a_next_entry_needs_steps_that_exist() {
    let steps = "[[step]]\nid = \"web\"\n[step.exec]\ncommand = [\"true\"]\n";
    let next = "[[plan.next]]\ntitle = \"web\"\nurl = \"http://127.0.0.1:8080\"\n";
    let plan = analyze(&format!("{HEAD}{next}needs = [\"web\"]\n{steps}"), &[], &[]).unwrap();
    assert_eq!(plan.next[0].needs, ["web"]);
    let err = analyze(
        &format!("{HEAD}{next}needs = [\"webb\"]\n{steps}"),
        &[],
        &[],
    )
    .unwrap_err();
    assert!(
        err.contains("`[[plan.next]]` entry `web` needs unknown step `webb`"),
        "{err}"
    );
    assert!(err.contains("plan.toml:8:10"), "{err}");
    assert!(err.contains("did you mean `web`?"), "{err}");
}

#[test]
fn all_problems_are_reported_together() {
    let plan = format!(
        "{HEAD}[[step]]\nid = \"a\"\nneeds = [\"nope\"]\ntimeout = \"x\"\n[step.exec]\ncommand = [\"${{missing}}\"]\n"
    );
    let err = analyze(&plan, &[], &[]).unwrap_err();
    assert!(err.contains("needs unknown step `nope`"), "{err}");
    assert!(err.contains("`x` is not a duration"), "{err}");
    assert!(err.contains("variable `missing` is not set"), "{err}");
    assert!(err.contains("the plan has 3 problems"), "{err}");
}

#[test]
fn empty_repo_means_a_local_chart() {
    let plan = format!(
        "{HEAD}[vars]\nrepo = \"\"\n[[step]]\nid = \"a\"\n[step.helm]\nrelease = \"r\"\nnamespace = \"n\"\nrepo = \"${{repo}}\"\nchart = \"chart\"\nversion = \"1\"\n"
    );
    let p = analyze(
        &plan,
        &[("chart/Chart.yaml", "name: c\nversion: 1.0.0\n")],
        &[],
    )
    .unwrap();
    assert!(
        matches!(&p.steps[0].action, Action::Helm(h) if matches!(h.chart, ChartRef::Path { .. }))
    );
}

#[test]
fn templated_manifests_take_plan_vars() {
    let plan = format!(
        "{HEAD}[vars]\nport = 666\n[[step]]\nid = \"a\"\n[step.apply]\nfiles = [\"m.yaml\"]\ntemplate = true\n"
    );
    let m = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n    - port: ${port}\n";
    let p = analyze(&plan, &[("m.yaml", m)], &[]).unwrap();
    let Action::Apply(a) = &p.steps[0].action else {
        panic!()
    };
    assert_eq!(a.objects[0].object["spec"]["ports"][0]["port"], 666);
}
