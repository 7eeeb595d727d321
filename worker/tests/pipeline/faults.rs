//! Faults the worker must survive without losing or doubling an effect.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use reviews_db::testing::url_of;

use crate::support::*;

#[tokio::test]
async fn a_worker_killed_with_jobs_in_flight_has_them_run_again_after_the_lease_with_effects_once()
{
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;

    // Hold notifications' inserts so notify jobs are in flight when the worker dies.
    let mut blocker = p.client().await;
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("lock table notifications in share mode")
        .await
        .unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_reviews-worker"))
        .env("DATABASE_URL", url_of(&p.database.config))
        .env("REDIS_URL", redis_url())
        .env("REDIS_PREFIX", &p.prefix)
        .env("OUTBOX_POLL_INTERVAL", "200ms")
        .env("JOB_LEASE", "20s")
        .env("JOB_TIMEOUT", "15s")
        .env("WORKER_CONCURRENCY", "8")
        .env("WORKER_METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KilledOnDrop(child);
    p.add_reviews(product, authors("r", 20)).await;

    // Every event relayed, and its notify job (one per relay batch) started, or all eight
    // slots busy.
    let (mut in_flight, mut notify_jobs) = (0, 0);
    for _ in 0..200 {
        let relayed = p.count("select count(*) from outbox_pending").await == 0;
        notify_jobs = p
            .count("select count(*) from jobs where kind = 'notify_owner' and status = 'pending'")
            .await;
        in_flight = p
            .count("select count(*) from jobs where kind = 'notify_owner' and status = 'pending' and attempts = 1")
            .await;
        if relayed && in_flight >= 1 && in_flight == notify_jobs.min(8) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        in_flight >= 1 && in_flight == notify_jobs.min(8),
        "{in_flight} of {notify_jobs} notify jobs in flight"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    lock.rollback().await.unwrap();

    let worker = p.start_worker().await;
    p.wait_until_idle(Duration::from_secs(30)).await;
    let taken_back = worker.worker.stats.taken_back.load(Ordering::Relaxed);
    worker.stop().await;

    assert!(
        taken_back >= in_flight as u64,
        "took back {taken_back} of {in_flight} jobs"
    );
    p.assert_one_notification_per_event(20).await;
    p.assert_ratings_match_reviews().await;
    assert_eq!(p.count("select count(*) from dead_jobs").await, 0);
}

#[tokio::test]
async fn when_redis_forgets_everything_mid_run_every_effect_still_happens_once() {
    let p = TestPipeline::new().await;
    let products = [p.create_product("o1").await, p.create_product("o2").await];
    let worker = p.start_worker().await;
    let writer = {
        let client = p.client().await;
        tokio::spawn(async move {
            let statement = client
                .prepare("insert into reviews (product_id, author_id, rating, title, body) values ($1, $2, $3, 't', 'b')")
                .await
                .unwrap();
            for i in 0..2000 {
                let rating = (i % 5) as i16 + 1;
                client
                    .execute(
                        &statement,
                        &[&products[i % 2], &format!("author-{i}"), &rating],
                    )
                    .await
                    .unwrap();
            }
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        p.forget_redis().await;
    }
    writer.await.unwrap();
    p.forget_redis().await;
    p.wait_until_idle(Duration::from_secs(60)).await;
    worker.stop().await;

    p.assert_one_notification_per_event(2000).await;
    p.assert_ratings_match_reviews().await;
    assert_eq!(p.count("select count(*) from dead_jobs").await, 0);
}

#[tokio::test]
async fn an_idle_worker_takes_back_the_jobs_a_dead_worker_held() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let job: i64 = p
        .client()
        .await
        .query_one(
            "insert into jobs (kind, payload, attempts, last_started_at)
             values ('recompute_rating', jsonb_build_object('product_id', $1::uuid), 1, now())
             returning id",
            &[&product],
        )
        .await
        .unwrap()
        .get(0);
    // A worker that read the job from the queue, started it and died: its delivery sits in
    // that consumer's pending list, and the queue knows the job (so reconciliation leaves
    // it alone).
    let (stream, known) = (
        format!("{{{}}}:jobs", p.prefix),
        format!("{{{}}}:known", p.prefix),
    );
    let mut redis = p.redis().await;
    redis::pipe()
        .cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("runners")
        .arg("$")
        .arg("MKSTREAM")
        .cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("job")
        .arg(job)
        .cmd("SADD")
        .arg(&known)
        .arg(job)
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg("runners")
        .arg("dead-worker")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async::<redis::Value>(&mut redis)
        .await
        .unwrap();

    // Nothing else to do: the new worker's reader blocks on the stream with every slot.
    let worker = p.start_worker().await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    let taken_back = worker.worker.stats.taken_back.load(Ordering::Relaxed);
    worker.stop().await;
    assert_eq!(taken_back, 1);
    assert_eq!(
        p.count(&format!(
            "select attempts::bigint from jobs where id = {job} and status = 'done'"
        ))
        .await,
        2
    );
}
