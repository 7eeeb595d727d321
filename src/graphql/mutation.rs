//! Mutation: every operation needs a valid bearer token. Review changes run in a
//! transaction that records the acting user and request id (the outbox trigger reads them).

use async_graphql::{Context, Object, ID};
use reviews_db::reviews::{self, NewReview, ReviewPatch};
use reviews_db::sql::Actor;
use reviews_db::{products, Db};

use super::cursor::parse_id;
use super::input::*;
use super::types::{Product, Review};
use super::RequestId;
use crate::auth::{Auth, Claims, Role};
use crate::error::{ApiError, ApiResult};

/// Writes of products and reviews.
#[derive(Default)]
pub struct ReviewMutation;

fn actor(ctx: &Context<'_>, user: &Claims) -> Actor {
    Actor {
        user_id: user.sub.clone(),
        request_id: ctx.data_unchecked::<RequestId>().0.clone(),
    }
}

#[Object]
impl ReviewMutation {
    /// Creates a product owned by the caller.
    async fn create_product(
        &self,
        ctx: &Context<'_>,
        input: CreateProductInput,
    ) -> ApiResult<Product> {
        let user = ctx.data_unchecked::<Auth>().user()?;
        let name = valid_text("name", &input.name, MAX_NAME_CHARS)?;
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        let product = products::insert_product(&conn, name, &user.sub).await?;
        Ok(Product(product))
    }

    /// Reviews a product as the caller; one review per user and product (CONFLICT otherwise).
    async fn add_review(&self, ctx: &Context<'_>, input: AddReviewInput) -> ApiResult<Review> {
        let user = ctx.data_unchecked::<Auth>().user()?;
        let review = NewReview {
            product_id: parse_id(&input.product_id, "product")?,
            author_id: &user.sub,
            rating: valid_rating(input.rating)?,
            title: valid_text("title", &input.title, MAX_TITLE_CHARS)?,
            body: valid_text("body", &input.body, MAX_BODY_CHARS)?,
        };
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        let review = reviews::insert_review(&conn, &review, &actor(ctx, user)).await?;
        Ok(Review(review))
    }

    /// Changes the caller's own review.
    async fn update_review(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateReviewInput,
    ) -> ApiResult<Review> {
        let user = ctx.data_unchecked::<Auth>().user()?;
        let id = parse_id(&id, "review")?;
        let patch = ReviewPatch {
            rating: input.rating.map(valid_rating).transpose()?,
            title: input
                .title
                .as_deref()
                .map(|t| valid_text("title", t, MAX_TITLE_CHARS))
                .transpose()?,
            body: input
                .body
                .as_deref()
                .map(|b| valid_text("body", b, MAX_BODY_CHARS))
                .transpose()?,
        };
        if patch.rating.is_none() && patch.title.is_none() && patch.body.is_none() {
            return Err(ApiError::bad_input(
                "input must set at least one of rating, title, body",
            ));
        }
        let mut conn = ctx.data_unchecked::<Db>().conn().await?;
        let tx = conn.begin().await?;
        match reviews::lock_review_author(&tx, id).await? {
            None => return Err(ApiError::NotFound("review not found".into())),
            Some(author) if author != user.sub => {
                return Err(ApiError::Forbidden(
                    "only the review's author may change it".into(),
                ))
            }
            Some(_) => {}
        }
        tx.set_actor(&actor(ctx, user)).await?;
        let review = reviews::update_review(&tx, id, &patch)
            .await?
            .ok_or_else(|| ApiError::NotFound("review not found".into()))?;
        tx.commit().await?;
        Ok(Review(review))
    }

    /// Deletes a review: its author or an admin may. Returns the deleted review's id.
    async fn delete_review(&self, ctx: &Context<'_>, id: ID) -> ApiResult<ID> {
        let user = ctx.data_unchecked::<Auth>().user()?;
        let review_id = parse_id(&id, "review")?;
        let mut conn = ctx.data_unchecked::<Db>().conn().await?;
        let tx = conn.begin().await?;
        match reviews::lock_review_author(&tx, review_id).await? {
            None => return Err(ApiError::NotFound("review not found".into())),
            Some(author) if author != user.sub && user.role != Role::Admin => {
                return Err(ApiError::Forbidden(
                    "only the review's author or an admin may delete it".into(),
                ))
            }
            Some(_) => {}
        }
        tx.set_actor(&actor(ctx, user)).await?;
        reviews::delete_review(&tx, review_id).await?;
        tx.commit().await?;
        Ok(id)
    }
}
