//! `notify_owner`: tells a product's owner about review events on it: one notification per
//! event (idempotent by event id), none when owners review their own product.
//!
//! One job covers every event of a relay batch: a job row per event costs three writes of
//! that row (created, started, done) and a queue entry, most of a drain's cost per event
//! (docs/PERFORMANCE.md). Its payload names the events by their outbox ids, and the handler
//! reads them there (a JSON object per event took as long to build as the rest of the relay
//! statement: run K). The jobs started together write all their notifications, and are marked
//! done, in one statement: the notifications commit exactly when their jobs do. A job that
//! fails is retried, and replayed from its dead letter, as a whole; a notification written
//! already (a replayed event) is skipped.

use reviews_db::notifications::{notify_product_owners, NewNotification, Notified};
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
    /// What the relay writes: the outbox ids of its batch's events, in order.
    Outbox { outbox_ids: Vec<i64> },
    /// Every event of the batch, whole: what the relay wrote before db/migrations/0019, and
    /// writes with `RELAY_NOTIFY_PAYLOAD=events` (for workers from before it, which read
    /// only this form and the next).
    Batch { events: Vec<Event> },
    /// One event: jobs written before batches (still pending, or dead letters).
    One(Event),
}

impl Payload {
    /// The events carried whole (none for the outbox-ids form).
    pub fn events(&self) -> &[Event] {
        match self {
            Payload::Outbox { .. } => &[],
            Payload::Batch { events } => events,
            Payload::One(event) => std::slice::from_ref(event),
        }
    }

    /// The events named by outbox id (none for the forms that carry them whole).
    pub fn outbox_ids(&self) -> &[i64] {
        match self {
            Payload::Outbox { outbox_ids } => outbox_ids,
            Payload::Batch { .. } | Payload::One(_) => &[],
        }
    }
}

impl NotifyOwner {
    /// [`JobKind::FROM_EVENTS`] with every event whole, the form workers from before
    /// db/migrations/0019 read: what the relay uses instead with `RELAY_NOTIFY_PAYLOAD=events`
    /// (a statement of its own, not a branch of one: Postgres plans the relay statement
    /// about once a second per connection, and each branch costs planning time).
    pub const FROM_EVENTS_WHOLE: &'static str = "
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
}

impl JobKind for NotifyOwner {
    const NAME: &'static str = "notify_owner";
    type Payload = Payload;
    const DEFAULT_POLICY: RetryPolicy = RetryPolicy::FALLBACK;
    const IN_BATCHES: bool = true;
    const COMPLETES_ITSELF: bool = true;
    // One job for the whole batch: its events' outbox ids, in order.
    const FROM_EVENTS: &'static str = "
        select null::uuid, null::text,
               jsonb_build_object('outbox_ids', jsonb_agg(c.id order by c.id)), now()
        from claimed c
        having count(*) > 0";

    /// Writes the notifications of every job's events and marks the jobs done, in one
    /// statement; a failed statement fails (and retries) them all. A job naming events the
    /// outbox no longer has fails for good, on its own: the others run without it.
    async fn run(&self, db: Db, jobs: Vec<Job<Payload>>) -> Vec<Result<(), JobError>> {
        let mut results: Vec<Option<Result<(), JobError>>> = jobs.iter().map(|_| None).collect();
        let mut running: Vec<usize> = (0..jobs.len()).collect();
        // Each run that finds events missing leaves out the jobs that named them; usually the
        // second run is the last (more only if rows are deleted meanwhile).
        while !running.is_empty() {
            let notified = notify(&db, running.iter().map(|&at| &jobs[at])).await;
            match notified {
                Ok(Notified::Missing(mut missing)) => {
                    missing.sort_unstable();
                    let before = running.len();
                    running.retain(|&at| {
                        let gone: Vec<i64> = jobs[at]
                            .payload
                            .outbox_ids()
                            .iter()
                            .copied()
                            .filter(|id| missing.binary_search(id).is_ok())
                            .collect();
                        if gone.is_empty() {
                            return true;
                        }
                        results[at] = Some(Err(JobError::Permanent(anyhow::anyhow!(
                            "events {gone:?} of this job are no longer in the outbox \
                             (deleted by hand? scripts/purge keeps them): their owners \
                             cannot be notified; the job's other events are not notified \
                             either (scripts/replay-events relays those again)"
                        ))));
                        false
                    });
                    if running.len() == before {
                        // Missing ids no job here named: never expected; retry them all
                        // rather than loop.
                        let error = anyhow::anyhow!(
                            "the notify statement reported events {missing:?} missing, \
                             which none of its jobs named"
                        );
                        for &at in &running {
                            results[at] =
                                Some(Err(JobError::Retryable(anyhow::anyhow!("{error:#}"))));
                        }
                        break;
                    }
                }
                done => {
                    if let Ok(Notified::Written(written)) = &done {
                        tracing::debug!(jobs = running.len(), written, "owners notified");
                    }
                    for (at, result) in running.iter().zip(all_or_none(running.len(), done)) {
                        results[*at] = Some(result);
                    }
                    break;
                }
            }
        }
        results
            .into_iter()
            .map(|result| result.expect("every job has its result"))
            .collect()
    }
}

/// One statement for `jobs`: their events' notifications and their completions.
async fn notify<'a>(
    db: &Db,
    jobs: impl Iterator<Item = &'a Job<Payload>> + Clone,
) -> Result<Notified, reviews_db::StoreError> {
    let events: Vec<NewNotification<'_>> = jobs
        .clone()
        .flat_map(|job| job.payload.events())
        .map(|e| NewNotification {
            event_id: e.event_id,
            kind: &e.event_type,
            review_id: e.review_id,
            product_id: e.product_id,
            author_id: &e.author_id,
        })
        .collect();
    let outbox_ids: Vec<i64> = jobs
        .clone()
        .flat_map(|job| job.payload.outbox_ids())
        .copied()
        .collect();
    let attempts: Vec<_> = jobs.map(Job::fencing).collect();
    let conn = db.conn().await?;
    notify_product_owners(&conn, &events, &outbox_ids, &attempts).await
}
