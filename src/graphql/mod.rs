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
//! - `guards`: the extension that guards every operation, whatever its transport.

mod admin;
mod cursor;
pub mod guards;
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
use crate::config::AppEnv;
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
pub fn build_schema(db: Db, live: LiveFeed, guards: guards::Shared) -> ReviewsSchema {
    let limits = &guards.limits;
    let app_env = guards.app_env;
    let builder = Schema::build(
        Query::default(),
        Mutation::default(),
        subscription::Subscription,
    )
    .extension(guards::GuardsExtension(guards.clone()))
    .data(db)
    .data(live)
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

/// Attaches what one HTTP request brings: who is calling and the request's id. (Its
/// DataLoaders, fresh for every operation, are the guards'.)
pub fn request_data(
    request: async_graphql::Request,
    auth: Auth,
    request_id: RequestId,
) -> async_graphql::Request {
    request.data(auth).data(request_id)
}

/// Fresh DataLoaders: their cache must not outlive the operation.
pub(crate) fn loaders(db: &Db) -> (loaders::Products, loaders::Ratings) {
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
