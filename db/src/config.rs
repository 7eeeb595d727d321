//! Connection settings (URLs, TLS, pooler mode) and the connection pool.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::sql::{Sql, StoreError};
use crate::statements::{CachingManager, PlanCache};
use crate::tls::{RootCertError, RootCerts, SslMode};
use reviews_service::pool::LastError;
use reviews_service::settings::parse_secret;
use secrecy::{ExposeSecret, SecretString};

/// Where Postgres is and how to reach it. `DATABASE_URL` wins; otherwise the `DB_*` parts
/// are used.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// Postgres connection URL (postgres://user:pass@host:port/db[?sslmode=...]); overrides
    /// the DB_* parts. Its `sslmode` and `sslrootcert` win over DB_SSLMODE and DB_SSLROOTCERT.
    #[arg(long = "database-url", env = "DATABASE_URL", value_name = "DATABASE_URL",
          value_parser = parse_database_url, hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,
    /// A direct Postgres URL (not through a transaction pooler) for what needs a session of
    /// its own: LISTEN and migrations. Required with DB_POOL_MODE=transaction; defaults to
    /// DATABASE_URL.
    #[arg(long = "database-direct-url", env = "DATABASE_DIRECT_URL",
          value_name = "DATABASE_DIRECT_URL", value_parser = parse_database_url,
          hide_env_values = true)]
    pub database_direct_url: Option<DatabaseUrl>,
    /// Postgres host, used when DATABASE_URL is not set.
    #[arg(
        long = "db-host",
        env = "DB_HOST",
        value_name = "DB_HOST",
        default_value = "127.0.0.1"
    )]
    pub db_host: String,
    /// Postgres port.
    #[arg(
        long = "db-port",
        env = "DB_PORT",
        value_name = "DB_PORT",
        default_value_t = 5432
    )]
    pub db_port: u16,
    /// Postgres user.
    #[arg(
        long = "db-user",
        env = "DB_USER",
        value_name = "DB_USER",
        default_value = "postgres"
    )]
    pub db_user: String,
    /// Postgres password (none by default).
    #[arg(
        long = "db-password",
        env = "DB_PASSWORD",
        value_name = "DB_PASSWORD",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub db_password: Option<SecretString>,
    /// Postgres database name.
    #[arg(
        long = "db-name",
        env = "DB_NAME",
        value_name = "DB_NAME",
        default_value = "reviews"
    )]
    pub db_name: String,
    /// TLS to Postgres, as libpq's sslmode: disable, prefer (default), require, verify-ca,
    /// verify-full.
    #[arg(long = "db-sslmode", env = "DB_SSLMODE", value_name = "DB_SSLMODE")]
    pub db_sslmode: Option<SslMode>,
    /// PEM file of the CAs trusted for Postgres's certificate (verify-ca, verify-full; makes
    /// require check the CA), or `system` for the system's trust store (the default).
    #[arg(
        long = "db-sslrootcert",
        env = "DB_SSLROOTCERT",
        value_name = "DB_SSLROOTCERT"
    )]
    pub db_sslrootcert: Option<String>,
    /// Most connections the pool keeps open.
    #[arg(long = "db-pool-size", env = "DB_POOL_SIZE", value_name = "DB_POOL_SIZE",
          default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_size: u32,
    /// How a pooler in front of Postgres pools: `session` (or no pooler) keeps prepared
    /// statements per connection; `transaction` (PgBouncer's transaction mode) sends every
    /// statement unnamed and LISTEN and migrations to DATABASE_DIRECT_URL.
    #[arg(long = "db-pool-mode", env = "DB_POOL_MODE", value_name = "DB_POOL_MODE",
          value_enum, default_value_t = PoolMode::Session)]
    pub db_pool_mode: PoolMode,
}

/// How the connections of the pool are pooled again in front of Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PoolMode {
    /// Each connection is a session of its own: prepared statements are kept.
    #[default]
    Session,
    /// Consecutive transactions of one connection may reach different server sessions:
    /// nothing outlives a transaction.
    Transaction,
}

/// A Postgres URL as given: what tokio-postgres reads, and the TLS settings it does not.
#[derive(Debug, Clone)]
pub struct DatabaseUrl {
    pub config: tokio_postgres::Config,
    pub sslmode: Option<SslMode>,
    pub sslrootcert: Option<RootCerts>,
}

impl From<tokio_postgres::Config> for DatabaseUrl {
    fn from(config: tokio_postgres::Config) -> Self {
        DatabaseUrl {
            config,
            sslmode: None,
            sslrootcert: None,
        }
    }
}

/// Reads a URL (postgres://...) or a key=value string, taking out `sslmode` (all of libpq's
/// values; tokio-postgres knows three) and `sslrootcert` (unknown to tokio-postgres).
fn parse_database_url(value: &str) -> Result<DatabaseUrl, String> {
    const EXPECTED: &str = "not a valid Postgres URL (postgres://user:pass@host:port/dbname)";
    let mut sslmode = None;
    let mut sslrootcert = None;
    let mut take = |key: &str, value: &str| -> Result<bool, String> {
        match key {
            "sslmode" => {
                sslmode = Some(
                    value
                        .parse::<SslMode>()
                        .map_err(|e| format!("sslmode: {e}"))?,
                )
            }
            "sslrootcert" => sslrootcert = Some(RootCerts::parse(value)),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if value.starts_with("postgres://") || value.starts_with("postgresql://") {
        let mut url = url::Url::parse(value).map_err(|_| EXPECTED.to_owned())?;
        let mut kept = Vec::new();
        for (key, value) in url.query_pairs() {
            if !take(&key, &value)? {
                kept.push((key.into_owned(), value.into_owned()));
            }
        }
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        url.to_string()
    } else {
        let mut kept = Vec::new();
        for word in value.split_whitespace() {
            let taken = match word.split_once('=') {
                Some((key, value)) => take(key.trim(), value.trim_matches('\''))?,
                None => false,
            };
            if !taken {
                kept.push(word);
            }
        }
        kept.join(" ")
    };
    let config = rest
        .parse::<tokio_postgres::Config>()
        .map_err(|_| EXPECTED.to_owned())?;
    Ok(DatabaseUrl {
        config,
        sslmode,
        sslrootcert,
    })
}

/// Settings that cannot be used together, or a file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DbConfigError {
    #[error(transparent)]
    RootCert(#[from] RootCertError),
    #[error(
        "DB_POOL_MODE=transaction needs DATABASE_DIRECT_URL: LISTEN and migrations need a \
         session of their own, which a transaction pooler does not keep (point it at Postgres \
         itself, not at the pooler)"
    )]
    DirectUrlMissing,
}

/// Somewhere to connect: the connection settings and the TLS they ask for.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

/// A connection's driver, to spawn (see tokio-postgres's `Connection`).
pub type PgConnection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

impl PgTarget {
    /// `config` as it is, without TLS: tests and local tools.
    pub fn plaintext(mut config: tokio_postgres::Config) -> Self {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        let tls = crate::tls::connector(SslMode::Disable, None)
            .expect("a connector that checks nothing reads no file");
        PgTarget { config, tls }
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The same target, connecting under another application name (how a connection is
    /// found in pg_stat_activity).
    pub fn named(&self, application_name: &str) -> Self {
        let mut target = self.clone();
        target.config.application_name(application_name);
        target
    }

    /// The same server and settings, another database.
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut target = self.clone();
        target.config.dbname(dbname);
        target
    }

    /// Connects; spawn the returned driver.
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, PgConnection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }

    /// Connects and spawns the driver.
    pub async fn connect_spawned(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.connect().await?;
        tokio::spawn(connection);
        Ok(client)
    }
}

/// Where each kind of connection goes.
#[derive(Clone)]
pub struct DbTargets {
    /// The pool's connections (through a pooler, if there is one).
    pub pool: PgTarget,
    /// Connections that need a session of their own: LISTEN, migrations.
    pub session: PgTarget,
    pub pool_mode: PoolMode,
}

impl DbArgs {
    /// Settings for the default local server and the given database name (tests, tools):
    /// plaintext.
    pub fn local(db_name: &str) -> Self {
        DbArgs {
            database_url: None,
            database_direct_url: None,
            db_host: "127.0.0.1".into(),
            db_port: 5432,
            db_user: "postgres".into(),
            db_password: None,
            db_name: db_name.into(),
            db_sslmode: Some(SslMode::Disable),
            db_sslrootcert: None,
            db_pool_size: 16,
            db_pool_mode: PoolMode::Session,
        }
    }

    /// Where the pool and the sessions connect, with TLS as asked; refuses settings that
    /// cannot work (an unreadable root file, transaction pooling without a direct URL).
    pub fn targets(&self) -> Result<DbTargets, DbConfigError> {
        let pool_url = match &self.database_url {
            Some(url) => url.clone(),
            None => DatabaseUrl::from(self.parts_config()),
        };
        let session_url = match (&self.database_direct_url, self.db_pool_mode) {
            (Some(url), _) => url.clone(),
            (None, PoolMode::Session) => pool_url.clone(),
            (None, PoolMode::Transaction) => return Err(DbConfigError::DirectUrlMissing),
        };
        Ok(DbTargets {
            pool: self.target(pool_url)?,
            session: self.target(session_url)?,
            pool_mode: self.db_pool_mode,
        })
    }

    /// The pool's settings without TLS (tests, tools).
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = match &self.database_url {
            Some(url) => url.config.clone(),
            None => self.parts_config(),
        };
        config.application_name("reviews");
        config
    }

    fn target(&self, url: DatabaseUrl) -> Result<PgTarget, DbConfigError> {
        let mode = url.sslmode.or(self.db_sslmode).unwrap_or_default();
        let roots = url
            .sslrootcert
            .or_else(|| self.db_sslrootcert.as_deref().map(RootCerts::parse));
        let mut config = url.config;
        config
            .application_name("reviews")
            .ssl_mode(mode.negotiation());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        Ok(PgTarget {
            config,
            tls: crate::tls::connector(mode, roots.as_ref())?,
        })
    }

    fn parts_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.db_host)
            .port(self.db_port)
            .user(&self.db_user)
            .dbname(&self.db_name)
            .application_name("reviews")
            .connect_timeout(Duration::from_secs(5));
        if let Some(password) = &self.db_password {
            config.password(password.expose_secret());
        }
        config
    }
}

pub type PgPool = bb8::Pool<CachingManager>;

/// The shared handle to the database: a pool plus the statement counter of everything run
/// through it.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
    statements: Arc<AtomicU64>,
    last_error: LastError,
    bookkeeping: Bookkeeping,
}

/// How the worker's own transactions (claims, job starts, completions, retries, and the
/// effects committed with a completion) commit: `synchronous_commit = off`, set per
/// transaction, or the server's setting. Writers' transactions never take it. A lost tail of
/// WAL can only make work run again, and effects commit with their job's completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bookkeeping {
    /// The server's `synchronous_commit`.
    #[default]
    Synchronous,
    /// `synchronous_commit = off` for the transaction.
    Asynchronous,
}

impl Bookkeeping {
    /// The `synchronous_commit` a statement sets for its transaction (a text parameter:
    /// null leaves the server's).
    pub fn setting(self) -> Option<&'static str> {
        match self {
            Bookkeeping::Synchronous => None,
            Bookkeeping::Asynchronous => Some("off"),
        }
    }

    /// [`Bookkeeping::setting`] as an SQL literal, for a statement that has it written in.
    pub(crate) fn literal(self) -> String {
        self.setting()
            .map_or_else(|| "null".to_string(), |setting| format!("'{setting}'"))
    }
}

impl Db {
    /// Builds a pool that connects lazily, so the API can start (and answer /readyz with 503)
    /// while Postgres is still coming up.
    pub fn connect_lazy(target: PgTarget, max_size: u32, mode: PoolMode) -> Self {
        Self::connect_lazy_planning(target, max_size, mode, PlanCache::Auto)
    }

    /// [`Db::connect_lazy`], with prepared statements planned as `plans` says.
    pub fn connect_lazy_planning(
        target: PgTarget,
        max_size: u32,
        mode: PoolMode,
        plans: PlanCache,
    ) -> Self {
        let manager = CachingManager {
            inner: PostgresConnectionManager::new(target.config, target.tls),
            keep_statements: mode == PoolMode::Session,
            plans,
        };
        let last_error = LastError::default();
        let pool = bb8::Pool::builder()
            .max_size(max_size)
            .min_idle(Some(0))
            // A broken connection is noticed by `has_broken`; skipping the per-checkout
            // ping saves a round trip per request.
            .test_on_check_out(false)
            // The connection returned last goes out first: under a light or bursty load the
            // same few connections serve, with their prepared statements and plans warm
            // (the relay's are planned again each second on every connection it uses), and
            // the rest stay idle.
            .queue_strategy(bb8::QueueStrategy::Lifo)
            .connection_timeout(Duration::from_secs(3))
            .error_sink(Box::new(last_error.clone()))
            .build_unchecked(manager);
        Db {
            pool,
            statements: Arc::new(AtomicU64::new(0)),
            last_error,
            bookkeeping: Bookkeeping::Synchronous,
        }
    }

    /// The same pool, its bookkeeping committed as `bookkeeping` says (the worker's).
    pub fn with_bookkeeping(mut self, bookkeeping: Bookkeeping) -> Self {
        self.bookkeeping = bookkeeping;
        self
    }

    /// How bookkeeping run through this handle commits.
    pub fn bookkeeping(&self) -> Bookkeeping {
        self.bookkeeping
    }

    /// A pooled connection that counts its statements.
    pub async fn conn(
        &self,
    ) -> Result<Sql<bb8::PooledConnection<'static, CachingManager>>, StoreError> {
        let conn = self.pool.get_owned().await.map_err(|e| match e {
            bb8::RunError::User(e) => StoreError::Unavailable(e.to_string()),
            bb8::RunError::TimedOut => {
                StoreError::Unavailable(self.last_error.timed_out("Postgres"))
            }
        })?;
        Ok(Sql::new(conn, self.statements.clone()).with_bookkeeping(self.bookkeeping))
    }

    /// `client` (a connection of its own, not pooled) counting its statements with this
    /// handle's.
    pub fn counted<C: crate::sql::AsClient>(&self, client: C) -> Sql<C> {
        Sql::new(client, self.statements.clone()).with_bookkeeping(self.bookkeeping)
    }

    /// How many statements have run through this handle since it was built.
    pub fn statements_run(&self) -> u64 {
        self.statements.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks that the database answers (for /readyz).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.conn()
            .await?
            .execute("select 1", &[])
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_prints() {
        let mut args = DbArgs::local("reviews");
        args.db_password = Some(SecretString::from("hunter2-db"));
        assert!(!format!("{args:?}").contains("hunter2-db"));
        args.database_url = Some(parse_database_url("postgres://u:hunter2-url@h/db").unwrap());
        assert!(!format!("{args:?}").contains("hunter2-url"));
    }
}
