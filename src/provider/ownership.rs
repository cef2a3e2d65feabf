//! Whose cluster this is, proven before anything is created in it or deleted, and the lock
//! that keeps two runs on one cluster apart. `Ownership` is what was read; `judge` is the one
//! rule that `up`, `down`, `diff` and `status` all apply to it.
//!
//! Proof is one of two things: the owner marker in the cluster (ConfigMap
//! `kube-system/bookinfo-up-owner`, written by `up`), or, for the moments between creating a
//! cluster and marking it, the creation record that `up` writes in the cluster's state folder
//! just before it creates the cluster (and removes once the marker is written). A cluster with
//! neither, or one whose API server does not answer, proves nothing: `up` refuses it unless
//! `--adopt`, `down` unless `--force`.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use tokio_util::sync::CancellationToken;

use super::{Overrides, ProviderError, cluster_dir};
use crate::kube::{FIELD_MANAGER, Kube};
use crate::plan::{Plan, Provider};

/// Name of the ConfigMap in kube-system that marks a cluster as made by a plan.
pub const OWNER_MARKER: &str = "bookinfo-up-owner";

/// The creation record in a cluster's state folder: the name of the plan whose run is
/// creating (or created, and has not yet marked) the cluster.
const CREATION_RECORD: &str = "creating";

/// What the engine can tell about who owns a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// The owner marker names this plan.
    Marked,
    /// No marker yet, but this state folder records that a run of this plan created the
    /// cluster: a run stopped between creating and marking it.
    Created,
    /// The owner marker names another plan.
    Other(String),
    /// The API server answers, and the cluster carries neither the marker nor a record of
    /// ours: someone else made it.
    Unmarked,
    /// The API server does not answer (or cannot be reached): nothing could be read.
    Unreachable(String),
    /// A cluster the plan reaches as `existing` (`--kubeconfig`, `--context`, or the plan's
    /// provider): the engine never marks or deletes it; objects are judged by their labels.
    Existing,
}

/// What a command is about to do with the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// `up`: change it; `adopt` takes over a cluster without a marker.
    Up { adopt: bool },
    /// `down`: delete it or the plan's objects; `force` deletes what cannot be proven ours.
    Down { force: bool },
    /// `diff`, `status`: only look.
    Inspect,
}

/// What the command may do after `judge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on.
    Proceed,
    /// Go on, after writing the owner marker (`up` only).
    Mark,
}

/// The one rule: whether a command may go on with a cluster of this ownership. `rerun` is
/// the command line to suggest, with the plan as the user named it (`bookinfo-down sim`).
pub fn judge(
    ownership: &Ownership,
    plan: &Plan,
    intent: Intent,
    rerun: &str,
) -> Result<Verdict, ProviderError> {
    let cluster = &plan.cluster.name;
    let kind = plan.cluster.provider_name();
    let unproven = |message: String| Err(ProviderError::Unproven { message });
    match (ownership, intent) {
        (Ownership::Marked | Ownership::Existing, _) => Ok(Verdict::Proceed),
        (Ownership::Created, Intent::Up { .. }) => Ok(Verdict::Mark),
        (Ownership::Created, _) => Ok(Verdict::Proceed),
        (Ownership::Other(owner), _) => Err(ProviderError::NotOurs {
            cluster: cluster.clone(),
            owner: owner.clone(),
            plan: plan.name.clone(),
        }),
        (Ownership::Unmarked, Intent::Up { adopt: true }) => Ok(Verdict::Mark),
        (Ownership::Unmarked, Intent::Down { force: true }) => Ok(Verdict::Proceed),
        (Ownership::Unmarked, Intent::Up { adopt: false } | Intent::Inspect) => unproven(format!(
            "{kind} cluster `{cluster}` exists but carries no owner marker (ConfigMap \
             kube-system/{OWNER_MARKER}): `bookinfo-up` did not make it, so plan `{}` will not \
             take it over\n  = help: if it should be this plan's, `{rerun} --adopt` marks it \
             (and `bookinfo-down` may then delete it); otherwise give the plan another \
             `[cluster] name`",
            plan.name
        )),
        (Ownership::Unmarked, Intent::Down { force: false }) => unproven(format!(
            "{kind} cluster `{cluster}` carries no owner marker (ConfigMap \
             kube-system/{OWNER_MARKER}), so nothing proves that plan `{}` made it: nothing \
             was deleted\n  = help: if it is yours to delete, `{rerun} --force` deletes it \
             anyway",
            plan.name
        )),
        (Ownership::Unreachable(_), Intent::Down { force: true }) => Ok(Verdict::Proceed),
        (Ownership::Unreachable(cause), intent) => {
            let then = match intent {
                Intent::Down { .. } => {
                    format!("; or `{rerun} --force` deletes it without reading the marker")
                }
                _ => String::new(),
            };
            let what = match intent {
                Intent::Down { .. } => "nothing was deleted",
                Intent::Up { .. } => "nothing was changed",
                Intent::Inspect => "nothing could be compared",
            };
            let start = start_hint(plan);
            unproven(format!(
                "the API server of {kind} cluster `{cluster}` does not answer, so its owner \
                 marker cannot be read: {what}\n  = help: start the cluster ({start}), then run \
                 `{rerun}` again{then}\n  = cause: {cause}"
            ))
        }
    }
}

/// How a stopped cluster of the plan's provider (the one the run uses: `existing` with
/// `--kubeconfig`/`--context`) is started again.
fn start_hint(plan: &Plan) -> String {
    let name = &plan.cluster.name;
    match plan.cluster.provider {
        Provider::Kind { .. } => format!("`docker start {name}-control-plane`"),
        Provider::Kwok { .. } => "`bookinfo-up` starts a stopped kwok cluster again".into(),
        Provider::Existing { .. } => "check the kubeconfig's server and credentials".into(),
    }
}

/// Where `ownership` looks: the plan's name and, for a cluster the engine manages, its state
/// folder (`None`: an existing cluster).
pub fn claimant(plan: &Plan, o: &Overrides) -> (String, Option<PathBuf>) {
    (
        plan.name.clone(),
        super::managed(plan).then(|| cluster_dir(plan, o)),
    )
}

/// Reads whose the cluster behind `kube` is, for plan `plan` whose state folder for the
/// cluster is `dir` (see `claimant`). One GET: it also says whether the API server answers.
pub async fn ownership(kube: &Kube, (plan, dir): &(String, Option<PathBuf>)) -> Ownership {
    let owner = match owner(kube).await {
        Ok(owner) => owner,
        Err(e) => return Ownership::Unreachable(e.to_string()),
    };
    let Some(dir) = dir else {
        return Ownership::Existing;
    };
    match owner {
        Some(p) if p == *plan => Ownership::Marked,
        Some(p) => Ownership::Other(p),
        None if creation(dir).as_ref() == Some(plan) => Ownership::Created,
        None => Ownership::Unmarked,
    }
}

/// The plan named by the cluster's owner marker, if any.
pub async fn owner(kube: &Kube) -> Result<Option<String>, ProviderError> {
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(kube.client.clone(), "kube-system");
    let cm = api
        .get_opt(OWNER_MARKER)
        .await
        .map_err(crate::error::StepError::from)?;
    Ok(cm.and_then(|c| c.data).and_then(|d| d.get("plan").cloned()))
}

/// Writes the owner marker naming `plan`; the creation record in `dir` has then served.
pub async fn mark_owner(kube: &Kube, plan: &str, dir: &Path) -> Result<(), ProviderError> {
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": OWNER_MARKER, "namespace": "kube-system" },
        "data": { "plan": plan },
    }))
    .expect("a valid ConfigMap");
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(kube.client.clone(), "kube-system");
    api.patch(
        OWNER_MARKER,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await
    .map_err(crate::error::StepError::from)?;
    forget_creation(dir);
    Ok(())
}

/// Records, just before `up` creates the cluster, that this plan's run creates it.
pub fn record_creation(dir: &Path, plan: &str) -> Result<(), ProviderError> {
    std::fs::write(dir.join(CREATION_RECORD), plan).map_err(|e| ProviderError::Tool {
        message: format!(
            "cannot write `{}`: {e}",
            dir.join(CREATION_RECORD).display()
        ),
    })
}

/// The plan whose run created the cluster of `dir` and has not marked it yet.
fn creation(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(CREATION_RECORD))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Forgets the creation record: the cluster is marked, or gone.
pub fn forget_creation(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(CREATION_RECORD));
}

/// Held while a run works on a cluster the engine manages: a second run of the same cluster
/// (same state folder, same cluster name) waits for it. Released when dropped; the kernel
/// releases it when the process dies, however it dies.
#[derive(Debug)]
pub struct ClusterLock {
    file: File,
}

impl Drop for ClusterLock {
    /// Forgets who held it before letting go, so that a run finding the lock taken by the
    /// next holder, before that one has written its name, never names this finished run.
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// The lock file of the plan's cluster and its gate: in the state folder, beside (not
/// inside) the cluster's own folder, which `down` may remove.
fn lock_paths(plan: &Plan, o: &Overrides) -> (PathBuf, PathBuf) {
    let dir = o.state_dir.join("locks");
    (
        dir.join(format!("{}.lock", plan.cluster.name)),
        dir.join(format!("{}.gate", plan.cluster.name)),
    )
}

/// Takes the cluster's lock, waiting (and saying so through `progress`) while another run
/// holds it. `None` for clusters the engine does not manage. `command` names this run for a
/// waiting one (`up`, `down`).
///
/// The holder writes its name into the lock file. Taking the lock and writing the name happen
/// under a second lock, the gate, held for those few microseconds only; a run that finds the
/// lock taken reads the name under the gate too, so it never reads a holder that has the lock
/// and has not written its name yet (two runs started together would otherwise race there).
pub async fn lock(
    plan: &Plan,
    o: &Overrides,
    command: &str,
    progress: &dyn Fn(String),
    cancel: &CancellationToken,
) -> Result<Option<ClusterLock>, ProviderError> {
    if !super::managed(plan) {
        return Ok(None);
    }
    let (path, gate_path) = lock_paths(plan, o);
    let io = |e: std::io::Error| ProviderError::Tool {
        message: format!("cannot lock `{}`: {e}", path.display()),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(p)
            .map_err(io)
    };
    let mut file = open(&path)?;
    let gate = open(&gate_path)?;
    // Who holds it, for a run that has to wait.
    let me = format!(
        "`{command}` of plan `{}`, pid {}",
        plan.name,
        std::process::id()
    );
    let write_me = |file: &mut File| {
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = file.write_all(me.as_bytes());
    };
    gate.lock().map_err(io)?;
    match file.try_lock() {
        Ok(()) => {
            write_me(&mut file);
            gate.unlock().map_err(io)?;
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            gate.unlock().map_err(io)?;
            let holder = holder.trim();
            progress(format!(
                "waiting for another run on cluster `{}` to finish{}",
                plan.cluster.name,
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" ({holder})")
                }
            ));
            // flock has no timeout; the wait runs on a blocking thread, and a cancelled run
            // stops waiting for it (the thread ends with the process).
            let waiter = file.try_clone().map_err(io)?;
            let wait = tokio::task::spawn_blocking(move || waiter.lock());
            tokio::select! {
                r = wait => r.map_err(|e| ProviderError::Tool { message: format!("waiting for the lock failed: {e}") })?.map_err(io)?,
                _ = cancel.cancelled() => return Err(ProviderError::Cancelled),
            }
            gate.lock().map_err(io)?;
            write_me(&mut file);
            gate.unlock().map_err(io)?;
        }
        Err(std::fs::TryLockError::Error(e)) => {
            let _ = gate.unlock();
            return Err(io(e));
        }
    }
    Ok(Some(ClusterLock { file }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(provider: &str) -> Plan {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let cluster = match provider {
            "kind" => {
                "[cluster]\nprovider = \"kind\"\nname = \"demo\"\n[cluster.kind]\nnode_image = \"kindest/node:v1.34.0@sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n"
            }
            _ => "[cluster]\nprovider = \"kwok\"\nname = \"demo\"\n",
        };
        std::fs::write(
            &path,
            format!("[plan]\nname = \"mine\"\n{cluster}[[step]]\nid = \"x\"\n[step.exec]\ncommand = [\"true\"]\n"),
        )
        .unwrap();
        let (_, result) = crate::plan::load(&path, &|_| None);
        result.unwrap_or_else(|_| panic!("the test plan loads"))
    }

    #[test]
    fn the_one_rule() {
        let p = plan("kind");
        let up = Intent::Up { adopt: false };
        let adopt = Intent::Up { adopt: true };
        let down = Intent::Down { force: false };
        let force = Intent::Down { force: true };
        let rerun = "bookinfo-down p.toml";
        for intent in [up, adopt, down, force, Intent::Inspect] {
            assert!(
                matches!(
                    judge(&Ownership::Other("theirs".into()), &p, intent, rerun),
                    Err(ProviderError::NotOurs { .. })
                ),
                "another plan's cluster is refused, even with {intent:?}"
            );
            assert!(judge(&Ownership::Marked, &p, intent, rerun).is_ok());
            assert!(judge(&Ownership::Existing, &p, intent, rerun).is_ok());
        }
        assert_eq!(
            judge(&Ownership::Created, &p, up, rerun).unwrap(),
            Verdict::Mark
        );
        assert_eq!(
            judge(&Ownership::Created, &p, down, rerun).unwrap(),
            Verdict::Proceed
        );
        assert_eq!(
            judge(&Ownership::Unmarked, &p, adopt, rerun).unwrap(),
            Verdict::Mark
        );
        assert_eq!(
            judge(&Ownership::Unmarked, &p, force, rerun).unwrap(),
            Verdict::Proceed
        );
        let refused = judge(&Ownership::Unmarked, &p, down, rerun)
            .unwrap_err()
            .to_string();
        assert_eq!(
            refused,
            "kind cluster `demo` carries no owner marker (ConfigMap kube-system/bookinfo-up-owner), \
             so nothing proves that plan `mine` made it: nothing was deleted\n  = help: if it is \
             yours to delete, `bookinfo-down p.toml --force` deletes it anyway"
        );
        assert!(
            judge(&Ownership::Unmarked, &p, up, "bookinfo-up p.toml")
                .unwrap_err()
                .to_string()
                .contains("`bookinfo-up p.toml --adopt` marks it")
        );
        assert!(judge(&Ownership::Unmarked, &p, Intent::Inspect, rerun).is_err());
        let unreachable = Ownership::Unreachable("connection refused".into());
        let refused = judge(&unreachable, &p, down, rerun)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("`docker start demo-control-plane`")
                && refused.contains("`bookinfo-down p.toml --force` deletes it without reading")
                && refused.ends_with("= cause: connection refused"),
            "{refused}"
        );
        assert_eq!(
            judge(&unreachable, &p, force, rerun).unwrap(),
            Verdict::Proceed
        );
        assert!(judge(&unreachable, &p, up, rerun).is_err());
        // A kind plan run with `--kubeconfig`: `Invocation` made its provider `existing`.
        let mut existing = p.clone();
        existing.cluster.provider =
            super::super::effective(&p.cluster.provider, Some("k".into()), None);
        let refused = judge(&unreachable, &existing, Intent::Inspect, rerun)
            .unwrap_err()
            .to_string();
        assert!(
            refused.starts_with("the API server of existing cluster `demo` does not answer")
                && refused.contains("check the kubeconfig's server and credentials"),
            "a kind plan run with --kubeconfig: {refused}"
        );
        assert!(
            judge(&unreachable, &plan("kwok"), down, rerun)
                .unwrap_err()
                .to_string()
                .contains("`bookinfo-up` starts a stopped kwok cluster again")
        );
    }

    #[test]
    fn the_creation_record_is_written_read_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(creation(dir.path()), None);
        record_creation(dir.path(), "mine").unwrap();
        assert_eq!(creation(dir.path()).as_deref(), Some("mine"));
        forget_creation(dir.path());
        assert_eq!(creation(dir.path()), None);
    }

    /// Two runs started together, many times over, each on a thread of its own: the one that
    /// waits always names the one that holds the lock (they race between taking the lock and
    /// writing the holder's name).
    #[test]
    fn two_runs_started_together_always_name_the_holder() {
        use std::sync::{Arc, Barrier, mpsc};
        let state = tempfile::tempdir().unwrap();
        let o = Arc::new(Overrides {
            state_dir: state.path().to_path_buf(),
        });
        let p = Arc::new(plan("kwok"));
        for round in 0..200 {
            let (said_tx, said_rx) = mpsc::channel();
            let (release_tx, release_rx) = tokio::sync::watch::channel(false);
            let start = Arc::new(Barrier::new(2));
            let run = |name: &'static str| {
                let (o, p, start, said_tx) = (o.clone(), p.clone(), start.clone(), said_tx.clone());
                let mut release = release_rx.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let progress = |m: String| {
                            let _ = said_tx.send((name, m));
                        };
                        start.wait();
                        let held = lock(&p, &o, name, &progress, &CancellationToken::new())
                            .await
                            .unwrap();
                        let _ = release.wait_for(|r| *r).await;
                        drop(held);
                    })
                })
            };
            let (a, b) = (run("a"), run("b"));
            let (waiter, said) = said_rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("one of the two waits");
            let holder = if waiter == "a" { "b" } else { "a" };
            assert_eq!(
                said,
                format!(
                    "waiting for another run on cluster `demo` to finish (`{holder}` of plan `mine`, pid {})",
                    std::process::id()
                ),
                "round {round}"
            );
            release_tx.send(true).unwrap();
            a.join().unwrap();
            b.join().unwrap();
            assert!(
                said_rx.try_recv().is_err(),
                "round {round}: only one waited"
            );
        }
    }

    #[tokio::test]
    async fn a_second_run_waits_for_the_lock_and_says_so() {
        let state = tempfile::tempdir().unwrap();
        let o = Overrides {
            state_dir: state.path().to_path_buf(),
        };
        let p = plan("kwok");
        let cancel = CancellationToken::new();
        let first = lock(&p, &o, "up", &|_| {}, &cancel).await.unwrap();
        assert!(first.is_some());
        let said = std::sync::Mutex::new(Vec::new());
        let progress = |m: String| said.lock().unwrap().push(m);
        let second = lock(&p, &o, "down", &progress, &cancel);
        tokio::pin!(second);
        // The second run cannot get it while the first holds it...
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), &mut second)
                .await
                .is_err()
        );
        assert_eq!(
            said.lock().unwrap().as_slice(),
            [format!(
                "waiting for another run on cluster `demo` to finish (`up` of plan `mine`, pid {})",
                std::process::id()
            )]
        );
        // ...and gets it once the first lets go.
        drop(first);
        assert!(second.await.unwrap().is_some());
        // A cancelled wait ends at once.
        let held = lock(&p, &o, "up", &|_| {}, &cancel).await.unwrap();
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert!(matches!(
            lock(&p, &o, "up", &|_| {}, &cancelled).await,
            Err(ProviderError::Cancelled)
        ));
        drop(held);
        // As `--context elsewhere` makes it (see `Invocation`).
        let mut existing = p.clone();
        existing.cluster.provider =
            super::super::effective(&p.cluster.provider, None, Some("elsewhere".into()));
        assert!(
            lock(&existing, &o, "up", &|_| {}, &cancel)
                .await
                .unwrap()
                .is_none(),
            "an existing cluster is not the engine's to lock"
        );
    }
}
