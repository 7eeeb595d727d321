//! The server's edges: a client that trickles its headers, too many connections, the client
//! address behind a trusted proxy, and too many operations at once from one address.

use std::time::Duration;

use reviews_api::auth::TokenKeys;
use reviews_api::config::{AppEnv, Edges, Limits};
use reviews_api::ApiSettings;
use reviews_db::testing::TestDatabase;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn app_with(limits: Limits, edges: Edges) -> TestApp {
    let database = TestDatabase::create().await;
    let db = database.db();
    let secret = TestApp::new_secret();
    let settings = ApiSettings {
        keys: TokenKeys::new(secret.as_bytes()),
        limits,
        edges,
        app_env: AppEnv::Development,
        shared_limits: None,
    };
    TestApp::spawn_with(database, db, settings, secret).await
}

/// Reads until the server closes the connection (or `limit` passes: None).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_cut_off() {
    let edges = Edges {
        header_read_timeout: Duration::from_millis(500),
        ..Edges::default()
    };
    let app = app_with(Limits::default(), edges).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Never the blank line that ends the headers.
    let answer = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("the server closes a slow client's connection");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.contains("408"), "{answer}");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let edges = Edges {
        max_connections: 2,
        ..Edges::default()
    };
    let app = app_with(Limits::default(), edges).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(stream); // kept alive, holding its slot
    }
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buf = [0u8; 256];
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(
        waited.is_err(),
        "a third connection was served beyond the cap"
    );
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// Mutations by address, as the rate limit sees them: with a trusted proxy, each client
/// behind it has its own budget; without, `X-Forwarded-For` is not believed.
#[tokio::test]
async fn the_client_address_is_the_rightmost_untrusted_hop_behind_a_trusted_proxy_only() {
    let limits = Limits {
        mutations_per_user_per_minute: 0,
        mutations_per_ip_per_minute: 1,
        ..Limits::default()
    };
    let create = "mutation { createProduct(input: {name: \"x\"}) { id } }";
    let post = |app: &TestApp, forwarded: &str| {
        let request = app
            .http
            .post(app.url("/graphql"))
            .bearer_auth(app.token("someone"))
            .header("x-forwarded-for", forwarded)
            .json(&json!({"query": create}));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let trusted = Edges {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..Edges::default()
    };
    let behind_proxy = app_with(limits.clone(), trusted).await;
    assert_eq!(post(&behind_proxy, "198.51.100.1").await, 200);
    assert_eq!(
        post(&behind_proxy, "198.51.100.2").await,
        200,
        "another client"
    );
    assert_eq!(
        post(&behind_proxy, "6.6.6.6, 198.51.100.1").await,
        429,
        "a forged left hop changes nothing"
    );

    let direct = app_with(limits, Edges::default()).await;
    assert_eq!(post(&direct, "198.51.100.1").await, 200);
    assert_eq!(
        post(&direct, "198.51.100.2").await,
        429,
        "the header is not believed"
    );
}

#[tokio::test]
async fn operations_at_once_from_one_address_are_capped() {
    let limits = Limits {
        concurrent_per_client: 1,
        ..Limits::default()
    };
    let app = app_with(limits, Edges::default()).await;
    let product = app.create_product("owner", "Kettle").await;
    // A reads that waits: the reviews table is locked by an open transaction.
    let mut blocker = app.database.client().await;
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("lock table reviews in access exclusive mode")
        .await
        .unwrap();
    let reviews = format!("{{ reviews(productId: \"{product}\") {{ edges {{ cursor }} }} }}");
    let slow = {
        let (http, url, query) = (app.http.clone(), app.url("/graphql"), reviews.clone());
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({"query": query}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = app.graphql(&reviews, json!({})).await;
    assert_eq!(error_code(&second), "RATE_LIMITED", "{second}");
    lock.rollback().await.unwrap();
    assert_eq!(slow.await.unwrap(), 200);
    let after = app.graphql(&reviews, json!({})).await;
    assert!(after["errors"].is_null(), "{after}");
}
