//! `recompute_rating`: keeps products' rating summaries. Each review event carries its delta
//! (+1 in the new rating's bucket of the new product, -1 in the old rating's of the old one);
//! the relay sums a batch's deltas per product into one job for the batch, and the jobs
//! started together add their deltas to the summaries, and are marked done, in one
//! statement: exactly once.
//!
//! With `RATING_RECOMPUTE_INTERVAL` set, a product whose summary changed less than the
//! interval ago gets a job of its own, held back until the interval has passed, keyed by the
//! product (a job that waits unstarted takes newer deltas in).
//!
//! A product recomputes instead (the reviews counted, less the deltas still on their way:
//! exact whatever runs beside it) when its events were replayed, when its job comes back
//! from a dead letter (or one was merged into it), or when the job was written before deltas
//! (no `stars`). A held-back job handed back unrun into a twin that waits adds its deltas to
//! the twin's (db/migrations/0017, 0018). scripts/repair-ratings runs the same recompute
//! for every product.

use reviews_db::ratings::apply_rating_jobs;
use reviews_db::Db;
use serde::{Deserialize, Serialize};

use super::{all_or_none, Job, JobError, JobKind};
use crate::retry::RetryPolicy;

pub struct RecomputeRating;

#[derive(Debug, Serialize, Deserialize)]
pub struct Payload {
    /// The products whose summaries the job changes. Absent in jobs written before one job
    /// per batch (db/migrations/0018): those name one product with the fields below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub products: Option<Vec<ProductDeltas>>,
    /// The one product of a job written before one job per batch. A job with `products`
    /// names its first one here too: workers from before 0018 cannot read a rating payload
    /// without it (during a rolling deploy; the database applies the job's stored payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<uuid::Uuid>,
    /// The newest event of the batch (for the logs).
    pub event_id: Option<uuid::Uuid>,
    pub actor_id: Option<String>,
    pub request_id: Option<String>,
    /// The deltas of a job written before one job per batch (absent before deltas too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stars: Option<[i32; 5]>,
    /// Recompute every product instead of adding deltas (a dead letter replayed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recompute: bool,
}

/// One product of a rating job.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProductDeltas {
    pub product_id: uuid::Uuid,
    /// How many reviews the events add to (or, negative, take from) each star bucket, 1 to
    /// 5. Absent when the product recomputes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stars: Option<[i32; 5]>,
    /// Recompute instead of adding `stars` (replayed events, a job merged into after a
    /// failure).
    #[serde(default)]
    pub recompute: bool,
}

impl Payload {
    /// Whether the payload names a product to change (else it is refused: it can do nothing).
    fn names_a_product(&self) -> bool {
        match &self.products {
            Some(products) => !products.is_empty(),
            None => self.product_id.is_some(),
        }
    }
}

impl JobKind for RecomputeRating {
    const NAME: &'static str = "recompute_rating";
    type Payload = Payload;
    const DEFAULT_POLICY: RetryPolicy = RetryPolicy::FALLBACK;
    const IN_BATCHES: bool = true;
    const COMPLETES_ITSELF: bool = true;
    // One job for the batch, with the sum of its events' deltas for each product whose
    // buckets they change (an update that moves a review to another product changes both;
    // one that keeps its product and rating changes none) and, for the logs, the newest
    // event. Replayed events recompute their products. With an interval set, a product whose
    // summary changed less than the interval ago gets a job of its own instead, due the
    // interval after that change and keyed by the product, which its later events join
    // while it waits (greatest() skips the null of a product without a summary). Each job
    // names its first product at the top too, for workers from before batch jobs (see
    // `Payload::product_id`).
    const FROM_EVENTS: &'static str = "
        with per_product as (
            select d.product_id,
                   max(c.id) as newest_id,
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
            -- review_rating_deltas(c.payload), written out: Postgres cannot inline a function
            -- of two selects, and calling it took about half of this select's time.
            cross join lateral (values
                ((c.payload->'old'->>'product_id')::uuid, (c.payload->'old'->>'rating')::int4, -1),
                ((c.payload->'new'->>'product_id')::uuid, (c.payload->'new'->>'rating')::int4, 1)
            ) as d (product_id, rating, delta)
            where d.product_id is not null
            group by d.product_id
        ), changed as (
            select p.*,
                   jsonb_build_object('product_id', p.product_id, 'stars', to_jsonb(p.stars),
                                      'recompute', p.recompute) as entry,
                   case when s.recompute_interval_ms > 0
                        then greatest(now(), (select pr.updated_at from product_ratings pr
                                              where pr.product_id = p.product_id)
                                             + s.recompute_interval_ms * interval '1 millisecond')
                        else now() end as run_at
            from relay_settings s, per_product p
            where p.recompute or p.stars <> '{0,0,0,0,0}'
        )
        select (array_agg(newest_event order by newest_id desc))[1], null::text,
               jsonb_build_object('products', jsonb_agg(entry order by product_id),
                                  'product_id', (array_agg(product_id order by product_id))[1],
                                  'event_id', (array_agg(newest_event order by newest_id desc))[1],
                                  'actor_id', (array_agg(actor_id order by newest_id desc))[1],
                                  'request_id', (array_agg(request_id order by newest_id desc))[1]),
               now()
        from changed
        where run_at <= now()
          -- Names migration 0018's function, so that on a schema without it (a worker
          -- started before `migrate`) this statement fails and the events wait, instead of
          -- making jobs that 0016's apply_rating_jobs would mark done without applying.
          and (select count(*) from rating_job_products('{\"products\": []}')) = 0
        having count(*) > 0
        union all
        select newest_event, product_id::text,
               jsonb_build_object('products', jsonb_build_array(entry), 'product_id', product_id,
                                  'event_id', newest_event,
                                  'actor_id', actor_id, 'request_id', request_id),
               run_at
        from changed
        where run_at > now()";

    /// Adds the jobs' deltas (or recomputes) and marks them done, in one statement; a failed
    /// statement changes nothing and fails (and retries) them all. A job that names no
    /// product fails for good on its own.
    async fn run(&self, db: Db, jobs: Vec<Job<Payload>>) -> Vec<Result<(), JobError>> {
        let mut settled = Vec::with_capacity(jobs.len());
        // Each job's result: a refusal now, or (None) the statement's.
        let mut refused: Vec<Option<JobError>> = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let payload = if job.payload.names_a_product() {
                serde_json::to_value(&job.payload)
                    .map_err(|e| anyhow::anyhow!("payload does not serialise: {e}"))
            } else {
                Err(anyhow::anyhow!(
                    "its payload names no product (neither a products list with entries nor \
                     a product_id)"
                ))
            };
            match payload {
                Ok(payload) => {
                    settled.push((job.fencing(), payload));
                    refused.push(None);
                }
                Err(why) => refused.push(Some(JobError::Permanent(why))),
            }
        }
        let applied = async {
            let conn = db.conn().await?;
            apply_rating_jobs(&conn, &settled).await
        }
        .await;
        if applied.is_ok() {
            tracing::debug!(jobs = settled.len(), "rating summaries updated");
        }
        let mut applied = all_or_none(settled.len(), applied).into_iter();
        refused
            .into_iter()
            .map(|refusal| match refusal {
                Some(error) => Err(error),
                None => applied.next().expect("one result per applied job"),
            })
            .collect()
    }
}
