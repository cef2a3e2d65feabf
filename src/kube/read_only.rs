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

/// A read-only client for `config` (see the module's documentation).
pub fn client(config: &kube::Config) -> Result<kube::Client, kube::Error> {
    use kube::client::ConfigExt as _;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = config.rustls_https_connector_with_connector(http)?;
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
