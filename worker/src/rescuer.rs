//! The rescuer: keeps this runner's leases alive and takes back the leases other runners
//! let expire.
//!
//! - Heartbeat: every third of a lease, it renews the leases of the deliveries this runner
//!   holds and still owns (their idle time restarts, on Redis's clock). A lease another
//!   runner took over while this one stalled stays that runner's: this one forgets it, and
//!   the job's fencing token keeps this runner's outcome from being recorded.
//! - Take-back: the runner's reader, before it reads new work with the slots it holds, has
//!   the rescuer claim deliveries idle longer than the lease (their runner died or stalled)
//!   with those slots, and runs them through the executor; it does so every half lease and
//!   again at once while each scan fills every slot. The scan goes on from where the last
//!   one stopped, so expired leases behind live ones are reached. It takes back with the
//!   slots the reader gathered, so never more than this runner can run at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
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

    /// Takes over at most `permits.len()` expired leases and starts their jobs with as many
    /// of the permits; returns the permits left.
    pub async fn take_back(
        &self,
        mut permits: Vec<OwnedSemaphorePermit>,
        cursor: &mut String,
    ) -> Vec<OwnedSemaphorePermit> {
        let wanted = permits.len();
        match self
            .queue
            .take_back_expired(&self.consumer, self.lease, wanted, cursor)
            .await
        {
            Ok(taken) if !taken.is_empty() => {
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
                let rest = permits.split_off(taken.len());
                self.executor.spawn_batch(taken, permits);
                rest
            }
            Ok(_) => permits,
            Err(error) if is_missing_group(&error) => permits,
            Err(error) => {
                tracing::warn!(error = %error, "taking back expired leases failed");
                permits
            }
        }
    }
}
