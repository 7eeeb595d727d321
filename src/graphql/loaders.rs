//! DataLoaders: the fields that would cost one query per parent (`Review.product`,
//! `Product.rating`) are collected and fetched in one statement per batch.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use reviews_db::products::{products_by_ids, Product};
use reviews_db::ratings::{ratings_by_product_ids, RatingSummary};
use reviews_db::{Db, StoreError};
use uuid::Uuid;

/// Products by id.
pub struct ProductLoader(pub Db);

/// Rating summaries by product id; products nobody reviewed get an empty summary.
pub struct RatingLoader(pub Db);

impl Loader<Uuid> for ProductLoader {
    type Value = Product;
    type Error = Arc<StoreError>;

    async fn load(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Product>, Self::Error> {
        let conn = self.0.conn().await?;
        let products = products_by_ids(&conn, ids).await?;
        Ok(products.into_iter().map(|p| (p.id, p)).collect())
    }
}

impl Loader<Uuid> for RatingLoader {
    type Value = RatingSummary;
    type Error = Arc<StoreError>;

    async fn load(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, RatingSummary>, Self::Error> {
        let conn = self.0.conn().await?;
        let mut summaries: HashMap<Uuid, RatingSummary> = ids
            .iter()
            .map(|id| (*id, RatingSummary::empty(*id)))
            .collect();
        for summary in ratings_by_product_ids(&conn, ids).await? {
            summaries.insert(summary.product_id, summary);
        }
        Ok(summaries)
    }
}

/// The per-request loaders as stored in the GraphQL context (cached, so primed keys are
/// served without another statement).
pub type Products =
    async_graphql::dataloader::DataLoader<ProductLoader, async_graphql::dataloader::HashMapCache>;
pub type Ratings =
    async_graphql::dataloader::DataLoader<RatingLoader, async_graphql::dataloader::HashMapCache>;
