//! A kubeconfig's `proxy-url` is honoured by both of the engine's clients: `up`'s and `diff`'s
//! read-only one (both built by `kube::client`, HTTP/2 through the tunnel). Two proxies of the test's own on 127.0.0.1, an
//! HTTP CONNECT one and a SOCKS5 one, relay to a kwok cluster's API server (and only to
//! 127.0.0.1) and count what they relayed; a `proxy-url` that points at a closed port makes
//! both commands fail, so the counts cannot come from a client that went direct.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::{KwokCluster, Product, testbed};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Connect,
    Socks5,
}

/// A proxy on 127.0.0.1 that relays to 127.0.0.1 only, counting the tunnels it opened.
struct Proxy {
    addr: SocketAddr,
    relayed: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(kind: Kind) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let relayed = Arc::new(AtomicUsize::new(0));
        let count = relayed.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let count = count.clone();
                std::thread::spawn(move || {
                    let _ = relay(kind, conn, &count);
                });
            }
        });
        Proxy { addr, relayed }
    }

    fn url(&self, kind: Kind) -> String {
        match kind {
            Kind::Connect => format!("http://{}", self.addr),
            Kind::Socks5 => format!("socks5://{}", self.addr),
        }
    }

    fn relayed(&self) -> usize {
        self.relayed.load(Ordering::SeqCst)
    }
}

/// Reads a proxy request from `client`, connects to its target on 127.0.0.1, and splices.
fn relay(kind: Kind, mut client: TcpStream, count: &AtomicUsize) -> std::io::Result<()> {
    let port = match kind {
        Kind::Connect => {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                client.read_exact(&mut byte)?;
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let target = head
                .strip_prefix("CONNECT ")
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_default()
                .to_string();
            let (host, port) = target.rsplit_once(':').unwrap_or_default();
            if host != "127.0.0.1" && host != "localhost" {
                client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n")?;
                return Ok(());
            }
            client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
            port.parse::<u16>().unwrap_or(0)
        }
        Kind::Socks5 => {
            let mut greeting = [0u8; 2];
            client.read_exact(&mut greeting)?;
            let mut methods = vec![0u8; greeting[1] as usize];
            client.read_exact(&mut methods)?;
            client.write_all(&[5, 0])?;
            let mut req = [0u8; 4];
            client.read_exact(&mut req)?;
            let ip = match req[3] {
                1 => {
                    let mut a = [0u8; 4];
                    client.read_exact(&mut a)?;
                    Ipv4Addr::from(a)
                }
                3 => {
                    let mut len = [0u8; 1];
                    client.read_exact(&mut len)?;
                    let mut name = vec![0u8; len[0] as usize];
                    client.read_exact(&mut name)?;
                    if name != b"localhost" && name != b"127.0.0.1" {
                        Ipv4Addr::UNSPECIFIED
                    } else {
                        Ipv4Addr::LOCALHOST
                    }
                }
                _ => Ipv4Addr::UNSPECIFIED,
            };
            let mut port = [0u8; 2];
            client.read_exact(&mut port)?;
            if ip != Ipv4Addr::LOCALHOST {
                client.write_all(&[5, 2, 0, 1, 0, 0, 0, 0, 0, 0])?;
                return Ok(());
            }
            client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])?;
            u16::from_be_bytes(port)
        }
    };
    let upstream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    count.fetch_add(1, Ordering::SeqCst);
    let (mut c2, mut u2) = (client.try_clone()?, upstream.try_clone()?);
    let (mut c1, mut u1) = (client, upstream);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c1, &mut u1);
        let _ = u1.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut u2, &mut c2);
    let _ = c2.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
    Ok(())
}

/// The cluster's kubeconfig with `proxy-url` set on its cluster entry.
fn with_proxy(kubeconfig: &Path, url: &str, to: &Path) {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if let Some(indent) = line.strip_suffix("server:").or_else(|| {
            line.find("server: ")
                .map(|i| &line[..i])
                .filter(|p| p.trim().is_empty())
        }) {
            out.push_str(&format!("{indent}proxy-url: {url}\n"));
        }
    }
    assert!(out.contains("proxy-url"), "no server line in:\n{text}");
    std::fs::write(to, out).unwrap();
}

#[test]
fn proxy_url_is_honoured_by_both_clients() {
    let Some(tb) = testbed() else { return };
    let cluster = KwokCluster::create(&tb, "proxy");
    cluster.scale_nodes(1);
    let state = tempfile::tempdir().unwrap();
    for kind in [Kind::Connect, Kind::Socks5] {
        let proxy = Proxy::start(kind);
        let kubeconfig = state.path().join(format!("kubeconfig-{kind:?}"));
        with_proxy(&cluster.kubeconfig, &proxy.url(kind), &kubeconfig);
        let k = kubeconfig.to_str().unwrap();
        Product::up(&tb)
            .plan("plans/sim.toml")
            .state(state.path())
            .args(["--kubeconfig", k, "--only", "bookinfo-namespace"])
            .expect(0);
        let by_up = proxy.relayed();
        Product::up(&tb)
            .sub("diff")
            .plan("plans/sim.toml")
            .state(state.path())
            .args(["--only", "bookinfo-namespace", "--kubeconfig", k])
            .expect(0);
        let by_diff = proxy.relayed() - by_up;
        eprintln!("{kind:?} proxy relayed {by_up} connections for up, {by_diff} for diff");
        assert!(by_up > 0, "up went through the {kind:?} proxy");
        assert!(by_diff > 0, "diff went through the {kind:?} proxy");
    }
    // A proxy that is not there: both fail, so neither went direct above.
    let port = crate::common::closed_port();
    let kubeconfig = state.path().join("kubeconfig-closed");
    with_proxy(
        &cluster.kubeconfig,
        &format!("http://127.0.0.1:{port}"),
        &kubeconfig,
    );
    let k = kubeconfig.to_str().unwrap();
    let up = Product::up(&tb)
        .plan("plans/sim.toml")
        .state(state.path())
        .args(["--kubeconfig", k, "--only", "bookinfo-namespace"])
        .run();
    assert_ne!(up.code, 0, "up with a closed proxy:\n{}", up.stderr);
    Product::up(&tb)
        .sub("diff")
        .plan("plans/sim.toml")
        .state(state.path())
        .args(["--kubeconfig", k])
        .expect(3);
}
