//! The schema at a glance stays true: db/schema.sql is what the migrations build, and the
//! advisory-lock keys the SQL names are the ones reviews_db::locks names.

use std::process::Command;

use reviews_db::locks;
use reviews_db::testing::url_of;

use crate::support::*;

fn repository(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[tokio::test]
async fn db_schema_sql_is_what_the_migrations_build() {
    let p = TestPipeline::new().await;
    let output = Command::new(repository("scripts/dump-schema"))
        .arg("--print")
        .env("DATABASE_URL", url_of(&p.database.config))
        .output()
        .expect("scripts/dump-schema runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let built = String::from_utf8(output.stdout).unwrap();
    let committed = std::fs::read_to_string(repository("db/schema.sql")).unwrap();
    // The committed file opens with a comment saying where it comes from.
    let committed: String = committed
        .lines()
        .skip_while(|line| line.starts_with("--") || line.is_empty())
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(
        built.trim_end() == committed.trim_end(),
        "db/schema.sql differs from what db/migrations build: run scripts/dump-schema and commit it"
    );
}

#[tokio::test]
async fn the_lock_keys_sql_names_are_the_keys_rust_names() {
    let p = TestPipeline::new().await;
    for (function, key) in locks::NAMED_IN_SQL {
        let named: Vec<i64> = p.column(&format!("select {function}()")).await;
        assert_eq!(named, [key], "{function}()");
    }
    // The functions of the schema spell no key out: they name them.
    let spelled: Vec<String> = p
        .column(
            "select proname::text from pg_proc
             where pronamespace = 'public'::regnamespace
               and prosrc like '%72657669657700%' and proname not like 'lock\\_key\\_%'",
        )
        .await;
    assert!(
        spelled.is_empty(),
        "functions with a key spelled out: {spelled:?}"
    );
    // scripts/migrate takes the migrations' key before any function exists: it spells it,
    // and it must be the same.
    let script = std::fs::read_to_string(repository("scripts/migrate")).unwrap();
    assert!(
        script.contains(&format!("lock_key={}", locks::MIGRATIONS)),
        "scripts/migrate's lock_key is not reviews_db::locks::MIGRATIONS"
    );
    // And every key is distinct.
    let mut keys = vec![locks::MIGRATIONS, locks::TEST_TEMPLATE];
    keys.extend(locks::NAMED_IN_SQL.iter().map(|(_, key)| *key));
    let count = keys.len();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), count, "two locks share a key");
}
