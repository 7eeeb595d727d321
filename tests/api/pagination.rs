use serde_json::{json, Value};

use crate::support::*;

const PRODUCTS: &str = "query($first: Int, $after: String) {
    products(first: $first, after: $after) {
        edges { cursor node { id name } }
        pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
}";

async fn page(app: &TestApp, first: i32, after: Option<&str>) -> Value {
    let response = app
        .graphql(PRODUCTS, json!({"first": first, "after": after}))
        .await;
    data(&response)["products"].clone()
}

fn names(page: &Value) -> Vec<String> {
    page["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn products_page_newest_first_and_every_product_appears_once() {
    let app = TestApp::spawn().await;
    for i in 0..5 {
        app.create_product("owner", &format!("p{i}")).await;
    }

    let first = page(&app, 2, None).await;
    assert_eq!(names(&first), ["p4", "p3"]);
    assert_eq!(first["pageInfo"]["hasNextPage"], true);
    assert_eq!(first["pageInfo"]["hasPreviousPage"], false);

    let second = page(&app, 2, first["pageInfo"]["endCursor"].as_str()).await;
    assert_eq!(names(&second), ["p2", "p1"]);
    assert_eq!(second["pageInfo"]["hasPreviousPage"], true);

    let last = page(&app, 2, second["pageInfo"]["endCursor"].as_str()).await;
    assert_eq!(names(&last), ["p0"]);
    assert_eq!(last["pageInfo"]["hasNextPage"], false);

    let past_the_end = page(&app, 2, last["pageInfo"]["endCursor"].as_str()).await;
    assert_eq!(past_the_end["edges"], json!([]));
    assert_eq!(past_the_end["pageInfo"]["hasNextPage"], false);
}

#[tokio::test]
async fn rows_with_the_same_timestamp_are_neither_skipped_nor_repeated() {
    let app = TestApp::spawn().await;
    let client = app.database.client().await;
    client
        .batch_execute(
            "insert into products (name, owner_id, created_at)
             select 'p' || i, 'owner', '2026-01-01T00:00:00Z' from generate_series(1, 7) i",
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let p = page(&app, 3, after.as_deref()).await;
        seen.extend(names(&p));
        if p["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = p["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
    seen.sort();
    assert_eq!(seen, ["p1", "p2", "p3", "p4", "p5", "p6", "p7"]);
}

#[tokio::test]
async fn page_sizes_are_bounded() {
    let app = TestApp::spawn().await;
    app.create_product("owner", "p").await;

    let empty = page(&app, 0, None).await;
    assert_eq!(empty["edges"], json!([]));
    assert_eq!(empty["pageInfo"]["hasNextPage"], true);
    assert_eq!(names(&page(&app, 100, None).await), ["p"]);

    for first in [-1, 101, 1_000_000] {
        let response = app.graphql(PRODUCTS, json!({"first": first})).await;
        assert_eq!(error_code(&response), "BAD_USER_INPUT", "first {first}");
    }
}

#[tokio::test]
async fn reviews_page_through_the_query_and_the_product_field() {
    let app = TestApp::spawn().await;
    let product = app.create_product("owner", "Kettle").await;
    for author in ["a", "b", "c"] {
        app.add_review(author, &product, 4).await;
    }
    let query = "query($id: ID!, $after: String) {
        reviews(productId: $id, first: 2, after: $after) {
            edges { node { authorId } } pageInfo { hasNextPage endCursor }
        }
        product(id: $id) { reviews(first: 2, after: $after) { edges { node { authorId } } } }
    }";
    let authors = |v: &Value| -> Vec<String> {
        v["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["authorId"].as_str().unwrap().to_owned())
            .collect()
    };

    let response = app.graphql(query, json!({"id": product})).await;
    let first = &data(&response)["reviews"];
    assert_eq!(authors(first), ["c", "b"]);
    assert_eq!(authors(&data(&response)["product"]["reviews"]), ["c", "b"]);

    let after = first["pageInfo"]["endCursor"].as_str().unwrap();
    let response = app
        .graphql(query, json!({"id": product, "after": after}))
        .await;
    assert_eq!(authors(&data(&response)["reviews"]), ["a"]);
    assert_eq!(data(&response)["reviews"]["pageInfo"]["hasNextPage"], false);
}

#[tokio::test]
async fn reviews_of_an_unknown_product_are_not_found() {
    let app = TestApp::spawn().await;
    let response = app
        .graphql(
            "query($id: ID!) { reviews(productId: $id) { edges { cursor } } }",
            json!({"id": uuid::Uuid::new_v4().to_string()}),
        )
        .await;
    assert_eq!(error_code(&response), "NOT_FOUND");
}

#[tokio::test]
async fn a_review_page_carries_its_product_and_rating_summary() {
    let app = TestApp::spawn().await;
    let product = app.create_product("owner", "Kettle").await;
    let query = "query($id: ID!) {
        reviews(productId: $id, first: 5) {
            edges { node { authorId product { id name ownerId rating { count average histogram } } } }
            pageInfo { hasNextPage }
        }
    }";

    // A product nobody reviewed: an empty page, not NOT_FOUND, and no summary row needed.
    let response = app.graphql(query, json!({"id": product})).await;
    assert_eq!(data(&response)["reviews"]["edges"], json!([]));
    assert_eq!(data(&response)["reviews"]["pageInfo"]["hasNextPage"], false);

    for author in ["a", "b"] {
        app.add_review(author, &product, 4).await;
    }
    // The summary as the worker would have written it.
    app.database
        .client()
        .await
        .execute(
            "insert into product_ratings (product_id, review_count, rating_sum, stars_4, stars_5)
             values ($1::text::uuid, 3, 13, 2, 1)",
            &[&product],
        )
        .await
        .unwrap();
    let response = app.graphql(query, json!({"id": product})).await;
    let edges = data(&response)["reviews"]["edges"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(edges.len(), 2);
    for edge in edges {
        let node = &edge["node"]["product"];
        assert_eq!(node["id"], product.as_str());
        assert_eq!(node["name"], "Kettle");
        assert_eq!(node["ownerId"], "owner");
        assert_eq!(
            node["rating"],
            json!({"count": 3, "average": 13.0 / 3.0, "histogram": [0, 0, 0, 2, 1]})
        );
    }
}
