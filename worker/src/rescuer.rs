//! The rescuer: keeps this runner's leases alive and takes back the leases other runners
//! let expire.
//!
//! - Heartbeat: every third of a lease, it renews the leases of the deliveries this runner
//!   holds and still owns (their idle time restarts, on Redis's clock). A lease another
//!   runner took over while this one stalled stays that runner's: this one forgets it, and
//!   the job's fencing token keeps this runner's outcome from being recorded.
//! - Take-back: every half lease, it claims deliveries idle longer than the lease (their
//!   runner died or stalled) and runs them here, through the executor. It scans the pending
//!   list from where its last scan stopped, so expired leases behind live ones are reached.
//!   It waits for a free slot rather than skipping a round: an idle runner's reader holds
//!   every free slot while it blocks on the stream, so skipping would leave a dead worker's
//!   jobs until new work arrives.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::executor::{Executor, Held};
use crate::queue::{is_missing_group, JobQueue};

pub struct Rescuer {
    pub queue: Arc<JobQueue>,
    pub executor: Executor,
    pub held: Held,
    /// This runner's consumer name in the stream's group.
    pub consumer: String,
    pub lease: Duration,
}

impl Rescuer {
    /// Renews the leases of held deliveries until `stop`.
    pub async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let held = self.held.entry_ids();
            match self.queue.heartbeat(&self.consumer, &held).await {
                Ok(lost) if !lost.is_empty() => {
                    metrics::counter!("leases_lost_total").increment(lost.len() as u64);
                    tracing::warn!(
                        entries = ?lost,
                        "another runner took over leases this one let expire; they are its now"
                    );
                    self.held.forget(&lost);
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(error = %error, "heartbeat failed; leases may expire"),
            }
        }
    }

    /// Takes back expired leases until `stop`; the jobs it starts run in the executor's
    /// tracker, like the reader's.
    pub async fn take_back(self: Arc<Self>, slots: Arc<Semaphore>, stop: CancellationToken) {
        let mut cursor = String::from("0-0");
        let mut tick = tokio::time::interval(self.lease / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            // The semaphore is fair: this gets the next slot the reader lets go.
            let first = tokio::select! {
                _ = stop.cancelled() => break,
                permit = slots.clone().acquire_owned() => permit.expect("semaphore closed"),
            };
            let mut permits = vec![first];
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                permits.push(permit);
            }
            match self
                .queue
                .take_back_expired(&self.consumer, self.lease, permits.len(), &mut cursor)
                .await
            {
                Ok(taken) => {
                    permits.truncate(taken.len());
                    for delivery in &taken {
                        self.executor
                            .stats
                            .taken_back
                            .fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("lease_takebacks_total").increment(1);
                        tracing::warn!(
                            job.id = delivery.job_id,
                            "took back a job whose lease expired"
                        );
                    }
                    // Stopping means no new work, taken back or read.
                    if !taken.is_empty() && !stop.is_cancelled() {
                        self.executor.spawn_batch(taken, permits);
                    }
                }
                Err(error) if is_missing_group(&error) => {}
                Err(error) => tracing::warn!(error = %error, "taking back expired leases failed"),
            }
        }
    }
}
