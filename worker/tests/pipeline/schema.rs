//! The schema at a glance stays true: db/schema.sql is what the migrations build, and the
//! advisory-lock keys the SQL names are the ones reviews_db::locks names.

use std::process::Command;
use std::time::Duration;

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

/// Event ids and notification ids are time-ordered (db/migrations/0020): version 7, their
/// first 48 bits the milliseconds of their making, so each index on them grows at one edge.
#[tokio::test]
async fn event_and_notification_ids_are_time_ordered() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let worker = p.start_worker().await;
    for batch in ["a", "b", "c"] {
        p.add_reviews(product, authors(batch, 2)).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    p.wait_until_idle(std::time::Duration::from_secs(20)).await;
    worker.stop().await;

    // Per table: its ids, and the time each row records it was made. The outbox's rows in
    // the order they were made (the writers ran one after another); notifications are made
    // by concurrent handlers, whose order of start and of insert can differ.
    for (table, id, made_at, ordered) in [
        ("outbox", "event_id", "occurred_at", true),
        ("notifications", "id", "created_at", false),
    ] {
        let rows: Vec<String> = p
            .column(&format!(
                "select ({id}::text || ' ' || floor(extract(epoch from {made_at}) * 1000)::bigint)
                 from {table} order by id"
            ))
            .await;
        assert_eq!(rows.len(), 6, "{table}: {rows:?}");
        let mut last_ms = 0;
        for row in &rows {
            let (id, made_ms) = row.split_once(' ').unwrap();
            assert_eq!(&id[14..15], "7", "{table}: {id} is not of version 7");
            assert!(
                "89ab".contains(&id[19..20]),
                "{table}: {id} lost the RFC variant"
            );
            let id_ms = i64::from_str_radix(&id.replace('-', "")[..12], 16).unwrap();
            let made_ms: i64 = made_ms.parse().unwrap();
            // The id is made within the transaction whose time the row records.
            assert!(
                (made_ms..made_ms + 5_000).contains(&id_ms),
                "{table}: {id} holds {id_ms} ms, the row was made at {made_ms}"
            );
            if ordered {
                assert!(
                    id_ms >= last_ms,
                    "{table}: {id} is older than the row before"
                );
            }
            last_ms = id_ms;
        }
    }
}

#[tokio::test]
async fn a_worker_started_before_the_newest_migration_relays_nothing_until_it_is_applied() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    // As if `migrate` had not run the newest migration yet: the ledger a file short.
    let newest = reviews_db::migrate::newest_migration();
    let ledger_row: (String, String) = {
        let row = p
            .client()
            .await
            .query_one(
                "delete from schema_migrations where version = $1 returning name, checksum",
                &[&newest],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let worker = p.start_worker().await;
    p.add_reviews(product, authors("early", 2)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        p.count("select count(*) from outbox_pending").await,
        2,
        "relayed on a schema a migration short"
    );
    assert_eq!(p.count("select count(*) from jobs").await, 0);

    // `migrate` runs: the worker starts within about a second and does the waiting work.
    p.client()
        .await
        .execute(
            "insert into schema_migrations (version, name, checksum, applied_by)
             values ($1, $2, $3, 'test')",
            &[&newest, &ledger_row.0, &ledger_row.1],
        )
        .await
        .unwrap();
    p.wait_until_idle(Duration::from_secs(10)).await;
    assert_eq!(p.count("select count(*) from outbox_pending").await, 0);
    p.assert_ratings_match_reviews().await;
    worker.stop().await;
}
