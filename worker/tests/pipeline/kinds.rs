//! Every job kind is a unit: whatever the relay makes has a handler, a retry policy, a line in
//! the README, and a payload its handler reads whole.

use std::collections::BTreeSet;
use std::time::Duration;

use reviews_worker::jobs::JobRegistry;
use serde_json::Value;

use crate::support::*;

/// Commits events of every type, for a product with a webhook that wants them all, so each
/// kind has something to make jobs from.
async fn events_of_every_type(p: &TestPipeline) {
    let product = p.create_product("owner").await;
    let conn = p.db.conn().await.unwrap();
    let types: Vec<String> = ["review.created", "review.updated", "review.deleted"]
        .iter()
        .map(|t| t.to_string())
        .collect();
    reviews_db::webhooks::insert_webhook(
        &conn,
        "https://example.com/hook",
        &types,
        "test",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    .await
    .unwrap();
    let reviews = p.add_reviews(product, authors("a", 2)).await;
    p.sql(&format!(
        "update reviews set rating = 1 where id = '{}'; delete from reviews where id = '{}'",
        reviews[0], reviews[1]
    ))
    .await;
}

#[tokio::test]
async fn every_kind_the_relay_makes_has_a_handler_a_retry_policy_and_a_readme_line() {
    let p = TestPipeline::new().await;
    events_of_every_type(&p).await;
    let registry = JobRegistry::standard();
    {
        let conn = p.db.conn().await.unwrap();
        let statements = p.relay_statements(&registry);
        reviews_db::outbox::relay_pending_events(&conn, &statements)
            .await
            .unwrap();
    }
    let made: BTreeSet<String> = p
        .column::<String>("select distinct kind from jobs")
        .await
        .into_iter()
        .collect();
    let relayed: BTreeSet<String> = registry
        .relayed_kinds()
        .iter()
        .map(|kind| kind.name.to_owned())
        .collect();
    assert_eq!(
        made, relayed,
        "the relay makes jobs of every registered kind, and only those"
    );

    for kind in &made {
        assert!(registry.handles(kind), "no handler for {kind}");
    }

    // A retry policy: a worker gives each kind without a row its default, and keeps the rows
    // an operator changed.
    p.sql(
        "delete from retry_policies where kind <> 'notify_owner';
         update retry_policies set max_attempts = 3 where kind = 'notify_owner'",
    )
    .await;
    // It does so once it has checked the migrations, before it relays or runs anything.
    let worker = p.start_worker().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while p.count("select count(*) from retry_policies").await
        < registry.relayed_kinds().len() as i64
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker gave no default policies"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await;
    for kind in registry.relayed_kinds() {
        let row: Vec<i32> = p
            .column(&format!(
                "select max_attempts from retry_policies where kind = '{}'",
                kind.name
            ))
            .await;
        let expected = if kind.name == "notify_owner" {
            3
        } else {
            kind.default_policy.max_attempts
        };
        assert_eq!(row, [expected], "the retry policy of {}", kind.name);
    }

    // A README line: the table of job kinds names each.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    for kind in registry.relayed_kinds() {
        let line = format!("| `{}` |", kind.name);
        assert!(
            readme.lines().any(|l| l.starts_with(&line)),
            "README.md's table of job kinds has no line for {}",
            kind.name
        );
    }
}

#[tokio::test]
async fn every_payload_the_relay_writes_reads_into_its_kinds_type_whole() {
    let p = TestPipeline::new().await;
    events_of_every_type(&p).await;
    let registry = JobRegistry::standard();
    {
        let conn = p.db.conn().await.unwrap();
        let statements = p.relay_statements(&registry);
        reviews_db::outbox::relay_pending_events(&conn, &statements)
            .await
            .unwrap();
    }
    let client = p.client().await;
    for kind in registry.relayed_kinds() {
        let payloads: Vec<Value> = client
            .query("select payload from jobs where kind = $1", &[&kind.name])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!payloads.is_empty(), "no {} job", kind.name);
        for payload in payloads {
            // Read and written back: every key the relay writes is a field, and no field is
            // missing or of another type.
            let reread = (kind.reread_payload)(&payload)
                .unwrap_or_else(|e| panic!("{}: {e}: {payload}", kind.name));
            assert_eq!(reread, payload, "{}", kind.name);
        }
    }
}
