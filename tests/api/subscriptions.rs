//! Subscriptions over websocket, both protocols, fed by the worker's relay and recompute.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, protocol: &str, init: Value) -> Socket {
    let mut request = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    send(
        &mut socket,
        json!({"type": "connection_init", "payload": init}),
    )
    .await;
    socket
}

pub async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string()))
        .await
        .unwrap();
}

/// The next JSON message other than keep-alives, or None when the socket closes.
async fn next(socket: &mut Socket, wait: Duration) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(wait, socket.next())
            .await
            .expect("no message in time")?;
        match message.ok()? {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if matches!(value["type"].as_str(), Some("ka" | "ping" | "pong")) {
                    continue;
                }
                return Some(value);
            }
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

const REVIEW_ADDED: &str =
    "subscription($p: ID!) { reviewAdded(productId: $p) { id rating authorId product { name } } }";
const RATING_CHANGED: &str =
    "subscription($p: ID!) { ratingChanged(productId: $p) { count average histogram } }";

#[tokio::test]
async fn a_graphql_transport_ws_client_sees_review_added_within_a_second_and_rating_changed_after_the_recompute(
) {
    let app = TestApp::spawn().await;
    let worker = app.start_worker().await;
    let product = app.create_product("owner", "Kettle").await;
    let other = app.create_product("owner", "Toaster").await;
    let mut socket = connect(
        &app,
        "graphql-transport-ws",
        json!({"Authorization": format!("Bearer {}", app.token("watcher"))}),
    )
    .await;
    assert_eq!(
        next(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "connection_ack"
    );
    send(&mut socket, json!({"id": "1", "type": "subscribe", "payload": {"query": REVIEW_ADDED, "variables": {"p": product}}})).await;
    send(&mut socket, json!({"id": "2", "type": "subscribe", "payload": {"query": RATING_CHANGED, "variables": {"p": product}}})).await;
    // Let the subscriptions register before the mutation.
    tokio::time::sleep(Duration::from_millis(200)).await;

    app.add_review("bob", &other, 1).await;
    let committed = Instant::now();
    app.add_review("alice", &product, 4).await;
    let mut added = None;
    let mut rating = None;
    while added.is_none() || rating.is_none() {
        let message = next(&mut socket, Duration::from_secs(10))
            .await
            .expect("socket open");
        assert_eq!(message["type"], "next", "{message}");
        match message["id"].as_str() {
            Some("1") => {
                added = Some((
                    message["payload"]["data"]["reviewAdded"].clone(),
                    committed.elapsed(),
                ));
            }
            Some("2") => rating = Some(message["payload"]["data"]["ratingChanged"].clone()),
            _ => panic!("unexpected {message}"),
        }
    }
    let (review, latency) = added.unwrap();
    assert_eq!(
        review["authorId"], "alice",
        "only the subscribed product's reviews"
    );
    assert_eq!(review["product"]["name"], "Kettle");
    assert!(
        latency < Duration::from_secs(1),
        "reviewAdded came {latency:?} after the mutation"
    );
    assert_eq!(
        rating.unwrap(),
        json!({"count": 1, "average": 4.0, "histogram": [0, 0, 0, 1, 0]})
    );
    worker.stop().await;
}

#[tokio::test]
async fn the_older_graphql_ws_protocol_works_too() {
    let app = TestApp::spawn().await;
    let worker = app.start_worker().await;
    let product = app.create_product("owner", "Kettle").await;
    let mut socket = connect(&app, "graphql-ws", json!({})).await;
    assert_eq!(
        next(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "connection_ack"
    );
    send(&mut socket, json!({"id": "1", "type": "start", "payload": {"query": REVIEW_ADDED, "variables": {"p": product}}})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.add_review("alice", &product, 5).await;
    let message = next(&mut socket, Duration::from_secs(10)).await.unwrap();
    assert_eq!(message["type"], "data", "{message}");
    assert_eq!(message["payload"]["data"]["reviewAdded"]["rating"], 5);
    worker.stop().await;
}

#[tokio::test]
async fn a_forged_token_in_connection_init_closes_the_connection_and_bad_arguments_are_errors() {
    let app = TestApp::spawn().await;
    let mut socket = connect(
        &app,
        "graphql-transport-ws",
        json!({"Authorization": "Bearer forged.token.here"}),
    )
    .await;
    let answer = next(&mut socket, Duration::from_secs(5)).await;
    assert!(
        answer.is_none() || answer.as_ref().unwrap()["type"] != "connection_ack",
        "{answer:?}"
    );

    let mut socket = connect(&app, "graphql-transport-ws", json!({})).await;
    assert_eq!(
        next(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "connection_ack"
    );
    send(&mut socket, json!({"id": "1", "type": "subscribe", "payload": {"query": REVIEW_ADDED, "variables": {"p": "not-a-uuid"}}})).await;
    let message = next(&mut socket, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        message["payload"]["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{message}"
    );
}

#[tokio::test]
async fn one_rating_changed_notification_naming_several_products_reaches_each_ones_subscribers() {
    let app = TestApp::spawn().await;
    let kettle = app.create_product("owner", "Kettle").await;
    let toaster = app.create_product("owner", "Toaster").await;
    let mut socket = connect(&app, "graphql-transport-ws", json!({})).await;
    assert_eq!(
        next(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "connection_ack"
    );
    for (id, product) in [("1", &kettle), ("2", &toaster)] {
        send(&mut socket, json!({"id": id, "type": "subscribe", "payload": {"query": RATING_CHANGED, "variables": {"p": product}}})).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A relay batch's changes, as apply_rating_jobs announces them (db/migrations/0022), with
    // a part that is no id: it is skipped, the others are published.
    app.database
        .client()
        .await
        .execute(
            "select pg_notify('rating_changed', $1)",
            &[&format!("{kettle},not-an-id,{toaster}")],
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let message = next(&mut socket, Duration::from_secs(10))
            .await
            .expect("socket open");
        assert_eq!(message["type"], "next", "{message}");
        assert_eq!(
            message["payload"]["data"]["ratingChanged"],
            json!({"count": 0, "average": 0.0, "histogram": [0, 0, 0, 0, 0]})
        );
        seen.push(message["id"].as_str().unwrap().to_owned());
    }
    seen.sort();
    assert_eq!(seen, ["1", "2"]);
}
