//! `recompute_rating`: keeps a product's rating summary. Each review event carries its delta
//! (+1 in the new rating's bucket of the new product, -1 in the old rating's of the old one);
//! the relay sums a batch's deltas per product into one job (the coalesce key is the
//! product; a job that waits unstarted takes newer deltas in), and the jobs started together
//! add their deltas to the summaries, and are marked done, in one statement: exactly once.
//!
//! A job recomputes its product instead (the reviews counted, less the deltas still on their
//! way: exact whatever runs beside it) when its events were replayed, when it comes back from
//! a dead letter (or one was merged into it), or when it was written before deltas (no
//! `stars`). A job handed back unrun into a twin that waits adds its deltas to the twin's
//! (db/migrations/0017). scripts/repair-ratings runs the same recompute for every product.

use reviews_db::ratings::apply_rating_jobs;
use reviews_db::Db;
use serde::{Deserialize, Serialize};

use super::{all_or_none, Job, JobError, JobKind};
use crate::retry::RetryPolicy;

pub struct RecomputeRating;

#[derive(Debug, Serialize, Deserialize)]
pub struct Payload {
    pub product_id: uuid::Uuid,
    /// The newest event of the product in the relay's batch (for the logs).
    pub event_id: Option<uuid::Uuid>,
    pub actor_id: Option<String>,
    pub request_id: Option<String>,
    /// How many reviews the events add to (or, negative, take from) each star bucket, 1 to
    /// 5. Absent in jobs written before deltas: those recompute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stars: Option<[i32; 5]>,
    /// Recompute instead of adding `stars` (replayed events, a dead letter replayed).
    #[serde(default)]
    pub recompute: bool,
}

impl JobKind for RecomputeRating {
    const NAME: &'static str = "recompute_rating";
    type Payload = Payload;
    const DEFAULT_POLICY: RetryPolicy = RetryPolicy::FALLBACK;
    const IN_BATCHES: bool = true;
    const COMPLETES_ITSELF: bool = true;
    // One job per product whose buckets the batch changes (an update that moves a review to
    // another product changes both; one that keeps its product and rating changes none),
    // with the sum of the events' deltas and, for the logs, the newest event. Replayed
    // events recompute. With an interval set, due no sooner than the interval after the
    // product's summary last changed (greatest() skips the null of a product without one).
    const FROM_EVENTS: &'static str = "
        select newest_event, product_id::text,
               jsonb_build_object('product_id', product_id, 'event_id', newest_event,
                                  'actor_id', actor_id, 'request_id', request_id,
                                  'stars', to_jsonb(stars), 'recompute', recompute),
               case when s.recompute_interval_ms > 0
                    then greatest(now(), (select pr.updated_at from product_ratings pr
                                          where pr.product_id = per_product.product_id)
                                         + s.recompute_interval_ms * interval '1 millisecond')
                    else now() end
        from relay_settings s, (
            select d.product_id,
                   (array_agg(c.event_id order by c.id desc))[1] as newest_event,
                   (array_agg(c.actor_id order by c.id desc))[1] as actor_id,
                   (array_agg(c.request_id order by c.id desc))[1] as request_id,
                   array[coalesce(sum(d.delta) filter (where d.rating = 1), 0),
                         coalesce(sum(d.delta) filter (where d.rating = 2), 0),
                         coalesce(sum(d.delta) filter (where d.rating = 3), 0),
                         coalesce(sum(d.delta) filter (where d.rating = 4), 0),
                         coalesce(sum(d.delta) filter (where d.rating = 5), 0)]::int4[] as stars,
                   bool_or(c.replayed) as recompute
            from claimed c
            cross join lateral review_rating_deltas(c.payload) d
            where d.product_id is not null
            group by d.product_id
        ) per_product
        where recompute or stars <> '{0,0,0,0,0}'";

    /// Adds the jobs' deltas (or recomputes) and marks them done, in one statement; a failed
    /// statement changes nothing and fails (and retries) them all.
    async fn run(&self, db: Db, jobs: Vec<Job<Payload>>) -> Vec<Result<(), JobError>> {
        let settled: Result<Vec<_>, serde_json::Error> = jobs
            .iter()
            .map(|job| Ok((job.fencing(), serde_json::to_value(&job.payload)?)))
            .collect();
        let settled = match settled {
            Ok(settled) => settled,
            Err(error) => {
                let message = format!("payload does not serialise: {error}");
                return jobs
                    .iter()
                    .map(|_| Err(JobError::Permanent(anyhow::anyhow!("{message}"))))
                    .collect();
            }
        };
        let applied = async {
            let conn = db.conn().await?;
            apply_rating_jobs(&conn, &settled).await
        }
        .await;
        if applied.is_ok() {
            tracing::debug!(jobs = jobs.len(), "rating summaries updated");
        }
        all_or_none(jobs.len(), applied)
    }
}
