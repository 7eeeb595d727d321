//! The batched job statements must find jobs through the primary key whatever the table's
//! statistics say. When they say pending jobs are rare (most jobs done, or analyzed before a
//! burst), a statement that says `status = 'pending'` tempts the planner into reading the
//! partial index of *all* pending jobs for every wanted id; during a 100,000-job backlog that
//! made the drain 15 times slower. Also: pooled connections keep their prepared statements,
//! and the relay's are planned once per connection.

use std::time::Duration;

use reviews_db::jobs::{complete_jobs_sql, start_jobs_sql};
use reviews_db::outbox::{relay_and_start, relay_pending_events};
use reviews_db::sql::AsClient;
use reviews_db::statements::PlanCache;
use reviews_db::{Bookkeeping, PoolMode};
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
    // The worker's pool plans generically (`PlanCache::Generic`): so must these.
    client
        .batch_execute("set plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    for sql in [start_jobs_sql(), complete_jobs_sql()] {
        let plan = plan(sql).await;
        assert!(!plan.contains("jobs_pending_run_at"), "generic: {plan}");
        assert!(plan.contains("jobs_pkey"), "generic: {plan}");
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

/// A pool on the test's database, in `mode`, planning as `plans` says.
fn pool_planning(p: &TestPipeline, mode: PoolMode, plans: PlanCache) -> reviews_db::Db {
    reviews_db::Db::connect_lazy_planning(
        reviews_db::PgTarget::plaintext(p.database.config.clone()),
        4,
        mode,
        plans,
    )
}

/// A pool on the test's database that plans as the worker's does.
fn worker_pool(p: &TestPipeline) -> reviews_db::Db {
    pool_planning(p, PoolMode::Session, PlanCache::Generic)
}

#[tokio::test]
async fn the_workers_pool_plans_its_statements_generically_and_a_transaction_pooler_is_left_alone()
{
    let p = TestPipeline::new().await;
    for (mode, plans, expected) in [
        (PoolMode::Session, PlanCache::Generic, "force_generic_plan"),
        (PoolMode::Session, PlanCache::Auto, "auto"),
        // Behind a transaction pooler a session setting would reach other clients' sessions.
        (PoolMode::Transaction, PlanCache::Generic, "auto"),
    ] {
        let conn = pool_planning(&p, mode, plans).conn().await.unwrap();
        let setting: String = conn
            .query_one("show plan_cache_mode", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(setting, expected, "{mode:?} {plans:?}");
    }
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
async fn a_pool_hands_out_the_connection_returned_last() {
    let p = TestPipeline::new().await;
    let pool = worker_pool(&p);
    // Two connections, returned one after the other: the second is handed out next, and
    // again after each return (its statements and plans are the warm ones).
    let first = pool.conn().await.unwrap();
    let second = pool.conn().await.unwrap();
    let (first_pid, second_pid) = (backend_pid(&first).await, backend_pid(&second).await);
    assert_ne!(first_pid, second_pid);
    drop(first);
    drop(second);
    for _ in 0..3 {
        let conn = pool.conn().await.unwrap();
        assert_eq!(
            backend_pid(&conn).await,
            second_pid,
            "the connection returned last"
        );
    }
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

/// The relay statements on `conn` (split so that this query's own text, prepared too, does
/// not match): the one that starts jobs (it has `$1`) or the other, with its name and how
/// many generic and custom plans it has had.
async fn relay_plans(conn: &reviews_db::Sql<impl AsClient>, starting: bool) -> (String, i64, i64) {
    let row = conn
        .query_one(
            "select name, generic_plans, custom_plans from pg_prepared_statements
             where statement like '%relay_' || 'settings%'
               and (statement like '%<= $1%') = $1",
            &[&starting],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Whether `plan` reads all of `table` (a sequential scan, under any alias).
fn reads_whole(plan: &str, table: &str) -> bool {
    let scan = format!("Seq Scan on {table}");
    plan.lines()
        .any(|line| line.trim_end().ends_with(&scan) || line.contains(&format!("{scan} ")))
}

async fn explain(conn: &reviews_db::Sql<impl AsClient>, execute: &str) -> String {
    conn.query(&format!("explain (costs off) execute {execute}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn the_relay_statements_are_planned_once_and_their_plans_still_look_up_by_key_as_tables_grow()
{
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    // Planned as the worker's pool plans them.
    let db = worker_pool(&p).with_bookkeeping(Bookkeeping::Asynchronous);
    let conn = db.conn().await.unwrap();
    let statements = statements_for(
        &JobRegistry::standard(),
        500,
        Duration::ZERO,
        Bookkeeping::Asynchronous,
    )
    .replanned_every(Duration::from_secs(3600));
    p.add_reviews(product, authors("first", 1)).await;
    assert_eq!(
        relay_pending_events(&conn, &statements)
            .await
            .unwrap()
            .events,
        1
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
    // Without parameters: one generic plan, never planned again.
    let (plain, generic, custom) = relay_plans(&conn, false).await;
    assert_eq!(
        (generic, custom),
        (9, 0),
        "the relay statement without a start"
    );
    // With the number to start as its one parameter, which changes no plan: Postgres tries
    // five custom plans, then keeps the generic one.
    let (starting, generic, custom) = relay_plans(&conn, true).await;
    assert!(
        generic >= 3 && custom <= 5,
        "{generic} generic, {custom} custom plans"
    );

    // Those plans were made while the outbox and the jobs held a few rows (never analyzed,
    // as in a new database). Now the tables grow (a backlog of events, many jobs waiting):
    // the kept plans still claim through outbox_pending's key in id order, read the claimed
    // events through the outbox's key and look for a waiting twin through the coalescing
    // index, each row by row, instead of reading a whole table every batch.
    p.add_reviews(product, authors("backlog", 2000)).await;
    p.sql(
        "insert into jobs (kind, coalesce_key, payload)
         select 'recompute_rating', gen_random_uuid()::text, '{}' from generate_series(1, 20000)",
    )
    .await;
    for plan in [
        explain(&conn, &plain).await,
        explain(&conn, &format!("{starting}(3)")).await,
    ] {
        assert!(
            plan.contains("Index Scan using outbox_pending_pkey on outbox_pending"),
            "{plan}"
        );
        assert!(
            plan.contains("Index Scan using outbox_pkey on outbox"),
            "{plan}"
        );
        assert!(!reads_whole(&plan, "outbox"), "{plan}");
        assert!(!reads_whole(&plan, "outbox_pending"), "{plan}");
        assert!(!reads_whole(&plan, "jobs"), "{plan}");
    }
    let plan = explain(&conn, &format!("{starting}(3)")).await;
    assert!(
        plan.contains("Index Scan using jobs_coalesce on jobs twin"),
        "{plan}"
    );
    assert_eq!(
        relay_pending_events(&conn, &statements)
            .await
            .unwrap()
            .events,
        500
    );
    assert_eq!(
        relay_and_start(&conn, &statements, 3).await.unwrap().events,
        500
    );

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

#[tokio::test]
async fn a_relay_plan_made_for_tiny_tables_is_made_again_once_it_is_old() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    // Statistics that say the tables are tiny (a page each), taken just before the plan is
    // made: what autovacuum leaves in outbox_pending whenever the relay keeps up.
    p.add_reviews(product, authors("first", 3)).await;
    p.sql("analyze outbox, outbox_pending, jobs").await;
    let conn = worker_pool(&p).conn().await.unwrap();
    let statements = |max_age| {
        statements_for(
            &JobRegistry::standard(),
            500,
            Duration::ZERO,
            Bookkeeping::Synchronous,
        )
        .replanned_every(max_age)
    };
    let young = statements(Duration::from_secs(3600));
    assert_eq!(relay_pending_events(&conn, &young).await.unwrap().events, 3);
    let (kept, _, _) = relay_plans(&conn, false).await;

    // A backlog builds up. The kept plan still believes the tables tiny and reads them
    // whole, for every batch, and for every claimed event: the trap a plan's age bounds.
    p.add_reviews(product, authors("backlog", 2000)).await;
    let stale = explain(&conn, &kept).await;
    assert!(reads_whole(&stale, "outbox"), "{stale}");
    assert_eq!(
        relay_pending_events(&conn, &young).await.unwrap().events,
        500
    );
    assert_eq!(relay_plans(&conn, false).await.0, kept, "young: kept");

    // Once the plan is older than its age, the next run prepares it again, and Postgres
    // plans it for the tables' sizes now (their pages, though not yet analyzed): the
    // outbox through its key. (outbox_pending, 1,500 rows over a few pages, it may still
    // read whole, as a plan made for each run would.)
    let old = statements(Duration::ZERO);
    assert_eq!(relay_pending_events(&conn, &old).await.unwrap().events, 500);
    let (again, generic, _) = relay_plans(&conn, false).await;
    assert_ne!(again, kept);
    assert_eq!(generic, 1, "the old statement is closed: one row, not two");
    let fresh = explain(&conn, &again).await;
    assert!(
        fresh.contains("Index Scan using outbox_pkey on outbox"),
        "{fresh}"
    );
    assert!(!reads_whole(&fresh, "outbox"), "{fresh}");
}

#[tokio::test]
async fn a_fenced_completion_planned_while_jobs_was_tiny_still_finds_jobs_by_key() {
    let p = TestPipeline::new().await;
    let mut client = p.client().await;
    let complete_one = "with job as (insert into jobs (kind, attempts) values ('notify_owner', 1)
                                     returning id)
                        select complete_jobs_fenced(array[(select id from job)], array[1], null)";
    // The worker's sessions (and apply_rating_jobs, which calls the function) plan with
    // plan_cache_mode = force_generic_plan, so the connection keeps a generic plan of the
    // function's statement, made for the table's size at the first call: here, a page.
    client
        .batch_execute("set plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    client.execute(complete_one, &[]).await.unwrap();
    client.batch_execute(GROWN_JOBS).await.unwrap();
    let transaction = client.transaction().await.unwrap();
    let before = sequential_reads(&transaction, "jobs").await;
    transaction.execute(complete_one, &[]).await.unwrap();
    let after = sequential_reads(&transaction, "jobs").await;
    assert_eq!(
        after, before,
        "the completion read the jobs table whole (sequential scans, rows read)"
    );
    transaction.commit().await.unwrap();
}

#[tokio::test]
async fn the_batched_job_statements_are_planned_again_once_their_plan_made_for_a_tiny_table_is_old()
{
    let p = TestPipeline::new().await;
    let ids: Vec<i64> = p
        .column("insert into jobs (kind) values ('notify_owner'), ('notify_owner') returning id")
        .await;
    // Analyzed while it is a page, as autovacuum leaves a new database's table (and not again
    // during the test: a new analysis would replace the plans).
    p.sql("alter table jobs set (autovacuum_enabled = false); analyze jobs")
        .await;
    let conn = worker_pool(&p).conn().await.unwrap();
    // Prepared (and planned generically) while the table is a page.
    let started = reviews_db::jobs::start_jobs(&conn, &ids[..1], 10)
        .await
        .unwrap();
    assert_eq!(started.len(), 1);
    let attempt = reviews_db::jobs::Attempt {
        job_id: ids[0],
        attempt: 1,
    };
    assert_eq!(
        reviews_db::jobs::complete_jobs(&conn, &[attempt])
            .await
            .unwrap(),
        [ids[0]]
    );
    the_single_job_statements(&conn, ids[1]).await;
    p.sql(GROWN_JOBS).await;
    // Each statement by a fragment of its text, split so that this query's own text
    // (prepared too) does not match; with the arguments of an explain.
    let statements = [
        ("%with ' || 'startable as%", "('{1}', 10, null)"),
        (
            "update jobs set status = ' || '''done''%",
            "('{1}', '{1}', null)",
        ),
        // still_pending, job_state, schedule_retry
        ("%j.status = ' || '''pending''", "('{1}')"),
        ("%as max_' || 'attempts%", "(1, 3)"),
        ("%set run_' || 'at = now()%", "(1, 1, 10, 'e', null)"),
    ];

    let plans = |conn| async move {
        let mut plans = Vec::new();
        for (text, arguments) in statements {
            let name: String = conn_query_one(
                conn,
                &format!("select name from pg_prepared_statements where statement like '{text}'"),
            )
            .await;
            plans.push((
                name.clone(),
                explain(conn, &format!("{name}{arguments}")).await,
            ));
        }
        plans
    };
    // The kept plans read the grown table whole: the trap.
    let stale = plans(&conn).await;
    for (_, plan) in &stale {
        assert!(reads_whole(plan, "jobs"), "{plan}");
    }

    // Once the plans are older than their age, the next runs prepare them again, for the
    // table's size now.
    tokio::time::sleep(reviews_db::jobs::JOB_PLAN_MAX_AGE + Duration::from_millis(100)).await;
    reviews_db::jobs::start_jobs(&conn, &ids[1..], 10)
        .await
        .unwrap();
    let attempt = reviews_db::jobs::Attempt {
        job_id: ids[1],
        attempt: 1,
    };
    reviews_db::jobs::complete_jobs(&conn, &[attempt])
        .await
        .unwrap();
    the_single_job_statements(&conn, ids[1]).await;
    let fresh = plans(&conn).await;
    for ((old_name, _), (name, plan)) in stale.iter().zip(&fresh) {
        assert_ne!(old_name, name, "prepared again");
        assert!(!reads_whole(plan, "jobs"), "{plan}");
    }
}

/// Runs the job statements that look one job (or a few) up: the reconciler's
/// `still_pending`, the completer's `job_state` and `schedule_retry`.
async fn the_single_job_statements(conn: &reviews_db::Sql<impl AsClient>, id: i64) {
    reviews_db::jobs::still_pending(conn, &[id]).await.unwrap();
    reviews_db::jobs::job_state(conn, id, 3).await.unwrap();
    let attempt = reviews_db::jobs::Attempt {
        job_id: id,
        attempt: 1,
    };
    reviews_db::jobs::schedule_retry(conn, attempt, 10, "a test")
        .await
        .unwrap();
}

/// 20,000 finished jobs: the table grown past what a plan made while it was a page expects.
const GROWN_JOBS: &str = "insert into jobs (kind, status, attempts)
                          select 'notify_owner', 'done', 1 from generate_series(1, 20000)";

/// The sequential scans of `table` and the rows they read, counted over this connection's
/// transactions not yet sent to the statistics, the current one's included: compared before
/// and after a statement.
async fn sequential_reads(
    transaction: &tokio_postgres::Transaction<'_>,
    table: &str,
) -> (i64, i64) {
    let row = transaction
        .query_one(
            "select seq_scan, seq_tup_read from pg_stat_xact_user_tables where relname = $1",
            &[&table],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn conn_query_one<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    conn: &reviews_db::Sql<impl AsClient>,
    sql: &str,
) -> T {
    conn.query_one(sql, &[]).await.unwrap().get(0)
}

async fn backend_pid(conn: &reviews_db::Sql<impl AsClient>) -> i32 {
    conn_query_one(conn, "select pg_backend_pid()").await
}

#[tokio::test]
async fn a_rating_batch_planned_while_products_was_tiny_still_finds_products_by_key() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let mut client = p.client().await;
    let apply_one = |product: uuid::Uuid| {
        format!(
            "with job as (insert into jobs (kind, attempts) values ('recompute_rating', 1)
                          returning id)
             select apply_rating_jobs(array[(select id from job)], array[1],
                 array['{{\"products\": [{{\"product_id\": \"{product}\",
                                          \"stars\": [0, 0, 1, 0, 0]}}]}}'::jsonb], null)"
        )
    };
    // The worker's sessions plan with plan_cache_mode = force_generic_plan (and the function
    // sets it too), so the connection keeps a generic plan of each of the function's
    // statements, made for the tables' sizes at the first call: here, one product.
    // Analyzed while it holds one product, as autovacuum leaves a new database's table (and
    // not again during the test: a new analysis would replace the plan).
    client
        .batch_execute(
            "alter table products set (autovacuum_enabled = false); analyze products;
             set plan_cache_mode = force_generic_plan",
        )
        .await
        .unwrap();
    client.batch_execute(&apply_one(product)).await.unwrap();
    client
        .batch_execute(
            "insert into products (id, name, owner_id)
             select gen_random_uuid(), 'p' || i, 'owner' from generate_series(1, 20000) i",
        )
        .await
        .unwrap();
    // A product at the end of the table: a sequential scan that looks for it reads it all.
    let last = p.create_product("owner").await;
    let transaction = client.transaction().await.unwrap();
    let before = sequential_reads(&transaction, "products").await;
    transaction.batch_execute(&apply_one(last)).await.unwrap();
    let after = sequential_reads(&transaction, "products").await;
    assert_eq!(
        after, before,
        "the rating batch read the products table whole (sequential scans, rows read)"
    );
    transaction.commit().await.unwrap();
    assert_eq!(
        p.count(&format!(
            "select sum(review_count)::int8 from product_ratings
             where product_id in ('{product}', '{last}')"
        ))
        .await,
        2,
        "both batches applied their delta"
    );
}

#[tokio::test]
async fn the_notify_statement_is_planned_again_once_its_plan_made_for_tiny_tables_is_old() {
    use reviews_db::notifications::{notify_product_owners, Notified};
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    p.add_reviews(product, authors("first", 1)).await;
    // Analyzed while each holds a row, as autovacuum leaves a new database's tables (and not
    // again during the test: a new analysis would replace the plan).
    p.sql(
        "alter table products set (autovacuum_enabled = false);
         alter table outbox set (autovacuum_enabled = false);
         analyze products, outbox",
    )
    .await;
    let first: Vec<i64> = p.column("select id from outbox").await;
    let conn = worker_pool(&p).conn().await.unwrap();
    // Prepared (and planned generically) while the tables are a page each.
    assert_eq!(
        notify_product_owners(&conn, &[], &first, &[])
            .await
            .unwrap(),
        Notified::Written(1)
    );

    p.sql(
        "insert into products (id, name, owner_id)
         select gen_random_uuid(), 'p' || i, 'owner' from generate_series(1, 20000) i",
    )
    .await;
    let last = p.create_product("owner").await;
    p.add_reviews(last, authors("backlog", 2000)).await;
    let plan = |conn| async move {
        // Found by a fragment of its text, split so that this query's own text (prepared
        // too) does not match; explained for one event named by its outbox id.
        let name: String = conn_query_one(
            conn,
            "select name from pg_prepared_statements
             where statement like '%with from_' || 'outbox as materialized%'",
        )
        .await;
        let plan = explain(
            conn,
            &format!(
                "{name}('{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{1}}', '{{}}', '{{}}', null)"
            ),
        )
        .await;
        (name, plan)
    };
    // The kept plan reads both grown tables whole, at every call: the trap.
    let (kept, stale) = plan(&conn).await;
    assert!(reads_whole(&stale, "outbox"), "{stale}");
    assert!(reads_whole(&stale, "products"), "{stale}");

    // Once the plan is older than its age, the next call prepares it again, for the tables'
    // sizes now (their pages, though not yet analyzed).
    tokio::time::sleep(reviews_db::jobs::JOB_PLAN_MAX_AGE + Duration::from_millis(100)).await;
    let newest: Vec<i64> = p
        .column("select id from outbox order by id desc limit 1")
        .await;
    assert_eq!(
        notify_product_owners(&conn, &[], &newest, &[])
            .await
            .unwrap(),
        Notified::Written(1)
    );
    let (again, fresh) = plan(&conn).await;
    assert_ne!(again, kept, "prepared again");
    assert!(!reads_whole(&fresh, "outbox"), "{fresh}");
    assert!(!reads_whole(&fresh, "products"), "{fresh}");
}

#[tokio::test]
async fn a_hand_back_planned_while_jobs_was_tiny_still_finds_jobs_by_key() {
    let p = TestPipeline::new().await;
    let mut client = p.client().await;
    let started_job = "insert into jobs (kind, attempts) values ('notify_owner', 1) returning id";
    // The worker's sessions plan with plan_cache_mode = force_generic_plan, so the
    // connection keeps a generic plan of each of hand_back_job's statements (and
    // merge_into_waiting_twin's), made for the table's size at the first call: here, a page,
    // analyzed as such (and not again during the test: a new analysis would replace them).
    client
        .batch_execute(
            "alter table jobs set (autovacuum_enabled = false);
             set plan_cache_mode = force_generic_plan",
        )
        .await
        .unwrap();
    let first: i64 = client.query_one(started_job, &[]).await.unwrap().get(0);
    client.batch_execute("analyze jobs").await.unwrap();
    let hand_back = "select hand_back_job($1, 1)";
    let given_back: bool = client.query_one(hand_back, &[&first]).await.unwrap().get(0);
    assert!(given_back);
    client.batch_execute(GROWN_JOBS).await.unwrap();
    let last: i64 = client.query_one(started_job, &[]).await.unwrap().get(0);
    let transaction = client.transaction().await.unwrap();
    let before = sequential_reads(&transaction, "jobs").await;
    let given_back: bool = transaction
        .query_one(hand_back, &[&last])
        .await
        .unwrap()
        .get(0);
    assert!(given_back);
    let after = sequential_reads(&transaction, "jobs").await;
    assert_eq!(
        after, before,
        "the hand-back read the jobs table whole (sequential scans, rows read)"
    );
    transaction.commit().await.unwrap();
}
