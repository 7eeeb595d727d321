//! Prepared statements kept per pooled connection.
//!
//! Without a cache every statement is parsed, analysed and planned by Postgres each time it
//! runs (tokio-postgres prepares an unnamed statement per call), which was ~20% of the
//! database's CPU under the worker's load and a quarter of a millisecond on the relay's
//! path. The pool's manager wraps bb8-postgres's and gives each connection a map from SQL
//! text to its prepared statement; the SQL comes from this crate's code, so the map stays
//! small (it is cleared if it ever grows past [`MAX_STATEMENTS`]).
//!
//! Behind a transaction pooler (`DB_POOL_MODE=transaction`) a connection's statements would
//! land in whichever server session served the transaction that prepared them: nothing is
//! kept there, and every statement runs unnamed (see `sql`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

/// More distinct statements than the code holds means SQL is being built from data: stop
/// caching it all (clear, and start over).
const MAX_STATEMENTS: usize = 256;

/// A pooled connection: the client and its prepared statements.
pub struct CachedClient {
    client: Client,
    /// Each with when it was prepared.
    statements: Mutex<HashMap<String, (Statement, Instant)>>,
    /// False behind a transaction pooler: nothing is prepared.
    keeps_statements: bool,
}

impl std::ops::Deref for CachedClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for CachedClient {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl CachedClient {
    /// Whether this connection keeps prepared statements.
    pub fn keeps_statements(&self) -> bool {
        self.keeps_statements
    }

    /// The prepared statement for `sql` (with these parameter types, if given), preparing it
    /// on first use, and again once it is older than `max_age` (if given): see
    /// [`Sql::query_typed_one_replanned`](crate::Sql::query_typed_one_replanned).
    pub async fn prepared(
        &self,
        sql: &str,
        types: &[Type],
        max_age: Option<Duration>,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some((statement, prepared_at)) = self.cache().get(sql) {
            if max_age.is_none_or(|max_age| prepared_at.elapsed() < max_age) {
                return Ok(statement.clone());
            }
        }
        // A statement replaced here is closed in Postgres once its last clone is dropped.
        let statement = self.client.prepare_typed(sql, types).await?;
        let mut cache = self.cache();
        if cache.len() >= MAX_STATEMENTS && !cache.contains_key(sql) {
            cache.clear();
        }
        cache.insert(sql.to_owned(), (statement.clone(), Instant::now()));
        Ok(statement)
    }

    /// Drops `sql`'s statement (after it failed: a schema change can outdate it).
    pub fn forget(&self, sql: &str) {
        self.cache().remove(sql);
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Statement, Instant)>> {
        // The map holds no invariant a panic could break: recover it.
        self.statements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// bb8-postgres's manager, with a statement cache on every connection (an unused one behind
/// a transaction pooler).
pub struct CachingManager {
    pub inner: PostgresConnectionManager<MakeRustlsConnect>,
    pub keep_statements: bool,
    /// How Postgres plans this pool's prepared statements (a session setting: only where
    /// statements are kept).
    pub plans: PlanCache,
}

/// How Postgres plans a pool's prepared statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlanCache {
    /// Postgres's choice: five plans for the values of each run, then the generic plan if
    /// it costs no more than they did.
    #[default]
    Auto,
    /// One generic plan per prepare (`plan_cache_mode = force_generic_plan`). For the
    /// worker, whose relay statement is prepared again every second on each connection it
    /// uses (`RELAY_PLAN_MAX_AGE`): its start-count parameter cost five plans of 3-4 ms after
    /// each prepare, about 0.6 ms per relay call at 200/s (docs/PERFORMANCE.md, run K).
    /// The worker's statements look rows up by key, whatever their parameters.
    Generic,
}

impl bb8::ManageConnection for CachingManager {
    type Connection = CachedClient;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<CachedClient, Self::Error> {
        let client = self.inner.connect().await?;
        if self.keep_statements && self.plans == PlanCache::Generic {
            client
                .batch_execute("set plan_cache_mode = force_generic_plan")
                .await?;
        }
        Ok(CachedClient {
            client,
            statements: Mutex::default(),
            keeps_statements: self.keep_statements,
        })
    }

    async fn is_valid(&self, conn: &mut CachedClient) -> Result<(), Self::Error> {
        self.inner.is_valid(&mut conn.client).await
    }

    fn has_broken(&self, conn: &mut CachedClient) -> bool {
        self.inner.has_broken(&mut conn.client)
    }
}
