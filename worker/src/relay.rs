//! The relay: moves outbox events into jobs and the jobs' ids into the queue.
//!
//! It claims pending events in batches (`for update skip locked`, so several workers share
//! the work), creates their jobs and takes them off `outbox_pending` in one statement, then
//! enqueues the job ids in one Redis round trip (rating recomputes held back by the
//! recompute interval go to the delayed set). If the enqueue fails, the jobs are still
//! pending in Postgres and reconciliation enqueues them: delivery is at least once.
//!
//! When it runs out of work it arms the doorbell and looks once more before it sleeps (see
//! db/migrations/0005): then it wakes on the bell, or on the slow poll, which also
//! reconciles the queue against Postgres.

use std::sync::Arc;
use std::time::Duration;

use reviews_db::outbox::{arm_doorbell, pending_events, relay_pending_events, relay_statement};
use reviews_db::Db;
use reviews_service::Backoff;
use tokio_util::sync::CancellationToken;

use crate::jobs::JobRegistry;
use crate::listener::Bells;
use crate::promoter::DelayedBell;
use crate::queue::JobQueue;
use crate::reconciler::Reconciler;
use crate::retry::RetryPolicies;

/// What one relay pass found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOutcome {
    Relayed { events: i64 },
    Idle,
}

/// How the relay paces itself (from the worker's `Tuning`).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Events claimed per statement.
    pub batch_size: i64,
    /// The slow poll.
    pub poll_interval: Duration,
    /// How long a pending job may be overdue before reconciliation re-enqueues it.
    pub reconcile_after: Duration,
    /// How long after a product's last rating recompute its next one waits (0: not at all).
    pub recompute_interval: Duration,
}

pub struct Relay {
    pub db: Db,
    pub queue: Arc<JobQueue>,
    pub reconciler: Reconciler,
    pub policies: RetryPolicies,
    pub bells: Bells,
    pub settings: RelaySettings,
    /// The claiming statement, made for the registry's kinds.
    pub statement: String,
    /// Rung when jobs go to the queue's delayed set (see `promoter`).
    pub delayed_bell: DelayedBell,
}

/// The relay's statement for the kinds `registry` makes jobs of.
pub fn statement_for(registry: &JobRegistry) -> String {
    relay_statement(
        registry
            .relayed_kinds()
            .iter()
            .map(|kind| (kind.name, kind.from_events)),
    )
}

impl Relay {
    /// Relays one batch of pending events.
    pub async fn relay_batch(&self) -> anyhow::Result<RelayOutcome> {
        let batch = {
            let conn = self.db.conn().await?;
            let (limit, interval) = (self.settings.batch_size, self.settings.recompute_interval);
            relay_pending_events(&conn, &self.statement, limit, interval).await?
        };
        if batch.events == 0 {
            return Ok(RelayOutcome::Idle);
        }
        tracing::debug!(
            batch.size = batch.events,
            jobs = batch.job_ids.len(),
            held_back = batch.held_back.len(),
            "relayed events"
        );
        let jobs = batch.job_ids.len() + batch.held_back.len();
        metrics::counter!("relay_batches_total").increment(1);
        metrics::counter!("relay_events_total").increment(batch.events as u64);
        metrics::counter!("relay_jobs_total").increment(jobs as u64);
        match self
            .queue
            .enqueue_all(&batch.job_ids, &batch.held_back)
            .await
        {
            Ok(_) if !batch.held_back.is_empty() => self.delayed_bell.ring(),
            Ok(_) => {}
            // The jobs are safe in Postgres; reconciliation will enqueue them.
            Err(error) => tracing::warn!(error = %error, jobs,
                "could not enqueue relayed jobs; reconciliation will"),
        }
        Ok(RelayOutcome::Relayed {
            events: batch.events,
        })
    }

    /// Relays until there is nothing left; returns how many events.
    async fn drain(&self) -> anyhow::Result<i64> {
        let mut total = 0;
        while let RelayOutcome::Relayed { events } = self.relay_batch().await? {
            total += events;
        }
        Ok(total)
    }

    /// Runs until `shutdown`: drain, arm, look once more, sleep until the bell or the poll.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::reconnecting();
        // Whether the bell is armed by us and nobody has rung it since.
        let mut armed = false;
        let mut poll_tick = false;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if let Err(error) = self.step(&mut armed, poll_tick).await {
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = format!("{error:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "relay failed; retrying"
                );
                armed = false;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
            backoff.reset();
            poll_tick = false;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.bells.outbox.notified() => armed = false,
                _ = self.bells.jobs.notified() => {
                    if let Err(error) = self.reconciler.reconcile(Duration::ZERO).await {
                        tracing::warn!(error = format!("{error:#}"), "reconciliation failed");
                    }
                }
                _ = self.bells.retry_policies.notified() => {
                    if let Err(error) = self.policies.reload(&self.db).await {
                        tracing::warn!(error = %error, "could not reload retry policies");
                    }
                }
                _ = tokio::time::sleep(self.settings.poll_interval) => poll_tick = true,
            }
        }
    }

    /// Outbox backlog and queue depth, sampled on the slow poll.
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

    /// One wake-up's work: drain the outbox and make sure the bell is armed before sleeping.
    async fn step(&self, armed: &mut bool, poll_tick: bool) -> anyhow::Result<()> {
        let relayed = self.drain().await?;
        if relayed > 0 {
            // A writer may have rung (and disarmed) while we worked.
            *armed = false;
        }
        while !*armed {
            {
                let conn = self.db.conn().await?;
                arm_doorbell(&conn).await?;
            }
            *armed = true;
            // Writers that read "disarmed" before we armed have committed by now: look again.
            if self.drain().await? > 0 {
                *armed = false;
            }
        }
        if poll_tick {
            self.reconciler
                .reconcile(self.settings.reconcile_after)
                .await?;
            self.record_gauges().await?;
        }
        Ok(())
    }
}
