//! The handle every access function takes: a connection or transaction that counts the
//! statements it runs, and [`StoreError`], the one error type of this layer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient, Row, Statement, Transaction};

use crate::config::Bookkeeping;
use crate::statements::{CachedClient, CachingManager};

/// Errors of the access layer. Constraint violations keep the constraint's name so the API
/// can map each to a client error in one place.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("constraint {constraint} violated")]
    Constraint {
        constraint: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("database error")]
    Postgres(#[source] tokio_postgres::Error),
    /// A statement that must return one row (or at most one) returned this many.
    #[error("expected one row, got {0}")]
    RowCount(usize),
}

impl StoreError {
    /// The violated constraint's name, if this is a constraint violation.
    pub fn constraint(&self) -> Option<&str> {
        match self {
            StoreError::Constraint { constraint, .. } => Some(constraint),
            _ => None,
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        if error.is_closed() {
            return StoreError::Unavailable(error.to_string());
        }
        let constraint = error
            .as_db_error()
            .and_then(|db| db.constraint())
            .map(str::to_owned);
        match constraint {
            Some(constraint) => StoreError::Constraint {
                constraint,
                source: error,
            },
            None => StoreError::Postgres(error),
        }
    }
}

/// Something that can run statements: a pooled connection or a transaction.
pub trait AsClient {
    type Client: GenericClient + Sync;
    fn as_client(&self) -> &Self::Client;
    /// The connection's prepared statements, if it keeps them (pooled connections do).
    fn cached(&self) -> Option<&CachedClient> {
        None
    }
}

impl AsClient for bb8::PooledConnection<'_, CachingManager> {
    type Client = Client;
    fn as_client(&self) -> &Client {
        self
    }
    fn cached(&self) -> Option<&CachedClient> {
        Some(&**self).filter(|client| client.keeps_statements())
    }
}

impl AsClient for Client {
    type Client = Client;
    fn as_client(&self) -> &Client {
        self
    }
}

/// A connection of its own shared by tasks (the worker's LISTEN connection).
impl AsClient for Arc<Client> {
    type Client = Client;
    fn as_client(&self) -> &Client {
        self
    }
}

impl<'a> AsClient for Transaction<'a> {
    type Client = Transaction<'a>;
    fn as_client(&self) -> &Transaction<'a> {
        self
    }
}

/// A connection or transaction that counts every statement it runs into a shared counter.
pub struct Sql<C> {
    client: C,
    statements: Arc<AtomicU64>,
    bookkeeping: Bookkeeping,
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

/// Parameters with their types spelled out: the statement is parsed, bound and run in one
/// round trip instead of two (no separate prepare). Used on the worker's hot path.
pub type TypedParams<'p> = &'p [(&'p (dyn ToSql + Sync), tokio_postgres::types::Type)];

impl<C: AsClient> Sql<C> {
    pub fn new(client: C, statements: Arc<AtomicU64>) -> Self {
        Sql {
            client,
            statements,
            bookkeeping: Bookkeeping::Synchronous,
        }
    }

    /// The same handle, committing the worker's bookkeeping as `bookkeeping` says.
    pub(crate) fn with_bookkeeping(mut self, bookkeeping: Bookkeeping) -> Self {
        self.bookkeeping = bookkeeping;
        self
    }

    /// The `synchronous_commit` bookkeeping statements set for their transaction (a text
    /// parameter; null: the server's). See [`Bookkeeping`].
    pub fn commit_setting(&self) -> Option<&'static str> {
        self.bookkeeping.setting()
    }

    fn count(&self) {
        self.statements.fetch_add(1, Ordering::Relaxed);
    }

    /// The connection's prepared statement for `sql` (no older than `max_age`, if given),
    /// when it keeps them.
    async fn prepared(
        &self,
        sql: &str,
        types: &[Type],
        max_age: Option<Duration>,
    ) -> Result<Option<Statement>, StoreError> {
        match self.client.cached() {
            Some(cached) => Ok(Some(cached.prepared(sql, types, max_age).await?)),
            None => Ok(None),
        }
    }

    /// Passes a result on; a prepared statement that Postgres no longer accepts (a schema
    /// change altered its result) is forgotten, so the next call prepares it afresh.
    fn checked<T>(
        &self,
        sql: &str,
        result: Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        if let (Err(error), Some(cached)) = (&result, self.client.cached()) {
            if matches!(
                error.code(),
                Some(&SqlState::FEATURE_NOT_SUPPORTED | &SqlState::INVALID_SQL_STATEMENT_NAME)
            ) {
                cached.forget(sql);
            }
        }
        Ok(result?)
    }

    /// Runs a statement that returns rows: through the connection's prepared statement (no
    /// older than `max_age`, if given) when it keeps them, else unnamed in one round trip
    /// (see [`unnamed`]).
    async fn rows(
        &self,
        sql: &str,
        params: Parameters<'_>,
        max_age: Option<Duration>,
    ) -> Result<Vec<Row>, StoreError> {
        self.count();
        let client = self.client.as_client();
        let result = match (self.prepared(sql, &params.types(), max_age).await?, params) {
            (Some(statement), params) => client.query(&statement, &params.values()).await,
            (None, Parameters::Typed(typed)) => client.query_typed(sql, typed).await,
            (None, Parameters::Untyped(values)) => match unnamed(values) {
                Some(typed) => client.query_typed(sql, &typed).await,
                None => client.query(sql, values).await,
            },
        };
        self.checked(sql, result)
    }

    /// Runs a statement and returns how many rows it changed.
    async fn changes(
        &self,
        sql: &str,
        params: Parameters<'_>,
        max_age: Option<Duration>,
    ) -> Result<u64, StoreError> {
        self.count();
        let client = self.client.as_client();
        let result = match (self.prepared(sql, &params.types(), max_age).await?, params) {
            (Some(statement), params) => client.execute(&statement, &params.values()).await,
            (None, Parameters::Typed(typed)) => client.execute_typed(sql, typed).await,
            (None, Parameters::Untyped(values)) => match unnamed(values) {
                Some(typed) => client.execute_typed(sql, &typed).await,
                None => client.execute(sql, values).await,
            },
        };
        self.checked(sql, result)
    }

    pub async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        self.rows(sql, Parameters::Untyped(params), None).await
    }

    pub async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, StoreError> {
        exactly_one(self.rows(sql, Parameters::Untyped(params), None).await?)
    }

    pub async fn query_opt(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        at_most_one(self.rows(sql, Parameters::Untyped(params), None).await?)
    }

    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
        self.changes(sql, Parameters::Untyped(params), None).await
    }

    /// [`Sql::query`] with the parameter types spelled out (see [`TypedParams`]).
    pub async fn query_typed(
        &self,
        sql: &str,
        params: TypedParams<'_>,
    ) -> Result<Vec<Row>, StoreError> {
        self.rows(sql, Parameters::Typed(params), None).await
    }

    /// [`Sql::query_one`] with the parameter types spelled out (see [`TypedParams`]).
    pub async fn query_typed_one(
        &self,
        sql: &str,
        params: TypedParams<'_>,
    ) -> Result<Row, StoreError> {
        exactly_one(self.rows(sql, Parameters::Typed(params), None).await?)
    }

    /// [`Sql::query_typed`] through a prepared statement made again once it is older than
    /// `max_age` (see [`Sql::query_typed_one_replanned`]).
    pub async fn query_typed_replanned(
        &self,
        sql: &str,
        params: TypedParams<'_>,
        max_age: Duration,
    ) -> Result<Vec<Row>, StoreError> {
        self.rows(sql, Parameters::Typed(params), Some(max_age))
            .await
    }

    /// [`Sql::query_typed_one`] through a prepared statement made again once it is older than
    /// `max_age`. For a statement Postgres plans once and keeps the plan of (no parameter, or
    /// none that changes the plan): that plan was made for the tables' sizes when it was
    /// prepared, and one made while a table was nearly empty (a new database) reads it whole
    /// once it has grown. Planning again every `max_age` bounds how long such a plan lasts.
    pub async fn query_typed_one_replanned(
        &self,
        sql: &str,
        params: TypedParams<'_>,
        max_age: Duration,
    ) -> Result<Row, StoreError> {
        exactly_one(self.query_typed_replanned(sql, params, max_age).await?)
    }

    /// [`Sql::query_opt`] with the parameter types spelled out (see [`TypedParams`]).
    pub async fn query_typed_opt(
        &self,
        sql: &str,
        params: TypedParams<'_>,
    ) -> Result<Option<Row>, StoreError> {
        at_most_one(self.rows(sql, Parameters::Typed(params), None).await?)
    }

    /// [`Sql::execute`] with the parameter types spelled out (see [`TypedParams`]).
    pub async fn execute_typed(
        &self,
        sql: &str,
        params: TypedParams<'_>,
    ) -> Result<u64, StoreError> {
        self.changes(sql, Parameters::Typed(params), None).await
    }

    /// [`Sql::execute_typed`] through a prepared statement made again once it is older than
    /// `max_age` (see [`Sql::query_typed_one_replanned`]).
    pub async fn execute_typed_replanned(
        &self,
        sql: &str,
        params: TypedParams<'_>,
        max_age: Duration,
    ) -> Result<u64, StoreError> {
        self.changes(sql, Parameters::Typed(params), Some(max_age))
            .await
    }

    /// Runs `sql`, which may hold several statements, in one round trip (the simple query
    /// protocol: no parameters, nothing prepared). Outside a transaction the statements run
    /// in one implicit transaction.
    pub async fn batch_execute(&self, sql: &str) -> Result<(), StoreError> {
        self.count();
        Ok(self.client.as_client().batch_execute(sql).await?)
    }
}

/// A statement's parameters: bare values (Postgres infers their types; a statement that is
/// not prepared costs a round trip to learn them), or values with their types.
#[derive(Clone, Copy)]
enum Parameters<'p> {
    Untyped(Params<'p>),
    Typed(TypedParams<'p>),
}

impl<'p> Parameters<'p> {
    fn types(&self) -> Vec<Type> {
        match self {
            Parameters::Untyped(_) => Vec::new(),
            Parameters::Typed(typed) => typed.iter().map(|(_, ty)| ty.clone()).collect(),
        }
    }

    fn values(&self) -> Vec<&'p (dyn ToSql + Sync)> {
        match self {
            Parameters::Untyped(values) => values.to_vec(),
            Parameters::Typed(typed) => typed.iter().map(|(value, _)| *value).collect(),
        }
    }
}

/// The types Postgres is told for a statement run unnamed, read from the Rust values: the
/// first of [`DECLARED`] each value accepts. Without them tokio-postgres would prepare a
/// named statement first (a round trip, and a name that a transaction pooler may hand to
/// another client's session). None when a value accepts none of them (an unusual type): the
/// statement is then prepared the usual way.
fn unnamed<'p>(values: Params<'p>) -> Option<Vec<(&'p (dyn ToSql + Sync), Type)>> {
    values
        .iter()
        .map(|value| {
            DECLARED
                .iter()
                .find(|ty| accepts(*value, ty))
                .map(|ty| (*value, ty.clone()))
        })
        .collect()
}

/// The types a parameter may be declared as, most specific first (a Rust `String` is text,
/// a `serde_json::Value` jsonb).
const DECLARED: [Type; 19] = [
    Type::INT8,
    Type::INT4,
    Type::INT2,
    Type::TEXT,
    Type::BOOL,
    Type::FLOAT8,
    Type::FLOAT4,
    Type::UUID,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMP,
    Type::DATE,
    Type::JSONB,
    Type::BYTEA,
    Type::INT8_ARRAY,
    Type::INT4_ARRAY,
    Type::TEXT_ARRAY,
    Type::UUID_ARRAY,
    Type::BOOL_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
];

/// Whether `value` can be sent as `ty` (tokio-postgres checks the type before encoding).
fn accepts(value: &(dyn ToSql + Sync), ty: &Type) -> bool {
    let mut scratch = bytes::BytesMut::new();
    match value.to_sql_checked(ty, &mut scratch) {
        Ok(_) => true,
        Err(error) => !error.is::<tokio_postgres::types::WrongType>(),
    }
}

fn exactly_one(rows: Vec<Row>) -> Result<Row, StoreError> {
    match at_most_one(rows)? {
        Some(row) => Ok(row),
        None => Err(StoreError::RowCount(0)),
    }
}

fn at_most_one(rows: Vec<Row>) -> Result<Option<Row>, StoreError> {
    let count = rows.len();
    let mut rows = rows.into_iter();
    match (rows.next(), count) {
        (row, 0 | 1) => Ok(row),
        _ => Err(StoreError::RowCount(count)),
    }
}

/// A connection that can start transactions (not a transaction itself).
pub trait Connection {
    fn client_mut(&mut self) -> &mut Client;
}

impl Connection for bb8::PooledConnection<'_, CachingManager> {
    fn client_mut(&mut self) -> &mut Client {
        self
    }
}

impl Connection for Client {
    fn client_mut(&mut self) -> &mut Client {
        self
    }
}

impl<C: Connection> Sql<C> {
    /// Starts a transaction on this connection; it rolls back unless committed.
    pub async fn begin(&mut self) -> Result<Sql<Transaction<'_>>, StoreError> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let tx = self.client.client_mut().transaction().await?;
        Ok(Sql::new(tx, self.statements.clone()).with_bookkeeping(self.bookkeeping))
    }
}

impl Sql<Transaction<'_>> {
    pub async fn commit(self) -> Result<(), StoreError> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        Ok(self.client.commit().await?)
    }
}

/// Who is acting and in which request: recorded with every review change (the outbox
/// trigger reads them from the transaction's settings `app.user_id` and `app.request_id`).
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub user_id: String,
    pub request_id: String,
}

impl Sql<Transaction<'_>> {
    /// Makes the actor visible to triggers for the rest of this transaction.
    pub async fn set_actor(&self, actor: &Actor) -> Result<(), StoreError> {
        self.execute(
            "select set_config('app.user_id', $1, true), set_config('app.request_id', $2, true)",
            &[&actor.user_id, &actor.request_id],
        )
        .await
        .map(|_| ())
    }
}
