//! `recompute_rating`: rebuilds a product's rating summary from the reviews table. Bursts of
//! events for one product are coalesced into one job by the relay, and the jobs started
//! together recompute their products in one statement.

use reviews_db::ratings::recompute_ratings;
use reviews_db::Db;
use serde::Deserialize;

use super::{parse_payload, JobContext, JobError};

pub const KIND: &str = "recompute_rating";

#[derive(Deserialize)]
struct Payload {
    product_id: uuid::Uuid,
}

/// Runs a batch of `recompute_rating` jobs; one result per job, in order. A payload that
/// does not parse fails its own job only; a failed statement fails (and retries) them all.
pub async fn run_batch(db: &Db, jobs: &[JobContext]) -> Vec<Result<(), JobError>> {
    let parsed: Vec<Result<Payload, JobError>> =
        jobs.iter().map(|job| parse_payload(&job.payload)).collect();
    let products: Vec<uuid::Uuid> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok().map(|p| p.product_id))
        .collect();
    let recomputed = async {
        let conn = db.conn().await?;
        recompute_ratings(&conn, &products).await
    }
    .await;
    if recomputed.is_ok() {
        tracing::debug!(products = products.len(), "ratings recomputed");
    }
    super::each_result(parsed, recomputed)
}
