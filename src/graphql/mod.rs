//! The GraphQL schema: queries, mutations, their types, and the per-request context.
//!
//! # Layout
//! - `query`, `mutation`: the root operations.
//! - `types`: Product, Review, RatingSummary, Notification and the connection helper.
//! - `input`: mutation inputs and their validation.
//! - `cursor`: opaque cursors, page sizes and ids.
//! - `loaders`: DataLoaders that batch `Review.product` and `Product.rating`.

mod cursor;
mod input;
mod loaders;
mod mutation;
mod query;
mod types;

use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::{EmptySubscription, Schema};
use reviews_db::Db;

use crate::auth::Auth;
pub use loaders::{ProductLoader, RatingLoader};
pub use mutation::Mutation;
pub use query::Query;

pub type ReviewsSchema = Schema<Query, Mutation, EmptySubscription>;

/// The id of the HTTP request, for logs and the outbox.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Builds the schema. The database handle is shared; per-request data (auth, request id,
/// DataLoaders) is added by [`request_data`].
pub fn build_schema(db: Db) -> ReviewsSchema {
    Schema::build(Query, Mutation, EmptySubscription)
        .data(db)
        .limit_depth(12)
        .limit_complexity(5_000)
        .finish()
}

/// Attaches what one request needs: who is calling, its id, and fresh DataLoaders (their
/// cache must not outlive the request).
pub fn request_data(
    request: async_graphql::Request,
    db: &Db,
    auth: Auth,
    request_id: RequestId,
) -> async_graphql::Request {
    request
        .data(auth)
        .data(request_id)
        .data(DataLoader::with_cache(
            ProductLoader(db.clone()),
            tokio::spawn,
            HashMapCache::default(),
        ))
        .data(DataLoader::with_cache(
            RatingLoader(db.clone()),
            tokio::spawn,
            HashMapCache::default(),
        ))
}
