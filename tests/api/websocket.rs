//! The same guards on every transport, and the websocket's own edges, tried with a real
//! websocket client (tokio-tungstenite speaking graphql-transport-ws).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reviews_api::auth::TokenKeys;
use reviews_api::config::{AppEnv, Edges, Limits};
use reviews_api::ApiSettings;
use reviews_db::testing::TestDatabase;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::subscriptions::{send, Socket};
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

/// Opens a socket (graphql-transport-ws) without sending anything.
pub(crate) async fn open(app: &TestApp) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// Opens a socket and completes `connection_init` with `token`.
pub(crate) async fn connected(app: &TestApp, token: &str) -> Socket {
    let mut socket = open(app).await.unwrap();
    send(
        &mut socket,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    let ack = reply(&mut socket).await.expect("an ack");
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    socket
}

/// The next JSON message, or None when the socket closed (then `closed_with` tells how).
async fn reply(socket: &mut Socket) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("no message within 10 s")?
            .ok()?;
        match message {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if matches!(value["type"].as_str(), Some("ping" | "pong" | "ka")) {
                    continue;
                }
                return Some(value);
            }
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// The close code the server sends, waiting at most `limit`.
async fn closed_with(socket: &mut Socket, limit: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("the socket was not closed in time");
        match message {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// The close frame the server sends (code and reason), waiting at most `limit`.
pub(crate) async fn close_frame(socket: &mut Socket, limit: Duration) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("the socket was not closed in time");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Some(Ok(Message::Close(None))) | Some(Err(_)) | None => {
                panic!("the socket closed without a close frame")
            }
            Some(Ok(_)) => continue,
        }
    }
}

/// Runs one operation on the socket and returns its first payload.
pub(crate) async fn operation(
    socket: &mut Socket,
    id: &str,
    query: &str,
    variables: Value,
) -> Value {
    send(
        socket,
        json!({"id": id, "type": "subscribe", "payload": {"query": query, "variables": variables}}),
    )
    .await;
    loop {
        let message = reply(socket).await.expect("the socket stays open");
        if message["id"] != id {
            continue;
        }
        match message["type"].as_str() {
            Some("next") => return message["payload"].clone(),
            Some("error") => return json!({"errors": message["payload"]}),
            other => panic!("unexpected {other:?}: {message}"),
        }
    }
}

fn aliased_creates(count: usize) -> String {
    let fields: Vec<String> = (0..count)
        .map(|i| format!("p{i}: createProduct(input: {{name: \"n{i}\"}}) {{ id }}"))
        .collect();
    format!("mutation {{ {} }}", fields.join(" "))
}

#[tokio::test]
async fn mutations_over_the_websocket_are_guarded_exactly_as_over_http() {
    let limits = Limits {
        mutations_per_user_per_minute: 5,
        ..Limits::default()
    };
    let app = app_with(limits, Edges::default()).await;
    let mut socket = connected(&app, &app.token("mallory")).await;

    // Aliases: the same limit as HTTP.
    let too_many = operation(&mut socket, "1", &aliased_creates(31), json!({})).await;
    assert_eq!(error_code(&too_many), "BAD_USER_INPUT", "{too_many}");
    assert!(
        error_message(&too_many).contains("too many aliases: 31"),
        "{too_many}"
    );
    // More root mutation fields in one request than a minute allows.
    let too_big = operation(&mut socket, "2", &aliased_creates(6), json!({})).await;
    assert!(error_message(&too_big).contains("too many mutations in one request"));
    // Each root field counts: 2 + 2 pass, the next 2 would make 6 > 5.
    for id in ["3", "4"] {
        let created = operation(&mut socket, id, &aliased_creates(2), json!({})).await;
        assert!(created["errors"].is_null(), "{created}");
    }
    let limited = operation(&mut socket, "5", &aliased_creates(2), json!({})).await;
    assert_eq!(error_code(&limited), "RATE_LIMITED", "{limited}");
    assert!(
        limited["errors"][0]["extensions"]["retryAfterSeconds"]
            .as_u64()
            .unwrap()
            >= 1
    );
    // The same user over HTTP shares the budget.
    let over_http = app
        .graphql_as(&app.token("mallory"), &aliased_creates(2), json!({}))
        .await;
    assert_eq!(error_code(&over_http), "RATE_LIMITED", "{over_http}");
    assert_eq!(
        app.count_rows("products").await,
        4,
        "only the allowed ones were made"
    );
}

#[tokio::test]
async fn the_socket_closes_when_its_token_expires() {
    let app = app_with(Limits::default(), Edges::default()).await;
    let short = app
        .keys
        .mint(
            "brief",
            reviews_api::auth::Role::User,
            Duration::from_secs(2),
        )
        .unwrap();
    let mut socket = connected(&app, &short).await;
    assert_eq!(
        closed_with(&mut socket, Duration::from_secs(10)).await,
        Some(4401)
    );
}

#[tokio::test]
async fn a_socket_without_connection_init_is_closed_after_the_timeout() {
    let edges = Edges {
        ws_init_timeout: Duration::from_millis(500),
        ..Edges::default()
    };
    let app = app_with(Limits::default(), edges).await;
    let mut socket = open(&app).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        closed_with(&mut socket, Duration::from_secs(5)).await,
        Some(4408)
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_message_over_256_kib_closes_the_socket() {
    let app = app_with(Limits::default(), Edges::default()).await;
    let mut socket = connected(&app, &app.token("big")).await;
    let huge = json!({"id": "1", "type": "subscribe", "payload": {"query": format!("{{ products {{ edges {{ cursor }} }} }} #{}", "x".repeat(300 * 1024))}});
    let _ = socket.send(Message::Text(huge.to_string())).await;
    assert_eq!(
        closed_with(&mut socket, Duration::from_secs(5)).await,
        Some(1009)
    );
}

#[tokio::test]
async fn sockets_per_process_are_capped_and_a_closed_one_frees_its_place() {
    let edges = Edges {
        ws_max_sockets: 2,
        ws_max_sockets_per_client: 10,
        ..Edges::default()
    };
    let app = app_with(Limits::default(), edges).await;
    let first = connected(&app, &app.token("a")).await;
    let _second = connected(&app, &app.token("b")).await;
    let refused = open(&app).await.expect_err("a third socket in the process");
    assert!(refused.to_string().contains("503"), "{refused}");
    drop(first);
    // The server notices the closed socket; then a new one is let in.
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok(socket) = open(&app).await {
            reopened = Some(socket);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened.is_some(), "a closed socket gives its place back");
}

#[tokio::test]
async fn sockets_per_client_and_operations_per_socket_are_capped() {
    let edges = Edges {
        ws_max_sockets_per_client: 2,
        ws_max_subscriptions_per_socket: 2,
        ..Edges::default()
    };
    let app = app_with(Limits::default(), edges).await;
    let product = app.create_product("owner", "Kettle").await;
    let mut first = connected(&app, &app.token("a")).await;
    let _second = connected(&app, &app.token("a")).await;
    let refused = open(&app)
        .await
        .expect_err("a third socket from one address");
    assert!(refused.to_string().contains("503"), "{refused}");

    let subscribe = "subscription($p: ID!) { reviewAdded(productId: $p) { id } }";
    for id in ["1", "2"] {
        send(&mut first, json!({"id": id, "type": "subscribe", "payload": {"query": subscribe, "variables": {"p": product}}})).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = operation(&mut first, "3", subscribe, json!({"p": product})).await;
    assert!(
        error_message(&third).contains("too many operations on this socket: at most 2"),
        "{third}"
    );
}

#[tokio::test]
async fn each_operation_on_a_socket_reads_fresh_data() {
    let app = app_with(Limits::default(), Edges::default()).await;
    let worker = app.start_worker().await;
    let product = app.create_product("owner", "Kettle").await;
    let mut socket = connected(&app, &app.token("reader")).await;
    let rating = "query($p: ID!) { product(id: $p) { rating { count } } }";
    let before = operation(&mut socket, "1", rating, json!({"p": product})).await;
    assert_eq!(before["data"]["product"]["rating"]["count"], 0, "{before}");
    app.add_review("alice", &product, 5).await;
    let mut count = json!(0);
    for attempt in 0..50 {
        let after = operation(
            &mut socket,
            &format!("r{attempt}"),
            rating,
            json!({"p": product}),
        )
        .await;
        count = after["data"]["product"]["rating"]["count"].clone();
        if count == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count, 1,
        "a later operation on the same socket saw a cached rating"
    );
    worker.stop().await;
}
