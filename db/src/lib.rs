//! Everything about the reviews database: the SQL migrations and the Rust access layer that
//! the API (`reviews-api`) and the worker (`reviews-worker`) share.
//!
//! Every statement lives next to the function that runs it, one function per statement, in
//! a module per table. Functions take a [`Sql`] handle (a pooled connection or a
//! transaction) that counts the statements it runs, so tests can prove that a GraphQL page
//! costs a constant number of queries.
//!
//! # Layout
//! - `config`: the connection settings (`DATABASE_URL` or `DB_*`, `DB_POOL_MODE`) and the pool.
//! - `tls`: TLS to Postgres, configured like libpq (`sslmode`, `sslrootcert`).
//! - `locks`: every advisory-lock key, named once.
//! - `migrate`: applies `db/migrations/*.sql` (embedded) and keeps the `schema_migrations` ledger.
//! - `sql`: the counting connection/transaction handle and [`StoreError`].
//! - `statements`: the pool's connections and the prepared statements each keeps (none
//!   behind a transaction pooler).
//! - `page`: keyset pagination (the position a cursor points at).
//! - `products`, `reviews`, `ratings`, `notifications`: one module per table.
//! - `outbox`: claiming events into jobs (the relay's statement).
//! - `doorbell`: how a relay goes to sleep, and wakes, without a writer ever waiting.
//! - `jobs`: job attempts, retries, dead letters and replay; `retry_policies`: schedules.
//! - `webhooks`: endpoints and their delivery records.
//! - `testing` (feature): per-test databases cloned from a migrated template.

pub mod config;
pub mod doorbell;
pub mod jobs;
pub mod locks;
pub mod migrate;
pub mod notifications;
pub mod outbox;
pub mod page;
pub mod products;
pub mod ratings;
pub mod retry_policies;
pub mod reviews;
pub mod sql;
pub mod statements;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod webhooks;

pub use config::{Bookkeeping, Db, DbArgs, DbTargets, PgTarget, PoolMode};
pub use sql::{Sql, StoreError};
