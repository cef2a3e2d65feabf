//! Issue #6, item 6. Remote manifests, served over HTTP by the test: a tampered file (sha256 mismatch) is
//! refused before anything of its step is applied; with a warm cache an unreachable URL still
//! works; with a cold cache it fails naming the URL and the cause; a tampered cache entry is
//! never used.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::harness::{Bin, Run, Running, Sim, live_slot, testbed};

/// A one-file HTTP server on 127.0.0.1; `stop` closes its port.
struct Server {
    addr: std::net::SocketAddr,
    body: Arc<Mutex<Vec<u8>>>,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(body: &[u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body.to_vec()));
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, h, s) = (body.clone(), hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let body = b.lock().unwrap().clone();
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/yaml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                let _ = conn.write_all(&body);
            }
        });
        Self {
            addr,
            body,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/probe.yaml", self.addr)
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

const GOOD: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: remote-probe\ndata:\n  origin: pinned\n";
const TAMPERED: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: remote-probe\ndata:\n  origin: tampered\n";
const LOCAL: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: remote-probe-local\ndata:\n  origin: local\n";

fn plan(url: &str, sha: &str) -> String {
    format!(
        r#"[plan]
name = "remote-probe"

[cluster]
provider = "existing"

[[step]]
id = "local"
[step.apply]
namespace = "default"
files = ["local.yaml"]

[[step]]
id = "remote"
needs = ["local"]
[step.apply]
namespace = "default"
urls = [{{ url = "{url}", sha256 = "{sha}" }}]
"#
    )
}

#[test]
#[ignore = "slow: `just reliability`"]
fn tampered_cached_and_unreachable_remote_manifests() {
    let Some(tb) = testbed() else { return };
    let _slot = live_slot();
    let sim = Sim::new(&tb, "remote");
    sim.prepare();
    let dir = sim.dir().join("remote");
    std::fs::create_dir_all(&dir).unwrap();
    let sha = hex::encode(Sha256::digest(GOOD.as_bytes()));
    let mut server = Server::start(TAMPERED.as_bytes());
    let url = server.url();
    std::fs::write(dir.join("plan.toml"), plan(&url, &sha)).unwrap();
    std::fs::write(dir.join("local.yaml"), LOCAL).unwrap();
    let run = |cache: &Path| -> Run {
        let kubeconfig = sim.kubeconfig();
        let c = sim
            .product(Bin::Up)
            .plan(dir.join("plan.toml"))
            .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
            .env("BOOKINFO_UP_CACHE_DIR", cache)
            .command();
        Running::spawn(c, None).finish(Duration::from_secs(300))
    };
    let configmap = |name: &str| -> Option<String> {
        let out = sim.kubectl(&[
            "get",
            "configmap",
            "-n",
            "default",
            name,
            "-o",
            "jsonpath={.data.origin}",
        ]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let warm: PathBuf = dir.join("cache-warm");

    // Tampered: refused, nothing of the step applied, nothing cached.
    let tampered = run(&warm);
    assert_eq!(
        tampered.code, 1,
        "a tampered manifest:\n{}",
        tampered.stderr
    );
    let text = tampered.all_output();
    assert!(
        text.contains(&format!("`{url}` does not match its sha256 pin")),
        "the refusal names the URL and the pin:\n{text}"
    );
    assert_eq!(
        configmap("remote-probe"),
        None,
        "the tampered object was applied"
    );
    assert!(
        !warm.join("sha256").join(&sha).exists(),
        "the tampered file was cached"
    );
    let local_applied = configmap("remote-probe-local").is_some();
    eprintln!(
        "remote: tampered: {}; refused: {}; remote-probe not applied, other steps applied: {local_applied}",
        tampered.brief(),
        first_failure(&tampered)
    );

    // Warm cache: the pinned file is fetched once, then the URL goes away.
    *server.body.lock().unwrap() = GOOD.as_bytes().to_vec();
    let first = run(&warm);
    assert_eq!(first.code, 0, "the pinned manifest:\n{}", first.stderr);
    assert_eq!(configmap("remote-probe").as_deref(), Some("pinned"));
    let hits = server.hits.load(Ordering::SeqCst);
    server.stop();
    sim.kubectl_ok(&["delete", "configmap", "-n", "default", "remote-probe"]);
    let offline = run(&warm);
    assert_eq!(
        offline.code, 0,
        "warm cache, unreachable URL:\n{}",
        offline.stderr
    );
    assert_eq!(
        configmap("remote-probe").as_deref(),
        Some("pinned"),
        "applied from the cache"
    );
    assert_eq!(
        offline.step("remote").map(|s| s["outcome"].clone()),
        Some(serde_json::json!("changed")),
        "the object was re-created from the cached file"
    );
    eprintln!(
        "remote: warm cache: online {} ({hits} requests), then URL unreachable: {} (remote-probe re-created from the cache)",
        first.brief(),
        offline.brief()
    );

    // Cold cache, unreachable: fails naming the URL and the cause.
    let cold = run(&dir.join("cache-cold"));
    assert_eq!(
        cold.code, 1,
        "cold cache, unreachable URL:\n{}",
        cold.stderr
    );
    let text = cold.all_output();
    assert!(
        text.contains(&format!("cannot fetch `{url}`: ")),
        "names the URL:\n{text}"
    );
    assert!(
        text.to_lowercase().contains("connection refused"),
        "names the cause:\n{text}"
    );
    eprintln!(
        "remote: cold cache: {}; {}",
        cold.brief(),
        first_failure(&cold)
    );

    // A cache entry that does not match its name is not used.
    std::fs::write(warm.join("sha256").join(&sha), TAMPERED).unwrap();
    sim.kubectl_ok(&["delete", "configmap", "-n", "default", "remote-probe"]);
    let bad_cache = run(&warm);
    assert_eq!(
        bad_cache.code, 1,
        "a tampered cache entry:\n{}",
        bad_cache.stderr
    );
    assert_eq!(
        configmap("remote-probe"),
        None,
        "the tampered cache entry was applied"
    );
    eprintln!(
        "remote: tampered cache entry, URL unreachable: {}; {}",
        bad_cache.brief(),
        first_failure(&bad_cache)
    );
}

fn first_failure(r: &Run) -> String {
    r.failures()
        .first()
        .map(|(id, c)| format!("{id}: {}", c.lines().next().unwrap_or_default()))
        .unwrap_or_else(|| "no failed step".into())
}
