//! `notify_owner`: tells a product's owner about a review event on it: one notification per
//! event (idempotent by event id), none when owners review their own product.
//!
//! It runs in batches: the jobs started together write their notifications in one statement
//! (a backlog of events would otherwise cost one transaction, and one WAL flush, each).

use reviews_db::notifications::{notify_product_owners, NewNotification};
use reviews_db::Db;
use serde::Deserialize;

use super::{parse_payload, JobContext, JobError};

pub const KIND: &str = "notify_owner";

#[derive(Deserialize)]
struct Payload {
    event_id: uuid::Uuid,
    event_type: String,
    review_id: uuid::Uuid,
    product_id: uuid::Uuid,
    author_id: String,
}

/// Runs a batch of `notify_owner` jobs; one result per job, in order. A payload that does
/// not parse fails its own job only; a failed insert fails (and retries) them all.
pub async fn run_batch(db: &Db, jobs: &[JobContext]) -> Vec<Result<(), JobError>> {
    let parsed: Vec<Result<Payload, JobError>> =
        jobs.iter().map(|job| parse_payload(&job.payload)).collect();
    let events: Vec<NewNotification<'_>> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .map(|p| NewNotification {
            event_id: p.event_id,
            kind: &p.event_type,
            review_id: p.review_id,
            product_id: p.product_id,
            author_id: &p.author_id,
        })
        .collect();
    let written = async {
        let conn = db.conn().await?;
        notify_product_owners(&conn, &events).await
    }
    .await;
    if let Ok(written) = &written {
        tracing::debug!(events = events.len(), written, "owners notified");
    }
    super::each_result(parsed, written)
}
