//! `deliver_webhook`: POSTs one event to one endpoint, signed the Standard Webhooks way.
//!
//! - Headers: `webhook-id` (the event id, the same on every retry, so receivers can
//!   deduplicate), `webhook-timestamp` (Unix seconds), `webhook-signature`
//!   (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the secret's base64-decoded
//!   bytes after `whsec_`).
//! - 2xx is success; 410 Gone disables the endpoint; anything else, and timeouts, retry on
//!   the `deliver_webhook` schedule, no sooner than a `Retry-After` asks (within the cap).
//! - Safety: connect and total timeouts, a cap on how much of the response is read, no
//!   redirects, and destinations that resolve to private, loopback or link-local addresses
//!   are refused unless allowed; the connection goes to the address that was checked.
//! - One slow endpoint cannot hold every runner slot: each endpoint has a concurrency limit,
//!   and a job that finds its endpoint busy is deferred without spending an attempt.
//!
//! The kind is here; `sender` makes the request, `destinations` says which addresses it may
//! reach and `signature` signs the body.

mod destinations;
mod sender;
mod signature;

use reviews_db::Db;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{Job, JobError, JobKind};
use crate::config::WebhookSettings;
use crate::retry::RetryPolicy;

pub use destinations::is_global_unicast;
pub use sender::{DeliveryError, Sender};
pub use signature::sign;

/// One event for one endpoint.
#[derive(Debug, Serialize, Deserialize)]
pub struct Payload {
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub occurred_at: Value,
    /// The outbox row's `{"old": …, "new": …}`.
    pub data: Value,
    pub actor_id: Option<String>,
    pub request_id: Option<String>,
}

/// The kind: one delivery per job, through the worker's [`Sender`].
pub struct DeliverWebhook {
    sender: Sender,
}

impl DeliverWebhook {
    pub fn new(settings: WebhookSettings) -> Self {
        DeliverWebhook {
            sender: Sender::new(settings),
        }
    }
}

impl JobKind for DeliverWebhook {
    const NAME: &'static str = "deliver_webhook";
    type Payload = Payload;
    /// Remote systems get a longer, gentler schedule: 12 attempts from 5 s doubling to 1 h.
    const DEFAULT_POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 12,
        base_delay_ms: 5_000,
        multiplier: 2.0,
        max_delay_ms: 3_600_000,
        jitter: 0.3,
    };
    const IN_BATCHES: bool = false;
    // One job per event and endpoint that wants its type, is neither paused nor disabled,
    // and was registered before the event occurred; none for a replay without --webhooks.
    const FROM_EVENTS: &'static str = "
        select c.event_id, null::text,
               jsonb_build_object(
                   'webhook_id', w.id,
                   'event_id', c.event_id,
                   'event_type', c.event_type,
                   'occurred_at', c.occurred_at,
                   'data', c.payload,
                   'actor_id', c.actor_id,
                   'request_id', c.request_id),
               now()
        from claimed c
        join webhooks w on c.event_type = any (w.event_types)
        where c.webhooks and not w.paused and w.disabled_at is null
          and w.created_at <= c.occurred_at";

    /// Delivers each job's event (the runner passes one job per call).
    async fn run(&self, db: Db, jobs: Vec<Job<Payload>>) -> Vec<Result<(), JobError>> {
        let mut results = Vec::with_capacity(jobs.len());
        for job in &jobs {
            results.push(self.sender.deliver(&db, job).await);
        }
        results
    }
}
