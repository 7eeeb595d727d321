//! The normal flow and its variations: a backlog, coalescing, two workers, the listener
//! losing its connection, a missed doorbell, shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reviews_worker::config::NotifyPayload;
use reviews_worker::jobs::JobRegistry;
use reviews_worker::listener::APPLICATION_NAME;

use reviews_db::Bookkeeping;
use reviews_worker::relay::statements_for;

use crate::support::*;

#[tokio::test]
async fn a_worker_started_after_1000_events_drains_them_all() {
    let p = TestPipeline::new().await;
    let products = [
        p.create_product("owner-a").await,
        p.create_product("owner-b").await,
    ];
    for (i, product) in products.iter().enumerate() {
        p.add_reviews(*product, authors(&format!("r{i}"), 500))
            .await;
    }
    assert_eq!(p.count("select count(*) from outbox_pending").await, 1000);
    // Each row's version: an update, however small, would give the row a new xmin and ctid.
    let versions = "select string_agg(xmin::text || ctid::text, ',' order by id) from outbox";
    let written: Vec<String> = p.column(versions).await;

    let worker = p.start_worker().await;
    p.wait_until_idle(Duration::from_secs(60)).await;
    assert_eq!(
        p.column::<String>(versions).await,
        written,
        "relaying must not rewrite outbox rows (their cost would grow with the history)"
    );
    assert_eq!(p.count("select count(*) from outbox_pending").await, 0);
    let runs = worker.ledger.runs();
    worker.stop().await;

    // One notify job per relay batch (200 events in these tests), naming its events by
    // outbox id, each event in exactly one.
    assert_eq!(
        p.count("select count(*) from jobs where kind = 'notify_owner' and payload ? 'outbox_ids'")
            .await,
        5
    );
    assert_eq!(
        p.count(
            "select count(distinct e) from jobs, notify_job_outbox_ids(payload) e
             where kind = 'notify_owner'"
        )
        .await,
        1000
    );
    p.assert_notified_once_each(&runs, 1000).await;
    p.assert_ratings_match_reviews().await;
    let counts: Vec<i32> = p
        .column("select review_count from product_ratings order by review_count")
        .await;
    assert_eq!(counts, [500, 500]);
}

#[tokio::test]
async fn jobs_of_one_event_each_as_older_workers_wrote_them_run_and_are_recorded_in_batches() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    p.sql(&format!(
        "insert into jobs (kind, event_id, payload)
         select 'notify_owner', e, jsonb_build_object('event_id', e, 'event_type', 'review.created',
                'review_id', gen_random_uuid(), 'product_id', '{product}'::uuid, 'author_id', 'a' || i)
         from (select i, gen_random_uuid() as e from generate_series(1, 1000) i) events"
    ))
    .await;
    // Their ids reach the queue by reconciliation, as after a Redis loss.
    let worker = p.start_worker().await;
    p.wait_until_idle(Duration::from_secs(60)).await;
    // Read once the worker has stopped: a job's completion commits before its runner counts
    // it.
    let stats = worker.worker.stats.clone();
    worker.stop().await;
    let (succeeded, start_batches, completion_batches) = (
        stats.succeeded.load(Ordering::Relaxed),
        stats.start_batches.load(Ordering::Relaxed),
        stats.completion_batches.load(Ordering::Relaxed),
    );

    // Attempts and successes are recorded many jobs per statement, not one each.
    assert_eq!(succeeded, 1000);
    assert!(
        start_batches * 4 < succeeded && completion_batches * 4 < succeeded,
        "{succeeded} jobs took {start_batches} start and {completion_batches} completion statements"
    );
    assert_eq!(
        p.count("select count(distinct event_id) from notifications where recipient_id = 'owner'")
            .await,
        1000
    );
}

#[tokio::test]
async fn a_burst_for_one_product_is_coalesced_into_one_rating_job() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    p.add_reviews(product, authors("r", 50)).await;

    let batch = p.relay_pending().await;
    assert_eq!(batch.events, 50);
    assert_eq!(
        p.count("select count(*) from jobs where kind = 'recompute_rating'")
            .await,
        1
    );
    assert_eq!(
        p.count("select count(*) from jobs where kind = 'notify_owner'")
            .await,
        1,
        "one notify job for the batch"
    );
    assert_eq!(
        p.count("select jsonb_array_length(payload->'outbox_ids')::bigint from jobs where kind = 'notify_owner'")
            .await,
        50
    );
    assert_eq!(batch.job_ids.len(), 2);
}

#[tokio::test]
async fn with_relay_notify_payload_events_notify_jobs_carry_their_events_whole_and_run() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    p.add_reviews(product, authors("r", 300)).await;
    let mut args = p.args();
    args.tuning.relay_notify_payload = NotifyPayload::Events;
    let worker = p.start_worker_with(args, JobRegistry::standard()).await;
    p.wait_until_idle(Duration::from_secs(60)).await;
    let runs = worker.ledger.runs();
    worker.stop().await;

    // The form workers from before db/migrations/0019 read: every event whole, with what
    // their handler needs of it.
    assert_eq!(
        p.count(
            "select count(*) from jobs j, jsonb_array_elements(j.payload->'events') e
             join outbox o on o.event_id = (e->>'event_id')::uuid
              and o.review_id = (e->>'review_id')::uuid
              and o.product_id = (e->>'product_id')::uuid
              and o.event_type = e->>'event_type'
              and o.payload->'new'->>'author_id' = e->>'author_id'
             where j.kind = 'notify_owner' and not j.payload ? 'outbox_ids'"
        )
        .await,
        300
    );
    let payloads: Vec<serde_json::Value> = p
        .column("select payload from jobs where kind = 'notify_owner'")
        .await;
    let events: usize = payloads
        .into_iter()
        .map(|payload| match serde_json::from_value(payload) {
            Ok(PayloadBefore0019::Batch { events }) => events.len(),
            Ok(PayloadBefore0019::One(_)) => 1,
            Err(error) => panic!("a worker from before 0019 cannot read it: {error}"),
        })
        .sum();
    assert_eq!(events, 300);
    p.assert_notified_once_each(&runs, 300).await;
}

/// A notify payload as workers from before db/migrations/0019 read it.
#[derive(serde::Deserialize)]
#[serde(untagged)]
#[allow(dead_code)] // read, and only counted
enum PayloadBefore0019 {
    Batch { events: Vec<EventBefore0019> },
    One(EventBefore0019),
}

#[derive(serde::Deserialize)]
#[allow(dead_code)] // the fields a worker from before 0019 requires
struct EventBefore0019 {
    event_id: uuid::Uuid,
    event_type: String,
    review_id: uuid::Uuid,
    product_id: uuid::Uuid,
    author_id: String,
    actor_id: Option<String>,
    request_id: Option<String>,
}

#[tokio::test]
async fn a_batch_over_many_products_makes_one_rating_job_with_each_products_deltas() {
    let p = TestPipeline::new().await;
    let mut products = Vec::new();
    for _ in 0..5 {
        let product = p.create_product("owner").await;
        p.add_reviews(product, authors("r", 3)).await;
        products.push(product);
    }
    let batch = p.relay_pending().await;
    assert_eq!(batch.events, 15);
    assert_eq!(
        batch.job_ids.len(),
        2,
        "a rating job and a notify job: {batch:?}"
    );
    let entries: Vec<String> = p
        .column(
            "select e.product_id::text || ' ' || e.stars::text
             from jobs, rating_job_products(payload) e
             where kind = 'recompute_rating' and coalesce_key is null and not e.recompute
             order by e.product_id",
        )
        .await;
    products.sort();
    let expected: Vec<String> = {
        let mut expected = Vec::new();
        for product in &products {
            let stars: Vec<String> = p
                .column(&format!(
                    "select array[count(*) filter (where rating = 1),
                                  count(*) filter (where rating = 2),
                                  count(*) filter (where rating = 3),
                                  count(*) filter (where rating = 4),
                                  count(*) filter (where rating = 5)]::int4[]::text
                     from reviews where product_id = '{product}'"
                ))
                .await;
            expected.push(format!("{product} {}", stars[0]));
        }
        expected
    };
    assert_eq!(entries, expected);
    let worker = p.start_worker().await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    worker.stop().await;
    p.assert_ratings_match_reviews().await;
}

#[tokio::test]
async fn a_product_recomputed_moments_ago_waits_for_the_interval_and_its_events_share_one_recompute(
) {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let other = p.create_product("owner").await;
    p.add_reviews(product, authors("a", 1)).await;
    // Its summary was just recomputed; the other product has none yet.
    p.sql(&format!("select recompute_product_rating('{product}')"))
        .await;
    p.add_reviews(product, authors("b", 3)).await;
    p.add_reviews(other, authors("c", 1)).await;
    let db = &p.db;
    // Built per call: the interval is written into the relay's statement.
    let relay = |interval| async move {
        let statements = statements_for(
            &JobRegistry::standard(),
            500,
            interval,
            Bookkeeping::Synchronous,
        );
        let conn = db.conn().await.unwrap();
        reviews_db::outbox::relay_pending_events(&conn, &statements)
            .await
            .unwrap()
    };

    let first = relay(Duration::from_secs(10)).await;
    assert_eq!(first.events, 5);
    // Ready now: the notify job and the other product's recompute. Held back: this
    // product's, due 10 s after its last recompute.
    assert_eq!(first.job_ids.len(), 2, "{first:?}");
    let [(held, due_in)] = first.held_back[..] else {
        panic!("one recompute held back: {first:?}");
    };
    assert!(
        due_in > Duration::from_secs(9) && due_in <= Duration::from_secs(10),
        "{due_in:?}"
    );
    assert_eq!(
        p.count(&format!(
            "select count(*) from jobs j join product_ratings pr on pr.product_id::text = j.coalesce_key
             where j.id = {held} and j.run_at = pr.updated_at + interval '10 s'"
        ))
        .await,
        1,
        "due 10 s after the product's last recompute"
    );

    // More events while it waits join it: no second recompute job for the product.
    p.add_reviews(product, authors("d", 2)).await;
    let second = relay(Duration::from_secs(10)).await;
    assert_eq!(second.events, 2);
    assert!(second.held_back.is_empty(), "{second:?}");
    assert_eq!(
        p.count(&format!(
            "select count(*) from jobs where kind = 'recompute_rating' and coalesce_key = '{product}'"
        ))
        .await,
        1
    );

    // With no interval, nothing waits.
    p.add_reviews(other, authors("e", 1)).await;
    let third = relay(Duration::ZERO).await;
    assert!(third.held_back.is_empty(), "{third:?}");
}

#[tokio::test]
async fn a_product_written_without_pause_is_recomputed_a_few_times_not_once_per_review() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let mut args = p.args();
    // Long next to the writes below, even on a loaded machine (a run of the suite once took
    // them past 400 ms, and a write that lands while the held-back recompute runs gets a
    // recompute of its own).
    args.tuning.rating_recompute_interval = Duration::from_secs(2);
    let worker = p.start_worker_with(args, JobRegistry::standard()).await;
    p.add_reviews(product, authors("first", 1)).await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    // Then 19 more one by one, each relayed on its own while the worker keeps up, all
    // within the interval after the first recompute.
    for i in 0..19 {
        p.add_reviews(product, authors(&format!("w{i}-"), 1)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    p.wait_until_idle(Duration::from_secs(20)).await;
    let recomputes = p
        .count("select count(*) from jobs where kind = 'recompute_rating'")
        .await;
    // The first, then one for the 19 (a third at most, should the writes outlast the
    // interval). Without the interval: about one per review.
    assert!((2..=3).contains(&recomputes), "{recomputes} recomputes");
    assert_eq!(
        p.count("select review_count::bigint from product_ratings")
            .await,
        20,
        "the last recompute saw every review"
    );
    let gap: Vec<f64> = p
        .column(
            "select extract(epoch from max(last_started_at) - min(last_started_at))::float8
             from (select last_started_at from jobs where kind = 'recompute_rating'
                   order by last_started_at limit 2) first_two",
        )
        .await;
    assert!(
        gap[0] >= 1.99,
        "the second started {gap:?} s after the first"
    );
    p.assert_ratings_match_reviews().await;
    worker.stop().await;
}

#[tokio::test]
async fn the_owner_is_not_notified_of_their_own_review_and_deletes_update_the_rating() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let worker = p.start_worker().await;
    p.add_reviews(product, vec!["owner".to_string(), "someone".to_string()])
        .await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    assert_eq!(p.count("select count(*) from notifications").await, 1);
    assert_eq!(
        p.count("select review_count::bigint from product_ratings")
            .await,
        2
    );

    p.client()
        .await
        .execute("delete from reviews where author_id = 'someone'", &[])
        .await
        .unwrap();
    p.wait_until_idle(Duration::from_secs(20)).await;
    worker.stop().await;
    assert_eq!(
        p.count("select review_count::bigint from product_ratings")
            .await,
        1
    );
    assert_eq!(
        p.count("select count(*) from notifications where kind = 'review.deleted'")
            .await,
        1
    );
}

#[tokio::test]
async fn two_workers_on_one_database_and_redis_apply_each_event_once() {
    let p = TestPipeline::new().await;
    let products = [
        p.create_product("o1").await,
        p.create_product("o2").await,
        p.create_product("o3").await,
    ];
    let (a, b) = (p.start_worker().await, p.start_worker().await);
    for (i, product) in products.iter().enumerate() {
        p.add_reviews(*product, authors(&format!("r{i}"), 200))
            .await;
    }
    p.wait_until_idle(Duration::from_secs(60)).await;
    let (stats_a, stats_b) = (a.worker.stats.clone(), b.worker.stats.clone());
    let mut ledger = a.ledger.runs();
    ledger.extend(b.ledger.runs());
    a.stop().await;
    b.stop().await;
    let runs_a = stats_a.succeeded.load(Ordering::Relaxed);
    let runs_b = stats_b.succeeded.load(Ordering::Relaxed);

    // Each job ran in one worker or the other, once.
    p.assert_notified_once_each(&ledger, 600).await;
    let mut job_ids: Vec<i64> = ledger.iter().map(|run| run.job_id).collect();
    job_ids.sort_unstable();
    job_ids.dedup();
    assert_eq!(job_ids.len(), ledger.len(), "a job ran twice");
    p.assert_ratings_match_reviews().await;
    assert!(
        runs_a > 0 && runs_b > 0,
        "both workers should have run jobs: {runs_a} and {runs_b}"
    );
    assert_eq!(p.count("select count(*) from dead_jobs").await, 0);
}

#[tokio::test]
async fn after_the_listener_is_killed_nothing_is_lost_and_the_doorbell_works_again() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let mut args = p.args();
    // A poll too slow to hide a broken doorbell within this test.
    args.tuning.poll_interval = Duration::from_secs(60);
    let worker = p.start_worker_with(args, JobRegistry::standard()).await;
    p.add_reviews(product, authors("before", 10)).await;
    p.wait_until_idle(Duration::from_secs(20)).await;

    let killed = p
        .count(&format!(
            "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
             where application_name = '{APPLICATION_NAME}' and datname = current_database()) t"
        ))
        .await;
    assert_eq!(killed, 1);
    // Events committed while the listener is away, and after it is back.
    p.add_reviews(product, authors("during", 10)).await;
    for _ in 0..100 {
        if worker.worker.listener_reconnects.load(Ordering::Relaxed) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(worker.worker.listener_reconnects.load(Ordering::Relaxed), 1);
    p.wait_until_idle(Duration::from_secs(20)).await;
    p.add_reviews(product, authors("after", 10)).await;
    p.wait_until_idle(Duration::from_secs(10)).await;
    let runs = worker.ledger.runs();
    worker.stop().await;
    p.assert_notified_once_each(&runs, 30).await;
    p.assert_ratings_match_reviews().await;
}

#[tokio::test]
async fn a_doorbell_missed_while_the_worker_sleeps_is_caught_by_the_poll() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let worker = p.start_worker().await;
    p.wait_until_idle(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // An event the bell never announced (written with the triggers off, by hand): only the
    // poll can find it.
    p.sql(&format!(
        "begin;
         set local session_replication_role = replica;
         with review as (
             insert into reviews (product_id, author_id, rating, title, body)
             values ('{product}', 'quiet', 5, 't', 'b') returning *
         ), event as (
             insert into outbox (event_type, review_id, product_id, payload)
             select 'review.created', id, product_id, jsonb_build_object('new', to_jsonb(review), 'old', null)
             from review returning id
         )
         insert into outbox_pending select id from event;
         commit;"
    ))
    .await;

    p.wait_until_idle(Duration::from_secs(10)).await;
    let runs = worker.ledger.runs();
    worker.stop().await;
    p.assert_notified_once_each(&runs, 1).await;
}

#[tokio::test]
async fn on_shutdown_a_job_that_outlives_the_grace_is_handed_back_without_losing_an_attempt() {
    let p = TestPipeline::new().await;
    let mut args = p.args();
    args.tuning.shutdown_grace = Duration::from_millis(200);
    args.tuning.job_timeout = Duration::from_secs(10);
    args.tuning.lease = Duration::from_secs(20);
    let slow = JobRegistry::standard().with("test.slow", |_| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        })
    });
    let worker = p.start_worker_with(args, slow).await;
    let id: i64 = p
        .client()
        .await
        .query_one(
            "insert into jobs (kind) values ('test.slow') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    worker.worker.queue.enqueue(&[id]).await.unwrap();
    for _ in 0..100 {
        if p.count("select attempts::bigint from jobs").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    worker.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited for the slow job"
    );
    assert_eq!(
        p.count("select attempts::bigint from jobs").await,
        0,
        "the attempt is given back"
    );

    // Another worker picks the handed-back job up at once.
    let fast = JobRegistry::standard().with("test.slow", |_| Box::pin(async { Ok(()) }));
    let next = p.start_worker_with(p.args(), fast).await;
    p.wait_until_idle(Duration::from_secs(10)).await;
    next.stop().await;
    assert_eq!(
        p.count("select count(*) from jobs where status = 'done' and attempts = 1")
            .await,
        1
    );
}

#[tokio::test]
async fn a_review_moved_to_another_product_updates_both_ratings() {
    let p = TestPipeline::new().await;
    let (from, to) = (p.create_product("o1").await, p.create_product("o2").await);
    let worker = p.start_worker().await;
    let reviews = p.add_reviews(from, authors("a", 3)).await;
    p.wait_until_idle(Duration::from_secs(10)).await;
    p.sql(&format!(
        "update reviews set product_id = '{to}' where id = '{}'",
        reviews[0]
    ))
    .await;
    p.wait_until_idle(Duration::from_secs(10)).await;
    worker.stop().await;
    p.assert_ratings_match_reviews().await;
    let counts: Vec<i32> = p
        .column(&format!(
            "select review_count from product_ratings where product_id in ('{from}', '{to}') order by product_id = '{from}'"
        ))
        .await;
    assert_eq!(
        counts,
        [1, 2],
        "the new product has the moved review, the old one lost it"
    );
}
