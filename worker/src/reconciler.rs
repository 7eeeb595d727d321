//! Reconciliation: Postgres says which jobs are pending; the queue may not hold them all (a
//! crash between the relay's commit and its enqueue, a Redis restart without persistence, a
//! FLUSHALL, a replayed dead letter). Pending jobs that are overdue and unknown to the queue
//! are enqueued again. Enqueueing is idempotent, so racing a relay or a runner is harmless:
//! at worst a finished job is delivered once more and skipped.
//!
//! It runs on its own fixed cadence (`OUTBOX_POLL_INTERVAL`), whatever the doorbell does, so
//! a job Redis forgot runs within `RECONCILE_AFTER` plus one interval even under steady
//! writes; and at once when a job is made pending outside the relay (the `jobs` bell). On the
//! same cadence it samples the backlog gauges and forgets the consumers of runners that are
//! gone (holding nothing, silent for three leases), so the group lists live runners.

use std::sync::Arc;
use std::time::Duration;

use reviews_db::jobs::{overdue_job_ids, still_pending};
use reviews_db::outbox::pending_events;
use reviews_db::Db;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::queue::JobQueue;

/// Jobs looked at per pass; a larger gap is closed over the next passes.
const PASS_LIMIT: i64 = 1_000;

pub struct Reconciler {
    db: Db,
    queue: Arc<JobQueue>,
    /// How long a consumer holding nothing may stay silent before it is forgotten.
    forget_consumers_after: Duration,
}

impl Reconciler {
    pub fn new(db: Db, queue: Arc<JobQueue>, lease: Duration) -> Self {
        Reconciler {
            db,
            queue,
            forget_consumers_after: lease * 3,
        }
    }

    /// Reconciles every `interval` (jobs overdue by more than `grace`) and whenever `jobs`
    /// rings (any overdue job), until `shutdown`.
    pub async fn run(
        self,
        interval: Duration,
        grace: Duration,
        jobs: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let grace = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = jobs.notified() => Duration::ZERO,
                _ = tick.tick() => {
                    if let Err(error) = self.record_gauges().await {
                        tracing::warn!(error = format!("{error:#}"), "sampling the backlog failed");
                    }
                    match self.queue.forget_departed_consumers(self.forget_consumers_after).await {
                        Ok(0) => {}
                        Ok(forgotten) => tracing::info!(forgotten, "forgot the consumers of departed runners"),
                        Err(error) => tracing::warn!(error = %error, "forgetting departed consumers failed"),
                    }
                    grace
                }
            };
            if let Err(error) = self.reconcile(grace).await {
                tracing::warn!(error = format!("{error:#}"), "reconciliation failed");
            }
        }
    }

    /// Enqueues pending jobs overdue by more than `grace` that the queue does not hold;
    /// returns how many.
    pub async fn reconcile(&self, grace: Duration) -> anyhow::Result<usize> {
        let ids = {
            let conn = self.db.conn().await?;
            overdue_job_ids(&conn, grace.as_millis() as i64, PASS_LIMIT).await?
        };
        if ids.is_empty() {
            return Ok(0);
        }
        self.queue.ensure_group().await?;
        let missing = self.queue.missing(&ids).await?;
        if missing.is_empty() {
            return Ok(0);
        }
        // A job that finished between our two reads looks missing: the completer marks it
        // done in Postgres and then forgets it in Redis. Enqueue only those still pending
        // (otherwise a finished batch would get a second stream entry, delivered and skipped).
        let missing = {
            let conn = self.db.conn().await?;
            still_pending(&conn, &missing).await?
        };
        let added = self.queue.enqueue(&missing).await?;
        if added > 0 {
            metrics::counter!("reconciled_jobs_total").increment(added as u64);
            tracing::info!(
                jobs = added,
                "enqueued pending jobs the queue did not hold (Redis lost them, or they were replayed)"
            );
        }
        Ok(added)
    }

    /// Outbox backlog and queue depth.
    async fn record_gauges(&self) -> anyhow::Result<()> {
        let (pending, oldest_ms) = {
            let conn = self.db.conn().await?;
            pending_events(&conn).await?
        };
        metrics::gauge!("outbox_pending_events").set(pending as f64);
        metrics::gauge!("outbox_oldest_pending_age_seconds").set(oldest_ms as f64 / 1000.0);
        let depth = self.queue.depth().await?;
        metrics::gauge!("queue_stream_entries").set(depth.stream as f64);
        metrics::gauge!("queue_delayed_jobs").set(depth.delayed as f64);
        metrics::gauge!("queue_known_jobs").set(depth.known as f64);
        // Every statement this worker has sent Postgres (the idle cost, for one).
        metrics::counter!("db_statements_total").absolute(self.db.statements_run());
        Ok(())
    }
}
