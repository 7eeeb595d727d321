//! The rescuer: keeps this runner's leases alive and takes back the leases other runners
//! let expire.
//!
//! - Heartbeat: every third of a lease, it renews the leases of the deliveries this runner
//!   holds (their idle time restarts, on Redis's clock).
//! - Take-back: every half lease, it claims deliveries idle longer than the lease (their
//!   runner died or stalled) and runs them here, through the executor. It waits for a free
//!   slot rather than skipping a round: an idle runner's reader holds every free slot while
//!   it blocks on the stream, so skipping would leave a dead worker's jobs until new work
//!   arrives.

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
            if let Err(error) = self.queue.heartbeat(&self.consumer, &held).await {
                tracing::warn!(error = %error, "heartbeat failed; leases may expire");
            }
        }
    }

    /// Takes back expired leases until `stop`, then waits for the jobs it started.
    pub async fn take_back(self: Arc<Self>, slots: Arc<Semaphore>, stop: CancellationToken) {
        let mut running = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(self.lease / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            while running.try_join_next().is_some() {}
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
                .take_back_expired(&self.consumer, self.lease, permits.len())
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
                    if !taken.is_empty() {
                        self.executor.spawn_batch(&mut running, taken, permits);
                    }
                }
                Err(error) if is_missing_group(&error) => {}
                Err(error) => tracing::warn!(error = %error, "taking back expired leases failed"),
            }
        }
        while running.join_next().await.is_some() {}
    }
}
