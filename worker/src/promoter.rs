//! The promoter: moves delayed jobs (retries, deferrals, recomputes held back by
//! `RATING_RECOMPUTE_INTERVAL`) from the queue's delayed set into the stream when they are
//! due. It sleeps until the first is due, or the poll interval for jobs other workers
//! delayed, and wakes early on its bell: [`DelayedBell`], rung by whatever in this worker
//! puts a job in the delayed set.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::queue::JobQueue;

/// Jobs moved per promotion call.
const PROMOTE_LIMIT: usize = 500;

/// Rung after putting a job in the queue's delayed set, so the promoter sleeps until the
/// first is due rather than for the whole poll interval. Cheap to clone.
#[derive(Clone, Default)]
pub struct DelayedBell(Arc<Notify>);

impl DelayedBell {
    pub fn ring(&self) {
        self.0.notify_one();
    }

    async fn rung(&self) {
        self.0.notified().await;
    }
}

pub struct Promoter {
    pub queue: Arc<JobQueue>,
    pub bell: DelayedBell,
    /// The longest sleep: how late a job another worker delayed can be promoted.
    pub poll_interval: Duration,
}

impl Promoter {
    /// Promotes due jobs until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            let wait = match self.queue.promote_due(PROMOTE_LIMIT).await {
                Ok((_, Some(next))) => next.min(self.poll_interval),
                Ok((_, None)) => self.poll_interval,
                Err(error) => {
                    tracing::warn!(error = %error, "promoting due jobs failed");
                    self.poll_interval
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.bell.rung() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
