//! PgBouncer in transaction mode: the API's and the worker's pools go through it with
//! `DB_POOL_MODE=transaction` (every statement unnamed), LISTEN through
//! `DATABASE_DIRECT_URL`; concurrent writes still produce every effect.

use reviews_db::config::DatabaseUrl;
use reviews_db::{Db, DbArgs, PoolMode};

use super::servers::PgBouncer;
use crate::support::*;

/// Settings as an operator writes them: the pool through PgBouncer, sessions direct.
fn through(bouncer: &PgBouncer, direct: &tokio_postgres::Config) -> DbArgs {
    let mut args = DbArgs::local("unused");
    args.database_url = Some(DatabaseUrl::from(bouncer.config(direct)));
    args.database_direct_url = Some(DatabaseUrl::from(direct.clone()));
    args.db_pool_mode = PoolMode::Transaction;
    args.db_pool_size = 6;
    args
}

#[tokio::test]
async fn api_and_worker_keep_every_effect_through_pgbouncer_in_transaction_mode() {
    let database = reviews_db::testing::TestDatabase::create().await;
    let bouncer = PgBouncer::start(&database.config).await;
    let args = through(&bouncer, &database.config);
    let targets = args.targets().unwrap();
    assert_eq!(
        targets.pool.config().get_ports(),
        &[bouncer.port],
        "the pool goes through PgBouncer"
    );
    let db = Db::connect_lazy(targets.pool, 6, PoolMode::Transaction);
    let app = TestApp::spawn_on(database, db).await;
    let worker = app
        .start_worker_with(|worker| worker.db = through(&bouncer, &app.database.config))
        .await;

    let product = app.create_product("owner", "Pooled kettle").await;
    // Concurrent requests: the pool holds several connections at once, and PgBouncer hands
    // their transactions to whichever server session is free.
    let authors: Vec<String> = (0..24).map(|i| format!("author-{i}")).collect();
    let reviews = futures::future::join_all(
        authors
            .iter()
            .zip(0..)
            .map(|(author, i)| app.add_review(author, &product, i % 5 + 1)),
    )
    .await;
    assert_eq!(reviews.len(), 24);
    let token = app.token("author-0");
    let edited = app
        .graphql_as(
            &token,
            "mutation($id: ID!) { updateReview(id: $id, input: {rating: 1}) { rating } }",
            serde_json::json!({"id": reviews[0]}),
        )
        .await;
    assert_eq!(data(&edited)["updateReview"]["rating"], 1);
    app.wait_for_worker().await;
    assert_eq!(
        app.count_rows("notifications").await,
        25,
        "the owner hears of 24 reviews and one edit"
    );
    let client = app.database.client().await;
    let wrong: i64 = client
        .query_one(
            "select count(*) from product_ratings pr
             where (review_count, rating_sum, stars_1, stars_2, stars_3, stars_4, stars_5) <>
                   (select count(*), coalesce(sum(rating), 0),
                           count(*) filter (where rating = 1), count(*) filter (where rating = 2),
                           count(*) filter (where rating = 3), count(*) filter (where rating = 4),
                           count(*) filter (where rating = 5)
                    from reviews r where r.product_id = pr.product_id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        wrong, 0,
        "summaries equal the reviews: count, sum and each bucket"
    );
    let rating = app
        .graphql(
            "query($id: ID!) { product(id: $id) { rating { count } } }",
            serde_json::json!({"id": product}),
        )
        .await;
    assert_eq!(data(&rating)["product"]["rating"]["count"], 24);
    worker.stop().await;
}

#[tokio::test]
async fn transaction_pooling_without_a_direct_url_is_refused_naming_it() {
    let mut args = DbArgs::local("reviews");
    args.db_pool_mode = PoolMode::Transaction;
    let refused = args.targets().err().unwrap().to_string();
    assert!(
        refused.contains("DB_POOL_MODE=transaction needs DATABASE_DIRECT_URL"),
        "{refused}"
    );
}
