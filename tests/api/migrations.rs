//! Both migrators (`scripts/migrate` through psql, `reviews-api migrate` with embedded files)
//! apply the same files and keep the same ledger.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use reviews_db::migrate::{
    migrations, newest_migration, run_migrations, schema_state, MigrateError, SchemaState,
};
use reviews_db::testing::TestDatabase;
use serde_json::Value;

use crate::support::TestApp;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn psql_migrate(database: &TestDatabase, migrations_dir: Option<&Path>) -> Output {
    let mut command = psql_migrator(database);
    if let Some(dir) = migrations_dir {
        command.env("MIGRATIONS_DIR", dir);
    }
    command.output().unwrap()
}

fn psql_migrator(database: &TestDatabase) -> Command {
    let mut command = Command::new(repo().join("scripts/migrate"));
    command.env("DATABASE_URL", database.url());
    command
}

fn binary_migrate(database: &TestDatabase) -> Output {
    binary_migrator(database).output().unwrap()
}

fn binary_migrator(database: &TestDatabase) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_reviews-api"));
    command.arg("migrate").env("DATABASE_URL", database.url());
    command
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn ledger(database: &TestDatabase) -> Vec<(String, String, String)> {
    let client = database.client().await;
    client
        .query(
            "select version, name, checksum from schema_migrations order by version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn expected_ledger() -> Vec<(String, String, String)> {
    migrations()
        .into_iter()
        .map(|m| (m.version, m.name, m.checksum))
        .collect()
}

#[tokio::test]
async fn psql_then_binary_agree_and_rerunning_is_a_no_op() {
    let database = TestDatabase::create_empty().await;
    let first = stdout(&psql_migrate(&database, None));
    assert!(
        first.contains("applied 0001_create_products.sql"),
        "{first}"
    );
    assert_eq!(ledger(&database).await, expected_ledger());

    assert_eq!(
        stdout(&binary_migrate(&database)).trim(),
        "migrations: up to date"
    );
    assert_eq!(
        stdout(&psql_migrate(&database, None)).trim(),
        "migrations: up to date"
    );
    assert_eq!(ledger(&database).await, expected_ledger());
}

#[tokio::test]
async fn binary_then_psql_agree() {
    let database = TestDatabase::create_empty().await;
    let first = stdout(&binary_migrate(&database));
    assert!(first.contains("applied 0002_create_reviews.sql"), "{first}");
    assert_eq!(
        stdout(&psql_migrate(&database, None)).trim(),
        "migrations: up to date"
    );
    assert_eq!(ledger(&database).await, expected_ledger());

    let client = database.client().await;
    let by: Vec<String> = client
        .query("select distinct applied_by from schema_migrations", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(by, ["reviews-api"]);
}

#[tokio::test]
async fn psql_refuses_an_applied_file_that_was_edited() {
    let database = TestDatabase::create_empty().await;
    stdout(&psql_migrate(&database, None));

    let copy = std::env::temp_dir().join(format!("migrations-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(repo().join("db/migrations")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
    }
    let edited = copy.join("0002_create_reviews.sql");
    let mut text = std::fs::read_to_string(&edited).unwrap();
    text.push_str("\n-- a quiet edit\n");
    std::fs::write(&edited, text).unwrap();

    let output = psql_migrate(&database, Some(&copy));
    std::fs::remove_dir_all(&copy).unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("0002_create_reviews.sql was edited after it was applied"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_binary_refuses_an_applied_file_whose_checksum_differs() {
    let database = TestDatabase::create_empty().await;
    stdout(&psql_migrate(&database, None));
    let mut client = database.client().await;
    client
        .execute(
            "update schema_migrations set checksum = 'tampered' where version = '0003'",
            &[],
        )
        .await
        .unwrap();

    let error = run_migrations(&mut client).await.unwrap_err();
    assert!(
        matches!(&error, MigrateError::Edited { name, .. } if name == "0003_create_product_ratings.sql"),
        "{error}"
    );
    let output = binary_migrate(&database);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("was edited after it was applied"));
}

#[tokio::test]
async fn two_migrators_started_at_once_do_not_collide() {
    for _ in 0..3 {
        let database = TestDatabase::create_empty().await;
        let url = database.url();
        let psql = std::thread::spawn({
            let url = url.clone();
            move || {
                Command::new(repo().join("scripts/migrate"))
                    .env("DATABASE_URL", url)
                    .output()
                    .unwrap()
            }
        });
        let binary = std::thread::spawn(move || {
            Command::new(env!("CARGO_BIN_EXE_reviews-api"))
                .arg("migrate")
                .env("DATABASE_URL", url)
                .output()
                .unwrap()
        });
        stdout(&psql.join().unwrap());
        stdout(&binary.join().unwrap());
        assert_eq!(ledger(&database).await, expected_ledger());
    }
}

/// The migration files numbered before `version`, copied to a directory of their own.
fn migrations_before(version: &str) -> PathBuf {
    let copy = std::env::temp_dir().join(format!("migrations-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&copy).unwrap();
    for migration in migrations() {
        if migration.version.as_str() < version {
            std::fs::write(copy.join(&migration.name), migration.sql).unwrap();
        }
    }
    copy
}

#[tokio::test]
async fn a_schema_without_the_newest_migration_is_behind_and_readyz_says_so_until_it_is_applied() {
    let database = TestDatabase::create_empty().await;
    // Migrated before 0024: it cannot say which migration it is at.
    let older = migrations_before("0024");
    stdout(&psql_migrate(&database, Some(&older)));
    std::fs::remove_dir_all(&older).unwrap();
    let db = database.db();
    let state = || async { schema_state(&db.conn().await.unwrap()).await.unwrap() };
    let behind = state().await;
    assert_eq!(
        behind,
        SchemaState::Behind {
            applied: None,
            needed: newest_migration()
        }
    );
    assert!(
        behind.to_string().contains("run `reviews-api migrate`"),
        "{behind}"
    );

    let url = database.url();
    let app = TestApp::spawn_on(database, db.clone()).await;
    let ready = || async {
        let response = app.http.get(app.url("/readyz")).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["schema"], "behind", "{body}");
    assert_eq!(body["applied"], Value::Null, "{body}");
    assert_eq!(body["needed"], newest_migration(), "{body}");

    // All but the newest: it says where it is.
    let all_but_newest = migrations_before(newest_migration());
    let mut command = Command::new(repo().join("scripts/migrate"));
    command
        .env("DATABASE_URL", &url)
        .env("MIGRATIONS_DIR", &all_but_newest);
    stdout(&command.output().unwrap());
    std::fs::remove_dir_all(&all_but_newest).unwrap();
    let SchemaState::Behind { applied, .. } = state().await else {
        panic!("a migration short, yet current");
    };
    let applied = applied.expect("a schema from 0024 on says where it is");
    assert!(applied.as_str() < newest_migration(), "{applied}");
    let (status, body) = ready().await;
    assert_eq!((status, &body["applied"]), (503, &Value::from(applied)));

    let mut command = Command::new(repo().join("scripts/migrate"));
    stdout(&command.env("DATABASE_URL", &url).output().unwrap());
    assert_eq!(state().await, SchemaState::Current);
    assert_eq!(ready().await.0, 200);

    // Migrations newer than this build's (a newer version migrated): it runs beside them.
    app.database
        .client()
        .await
        .batch_execute(
            "insert into schema_migrations (version, name, checksum, applied_by)
             values ('9999', '9999_from_a_newer_build.sql', '', 'test')",
        )
        .await
        .unwrap();
    assert_eq!(state().await, SchemaState::Current);
}

#[tokio::test]
async fn the_newest_migrations_ledger_row_commits_with_the_app_roles_grants() {
    // The ledger row opens the new binaries' gate (schema_state): from that moment their
    // roles must have what they use, so the grants commit in the same transaction. A
    // transaction holding a grant on `products` open makes the migrator's grants wait; while
    // they do, the gate must still be shut. Both migrators.
    for (migrator, command) in [
        ("psql", psql_migrator as fn(&TestDatabase) -> Command),
        ("binary", binary_migrator),
    ] {
        let dropped_last = ServerRole(format!(
            "worker_grants_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let role = &dropped_last.0;
        let database = TestDatabase::create_empty().await;
        let all_but_newest = migrations_before(newest_migration());
        stdout(&psql_migrate(&database, Some(&all_but_newest)));
        std::fs::remove_dir_all(&all_but_newest).unwrap();
        let admin = database.client().await;
        admin
            .batch_execute(&format!(
                "create role {role} nologin;
                 alter database {} set reviews.worker_role = '{role}'",
                database.name
            ))
            .await
            .unwrap();

        let mut blocker = database.client().await;
        let holding = blocker.transaction().await.unwrap();
        holding
            .batch_execute(&format!("grant select on products to {role}"))
            .await
            .unwrap();
        let migrating = command(&database)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded: the migrator's grants wait for the open transaction within 10 s.
        let waiting = async {
            loop {
                let waits: i64 = admin
                    .query_one(
                        "select count(*) from pg_stat_activity
                         where datname = current_database() and wait_event_type = 'Lock'
                           and query = 'select grant_app_privileges()'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if waits > 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .unwrap_or_else(|_| panic!("{migrator}: the migrator never waited for the grant"));
        let db = database.db();
        let state = || async { schema_state(&db.conn().await.unwrap()).await.unwrap() };
        assert!(
            matches!(state().await, SchemaState::Behind { .. }),
            "{migrator}: the gate opened while the migrator was still granting"
        );

        holding.rollback().await.unwrap();
        stdout(&migrating.wait_with_output().unwrap());
        assert_eq!(state().await, SchemaState::Current, "{migrator}");
        let granted: bool = admin
            .query_one(
                &format!("select has_table_privilege('{role}', 'outbox_pending', 'update')"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(granted, "{migrator}: the worker's role has its grants");
        drop((db, blocker));
    }
}

/// A role of the test server's, dropped with this value (even after a failed assertion:
/// roles outlive the test's database). Declared before the database, it drops after it, so
/// the role holds no privilege anywhere by then.
struct ServerRole(String);

impl Drop for ServerRole {
    fn drop(&mut self) {
        reviews_db::testing::clean_up_on_server(format!("drop role if exists {}", self.0));
    }
}
