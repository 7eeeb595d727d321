//! The jobs that follow from review events: one file per kind, one registry of the kinds.
//!
//! A kind is a unit: its file holds the kind's name, its payload type, its default retry
//! schedule, how the relay makes its jobs from the events it claims, and its handler (the
//! [`JobKind`] trait), and `registry` lists it. Adding a kind touches that file, the list in
//! [`JobRegistry::standard`] and the README's table of kinds (README: "Adding a job kind").
//!
//! The queue delivers at least once. A kind whose effects are rows of this database writes
//! them in the statement that marks its jobs done ([`JobKind::COMPLETES_ITSELF`]): they commit
//! together, at the attempt that ran them, or not at all, so a job cannot have its effects
//! twice. A kind whose effects are elsewhere (a webhook) must make a second run harmless
//! (the receiver dedupes by delivery id).
//!
//! # Layout
//! - `registry`: [`JobRegistry`], which handler runs which kind.
//! - `ledger`: every handler run recorded, for tests that count runs.
//! - `recompute_rating`, `notify_owner`, `deliver_webhook`: the kinds.

pub mod deliver_webhook;
pub mod ledger;
pub mod notify_owner;
pub mod recompute_rating;
mod registry;

use std::future::Future;

use reviews_db::Db;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::retry::RetryPolicy;
pub use registry::{JobRegistry, RelayedKind};

/// A kind of job, defined in one place.
pub trait JobKind: Send + Sync + 'static {
    /// The kind's name: `jobs.kind` and the `retry_policies` row (`[a-z_]+`).
    const NAME: &'static str;
    /// What a job of this kind carries. The relay writes it (see [`JobKind::FROM_EVENTS`])
    /// and the handler reads it; a test checks that every payload the relay writes reads
    /// into this type and writes back the same JSON.
    type Payload: DeserializeOwned + Serialize + Send + 'static;
    /// The schedule a database gets for this kind when it has none (operators change it in
    /// `retry_policies`; a worker never overwrites a row).
    const DEFAULT_POLICY: RetryPolicy;
    /// How the relay makes this kind's jobs from the events it claims: a `select` from
    /// `claimed c` (the batch's outbox rows) giving `event_id uuid, coalesce_key text,
    /// payload jsonb, run_at timestamptz` per job. `relay_settings` holds the worker's
    /// settings it may read: `recompute_interval_ms` (`RATING_RECOMPUTE_INTERVAL`). It takes
    /// no parameters: the relay's statement has the settings written in, so Postgres plans
    /// it once (see `reviews_db::outbox::RelayStatements`).
    const FROM_EVENTS: &'static str;
    /// Whether the jobs of this kind started together run in one call (their work is one
    /// statement), or one call per job.
    const IN_BATCHES: bool;
    /// Whether `run` marks its jobs done itself, in the statement that writes their effects
    /// (with `complete_jobs_fenced` and each job's attempt): effects and completion then
    /// commit together, and the completer only acknowledges the jobs in Redis.
    const COMPLETES_ITSELF: bool = false;

    /// Runs jobs of this kind: one result per job, in order.
    fn run(
        &self,
        db: Db,
        jobs: Vec<Job<Self::Payload>>,
    ) -> impl Future<Output = Vec<Result<(), JobError>>> + Send;
}

/// A started job with its payload read.
#[derive(Debug, Clone)]
pub struct Job<P> {
    pub id: i64,
    /// This attempt's number, from 1.
    pub attempt: i32,
    pub payload: P,
}

impl<P> Job<P> {
    /// The attempt that runs it: what a self-completing kind completes it at.
    pub fn fencing(&self) -> reviews_db::jobs::Attempt {
        reviews_db::jobs::Attempt {
            job_id: self.id,
            attempt: self.attempt,
        }
    }
}

/// Why a job failed, which decides what happens next (see `outcome`).
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

impl From<reviews_db::StoreError> for JobError {
    fn from(error: reviews_db::StoreError) -> Self {
        JobError::Retryable(error.into())
    }
}

/// What a handler registered without a kind (tests' own kinds) gets: the database, and the
/// job with its payload unread.
#[derive(Clone)]
pub struct JobContext {
    pub db: Db,
    pub job_id: i64,
    /// This attempt's number, from 1.
    pub attempt: i32,
    pub payload: Value,
}

/// The results of jobs whose work was one statement: all succeed with it, or all fail with
/// it (and are retried).
pub fn all_or_none<T>(
    jobs: usize,
    statement: Result<T, reviews_db::StoreError>,
) -> Vec<Result<(), JobError>> {
    match statement {
        Ok(_) => (0..jobs).map(|_| Ok(())).collect(),
        Err(error) => {
            let message = format!("{:#}", anyhow::Error::from(error));
            (0..jobs)
                .map(|_| Err(JobError::Retryable(anyhow::anyhow!("{message}"))))
                .collect()
        }
    }
}
