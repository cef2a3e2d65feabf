//! The `existing` provider: any cluster reachable through a kubeconfig and context, given by
//! the plan, `--kubeconfig`/`--context`, `KUBECONFIG` or `~/.kube/config`. Never written to.

use std::path::PathBuf;

use super::{Access, Problem, ProviderError};

/// The kubeconfig file to read: explicit, else the first of `KUBECONFIG`, else the default.
pub fn resolve(kubeconfig: Option<PathBuf>) -> Option<PathBuf> {
    kubeconfig
        .or_else(|| {
            std::env::var_os("KUBECONFIG")
                .and_then(|v| std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty()))
        })
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config")))
}

pub fn preflight(kubeconfig: Option<&std::path::Path>) -> Vec<Problem> {
    match resolve(kubeconfig.map(PathBuf::from)) {
        Some(p) if p.is_file() => Vec::new(),
        Some(p) => vec![Problem {
            what: format!("kubeconfig `{}` does not exist", p.display()),
            fix: "pass `--kubeconfig FILE`, set KUBECONFIG, or set `[cluster.existing] kubeconfig`"
                .into(),
        }],
        None => vec![Problem {
            what: "no kubeconfig: HOME and KUBECONFIG are unset".into(),
            fix: "pass `--kubeconfig FILE`".into(),
        }],
    }
}

pub fn access(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
) -> Result<Access, ProviderError> {
    let kubeconfig = resolve(kubeconfig).ok_or_else(|| ProviderError::Tool {
        message: "no kubeconfig: pass `--kubeconfig FILE` or set KUBECONFIG".into(),
    })?;
    Ok(Access {
        kubeconfig,
        context,
        managed: false,
    })
}
