//! The GraphQL object types: Product, Review, RatingSummary, Notification.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Object, OutputType, ID};
use chrono::{DateTime, Utc};
use reviews_db::page::{Page, PageRequest, Position};
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
        let page = reviews_of_product(ctx, self.0.id, &request, after.is_some()).await?;
        // None: the product was deleted since it was read; it has no reviews left either.
        Ok(page.unwrap_or_else(|| Connection::new(after.is_some(), false)))
    }
}

/// Queues a page's rating summaries in the loader in one call, so the batch is one statement
/// however the executor interleaves the children's own loads (which then hit the cache).
pub async fn prime_ratings(
    ctx: &Context<'_>,
    ids: impl IntoIterator<Item = uuid::Uuid>,
) -> ApiResult<()> {
    let loader = ctx.data_unchecked::<Ratings>();
    loader.load_many(ids).await.map_err(ApiError::internal)?;
    Ok(())
}

/// One page of a product's reviews, in one statement with the product and its rating
/// summary, which are fed to the loaders: every review of the page has this product, so the
/// nodes' `product` and `rating` fields need no statement of their own. None when the
/// product does not exist.
pub async fn reviews_of_product(
    ctx: &Context<'_>,
    product_id: uuid::Uuid,
    request: &PageRequest,
    had_cursor: bool,
) -> ApiResult<Option<Paged<Review>>> {
    let found = {
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        reviews_db::reviews::product_with_reviews(&conn, product_id, request).await?
    };
    let Some(found) = found else {
        return Ok(None);
    };
    ctx.data_unchecked::<Products>()
        .feed_one(product_id, found.product)
        .await;
    ctx.data_unchecked::<Ratings>()
        .feed_one(product_id, found.rating)
        .await;
    Ok(Some(connection(
        found.page,
        had_cursor,
        review_position,
        Review,
    )))
}

/// Loads ahead the ratings a product page's nodes will ask for.
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
