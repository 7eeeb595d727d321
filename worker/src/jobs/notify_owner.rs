//! `notify_owner`: tells a product's owner about review events on it: one notification per
//! event (idempotent by event id), none when owners review their own product.
//!
//! One job covers every event of a relay batch (its payload lists them): a job row per
//! event costs three writes of that row (created, started, done) and a queue entry, most of
//! a drain's cost per event (docs/PERFORMANCE.md). The jobs started together write all their
//! notifications, and are marked done, in one statement: the notifications commit exactly
//! when their jobs do. A job that fails is retried, and replayed from its dead letter, as a
//! whole; a notification written already (a replayed event) is skipped.

use reviews_db::notifications::{notify_product_owners, NewNotification};
use reviews_db::Db;
use serde::{Deserialize, Serialize};

use super::{all_or_none, Job, JobError, JobKind};
use crate::retry::RetryPolicy;

pub struct NotifyOwner;

/// One event to tell an owner about.
#[derive(Debug, Serialize, Deserialize)]
pub struct Event {
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub review_id: uuid::Uuid,
    pub product_id: uuid::Uuid,
    pub author_id: String,
    pub actor_id: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Payload {
    /// What the relay writes: every event of its batch.
    Batch { events: Vec<Event> },
    /// One event: jobs written before batches (still pending, or dead letters).
    One(Event),
}

impl Payload {
    pub fn events(&self) -> &[Event] {
        match self {
            Payload::Batch { events } => events,
            Payload::One(event) => std::slice::from_ref(event),
        }
    }
}

impl JobKind for NotifyOwner {
    const NAME: &'static str = "notify_owner";
    type Payload = Payload;
    const DEFAULT_POLICY: RetryPolicy = RetryPolicy::FALLBACK;
    const IN_BATCHES: bool = true;
    const COMPLETES_ITSELF: bool = true;
    // One job for the whole batch, its events in id order.
    const FROM_EVENTS: &'static str = "
        select null::uuid, null::text,
               jsonb_build_object('events', jsonb_agg(jsonb_build_object(
                   'event_id', c.event_id,
                   'event_type', c.event_type,
                   'review_id', c.review_id,
                   'product_id', c.product_id,
                   'author_id', coalesce(c.payload->'new'->>'author_id',
                                         c.payload->'old'->>'author_id'),
                   'actor_id', c.actor_id,
                   'request_id', c.request_id) order by c.id)),
               now()
        from claimed c
        having count(*) > 0";

    /// Writes the notifications of every job's events and marks the jobs done, in one
    /// statement; a failed statement fails (and retries) them all.
    async fn run(&self, db: Db, jobs: Vec<Job<Payload>>) -> Vec<Result<(), JobError>> {
        let events: Vec<NewNotification<'_>> = jobs
            .iter()
            .flat_map(|job| job.payload.events())
            .map(|e| NewNotification {
                event_id: e.event_id,
                kind: &e.event_type,
                review_id: e.review_id,
                product_id: e.product_id,
                author_id: &e.author_id,
            })
            .collect();
        let attempts: Vec<_> = jobs.iter().map(Job::fencing).collect();
        let written = async {
            let conn = db.conn().await?;
            notify_product_owners(&conn, &events, &attempts).await
        }
        .await;
        if let Ok(written) = &written {
            tracing::debug!(events = events.len(), written, "owners notified");
        }
        all_or_none(jobs.len(), written)
    }
}
