//! Test databases (feature `testing`): each test gets its own database, cloned from a
//! template that was migrated once, and dropped when the test ends (even when it panics).
//!
//! The server comes from the environment like the binaries' (`DATABASE_URL` or `DB_*`); its
//! database name is ignored. The template's name carries a hash of the migrations, so a
//! changed migration builds a fresh template instead of reusing a stale one.

use clap::Parser;
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, NoTls};

use crate::config::DbArgs;
use crate::migrate::{migrations, run_migrations};
use crate::Db;

#[derive(Parser)]
struct FromEnv {
    #[command(flatten)]
    db: DbArgs,
}

/// The server settings from the environment, pointed at `dbname`.
pub fn server_config(dbname: &str) -> tokio_postgres::Config {
    let args = FromEnv::parse_from(["test"]).db;
    let mut config = args.pg_config();
    config.dbname(dbname);
    config
}

async fn connect(config: &tokio_postgres::Config) -> Client {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .expect("test Postgres must be reachable (scripts/test starts one)");
    tokio::spawn(connection);
    client
}

fn template_name() -> String {
    let mut hash = Sha256::new();
    for migration in migrations() {
        hash.update(migration.checksum.as_bytes());
    }
    format!("reviews_template_{}", &hex::encode(hash.finalize())[..12])
}

/// A migrated database of its own, dropped with this value.
pub struct TestDatabase {
    pub name: String,
    pub config: tokio_postgres::Config,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let admin = connect(&server_config("postgres")).await;
        let template = template_name();
        ensure_template(&admin, &template).await;
        let name = format!("reviews_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("create database {name} template {template}"))
            .await
            .expect("creating the test database");
        TestDatabase {
            config: server_config(&name),
            name,
        }
    }

    /// A pooled handle, as the API and worker use.
    pub fn db(&self) -> Db {
        Db::connect_lazy(
            crate::PgTarget::plaintext(self.config.clone()),
            8,
            crate::PoolMode::Session,
        )
    }

    /// A plain client for the test's own SQL.
    pub async fn client(&self) -> Client {
        connect(&self.config).await
    }
}

async fn ensure_template(admin: &Client, template: &str) {
    admin
        .execute(
            "select pg_advisory_lock($1)",
            &[&crate::locks::TEST_TEMPLATE],
        )
        .await
        .unwrap();
    let exists = admin
        .query_opt("select 1 from pg_database where datname = $1", &[&template])
        .await
        .unwrap()
        .is_some();
    if !exists {
        // Build under another name and rename when complete, so a crashed build never
        // leaves a half-migrated template behind.
        let building = format!("{template}_building");
        for statement in [
            format!("drop database if exists {building} with (force)"),
            format!("create database {building}"),
        ] {
            admin.batch_execute(&statement).await.unwrap();
        }
        {
            let mut client = connect(&server_config(&building)).await;
            run_migrations(&mut client)
                .await
                .expect("migrating the template");
        }
        // The client's connection task may still be closing; `with (force)` is not allowed on
        // rename, so wait for it to go.
        for _ in 0..50 {
            let others: i64 = admin
                .query_one(
                    "select count(*) from pg_stat_activity where datname = $1",
                    &[&building],
                )
                .await
                .unwrap()
                .get(0);
            if others == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for statement in [
            format!("alter database {building} rename to {template}"),
            format!("alter database {template} with is_template true"),
        ] {
            admin.batch_execute(&statement).await.unwrap();
        }
    }
    admin
        .execute(
            "select pg_advisory_unlock($1)",
            &[&crate::locks::TEST_TEMPLATE],
        )
        .await
        .unwrap();
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        clean_up_on_server(format!(
            "drop database if exists {} with (force)",
            self.name
        ));
    }
}

/// Runs `sql` on the test server's `postgres` database and waits for it, ignoring its
/// outcome: for cleanups in `Drop`, which runs outside async context (or inside a runtime
/// that is shutting down), so the statement gets a small runtime of its own on another thread.
pub fn clean_up_on_server(sql: String) {
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let admin = connect(&server_config("postgres")).await;
            let _ = admin.batch_execute(&sql).await;
        });
    });
    let _ = cleanup.join();
}

/// A `postgres://` URL for `config`, for tools that take one (psql, the ops scripts).
pub fn url_of(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let dbname = config.get_dbname().unwrap_or("postgres");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => {
            format!("postgres://{user}{password}@{host}:{port}/{dbname}")
        }
        Some(tokio_postgres::config::Host::Unix(path)) => format!(
            "postgres://{user}{password}@/{dbname}?host={}&port={port}",
            path.display()
        ),
        None => format!("postgres://{user}{password}@127.0.0.1:{port}/{dbname}"),
    }
}

impl TestDatabase {
    /// An empty database (no migrations), for testing the migrators themselves.
    pub async fn create_empty() -> Self {
        let admin = connect(&server_config("postgres")).await;
        let name = format!("reviews_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("creating the test database");
        TestDatabase {
            config: server_config(&name),
            name,
        }
    }

    /// The database's URL, for psql and the scripts.
    pub fn url(&self) -> String {
        url_of(&self.config)
    }
}
