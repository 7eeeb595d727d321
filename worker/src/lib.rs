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
//! In the order of the flow:
//! - `config`: environment and flags (`reviews-worker --help`).
//! - `listener`: LISTEN on its own connection, reconnecting; rings the bells.
//! - `relay`: outbox → jobs → queue; the slow poll.
//! - `doorbell`: how the relay sleeps (on the listener's connection) so that writers ring.
//! - `reconciler`: re-enqueues pending jobs the queue does not hold, on its own cadence.
//! - `queue`: the Redis stream, leases, delayed jobs.
//! - `runner`: the read loop, slots and shutdown.
//! - `executor`: starts a batch of jobs, runs each handler call with a timeout and panic
//!   capture, decides the outcome.
//! - `outcome`: the decision after a run (complete, retry, defer, bury), a pure function.
//! - `completer`: records outcomes (successes in batches), Postgres first, then Redis.
//! - `rescuer`: heartbeats of held leases; take-back of expired ones.
//! - `promoter`: moves due delayed jobs into the stream.
//! - `retry`: retry schedules from `retry_policies`.
//! - `jobs`: the job kinds (`recompute_rating`, `notify_owner`, `deliver_webhook`) and
//!   their registry.
//! - `stats`: counters of what the runner did.

pub mod completer;
pub mod config;
pub mod doorbell;
pub mod executor;
pub mod jobs;
pub mod listener;
pub mod outcome;
pub mod promoter;
pub mod queue;
pub mod reconciler;
pub mod relay;
pub mod rescuer;
pub mod retry;
pub mod runner;
pub mod stats;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use reviews_db::migrate::{schema_state, SchemaState};
use reviews_db::retry_policies::insert_missing_retry_policies;
use reviews_db::statements::PlanCache;
use reviews_db::{Bookkeeping, Db};
use tokio_util::sync::CancellationToken;

use crate::config::WorkerArgs;
use crate::doorbell::{Doorbell, ListenerConnection};
use crate::jobs::JobRegistry;
use crate::listener::{Bells, Listener};
use crate::queue::JobQueue;
use crate::reconciler::Reconciler;
use crate::relay::{Linger, Relay};
use crate::retry::RetryPolicies;
use crate::runner::{Runner, RunnerSettings};
use crate::stats::RunnerStats;

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
    registry: JobRegistry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Worker> {
    args.validate()?;
    let tuning = &args.tuning;
    let targets = args.db.targets()?;
    let bookkeeping = match tuning.async_commit {
        true => Bookkeeping::Asynchronous,
        false => Bookkeeping::Synchronous,
    };
    let db = Db::connect_lazy_planning(
        targets.pool,
        args.db.db_pool_size,
        targets.pool_mode,
        PlanCache::Generic,
    )
    .with_bookkeeping(bookkeeping);
    let queue = Arc::new(
        JobQueue::new(args.redis.target()?, &args.redis.redis_prefix)
            .context("while reading REDIS_URL / REDIS_CLUSTER_NODES / REDIS_*")?,
    );
    let default_policies: Vec<_> = registry
        .relayed_kinds()
        .iter()
        .map(|kind| kind.default_policy.row(kind.name))
        .collect();
    let policies = RetryPolicies::default();
    if let Err(error) = queue.ensure_group().await {
        tracing::warn!(error = %error, "Redis not reachable yet; will keep trying");
    }

    let token = CancellationToken::new();
    let bells = Bells::default();
    let listener_connection = ListenerConnection::default();
    let listener = Listener::new(targets.session, bells.clone(), listener_connection.clone());
    let listener_reconnects = listener.reconnects();
    let statements = relay::statements_with(
        &registry,
        i64::from(tuning.relay_batch_size),
        tuning.rating_recompute_interval,
        bookkeeping,
        tuning.relay_notify_payload,
    );
    let runner = Runner::new(
        db.clone(),
        queue.clone(),
        registry,
        policies.clone(),
        RunnerSettings {
            concurrency: tuning.concurrency as usize,
            lease: tuning.lease,
            job_timeout: tuning.job_timeout,
            shutdown_grace: tuning.shutdown_grace,
            poll_interval: tuning.poll_interval,
        },
    );
    let reconciler = Reconciler::new(db.clone(), queue.clone(), tuning.lease);
    let relay = Relay {
        db: db.clone(),
        queue: queue.clone(),
        doorbell: Doorbell::new(db.clone(), listener_connection),
        bells: bells.clone(),
        poll_interval: tuning.poll_interval,
        statements,
        delayed_bell: runner.delayed_bell(),
        hand_off: tuning.relay_hand_off.then(|| runner.hand_off()),
        linger: Linger {
            wait: tuning.relay_linger,
            above: f64::from(tuning.relay_linger_above),
        },
    };
    let stats = runner.stats.clone();
    let reconciling = reconciler.run(
        tuning.poll_interval,
        tuning.reconcile_after,
        bells.jobs.clone(),
        token.clone(),
    );
    let reloading =
        policies
            .clone()
            .reload_when_rung(db.clone(), bells.retry_policies.clone(), token.clone());
    let task = tokio::spawn({
        let token = token.clone();
        let policies_to_load = policies.clone();
        async move {
            tokio::spawn({
                let token = token.clone();
                async move {
                    shutdown.await;
                    token.cancel();
                }
            });
            if !wait_for_migrations(&db, &token).await {
                return;
            }
            if let Err(error) = give_new_kinds_their_policies(&db, &default_policies).await {
                // A kind without a row retries on the fallback schedule meanwhile.
                tracing::warn!(error = %error,
                    "could not add the default retry policies of new job kinds");
            }
            if let Err(error) = policies_to_load.reload(&db).await {
                // The listener rings the policies bell when it connects, so they load later.
                tracing::warn!(error = %error,
                    "could not load retry policies yet; using the fallback");
            }
            tracing::info!("worker started");
            let tasks = [
                tokio::spawn(listener.run(token.clone())),
                tokio::spawn(relay.run(token.clone())),
                tokio::spawn(reconciling),
                tokio::spawn(reloading),
                tokio::spawn(runner.run(token.clone())),
            ];
            for task in tasks {
                if let Err(error) = task.await {
                    tracing::error!(error = %error, "a worker task failed");
                }
            }
        }
    });
    Ok(Worker {
        stats,
        listener_reconnects,
        queue,
        policies,
        task,
    })
}

/// How often a worker waiting for migrations asks again, and how often it says so.
const MIGRATIONS_ASKED_EVERY: Duration = Duration::from_secs(1);
const MIGRATIONS_SAID_EVERY: Duration = Duration::from_secs(30);

/// Waits, saying so, while the database lacks migrations this build embeds (new binaries
/// started before `migrate` ran: docs/DEPLOYING.md), or cannot be asked (Postgres
/// unreachable: nothing the worker does could go on without it), so that nothing is relayed
/// or run by statements the schema cannot answer yet. False when shut down meanwhile.
async fn wait_for_migrations(db: &Db, shutdown: &CancellationToken) -> bool {
    let mut said_at: Option<Instant> = None;
    // Whether to say it now: at first, then every MIGRATIONS_SAID_EVERY.
    let say = |said_at: &mut Option<Instant>| {
        let due = said_at.is_none_or(|at| at.elapsed() >= MIGRATIONS_SAID_EVERY);
        if due {
            *said_at = Some(Instant::now());
        }
        due
    };
    loop {
        let asked = async { anyhow::Ok(schema_state(&db.conn().await?).await?) };
        let asked = tokio::select! {
            _ = shutdown.cancelled() => return false,
            asked = asked => asked,
        };
        match asked {
            Ok(SchemaState::Current) => {
                if said_at.is_some() {
                    tracing::info!("the migrations are applied; starting");
                }
                return true;
            }
            Ok(behind) => {
                if say(&mut said_at) {
                    tracing::warn!(%behind, "waiting for migrations: relaying and running nothing");
                }
            }
            Err(error) => {
                if say(&mut said_at) {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "waiting to ask Postgres which migrations are applied"
                    );
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(MIGRATIONS_ASKED_EVERY) => {}
        }
    }
}

/// Adds the default retry policy of every kind the registry relays that has no row yet
/// (`defaults`, one per kind).
async fn give_new_kinds_their_policies(
    db: &Db,
    defaults: &[reviews_db::retry_policies::RetryPolicyRow],
) -> anyhow::Result<()> {
    let conn = db.conn().await?;
    let added = insert_missing_retry_policies(&conn, defaults).await?;
    if added > 0 {
        tracing::info!(
            kinds = added,
            "added the default retry policies of new job kinds"
        );
    }
    Ok(())
}
