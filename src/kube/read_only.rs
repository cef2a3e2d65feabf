//! A client layer for `diff` and `status`, which must never change the cluster: every request
//! that could (any method but GET and HEAD) is refused before it is sent, unless it is a
//! server-side dry run (`dryRun=All`), which the API server runs through admission and
//! discards. The commands' code paths only read and dry-run; this makes it a property of the
//! client rather than of each call site.
//!
//! The layer sits outermost in the stack that `client::build` makes for every command.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Method, Request};
use kube::client::Body;
use tower::{Layer, Service};

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
