//! The reviews worker: turns committed review changes into their effects.
//!
//! ```text
//! listener (LISTEN outbox) ─▶ relay (claim events → jobs, SKIP LOCKED) ─▶ queue (Redis stream)
//!     ─▶ runner (lease, heartbeat, timeout) ─▶ jobs/* ─▶ effects in Postgres
//!     failure ─▶ retry (schedule from retry_policies) ─▶ … ─▶ dead_jobs
//! ```
//!
//! Postgres is the source of truth (outbox rows, jobs with their attempts); Redis is the fast
//! lane and may forget: reconciliation re-enqueues whatever it lost.
//!
//! # Layout
//! - `config`: environment and flags (`reviews-worker --help`).
//! - `listener`: LISTEN on its own connection, reconnecting; rings the bells.
//! - `relay`: outbox → jobs → queue; the doorbell; the slow poll.
//! - `reconcile`: re-enqueues pending jobs the queue does not hold.
//! - `queue`: the Redis stream, leases, delayed retries.
//! - `runner`: runs jobs with bounded concurrency, timeouts, heartbeats, graceful shutdown.
//! - `completer`: records successful jobs in batches (one statement, one Redis call).
//! - `retry`: retry schedules from `retry_policies`.
//! - `jobs`: the job handlers (`recompute_rating`, `notify_owner`).
//! - `backoff`, `telemetry`: capped backoff for failing loops; logging.

pub mod backoff;
pub mod completer;
pub mod config;
pub mod jobs;
pub mod listener;
pub mod queue;
pub mod reconcile;
pub mod relay;
pub mod retry;
pub mod runner;
pub mod telemetry;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Context as _;
use reviews_db::Db;
use tokio_util::sync::CancellationToken;

use crate::config::WorkerArgs;
use crate::jobs::JobHandlers;
use crate::listener::{Bells, Listener};
use crate::queue::JobQueue;
use crate::reconcile::Reconciler;
use crate::relay::Relay;
use crate::retry::RetryPolicies;
use crate::runner::{Runner, RunnerStats};

/// A started worker: its counters, and the task to await until it has stopped.
pub struct Worker {
    pub stats: Arc<RunnerStats>,
    pub listener_reconnects: Arc<AtomicU64>,
    pub queue: Arc<JobQueue>,
    pub policies: RetryPolicies,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts listener, relay and runner; they stop when `shutdown` completes (the runner after
/// finishing or handing back its jobs).
pub async fn start(
    args: &WorkerArgs,
    handlers: JobHandlers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Worker> {
    let tuning = &args.tuning;
    tuning.validate()?;
    let db = Db::connect_lazy(args.db.pg_config(), args.db.db_pool_size);
    let queue = Arc::new(
        JobQueue::new(&args.redis.url(), &args.redis.redis_prefix)
            .context("while reading REDIS_URL / REDIS_*")?,
    );
    let policies = RetryPolicies::default();
    if let Err(error) = policies.reload(&db).await {
        // The listener rings the policies bell when it connects, so they load later.
        tracing::warn!(error = %error, "could not load retry policies yet; using the fallback");
    }
    if let Err(error) = queue.ensure_group().await {
        tracing::warn!(error = %error, "Redis not reachable yet; will keep trying");
    }

    let bells = Bells::default();
    let listener = Listener::new(args.db.pg_config(), bells.clone());
    let listener_reconnects = listener.reconnects();
    let runner = Runner::new(
        db.clone(),
        queue.clone(),
        handlers,
        policies.clone(),
        tuning.concurrency as usize,
        tuning.lease,
        tuning.job_timeout,
        tuning.shutdown_grace,
        tuning.poll_interval,
    );
    let relay = Relay {
        db: db.clone(),
        queue: queue.clone(),
        reconciler: Reconciler::new(db.clone(), queue.clone()),
        policies: policies.clone(),
        bells,
        batch_size: i64::from(tuning.relay_batch_size),
        poll_interval: tuning.poll_interval,
        reconcile_after: tuning.reconcile_after,
        recompute_interval: tuning.rating_recompute_interval,
        delayed_bell: runner.delayed_bell(),
    };
    let stats = runner.stats.clone();

    let token = CancellationToken::new();
    let task = tokio::spawn({
        let token = token.clone();
        async move {
            let tasks = [
                tokio::spawn(listener.run(token.clone())),
                tokio::spawn(relay.run(token.clone())),
                tokio::spawn(runner.run(token.clone())),
            ];
            tokio::spawn({
                let token = token.clone();
                async move {
                    shutdown.await;
                    token.cancel();
                }
            });
            for task in tasks {
                if let Err(error) = task.await {
                    tracing::error!(error = %error, "a worker task failed");
                }
            }
        }
    });
    tracing::info!("worker started");
    Ok(Worker {
        stats,
        listener_reconnects,
        queue,
        policies,
        task,
    })
}
