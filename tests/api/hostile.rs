//! The hostile-input suite: malformed, oversized, deceptive and abusive requests, plus the
//! classic GraphQL audit checks. Each gets a clean error (a JSON body with a code, no 5xx),
//! the process stays up, and the database is unchanged; the operations and forged tokens
//! again over a websocket. The app runs in production mode, as an auditor would meet it.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reviews_api::auth::TokenKeys;
use reviews_api::config::{AppEnv, Limits};
use reviews_api::ApiSettings;
use reviews_db::testing::TestDatabase;
use serde_json::{json, Value};

use crate::support::*;
use crate::websocket;

/// One hostile request: how to send it.
enum Attack {
    /// A raw POST body with a content type.
    Raw(&'static str, String),
    /// A GraphQL operation as JSON, with variables, as the valid user.
    Op(String, Value),
    /// A GET with query parameters.
    Get(Vec<(&'static str, String)>),
    /// A valid operation with a forged Authorization header.
    Token(String),
}

async fn snapshot(app: &TestApp) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "products",
        "reviews",
        "outbox",
        "notifications",
        "jobs",
        "product_ratings",
    ] {
        counts.push(app.count_rows(table).await);
    }
    counts
}

fn b64(value: Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn hostile_requests_get_clean_errors_and_change_nothing() {
    let database = TestDatabase::create().await;
    let db = database.db();
    let secret = TestApp::new_secret();
    let settings = ApiSettings {
        keys: TokenKeys::new(secret.as_bytes()),
        limits: Limits::default(),
        edges: Default::default(),
        app_env: AppEnv::Production,
        shared_limits: None,
    };
    let app = TestApp::spawn_with(database, db, settings, secret).await;
    let product = app.create_product("owner", "Kettle").await;
    app.add_review("someone", &product, 4).await;
    let before = snapshot(&app).await;

    let add = |rating: Value, title: Value, body: Value, product_id: Value| {
        Attack::Op(
            ADD_REVIEW.to_owned(),
            json!({"input": {"productId": product_id, "rating": rating, "title": title, "body": body}}),
        )
    };
    let p = json!(product);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": "alice", "role": "admin", "exp": now + 600});
    let attacks: Vec<(&str, Attack)> = vec![
        // Malformed JSON and wrong shapes.
        ("truncated JSON", Attack::Raw("application/json", "{\"query\": \"{ products".into())),
        ("query is a number", Attack::Raw("application/json", "{\"query\": 1}".into())),
        ("variables are a string", Attack::Raw("application/json", "{\"query\": \"{ products { edges { cursor } } }\", \"variables\": \"x\"}".into())),
        ("null body", Attack::Raw("application/json", "null".into())),
        ("empty body", Attack::Raw("application/json", String::new())),
        ("deeply nested JSON", Attack::Raw("application/json", format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)))),
        ("lone surrogate in JSON", Attack::Raw("application/json", "{\"query\": \"{ product(id: \\\"\\ud800\\\") { id } }\"}".into())),
        ("body over the size limit", Attack::Raw("application/json", format!("{{\"query\": \"{}\"}}", "x".repeat(300_000)))),
        // Wrong types.
        ("rating as a string", add(json!("5"), json!("t"), json!("b"), p.clone())),
        ("rating as a float", add(json!(4.5), json!("t"), json!("b"), p.clone())),
        ("rating beyond i32", add(json!(99_999_999_999i64), json!("t"), json!("b"), p.clone())),
        ("product id as a number", add(json!(3), json!("t"), json!("b"), json!(123))),
        ("title as an object", add(json!(3), json!({"$gt": ""}), json!("b"), p.clone())),
        ("input as a list", Attack::Op(ADD_REVIEW.to_owned(), json!({"input": [1, 2]}))),
        // Huge strings, NUL bytes, odd Unicode.
        ("100k-character title", add(json!(3), json!("x".repeat(100_000)), json!("b"), p.clone())),
        ("NUL in the title", add(json!(3), json!("a\u{0}b"), json!("b"), p.clone())),
        ("escape sequences in the body", add(json!(3), json!("t"), json!("\u{1b}[2J\u{7}"), p.clone())),
        ("zero-width and RTL in the product id", add(json!(3), json!("t"), json!("b"), json!(format!("{product}\u{200b}\u{202e}")))),
        ("only zero-width spaces as the title... and bad rating", add(json!(0), json!("\u{200b}\u{200b}"), json!("b"), p.clone())),
        ("SQL in an id", Attack::Op("query($id: ID!) { review(id: $id) { id } }".into(), json!({"id": "1' or '1'='1"}))),
        ("SQL in a cursor", Attack::Op("query($a: String) { products(after: $a) { edges { cursor } } }".into(), json!({"a": "'; drop table reviews; --"}))),
        ("cursor of another shape", Attack::Op("query($a: String) { products(after: $a) { edges { cursor } } }".into(), json!({"a": b64(json!({"id": 1}))}))),
        // Page sizes.
        ("negative first", Attack::Op("{ products(first: -5) { edges { cursor } } }".into(), json!({}))),
        ("huge first", Attack::Op("{ products(first: 2147483647) { edges { cursor } } }".into(), json!({}))),
        ("first beyond i32", Attack::Op("{ products(first: 99999999999) { edges { cursor } } }".into(), json!({}))),
        // Forged tokens.
        ("alg none", Attack::Token(format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(claims.clone())))),
        ("signed with another secret", Attack::Token(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"not-the-secret-not-the-secret-xx")).unwrap())),
        ("garbage token", Attack::Token("a.b.c".into())),
        ("oversized token", Attack::Token("x".repeat(20_000))),
        // The GraphQL audit checks.
        ("alias overloading", Attack::Op(format!("{{ {} }}", (0..1000).map(|i| format!("a{i}: __typename")).collect::<Vec<_>>().join(" ")), json!({}))),
        ("batch query", Attack::Raw("application/json", json!([{"query": "{ __typename }"}, {"query": "{ __typename }"}]).to_string())),
        ("GET-based CSRF", Attack::Get(vec![("query", "mutation { createProduct(input: {name: \"csrf\"}) { id } }".into())])),
        ("form-based CSRF", Attack::Raw("application/x-www-form-urlencoded", "query=mutation+%7B+createProduct(input%3A+%7Bname%3A+%22csrf%22%7D)+%7B+id+%7D+%7D".into())),
        ("text/plain CSRF", Attack::Raw("text/plain", json!({"query": "mutation { createProduct(input: {name: \"csrf\"}) { id } }"}).to_string())),
        ("field duplication", Attack::Op(format!("{{ products {{ edges {{ {} }} }} }}", "cursor ".repeat(2000)), json!({}))),
        ("field suggestions", Attack::Op("{ prodcts { edges { cursor } } }".into(), json!({}))),
        ("introspection", Attack::Op("{ __schema { queryType { name } } }".into(), json!({}))),
        ("type introspection", Attack::Op("{ __type(name: \"Review\") { fields { name } } }".into(), json!({}))),
        ("circular introspection", Attack::Op("{ __schema { types { fields { type { fields { type { fields { type { name } } } } } } } } }".into(), json!({}))),
        ("directive overloading", Attack::Op(format!("{{ products {} {{ edges {{ cursor }} }} }}", "@include(if: true) ".repeat(500)), json!({}))),
        ("circular fragments", Attack::Op("query { ...A } fragment A on Query { products { edges { cursor } } ...B } fragment B on Query { ...A }".into(), json!({}))),
        ("unknown operation name", Attack::Raw("application/json", json!({"query": "query A { __typename }", "operationName": "B"}).to_string())),
        ("two operations, no name", Attack::Op("query A { __typename } mutation B { deleteReview(id: \"x\") }".into(), json!({}))),
        ("subscription over HTTP", Attack::Op("subscription { nothing }".into(), json!({}))),
        ("GraphiQL in production", Attack::Get(vec![])),
        ("deep nesting", Attack::Op(format!("{{ products {{ edges {{ node {{ {} id {} }} }} }} }}", "reviews { edges { node { product {".repeat(6), "} } } }".repeat(6)), json!({}))),
        ("mutation deleting someone else's review", Attack::Op("mutation($id: ID!) { deleteReview(id: $id) }".into(), json!({"id": uuid::Uuid::new_v4().to_string()}))),
    ];

    // The same operations and tokens over the websocket, afterwards.
    let over_websocket: Vec<(&str, Attack)> = attacks
        .iter()
        .filter_map(|(name, attack)| match attack {
            Attack::Op(query, variables) => {
                Some((*name, Attack::Op(query.clone(), variables.clone())))
            }
            Attack::Token(token) => Some((*name, Attack::Token(token.clone()))),
            _ => None,
        })
        .collect();
    for (name, attack) in attacks {
        let response = match attack {
            Attack::Raw(content_type, body) => app
                .http
                .post(app.url("/graphql"))
                .bearer_auth(app.token("alice"))
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap(),
            Attack::Op(query, variables) => app
                .http
                .post(app.url("/graphql"))
                .bearer_auth(app.token("alice"))
                .json(&json!({"query": query, "variables": variables}))
                .send()
                .await
                .unwrap(),
            Attack::Get(params) => app.http.get(app.url("/graphql")).query(&params).send().await.unwrap(),
            Attack::Token(token) => app
                .http
                .post(app.url("/graphql"))
                .bearer_auth(token)
                .json(&json!({"query": "mutation { createProduct(input: {name: \"forged\"}) { id } }"}))
                .send()
                .await
                .unwrap(),
        };
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert!(status < 500, "{name}: status {status}: {text}");
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{name}: not JSON: {text}"));
        let errors = body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no error: {body}"));
        for error in errors {
            let code = error["extensions"]["code"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: error without a code: {body}"));
            assert_ne!(code, "INTERNAL", "{name}: {body}");
            assert!(
                !error["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("Did you mean"),
                "{name}: suggestions in production"
            );
        }
        assert!(
            body.get("extensions").is_none(),
            "{name}: debug extensions in the response: {body}"
        );
        let health = app.http.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200, "{name}: the process is down");
    }
    assert_eq!(snapshot(&app).await, before, "the database changed");

    // Over the websocket (a real client): each operation gets an error with a code on a
    // socket that stays open (the guards are the same extension); a forged token in
    // connection_init closes the socket saying why.
    let mut socket = websocket::connected(&app, &app.token("alice")).await;
    for (i, (name, attack)) in over_websocket.into_iter().enumerate() {
        match attack {
            Attack::Op(query, variables) => {
                let id = format!("h{i}");
                let body = websocket::operation(&mut socket, &id, &query, variables).await;
                let errors = body["errors"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name} over the websocket: no error: {body}"));
                for error in errors {
                    let code = error["extensions"]["code"].as_str().unwrap_or_else(|| {
                        panic!("{name} over the websocket: error without a code: {body}")
                    });
                    assert_ne!(code, "INTERNAL", "{name} over the websocket: {body}");
                    assert!(
                        !error["message"]
                            .as_str()
                            .unwrap_or("")
                            .contains("Did you mean"),
                        "{name} over the websocket: suggestions in production"
                    );
                }
            }
            Attack::Token(token) => {
                let mut forged = websocket::open(&app).await.unwrap();
                crate::subscriptions::send(
                    &mut forged,
                    json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
                )
                .await;
                let (code, reason) =
                    websocket::close_frame(&mut forged, std::time::Duration::from_secs(5)).await;
                // async-graphql closes a refused connection_init with 1002 and the reason.
                assert!(
                    code == 1002 && reason.contains("token"),
                    "{name} over the websocket: closed with {code} {reason:?}"
                );
            }
            _ => unreachable!("only operations and tokens go over the websocket"),
        }
    }
    assert_eq!(
        snapshot(&app).await,
        before,
        "the database changed over the websocket"
    );
}
