//! The `product_ratings` table: each product's rating summary.

use tokio_postgres::types::Type;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::sql::{AsClient, Sql, StoreError};

/// A product's rating summary. A product nobody reviewed has [`RatingSummary::empty`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatingSummary {
    pub product_id: Uuid,
    pub count: i32,
    pub sum: i32,
    /// How many reviews gave 1, 2, 3, 4 and 5 stars.
    pub histogram: [i32; 5],
}

impl RatingSummary {
    pub fn empty(product_id: Uuid) -> Self {
        RatingSummary {
            product_id,
            count: 0,
            sum: 0,
            histogram: [0; 5],
        }
    }

    /// Mean stars, 0 when there are no reviews.
    pub fn average(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            f64::from(self.sum) / f64::from(self.count)
        }
    }
}

impl From<&Row> for RatingSummary {
    fn from(row: &Row) -> Self {
        RatingSummary {
            product_id: row.get("product_id"),
            count: row.get("review_count"),
            sum: row.get("rating_sum"),
            histogram: [
                row.get("stars_1"),
                row.get("stars_2"),
                row.get("stars_3"),
                row.get("stars_4"),
                row.get("stars_5"),
            ],
        }
    }
}

/// Loads the summaries of many products in one statement (the DataLoader's batch); products
/// without a row are absent from the result.
pub async fn ratings_by_product_ids<C: AsClient>(
    db: &Sql<C>,
    product_ids: &[Uuid],
) -> Result<Vec<RatingSummary>, StoreError> {
    let rows = db
        .query_typed(
            "select product_id, review_count, rating_sum, stars_1, stars_2, stars_3, stars_4, stars_5
             from product_ratings where product_id = any($1)",
            &[(&product_ids, Type::UUID_ARRAY)],
        )
        .await?;
    Ok(rows.iter().map(RatingSummary::from).collect())
}

/// Recomputes products' summaries exactly, in one statement and transaction (see
/// `recompute_product_rating` in db/migrations/0016 and 0018: the reviews counted, less the
/// deltas still on their way; serialised per product; a no-op for a product that is gone). The
/// repair path (scripts/repair-ratings) and tests use it. Products are taken in id order, so
/// two batches that share products take their locks in the same order and cannot deadlock.
pub async fn recompute_ratings<C: AsClient>(
    db: &Sql<C>,
    product_ids: &[Uuid],
) -> Result<(), StoreError> {
    if product_ids.is_empty() {
        return Ok(());
    }
    db.execute_typed(
        "select recompute_product_rating(id)
         from (select distinct id from unnest($1::uuid[]) as wanted (id) order by id) ids",
        &[(&product_ids, tokio_postgres::types::Type::UUID_ARRAY)],
    )
    .await?;
    Ok(())
}

/// Settles rating jobs with their effects in one statement (`apply_rating_jobs` in
/// db/migrations/0016 and 0018, which reads both payload forms): marks them done at the
/// attempts that ran them, or fails whole if any is no longer at that attempt; adds the
/// deltas they carry to their products' summaries; recomputes the products of those that
/// ask for it. Committed, the jobs cannot run again; failed, nothing happened.
pub async fn apply_rating_jobs<C: AsClient>(
    db: &Sql<C>,
    jobs: &[(crate::jobs::Attempt, serde_json::Value)],
) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    // Locked in id order: two batches never wait for each other in a cycle.
    let mut jobs: Vec<&(crate::jobs::Attempt, serde_json::Value)> = jobs.iter().collect();
    jobs.sort_unstable_by_key(|(attempt, _)| *attempt);
    let (ids, numbers) = crate::jobs::in_lock_order(jobs.iter().map(|(attempt, _)| *attempt));
    let payloads: Vec<&serde_json::Value> = jobs.iter().map(|(_, p)| p).collect();
    db.query_typed(
        "select apply_rating_jobs($1, $2, $3, $4)",
        &[
            (&ids, Type::INT8_ARRAY),
            (&numbers, Type::INT4_ARRAY),
            (&payloads, Type::JSONB_ARRAY),
            (&db.commit_setting(), Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}
