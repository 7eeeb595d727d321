//! Applies the SQL files of `db/migrations` (embedded in the binary) in order and records each
//! in the `schema_migrations` ledger with the sha256 of its bytes. `scripts/migrate` does the
//! same through psql with the same ledger and the same advisory lock, so either can run after
//! the other. Files are forward-only: an applied file whose bytes changed is refused.

use include_dir::{include_dir, Dir};
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, GenericClient};

static MIGRATIONS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/migrations");

/// The ledger's DDL, shared with scripts/migrate.
const LEDGER_SQL: &str = include_str!("../ledger.sql");

use tokio_postgres::error::SqlState;

use crate::locks;
use crate::sql::{AsClient, Sql, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "migration {name} was edited after it was applied (ledger checksum {applied}, file \
         checksum {current}); migrations are forward-only: restore the file and add a new one"
    )]
    Edited {
        name: String,
        applied: String,
        current: String,
    },
    #[error("migration {name} failed: {source}")]
    Failed {
        name: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("migration ledger: {0}")]
    Ledger(#[from] tokio_postgres::Error),
}

/// One migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The file's number, e.g. "0001".
    pub version: String,
    /// The file name, e.g. "0001_create_products.sql".
    pub name: String,
    pub sql: &'static str,
    /// Hex sha256 of the file's bytes.
    pub checksum: String,
}

/// The embedded migrations, in the order they apply.
pub fn migrations() -> Vec<Migration> {
    let mut files: Vec<Migration> = MIGRATIONS
        .files()
        .filter_map(|file| {
            let name = file.path().file_name()?.to_str()?.to_owned();
            let (version, _) = name.strip_suffix(".sql")?.split_once('_')?;
            if version.len() != 4 || !version.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(Migration {
                version: version.to_owned(),
                checksum: hex::encode(Sha256::digest(file.contents())),
                sql: file.contents_utf8()?,
                name,
            })
        })
        .collect();
    files.sort_by(|a, b| a.version.cmp(&b.version));
    files
}

/// The newest migration this binary embeds, e.g. "0024".
pub fn newest_migration() -> &'static str {
    static NEWEST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        migrations()
            .last()
            .map(|migration| migration.version.clone())
            .unwrap_or_default()
    });
    &NEWEST
}

/// Where a database's schema stands against the migrations this binary embeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// Every migration this binary embeds is applied (and maybe newer ones: a newer version
    /// migrated, and this one runs beside it during a rolling deploy).
    Current,
    /// Some are not applied yet: the newest applied is `applied` (`None`: one from before
    /// db/migrations/0024, which cannot say), this binary's newest is `needed`.
    Behind {
        applied: Option<String>,
        needed: &'static str,
    },
}

impl std::fmt::Display for SchemaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchemaState::Current => write!(f, "the schema has every migration of this build"),
            SchemaState::Behind { applied, needed } => write!(
                f,
                "the schema is at migration {}, this build needs {needed}: run `reviews-api \
                 migrate` or scripts/migrate (docs/DEPLOYING.md)",
                applied.as_deref().unwrap_or("older than 0024")
            ),
        }
    }
}

/// Where the schema of `db`'s database stands (db/migrations/0024's
/// `applied_schema_version`, which every role may call).
pub async fn schema_state<C: AsClient>(db: &Sql<C>) -> Result<SchemaState, StoreError> {
    let needed = newest_migration();
    let applied: Option<String> = match db.query_one("select applied_schema_version()", &[]).await {
        Ok(row) => row.get(0),
        Err(StoreError::Postgres(error)) if error.code() == Some(&SqlState::UNDEFINED_FUNCTION) => {
            None
        }
        Err(error) => return Err(error),
    };
    Ok(match applied {
        Some(applied) if applied.as_str() >= needed => SchemaState::Current,
        applied => SchemaState::Behind { applied, needed },
    })
}

/// What a run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MigrateReport {
    pub applied: Vec<String>,
    pub already_applied: usize,
}

/// Applies every pending migration, each in its own transaction with its ledger row and the
/// app roles' grants.
pub async fn run_migrations(client: &mut Client) -> Result<MigrateReport, MigrateError> {
    client
        .execute("select pg_advisory_lock($1)", &[&locks::MIGRATIONS])
        .await?;
    let result = apply_pending(client).await;
    // Unlock even after a failure; if the connection is gone the lock went with it.
    let _ = client
        .execute("select pg_advisory_unlock($1)", &[&locks::MIGRATIONS])
        .await;
    result
}

async fn apply_pending(client: &mut Client) -> Result<MigrateReport, MigrateError> {
    client.batch_execute(LEDGER_SQL).await?;
    let applied: std::collections::HashMap<String, String> = client
        .query("select version, checksum from schema_migrations", &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();

    let mut report = MigrateReport::default();
    for migration in migrations() {
        if let Some(checksum) = applied.get(&migration.version) {
            if *checksum != migration.checksum {
                return Err(MigrateError::Edited {
                    name: migration.name,
                    applied: checksum.clone(),
                    current: migration.checksum,
                });
            }
            report.already_applied += 1;
            continue;
        }
        let failed = |source| MigrateError::Failed {
            name: migration.name.clone(),
            source,
        };
        let tx = client.transaction().await?;
        tx.batch_execute(migration.sql).await.map_err(failed)?;
        // Granted in the migration's own transaction: the ledger row opens the new binaries'
        // gate (db/migrations/0024), and they must find their privileges on the new objects
        // the moment it does, not after the rest of the run.
        grant_app_privileges(&tx).await.map_err(failed)?;
        tx.execute(
            "insert into schema_migrations (version, name, checksum, applied_by)
             values ($1, $2, $3, 'reviews-api')",
            &[&migration.version, &migration.name, &migration.checksum],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(migration = %migration.name, "applied migration");
        report.applied.push(migration.name);
    }
    // And after the run, for one with nothing pending: the roles may be newer than the schema.
    grant_app_privileges(&*client).await?;
    Ok(report)
}

/// Grants the app roles (scripts/db-roles) what their processes do on the schema as it now
/// is (see db/migrations/0015), so a migration's new table is theirs to use at once, however
/// they were created before. A schema from before 0015 has nothing to grant yet.
///
/// A migration that drops or renames an object the function names must redefine the function
/// in the same file: it runs in that migration's transaction.
async fn grant_app_privileges(client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    let exists: bool = client
        .query_one("select to_regproc('grant_app_privileges') is not null", &[])
        .await?
        .get(0);
    if exists {
        client
            .batch_execute("select grant_app_privileges()")
            .await?;
    }
    Ok(())
}
