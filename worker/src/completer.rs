//! The completer: records what became of each job run, in Postgres first and then in Redis,
//! so a crash in between leaves a delivery that is taken back and settled again (a job that
//! is done cannot start again: it is acknowledged then).
//!
//! - Complete: in batches. Under load many jobs succeed within the same millisecond; marking
//!   each done in its own transaction, and acknowledging each in its own Redis call, costs a
//!   WAL flush and two round trips per job, and the flushes bound the drain rate. So every
//!   succeeded job hands its delivery to one task, which marks all that have arrived done in
//!   one statement, acknowledges them in one Redis script call, and then answers each job.
//!   When jobs trickle in, a batch is a single job: nothing waits for company. A job of a
//!   kind that completes itself (its effects and its completion are one statement) is only
//!   acknowledged.
//! - Retry and Defer: the next run time in Postgres, the job into Redis's delayed set.
//! - Bury: a dead letter in Postgres, the job forgotten in Redis.
//! - A delivered job that could not start: see [`Completer::settle_unstartable`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use reviews_db::jobs::{self, JobState, StartedJob};
use reviews_db::Db;
use tokio::sync::{mpsc, oneshot};

use crate::outcome::Outcome;
use crate::promoter::DelayedBell;
use crate::queue::{Delivery, JobQueue};
use crate::stats::RunnerStats;

/// The most jobs one completion statement records.
const MAX_BATCH: usize = 256;

struct Completion {
    delivery: Delivery,
    attempt: jobs::Attempt,
    /// Marked done already, by its handler's statement: only acknowledge it.
    done_already: bool,
    recorded: oneshot::Sender<Result<bool, String>>,
}

/// A handle to the completer; cheap to clone. Its batching task ends with the last handle.
#[derive(Clone)]
pub struct Completer {
    sender: mpsc::Sender<Completion>,
    db: Db,
    queue: Arc<JobQueue>,
    stats: Arc<RunnerStats>,
    delayed_bell: DelayedBell,
}

impl Completer {
    /// Starts the completing task; call within a tokio runtime.
    pub fn start(
        db: Db,
        queue: Arc<JobQueue>,
        stats: Arc<RunnerStats>,
        delayed_bell: DelayedBell,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(complete_batches(
            db.clone(),
            queue.clone(),
            stats.clone(),
            receiver,
        ));
        Completer {
            sender,
            db,
            queue,
            stats,
            delayed_bell,
        }
    }

    /// Records a started job's outcome in Postgres, then in Redis. An outcome the job's
    /// fencing token refuses (another runner took the job over) is recorded nowhere.
    /// `completed_by_handler`: a success was recorded in Postgres by the handler already.
    pub async fn settle(
        &self,
        delivery: &Delivery,
        job: &StartedJob,
        outcome: Outcome,
        completed_by_handler: bool,
    ) -> anyhow::Result<()> {
        let attempt = job.fencing();
        let recorded = match outcome {
            Outcome::Complete => {
                let recorded = self
                    .complete(delivery.clone(), attempt, completed_by_handler)
                    .await?;
                if recorded {
                    self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                    record_run(&job.kind, "succeeded");
                    // From the job's creation (the event's relay) to its success.
                    let latency = (now_ms() - job.created_at.timestamp_millis()).max(0);
                    metrics::histogram!("job_end_to_end_seconds", "kind" => job.kind.clone())
                        .record(latency as f64 / 1000.0);
                    tracing::debug!("job succeeded");
                }
                recorded
            }
            Outcome::Defer { delay, reason } => self.defer(delivery, job, delay, &reason).await?,
            Outcome::Retry { delay, error } => {
                let scheduled = {
                    let conn = self.db.conn().await?;
                    let delay_ms = delay.as_millis() as i64;
                    jobs::schedule_retry(&conn, attempt, delay_ms, &error).await?
                };
                if scheduled {
                    self.queue.retry_later(delivery, delay).await?;
                    self.delayed_bell.ring();
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    record_run(&job.kind, "retried");
                    tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
                }
                scheduled
            }
            Outcome::Bury { error, why } => {
                let buried = self.bury(delivery, attempt, &error).await?;
                if buried {
                    record_run(&job.kind, "dead");
                    tracing::error!(error = %error, "{}", why.message());
                }
                buried
            }
        };
        if !recorded {
            metrics::counter!("job_outcomes_fenced_total").increment(1);
            tracing::warn!(
                "another runner took this job over (its lease expired while this one stalled); \
                 this run's outcome is not recorded"
            );
        }
        Ok(())
    }

    /// Not run, and not an attempt: gives the attempt back and runs the job again after
    /// `delay`. False when fenced.
    async fn defer(
        &self,
        delivery: &Delivery,
        job: &StartedJob,
        delay: Duration,
        reason: &str,
    ) -> anyhow::Result<bool> {
        let attempt = job.fencing();
        let scheduled = {
            let conn = self.db.conn().await?;
            if !jobs::hand_back_job(&conn, attempt).await? {
                return Ok(false);
            }
            let given_back = jobs::Attempt {
                job_id: job.id,
                attempt: job.attempt - 1,
            };
            jobs::schedule_retry(&conn, given_back, delay.as_millis() as i64, reason).await?
        };
        if scheduled {
            self.queue.retry_later(delivery, delay).await?;
            self.delayed_bell.ring();
        } else {
            // Handed back into a twin that waits with the same coalesce key: it is done.
            self.queue.finish(delivery).await?;
        }
        record_run(&job.kind, "deferred");
        tracing::debug!(%reason, "job deferred");
        Ok(true)
    }

    /// Ends a job as a dead letter in Postgres, then forgets it in Redis. False when fenced.
    async fn bury(
        &self,
        delivery: &Delivery,
        attempt: jobs::Attempt,
        error: &str,
    ) -> anyhow::Result<bool> {
        let buried = {
            let conn = self.db.conn().await?;
            jobs::bury_job(&conn, attempt, error).await?
        };
        if buried {
            self.queue.finish(delivery).await?;
            self.stats.dead.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buried)
    }

    /// A delivered job that could not start: finished already, scheduled for later, or out
    /// of attempts because its last attempt never reported back.
    pub async fn settle_unstartable(
        &self,
        delivery: &Delivery,
        fallback_max: i32,
    ) -> anyhow::Result<()> {
        let state = {
            let conn = self.db.conn().await?;
            jobs::job_state(&conn, delivery.job_id, fallback_max).await?
        };
        let look_again = Duration::from_millis(100);
        match state {
            JobState::Finished => self.queue.finish(delivery).await?,
            JobState::Scheduled { in_ms } => {
                self.queue
                    .retry_later(delivery, Duration::from_millis(in_ms as u64))
                    .await?;
                self.delayed_bell.ring();
            }
            JobState::Exhausted { attempts } => {
                let error = format!(
                    "attempt {attempts} never reported back (its worker died or stalled past the lease)"
                );
                let attempt = jobs::Attempt {
                    job_id: delivery.job_id,
                    attempt: attempts,
                };
                if self.bury(delivery, attempt, &error).await? {
                    metrics::counter!("dead_letters_total", "kind" => "unknown").increment(1);
                    tracing::error!(job.id = delivery.job_id, error = %error, "job is now a dead letter");
                } else {
                    // It moved on meanwhile: look again in a moment.
                    self.queue.retry_later(delivery, look_again).await?;
                    self.delayed_bell.ring();
                }
            }
            JobState::Pending => {
                self.queue.retry_later(delivery, look_again).await?;
                self.delayed_bell.ring();
            }
        }
        Ok(())
    }

    /// Marks the delivered job done in Postgres (if still pending at `attempt`), then
    /// acknowledges the delivery in Redis; returns once both happened (with the job's whole
    /// batch), and whether the job was marked.
    async fn complete(
        &self,
        delivery: Delivery,
        attempt: jobs::Attempt,
        done_already: bool,
    ) -> anyhow::Result<bool> {
        let stopped = || anyhow::anyhow!("the completer stopped");
        let (recorded, answer) = oneshot::channel();
        self.sender
            .send(Completion {
                delivery,
                attempt,
                done_already,
                recorded,
            })
            .await
            .map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(anyhow::Error::msg)
    }
}

async fn complete_batches(
    db: Db,
    queue: Arc<JobQueue>,
    stats: Arc<RunnerStats>,
    mut receiver: mpsc::Receiver<Completion>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        stats.completion_batches.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("job_completion_batch_size").record(batch.len() as f64);
        let recorded = record(&db, &queue, &batch)
            .await
            .map_err(|error| format!("{error:#}"));
        for completion in batch.drain(..) {
            let answer = match &recorded {
                Ok(completed) => Ok(completed.contains(&completion.delivery.job_id)),
                Err(error) => Err(error.clone()),
            };
            // A job whose task was aborted (shutdown) no longer listens: nothing to tell.
            let _ = completion.recorded.send(answer);
        }
    }
}

/// Marks the batch's jobs done in one statement (those their handlers did not) and
/// acknowledges the done ones in one Redis call; returns the ids of the done ones.
async fn record(
    db: &Db,
    queue: &JobQueue,
    batch: &[Completion],
) -> anyhow::Result<std::collections::HashSet<i64>> {
    let attempts: Vec<jobs::Attempt> = batch
        .iter()
        .filter(|c| !c.done_already)
        .map(|c| c.attempt)
        .collect();
    let mut completed: std::collections::HashSet<i64> = batch
        .iter()
        .filter(|c| c.done_already)
        .map(|c| c.delivery.job_id)
        .collect();
    if !attempts.is_empty() {
        let conn = db.conn().await?;
        completed.extend(jobs::complete_jobs(&conn, &attempts).await?);
    }
    let deliveries: Vec<Delivery> = batch
        .iter()
        .filter(|c| completed.contains(&c.delivery.job_id))
        .map(|c| c.delivery.clone())
        .collect();
    queue.finish_all(&deliveries).await?;
    Ok(completed)
}

/// Counts a finished run; dead letters also get their own counter.
fn record_run(kind: &str, outcome: &'static str) {
    metrics::counter!("job_runs_total", "kind" => kind.to_owned(), "outcome" => outcome)
        .increment(1);
    if outcome == "dead" {
        metrics::counter!("dead_letters_total", "kind" => kind.to_owned()).increment(1);
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
