//! The batched job statements must find jobs through the primary key whatever the table's
//! statistics say. When they say pending jobs are rare (most jobs done, or analyzed before a
//! burst), a statement that says `status = 'pending'` tempts the planner into reading the
//! partial index of *all* pending jobs for every wanted id; during a 100,000-job backlog that
//! made the drain 15 times slower. Also: pooled connections keep their prepared statements.

use reviews_db::jobs::{complete_jobs_sql, start_jobs_sql};

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
