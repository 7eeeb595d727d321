//! Standard GraphQL tooling: graphql-http's audit of the GraphQL-over-HTTP spec, and
//! graphql-js's standard introspection query (what GraphiQL's docs, graphql-codegen, Rover,
//! Postman and Insomnia send), run from Node (tests/node; scripts/test installs it).

use std::path::PathBuf;

use reviews_api::config::{AppEnv, Limits};
use serde_json::{json, Value};

use crate::support::*;

/// Runs `script` from tests/node with `url`; (exit code, stdout, stderr).
async fn node(script: &str, url: String) -> (i32, String, String) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        root.join("node_modules/graphql-http").exists(),
        "run `npm ci` in tests/node (scripts/test does it)"
    );
    let output = tokio::process::Command::new("node")
        .arg(root.join(script))
        .arg(url)
        .output()
        .await
        .expect("node must be installed (scripts/test installs it)");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_graphql_over_http_audit_finds_no_error_and_no_warning() {
    let app = TestApp::spawn().await;
    let (code, stdout, stderr) = node("audit.mjs", app.url("/graphql")).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("audit: ") && summary.ends_with(" ok, 0 warnings, 0 errors"),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_standard_introspection_query_works_in_development_and_is_refused_in_production() {
    let app = TestApp::spawn().await;
    let (code, stdout, stderr) = node("introspect.mjs", app.url("/graphql")).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let fields: Vec<&str> = stdout.lines().collect();
    for field in [
        "product",
        "products",
        "review",
        "reviews",
        "notifications",
        "deadJobs",
    ] {
        assert!(fields.contains(&field), "Query's fields: {fields:?}");
    }

    let secret = TestApp::new_secret();
    let mut settings =
        reviews_api::ApiSettings::development(reviews_api::auth::TokenKeys::new(secret.as_bytes()));
    settings.app_env = AppEnv::Production;
    settings.limits = Limits::default();
    let database = reviews_db::testing::TestDatabase::create().await;
    let db = database.db();
    let production = TestApp::spawn_with(database, db, settings, secret).await;
    let (code, _, stderr) = node("introspect.mjs", production.url("/graphql")).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("introspection is disabled"), "{stderr}");
}

#[tokio::test]
async fn introspection_has_a_depth_bound_of_its_own_and_user_queries_keep_theirs() {
    let app = TestApp::spawn().await;
    let nest = |levels: usize| {
        format!(
            "{{ __schema {{ types {{ {} name {} }} }} }}",
            "fields { type { ".repeat(levels),
            "} } ".repeat(levels)
        )
    };
    // __schema, types, 2 levels per repetition and `name`: 19 levels pass, 23 do not.
    let within = app.graphql(&nest(8), json!({})).await;
    data(&within);
    let beyond = app.graphql(&nest(10), json!({})).await;
    assert_eq!(error_code(&beyond), "BAD_USER_INPUT");
    assert!(
        error_message(&beyond).contains("introspection is nested too deep: 23 levels (at most 20"),
        "{beyond}"
    );
    // Introspection next to a user query does not lend the user query its bound.
    let deep_user = format!(
        "{{ __typename {} cursor {} }}",
        "products { edges { node { reviews { edges { node { product { ".repeat(2),
        "} } } } } } } ".repeat(2)
    );
    let refused = app.graphql(&deep_user, json!({})).await;
    assert!(
        error_message(&refused).contains("(at most 12; GRAPHQL_MAX_DEPTH)"),
        "{refused}"
    );
}

/// Posts `query` accepting `accept`; (status, content type, body).
async fn post(app: &TestApp, accept: &str, query: &str, variables: Value) -> (u16, String, Value) {
    let response = app
        .http
        .post(app.url("/graphql"))
        .header("accept", accept)
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (status, content_type, response.json().await.unwrap())
}

#[tokio::test]
async fn graphql_response_json_says_with_its_status_whether_the_request_was_valid() {
    let app = TestApp::spawn().await;
    let modern = "application/graphql-response+json";
    let variables = "query($id: ID!) { product(id: $id) { name } }";
    for (query, vars, why) in [
        ("{ products { ", json!({}), "parse"),
        ("{ nosuchfield }", json!({}), "validation"),
        (
            variables,
            json!({"id": {"not": "an id"}}),
            "variable coercion",
        ),
    ] {
        let (status, content_type, body) = post(&app, modern, query, vars.clone()).await;
        assert_eq!(status, 400, "{why}: {body}");
        assert!(content_type.starts_with(modern), "{why}: {content_type}");
        assert!(body.get("data").is_none(), "{why}: no data entry: {body}");
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{why}");
        // The legacy type keeps the legacy answer: 200, whatever the error.
        let (status, content_type, _) = post(&app, "application/json", query, vars).await;
        assert_eq!(
            (status, content_type.as_str()),
            (200, "application/json"),
            "{why}"
        );
    }
    // A request that ran is 200 even when a field failed: the errors sit next to the data.
    let (status, content_type, body) = post(
        &app,
        "application/json;q=0.9, application/graphql-response+json",
        variables,
        json!({"id": uuid::Uuid::new_v4().to_string()}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with(modern));
    assert!(body.get("data").is_some(), "{body}");
    // No Accept, or only */*: the legacy type.
    let (_, content_type, _) = post(&app, "*/*", "{ __typename }", json!({})).await;
    assert_eq!(content_type, "application/json");
}
