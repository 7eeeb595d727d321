//! `recompute_rating`: rebuilds a product's rating summary from the reviews table. Bursts of
//! events for one product are coalesced into one job by the relay.

use reviews_db::ratings::recompute_rating;
use reviews_db::Db;
use serde::Deserialize;
use serde_json::Value;

use super::{parse_payload, JobError};

pub const KIND: &str = "recompute_rating";

#[derive(Deserialize)]
struct Payload {
    product_id: uuid::Uuid,
}

pub async fn run(db: &Db, payload: &Value) -> Result<(), JobError> {
    let Payload { product_id } = parse_payload(payload)?;
    let conn = db.conn().await?;
    recompute_rating(&conn, product_id).await?;
    tracing::debug!(%product_id, "rating recomputed");
    Ok(())
}
