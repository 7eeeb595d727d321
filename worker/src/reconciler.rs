//! Reconciliation: Postgres says which jobs are pending; the queue may not hold them all (a
//! crash between the relay's commit and its enqueue, a Redis restart without persistence, a
//! FLUSHALL, a replayed dead letter). Pending jobs that are overdue and unknown to the queue
//! are enqueued again. Enqueueing is idempotent, so racing a relay or a runner is harmless:
//! at worst a finished job is delivered once more and skipped.

use std::sync::Arc;
use std::time::Duration;

use reviews_db::jobs::{overdue_job_ids, still_pending};
use reviews_db::Db;

use crate::queue::JobQueue;

/// Jobs looked at per pass; a larger gap is closed over the next passes.
const PASS_LIMIT: i64 = 1_000;

pub struct Reconciler {
    db: Db,
    queue: Arc<JobQueue>,
}

impl Reconciler {
    pub fn new(db: Db, queue: Arc<JobQueue>) -> Self {
        Reconciler { db, queue }
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
        // (otherwise a finished batch got a second stream entry, delivered and skipped).
        let missing = {
            let conn = self.db.conn().await?;
            still_pending(&conn, &missing).await?
        };
        let added = self.queue.enqueue(&missing).await?;
        if added > 0 {
            tracing::warn!(
                jobs = added,
                "re-enqueued pending jobs the queue did not hold"
            );
        }
        Ok(added)
    }
}
