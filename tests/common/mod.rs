//! Shared test fixtures: the testbed (tier 1) and throwaway kwok clusters built from it.
//!
//! Tests that need the testbed call `testbed()`: outside CI a missing testbed skips the test
//! with one line naming `just testbed`; under `CI=true` it fails the test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The testbed's binaries and Istio content, from `eval "$(just testbed-env)"`.
pub struct Testbed {
    pub bin: PathBuf,
    pub istio: PathBuf,
}

pub fn testbed() -> Option<Testbed> {
    let bin = std::env::var_os("BOOKINFO_UP_TESTBED_BIN").map(PathBuf::from);
    let istio = std::env::var_os("BOOKINFO_UP_ISTIO_DIR").map(PathBuf::from);
    match (bin, istio) {
        (Some(bin), Some(istio)) if bin.join("kube-apiserver").is_file() && istio.is_dir() => {
            Some(Testbed { bin, istio })
        }
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("the testbed is missing or broken under CI=true: run `just testbed` and `eval \"$(just testbed-env)\"`");
            }
            eprintln!("skipped: needs the testbed; run `just testbed` then `eval \"$(just testbed-env)\"`");
            None
        }
    }
}

impl Testbed {
    /// A command for one of the testbed's binaries, with the testbed first on PATH.
    pub fn cmd(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        c.env("PATH", self.path_env());
        c
    }

    pub fn path_env(&self) -> String {
        format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap_or_default())
    }
}

/// Admission plugins switched off on simulated clusters: without a real istiod, Istio's
/// webhooks (failurePolicy Fail) would reject every pod and Istio object.
pub const NO_WEBHOOKS: &str =
    "kube-apiserver=disable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy";

/// A kwok cluster (binary runtime) made from the testbed's binaries, deleted on drop.
pub struct KwokCluster {
    pub name: String,
    pub kubeconfig: PathBuf,
    pub workdir: tempfile::TempDir,
    path_env: String,
}

impl KwokCluster {
    pub fn create(tb: &Testbed, name: &str) -> Self {
        let workdir = tempfile::Builder::new().prefix("bookinfo-up-kwok-").tempdir().unwrap();
        let kubeconfig = workdir.path().join("kubeconfig");
        let out = tb
            .cmd("kwokctl")
            .env("KWOK_WORKDIR", workdir.path())
            .args(["create", "cluster", "--name", name, "--runtime", "binary", "--wait", "60s"])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--extra-args", NO_WEBHOOKS])
            .output()
            .expect("kwokctl runs");
        assert!(
            out.status.success(),
            "kwokctl create cluster failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name: name.to_string(), kubeconfig, workdir, path_env: tb.path_env() }
    }

    /// kubectl against this cluster, for assertions (the product itself never runs kubectl).
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new("kubectl")
            .env("PATH", &self.path_env)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    pub fn delete(&self) {
        let _ = Command::new("kwokctl")
            .env("PATH", &self.path_env)
            .env("KWOK_WORKDIR", self.workdir.path())
            .args(["delete", "cluster", "--name", &self.name])
            .output();
    }
}

impl Drop for KwokCluster {
    fn drop(&mut self) {
        self.delete();
    }
}
