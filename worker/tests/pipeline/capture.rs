//! Atomic capture: the trigger writes one outbox row per review change, in the same
//! transaction; and the doorbell rings only when armed.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio_postgres::{AsyncMessage, NoTls};

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

/// A separate LISTEN connection that counts `outbox` notifications.
async fn doorbell_listener(
    p: &TestPipeline,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let (client, mut connection) = p.database.config.connect(NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(_) = message {
                let _ = tx.send(());
            }
        }
    });
    client.batch_execute("listen outbox").await.unwrap();
    (client, rx)
}

async fn rings_within(rx: &mut tokio::sync::mpsc::UnboundedReceiver<()>, wait: Duration) -> usize {
    let mut rings = 0;
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(())) = tokio::time::timeout_at(deadline, rx.recv()).await {
        rings += 1;
    }
    rings
}

#[tokio::test]
async fn the_doorbell_rings_once_when_armed_and_not_at_all_when_disarmed() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let (_listener, mut rings) = doorbell_listener(&p).await;

    // A fresh database starts armed: the first writer rings and disarms; the rest are silent.
    p.add_reviews(product, authors("a", 5)).await;
    assert_eq!(
        rings_within(&mut rings, Duration::from_millis(300)).await,
        1
    );
    assert_eq!(
        p.count("select count(*) from outbox_doorbell where armed")
            .await,
        0
    );

    p.add_reviews(product, authors("b", 5)).await;
    assert_eq!(
        rings_within(&mut rings, Duration::from_millis(300)).await,
        0
    );

    // A worker arms it again: the next writer rings.
    let conn = p.db.conn().await.unwrap();
    reviews_db::outbox::arm_doorbell(&conn).await.unwrap();
    p.add_reviews(product, authors("c", 3)).await;
    assert_eq!(
        rings_within(&mut rings, Duration::from_millis(300)).await,
        1
    );
}

/// The race the arm's lock closes: a writer that read the bell disarmed and has not committed
/// yet would neither ring nor be seen by the relay's last look. Arming waits for it.
#[tokio::test]
async fn arming_waits_for_a_writer_that_read_the_bell_disarmed() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    // A first writer disarms the fresh bell.
    p.add_reviews(product, authors("a", 1)).await;

    let mut writer = p.client().await;
    let tx = writer.transaction().await.unwrap();
    tx.execute(
        "insert into reviews (product_id, author_id, rating, title, body) values ($1, 'late', 4, 't', 'b')",
        &[&product],
    )
    .await
    .unwrap();

    let db = p.db.clone();
    let mut arming = tokio::spawn(async move {
        let conn = db.conn().await.unwrap();
        reviews_db::outbox::arm_doorbell(&conn).await.unwrap();
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut arming)
            .await
            .is_err(),
        "arming must wait for the open writer"
    );
    tx.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), arming)
        .await
        .expect("arming finishes once the writer committed")
        .unwrap();
    // What the relay's look after arming sees: the late writer's event, and an armed bell.
    assert_eq!(
        p.count("select count(*) from outbox_pending p join outbox o on o.id = p.id where o.review_id in (select id from reviews where author_id = 'late')")
            .await,
        1
    );
    assert_eq!(
        p.count("select count(*) from outbox_doorbell where armed")
            .await,
        1
    );
}
