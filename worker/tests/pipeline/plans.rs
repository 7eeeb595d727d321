//! The batched job statements must find jobs through the primary key whatever the table's
//! statistics say. When they say pending jobs are rare (most jobs done, or analyzed before a
//! burst), a statement that says `status = 'pending'` tempts the planner into reading the
//! partial index of *all* pending jobs for every wanted id; during a 100,000-job backlog that
//! made the drain 15 times slower. Also: pooled connections keep their prepared statements,
//! and the relay's are planned once per connection.

use std::time::Duration;

use reviews_db::jobs::{complete_jobs_sql, start_jobs_sql};
use reviews_db::outbox::{relay_and_start, relay_pending_events};
use reviews_db::Bookkeeping;
use reviews_worker::jobs::JobRegistry;
use reviews_worker::relay::statements_for;

use crate::support::*;

#[tokio::test]
async fn batched_job_statements_use_the_primary_key_even_when_statistics_mislead() {
    let p = TestPipeline::new().await;
    let client = p.client().await;
    // Statistics taken while every job was done, then a burst of pending jobs.
    client
        .batch_execute(
            "insert into jobs (kind, status) select 'notify_owner', 'done' from generate_series(1, 5000);
             analyze jobs;
             insert into jobs (kind) select 'notify_owner' from generate_series(1, 50000);",
        )
        .await
        .unwrap();
    let ids: Vec<i64> = p
        .column("select id from jobs where status = 'pending' order by id limit 100")
        .await;
    let attempts = vec![1i32; ids.len()];
    let plan = |sql: String| {
        let client = &client;
        let ids = ids.clone();
        let attempts = attempts.clone();
        async move {
            let fallback_max_attempts = 10i32;
            // start_jobs's $2 is the fallback of max attempts; complete_jobs's, the attempts.
            let second: &(dyn tokio_postgres::types::ToSql + Sync) = if sql.contains("$2::int4[]") {
                &attempts
            } else {
                &fallback_max_attempts
            };
            // $3: the bookkeeping's synchronous_commit (null: the server's).
            let commit: Option<&str> = None;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&ids, second, &commit];
            let used = ["$3", "$2", "$1"]
                .iter()
                .position(|p| sql.contains(p))
                .map_or(0, |p| 3 - p);
            client
                .query(&format!("explain {sql}"), &params[..used])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n")
        }
    };

    // The trap is real: the plain form reads the pending index under these statistics.
    let naive =
        plan("update jobs set status = 'done' where id = any($1) and status = 'pending'".into())
            .await;
    assert!(naive.contains("jobs_pending_run_at"), "{naive}");

    for sql in [start_jobs_sql(), complete_jobs_sql()] {
        let plan = plan(sql).await;
        assert!(!plan.contains("jobs_pending_run_at"), "{plan}");
        assert!(plan.contains("jobs_pkey"), "{plan}");
    }

    // And they do their job: start records an attempt, complete marks done.
    let conn = p.db.conn().await.unwrap();
    let started = reviews_db::jobs::start_jobs(&conn, &ids, 10).await.unwrap();
    assert_eq!(started.len(), ids.len());
    assert!(started.iter().all(|job| job.attempt == 1));
    let attempts: Vec<_> = started.iter().map(|job| job.fencing()).collect();
    let completed = reviews_db::jobs::complete_jobs(&conn, &attempts)
        .await
        .unwrap();
    assert_eq!(completed.len(), ids.len());
    let done = p
        .count("select count(*) from jobs where status = 'done' and attempts = 1")
        .await;
    assert_eq!(done, ids.len() as i64);
}

#[tokio::test]
async fn a_pooled_connection_prepares_each_statement_once() {
    let p = TestPipeline::new().await;
    let conn = p.db.conn().await.unwrap();
    for _ in 0..3 {
        reviews_db::jobs::start_jobs(&conn, &[1, 2, 3], 10)
            .await
            .unwrap();
    }
    let prepared: i64 = conn
        .query_one(
            // Split so that this query's own text (prepared too) does not match.
            "select count(*) from pg_prepared_statements
             where statement like '%with ' || 'startable as%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        prepared, 1,
        "the start statement is prepared once and reused"
    );
}

#[tokio::test]
async fn reconciliation_re_checks_that_a_missing_job_is_still_pending() {
    let p = TestPipeline::new().await;
    let ids: Vec<i64> = p
        .column(
            "insert into jobs (kind, status) values
                 ('notify_owner', 'pending'), ('notify_owner', 'done'), ('notify_owner', 'dead')
             returning id",
        )
        .await;
    let conn = p.db.conn().await.unwrap();
    let mut asked = ids.clone();
    asked.push(ids[2] + 1_000); // no such job
    let pending = reviews_db::jobs::still_pending(&conn, &asked)
        .await
        .unwrap();
    assert_eq!(pending, [ids[0]]);
}

#[tokio::test]
async fn the_relay_statements_are_planned_once_per_connection_and_claim_by_the_pending_key() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let conn = p.db.conn().await.unwrap();
    let statements = statements_for(
        &JobRegistry::standard(),
        500,
        Duration::ZERO,
        Bookkeeping::Asynchronous,
    );
    for i in 0..8 {
        p.add_reviews(product, authors(&format!("plain{i}-"), 1))
            .await;
        let batch = relay_pending_events(&conn, &statements).await.unwrap();
        assert_eq!(batch.events, 1);
        p.add_reviews(product, authors(&format!("start{i}-"), 1))
            .await;
        let batch = relay_and_start(&conn, &statements, 1 + i % 3)
            .await
            .unwrap();
        assert_eq!(batch.events, 1);
    }
    let plans = |starting: bool| {
        let conn = &conn;
        async move {
            let row = conn
                .query_one(
                    // Split so that this query's own text (prepared too) does not match.
                    "select name, generic_plans, custom_plans from pg_prepared_statements
                     where statement like '%relay_' || 'settings%'
                       and (statement like '%<= $1%') = $1",
                    &[&starting],
                )
                .await
                .unwrap();
            let name: String = row.get(0);
            (name, row.get::<_, i64>(1), row.get::<_, i64>(2))
        }
    };
    // Without parameters: one generic plan, never planned again.
    let (plain, generic, custom) = plans(false).await;
    assert_eq!(
        (generic, custom),
        (8, 0),
        "the relay statement without a start"
    );
    // With the number to start as its one parameter, which changes no plan: Postgres tries
    // five custom plans, then keeps the generic one.
    let (_, generic, custom) = plans(true).await;
    assert!(
        generic >= 3 && custom <= 5,
        "{generic} generic, {custom} custom plans"
    );

    // The plan kept was made while outbox_pending held one row at most; with a backlog it
    // still claims through the table's key, in id order, and not by sorting the table.
    p.add_reviews(product, authors("backlog", 2000)).await;
    let plan: Vec<String> = conn
        .query(&format!("explain (costs off) execute {plain}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using outbox_pending_pkey on outbox_pending"),
        "{plan}"
    );
    let batch = relay_pending_events(&conn, &statements).await.unwrap();
    assert_eq!(batch.events, 500);
    // The worker's bookkeeping is written in too: these statements commit asynchronously.
    let written_in = conn
        .query_one(
            "select count(*) from pg_prepared_statements
             where statement like '%relay_' || 'settings%'
               and statement like '%coalesce(''off''::text, current_setting(''synchronous_commit''))%'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(written_in, 2);
}
