//! `Review.product` and `Product.rating` are batched: a page costs the same number of SQL
//! statements whatever its size. The count comes from the API's own database handle, which
//! counts every statement it runs.

use serde_json::json;

use crate::support::*;

const REVIEW_PAGE: &str = "query($id: ID!, $first: Int!) {
    reviews(productId: $id, first: $first) {
        edges { node { id rating product { id name rating { count average histogram } } } }
    }
}";

const PRODUCT_PAGE: &str = "query($first: Int!) {
    products(first: $first) { edges { node { id name rating { count average } } } }
}";

async fn statements_for(app: &TestApp, query: &str, variables: serde_json::Value) -> u64 {
    let before = app.db.statements_run();
    let response = app.graphql(query, variables).await;
    data(&response);
    app.db.statements_run() - before
}

#[tokio::test]
async fn a_page_of_100_reviews_with_their_products_costs_a_constant_number_of_statements() {
    let app = TestApp::spawn().await;
    let product = app.create_product("owner", "Kettle").await;
    let client = app.database.client().await;
    client
        .execute(
            "insert into reviews (product_id, author_id, rating, title, body)
             select $1::text::uuid, 'author-' || i, 1 + i % 5, 't', 'b' from generate_series(1, 100) i",
            &[&product],
        )
        .await
        .unwrap();

    let for_10 = statements_for(&app, REVIEW_PAGE, json!({"id": product, "first": 10})).await;
    let for_100 = statements_for(&app, REVIEW_PAGE, json!({"id": product, "first": 100})).await;
    assert_eq!(for_10, for_100);
    // The page with its product and rating summary, in one statement.
    assert_eq!(for_100, 1);

    // The same page under `product`: the product, then the page as above.
    let nested = "query($id: ID!) {
        product(id: $id) {
            reviews(first: 100) { edges { node { id product { name rating { count } } } } }
        }
    }";
    assert_eq!(
        statements_for(&app, nested, json!({"id": product})).await,
        2
    );
}

#[tokio::test]
async fn a_page_of_100_products_with_their_ratings_costs_a_constant_number_of_statements() {
    let app = TestApp::spawn().await;
    let client = app.database.client().await;
    client
        .batch_execute(
            "insert into products (name, owner_id) select 'p' || i, 'owner' from generate_series(1, 100) i;
             insert into product_ratings (product_id, review_count, rating_sum, stars_5)
             select id, 1, 5, 1 from products",
        )
        .await
        .unwrap();

    let for_10 = statements_for(&app, PRODUCT_PAGE, json!({"first": 10})).await;
    let for_100 = statements_for(&app, PRODUCT_PAGE, json!({"first": 100})).await;
    assert_eq!(for_10, for_100);
    assert_eq!(for_100, 2);
}
