//! The `reviews` table. Writes run inside a transaction that carries the [`Actor`]
//! (see [`Sql::set_actor`]), so the change is attributed wherever it is recorded.
//!
//! [`Actor`]: crate::sql::Actor

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::page::{Page, PageRequest};
use crate::products::Product;
use crate::ratings::RatingSummary;
use tokio_postgres::types::Type;

use crate::sql::{Actor, AsClient, Sql, StoreError};

#[derive(Debug, Clone)]
pub struct Review {
    pub id: Uuid,
    pub product_id: Uuid,
    pub author_id: String,
    pub rating: i16,
    pub title: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Row> for Review {
    fn from(row: &Row) -> Self {
        Review {
            id: row.get("id"),
            product_id: row.get("product_id"),
            author_id: row.get("author_id"),
            rating: row.get("rating"),
            title: row.get("title"),
            body: row.get("body"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
        }
    }
}

const COLUMNS: &str = "id, product_id, author_id, rating, title, body, created_at, updated_at";

pub struct NewReview<'a> {
    pub product_id: Uuid,
    pub author_id: &'a str,
    pub rating: i16,
    pub title: &'a str,
    pub body: &'a str,
}

/// The fields an update may change; `None` keeps the stored value.
#[derive(Debug, Default)]
pub struct ReviewPatch<'a> {
    pub rating: Option<i16>,
    pub title: Option<&'a str>,
    pub body: Option<&'a str>,
}

/// Inserts a review as `actor`, in one statement and one round trip: the actor's settings
/// are made in the same (implicit) transaction, before the row exists, so the outbox trigger
/// records them.
pub async fn insert_review<C: AsClient>(
    db: &Sql<C>,
    review: &NewReview<'_>,
    actor: &Actor,
) -> Result<Review, StoreError> {
    let sql = format!(
        "with actor as (
             select set_config('app.user_id', $6, true), set_config('app.request_id', $7, true)
         )
         insert into reviews (product_id, author_id, rating, title, body)
         select $1, $2, $3, $4, $5 from actor
         returning {COLUMNS}"
    );
    let row = db
        .query_typed_one(
            &sql,
            &[
                (&review.product_id, Type::UUID),
                (&review.author_id, Type::TEXT),
                (&review.rating, Type::INT2),
                (&review.title, Type::TEXT),
                (&review.body, Type::TEXT),
                (&actor.user_id, Type::TEXT),
                (&actor.request_id, Type::TEXT),
            ],
        )
        .await?;
    Ok(Review::from(&row))
}

pub async fn review_by_id<C: AsClient>(
    db: &Sql<C>,
    id: Uuid,
) -> Result<Option<Review>, StoreError> {
    let sql = format!("select {COLUMNS} from reviews where id = $1");
    Ok(db
        .query_typed_opt(&sql, &[(&id, Type::UUID)])
        .await?
        .as_ref()
        .map(Review::from))
}

/// The review's author, locking the row until the transaction ends (so a permission check
/// and the write that follows it see the same row).
pub async fn lock_review_author<C: AsClient>(
    db: &Sql<C>,
    id: Uuid,
) -> Result<Option<String>, StoreError> {
    let row = db
        .query_opt(
            "select author_id from reviews where id = $1 for update",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

pub async fn update_review<C: AsClient>(
    db: &Sql<C>,
    id: Uuid,
    patch: &ReviewPatch<'_>,
) -> Result<Option<Review>, StoreError> {
    let sql = format!(
        "update reviews set
             rating = coalesce($2, rating),
             title = coalesce($3, title),
             body = coalesce($4, body)
         where id = $1
         returning {COLUMNS}"
    );
    let row = db
        .query_opt(&sql, &[&id, &patch.rating, &patch.title, &patch.body])
        .await?;
    Ok(row.as_ref().map(Review::from))
}

/// Deletes a review; false when there was none.
pub async fn delete_review<C: AsClient>(db: &Sql<C>, id: Uuid) -> Result<bool, StoreError> {
    Ok(db
        .execute("delete from reviews where id = $1", &[&id])
        .await?
        == 1)
}

/// A product with its rating summary and one page of its reviews: what a product's review
/// page shows.
#[derive(Debug, Clone)]
pub struct ProductReviews {
    pub product: Product,
    pub rating: RatingSummary,
    pub page: Page<Review>,
}

/// A page of a product's reviews, newest first, with the product and its rating summary, in
/// one statement: the review page is the API's most frequent read, and three round trips
/// (page, product, rating) cost three times the Postgres and network work of one. `None`
/// when the product does not exist.
pub async fn product_with_reviews<C: AsClient>(
    db: &Sql<C>,
    product_id: Uuid,
    page: &PageRequest,
) -> Result<Option<ProductReviews>, StoreError> {
    let (after_at, after_id) = page.after_params();
    // One row per review (the product's columns repeated), or one row with null review
    // columns when the page is empty.
    let sql = format!(
        "select p.name as product_name, p.owner_id as product_owner_id,
                p.created_at as product_created_at,
                coalesce(pr.review_count, 0) as review_count, coalesce(pr.rating_sum, 0) as rating_sum,
                coalesce(pr.stars_1, 0) as stars_1, coalesce(pr.stars_2, 0) as stars_2,
                coalesce(pr.stars_3, 0) as stars_3, coalesce(pr.stars_4, 0) as stars_4,
                coalesce(pr.stars_5, 0) as stars_5, r.*
         from products p
         left join product_ratings pr on pr.product_id = p.id
         left join lateral (
             select {COLUMNS} from reviews
             where product_id = p.id and (created_at, id) < ($2, $3)
             order by created_at desc, id desc
             limit $4
         ) r on true
         where p.id = $1"
    );
    let rows = db
        .query(&sql, &[&product_id, &after_at, &after_id, &page.limit()])
        .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let product = Product {
        id: product_id,
        name: first.get("product_name"),
        owner_id: first.get("product_owner_id"),
        created_at: first.get("product_created_at"),
    };
    let rating = RatingSummary {
        product_id,
        count: first.get("review_count"),
        sum: first.get("rating_sum"),
        histogram: [
            first.get("stars_1"),
            first.get("stars_2"),
            first.get("stars_3"),
            first.get("stars_4"),
            first.get("stars_5"),
        ],
    };
    let reviews = rows
        .iter()
        .filter(|row| row.get::<_, Option<Uuid>>("id").is_some())
        .map(Review::from)
        .collect();
    Ok(Some(ProductReviews {
        product,
        rating,
        page: Page::from_rows(reviews, page),
    }))
}

/// The reviews created by these outbox events that still exist (for live subscriptions).
pub async fn reviews_created_by_events<C: AsClient>(
    db: &Sql<C>,
    event_ids: &[Uuid],
) -> Result<Vec<Review>, StoreError> {
    let sql = format!(
        "select {} from reviews r join outbox o on o.review_id = r.id
         where o.event_id = any($1) and o.event_type = 'review.created'
         order by o.id",
        COLUMNS
            .split(", ")
            .map(|c| format!("r.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rows = db.query(&sql, &[&event_ids]).await?;
    Ok(rows.iter().map(Review::from).collect())
}
