//! What every request handler shares: the schema, the database, token keys and limits.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use reviews_db::Db;

use super::documents::DocumentCache;
use super::socket::Sockets;
use crate::auth::TokenKeys;
use crate::config::{AppEnv, Edges};
use crate::graphql::ReviewsSchema;

#[derive(Clone)]
pub struct AppState {
    pub schema: ReviewsSchema,
    pub db: Db,
    /// Shared: the state is cloned for every request.
    pub keys: Arc<TokenKeys>,
    pub edges: Arc<Edges>,
    pub app_env: AppEnv,
    pub documents: Arc<DocumentCache>,
    pub sockets: Arc<Sockets>,
    /// Set once /readyz has found every migration of this build applied (migrations only
    /// ever add): from then on it only pings.
    pub schema_current: Arc<AtomicBool>,
}
