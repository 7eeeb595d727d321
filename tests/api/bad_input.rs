use serde_json::{json, Value};

use crate::support::*;

async fn assert_refused(app: &TestApp, token: &str, query: &str, variables: Value, why: &str) {
    let response = app.graphql_as(token, query, variables).await;
    assert_eq!(
        error_code(&response),
        "BAD_USER_INPUT",
        "{why}: {response:#}"
    );
    let message = error_message(&response);
    assert!(!message.is_empty(), "{why}: empty message");
}

#[tokio::test]
async fn bad_review_fields_are_refused_with_bad_user_input_and_change_nothing() {
    let app = TestApp::spawn().await;
    let product = app.create_product("owner", "Kettle").await;
    let token = app.token("alice");
    let review = |rating: Value, title: &str, body: &str| json!({"input": {"productId": product, "rating": rating, "title": title, "body": body}});
    let cases = [
        (review(json!(0), "t", "b"), "rating 0"),
        (review(json!(6), "t", "b"), "rating 6"),
        (review(json!(-3), "t", "b"), "negative rating"),
        (review(json!("five"), "t", "b"), "rating of the wrong type"),
        (review(json!(3), "", "b"), "empty title"),
        (review(json!(3), "   ", "b"), "blank title"),
        (review(json!(3), "t", ""), "empty body"),
        (review(json!(3), &"x".repeat(201), "b"), "title too long"),
        (review(json!(3), "t", &"x".repeat(10_001)), "body too long"),
        (review(json!(3), "t", "nul \u{0} byte"), "NUL in body"),
        (
            json!({"input": {"productId": "not-a-uuid", "rating": 3, "title": "t", "body": "b"}}),
            "malformed product id",
        ),
        (
            json!({"input": {"productId": product, "rating": 3, "title": "t", "body": "b", "extra": 1}}),
            "unknown input field",
        ),
        (
            json!({"input": {"productId": product, "rating": 3, "title": "t"}}),
            "missing body",
        ),
    ];
    for (variables, why) in cases {
        assert_refused(&app, &token, ADD_REVIEW, variables, why).await;
    }
    assert_eq!(app.count_rows("reviews").await, 0);

    let long_ok = app
        .graphql_as(
            &token,
            ADD_REVIEW,
            review(json!(3), &"é".repeat(200), &"x".repeat(10_000)),
        )
        .await;
    data(&long_ok);
}

#[tokio::test]
async fn an_update_with_nothing_to_change_or_bad_values_is_refused() {
    let app = TestApp::spawn().await;
    let product = app.create_product("owner", "Kettle").await;
    let id = app.add_review("alice", &product, 3).await;
    let token = app.token("alice");
    let update = "mutation($id: ID!, $input: UpdateReviewInput!) { updateReview(id: $id, input: $input) { id } }";
    for (input, why) in [
        (json!({}), "empty input"),
        (json!({"rating": 9}), "rating 9"),
        (json!({"title": " "}), "blank title"),
    ] {
        assert_refused(&app, &token, update, json!({"id": id, "input": input}), why).await;
    }
    assert_refused(
        &app,
        &token,
        update,
        json!({"id": "42", "input": {"rating": 1}}),
        "malformed id",
    )
    .await;
}

#[tokio::test]
async fn malformed_ids_and_cursors_in_queries_are_bad_user_input() {
    let app = TestApp::spawn().await;
    let token = app.token("alice");
    let product = app.create_product("owner", "Kettle").await;
    for (query, variables) in [
        ("query($id: ID!) { product(id: $id) { id } }", json!({"id": "nope"})),
        ("query($id: ID!) { review(id: $id) { id } }", json!({"id": "1; drop table reviews"})),
        ("query($id: ID!) { reviews(productId: $id) { edges { cursor } } }", json!({"id": ""})),
        ("query($a: String) { products(after: $a) { edges { cursor } } }", json!({"a": "garbage"})),
        ("query($id: ID!, $a: String) { reviews(productId: $id, after: $a) { edges { cursor } } }", json!({"id": product, "a": "djE6MTIz"})),
    ] {
        assert_refused(&app, &token, query, variables, query).await;
    }
    assert_eq!(app.count_rows("products").await, 1);
}

#[tokio::test]
async fn unknown_fields_and_syntax_errors_are_bad_user_input() {
    let app = TestApp::spawn().await;
    for query in [
        "{ products { edges { node { id price } } } }",
        "{ nosuchthing }",
        "{ products { edges { node { id } }",
        "mutation { launchRockets }",
    ] {
        let response = app.graphql(query, json!({})).await;
        assert_eq!(error_code(&response), "BAD_USER_INPUT", "{query}");
    }
}

#[tokio::test]
async fn a_body_that_is_not_a_graphql_request_gets_a_clear_400() {
    let app = TestApp::spawn().await;
    for (body, fragment) in [
        ("{not json", "JSON object"),
        ("\"just a string\"", "JSON object"),
        ("{\"variables\": {}}", "query"),
        (
            "[{\"query\": \"{ products { edges { cursor } } }\"}]",
            "batched",
        ),
    ] {
        let response = app
            .http
            .post(app.url("/graphql"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(error_code(&json), "BAD_USER_INPUT", "{body}");
        assert!(error_message(&json).contains(fragment), "{body}: {json}");
    }
}

#[tokio::test]
async fn a_database_failure_answers_internal_without_sql_detail() {
    let app = TestApp::spawn().await;
    app.create_product("owner", "Kettle").await;
    let client = app.database.client().await;
    client
        .batch_execute("alter table products rename to products_gone")
        .await
        .unwrap();

    let response = app
        .graphql("{ products { edges { node { id name } } } }", json!({}))
        .await;
    assert_eq!(error_code(&response), "INTERNAL");
    let text = response["errors"].to_string();
    assert_eq!(error_message(&response), "internal error");
    for leak in [
        "products_gone",
        "relation",
        "SQL",
        "select",
        "does not exist",
    ] {
        assert!(!text.contains(leak), "response leaks {leak:?}: {text}");
    }
}
