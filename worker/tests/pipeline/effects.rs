//! Effects in Postgres commit with their job's completion, exactly once; rating summaries are
//! kept by deltas, and the exact recompute (the repair path) agrees with them whatever is
//! on its way.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use reviews_worker::jobs::{JobContext, JobError, JobRegistry};
use reviews_worker::relay::statements_for;

use crate::support::*;

/// Relays what is pending and starts every pending job (attempt 1), as a runner would.
async fn relay_and_start(p: &TestPipeline) -> Vec<reviews_db::jobs::StartedJob> {
    p.relay_pending().await;
    let conn = p.db.conn().await.unwrap();
    let ids: Vec<i64> = p
        .column("select id from jobs where status = 'pending' order by id")
        .await;
    reviews_db::jobs::start_jobs(&conn, &ids, 10).await.unwrap()
}

/// Runs started jobs of `kind` through the standard handlers, with `attempt` for each.
async fn run_as(
    p: &TestPipeline,
    jobs: &[reviews_db::jobs::StartedJob],
    kind: &str,
    attempt: impl Fn(&reviews_db::jobs::StartedJob) -> i32,
) -> Vec<Result<(), reviews_worker::jobs::JobError>> {
    let contexts: Vec<JobContext> = jobs
        .iter()
        .filter(|job| job.kind == kind)
        .map(|job| JobContext {
            db: p.db.clone(),
            job_id: job.id,
            attempt: attempt(job),
            payload: job.payload.clone(),
        })
        .collect();
    JobRegistry::standard()
        .run(kind, p.db.clone(), contexts)
        .await
}

#[tokio::test]
async fn a_run_whose_attempt_was_taken_over_commits_no_effect_and_the_owner_commits_once() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    p.add_reviews(product, authors("a", 3)).await;
    let started = relay_and_start(&p).await;
    assert_eq!(started.len(), 2, "a notify job and a rating job");

    // A runner that stalled: another took its jobs over (attempt 2) before it got to write.
    p.sql("update jobs set attempts = 2").await;
    for kind in ["notify_owner", "recompute_rating"] {
        let results = run_as(&p, &started, kind, |job| job.attempt).await;
        assert!(
            results.iter().all(Result::is_err),
            "{kind}: fenced out: {results:?}"
        );
    }
    assert_eq!(p.count("select count(*) from notifications").await, 0);
    assert_eq!(p.count("select count(*) from product_ratings").await, 0);
    assert_eq!(
        p.count("select count(*) from jobs where status = 'pending'")
            .await,
        2
    );

    // The owner of attempt 2 writes them, with the completion; a second run of the same
    // attempt (a redelivery after a crash that lost the acknowledgement) writes nothing.
    for round in 0..2 {
        for kind in ["notify_owner", "recompute_rating"] {
            let results = run_as(&p, &started, kind, |_| 2).await;
            assert_eq!(
                results.iter().all(Result::is_ok),
                round == 0,
                "{kind}, run {round}: {results:?}"
            );
        }
    }
    assert_eq!(p.count("select count(*) from notifications").await, 3);
    assert_eq!(
        p.count("select count(*) from jobs where status = 'done'")
            .await,
        2
    );
    p.assert_ratings_match_reviews().await;
}

#[tokio::test]
async fn summaries_kept_by_deltas_equal_the_aggregate_after_random_inserts_updates_moves_and_deletes(
) {
    let p = TestPipeline::new().await;
    let products = [
        p.create_product("owner").await,
        p.create_product("owner").await,
        p.create_product("owner").await,
    ];
    let worker = p.start_worker().await;
    let client = p.client().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let mut reviews: Vec<uuid::Uuid> = Vec::new();
    for step in 0..300 {
        let product = products[rng.random_range(0..products.len())];
        let rating = rng.random_range(1..=5i16);
        match (rng.random_range(0..10), reviews.is_empty()) {
            (0..=4, _) | (_, true) => {
                let id: uuid::Uuid = client
                    .query_one(
                        "insert into reviews (product_id, author_id, rating, title, body)
                         values ($1, $2, $3, 't', 'b') returning id",
                        &[&product, &format!("author-{step}"), &rating],
                    )
                    .await
                    .unwrap()
                    .get(0);
                reviews.push(id);
            }
            (5..=6, _) => {
                let id = reviews[rng.random_range(0..reviews.len())];
                client
                    .execute(
                        "update reviews set rating = $2 where id = $1",
                        &[&id, &rating],
                    )
                    .await
                    .unwrap();
            }
            (7, _) => {
                // Moved to another product, with another rating: both products change.
                let id = reviews[rng.random_range(0..reviews.len())];
                client
                    .execute(
                        "update reviews set product_id = $2, rating = $3 where id = $1",
                        &[&id, &product, &rating],
                    )
                    .await
                    .unwrap();
            }
            _ => {
                let id = reviews.swap_remove(rng.random_range(0..reviews.len()));
                client
                    .execute("delete from reviews where id = $1", &[&id])
                    .await
                    .unwrap();
            }
        }
        if step % 50 == 0 {
            // Now and then the repair runs beside the deltas on their way: it must agree.
            p.sql("select recompute_product_rating(id) from products order by id")
                .await;
        }
    }
    p.wait_until_idle(Duration::from_secs(30)).await;
    worker.stop().await;
    p.assert_ratings_match_reviews().await;
    assert!(
        p.count(
            "select count(*) from jobs, rating_job_products(payload) e
             where kind = 'recompute_rating' and e.stars is not null"
        )
        .await
            > 0,
        "the summaries were kept by deltas"
    );
}

#[tokio::test]
async fn replayed_events_and_a_replayed_dead_letter_recompute_instead_of_adding_twice() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    p.add_reviews(product, authors("a", 4)).await;
    let worker = p.start_worker().await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    p.assert_ratings_match_reviews().await;

    // Replayed as scripts/replay-events does: the rating job recomputes.
    p.sql(
        "insert into outbox_pending (id, replayed) select id, true from outbox;
         select pg_notify('outbox', '')",
    )
    .await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    p.assert_ratings_match_reviews().await;
    assert_eq!(
        p.count(
            "select count(*) from jobs, rating_job_products(payload) e
             where kind = 'recompute_rating' and e.recompute"
        )
        .await,
        1
    );

    // A rating job that died: replaying its dead letter recomputes too.
    let done: i64 = p
        .count(
            "select min(id) from jobs
             where kind = 'recompute_rating'
               and not exists (select from rating_job_products(payload) e where e.recompute)",
        )
        .await;
    p.sql(&format!(
        "update jobs set status = 'dead' where id = {done};
         insert into dead_jobs (job_id, kind, payload, attempts, created_at)
         select id, kind, payload, attempts, created_at from jobs where id = {done}"
    ))
    .await;
    let conn = p.db.conn().await.unwrap();
    let letter: i64 = p
        .count(&format!("select id from dead_jobs where job_id = {done}"))
        .await;
    assert!(reviews_db::jobs::replay_dead_job(&conn, letter)
        .await
        .unwrap());
    p.wait_until_idle(Duration::from_secs(20)).await;
    worker.stop().await;
    p.assert_ratings_match_reviews().await;
}

#[tokio::test]
async fn a_held_back_rating_job_handed_back_into_its_waiting_twin_adds_its_deltas_without_a_recompute(
) {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let conn = p.db.conn().await.unwrap();
    // With an interval, the product's summary changed just now: its jobs are held back, one
    // per product, keyed by it (a batch's job has no key and no twin).
    let statements = statements_for(
        &JobRegistry::standard(),
        500,
        Duration::from_secs(3600),
        p.db.bookkeeping(),
    );
    p.sql(&format!("select recompute_product_rating('{product}')"))
        .await;
    let relay = || async {
        reviews_db::outbox::relay_pending_events(&conn, &statements)
            .await
            .unwrap()
    };

    // A held-back rating job, started by a runner (attempt 1) once due...
    p.add_reviews(product, authors("first", 2)).await;
    let first = relay().await;
    let [(held, _)] = first.held_back[..] else {
        panic!("one job held back: {first:?}");
    };
    p.sql(&format!("update jobs set run_at = now() where id = {held}"))
        .await;
    let started = reviews_db::jobs::start_jobs(&conn, &[held], 10)
        .await
        .unwrap();
    assert_eq!(started.len(), 1);
    // ...and, while it runs, newer events: their job waits unstarted beside it.
    p.add_reviews(product, authors("second", 3)).await;
    let second = relay().await;
    assert_eq!(second.events, 3);
    let waiting: Vec<i64> = p
        .column("select id from jobs where kind = 'recompute_rating' and attempts = 0")
        .await;
    assert_eq!(waiting.len(), 1);

    // The started one is handed back (its worker stops): its twin takes its deltas in.
    assert!(reviews_db::jobs::hand_back_job(&conn, started[0].fencing())
        .await
        .unwrap());
    let stars: Vec<String> = p
        .column(&format!(
            "select e.stars::text || ' ' || e.recompute from jobs, rating_job_products(payload) e
             where id = {}",
            waiting[0]
        ))
        .await;
    assert_eq!(stars.len(), 1, "one product: {stars:?}");
    let added = p
        .count(&format!(
            "select sum(v)::int8 from jobs, rating_job_products(payload) e, unnest(e.stars) v
             where id = {}",
            waiting[0]
        ))
        .await;
    assert_eq!(added, 5, "both jobs' deltas: {stars:?}");
    assert!(stars[0].ends_with(" false"), "no recompute: {stars:?}");
    // Due now, as the interval would have made it.
    p.sql(&format!(
        "update jobs set run_at = now() where id = {}",
        waiting[0]
    ))
    .await;

    // Run: the summary counts all five reviews, each once, by deltas alone.
    let worker = p.start_worker().await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    worker.stop().await;
    p.assert_ratings_match_reviews().await;
    assert_eq!(
        p.count(
            "select count(*) from jobs, rating_job_products(payload) e
             where kind = 'recompute_rating' and e.recompute"
        )
        .await,
        0,
        "nothing recomputed"
    );
    assert_eq!(
        p.count(&format!(
            "select review_count::int8 from product_ratings where product_id = '{product}'"
        ))
        .await,
        5
    );
}

#[tokio::test]
async fn rating_jobs_written_before_one_job_per_batch_still_add_their_deltas_or_recompute() {
    let p = TestPipeline::new().await;
    let with_deltas = p.create_product("owner").await;
    let without = p.create_product("owner").await;
    p.add_reviews(with_deltas, authors("a", 3)).await;
    p.add_reviews(without, authors("b", 2)).await;
    // Both summaries are off by one 1-star review before the jobs run: adding deltas keeps
    // that, a recompute does not, so the counts below tell which of the two each job did.
    // Relayed by an older worker: one job per product, its fields at the top of the payload;
    // the second was written before deltas (no stars): it recomputes.
    p.sql(&format!(
        "insert into product_ratings (product_id, review_count, rating_sum, stars_1, stars_2,
                                      stars_3, stars_4, stars_5)
         values ('{with_deltas}', 1, 1, 1, 0, 0, 0, 0), ('{without}', 1, 1, 1, 0, 0, 0, 0);
         delete from outbox_pending;
         insert into jobs (kind, coalesce_key, payload)
         select 'recompute_rating', product_id::text,
                jsonb_build_object('product_id', product_id, 'event_id', null,
                                   'stars', jsonb_build_array(
                                       count(*) filter (where rating = 1),
                                       count(*) filter (where rating = 2),
                                       count(*) filter (where rating = 3),
                                       count(*) filter (where rating = 4),
                                       count(*) filter (where rating = 5)),
                                   'recompute', false)
         from reviews where product_id = '{with_deltas}' group by product_id;
         insert into jobs (kind, coalesce_key, payload)
         values ('recompute_rating', '{without}', jsonb_build_object('product_id', '{without}'::uuid));
         select pg_notify('jobs', '')"
    ))
    .await;
    let worker = p.start_worker().await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    worker.stop().await;
    assert_eq!(
        p.count("select count(*) from jobs where status = 'done'")
            .await,
        2
    );
    let counted: Vec<i64> = p
        .column(&format!(
            "select review_count::int8 from product_ratings
             where product_id in ('{with_deltas}', '{without}')
             order by product_id = '{with_deltas}' desc"
        ))
        .await;
    assert_eq!(
        counted,
        [3 + 1, 2],
        "3 deltas added to one; the other recomputed from its 2 reviews"
    );
}

#[tokio::test]
async fn a_job_written_before_one_job_per_batch_merges_into_a_held_back_twin_by_product() {
    let p = TestPipeline::new().await;
    let merged: Vec<serde_json::Value> = p
        .column(
            "select merge_job_payloads('recompute_rating', old, new)
             from (values
                 ('{\"product_id\": \"00000000-0000-0000-0000-000000000001\",
                    \"stars\": [1, 0, 0, 0, 2], \"recompute\": false}'::jsonb,
                  '{\"products\": [{\"product_id\": \"00000000-0000-0000-0000-000000000001\",
                                    \"stars\": [0, 3, 0, 0, -1], \"recompute\": false}],
                    \"event_id\": \"00000000-0000-0000-0000-00000000000e\"}'::jsonb),
                 ('{\"product_id\": \"00000000-0000-0000-0000-000000000001\"}'::jsonb,
                  '{\"products\": [{\"product_id\": \"00000000-0000-0000-0000-000000000001\",
                                    \"stars\": [0, 3, 0, 0, -1], \"recompute\": false}]}'::jsonb),
                 ('{\"product_id\": \"00000000-0000-0000-0000-000000000001\",
                    \"stars\": [1, 0, 0, 0, 0], \"recompute\": false}'::jsonb,
                  '{\"product_id\": \"00000000-0000-0000-0000-000000000001\",
                    \"stars\": [0, 1, 0, 0, 0], \"recompute\": false}'::jsonb)
             ) as pairs (old, new)",
        )
        .await;
    let one = "00000000-0000-0000-0000-000000000001";
    assert_eq!(
        merged[0],
        serde_json::json!({
            "products": [{"product_id": one, "stars": [1, 3, 0, 0, 1], "recompute": false}],
            "event_id": "00000000-0000-0000-0000-00000000000e",
        }),
        "the deltas summed, in the list form"
    );
    assert_eq!(
        merged[1],
        serde_json::json!({"products": [{"product_id": one, "recompute": true}]}),
        "a job from before deltas makes its twin recompute the product"
    );
    // An older worker's relay merging into its own job (a rolling deploy): the result keeps
    // the product_id that worker needs to read it.
    assert_eq!(
        merged[2],
        serde_json::json!({
            "product_id": one,
            "products": [{"product_id": one, "stars": [1, 1, 0, 0, 0], "recompute": false}],
        })
    );
}

#[tokio::test]
async fn a_rating_job_that_names_no_product_fails_for_good_alone() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    p.add_reviews(product, authors("a", 2)).await;
    let started = relay_and_start(&p).await;
    let good = started
        .iter()
        .find(|job| job.kind == "recompute_rating")
        .expect("a rating job");
    let bad: Vec<i64> = p
        .column(
            "insert into jobs (kind, payload, attempts, last_started_at)
             values ('recompute_rating', '{\"products\": []}', 1, now()),
                    ('recompute_rating', '{\"event_id\": null}', 1, now())
             returning id",
        )
        .await;
    let contexts = [
        (bad[0], "{\"products\": []}"),
        (bad[1], "{\"event_id\": null}"),
    ]
    .into_iter()
    .map(|(id, payload)| JobContext {
        db: p.db.clone(),
        job_id: id,
        attempt: 1,
        payload: serde_json::from_str(payload).unwrap(),
    })
    .chain([JobContext {
        db: p.db.clone(),
        job_id: good.id,
        attempt: good.attempt,
        payload: good.payload.clone(),
    }])
    .collect();
    let results = JobRegistry::standard()
        .run("recompute_rating", p.db.clone(), contexts)
        .await;
    assert_eq!(results.len(), 3);
    for refused in &results[..2] {
        let Err(JobError::Permanent(why)) = refused else {
            panic!("refused for good: {results:?}");
        };
        assert!(why.to_string().contains("names no product"), "{why}");
    }
    assert!(results[2].is_ok(), "{results:?}");
    p.assert_ratings_match_reviews().await;
}

#[tokio::test]
async fn a_notify_job_whose_events_left_the_outbox_fails_for_good_alone() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    p.add_reviews(product, authors("a", 2)).await;
    p.relay_pending().await;
    p.add_reviews(product, authors("b", 2)).await;
    let started = relay_and_start(&p).await;
    let notify: Vec<_> = started
        .iter()
        .filter(|job| job.kind == "notify_owner")
        .collect();
    assert_eq!(notify.len(), 2, "one notify job per batch");
    let gone: i64 = notify[0].payload["outbox_ids"][0].as_i64().unwrap();
    p.sql(&format!("delete from outbox where id = {gone}"))
        .await;

    let results = run_as(&p, &started, "notify_owner", |job| job.attempt).await;
    let Err(JobError::Permanent(why)) = &results[0] else {
        panic!("the first job fails for good: {results:?}");
    };
    assert!(
        why.to_string().contains(&format!("events [{gone}]"))
            && why.to_string().contains("no longer in the outbox"),
        "{why}"
    );
    assert!(results[1].is_ok(), "the other job runs: {results:?}");
    // The other job's two events are notified and it is done; the failed one wrote nothing
    // (its runner buries it) and is still at its attempt.
    assert_eq!(
        p.count(&format!(
            "select count(*) from notifications n
             join outbox o on o.event_id = n.event_id
             where o.id in (select notify_job_outbox_ids(payload) from jobs where id = {})",
            notify[1].id
        ))
        .await,
        2
    );
    assert_eq!(p.count("select count(*) from notifications").await, 2);
    let states: Vec<String> = p
        .column(&format!(
            "select status || ':' || attempts from jobs where id in ({0}, {1}) order by id = {1}",
            notify[0].id, notify[1].id
        ))
        .await;
    assert_eq!(states, ["pending:1", "done:1"]);
}

/// A rating payload as workers from before one job per batch (db/migrations/0018) read it.
#[derive(serde::Deserialize, serde::Serialize)]
struct PayloadBeforeBatches {
    product_id: uuid::Uuid,
    event_id: Option<uuid::Uuid>,
    actor_id: Option<String>,
    request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stars: Option<[i32; 5]>,
    #[serde(default)]
    recompute: bool,
}

#[tokio::test]
async fn a_worker_from_before_batch_jobs_reads_a_batchs_rating_job_and_applies_all_of_it() {
    let p = TestPipeline::new().await;
    for name in ["a", "b", "c"] {
        let product = p.create_product("owner").await;
        p.add_reviews(product, authors(name, 2)).await;
    }
    let started = relay_and_start(&p).await;
    let job = started
        .iter()
        .find(|job| job.kind == "recompute_rating")
        .expect("a rating job");
    assert_eq!(
        started
            .iter()
            .filter(|j| j.kind == "recompute_rating")
            .count(),
        1
    );
    // A rolling deploy: an older worker's runner takes the job. It reads the payload into
    // its type (which needs a product_id) and hands the database what it kept of it.
    let before: PayloadBeforeBatches = serde_json::from_value(job.payload.clone())
        .expect("an older worker reads a batch's rating payload");
    let kept = serde_json::to_value(&before).unwrap();
    assert!(kept.get("products").is_none(), "{kept}");
    let conn = p.db.conn().await.unwrap();
    reviews_db::ratings::apply_rating_jobs(&conn, &[(job.fencing(), kept)])
        .await
        .unwrap();
    // Every product of the batch, from the payload stored with the job.
    assert_eq!(p.count("select count(*) from product_ratings").await, 3);
    p.assert_ratings_match_reviews().await;
}

#[tokio::test]
async fn a_recompute_while_a_batchs_rating_job_is_on_its_way_leaves_its_deltas_to_it() {
    let p = TestPipeline::new().await;
    let (a, b) = (
        p.create_product("owner").await,
        p.create_product("owner").await,
    );
    p.add_reviews(a, authors("a", 2)).await;
    p.add_reviews(b, authors("b", 3)).await;
    let started = relay_and_start(&p).await;
    assert_eq!(
        started
            .iter()
            .filter(|job| job.kind == "recompute_rating")
            .count(),
        1,
        "one job for both products"
    );
    // The repair runs while that job (no coalesce key) is started and not applied: it counts
    // the reviews less the job's deltas.
    p.sql(&format!(
        "select recompute_product_rating('{a}'); select recompute_product_rating('{b}')"
    ))
    .await;
    assert_eq!(
        p.count("select count(*) from product_ratings where review_count = 0")
            .await,
        2,
        "the job's deltas are left to it"
    );
    // It applies them: each review counted once.
    let results = run_as(&p, &started, "recompute_rating", |job| job.attempt).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    p.assert_ratings_match_reviews().await;
}

#[tokio::test]
async fn a_relay_on_a_schema_without_batch_rating_jobs_fails_and_its_events_wait() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    p.add_reviews(product, authors("a", 2)).await;
    // As if the worker started before `migrate` applied 0018.
    p.sql("drop function rating_job_products(jsonb)").await;
    let statements = p.relay_statements(&JobRegistry::standard());
    let conn = p.db.conn().await.unwrap();
    let error = reviews_db::outbox::relay_pending_events(&conn, &statements)
        .await
        .expect_err("the relay needs 0018");
    let error = format!("{:#}", anyhow::Error::from(error));
    assert!(error.contains("rating_job_products"), "{error}");
    assert_eq!(p.count("select count(*) from outbox_pending").await, 2);
    assert_eq!(p.count("select count(*) from jobs").await, 0);
}

#[tokio::test]
async fn the_summaries_a_call_changes_are_announced_together_up_to_200_products_a_notification() {
    let p = TestPipeline::new().await;
    let products: Vec<uuid::Uuid> = p
        .column(
            "insert into products (name, owner_id)
             select 'p', 'owner-' || g from generate_series(1, 250) g returning id",
        )
        .await;
    p.sql(
        "insert into reviews (product_id, author_id, rating, title, body)
         select id, 'author', 4, 't', 'b' from products",
    )
    .await;
    let (listener, mut announced) = p.listening("rating_changed").await;

    let started = relay_and_start(&p).await;
    let results = run_as(&p, &started, "recompute_rating", |job| job.attempt).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let summaries = p
        .count("select count(*) from product_ratings where review_count = 1")
        .await;
    assert_eq!(summaries, 250);

    // Delivered in commit order, after the call's commit; a query after it on the listener's
    // connection comes back after them.
    listener.batch_execute("select 1").await.unwrap();
    let mut payloads = Vec::new();
    while let Ok(payload) = announced.try_recv() {
        payloads.push(payload);
    }
    let mut sizes: Vec<usize> = payloads.iter().map(|p| p.split(',').count()).collect();
    sizes.sort();
    assert_eq!(sizes, [50, 200], "products per notification");
    let mut named: Vec<uuid::Uuid> = payloads
        .iter()
        .flat_map(|p| p.split(','))
        .map(|id| id.parse().unwrap())
        .collect();
    named.sort();
    let mut all = products;
    all.sort();
    assert_eq!(named, all, "every changed product, once");
}
