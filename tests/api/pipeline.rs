//! End to end: GraphQL mutations, the outbox, the worker, and what clients read back.

use serde_json::json;

use crate::support::*;

const PRODUCT: &str = "query($id: ID!) { product(id: $id) { rating { count average histogram } } }";
const NOTIFICATIONS: &str =
    "{ notifications(first: 10) { edges { node { kind reviewId productId eventId } } } }";

#[tokio::test]
async fn review_mutations_change_the_rating_and_notify_the_owner() {
    let app = TestApp::spawn().await;
    let worker = app.start_worker().await;
    let product = app.create_product("owner", "Kettle").await;
    let owner = app.token("owner");

    let review = app.add_review("alice", &product, 4).await;
    app.add_review("bob", &product, 2).await;
    app.wait_for_worker().await;
    let response = app.graphql(PRODUCT, json!({"id": product})).await;
    assert_eq!(
        data(&response)["product"]["rating"],
        json!({"count": 2, "average": 3.0, "histogram": [0, 1, 0, 1, 0]})
    );

    let update = "mutation($id: ID!) { updateReview(id: $id, input: {rating: 5}) { id } }";
    data(
        &app.graphql_as(&app.token("alice"), update, json!({"id": review}))
            .await,
    );
    app.wait_for_worker().await;
    let response = app.graphql(PRODUCT, json!({"id": product})).await;
    assert_eq!(
        data(&response)["product"]["rating"],
        json!({"count": 2, "average": 3.5, "histogram": [0, 1, 0, 0, 1]})
    );

    let delete = "mutation($id: ID!) { deleteReview(id: $id) }";
    data(
        &app.graphql_as(&app.token("alice"), delete, json!({"id": review}))
            .await,
    );
    app.wait_for_worker().await;
    let response = app.graphql(PRODUCT, json!({"id": product})).await;
    assert_eq!(
        data(&response)["product"]["rating"],
        json!({"count": 1, "average": 2.0, "histogram": [0, 1, 0, 0, 0]})
    );

    let response = app.graphql_as(&owner, NOTIFICATIONS, json!({})).await;
    let kinds: Vec<String> = data(&response)["notifications"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "review.deleted",
            "review.updated",
            "review.created",
            "review.created"
        ]
    );
    // Nobody else is told.
    let response = app
        .graphql_as(&app.token("alice"), NOTIFICATIONS, json!({}))
        .await;
    assert_eq!(data(&response)["notifications"]["edges"], json!([]));
    worker.stop().await;
}

#[tokio::test]
async fn the_acting_user_and_request_id_travel_into_the_outbox() {
    let app = TestApp::spawn().await;
    let product = app.create_product("owner", "Kettle").await;
    app.http
        .post(app.url("/graphql"))
        .bearer_auth(app.token("alice"))
        .header("x-request-id", "trace-42")
        .json(&json!({"query": ADD_REVIEW, "variables": review_input(&product, 3)}))
        .send()
        .await
        .unwrap();
    let client = app.database.client().await;
    let row = client
        .query_one("select actor_id, request_id, event_type from outbox", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("alice"));
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("trace-42"));
    assert_eq!(row.get::<_, String>(2), "review.created");
}
