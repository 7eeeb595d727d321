//! Query: reads are open to everyone, except `notifications` (the caller's own).

use async_graphql::{Context, Object, ID};
use reviews_db::{notifications, products, reviews, Db};

use super::cursor::{page_complexity, page_request, parse_id};
use super::types::{
    connection, prime_page_of_products, reviews_of_product, Notification, Paged, Product, Review,
};
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use reviews_db::page::Position;

/// Reads of products, reviews and notifications.
#[derive(Default)]
pub struct ReviewQuery;

#[Object]
impl ReviewQuery {
    /// One product by id; NOT_FOUND when there is none.
    async fn product(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<Product>> {
        let id = parse_id(&id, "product")?;
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        match products::product_by_id(&conn, id).await? {
            Some(product) => Ok(Some(Product(product))),
            None => Err(ApiError::NotFound("product not found".into())),
        }
    }

    /// All products, newest first.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn products(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Paged<Product>> {
        let request = page_request(first, after.as_deref())?;
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        let page = products::list_products(&conn, &request).await?;
        drop(conn);
        prime_page_of_products(ctx, &page).await?;
        let position = |p: &reviews_db::products::Product| Position {
            created_at: p.created_at,
            id: p.id,
        };
        Ok(connection(page, after.is_some(), position, Product))
    }

    /// One review by id; NOT_FOUND when there is none.
    async fn review(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<Review>> {
        let id = parse_id(&id, "review")?;
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        match reviews::review_by_id(&conn, id).await? {
            Some(review) => Ok(Some(Review(review))),
            None => Err(ApiError::NotFound("review not found".into())),
        }
    }

    /// A product's reviews, newest first; NOT_FOUND when the product does not exist.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn reviews(
        &self,
        ctx: &Context<'_>,
        product_id: ID,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Paged<Review>> {
        let product_id = parse_id(&product_id, "product")?;
        let request = page_request(first, after.as_deref())?;
        reviews_of_product(ctx, product_id, &request, after.is_some())
            .await?
            .ok_or_else(|| ApiError::NotFound("product not found".into()))
    }

    /// The caller's notifications, newest first. Needs a bearer token.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn notifications(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Paged<Notification>> {
        let user = ctx.data_unchecked::<Auth>().user()?;
        let request = page_request(first, after.as_deref())?;
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        let page =
            notifications::list_notifications_for_recipient(&conn, &user.sub, &request).await?;
        let position = |n: &reviews_db::notifications::Notification| Position {
            created_at: n.created_at,
            id: n.id,
        };
        Ok(connection(page, after.is_some(), position, Notification))
    }
}
