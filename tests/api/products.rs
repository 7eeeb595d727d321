use serde_json::json;

use crate::support::*;

const PRODUCT: &str = "query($id: ID!) {
    product(id: $id) { id name ownerId createdAt rating { count average histogram } }
}";

#[tokio::test]
async fn a_created_product_is_readable_by_anyone_with_an_empty_rating() {
    let app = TestApp::spawn().await;
    let id = app.create_product("owner-1", "Kettle").await;

    let response = app.graphql(PRODUCT, json!({"id": id})).await;
    let product = &data(&response)["product"];
    assert_eq!(product["name"], "Kettle");
    assert_eq!(product["ownerId"], "owner-1");
    assert_eq!(
        product["rating"],
        json!({"count": 0, "average": 0.0, "histogram": [0, 0, 0, 0, 0]})
    );
}

#[tokio::test]
async fn product_rating_reads_the_summary_row() {
    let app = TestApp::spawn().await;
    let id = app.create_product("owner-1", "Kettle").await;
    let client = app.database.client().await;
    client
        .execute(
            "insert into product_ratings (product_id, review_count, rating_sum, stars_1, stars_4, stars_5)
             values ($1::text::uuid, 3, 10, 1, 1, 1)",
            &[&id],
        )
        .await
        .unwrap();

    let response = app.graphql(PRODUCT, json!({"id": id})).await;
    let rating = &data(&response)["product"]["rating"];
    assert_eq!(rating["count"], 3);
    assert!((rating["average"].as_f64().unwrap() - 10.0 / 3.0).abs() < 1e-9);
    assert_eq!(rating["histogram"], json!([1, 0, 0, 1, 1]));
}

#[tokio::test]
async fn an_unknown_product_is_not_found() {
    let app = TestApp::spawn().await;
    let response = app
        .graphql(PRODUCT, json!({"id": uuid::Uuid::new_v4().to_string()}))
        .await;
    assert_eq!(error_code(&response), "NOT_FOUND");
    assert_eq!(response["data"]["product"], json!(null));
}

#[tokio::test]
async fn a_product_name_is_trimmed_and_bounded() {
    let app = TestApp::spawn().await;
    let token = app.token("owner-1");
    let create = "mutation($name: String!) { createProduct(input: {name: $name}) { name } }";

    let response = app
        .graphql_as(&token, create, json!({"name": "  Lamp  "}))
        .await;
    assert_eq!(data(&response)["createProduct"]["name"], "Lamp");

    for name in ["", "   ", &"x".repeat(201)] {
        let response = app.graphql_as(&token, create, json!({"name": name})).await;
        assert_eq!(error_code(&response), "BAD_USER_INPUT", "name {name:?}");
    }
    assert_eq!(app.count_rows("products").await, 1);
}
