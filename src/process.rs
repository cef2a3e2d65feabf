//! External tools (helm, kind, kwokctl, docker, exec steps) run through duct, each in a
//! process group of its own so that cancellation kills the tool and everything it started.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// What a finished tool printed and how it exited.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ToolOutput {
    /// The last lines of stderr (or stdout when stderr is empty), for error messages.
    pub fn tail(&self, lines: usize) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let all: Vec<&str> = text.trim_end().lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program is not on PATH (or not executable).
    #[error("`{program}` was not found on PATH")]
    NotFound { program: String },
    /// It could not be started for another reason.
    #[error("cannot start `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The run was cancelled; the process group was killed.
    #[error("`{program}` was stopped: the run was cancelled")]
    Cancelled { program: String },
}

/// A command line to run: program, arguments, environment additions and working folder.
#[derive(Debug, Clone)]
pub struct Tool {
    program: String,
    args: Vec<OsString>,
    env: Vec<(String, OsString)>,
    dir: Option<std::path::PathBuf>,
}

impl Tool {
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, A>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn dir(mut self, d: &Path) -> Self {
        self.dir = Some(d.to_path_buf());
        self
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    /// The command line as a user would type it, for logs and dry runs.
    pub fn display(&self) -> String {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn expression(&self) -> duct::Expression {
        let mut e = duct::cmd(&self.program, &self.args)
            .stdin_null()
            .stdout_capture()
            .stderr_capture()
            .unchecked();
        for (k, v) in &self.env {
            e = e.env(k, v);
        }
        if let Some(d) = &self.dir {
            e = e.dir(d);
        }
        // A new process group per tool: cancellation signals the whole group, so
        // grandchildren (kwokctl's apiserver, a shell's children) go too.
        e.before_spawn(|cmd| {
            cmd.process_group(0);
            Ok(())
        })
    }

    /// Runs the tool to completion, or kills its process group when `cancel` fires.
    pub async fn run(&self, cancel: &CancellationToken) -> Result<ToolOutput, ToolError> {
        tracing::debug!(command = %self.display(), "running");
        let handle = match self.expression().start() {
            Ok(h) => std::sync::Arc::new(h),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ToolError::NotFound {
                    program: self.program.clone(),
                });
            }
            Err(e) => {
                return Err(ToolError::Spawn {
                    program: self.program.clone(),
                    source: e,
                });
            }
        };
        let pids = handle.pids();
        // Killed with its group if this future is dropped (a step timeout) before it ends.
        let mut guard = GroupGuard(Some(pids.clone()));
        register(&pids, true);
        let waiter = {
            let handle = handle.clone();
            tokio::task::spawn_blocking(move || handle.wait().cloned())
        };
        tokio::select! {
            output = waiter => {
                guard.0 = None;
                register(&pids, false);
                let output = output
                    .map_err(|e| ToolError::Spawn { program: self.program.clone(), source: std::io::Error::other(e) })?
                    .map_err(|e| ToolError::Spawn { program: self.program.clone(), source: e })?;
                Ok(ToolOutput {
                    success: output.status.success(),
                    code: output.status.code(),
                    stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                })
            }
            _ = cancel.cancelled() => {
                let t = std::time::Instant::now();
                // The guard stays armed through the grace: if this future is dropped meanwhile
                // (the process exits), the group still gets its SIGKILL.
                kill_groups(&pids).await;
                guard.0 = None;
                register(&pids, false);
                let _ = handle.kill();
                tracing::debug!(command = %self.display(), elapsed = ?t.elapsed(), "stopped: the run was cancelled");
                Err(ToolError::Cancelled { program: self.program.clone() })
            }
        }
    }
}

/// Kills the process groups it holds when dropped while still armed; forgets them in any
/// case.
struct GroupGuard(Option<Vec<u32>>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pids) = self.0.take() {
            for &pid in &pids {
                // SAFETY: kill(2) on a process group this module started; no memory is shared.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            register(&pids, false);
        }
    }
}

/// Process groups of tools still running, for `kill_all` on an immediate exit.
static RUNNING: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn register(pids: &[u32], running: bool) {
    let mut set = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    if running {
        set.extend_from_slice(pids);
    } else {
        set.retain(|p| !pids.contains(p));
    }
}

/// SIGKILLs the process group of every tool still running. For an exit that cannot wait
/// for cancellation to finish (a second Ctrl-C).
pub fn kill_all() {
    let set = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    for &pid in set.iter() {
        // SAFETY: kill(2) on process groups this module started.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
}

/// SIGTERM to each process group, then SIGKILL to what is left after a short grace.
async fn kill_groups(pids: &[u32]) {
    for &pid in pids {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is shared.
        unsafe { libc::kill(-(pid as i32), libc::SIGTERM) };
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
    loop {
        // SAFETY: signal 0 only checks whether the group still exists.
        let alive = pids
            .iter()
            .any(|&pid| unsafe { libc::kill(-(pid as i32), 0) } == 0);
        if !alive || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for &pid in pids {
        // SAFETY: as above.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
}

/// Whether `program` can be found on PATH (or is a path to an executable file).
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let p = Path::new(program);
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|c| {
                use std::os::unix::fs::PermissionsExt;
                c.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn captures_output_and_status() {
        let out = Tool::new("sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .run(&CancellationToken::new())
            .await
            .unwrap();
        assert!(!out.success);
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.tail(5), "err");
    }

    #[tokio::test]
    async fn missing_program_is_named() {
        let err = Tool::new("bookinfo-up-no-such-tool")
            .run(&CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`bookinfo-up-no-such-tool` was not found on PATH"
        );
    }

    #[tokio::test]
    async fn cancellation_kills_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cancel = CancellationToken::new();
        let tool = Tool::new("sh").args([
            "-c".to_string(),
            format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
        ]);
        let c = cancel.clone();
        let task = tokio::spawn(async move { tool.run(&c).await });
        // Wait until the grandchild exists, by its pid file.
        let mut tries = 0;
        while !pidfile.exists() || std::fs::read_to_string(&pidfile).unwrap().trim().is_empty() {
            tries += 1;
            assert!(tries < 200, "the child did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let started = std::time::Instant::now();
        cancel.cancel();
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, ToolError::Cancelled { .. }));
        assert!(started.elapsed() < Duration::from_secs(2));
        // The grandchild is gone (or a zombie awaiting its reaper, which `kill -0` still sees
        // briefly): check /proc for a live process.
        let status =
            std::fs::read_to_string(format!("/proc/{grandchild}/status")).unwrap_or_default();
        assert!(
            status.is_empty() || status.contains("State:\tZ"),
            "grandchild {grandchild} survived: {status}"
        );
    }

    #[tokio::test]
    async fn a_dropped_run_kills_its_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let tool = Tool::new("sh").args([
            "-c".to_string(),
            format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
        ]);
        let cancel = CancellationToken::new();
        // A step timeout drops the future while the tool runs.
        let r = tokio::time::timeout(Duration::from_millis(300), tool.run(&cancel)).await;
        assert!(r.is_err(), "the tool was still running");
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut gone = false;
        for _ in 0..100 {
            let status =
                std::fs::read_to_string(format!("/proc/{grandchild}/status")).unwrap_or_default();
            if status.is_empty() || status.contains("State:\tZ") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone, "grandchild {grandchild} survived the dropped run");
    }
}
