//! The jobs that follow from review events, one file each. A handler must be idempotent:
//! the queue delivers at least once, so running a job twice must change nothing more than
//! running it once.

pub mod deliver_webhook;
pub mod notify_owner;
pub mod recompute_rating;

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use reviews_db::Db;
use serde_json::Value;

/// Why a job failed, which decides what happens next.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Might work later (the database blinked, a timeout, a panic): retry on schedule.
    #[error("{0:#}")]
    Retryable(anyhow::Error),
    /// Will never work (a payload it cannot read, an unknown kind): dead letter at once.
    #[error("{0:#}")]
    Permanent(anyhow::Error),
    /// Might work later, and the other side said when (`Retry-After`): retry no sooner,
    /// within the policy's cap.
    #[error("{error:#}")]
    RetryAfter {
        after: std::time::Duration,
        error: anyhow::Error,
    },
    /// Not this job's fault and not an attempt: run it again after `after` (an endpoint is
    /// busy with its concurrency limit).
    #[error("deferred: {reason}")]
    Deferred {
        after: std::time::Duration,
        reason: String,
    },
}

/// What a handler gets: the database, and the job it runs.
#[derive(Clone)]
pub struct JobContext {
    pub db: Db,
    pub job_id: i64,
    /// This attempt's number, from 1.
    pub attempt: i32,
    pub payload: Value,
}

impl From<reviews_db::StoreError> for JobError {
    fn from(error: reviews_db::StoreError) -> Self {
        JobError::Retryable(error.into())
    }
}

/// Reads a job's payload, or fails permanently: a payload that does not parse now never will.
pub fn parse_payload<T: serde::de::DeserializeOwned>(payload: &Value) -> Result<T, JobError> {
    // From the borrowed value: no copy of a payload that may list a hundred events.
    T::deserialize(payload)
        .map_err(|e| JobError::Permanent(anyhow::anyhow!("unreadable payload: {e}")))
}

/// The results of a batch whose jobs share one statement: a job whose payload did not parse
/// keeps its own error; the others succeed with the statement or all fail with it (and are
/// retried).
fn each_result<P, T>(
    parsed: Vec<Result<P, JobError>>,
    statement: Result<T, reviews_db::StoreError>,
) -> Vec<Result<(), JobError>> {
    let failure = statement
        .err()
        .map(|error| format!("{:#}", anyhow::Error::from(error)));
    parsed
        .into_iter()
        .map(|p| match (p, &failure) {
            (Err(error), _) => Err(error),
            (Ok(_), None) => Ok(()),
            (Ok(_), Some(message)) => Err(JobError::Retryable(anyhow::anyhow!("{message}"))),
        })
        .collect()
}

/// A job handler: takes the database and the job's payload.
pub type Handler =
    Arc<dyn Fn(JobContext) -> BoxFuture<'static, Result<(), JobError>> + Send + Sync>;

/// A handler of several jobs of one kind at once: one result per job, in the jobs' order.
pub type BatchHandler =
    Arc<dyn Fn(Vec<JobContext>) -> BoxFuture<'static, Vec<Result<(), JobError>>> + Send + Sync>;

/// Which handler runs which kind of job: one job at a time, or (for kinds whose work is a
/// statement per job) all the jobs of a kind started together. Tests add kinds of their own
/// (a job that always fails, one that panics) without touching the real ones.
#[derive(Clone)]
pub struct JobHandlers {
    by_kind: HashMap<String, Handler>,
    batches_by_kind: HashMap<String, BatchHandler>,
}

impl JobHandlers {
    /// The jobs that follow from review events.
    pub fn standard() -> Self {
        JobHandlers {
            by_kind: HashMap::new(),
            batches_by_kind: HashMap::new(),
        }
        .with_batches(recompute_rating::KIND, |jobs| {
            Box::pin(async move {
                let Some(db) = jobs.first().map(|job| job.db.clone()) else {
                    return Vec::new();
                };
                recompute_rating::run_batch(&db, &jobs).await
            })
        })
        .with_batches(notify_owner::KIND, |jobs| {
            Box::pin(async move {
                let Some(db) = jobs.first().map(|job| job.db.clone()) else {
                    return Vec::new();
                };
                notify_owner::run_batch(&db, &jobs).await
            })
        })
        .with_webhooks(deliver_webhook::WebhookSettings::default())
    }

    /// Delivers webhooks with these settings.
    pub fn with_webhooks(self, settings: deliver_webhook::WebhookSettings) -> Self {
        let sender = Arc::new(deliver_webhook::Sender::new(settings));
        self.with(deliver_webhook::KIND, move |job| {
            let sender = sender.clone();
            Box::pin(async move { sender.deliver(&job).await })
        })
    }

    /// Adds (or replaces) the handler of `kind`: one job at a time.
    pub fn with<F>(mut self, kind: &str, handler: F) -> Self
    where
        F: Fn(JobContext) -> BoxFuture<'static, Result<(), JobError>> + Send + Sync + 'static,
    {
        self.batches_by_kind.remove(kind);
        self.by_kind.insert(kind.to_owned(), Arc::new(handler));
        self
    }

    /// Adds (or replaces) the handler of `kind`: the jobs started together, at once.
    pub fn with_batches<F>(mut self, kind: &str, handler: F) -> Self
    where
        F: Fn(Vec<JobContext>) -> BoxFuture<'static, Vec<Result<(), JobError>>>
            + Send
            + Sync
            + 'static,
    {
        self.by_kind.remove(kind);
        self.batches_by_kind
            .insert(kind.to_owned(), Arc::new(handler));
        self
    }

    /// Whether jobs of `kind` run in batches: several per handler call.
    pub fn runs_in_batches(&self, kind: &str) -> bool {
        self.batches_by_kind.contains_key(kind)
    }

    /// Runs jobs of `kind`: at once for a batched kind, else one after another (the runner
    /// passes those one at a time); one result per job, in order.
    pub fn run_batch(
        &self,
        kind: &str,
        jobs: Vec<JobContext>,
    ) -> BoxFuture<'static, Vec<Result<(), JobError>>> {
        match self.batches_by_kind.get(kind) {
            Some(handler) => handler(jobs),
            // Not a batched kind: its jobs one after another.
            None => {
                let runs: Vec<_> = jobs.into_iter().map(|job| self.run(kind, job)).collect();
                Box::pin(async move {
                    let mut results = Vec::with_capacity(runs.len());
                    for run in runs {
                        results.push(run.await);
                    }
                    results
                })
            }
        }
    }

    /// Runs one job of a kind that does not run in batches; an unknown kind fails
    /// permanently.
    fn run(&self, kind: &str, job: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        match self.by_kind.get(kind) {
            Some(handler) => handler(job),
            None => {
                let kind = kind.to_owned();
                Box::pin(async move {
                    Err(JobError::Permanent(anyhow::anyhow!(
                        "unknown job kind {kind:?}"
                    )))
                })
            }
        }
    }
}
