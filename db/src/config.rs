//! Connection settings and the connection pool.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::NoTls;

use crate::sql::{Sql, StoreError};
use crate::statements::CachingManager;

/// Where Postgres is. `DATABASE_URL` wins; otherwise the `DB_*` parts are used.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// Postgres connection URL (postgres://user:pass@host:port/db); overrides the DB_* parts.
    #[arg(long = "database-url", env = "DATABASE_URL", value_name = "DATABASE_URL",
          value_parser = parse_database_url, hide_env_values = true)]
    pub database_url: Option<tokio_postgres::Config>,
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
        hide_env_values = true
    )]
    pub db_password: Option<String>,
    /// Postgres database name.
    #[arg(
        long = "db-name",
        env = "DB_NAME",
        value_name = "DB_NAME",
        default_value = "reviews"
    )]
    pub db_name: String,
    /// Most connections the pool keeps open.
    #[arg(long = "db-pool-size", env = "DB_POOL_SIZE", value_name = "DB_POOL_SIZE",
          default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_size: u32,
}

fn parse_database_url(value: &str) -> Result<tokio_postgres::Config, String> {
    value
        .parse::<tokio_postgres::Config>()
        .map_err(|_| "not a valid Postgres URL (postgres://user:pass@host:port/dbname)".into())
}

impl DbArgs {
    /// Settings for the default local server and the given database name (tests, tools).
    pub fn local(db_name: &str) -> Self {
        DbArgs {
            database_url: None,
            db_host: "127.0.0.1".into(),
            db_port: 5432,
            db_user: "postgres".into(),
            db_password: None,
            db_name: db_name.into(),
            db_pool_size: 16,
        }
    }

    /// The tokio-postgres configuration these settings describe.
    pub fn pg_config(&self) -> tokio_postgres::Config {
        if let Some(config) = &self.database_url {
            let mut config = config.clone();
            config.application_name("reviews");
            return config;
        }
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.db_host)
            .port(self.db_port)
            .user(&self.db_user)
            .dbname(&self.db_name)
            .application_name("reviews")
            .connect_timeout(Duration::from_secs(5));
        if let Some(password) = &self.db_password {
            config.password(password);
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
}

impl Db {
    /// Builds a pool that connects lazily, so the API can start (and answer /readyz with 503)
    /// while Postgres is still coming up.
    pub fn connect_lazy(pg: tokio_postgres::Config, max_size: u32) -> Self {
        let manager = CachingManager(PostgresConnectionManager::new(pg, NoTls));
        let pool = bb8::Pool::builder()
            .max_size(max_size)
            .min_idle(Some(0))
            // A broken connection is noticed by `has_broken`; skipping the per-checkout
            // ping saves a round trip per request.
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(3))
            .build_unchecked(manager);
        Db {
            pool,
            statements: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A pooled connection that counts its statements.
    pub async fn conn(
        &self,
    ) -> Result<Sql<bb8::PooledConnection<'static, CachingManager>>, StoreError> {
        let conn = self.pool.get_owned().await.map_err(StoreError::from_pool)?;
        Ok(Sql::new(conn, self.statements.clone()))
    }

    /// `client` (a connection of its own, not pooled) counting its statements with this
    /// handle's.
    pub fn counted<C: crate::sql::AsClient>(&self, client: C) -> Sql<C> {
        Sql::new(client, self.statements.clone())
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
