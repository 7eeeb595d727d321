//! Faults the worker must survive without losing or doubling an effect.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use reviews_db::testing::url_of;
use reviews_worker::jobs::ledger::FileLedger;
use reviews_worker::jobs::JobRegistry;

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

    let ledger_file = std::env::temp_dir().join(format!("{}-runs", p.prefix));
    let child = Command::new(env!("CARGO_BIN_EXE_reviews-worker"))
        .env("JOB_RUN_LEDGER", &ledger_file)
        .env("DATABASE_URL", url_of(&p.database.config))
        .env(redis_env(&p).0, redis_env(&p).1)
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
    let mut runs = FileLedger::read(&ledger_file).unwrap();
    let _ = std::fs::remove_file(&ledger_file);
    let killed_runs = runs.len();
    runs.extend(worker.ledger.runs());
    worker.stop().await;

    assert!(
        taken_back >= in_flight as u64,
        "took back {taken_back} of {in_flight} jobs"
    );
    // The killed worker had started every job in flight; each ran again, once, and no
    // other ran twice.
    assert!(
        killed_runs >= in_flight as usize,
        "{killed_runs} runs before the kill"
    );
    let duplicates = p.notify_duplicates(&runs, 20).await;
    assert!(
        duplicates <= 20,
        "{duplicates} duplicate notify runs (at most every event once more)"
    );
    let mut per_job: HashMap<i64, usize> = HashMap::new();
    for run in &runs {
        *per_job.entry(run.job_id).or_default() += 1;
    }
    assert!(
        per_job.values().all(|&n| n <= 2),
        "a job ran more than twice: {per_job:?}"
    );
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
    let runs = worker.ledger.runs();
    worker.stop().await;

    // Redis forgetting re-enqueues jobs; a job that ran and was forgotten before its
    // acknowledgement may run again, but never a finished one.
    let duplicates = p.notify_duplicates(&runs, 2000).await;
    let finished_twice = runs.iter().filter(|run| run.attempt > 1).count();
    assert!(
        duplicates <= finished_twice * 200,
        "{duplicates} duplicate notify runs, only {finished_twice} reruns"
    );
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
    // Holding nothing now, the dead worker's consumer is forgotten after three leases.
    let forgotten_within = Instant::now() + Duration::from_secs(10);
    loop {
        let consumers = worker.worker.queue.consumers().await.unwrap();
        if !consumers.iter().any(|(name, _)| name == "dead-worker") {
            break;
        }
        assert!(
            Instant::now() < forgotten_within,
            "the dead worker's consumer is still in the group: {consumers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// Commits one review every `every` until `stop`, on its own connection.
fn steady_writer(
    p: &TestPipeline,
    product: uuid::Uuid,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<usize> {
    let config = p.database.config.clone();
    tokio::spawn(async move {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let mut written = 0;
        let mut tick = tokio::time::interval(every);
        while !stop.is_cancelled() {
            tick.tick().await;
            client
                .execute(
                    "insert into reviews (product_id, author_id, rating, title, body) values ($1, $2, 3, 't', 'b')",
                    &[&product, &format!("steady-{}", uuid::Uuid::new_v4())],
                )
                .await
                .unwrap();
            written += 1;
        }
        written
    })
}

async fn idle_within(p: &TestPipeline, limit: Duration, what: &str) {
    let started = std::time::Instant::now();
    loop {
        let pending = p
            .count(
                "select (select count(*) from outbox_pending)
                      + (select count(*) from jobs where status = 'pending')",
            )
            .await;
        if pending == 0 {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: {pending} events or jobs still pending after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn after_redis_restarts_empty_under_a_running_worker_it_recovers_by_itself() {
    let mut redis = PrivateRedis::start().await;
    let p = TestPipeline::with_redis(&redis.url()).await;
    let product = p.create_product("owner").await;
    let worker = p.start_worker().await;
    p.add_reviews(product, authors("before", 20)).await;
    idle_within(&p, Duration::from_secs(10), "before the restart").await;

    redis.kill();
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = steady_writer(&p, product, Duration::from_millis(100), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart().await;
    // Steady writes through the restart and after it; the worker is never restarted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let written = writer.await.unwrap();
    idle_within(&p, Duration::from_secs(15), "after Redis came back empty").await;
    let runs = worker.ledger.runs();
    worker.stop().await;
    let duplicates = p.notify_duplicates(&runs, 20 + written as i64).await;
    assert!(duplicates <= 20, "{duplicates} duplicate notify runs");
    p.assert_ratings_match_reviews().await;
}

#[tokio::test]
async fn after_redis_pauses_the_worker_recovers_by_itself_once_it_answers() {
    let redis = PrivateRedis::start().await;
    let p = TestPipeline::with_redis(&redis.url()).await;
    let product = p.create_product("owner").await;
    let worker = p.start_worker().await;
    p.add_reviews(product, authors("before", 5)).await;
    idle_within(&p, Duration::from_secs(10), "before the pause").await;

    redis.signal("STOP");
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = steady_writer(&p, product, Duration::from_millis(100), stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.signal("CONT");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    let written = writer.await.unwrap();
    idle_within(&p, Duration::from_secs(15), "after Redis resumed").await;
    let runs = worker.ledger.runs();
    worker.stop().await;
    let duplicates = p.notify_duplicates(&runs, 5 + written as i64).await;
    assert!(duplicates <= 10, "{duplicates} duplicate notify runs");
    p.assert_ratings_match_reviews().await;
}

/// Reconciliation runs on its own cadence: a job Redis never held (forgotten, or lost between
/// commit and enqueue) runs soon even while reviews keep ringing the doorbell.
#[tokio::test]
async fn a_job_redis_forgot_runs_within_seconds_under_steady_writes() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let registry = JobRegistry::standard().with("test.forgotten", {
        let ran = ran.clone();
        move |_| {
            ran.store(true, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
    });
    let worker = p.start_worker_with(p.args(), registry).await;
    let stop = tokio_util::sync::CancellationToken::new();
    // A review every 100 ms: more often than the poll interval (200 ms in these tests).
    let writer = steady_writer(&p, product, Duration::from_millis(100), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Pending in Postgres, unknown to Redis.
    p.sql("insert into jobs (kind) values ('test.forgotten')")
        .await;
    let started = std::time::Instant::now();
    while !ran.load(Ordering::SeqCst) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the forgotten job did not run within 5 s of steady writes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    writer.await.unwrap();
    worker.stop().await;
}

/// A job whose handler runs when the worker is told to stop, and outlives the grace, is
/// stopped before it is handed back, whether the worker read it or took it back from a dead
/// worker: never handed back (its attempt given back, its entry queued again) while it runs.
#[tokio::test]
async fn a_shutdown_stops_a_taken_back_job_before_handing_it_back() {
    let p = TestPipeline::new().await;
    let (running, finished) = (
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let registry = JobRegistry::standard().with("test.slow", {
        let (running, finished) = (running.clone(), finished.clone());
        move |_| {
            let (running, finished) = (running.clone(), finished.clone());
            Box::pin(async move {
                running.fetch_add(1, Ordering::SeqCst);
                // Counts the run as ended however it ends: finished or stopped.
                let _ended = OnDrop(move || {
                    running.fetch_sub(1, Ordering::SeqCst);
                });
                tokio::time::sleep(Duration::from_secs(5)).await;
                finished.store(true, Ordering::SeqCst);
                Ok(())
            })
        }
    });
    let job: i64 = p
        .client()
        .await
        .query_one(
            "insert into jobs (kind) values ('test.slow') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    deliver_to_a_dead_worker(&p, job).await;
    let mut args = p.args();
    args.tuning.shutdown_grace = Duration::from_millis(200);
    let worker = p.start_worker_with(args, registry).await;
    // Taken back after the lease (1.5 s), and running.
    let waited = std::time::Instant::now();
    while running.load(Ordering::SeqCst) == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "never taken back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = std::time::Instant::now();
    worker.stop().await;
    // Stopped before the stop returned, not after.
    assert_eq!(running.load(Ordering::SeqCst), 0, "the handler still ran");
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "the stop waited for the job: {:?}",
        stopping.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !finished.load(Ordering::SeqCst),
        "the handler ran on after the stop"
    );
    assert_eq!(
        p.column::<String>(&format!(
            "select status || ' ' || attempts from jobs where id = {job}"
        ))
        .await,
        ["pending 0"],
        "handed back, its attempt given back"
    );
}

/// Puts `job` in the stream as a delivery to a consumer that died holding it.
async fn deliver_to_a_dead_worker(p: &TestPipeline, job: i64) -> String {
    let (stream, known) = (
        format!("{{{}}}:jobs", p.prefix),
        format!("{{{}}}:known", p.prefix),
    );
    let mut redis = p.redis().await;
    let (_, _, _, read): ((), String, i64, redis::streams::StreamReadReply) = redis::pipe()
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
        .query_async(&mut redis)
        .await
        .unwrap();
    read.keys[0].ids[0].id.clone()
}

/// A runner that stalled past its lease (SIGSTOP) and comes back must not take the lease back
/// from the runner that took it over, nor record an outcome for the job.
#[tokio::test]
async fn a_stalled_runner_neither_takes_its_lease_back_nor_records_an_outcome() {
    let p = TestPipeline::new().await;
    let queue = p.queue();
    let job: i64 = p
        .client()
        .await
        .query_one(
            "insert into jobs (kind) values ('test.any') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Runner A read and started the job, then stalled past its lease.
    let entry = deliver_to_a_dead_worker(&p, job).await;
    let conn = p.db.conn().await.unwrap();
    let first = reviews_db::jobs::start_jobs(&conn, &[job], 10)
        .await
        .unwrap();
    // Runner B took the lease over and started the job again.
    let mut cursor = "0-0".to_owned();
    let taken = queue
        .take_back_expired("runner-b", Duration::ZERO, 10, &mut cursor)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    let second = reviews_db::jobs::start_jobs(&conn, &[job], 10)
        .await
        .unwrap();
    assert_eq!(second[0].attempt, 2);

    // A comes back: its heartbeat reports the lease lost and leaves it with B…
    let lost = queue
        .heartbeat("dead-worker", std::slice::from_ref(&entry))
        .await
        .unwrap();
    assert_eq!(lost, std::slice::from_ref(&entry));
    let mut redis = p.redis().await;
    let owner: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
        .arg(format!("{{{}}}:jobs", p.prefix))
        .arg("runners")
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(owner[0].1, "runner-b");
    // …and none of its outcomes is recorded.
    let stale = first[0].fencing();
    assert!(reviews_db::jobs::complete_jobs(&conn, &[stale])
        .await
        .unwrap()
        .is_empty());
    assert!(
        !reviews_db::jobs::schedule_retry(&conn, stale, 1000, "late")
            .await
            .unwrap()
    );
    assert!(!reviews_db::jobs::bury_job(&conn, stale, "late")
        .await
        .unwrap());
    assert!(!reviews_db::jobs::hand_back_job(&conn, stale).await.unwrap());
    let delivery = reviews_worker::queue::Delivery {
        entry_id: entry,
        job_id: job,
    };
    assert!(!queue.hand_back(&delivery, "dead-worker").await.unwrap());
    assert_eq!(
        p.column::<String>(&format!(
            "select status || ' ' || attempts from jobs where id = {job}"
        ))
        .await,
        ["pending 2"]
    );
    // B's outcome is.
    let completed = reviews_db::jobs::complete_jobs(&conn, &[second[0].fencing()])
        .await
        .unwrap();
    assert_eq!(completed, [job]);
    // A heartbeat that B sends while settling (its list made before the acknowledgement)
    // neither renews the settled entry nor calls it lost: nobody took it over.
    queue.finish(&delivery).await.unwrap();
    assert!(queue
        .heartbeat("runner-b", std::slice::from_ref(&delivery.entry_id))
        .await
        .unwrap()
        .is_empty());
}

/// Take-back scans the pending list from where it stopped: an expired lease behind many live
/// ones is reached; an entry that carries no job id is discarded, not claimed forever.
#[tokio::test]
async fn take_back_reaches_expired_leases_behind_live_ones_and_discards_unreadable_entries() {
    let p = TestPipeline::new().await;
    let queue = p.queue();
    queue.ensure_group().await.unwrap();
    let stream = format!("{{{}}}:jobs", p.prefix);
    let mut redis = p.redis().await;
    // 40 entries leased to a live runner, then one unreadable and one expired entry of a
    // dead runner, behind them in the pending list.
    for i in 0..40 {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("job")
            .arg(1000 + i)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("runners")
        .arg("alive")
        .arg("COUNT")
        .arg(40)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("junk")
        .arg("x")
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("job")
        .arg(7)
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("runners")
        .arg("dead")
        .arg("COUNT")
        .arg(2)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut redis)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let lease = Duration::from_millis(200);
    let mut cursor = "0-0".to_owned();
    let mut taken = Vec::new();
    for _ in 0..10 {
        // The live runner's heartbeat keeps its leases fresh.
        let alive: Vec<String> = {
            let pending: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
                .arg(&stream)
                .arg("runners")
                .arg("-")
                .arg("+")
                .arg(100)
                .arg("alive")
                .query_async(&mut redis)
                .await
                .unwrap();
            pending.into_iter().map(|p| p.0).collect()
        };
        queue.heartbeat("alive", &alive).await.unwrap();
        // One free slot, as on a busy runner.
        taken.extend(
            queue
                .take_back_expired("rescuer", lease, 1, &mut cursor)
                .await
                .unwrap(),
        );
    }
    assert_eq!(taken.iter().map(|d| d.job_id).collect::<Vec<_>>(), [7]);
    let pending: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("runners")
        .arg("-")
        .arg("+")
        .arg(100)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        pending.len(),
        41,
        "the unreadable entry is gone from the pending list"
    );
    assert!(pending.iter().all(|p| p.1 != "dead"));
}

#[tokio::test]
async fn a_consumer_is_forgotten_only_once_it_holds_no_delivery() {
    let p = TestPipeline::new().await;
    let queue = p.queue();
    queue.ensure_group().await.unwrap();
    queue.enqueue(&[7]).await.unwrap();
    let mut reader = queue.blocking_connection().await.unwrap();
    let held = queue
        .read(&mut reader, "gone", 1, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        queue
            .forget_departed_consumers(Duration::from_millis(1))
            .await
            .unwrap(),
        0,
        "a consumer holding a delivery stays (deleting it would drop the delivery)"
    );
    let mut cursor = "0-0".to_owned();
    let taken = queue
        .take_back_expired("alive", Duration::from_millis(1), 10, &mut cursor)
        .await
        .unwrap();
    queue.finish_all(&taken).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        queue
            .forget_departed_consumers(Duration::from_secs(60))
            .await
            .unwrap(),
        0,
        "not silent long enough"
    );
    assert_eq!(
        queue
            .forget_departed_consumers(Duration::from_millis(1))
            .await
            .unwrap(),
        2,
        "both hold nothing now"
    );
    assert!(queue.consumers().await.unwrap().is_empty());
}
