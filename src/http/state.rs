//! What every request handler shares: the schema, the database, token keys and limits.

use std::sync::Arc;

use reviews_db::Db;

use super::documents::DocumentCache;
use crate::auth::TokenKeys;
use crate::config::{AppEnv, Limits};
use crate::graphql::ReviewsSchema;
use crate::rate_limit::MutationLimits;

#[derive(Clone)]
pub struct AppState {
    pub schema: ReviewsSchema,
    pub db: Db,
    /// Shared: the state is cloned for every request.
    pub keys: Arc<TokenKeys>,
    pub limits: Limits,
    pub mutation_limits: MutationLimits,
    pub app_env: AppEnv,
    pub documents: Arc<DocumentCache>,
}
