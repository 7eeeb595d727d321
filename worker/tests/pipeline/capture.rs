//! Atomic capture: the trigger writes one outbox row per review change, in the same
//! transaction; changes it cannot capture are refused.

use serde_json::Value;

use crate::support::*;

async fn outbox_rows(p: &TestPipeline) -> Vec<(String, Value, Option<String>, Option<String>)> {
    p.client()
        .await
        .query(
            "select event_type, payload, actor_id, request_id from outbox order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test]
async fn each_review_change_writes_one_outbox_row_with_old_and_new() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let mut client = p.client().await;

    let tx = client.transaction().await.unwrap();
    tx.execute("select set_config('app.user_id', 'alice', true), set_config('app.request_id', 'req-1', true)", &[])
        .await
        .unwrap();
    let review: uuid::Uuid = tx
        .query_one(
            "insert into reviews (product_id, author_id, rating, title, body) values ($1, 'alice', 4, 't', 'b') returning id",
            &[&product],
        )
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    client
        .execute("update reviews set rating = 2 where id = $1", &[&review])
        .await
        .unwrap();
    client
        .execute("delete from reviews where id = $1", &[&review])
        .await
        .unwrap();

    let rows = outbox_rows(&p).await;
    assert_eq!(rows.len(), 3);
    let (created, updated, deleted) = (&rows[0], &rows[1], &rows[2]);
    assert_eq!(created.0, "review.created");
    assert_eq!(created.1["new"]["rating"], 4);
    assert_eq!(created.1["old"], Value::Null);
    assert_eq!(
        (created.2.as_deref(), created.3.as_deref()),
        (Some("alice"), Some("req-1"))
    );

    assert_eq!(updated.0, "review.updated");
    assert_eq!(
        (
            updated.1["old"]["rating"].clone(),
            updated.1["new"]["rating"].clone()
        ),
        (4.into(), 2.into())
    );
    // Written straight from SQL: captured all the same, with no actor.
    assert_eq!(updated.2, None);

    assert_eq!(deleted.0, "review.deleted");
    assert_eq!(deleted.1["new"], Value::Null);
    assert_eq!(deleted.1["old"]["id"], review.to_string());

    let ids = p
        .client()
        .await
        .query(
            "select review_id, product_id, schema_version, event_id from outbox",
            &[],
        )
        .await
        .unwrap();
    for row in ids {
        assert_eq!(row.get::<_, uuid::Uuid>(0), review);
        assert_eq!(row.get::<_, uuid::Uuid>(1), product);
        assert_eq!(row.get::<_, i16>(2), 1);
    }
    assert_eq!(
        p.count("select count(distinct event_id) from outbox").await,
        3
    );
    assert_eq!(
        p.count("select count(*) from outbox_pending p join outbox o on o.id = p.id")
            .await,
        3,
        "every event waits for the relay"
    );
}

#[tokio::test]
async fn a_rolled_back_change_leaves_no_outbox_row() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let mut client = p.client().await;
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "insert into reviews (product_id, author_id, rating, title, body) values ($1, 'alice', 4, 't', 'b')",
        &[&product],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(p.count("select count(*) from outbox").await, 0);
    assert_eq!(p.count("select count(*) from outbox_pending").await, 0);
    assert_eq!(p.count("select count(*) from reviews").await, 0);
}

#[tokio::test]
async fn truncate_of_reviews_is_refused_with_a_hint_and_changes_nothing() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    p.add_reviews(product, authors("a", 2)).await;
    let client = p.client().await;
    for statement in ["truncate reviews", "truncate products cascade"] {
        let error = client.batch_execute(statement).await.unwrap_err();
        let db_error = error.as_db_error().expect("a database error");
        assert_eq!(
            db_error.code(),
            &tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED,
            "{statement}"
        );
        assert!(
            db_error.message().contains("writes no outbox events"),
            "{}",
            db_error.message()
        );
        assert!(db_error.hint().unwrap_or("").contains("Delete the rows"));
    }
    assert_eq!(p.count("select count(*) from reviews").await, 2);
    assert_eq!(p.count("select count(*) from products").await, 1);
}
