//! `notify_owner`: tells a product's owner about a review event on it: one notification per
//! event (idempotent by event id), none when owners review their own product.

use reviews_db::notifications::{notify_product_owner, NewNotification};
use reviews_db::Db;
use serde::Deserialize;
use serde_json::Value;

use super::{parse_payload, JobError};

pub const KIND: &str = "notify_owner";

#[derive(Deserialize)]
struct Payload {
    event_id: uuid::Uuid,
    event_type: String,
    review_id: uuid::Uuid,
    product_id: uuid::Uuid,
    author_id: String,
}

pub async fn run(db: &Db, payload: &Value) -> Result<(), JobError> {
    let p: Payload = parse_payload(payload)?;
    let conn = db.conn().await?;
    let written = notify_product_owner(
        &conn,
        &NewNotification {
            event_id: p.event_id,
            kind: &p.event_type,
            review_id: p.review_id,
            product_id: p.product_id,
            author_id: &p.author_id,
        },
    )
    .await?;
    tracing::debug!(event.id = %p.event_id, written, "owner notified");
    Ok(())
}
