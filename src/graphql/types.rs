//! The GraphQL object types: Product, Review, RatingSummary, Notification.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Object, OutputType, ID};
use chrono::{DateTime, Utc};
use reviews_db::page::{Page, Position};
use reviews_db::Db;

use super::cursor::{encode_cursor, page_complexity, page_request};
use super::loaders::{Products, Ratings};
use crate::error::{ApiError, ApiResult};

pub struct Product(pub reviews_db::products::Product);
pub struct Review(pub reviews_db::reviews::Review);
pub struct RatingSummary(pub reviews_db::ratings::RatingSummary);
pub struct Notification(pub reviews_db::notifications::Notification);

/// Relay connection of `T`: edges with opaque cursors and pageInfo.
pub type Paged<T> = Connection<String, T>;

/// Builds a connection from a page of rows. Forward pagination only: `hasPreviousPage` is
/// true when the page started after a cursor.
pub fn connection<R, T: OutputType>(
    page: Page<R>,
    had_cursor: bool,
    position: impl Fn(&R) -> Position,
    node: impl Fn(R) -> T,
) -> Paged<T> {
    let mut connection = Connection::new(had_cursor, page.has_next);
    connection.edges = page
        .rows
        .into_iter()
        .map(|row| Edge::new(encode_cursor(&position(&row)), node(row)))
        .collect();
    connection
}

#[Object]
impl Product {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    async fn owner_id(&self) -> &str {
        &self.0.owner_id
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// Count, average and histogram of the product's ratings, kept current by the worker.
    async fn rating(&self, ctx: &Context<'_>) -> ApiResult<RatingSummary> {
        let loader = ctx.data_unchecked::<Ratings>();
        let summary = loader
            .load_one(self.0.id)
            .await
            .map_err(ApiError::internal)?;
        Ok(RatingSummary(summary.unwrap_or_else(|| {
            reviews_db::ratings::RatingSummary::empty(self.0.id)
        })))
    }

    /// The product's reviews, newest first.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn reviews(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Paged<Review>> {
        let request = page_request(first, after.as_deref())?;
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        let page =
            reviews_db::reviews::list_reviews_for_product(&conn, self.0.id, &request).await?;
        drop(conn);
        prime_page_of_reviews(ctx, &page).await?;
        Ok(connection(page, after.is_some(), review_position, Review))
    }
}

/// Queues a page's products in the loader in one call, so the batch is one statement however
/// the executor interleaves the children's own loads (which then hit the cache).
pub async fn prime_products(
    ctx: &Context<'_>,
    ids: impl IntoIterator<Item = uuid::Uuid>,
) -> ApiResult<()> {
    let loader = ctx.data_unchecked::<Products>();
    loader.load_many(ids).await.map_err(ApiError::internal)?;
    Ok(())
}

/// As [`prime_products`], for rating summaries.
pub async fn prime_ratings(
    ctx: &Context<'_>,
    ids: impl IntoIterator<Item = uuid::Uuid>,
) -> ApiResult<()> {
    let loader = ctx.data_unchecked::<Ratings>();
    loader.load_many(ids).await.map_err(ApiError::internal)?;
    Ok(())
}

/// Loads ahead what a page's nodes will ask for: their products (and those products'
/// ratings) for a review page, the ratings for a product page.
pub async fn prime_page_of_reviews(
    ctx: &Context<'_>,
    page: &Page<reviews_db::reviews::Review>,
) -> ApiResult<()> {
    let product = ctx
        .look_ahead()
        .field("edges")
        .field("node")
        .field("product");
    if !product.exists() {
        return Ok(());
    }
    let ids: Vec<uuid::Uuid> = page.rows.iter().map(|r| r.product_id).collect();
    prime_products(ctx, ids.iter().copied()).await?;
    if product.field("rating").exists() {
        prime_ratings(ctx, ids).await?;
    }
    Ok(())
}

pub async fn prime_page_of_products(
    ctx: &Context<'_>,
    page: &Page<reviews_db::products::Product>,
) -> ApiResult<()> {
    if ctx
        .look_ahead()
        .field("edges")
        .field("node")
        .field("rating")
        .exists()
    {
        prime_ratings(ctx, page.rows.iter().map(|p| p.id)).await?;
    }
    Ok(())
}

pub fn review_position(r: &reviews_db::reviews::Review) -> Position {
    Position {
        created_at: r.created_at,
        id: r.id,
    }
}

#[Object]
impl Review {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn product(&self, ctx: &Context<'_>) -> ApiResult<Product> {
        let loader = ctx.data_unchecked::<Products>();
        let product = loader
            .load_one(self.0.product_id)
            .await
            .map_err(ApiError::internal)?;
        // Reviews are deleted with their product, so a review always has one.
        product.map(Product).ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!("review {} has no product", self.0.id))
        })
    }

    async fn author_id(&self) -> &str {
        &self.0.author_id
    }

    /// Stars, 1 to 5.
    async fn rating(&self) -> i32 {
        i32::from(self.0.rating)
    }

    async fn title(&self) -> &str {
        &self.0.title
    }

    async fn body(&self) -> &str {
        &self.0.body
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

#[Object]
impl RatingSummary {
    /// How many reviews the product has.
    async fn count(&self) -> i32 {
        self.0.count
    }

    /// Mean stars; 0 when there are no reviews.
    async fn average(&self) -> f64 {
        self.0.average()
    }

    /// Five counts: how many reviews gave 1, 2, 3, 4 and 5 stars.
    async fn histogram(&self) -> Vec<i32> {
        self.0.histogram.to_vec()
    }
}

#[Object]
impl Notification {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    /// What happened, e.g. `review.created` on one of your products.
    async fn kind(&self) -> &str {
        &self.0.kind
    }

    async fn review_id(&self) -> Option<ID> {
        self.0.review_id.map(|id| ID(id.to_string()))
    }

    async fn product_id(&self) -> Option<ID> {
        self.0.product_id.map(|id| ID(id.to_string()))
    }

    /// The outbox event that caused this notification.
    async fn event_id(&self) -> ID {
        ID(self.0.event_id.to_string())
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn read_at(&self) -> Option<DateTime<Utc>> {
        self.0.read_at
    }
}
