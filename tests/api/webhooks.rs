//! Webhook endpoints over GraphQL: admin only, validated, the secret shown once.

use serde_json::json;

use crate::support::*;

const CREATE: &str = "mutation($input: CreateWebhookInput!) {
    createWebhook(input: $input) { secret webhook { id url eventTypes description paused } }
}";

#[tokio::test]
async fn an_admin_registers_changes_rotates_pauses_and_deletes_an_endpoint() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token("root");
    let created = app
        .graphql_as(&admin, CREATE, json!({"input": {"url": "https://hooks.example.com/reviews", "eventTypes": ["review.created"], "description": "CRM"}}))
        .await;
    let created = &data(&created)["createWebhook"];
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() > 30);
    let id = created["webhook"]["id"].as_str().unwrap();

    let listed = app
        .graphql_as(
            &admin,
            "{ webhooks { id url eventTypes paused } }",
            json!({}),
        )
        .await;
    assert_eq!(data(&listed)["webhooks"][0]["id"], id);
    assert!(
        !listed.to_string().contains(secret),
        "the secret is shown only once"
    );

    let update = "mutation($id: ID!, $input: UpdateWebhookInput!) {
        updateWebhook(id: $id, input: $input) { secret webhook { eventTypes paused } } }";
    let paused = app.graphql_as(&admin, update, json!({"id": id, "input": {"paused": true, "eventTypes": ["review.created", "review.deleted"]}})).await;
    assert_eq!(data(&paused)["updateWebhook"]["webhook"]["paused"], true);
    assert_eq!(data(&paused)["updateWebhook"]["secret"], json!(null));
    let rotated = app
        .graphql_as(
            &admin,
            update,
            json!({"id": id, "input": {"rotateSecret": true}}),
        )
        .await;
    let new_secret = data(&rotated)["updateWebhook"]["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);

    let deliveries = "query($id: ID!) { webhookDeliveries(webhookId: $id, first: 5) { edges { node { attempt statusCode } } } }";
    assert_eq!(
        data(&app.graphql_as(&admin, deliveries, json!({"id": id})).await)["webhookDeliveries"]
            ["edges"],
        json!([])
    );

    let deleted = app
        .graphql_as(
            &admin,
            "mutation($id: ID!) { deleteWebhook(id: $id) }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(data(&deleted)["deleteWebhook"], id);
    let again = app
        .graphql_as(
            &admin,
            "mutation($id: ID!) { deleteWebhook(id: $id) }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(error_code(&again), "NOT_FOUND");
}

#[tokio::test]
async fn webhook_operations_are_admin_only_and_validate_their_input() {
    let app = TestApp::spawn().await;
    let input =
        |url: &str, types: serde_json::Value| json!({"input": {"url": url, "eventTypes": types}});
    let good = input("https://hooks.example.com/x", json!(["review.created"]));
    assert_eq!(
        error_code(&app.graphql(CREATE, good.clone()).await),
        "UNAUTHENTICATED"
    );
    assert_eq!(
        error_code(&app.graphql_as(&app.token("alice"), CREATE, good).await),
        "FORBIDDEN"
    );
    assert_eq!(
        error_code(
            &app.graphql_as(&app.token("alice"), "{ webhooks { id } }", json!({}))
                .await
        ),
        "FORBIDDEN"
    );

    let admin = app.admin_token("root");
    for (variables, why) in [
        (input("not a url", json!(["review.created"])), "not a URL"),
        (
            input("ftp://hooks.example.com/x", json!(["review.created"])),
            "scheme",
        ),
        (
            input(
                "https://user:pw@hooks.example.com/x",
                json!(["review.created"]),
            ),
            "credentials",
        ),
        (
            input(
                &format!("https://hooks.example.com/{}", "x".repeat(2001)),
                json!(["review.created"]),
            ),
            "too long",
        ),
        (
            input("https://hooks.example.com/x", json!([])),
            "no event types",
        ),
        (
            input("https://hooks.example.com/x", json!(["review.exploded"])),
            "unknown event type",
        ),
    ] {
        assert_eq!(
            error_code(&app.graphql_as(&admin, CREATE, variables).await),
            "BAD_USER_INPUT",
            "{why}"
        );
    }
    assert_eq!(app.count_rows("webhooks").await, 0);
    let missing = app
        .graphql_as(
            &admin,
            "query($id: ID!) { webhookDeliveries(webhookId: $id) { edges { cursor } } }",
            json!({"id": uuid::Uuid::new_v4().to_string()}),
        )
        .await;
    assert_eq!(error_code(&missing), "NOT_FOUND");
}
