//! The one HTTP stack under every command's Kubernetes client (`up`, `down`, `diff`, `status`,
//! and the providers' reads): `build` makes a `kube::Client` from a kubeconfig's `Config` as
//! kube's `ClientBuilder` does (the same TLS, authentication, extra headers, retry of 429, 503
//! and 504, and `proxy-url` by HTTP CONNECT or SOCKS5), with three differences for many small
//! requests at once:
//!
//! - TCP_NODELAY on every connection. kube's connector leaves Nagle's algorithm on, and a
//!   request written in two segments then waits for the API server's delayed ACK (about
//!   40 ms).
//! - HTTP/2 where the server offers it (ALPN `h2`, then `http/1.1`): every request in flight
//!   shares one connection and one TLS handshake, where HTTP/1.1 opens a connection per
//!   concurrent request. A server that offers only HTTP/1.1, or a `http://` server, gets
//!   HTTP/1.1. (kube's own client speaks HTTP/1.1 only, for websocket upgrades, which the
//!   engine does not use.)
//! - Its own request trace, with kube's target and fields (`BOOKINFO_UP_LOG=kube_client=debug`
//!   logs each request: a span `HTTP` with `http.method` and `http.url`, an event
//!   `requesting`; each new connection: `connected`, with its peer and TCP_NODELAY), and
//!   counters of what went over the wire (`Wire`).
//!
//! For `diff` and `status` the stack also refuses writes (`read_only::ReadOnlyLayer`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use kube::client::Body;
use tower::{BoxError, Layer, Service};
use tracing::Instrument as _;

/// What went over the wire of one client: connections opened (each a TCP connection, to the
/// API server or to the proxy), how many of them had TCP_NODELAY set, and responses by HTTP
/// version.
#[derive(Debug, Default)]
pub struct Wire {
    connections: AtomicUsize,
    nodelay: AtomicUsize,
    http2: AtomicUsize,
    http1: AtomicUsize,
}

impl Wire {
    /// TCP connections opened.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
    /// Of those, how many had TCP_NODELAY on once connected.
    pub fn nodelay(&self) -> usize {
        self.nodelay.load(Ordering::Relaxed)
    }
    /// Responses received over HTTP/2.
    pub fn http2_responses(&self) -> usize {
        self.http2.load(Ordering::Relaxed)
    }
    /// Responses received over HTTP/1.x.
    pub fn http1_responses(&self) -> usize {
        self.http1.load(Ordering::Relaxed)
    }
}

/// Which clients of a process are one: the same kubeconfig (path and content), context and
/// kind of client, on the same tokio runtime (a connection's tasks live on the runtime that
/// opened it, so clients are never shared across runtimes, as tests make them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    kubeconfig: std::path::PathBuf,
    content: Vec<u8>,
    context: Option<String>,
    read_only: bool,
    runtime: Option<tokio::runtime::Id>,
}

impl Key {
    pub fn new(kubeconfig: &std::path::Path, context: Option<&str>, read_only: bool) -> Self {
        use sha2::Digest as _;
        let content = std::fs::read(kubeconfig).unwrap_or_default();
        Self {
            kubeconfig: kubeconfig.to_path_buf(),
            content: sha2::Sha256::digest(content).to_vec(),
            context: context.map(str::to_string),
            read_only,
            runtime: tokio::runtime::Handle::try_current().ok().map(|h| h.id()),
        }
    }
}

type Shared = (kube::Client, Arc<Wire>, Arc<super::Discovery>);

/// The client (and discovery cache) of `key`, built by `build` the first time.
pub fn shared(
    key: Key,
    build: impl FnOnce() -> Result<(kube::Client, Arc<Wire>), kube::Error>,
) -> Result<Shared, kube::Error> {
    static CLIENTS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<Key, Shared>>> =
        std::sync::OnceLock::new();
    let clients = CLIENTS.get_or_init(Default::default);
    let mut clients = clients.lock().unwrap_or_else(|e| e.into_inner());
    // Clients of runtimes that have ended are of no use again: keep only this runtime's.
    clients.retain(|k, _| k.runtime == key.runtime);
    if key.runtime.is_none() {
        let (client, wire) = build()?;
        return Ok((client, wire, Arc::default()));
    }
    if let Some(found) = clients.get(&key) {
        return Ok(found.clone());
    }
    let (client, wire) = build()?;
    let made = (client, wire, Arc::default());
    clients.insert(key, made.clone());
    Ok(made)
}

/// HTTP/2 pings while requests are open: a connection whose peer went away is found within
/// interval + timeout, whatever its streams are waiting for.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for `config` (see the module's documentation), through the kubeconfig's
/// `proxy-url` when it has one (`http://` by CONNECT, `socks5://`), as kube's own client does;
/// with `read_only`, one that refuses every request that could change the cluster.
pub fn build(
    config: &kube::Config,
    read_only: bool,
) -> Result<(kube::Client, Arc<Wire>), kube::Error> {
    use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
    let wire = Arc::new(Wire::default());
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let tcp = Counted {
        inner: http,
        wire: wire.clone(),
    };
    let Some(proxy) = config.proxy_url.clone() else {
        return Ok((client_over(config, tcp, read_only, &wire)?, wire));
    };
    let userinfo = proxy
        .authority()
        .and_then(|a| a.as_str().split_once('@'))
        .map(|(userinfo, _)| decode(userinfo));
    let client = match proxy.scheme_str() {
        Some("socks5") => {
            let mut socks = SocksV5::new(proxy.clone(), tcp);
            if let Some((user, pass)) = userinfo.as_deref().and_then(|u| u.split_once(':')) {
                socks = socks.with_auth(user.into(), pass.into());
            }
            client_over(config, socks, read_only, &wire)?
        }
        Some("http") => {
            let mut tunnel = Tunnel::new(proxy.clone(), tcp);
            if let Some(userinfo) = userinfo {
                use base64::Engine as _;
                let basic = base64::engine::general_purpose::STANDARD.encode(userinfo);
                if let Ok(header) = http::HeaderValue::from_str(&format!("Basic {basic}")) {
                    tunnel = tunnel.with_auth(header);
                }
            }
            client_over(config, tunnel, read_only, &wire)?
        }
        _ => {
            return Err(kube::Error::ProxyProtocolUnsupported {
                proxy_url: Box::new(proxy),
            });
        }
    };
    Ok((client, wire))
}

/// Percent-decodes a proxy URL's userinfo (`http::Uri` keeps the escapes).
pub(crate) fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The client's stack over `connector` (plain TCP, or a proxy's).
fn client_over<C>(
    config: &kube::Config,
    connector: C,
    read_only: bool,
    wire: &Arc<Wire>,
) -> Result<kube::Client, kube::Error>
where
    C: tower::Service<http::Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper::rt::Read
        + hyper::rt::Write
        + hyper_util::client::legacy::connect::Connection
        + Send
        + Unpin
        + 'static,
    C::Future: Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use kube::client::ConfigExt as _;
    let tls = config.rustls_client_config()?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match &config.tls_server_name {
        Some(name) => {
            let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| {
                kube::Error::RustlsTls(kube::client::RustlsTlsError::InvalidServerName(e))
            })?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let https = builder
        .enable_http1()
        .enable_http2()
        .wrap_connector(connector);
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let hyper: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .http2_keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
            .http2_keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
            .build(connector);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = tower::ServiceBuilder::new()
        .option_layer(read_only.then_some(super::read_only::ReadOnlyLayer))
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .layer(TraceLayer { wire: wire.clone() })
        .layer(tower::util::MapErrLayer::new(BoxError::from))
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
}

/// The TCP connector, counting the connections it opens and whether TCP_NODELAY is on.
#[derive(Clone)]
struct Counted {
    inner: HttpConnector,
    wire: Arc<Wire>,
}

type Connecting<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<http::Uri> for Counted {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = <HttpConnector as Service<http::Uri>>::Error;
    type Future = Connecting<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let wire = self.wire.clone();
        Box::pin(async move {
            let io = connecting.await?;
            let tcp = io.inner();
            let nodelay = tcp.nodelay().unwrap_or(false);
            wire.connections.fetch_add(1, Ordering::Relaxed);
            if nodelay {
                wire.nodelay.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(
                target: "kube_client",
                peer = %tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
                nodelay,
                "connected"
            );
            Ok(io)
        })
    }
}

/// Each request in a span `HTTP` (`http.method`, `http.url`, then `http.status_code` and
/// `http.version`) with an event `requesting`, as kube's own client logs them; responses
/// counted by HTTP version.
#[derive(Clone)]
struct TraceLayer {
    wire: Arc<Wire>,
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Trace {
            inner,
            wire: self.wire.clone(),
        }
    }
}

#[derive(Clone)]
struct Trace<S> {
    inner: S,
    wire: Arc<Wire>,
}

impl<S, B> Service<Request<Body>> for Trace<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Connecting<Result<Response<B>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let span = tracing::debug_span!(
            target: "kube_client",
            "HTTP",
            http.method = %req.method(),
            http.url = %req.uri(),
            http.status_code = tracing::field::Empty,
            http.version = tracing::field::Empty,
        );
        span.in_scope(|| tracing::debug!(target: "kube_client", "requesting"));
        let call = self.inner.call(req);
        let wire = self.wire.clone();
        let record = span.clone();
        Box::pin(
            async move {
                let res = call.await?;
                let version = res.version();
                if version == http::Version::HTTP_2 {
                    wire.http2.fetch_add(1, Ordering::Relaxed);
                } else {
                    wire.http1.fetch_add(1, Ordering::Relaxed);
                }
                record.record("http.status_code", res.status().as_u16());
                record.record("http.version", tracing::field::debug(version));
                Ok(res)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_credentials_are_percent_decoded() {
        assert_eq!(decode("user:pa%40ss%3Aword"), "user:pa@ss:word");
        assert_eq!(decode("user:100%"), "user:100%");
        assert_eq!(decode("plain"), "plain");
    }
}
