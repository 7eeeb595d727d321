use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reviews_api::auth::{Role, TokenKeys};
use serde_json::json;

use crate::support::*;

const CREATE: &str = "mutation { createProduct(input: {name: \"Lamp\"}) { id } }";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn reads_need_no_token() {
    let app = TestApp::spawn().await;
    let response = app
        .graphql("{ products { edges { node { id } } } }", json!({}))
        .await;
    assert_eq!(data(&response)["products"]["edges"], json!([]));
}

#[tokio::test]
async fn a_mutation_without_a_token_is_unauthenticated_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let response = app.graphql(CREATE, json!({})).await;
    assert_eq!(error_code(&response), "UNAUTHENTICATED");
    assert_eq!(app.count_rows("products").await, 0);
}

#[tokio::test]
async fn expired_forged_and_malformed_tokens_are_unauthenticated() {
    let app = TestApp::spawn().await;
    let claims = |exp: u64| json!({"sub": "alice", "role": "user", "exp": exp});
    let sign = |secret: &[u8], claims: serde_json::Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let other_secret = TokenKeys::new(&[7u8; 32]);
    let unsigned = {
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(claims(now() + 600))
        )
    };
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &claims(now() + 600),
        &EncodingKey::from_secret(b"whatever-secret-whatever-secret-xx"),
    )
    .unwrap();

    let bad_tokens = [
        other_secret
            .mint("alice", Role::User, Duration::from_secs(600))
            .unwrap(),
        sign(&[7u8; 32], claims(now() - 3600)),
        unsigned,
        hs512,
        "not-a-token".to_owned(),
        sign(
            &[7u8; 32],
            json!({"sub": "alice", "role": "superuser", "exp": now() + 600}),
        ),
    ];
    for token in bad_tokens {
        let response = app.graphql_as(&token, CREATE, json!({})).await;
        assert_eq!(error_code(&response), "UNAUTHENTICATED", "token {token}");
    }

    // Signed with the app's own secret, but expired an hour ago.
    let expired = sign(app.secret.as_bytes(), claims(now() - 3600));
    let response = app.graphql_as(&expired, CREATE, json!({})).await;
    assert_eq!(error_code(&response), "UNAUTHENTICATED");
    assert_eq!(app.count_rows("products").await, 0);
}

#[tokio::test]
async fn an_expired_token_from_the_right_secret_says_it_expired() {
    let secret = "s".repeat(40);
    let keys = TokenKeys::new(secret.as_bytes());
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "role": "user", "exp": now() - 3600}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    assert_eq!(keys.verify(&token).unwrap_err(), "token expired");
}

#[tokio::test]
async fn an_authorization_header_that_is_not_bearer_is_unauthenticated() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .post(app.url("/graphql"))
        .header("authorization", format!("Token {}", app.token("alice")))
        .json(&json!({"query": CREATE}))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "UNAUTHENTICATED");
}

#[tokio::test]
async fn the_token_command_mints_a_token_the_api_accepts() {
    let secret = "a-development-secret-of-enough-length";
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_reviews-api"))
        .args(["token", "--sub", "alice", "--role", "admin", "--ttl", "60"])
        .env("AUTH_JWT_SECRET", secret)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap();
    let claims = TokenKeys::new(secret.as_bytes())
        .verify(token.trim())
        .unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.role, Role::Admin);
    assert!(claims.exp <= now() + 60);
}

#[tokio::test]
async fn the_api_refuses_to_start_without_a_secret_and_names_the_variable() {
    // Even where Rust developers set RUST_BACKTRACE: one clear line, not 30 frames.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_reviews-api"))
        .env_remove("AUTH_JWT_SECRET")
        .env("API_ADDR", "127.0.0.1:0")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AUTH_JWT_SECRET"), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn a_malformed_setting_stops_start_up_naming_the_variable() {
    for (name, value) in [
        ("DB_PORT", "not-a-port"),
        ("API_ADDR", "nowhere"),
        ("DATABASE_URL", "mysql://x"),
        ("LOG_FORMAT", "xml"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_reviews-api"))
            .env("AUTH_JWT_SECRET", "x".repeat(40))
            .env(name, value)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{name}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
}

#[tokio::test]
async fn help_documents_every_variable() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_reviews-api"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for name in [
        "DATABASE_URL",
        "DB_HOST",
        "DB_PORT",
        "DB_USER",
        "DB_PASSWORD",
        "DB_NAME",
        "API_ADDR",
        "AUTH_JWT_SECRET",
        "LOG_FORMAT",
    ] {
        assert!(help.contains(name), "--help lacks {name}");
    }
}

/// A token that was sent must be valid whatever the operation: a forged one on an open read
/// is refused (401, UNAUTHENTICATED), not ignored.
#[tokio::test]
async fn a_forged_or_expired_token_is_refused_even_on_an_open_read() {
    let app = TestApp::spawn().await;
    let claims = |exp: u64| json!({"sub": "alice", "role": "user", "exp": exp});
    let sign = |secret: &[u8], claims: serde_json::Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let read = "{ products(first: 1) { edges { cursor } } }";
    let forged = sign(b"some-other-secret-some-other-secret", claims(now() + 3600));
    let expired = sign(app.secret.as_bytes(), claims(now() - 3600));
    for token in [forged.as_str(), expired.as_str(), "abc.def"] {
        let response = app
            .http
            .post(app.url("/graphql"))
            .bearer_auth(token)
            .json(&json!({"query": read}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{token}");
        assert!(response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");
        assert!(body.get("data").is_none(), "no data for a refused request");
    }
    // Without a token, the read is open.
    let open = app.graphql(read, json!({})).await;
    assert!(open["errors"].is_null(), "{open}");
}
