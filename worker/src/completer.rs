//! The completer: records successful jobs in batches.
//!
//! Under load many jobs succeed within the same millisecond. Marking each done in its own
//! transaction, and acknowledging each in its own Redis call, cost a WAL flush and two round
//! trips per job, and the flushes were what bounded the drain rate. Here every succeeded job
//! hands its delivery to one task, which marks all that have arrived done in one statement,
//! acknowledges them in one Redis script call, and then answers each job. The order per job
//! is unchanged (Postgres first, then Redis), so a crash in between leaves a delivery whose
//! job is done: it is taken back, cannot start, and is acknowledged then.
//!
//! When jobs trickle in, a batch is a single job: nothing waits for company.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use reviews_db::jobs;
use reviews_db::Db;
use tokio::sync::{mpsc, oneshot};

use crate::queue::{Delivery, JobQueue};
use crate::runner::RunnerStats;

/// The most jobs one completion statement records.
const MAX_BATCH: usize = 256;

struct Completion {
    delivery: Delivery,
    recorded: oneshot::Sender<Result<(), String>>,
}

/// A handle to the completing task; cheap to clone. The task ends with the last handle.
#[derive(Clone)]
pub struct Completer {
    sender: mpsc::Sender<Completion>,
}

impl Completer {
    /// Starts the completing task; call within a tokio runtime.
    pub fn start(db: Db, queue: Arc<JobQueue>, stats: Arc<RunnerStats>) -> Self {
        let (sender, receiver) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(complete_batches(db, queue, stats, receiver));
        Completer { sender }
    }

    /// Marks the delivered job done in Postgres, then acknowledges the delivery in Redis;
    /// returns once both happened (with the job's whole batch).
    pub async fn complete(&self, delivery: Delivery) -> anyhow::Result<()> {
        let stopped = || anyhow::anyhow!("the completer stopped");
        let (recorded, answer) = oneshot::channel();
        self.sender
            .send(Completion { delivery, recorded })
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
        let deliveries: Vec<Delivery> = batch.iter().map(|c| c.delivery.clone()).collect();
        metrics::histogram!("job_completion_batch_size").record(deliveries.len() as f64);
        let outcome = record(&db, &queue, &deliveries)
            .await
            .map_err(|error| format!("{error:#}"));
        for completion in batch.drain(..) {
            // A job whose task was aborted (shutdown) no longer listens: nothing to tell.
            let _ = completion.recorded.send(outcome.clone());
        }
    }
}

async fn record(db: &Db, queue: &JobQueue, deliveries: &[Delivery]) -> anyhow::Result<()> {
    let ids: Vec<i64> = deliveries.iter().map(|d| d.job_id).collect();
    {
        let conn = db.conn().await?;
        jobs::complete_jobs(&conn, &ids).await?;
    }
    queue.finish_all(deliveries).await?;
    Ok(())
}
