//! `notify_owner`: tells a product's owner about review events on it: one notification per
//! event (idempotent by event id), none when owners review their own product.
//!
//! One job covers every event of a relay batch (its payload lists them): a job row per
//! event cost three writes of that row (created, started, done) and a queue entry, which
//! was most of the drain's cost per event (docs/PERFORMANCE.md). The jobs started together
//! write all their notifications in one statement. A job that fails is retried, and replayed
//! from its dead letter, as a whole: every notification it already wrote is skipped.

use reviews_db::notifications::{notify_product_owners, NewNotification};
use reviews_db::Db;
use serde::Deserialize;

use super::{parse_payload, JobContext, JobError};

pub const KIND: &str = "notify_owner";

/// One event to tell an owner about.
#[derive(Deserialize)]
struct Event {
    event_id: uuid::Uuid,
    event_type: String,
    review_id: uuid::Uuid,
    product_id: uuid::Uuid,
    author_id: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Payload {
    /// What the relay writes: every event of its batch.
    Batch { events: Vec<Event> },
    /// One event: jobs written by workers before batches (still pending, or dead letters).
    One(Event),
}

impl Payload {
    fn events(&self) -> &[Event] {
        match self {
            Payload::Batch { events } => events,
            Payload::One(event) => std::slice::from_ref(event),
        }
    }
}

/// Runs `notify_owner` jobs together; one result per job, in order. A payload that does not
/// parse fails its own job only; a failed insert fails (and retries) them all.
pub async fn run_batch(db: &Db, jobs: &[JobContext]) -> Vec<Result<(), JobError>> {
    let parsed: Vec<Result<Payload, JobError>> =
        jobs.iter().map(|job| parse_payload(&job.payload)).collect();
    let events: Vec<NewNotification<'_>> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .flat_map(Payload::events)
        .map(|e| NewNotification {
            event_id: e.event_id,
            kind: &e.event_type,
            review_id: e.review_id,
            product_id: e.product_id,
            author_id: &e.author_id,
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
