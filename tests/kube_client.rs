//! Tier 1: the one client every command builds (`kube::client`) against a live API server
//! (shared kwok cluster): TCP_NODELAY on its connections, HTTP/2 negotiated by ALPN, and the
//! requests of a burst multiplexed over one connection, for the client of `up`/`down` and
//! the read-only one of `diff`/`status` alike.

use std::path::Path;

use bookinfo_up::kube::Kube;
use k8s_openapi::api::core::v1::Namespace;

use crate::kube_shared::shared;

/// How many requests the burst sends at once.
const BURST: usize = 24;

/// One request to open the connection, then a burst of concurrent LISTs and version reads.
async fn burst(kube: &Kube) {
    kube.client.apiserver_version().await.unwrap();
    let namespaces: kube::Api<Namespace> = kube::Api::all(kube.client.clone());
    let lists = (0..BURST).map(|i| {
        let namespaces = namespaces.clone();
        let client = kube.client.clone();
        async move {
            if i % 2 == 0 {
                namespaces
                    .list(&Default::default())
                    .await
                    .map(|_| ())
                    .unwrap();
            } else {
                client.apiserver_version().await.map(|_| ()).unwrap();
            }
        }
    });
    futures::future::join_all(lists).await;
}

fn check(kube: &Kube, what: &str) {
    let wire = &kube.wire;
    assert_eq!(
        wire.http1_responses(),
        0,
        "{what}: every response came over HTTP/2 ({} over HTTP/2)",
        wire.http2_responses()
    );
    assert_eq!(wire.http2_responses(), BURST + 1, "{what}: responses");
    assert_eq!(
        wire.connections(),
        1,
        "{what}: {} requests over one connection",
        BURST + 1
    );
    assert_eq!(
        wire.nodelay(),
        wire.connections(),
        "{what}: TCP_NODELAY on every connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_speaks_http2_over_one_nodelay_connection() {
    let Some(s) = shared() else { return };
    let kubeconfig: &Path = &s.cluster.kubeconfig;
    let kube = Kube::connect(kubeconfig, None).await.unwrap();
    burst(&kube).await;
    check(&kube, "up/down's client");
    let read_only = Kube::connect_read_only(kubeconfig, None).await.unwrap();
    burst(&read_only).await;
    check(&read_only, "diff/status's read-only client");
}
