//! kind's preflight: before anything is created, what will fail (no runtime, no kind or one
//! too old, a host port taken or not allowed, far too little memory) is an error, and what may
//! cause trouble (inotify limits below kind's recommendation, memory near the minimum) a
//! warning, each with its fix.

use super::*;

pub async fn preflight(
    ports: &[PortMapping],
    min_memory: Option<u64>,
    name: &str,
    cancel: &CancellationToken,
) -> Findings {
    let mut found = Findings::default();
    let engine = engine(cancel).await;
    if crate::process::which("kind").is_none() {
        found.error(Problem {
            what: "`kind` is not on PATH".into(),
            fix: "install kind v0.33.0 or newer (`go install sigs.k8s.io/kind@v0.33.0`, or see https://kind.sigs.k8s.io/docs/user/quick-start/#installation)".into(),
        });
    } else {
        let out = kind_tool(engine).arg("version").run(cancel).await;
        if let Ok(o) = &out {
            let v = o.stdout.split_whitespace().nth(1).unwrap_or("");
            if let Some(problem) = old_kind(v) {
                found.error(problem);
            }
        }
        // kind's own view of the runtime: it lists clusters through the runtime's CLI.
        if let Ok(o) = kind_tool(engine)
            .args(["get", "clusters"])
            .run(cancel)
            .await
            && !o.success
        {
            let lines: Vec<&str> = o.stderr.lines().chain(o.stdout.lines()).collect();
            let why = ["Cannot connect", "executable file not found", "ERROR"]
                .iter()
                .find_map(|needle| lines.iter().find(|l| l.contains(needle)))
                .map(|l| {
                    l.trim()
                        .trim_start_matches("Command Output:")
                        .trim()
                        .to_string()
                })
                .unwrap_or_else(|| "`kind get clusters` failed".into());
            found.error(Problem {
                what: format!("kind cannot reach a container runtime: {why}"),
                fix: "start Docker (`sudo systemctl start docker`, or Docker Desktop) so that `kind get clusters` works".into(),
            });
        }
    }
    let info = match engine {
        Some(engine) => runtime_info(engine, min_memory, cancel, &mut found).await,
        None => {
            found.error(Problem {
                what: "no container runtime: neither Docker's `docker` nor Podman's `podman` answers on PATH".into(),
                fix: "install Docker (https://docs.docker.com/engine/install/) and start it; or run the simulated plan (`bookinfo-up sim`, or `just sim` in a clone)".into(),
            });
            None
        }
    };
    if engine == Some(Engine::Podman) {
        found.warning(Problem {
            what: "only Podman is here: kind runs on it with KIND_EXPERIMENTAL_PROVIDER=podman, which kind calls experimental".into(),
            fix: "nothing to do if it works; Docker is kind's well-trodden path (https://kind.sigs.k8s.io/docs/user/rootless/ for rootless Podman)".into(),
        });
    }
    for p in inotify_problems(
        read_number("/proc/sys/fs/inotify/max_user_watches"),
        read_number("/proc/sys/fs/inotify/max_user_instances"),
    ) {
        found.warning(p);
    }
    // Ports in use by the plan's own cluster are fine: a re-run finds them taken by it.
    let ours = match engine {
        Some(engine) => exists_with(kind_tool(Some(engine)), name, cancel)
            .await
            .unwrap_or(false),
        None => false,
    };
    if !ours {
        for p in ports {
            if let Some((severity, problem)) =
                port_problem(p.host_port, &host_port::probe(p.host_port), engine, info)
            {
                found.add(severity, problem);
            }
        }
    }
    found
}

pub fn old_kind(version: &str) -> Option<Problem> {
    let v = version.trim_start_matches('v');
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    ((major, minor) < MIN_KIND).then(|| Problem {
        what: format!(
            "kind {version} is older than v{}.{}, the release the pinned node image was published for",
            MIN_KIND.0, MIN_KIND.1
        ),
        fix: "install kind v0.33.0 or newer (`go install sigs.k8s.io/kind@v0.33.0`)".into(),
    })
}

/// Asks the runtime about itself: an error when it does not answer, an error when it has far
/// too little memory (under half the plan's minimum), a warning when it has somewhat too
/// little.
pub async fn runtime_info(
    engine: Engine,
    min_memory: Option<u64>,
    cancel: &CancellationToken,
    found: &mut Findings,
) -> Option<RuntimeInfo> {
    let runtime = engine.program();
    let args: &[&str] = match engine {
        Engine::Docker => &["info", "--format", "{{json .}}"],
        Engine::Podman => &["info", "--format", "json"],
    };
    let out = match Tool::new(runtime).args(args).run(cancel).await {
        Ok(o) if o.success => o,
        Ok(o) => {
            found.error(Problem {
                what: format!(
                    "the container runtime is not running: `{runtime} info` failed: {}",
                    first_line(&o.tail(3))
                ),
                fix: format!(
                    "start it (`sudo systemctl start {runtime}`, or open Docker Desktop) and check `{runtime} info`"
                ),
            });
            return None;
        }
        Err(e) => {
            found.error(Problem {
                what: format!("cannot run `{runtime} info`: {e}"),
                fix: format!("check the `{runtime}` installation"),
            });
            return None;
        }
    };
    let info = parse_info(engine, &out.stdout)?;
    if let (Some(total), Some(min)) = (info.mem_total, min_memory)
        && let Some((severity, problem)) = memory_problem(runtime, total, min)
    {
        found.add(severity, problem);
    }
    Some(info)
}

/// Reads memory and rootlessness from `docker info --format '{{json .}}'` or
/// `podman info --format json`.
pub fn parse_info(engine: Engine, json: &str) -> Option<RuntimeInfo> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
    let (mem, rootless) = match engine {
        Engine::Docker => (
            v.pointer("/MemTotal"),
            v.pointer("/SecurityOptions")
                .and_then(|o| o.as_array())
                .is_some_and(|o| o.iter().any(|s| s.as_str() == Some("name=rootless"))),
        ),
        Engine::Podman => (
            v.pointer("/host/memTotal"),
            v.pointer("/host/security/rootless")
                .and_then(|r| r.as_bool())
                .unwrap_or(false),
        ),
    };
    Some(RuntimeInfo {
        mem_total: mem.and_then(|m| m.as_u64()).filter(|m| *m > 0),
        rootless,
    })
}

/// Memory below the plan's minimum: a warning, or an error under half of it.
pub fn memory_problem(runtime: &str, total: u64, min: u64) -> Option<(Severity, Problem)> {
    if total >= min {
        return None;
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let severity = if total < min / 2 {
        Severity::Error
    } else {
        Severity::Warning
    };
    let what = match severity {
        Severity::Error => format!(
            "{runtime} offers {:.1} GiB of memory, far below the {:.1} GiB the plan needs: pods would not schedule",
            gib(total),
            gib(min)
        ),
        Severity::Warning => format!(
            "{runtime} offers {:.1} GiB of memory, under the {:.1} GiB the plan asks for: some pods may stay Pending",
            gib(total),
            gib(min)
        ),
    };
    Some((
        severity,
        Problem {
            what,
            fix: format!("give {runtime} more memory (Docker Desktop: Settings → Resources)"),
        },
    ))
}

/// What stands in the way of publishing `port` on 127.0.0.1, and how bad it is. A port taken
/// by another process is an error. A privileged port this user may not bind is no obstacle
/// for rootful Docker, whose docker-proxy runs as root and publishes it: a warning then, so
/// the user knows why it works here and would not elsewhere; an error for a rootless runtime,
/// which cannot publish it at all.
pub fn port_problem(
    port: u16,
    state: &PortState,
    engine: Option<Engine>,
    info: Option<RuntimeInfo>,
) -> Option<(Severity, Problem)> {
    let map_another =
        "or give the plan another host port (`host_port` in `[cluster.kind] port_mappings`)";
    match state {
        PortState::Free => None,
        PortState::Taken { holder } => Some((
            Severity::Error,
            Problem {
                what: format!(
                    "host port {port} on 127.0.0.1 is taken{}",
                    holder.as_ref().map(holder_text).unwrap_or_default()
                ),
                fix: match holder {
                    Some(Holder {
                        process: Some((pid, _)),
                        ..
                    }) => format!("stop it (`kill {pid}`), {map_another}"),
                    _ => format!(
                        "`sudo ss -ltnp 'sport = :{port}'` names the process; stop it, {map_another}"
                    ),
                },
            },
        )),
        PortState::NotAllowed { uid, user, floor } => {
            let who = match user {
                Some(u) => format!("user {u} (uid {uid})"),
                None => format!("uid {uid}"),
            };
            let why = format!(
                "host port {port} on 127.0.0.1 is privileged: {who} may not bind ports below {floor} (net.ipv4.ip_unprivileged_port_start)"
            );
            let fix_port = format!(
                "map a host port of {floor} or above (the plan's default is 30666), or lower the floor: `sudo sysctl net.ipv4.ip_unprivileged_port_start={port}`"
            );
            // Whether the runtime is rootless is known only when it answered `info`.
            Some(match (engine, info.map(|i| i.rootless)) {
                (Some(e), Some(true)) => (
                    Severity::Error,
                    Problem {
                        what: format!("{why}; rootless {} cannot publish it", e.name()),
                        fix: fix_port,
                    },
                ),
                (Some(Engine::Docker), Some(false)) => (
                    Severity::Warning,
                    Problem {
                        what: format!(
                            "{why}; rootful Docker publishes it anyway (docker-proxy runs as root), rootless Docker and Podman would not"
                        ),
                        fix: format!("nothing to do with this Docker; elsewhere, {fix_port}"),
                    },
                ),
                _ => (
                    Severity::Warning,
                    Problem {
                        what: format!(
                            "{why}; rootful Docker or rootful Podman can still publish it, rootless ones cannot"
                        ),
                        fix: fix_port,
                    },
                ),
            })
        }
        PortState::Failed(e) => Some((
            Severity::Error,
            Problem {
                what: format!("cannot bind host port {port} on 127.0.0.1 to check it: {e}"),
                fix: format!("check the loopback interface (`ip addr show lo`), {map_another}"),
            },
        )),
    }
}

/// " by python3 (pid 4242, user root)", or " by a process of user root (uid 0)" when its
/// descriptors are not this user's to read.
pub fn holder_text(h: &Holder) -> String {
    let user = h.user.clone().unwrap_or_else(|| format!("uid {}", h.uid));
    match &h.process {
        Some((pid, comm)) => format!(" by {comm} (pid {pid}, user {user})"),
        None => format!(
            " by a process of user {user} (uid {}) that this user cannot look into",
            h.uid
        ),
    }
}

pub fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim()
}

pub fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// inotify limits below kind's recommendation: warnings, since one cluster often runs on the
/// stock values (128 instances on Debian and Ubuntu).
pub fn inotify_problems(watches: Option<u64>, instances: Option<u64>) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(w) = watches.filter(|w| *w < MIN_INOTIFY_WATCHES) {
        problems.push(Problem {
            what: format!("fs.inotify.max_user_watches is {w}, below the {MIN_INOTIFY_WATCHES} kind recommends: pods may fail with \"too many open files\""),
            fix: format!("sudo sysctl fs.inotify.max_user_watches={MIN_INOTIFY_WATCHES}"),
        });
    }
    if let Some(i) = instances.filter(|i| *i < MIN_INOTIFY_INSTANCES) {
        problems.push(Problem {
            what: format!("fs.inotify.max_user_instances is {i}, below the {MIN_INOTIFY_INSTANCES} kind recommends: pods may fail with \"too many open files\""),
            fix: format!("sudo sysctl fs.inotify.max_user_instances={MIN_INOTIFY_INSTANCES}"),
        });
    }
    problems
}
