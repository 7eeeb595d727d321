use serde_json::json;

use crate::support::*;

const REVIEW: &str =
    "query($id: ID!) { review(id: $id) { id rating title body authorId createdAt updatedAt } }";
const UPDATE: &str = "mutation($id: ID!, $input: UpdateReviewInput!) {
    updateReview(id: $id, input: $input) { id rating title body updatedAt createdAt }
}";
const DELETE: &str = "mutation($id: ID!) { deleteReview(id: $id) }";

#[tokio::test]
async fn adding_a_review_returns_it_with_its_product_and_author() {
    let app = TestApp::spawn().await;
    let product = app.create_product("owner", "Kettle").await;

    let response = app
        .graphql_as(&app.token("alice"), ADD_REVIEW, review_input(&product, 4))
        .await;
    let review = &data(&response)["addReview"];
    assert_eq!(review["rating"], 4);
    assert_eq!(review["authorId"], "alice");
    assert_eq!(review["product"]["id"], product);

    let fetched = app.graphql(REVIEW, json!({"id": review["id"]})).await;
    assert_eq!(data(&fetched)["review"]["title"], "Solid");
}

#[tokio::test]
async fn the_author_can_update_some_fields_and_keep_the_others() {
    let app = TestApp::spawn().await;
    let product = app.create_product("owner", "Kettle").await;
    let id = app.add_review("alice", &product, 2).await;

    let response = app
        .graphql_as(
            &app.token("alice"),
            UPDATE,
            json!({"id": id, "input": {"rating": 5, "title": "Better now"}}),
        )
        .await;
    let review = &data(&response)["updateReview"];
    assert_eq!(review["rating"], 5);
    assert_eq!(review["title"], "Better now");
    assert_eq!(review["body"], "Works as described.");
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(review[field].as_str().unwrap()).unwrap()
    };
    assert!(at("updatedAt") > at("createdAt"));
}

#[tokio::test]
async fn another_user_may_not_update_a_review() {
    let app = TestApp::spawn().await;
    let product = app.create_product("owner", "Kettle").await;
    let id = app.add_review("alice", &product, 2).await;

    for token in [app.token("mallory"), app.admin_token("root")] {
        let response = app
            .graphql_as(&token, UPDATE, json!({"id": id, "input": {"rating": 5}}))
            .await;
        assert_eq!(error_code(&response), "FORBIDDEN");
    }
    let fetched = app.graphql(REVIEW, json!({"id": id})).await;
    assert_eq!(data(&fetched)["review"]["rating"], 2);
}

#[tokio::test]
async fn the_author_can_delete_a_review() {
    let app = TestApp::spawn().await;
    let product = app.create_product("owner", "Kettle").await;
    let id = app.add_review("alice", &product, 2).await;

    let response = app
        .graphql_as(&app.token("alice"), DELETE, json!({"id": id}))
        .await;
    assert_eq!(data(&response)["deleteReview"], id);
    let fetched = app.graphql(REVIEW, json!({"id": id})).await;
    assert_eq!(error_code(&fetched), "NOT_FOUND");
}

#[tokio::test]
async fn an_admin_can_delete_anyones_review_but_another_user_cannot() {
    let app = TestApp::spawn().await;
    let product = app.create_product("owner", "Kettle").await;
    let id = app.add_review("alice", &product, 2).await;

    let response = app
        .graphql_as(&app.token("mallory"), DELETE, json!({"id": id}))
        .await;
    assert_eq!(error_code(&response), "FORBIDDEN");
    assert_eq!(app.count_rows("reviews").await, 1);

    let response = app
        .graphql_as(&app.admin_token("root"), DELETE, json!({"id": id}))
        .await;
    assert_eq!(data(&response)["deleteReview"], id);
    assert_eq!(app.count_rows("reviews").await, 0);
}

#[tokio::test]
async fn updating_or_deleting_an_unknown_review_is_not_found() {
    let app = TestApp::spawn().await;
    let token = app.token("alice");
    let id = uuid::Uuid::new_v4().to_string();

    let response = app
        .graphql_as(&token, UPDATE, json!({"id": id, "input": {"rating": 3}}))
        .await;
    assert_eq!(error_code(&response), "NOT_FOUND");
    let response = app.graphql_as(&token, DELETE, json!({"id": id})).await;
    assert_eq!(error_code(&response), "NOT_FOUND");
}

#[tokio::test]
async fn a_second_review_by_the_same_author_is_a_conflict() {
    let app = TestApp::spawn().await;
    let product = app.create_product("owner", "Kettle").await;
    app.add_review("alice", &product, 2).await;

    let response = app
        .graphql_as(&app.token("alice"), ADD_REVIEW, review_input(&product, 5))
        .await;
    assert_eq!(error_code(&response), "CONFLICT");
    assert_eq!(
        error_message(&response),
        "you have already reviewed this product"
    );
    assert_eq!(app.count_rows("reviews").await, 1);
}

#[tokio::test]
async fn reviewing_an_unknown_product_is_not_found() {
    let app = TestApp::spawn().await;
    let response = app
        .graphql_as(
            &app.token("alice"),
            ADD_REVIEW,
            review_input(&uuid::Uuid::new_v4().to_string(), 5),
        )
        .await;
    assert_eq!(error_code(&response), "NOT_FOUND");
    assert_eq!(app.count_rows("reviews").await, 0);
}

#[tokio::test]
async fn notifications_show_only_the_callers_own() {
    let app = TestApp::spawn().await;
    let client = app.database.client().await;
    client
        .batch_execute(
            "insert into notifications (recipient_id, kind, event_id)
             values ('alice', 'review.created', gen_random_uuid()),
                    ('alice', 'review.created', gen_random_uuid()),
                    ('bob', 'review.created', gen_random_uuid())",
        )
        .await
        .unwrap();
    let query = "{ notifications(first: 10) { edges { node { id kind eventId readAt } } } }";

    let response = app.graphql_as(&app.token("alice"), query, json!({})).await;
    let edges = data(&response)["notifications"]["edges"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(edges.len(), 2);
    assert!(edges.iter().all(|e| e["node"]["kind"] == "review.created"));

    let response = app.graphql(query, json!({})).await;
    assert_eq!(error_code(&response), "UNAUTHENTICATED");
}
