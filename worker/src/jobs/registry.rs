//! The registry: which handler runs which kind of job, and the kinds the relay makes.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use reviews_db::Db;
use serde::Deserialize as _;
use serde_json::Value;

use super::ledger::{Run as LedgerRun, RunLedger};
use super::{deliver_webhook, notify_owner, recompute_rating, Job, JobContext, JobError, JobKind};
use crate::config::WebhookSettings;
use crate::retry::RetryPolicy;

/// Runs jobs of one kind: one result per job, in order.
type Run = Arc<dyn Fn(Db, Vec<JobContext>) -> BoxFuture<'static, Vec<JobResult>> + Send + Sync>;

type JobResult = Result<(), JobError>;

/// A kind the relay makes jobs of, as the relay and the worker's start-up need it.
#[derive(Debug, Clone)]
pub struct RelayedKind {
    pub name: &'static str,
    pub default_policy: RetryPolicy,
    /// See [`JobKind::FROM_EVENTS`].
    pub from_events: &'static str,
    /// Reads a payload as the kind's type and writes it back (for the test that every
    /// payload the relay writes is one the handler reads whole).
    pub reread_payload: fn(&Value) -> Result<Value, String>,
}

#[derive(Clone)]
struct Handler {
    in_batches: bool,
    completes_itself: bool,
    run: Run,
}

/// Which handler runs which kind: the standard kinds, and (in tests) kinds of their own (a
/// job that always fails, one that panics) registered with [`JobRegistry::with`].
#[derive(Clone, Default)]
pub struct JobRegistry {
    handlers: HashMap<String, Handler>,
    relayed: Vec<RelayedKind>,
    ledger: Option<Arc<dyn RunLedger>>,
}

impl JobRegistry {
    /// The kinds that follow from review events; webhooks are delivered with default settings
    /// (see [`JobRegistry::with_webhooks`]).
    pub fn standard() -> Self {
        JobRegistry::default()
            .register(recompute_rating::RecomputeRating)
            .register(notify_owner::NotifyOwner)
            .with_webhooks(WebhookSettings::default())
    }

    /// Delivers webhooks with these settings.
    pub fn with_webhooks(self, settings: WebhookSettings) -> Self {
        self.register(deliver_webhook::DeliverWebhook::new(settings))
    }

    /// Adds (or replaces) a kind: its handler, and what the relay needs of it.
    pub fn register<K: JobKind>(mut self, kind: K) -> Self {
        assert!(
            !K::NAME.is_empty() && K::NAME.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "a job kind's name is [a-z_]+ (the relay writes it into SQL): {:?}",
            K::NAME
        );
        let kind = Arc::new(kind);
        let run: Run = Arc::new(move |db, jobs| {
            let kind = kind.clone();
            Box::pin(async move { run_kind(&*kind, db, jobs).await })
        });
        self.handlers.insert(
            K::NAME.to_owned(),
            Handler {
                in_batches: K::IN_BATCHES,
                completes_itself: K::COMPLETES_ITSELF,
                run,
            },
        );
        self.relayed.retain(|relayed| relayed.name != K::NAME);
        self.relayed.push(RelayedKind {
            name: K::NAME,
            default_policy: K::DEFAULT_POLICY,
            from_events: K::FROM_EVENTS,
            reread_payload: reread::<K>,
        });
        self
    }

    /// Adds (or replaces) the handler of `kind`, one job at a time, with the payload unread.
    /// The relay makes no jobs of such a kind: a test inserts them.
    pub fn with<F>(mut self, kind: &str, handler: F) -> Self
    where
        F: Fn(JobContext) -> BoxFuture<'static, JobResult> + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        let run: Run = Arc::new(move |_db, jobs| {
            let runs: Vec<_> = jobs.into_iter().map(|job| handler(job)).collect();
            Box::pin(futures::future::join_all(runs))
        });
        self.relayed.retain(|relayed| relayed.name != kind);
        self.handlers.insert(
            kind.to_owned(),
            Handler {
                in_batches: false,
                completes_itself: false,
                run,
            },
        );
        self
    }

    /// Records every handler run in `ledger` as it starts (tests count runs with it).
    pub fn with_ledger(mut self, ledger: Arc<dyn RunLedger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// The kinds the relay makes jobs of, in registration order.
    pub fn relayed_kinds(&self) -> &[RelayedKind] {
        &self.relayed
    }

    /// Whether a handler is registered for `kind`.
    pub fn handles(&self, kind: &str) -> bool {
        self.handlers.contains_key(kind)
    }

    /// Whether jobs of `kind` run in batches: several per handler call.
    pub fn runs_in_batches(&self, kind: &str) -> bool {
        self.handlers.get(kind).is_some_and(|h| h.in_batches)
    }

    /// Whether the handler of `kind` marks its jobs done with their effects
    /// ([`JobKind::COMPLETES_ITSELF`]).
    pub fn completes_itself(&self, kind: &str) -> bool {
        self.handlers.get(kind).is_some_and(|h| h.completes_itself)
    }

    /// Runs jobs of `kind` (the runner passes several only for a kind that runs in batches);
    /// one result per job, in order. An unknown kind fails permanently.
    pub fn run(
        &self,
        kind: &str,
        db: Db,
        jobs: Vec<JobContext>,
    ) -> BoxFuture<'static, Vec<JobResult>> {
        match self.handlers.get(kind) {
            Some(handler) => {
                if let Some(ledger) = &self.ledger {
                    let started_at_us = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |since| since.as_micros() as i64);
                    for job in &jobs {
                        ledger.record(LedgerRun {
                            kind: kind.to_owned(),
                            job_id: job.job_id,
                            attempt: job.attempt,
                            started_at_us,
                        });
                    }
                }
                (handler.run)(db, jobs)
            }
            None => {
                let message = format!("unknown job kind {kind:?}");
                Box::pin(async move {
                    jobs.iter()
                        .map(|_| Err(JobError::Permanent(anyhow::anyhow!("{message}"))))
                        .collect()
                })
            }
        }
    }
}

fn reread<K: JobKind>(payload: &Value) -> Result<Value, String> {
    let read = K::Payload::deserialize(payload).map_err(|e| e.to_string())?;
    serde_json::to_value(read).map_err(|e| e.to_string())
}

/// Reads each job's payload as the kind's type and runs the readable ones; a payload that
/// does not read fails its own job permanently (it never will read).
async fn run_kind<K: JobKind>(kind: &K, db: Db, jobs: Vec<JobContext>) -> Vec<JobResult> {
    let mut unreadable: Vec<Option<JobError>> = Vec::with_capacity(jobs.len());
    let mut readable = Vec::with_capacity(jobs.len());
    for job in jobs {
        // From the borrowed value: no copy of a payload that may list a hundred events.
        match K::Payload::deserialize(&job.payload) {
            Ok(payload) => {
                readable.push(Job {
                    id: job.job_id,
                    attempt: job.attempt,
                    payload,
                });
                unreadable.push(None);
            }
            Err(error) => unreadable.push(Some(JobError::Permanent(anyhow::anyhow!(
                "unreadable payload: {error}"
            )))),
        }
    }
    let expected = readable.len();
    let mut ran = if readable.is_empty() {
        Vec::new()
    } else {
        kind.run(db, readable).await
    }
    .into_iter();
    if ran.len() != expected {
        let message = format!(
            "the {} handler returned {} results for {expected} jobs",
            K::NAME,
            ran.len()
        );
        ran = (0..expected)
            .map(|_| Err(JobError::Retryable(anyhow::anyhow!("{message}"))))
            .collect::<Vec<_>>()
            .into_iter();
    }
    unreadable
        .into_iter()
        .map(|failed| match failed {
            Some(error) => Err(error),
            None => ran.next().expect("one result per readable job"),
        })
        .collect()
}
