//! The HTTP check logic against a local server that this test starts: status, body, the
//! three reviews variants served in turn, and retry until the deadline. (Through a real
//! ingress gateway this needs a live data plane, which only plans/bookinfo.toml has.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bookinfo_up::plan::Http;
use bookinfo_up::run::{Outcome, StepCtx};
use bookinfo_up::steps::http;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const V1: &str = r#"{"id": "0", "podname": "reviews-v1-5b9f", "reviews": [{"reviewer": "Reviewer1", "text": "An extremely entertaining play by Shakespeare."}]}"#;
const V2: &str = r#"{"id": "0", "podname": "reviews-v2-7d8c", "reviews": [{"reviewer": "Reviewer1", "rating": {"stars": 5, "color": "black"}}]}"#;
const V3: &str = r#"{"id": "0", "podname": "reviews-v3-6f4d", "reviews": [{"reviewer": "Reviewer1", "rating": {"stars": 5, "color": "red"}}]}"#;

/// Serves `bodies` in turn (after `failures` 503 answers), counting requests.
async fn server(bodies: Vec<&'static str>, failures: usize) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = c.fetch_add(1, Ordering::SeqCst);
            let (status, body) = if n < failures {
                ("503 Service Unavailable", "upstream connect error")
            } else {
                ("200 OK", bodies[(n - failures) % bodies.len()])
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/api/v1/products/0/reviews"), count)
}

fn ctx() -> StepCtx {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    StepCtx::new(
        "reviews",
        "test",
        None,
        tx,
        CancellationToken::new(),
        "/nonexistent".into(),
        "/nonexistent".into(),
    )
}

fn check(url: &str, variants: &[(&str, &str)], max_requests: u32, deadline: Duration) -> Http {
    Http {
        url: url.to_string(),
        service: None,
        status: 200,
        body_contains: Some("Reviewer1".into()),
        variants: variants
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        max_requests,
        deadline,
    }
}

const REVIEWS: [(&str, &str); 3] = [("v1", "reviews-v1"), ("v2", "\"black\""), ("v3", "\"red\"")];

#[tokio::test]
async fn sees_all_three_reviews_versions() {
    let (url, count) = server(vec![V1, V2, V3], 0).await;
    let out = http::run(&check(&url, &REVIEWS, 10, Duration::from_secs(5)), &ctx())
        .await
        .unwrap();
    assert_eq!(
        out,
        Outcome::Unchanged {
            summary: "saw all 3 variants in 3 requests".into()
        }
    );
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn names_the_variant_never_seen() {
    // v3 is never served: every round sees v1 and v2 only, until the deadline.
    let (url, _) = server(vec![V1, V2], 0).await;
    let err = http::run(
        &check(&url, &REVIEWS, 6, Duration::from_millis(600)),
        &ctx(),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("variants `v3` not seen in 6 requests"),
        "{msg}"
    );
    assert!(
        msg.starts_with(&format!("GET {url} did not pass within")),
        "{msg}"
    );
}

#[tokio::test]
async fn retries_until_the_service_answers() {
    // Three 503s first (a gateway whose routes are not programmed yet), then the page.
    let (url, count) = server(vec![V1], 3).await;
    let out = http::run(&check(&url, &[], 1, Duration::from_secs(20)), &ctx())
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Unchanged { .. }), "{out:?}");
    assert_eq!(count.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn wrong_body_fails_with_what_was_missing() {
    let (url, _) = server(vec![V1], 0).await;
    let mut h = check(&url, &[], 1, Duration::from_millis(300));
    h.body_contains = Some("The Comedy of Errors".into());
    let msg = http::run(&h, &ctx()).await.unwrap_err().to_string();
    assert!(
        msg.contains("the body does not contain \"The Comedy of Errors\""),
        "{msg}"
    );
}

#[tokio::test]
async fn unreachable_url_fails_at_the_deadline() {
    let h = check(
        "http://127.0.0.1:9/productpage",
        &[],
        1,
        Duration::from_millis(300),
    );
    let msg = http::run(&h, &ctx()).await.unwrap_err().to_string();
    assert!(msg.contains("request failed"), "{msg}");
}
