//! A client layer for `diff` and `status`, which must never change the cluster: every request
//! that could (any method but GET and HEAD) is refused before it is sent, unless it is a
//! server-side dry run (`dryRun=All`), which the API server runs through admission and
//! discards. The commands' code paths only read and dry-run; this makes it a property of the
//! client rather than of each call site.
//!
//! `client` builds the whole client, as kube's `ClientBuilder` does, with two differences for
//! many small reads at once: at most `CONNECTIONS` requests in flight, and TCP_NODELAY on its
//! connections (kube's connector leaves Nagle's algorithm on, and a request written in two
//! segments then waits for the API server's delayed ACK, about 40 ms).

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Method, Request};
use kube::client::Body;
use tower::{Layer, Service};

/// Requests in flight at once. Each concurrent request costs a connection of its own
/// (HTTP/1.1) and so a TLS handshake, which on a small machine costs the API server more than
/// the read itself: `diff` reads 20-30 things at once, and is fastest over a few connections.
const CONNECTIONS: usize = 4;

/// A read-only client for `config` (see the module's documentation), through the
/// kubeconfig's `proxy-url` when it has one (`http://` by CONNECT, `socks5://`), as kube's
/// own client does.
pub fn client(config: &kube::Config) -> Result<kube::Client, kube::Error> {
    use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let Some(proxy) = config.proxy_url.clone() else {
        return client_over(config, http);
    };
    let userinfo = proxy
        .authority()
        .and_then(|a| a.as_str().split_once('@'))
        .map(|(userinfo, _)| decode(userinfo));
    match proxy.scheme_str() {
        Some("socks5") => {
            let mut socks = SocksV5::new(proxy.clone(), http);
            if let Some((user, pass)) = userinfo.as_deref().and_then(|u| u.split_once(':')) {
                socks = socks.with_auth(user.into(), pass.into());
            }
            client_over(config, socks)
        }
        Some("http") => {
            let mut tunnel = Tunnel::new(proxy.clone(), http);
            if let Some(userinfo) = userinfo {
                use base64::Engine as _;
                let basic = base64::engine::general_purpose::STANDARD.encode(userinfo);
                if let Ok(header) = http::HeaderValue::from_str(&format!("Basic {basic}")) {
                    tunnel = tunnel.with_auth(header);
                }
            }
            client_over(config, tunnel)
        }
        _ => Err(kube::Error::ProxyProtocolUnsupported {
            proxy_url: Box::new(proxy),
        }),
    }
}

/// Percent-decodes a proxy URL's userinfo (`http::Uri` keeps the escapes).
fn decode(text: &str) -> String {
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
fn client_over<C>(config: &kube::Config, connector: C) -> Result<kube::Client, kube::Error>
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
    let https = config.rustls_https_connector_with_connector(connector)?;
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let hyper: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let service = tower::ServiceBuilder::new()
        .layer(ReadOnlyLayer)
        .layer(tower::limit::ConcurrencyLimitLayer::new(CONNECTIONS))
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .layer(tower::util::MapErrLayer::new(tower::BoxError::from))
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
}

#[derive(Debug, Clone, Copy)]
pub struct ReadOnlyLayer;

impl<S> Layer<S> for ReadOnlyLayer {
    type Service = ReadOnly<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ReadOnly { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ReadOnly<S> {
    inner: S,
}

/// The refusal, as the request's error.
#[derive(Debug, thiserror::Error)]
#[error("refused to send {method} {path}: this command only reads the cluster")]
pub struct WriteRefused {
    method: Method,
    path: String,
}

/// Whether a request leaves the cluster as it was.
pub fn allowed(method: &Method, query: Option<&str>) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        || query.is_some_and(|q| q.split('&').any(|kv| kv == "dryRun=All"))
}

impl<S, B> Service<Request<Body>> for ReadOnly<S>
where
    S: Service<Request<Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
{
    type Response = http::Response<B>;
    type Error = tower::BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        tracing::debug!(method = %req.method(), uri = %req.uri(), "requesting");
        if !allowed(req.method(), req.uri().query()) {
            let refused = WriteRefused {
                method: req.method().clone(),
                path: req.uri().path().to_string(),
            };
            return Box::pin(async move { Err(refused.into()) });
        }
        let call = self.inner.call(req);
        Box::pin(async move { call.await.map_err(Into::into) })
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

    #[test]
    fn only_reads_and_dry_runs_pass() {
        assert!(allowed(&Method::GET, None));
        assert!(allowed(&Method::GET, Some("watch=true")));
        assert!(allowed(
            &Method::PATCH,
            Some("dryRun=All&fieldManager=bookinfo-up&force=true")
        ));
        assert!(allowed(&Method::POST, Some("fieldManager=x&dryRun=All")));
        assert!(!allowed(
            &Method::PATCH,
            Some("fieldManager=bookinfo-up&force=true")
        ));
        assert!(!allowed(&Method::PATCH, Some("dryRun=None")));
        assert!(!allowed(&Method::DELETE, None));
        assert!(!allowed(&Method::PUT, Some("x=dryRun=All")));
        assert!(!allowed(&Method::POST, None));
    }
}
