//! Security: tokens, admin-only operations, request limits, CSRF rules, rate limits,
//! production mode and least privilege in Postgres.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reviews_api::auth::TokenKeys;
use reviews_api::config::{AppEnv, Limits};
use reviews_api::ApiSettings;
use reviews_db::testing::TestDatabase;
use serde_json::{json, Value};

use crate::support::*;

const CREATE: &str = "mutation { createProduct(input: {name: \"Lamp\"}) { id } }";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn app_with(
    limits: Limits,
    app_env: AppEnv,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> TestApp {
    let database = TestDatabase::create().await;
    let db = database.db();
    let secret = TestApp::new_secret();
    let keys = TokenKeys::new(secret.as_bytes())
        .with_issuer(issuer)
        .with_audience(audience);
    TestApp::spawn_with(
        database,
        db,
        ApiSettings {
            keys,
            limits,
            edges: Default::default(),
            app_env,
            shared_limits: None,
        },
        secret,
    )
    .await
}

fn sign(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn post_raw(app: &TestApp, content_type: &str, body: &str) -> (u16, Value) {
    let response = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", content_type)
        .bearer_auth(app.token("alice"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn not_yet_valid_oversized_and_wrong_issuer_or_audience_tokens_are_unauthenticated() {
    let app = app_with(
        Limits::default(),
        AppEnv::Development,
        Some("reviews-auth"),
        Some("reviews-api"),
    )
    .await;
    let base = |extra: Value| {
        let mut claims = json!({"sub": "alice", "role": "user", "exp": now() + 600, "iss": "reviews-auth", "aud": "reviews-api"});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        sign(&app.secret, claims)
    };
    let good = base(json!({}));
    data(&app.graphql_as(&good, CREATE, json!({})).await);

    for (token, why) in [
        (base(json!({"nbf": now() + 3600})), "not yet valid"),
        (base(json!({"iss": "someone-else"})), "wrong issuer"),
        (base(json!({"aud": "another-api"})), "wrong audience"),
        (
            sign(
                &app.secret,
                json!({"sub": "alice", "role": "user", "exp": now() + 600}),
            ),
            "no issuer or audience",
        ),
        (base(json!({"pad": "x".repeat(5000)})), "oversized"),
    ] {
        let response = app.graphql_as(&token, CREATE, json!({})).await;
        assert_eq!(error_code(&response), "UNAUTHENTICATED", "{why}");
    }
    assert_eq!(app.count_rows("products").await, 1);
}

#[tokio::test]
async fn queue_operations_are_admin_only() {
    let app = TestApp::spawn().await;
    let client = app.database.client().await;
    client
        .batch_execute("insert into jobs (kind, attempts) values ('notify_owner', 10)")
        .await
        .unwrap();
    let conn = app.db.conn().await.unwrap();
    reviews_db::jobs::bury_job(
        &conn,
        reviews_db::jobs::Attempt {
            job_id: 1,
            attempt: 10,
        },
        "it broke",
    )
    .await
    .unwrap();

    let operations = [
        ("{ deadJobs { id kind lastError } }", json!({})),
        ("{ retryPolicies { kind maxAttempts } }", json!({})),
        ("mutation { replayDeadJob(id: \"1\") }", json!({})),
        ("mutation { updateRetryPolicy(input: {kind: \"notify_owner\", maxAttempts: 3}) { kind } }", json!({})),
    ];
    for (query, variables) in &operations {
        assert_eq!(
            error_code(&app.graphql(query, variables.clone()).await),
            "UNAUTHENTICATED",
            "{query}"
        );
        assert_eq!(
            error_code(
                &app.graphql_as(&app.token("alice"), query, variables.clone())
                    .await
            ),
            "FORBIDDEN",
            "{query}"
        );
    }
    assert_eq!(app.count_rows("jobs where status = 'dead'").await, 1);

    let admin = app.admin_token("root");
    let dead = app.graphql_as(&admin, operations[0].0, json!({})).await;
    assert_eq!(data(&dead)["deadJobs"][0]["lastError"], "it broke");
    let policies = app.graphql_as(&admin, operations[1].0, json!({})).await;
    assert_eq!(
        data(&policies)["retryPolicies"].as_array().unwrap().len(),
        3
    );
    assert_eq!(
        data(&app.graphql_as(&admin, operations[2].0, json!({})).await)["replayDeadJob"],
        true
    );
    assert_eq!(
        data(&app.graphql_as(&admin, operations[2].0, json!({})).await)["replayDeadJob"],
        false
    );
    data(&app.graphql_as(&admin, operations[3].0, json!({})).await);
    assert_eq!(
        app.count_rows("retry_policies where max_attempts = 3")
            .await,
        1
    );

    for (query, code) in [
        ("mutation { replayDeadJob(id: \"99\") }", "NOT_FOUND"),
        ("mutation { replayDeadJob(id: \"x\") }", "BAD_USER_INPUT"),
        ("mutation { updateRetryPolicy(input: {kind: \"nope\", maxAttempts: 3}) { kind } }", "NOT_FOUND"),
        ("mutation { updateRetryPolicy(input: {kind: \"notify_owner\", jitter: 2}) { kind } }", "BAD_USER_INPUT"),
        ("mutation { updateRetryPolicy(input: {kind: \"notify_owner\", baseDelayMs: 900000000}) { kind } }", "BAD_USER_INPUT"),
    ] {
        assert_eq!(error_code(&app.graphql_as(&admin, query, json!({})).await), code, "{query}");
    }
}

#[tokio::test]
async fn deep_complex_aliased_and_directive_heavy_queries_are_refused() {
    let app = TestApp::spawn().await;
    let product = app.create_product("owner", "Kettle").await;
    let deep = format!(
        "{{ product(id: \"{product}\") {{ {} id {} }} }}",
        "reviews(first: 1) { edges { node { product {".repeat(4),
        "} } } }".repeat(4)
    );
    let complex = "{ products(first: 100) { edges { node { reviews(first: 100) { edges { node { id title } } } } } } }";
    let aliases = format!(
        "{{ {} }}",
        (0..1000)
            .map(|i| format!("a{i}: products {{ edges {{ cursor }} }}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let directives = format!(
        "{{ products {} {{ edges {{ cursor }} }} }}",
        "@include(if: true) ".repeat(20)
    );
    for (query, why, says) in [
        (
            deep.as_str(),
            "depth",
            "query is nested too deep: 18 levels (at most 12; GRAPHQL_MAX_DEPTH)",
        ),
        (
            complex,
            "complexity",
            "query is too complex: at most 5000 (GRAPHQL_MAX_COMPLEXITY",
        ),
        (
            aliases.as_str(),
            "aliases",
            "too many aliases: 1000 (at most 30; GRAPHQL_MAX_ALIASES)",
        ),
        (directives.as_str(), "directives", "directive"),
    ] {
        let response = app.graphql_with(None, query, json!({})).await;
        assert_eq!(error_code(&response), "BAD_USER_INPUT", "{why}: {response}");
        // Each refusal says the limit it hit, and the setting that moves it.
        assert!(
            error_message(&response).contains(says),
            "{why}: {}",
            error_message(&response)
        );
    }
}

#[tokio::test]
async fn csrf_mutations_need_post_with_json_and_get_runs_queries_only() {
    let app = TestApp::spawn().await;
    let body = json!({"query": CREATE}).to_string();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, response) = post_raw(&app, content_type, &body).await;
        assert_eq!(status, 415, "{content_type}");
        assert_eq!(error_code(&response), "BAD_USER_INPUT");
    }
    let (status, _) = post_raw(&app, "application/json; charset=utf-8", &body).await;
    assert_eq!(status, 200);

    let get = |query: &str| {
        app.http
            .get(app.url("/graphql"))
            .bearer_auth(app.token("alice"))
            .query(&[("query", query)])
            .send()
    };
    let response = get(CREATE).await.unwrap();
    assert_eq!(response.status(), 405);
    let response = get("{ products { edges { node { name } } } }")
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let read: Value = response.json().await.unwrap();
    assert_eq!(data(&read)["products"]["edges"][0]["node"]["name"], "Lamp");
    assert_eq!(app.count_rows("products").await, 1);
}

#[tokio::test]
async fn mutations_are_rate_limited_per_user_and_per_ip_with_a_retry_hint() {
    let limits = Limits {
        mutations_per_user_per_minute: 3,
        mutations_per_ip_per_minute: 5,
        ..Limits::default()
    };
    let app = app_with(limits, AppEnv::Development, None, None).await;
    let send = |user: &str| {
        app.http
            .post(app.url("/graphql"))
            .bearer_auth(app.token(user))
            .json(&json!({"query": CREATE}))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(send("alice").await.unwrap().status(), 200);
    }
    let limited = send("alice").await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(
        limited.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let body: Value = limited.json().await.unwrap();
    assert_eq!(error_code(&body), "RATE_LIMITED");
    assert!(
        body["errors"][0]["extensions"]["retryAfterSeconds"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // Another user from the same address still has the IP's allowance (5), then not.
    assert_eq!(send("bob").await.unwrap().status(), 200);
    assert_eq!(send("carol").await.unwrap().status(), 429);
    // Reads are not limited.
    assert!(app
        .graphql("{ products { edges { cursor } } }", json!({}))
        .await
        .get("errors")
        .is_none());
    assert_eq!(app.count_rows("products").await, 4);
}

#[tokio::test]
async fn a_request_that_outlives_its_deadline_is_cancelled_with_timeout() {
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let app = app_with(limits, AppEnv::Development, None, None).await;
    let mut blocker = app.database.client().await;
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("lock table products in access exclusive mode")
        .await
        .unwrap();
    let response = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({"query": "{ products { edges { cursor } } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "TIMEOUT");
    lock.rollback().await.unwrap();
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn production_turns_off_graphiql_introspection_and_suggestions() {
    let prod = app_with(Limits::default(), AppEnv::Production, None, None).await;
    let dev = TestApp::spawn().await;
    let introspection = "{ __schema { types { name } } }";
    let typo = "{ prodcts { edges { cursor } } }";

    let refused = prod.graphql(introspection, json!({})).await;
    assert!(refused.get("errors").is_some(), "{refused}");
    assert!(dev
        .graphql(introspection, json!({}))
        .await
        .get("errors")
        .is_none());
    let circular = "{ __schema { types { fields { type { fields { type { fields { type { fields { name } } } } } } } } } }";
    assert!(prod
        .graphql(circular, json!({}))
        .await
        .get("errors")
        .is_some());

    assert!(!error_message(&prod.graphql(typo, json!({})).await).contains("Did you mean"));
    assert!(error_message(&dev.graphql(typo, json!({})).await).contains("Did you mean"));

    assert_eq!(
        prod.http
            .get(prod.url("/graphql"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        dev.http
            .get(dev.url("/graphql"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn an_internal_error_carries_a_request_id_and_no_detail() {
    let app = TestApp::spawn().await;
    app.database
        .client()
        .await
        .batch_execute("alter table reviews rename to reviews_gone")
        .await
        .unwrap();
    let response = app
        .http
        .post(app.url("/graphql"))
        .header("x-request-id", "trace-internal")
        .json(&json!({"query": "{ reviews(productId: \"00000000-0000-4000-8000-000000000001\") { edges { cursor } } }"}))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "INTERNAL");
    assert_eq!(
        body["errors"][0]["extensions"]["requestId"],
        "trace-internal"
    );
    let text = body.to_string();
    for leak in [
        "reviews_gone",
        "relation",
        "SELECT",
        "select",
        "constraint",
        "ERROR",
    ] {
        assert!(!text.contains(leak), "leaks {leak}: {text}");
    }
}
