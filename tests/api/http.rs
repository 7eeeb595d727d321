use std::time::Duration;

use reviews_db::testing::TestDatabase;
use reviews_db::Db;
use serde_json::{json, Value};

use crate::proxy::Proxy;
use crate::support::*;

#[tokio::test]
async fn healthz_answers_ok() {
    let app = TestApp::spawn().await;
    let response = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn get_graphql_serves_graphiql() {
    let app = TestApp::spawn().await;
    let response = app.http.get(app.url("/graphql")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(response
        .text()
        .await
        .unwrap()
        .to_lowercase()
        .contains("graphiql"));
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_a_sane_one_is_kept() {
    let app = TestApp::spawn().await;
    let send = |id: Option<&'static str>| {
        let mut request = app
            .http
            .post(app.url("/graphql"))
            .json(&json!({"query": "{ products { edges { cursor } } }"}));
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        request.send()
    };
    let response = send(Some("trace-123")).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-123");
    let response = send(Some("bad id with spaces")).await.unwrap();
    assert_ne!(response.headers()["x-request-id"], "bad id with spaces");
    let response = send(None).await.unwrap();
    assert!(!response.headers()["x-request-id"].is_empty());
}

#[tokio::test]
async fn an_unknown_route_is_a_json_404() {
    let app = TestApp::spawn().await;
    let response = app.http.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "NOT_FOUND");
}

#[tokio::test]
async fn readyz_answers_503_while_postgres_is_unreachable_and_recovers_by_itself() {
    let database = TestDatabase::create().await;
    let host = database.config.get_hosts()[0].clone();
    let port = database.config.get_ports()[0];
    let tokio_postgres::config::Host::Tcp(host) = host else {
        panic!("this test needs Postgres over TCP");
    };
    let target = tokio::net::lookup_host((host.as_str(), port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(target).await;
    // `Config::host` adds a host rather than replacing one, so build the proxied config anew.
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(proxy.addr.port())
        .user(database.config.get_user().unwrap())
        .dbname(database.config.get_dbname().unwrap());
    if let Some(password) = database.config.get_password() {
        config.password(password);
    }
    let app = TestApp::spawn_on(
        database,
        Db::connect_lazy(
            reviews_db::PgTarget::plaintext(config),
            4,
            reviews_db::PoolMode::Session,
        ),
    )
    .await;
    let ready = || async {
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };

    assert_eq!(ready().await, 200);
    proxy.cut();
    // Let the aborted proxy tasks close their sockets.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ready().await, 503);
    proxy.restore().await;
    let mut status = 0;
    for _ in 0..50 {
        status = ready().await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 200, "readyz did not recover");
}

#[tokio::test]
async fn the_committed_schema_file_matches_the_code() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_reviews-api"))
        .arg("print-schema")
        .output()
        .unwrap();
    assert!(output.status.success());
    let generated = String::from_utf8(output.stdout).unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap();
    assert!(
        generated == committed,
        "schema.graphql is out of date: run `cargo run --bin reviews-api -- print-schema > schema.graphql`"
    );
}

#[tokio::test]
async fn metrics_count_requests_and_graphql_errors_by_code() {
    let app = TestApp::spawn().await;
    app.graphql("{ product(id: \"nope\") { id } }", json!({}))
        .await;
    app.graphql("{ products { edges { cursor } } }", json!({}))
        .await;
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    for expected in [
        "graphql_errors_total{code=\"BAD_USER_INPUT\"}",
        "graphql_operations_total{outcome=\"ok\"}",
        "graphql_operation_duration_seconds_bucket",
        "http_requests_total{route=\"/graphql\",method=\"POST\",status=\"2xx\"}",
    ] {
        assert!(
            body.contains(expected),
            "metrics lack {expected:?}:\n{body}"
        );
    }
}

/// An internal error's detail is logged on one line with the request's id (text and JSON
/// alike), so a client's report (`extensions.requestId`) finds it.
#[tokio::test]
async fn an_internal_errors_log_line_carries_its_detail_and_the_request_id() {
    for format in ["json", "text"] {
        let database = TestDatabase::create().await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut api = std::process::Command::new(env!("CARGO_BIN_EXE_reviews-api"))
            .env("DATABASE_URL", database.url())
            .env("API_ADDR", format!("127.0.0.1:{port}"))
            .env("AUTH_JWT_SECRET", TestApp::new_secret())
            .env("LOG_FORMAT", format)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/graphql");
        for _ in 0..100 {
            if http
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        database
            .client()
            .await
            .batch_execute("alter table reviews rename to reviews_gone")
            .await
            .unwrap();
        let body: Value = http
            .post(&url)
            .header("x-request-id", "trace-the-detail")
            .json(&json!({"query": "{ reviews(productId: \"00000000-0000-4000-8000-000000000001\") { edges { cursor } } }"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(error_code(&body), "INTERNAL");
        let _ = api.kill();
        let output = api.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&output.stderr);
        let line = log
            .lines()
            .find(|line| line.contains("internal error") && line.contains("ERROR"))
            .unwrap_or_else(|| panic!("no internal error line in the {format} log:\n{log}"));
        assert!(
            line.contains("trace-the-detail"),
            "the {format} line lacks the request id: {line}"
        );
        assert!(
            line.contains("reviews") && line.contains("does not exist"),
            "the {format} line lacks the detail: {line}"
        );
    }
}
