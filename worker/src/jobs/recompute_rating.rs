//! `recompute_rating`: rebuilds a product's rating summary from the reviews table. The relay
//! makes one job per product a batch touches, merged with one that waits unstarted (the
//! coalesce key is the product), and the jobs started together recompute their products in
//! one statement.

use reviews_db::ratings::recompute_ratings;
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
}

impl JobKind for RecomputeRating {
    const NAME: &'static str = "recompute_rating";
    type Payload = Payload;
    const DEFAULT_POLICY: RetryPolicy = RetryPolicy::FALLBACK;
    const IN_BATCHES: bool = true;
    // One job per product the batch touched (an update that moves a review to another
    // product touches both), for its newest event. With an interval set, due no sooner than
    // the interval after the product's last recompute (`updated_at`; the summary is not read
    // without one). greatest() skips the null of a product never recomputed.
    const FROM_EVENTS: &'static str = "
        select distinct on (touched.product_id)
               c.event_id, touched.product_id::text,
               jsonb_build_object('product_id', touched.product_id, 'event_id', c.event_id,
                                  'actor_id', c.actor_id, 'request_id', c.request_id),
               case when $2 > 0
                    then greatest(now(), (select pr.updated_at from product_ratings pr
                                          where pr.product_id = touched.product_id)
                                         + $2 * interval '1 millisecond')
                    else now() end
        from claimed c
        cross join lateral (
            select c.product_id
            union
            select (c.payload->'old'->>'product_id')::uuid
        ) as touched (product_id)
        where touched.product_id is not null
        order by touched.product_id, c.id desc";

    /// Recomputes the jobs' products in one statement; a failed statement fails (and
    /// retries) them all.
    async fn run(&self, db: Db, jobs: Vec<Job<Payload>>) -> Vec<Result<(), JobError>> {
        let products: Vec<uuid::Uuid> = jobs.iter().map(|job| job.payload.product_id).collect();
        let recomputed = async {
            let conn = db.conn().await?;
            recompute_ratings(&conn, &products).await
        }
        .await;
        if recomputed.is_ok() {
            tracing::debug!(products = products.len(), "ratings recomputed");
        }
        all_or_none(jobs.len(), recomputed)
    }
}
