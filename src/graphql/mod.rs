//! The GraphQL schema: queries, mutations, their types, and the per-request context.
//!
//! # Layout
//! - `query`, `mutation`: the root operations on reviews; `admin`: dead letters and retry
//!   policies, admin only; `webhooks`: webhook endpoints and deliveries, admin only.
//! - `subscription`: `reviewAdded` and `ratingChanged` over websocket.
//! - `types`: Product, Review, RatingSummary, Notification and the connection helper.
//! - `input`: mutation inputs and their validation.
//! - `cursor`: opaque cursors, page sizes and ids.
//! - `loaders`: DataLoaders that batch `Review.product` and `Product.rating`.

mod admin;
mod cursor;
mod input;
mod loaders;
mod mutation;
mod query;
mod subscription;
mod types;
mod webhooks;

use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::Schema;
use reviews_db::Db;

use crate::auth::Auth;
use crate::config::{AppEnv, Limits};
use crate::live::LiveFeed;
pub use loaders::{ProductLoader, RatingLoader};
/// Every query: the reviews' and the admin's.
#[derive(async_graphql::MergedObject, Default)]
pub struct Query(
    query::ReviewQuery,
    admin::AdminQuery,
    webhooks::WebhookQuery,
);

/// Every mutation: the reviews' and the admin's.
#[derive(async_graphql::MergedObject, Default)]
pub struct Mutation(
    mutation::ReviewMutation,
    admin::AdminMutation,
    webhooks::WebhookMutation,
);

pub type ReviewsSchema = Schema<Query, Mutation, subscription::Subscription>;

/// The id of the HTTP request, for logs and the outbox.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Builds the schema. The database handle is shared; per-request data (auth, request id,
/// DataLoaders) is added by [`request_data`].
pub fn build_schema(db: Db, live: LiveFeed, limits: &Limits, app_env: AppEnv) -> ReviewsSchema {
    let builder = Schema::build(
        Query::default(),
        Mutation::default(),
        subscription::Subscription,
    )
    .data(db)
    .data(live)
    .limit_depth(limits.max_depth)
    .limit_complexity(limits.max_complexity)
    .limit_directives(limits.max_directives)
    .limit_recursive_depth(32);
    match app_env {
        AppEnv::Development => builder.finish(),
        AppEnv::Production => builder
            .disable_introspection()
            .disable_suggestions()
            .finish(),
    }
}

/// Attaches what one request needs: who is calling, its id, and fresh DataLoaders (their
/// cache must not outlive the request).
pub fn request_data(
    request: async_graphql::Request,
    db: &Db,
    auth: Auth,
    request_id: RequestId,
) -> async_graphql::Request {
    let (products, ratings) = loaders(db);
    request
        .data(auth)
        .data(request_id)
        .data(products)
        .data(ratings)
}

/// The same for a websocket connection (its subscriptions share it).
pub fn connection_data(db: &Db, auth: Auth, request_id: RequestId) -> async_graphql::Data {
    let (products, ratings) = loaders(db);
    let mut data = async_graphql::Data::default();
    data.insert(auth);
    data.insert(request_id);
    data.insert(products);
    data.insert(ratings);
    data
}

fn loaders(db: &Db) -> (loaders::Products, loaders::Ratings) {
    (
        DataLoader::with_cache(
            ProductLoader(db.clone()),
            tokio::spawn,
            HashMapCache::default(),
        ),
        DataLoader::with_cache(
            RatingLoader(db.clone()),
            tokio::spawn,
            HashMapCache::default(),
        ),
    )
}
