//! Retries on the table's schedule, dead letters, replay, live policy changes, panics and
//! timeouts.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reviews_worker::jobs::{JobError, JobRegistry};

use crate::support::*;

async fn insert_job(p: &TestPipeline, kind: &str) -> i64 {
    p.client()
        .await
        .query_one("insert into jobs (kind) values ($1) returning id", &[&kind])
        .await
        .unwrap()
        .get(0)
}

async fn set_policy(
    p: &TestPipeline,
    kind: &str,
    max_attempts: i32,
    base_ms: i64,
    multiplier: f64,
    max_ms: i64,
) {
    p.client()
        .await
        .execute(
            "insert into retry_policies (kind, max_attempts, base_delay_ms, multiplier, max_delay_ms, jitter)
             values ($1, $2, $3, $4, $5, 0)
             on conflict (kind) do update set max_attempts = excluded.max_attempts,
                 base_delay_ms = excluded.base_delay_ms, multiplier = excluded.multiplier,
                 max_delay_ms = excluded.max_delay_ms, jitter = 0, updated_at = now()",
            &[&kind, &max_attempts, &base_ms, &multiplier, &max_ms],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_job_that_always_fails_retries_on_schedule_then_is_one_dead_letter_and_replay_runs_it_again(
) {
    let p = TestPipeline::new().await;
    set_policy(&p, "test.flaky", 4, 100, 2.0, 300).await;
    let attempts_at: Shared<Vec<Instant>> = Arc::default();
    let fixed = Arc::new(AtomicBool::new(false));
    let handlers = JobRegistry::standard().with("test.flaky", {
        let attempts_at = attempts_at.clone();
        let fixed = fixed.clone();
        move |_| {
            attempts_at.lock().unwrap().push(Instant::now());
            let fixed = fixed.load(Ordering::SeqCst);
            Box::pin(async move {
                if fixed {
                    Ok(())
                } else {
                    Err(JobError::Retryable(anyhow::anyhow!(
                        "the remote end said no"
                    )))
                }
            })
        }
    });
    let worker = p.start_worker_with(p.args(), handlers).await;
    let id = insert_job(&p, "test.flaky").await;
    worker.worker.queue.enqueue(&[id]).await.unwrap();
    p.wait_until_idle(Duration::from_secs(20)).await;

    let row = p
        .client()
        .await
        .query_one(
            "select status, attempts, last_error from jobs where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "dead");
    assert_eq!(row.get::<_, i32>(1), 4);
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("the remote end said no")
    );
    assert_eq!(p.count("select count(*) from dead_jobs").await, 1);

    // Delays before attempts 2, 3, 4: min(300, 100 × 2^(n−1)) = 100, 200, 300 ms.
    let times = attempts_at.lock().unwrap().clone();
    assert_eq!(times.len(), 4);
    for (gap, nominal) in times
        .windows(2)
        .map(|w| w[1] - w[0])
        .zip([100u64, 200, 300])
    {
        let nominal = Duration::from_millis(nominal);
        assert!(
            gap >= nominal,
            "retried after {gap:?}, before the scheduled {nominal:?}"
        );
        assert!(
            gap < nominal + Duration::from_millis(400),
            "retried after {gap:?}, long after {nominal:?}"
        );
    }

    // Replay once the cause is fixed: the job runs again and succeeds; a second replay is a no-op.
    fixed.store(true, Ordering::SeqCst);
    let dead_id: i64 = p
        .client()
        .await
        .query_one("select id from dead_jobs", &[])
        .await
        .unwrap()
        .get(0);
    let conn = p.db.conn().await.unwrap();
    assert!(reviews_db::jobs::replay_dead_job(&conn, dead_id)
        .await
        .unwrap());
    assert!(!reviews_db::jobs::replay_dead_job(&conn, dead_id)
        .await
        .unwrap());
    p.wait_until_idle(Duration::from_secs(10)).await;
    worker.stop().await;
    assert_eq!(
        p.count("select count(*) from jobs where status = 'done' and attempts = 1")
            .await,
        1
    );
    assert_eq!(attempts_at.lock().unwrap().len(), 5);
}

#[tokio::test]
async fn a_retry_policy_changed_in_the_table_applies_to_the_next_failure_without_a_restart() {
    let p = TestPipeline::new().await;
    set_policy(&p, "test.fails", 2, 50, 1.0, 50).await;
    let runs = Arc::new(AtomicU32::new(0));
    let handlers = JobRegistry::standard().with("test.fails", {
        let runs = runs.clone();
        move |_| {
            runs.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err(JobError::Retryable(anyhow::anyhow!("no"))) })
        }
    });
    let worker = p.start_worker_with(p.args(), handlers).await;
    let first = insert_job(&p, "test.fails").await;
    worker.worker.queue.enqueue(&[first]).await.unwrap();
    p.wait_until_idle(Duration::from_secs(10)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    set_policy(&p, "test.fails", 5, 50, 1.0, 50).await;
    let reloaded = async {
        while worker.worker.policies.for_kind("test.fails").max_attempts != 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), reloaded)
        .await
        .expect("policy reloaded");
    let second = insert_job(&p, "test.fails").await;
    worker.worker.queue.enqueue(&[second]).await.unwrap();
    p.wait_until_idle(Duration::from_secs(10)).await;
    worker.stop().await;
    assert_eq!(runs.load(Ordering::SeqCst), 2 + 5);
    assert_eq!(p.count("select count(*) from dead_jobs").await, 2);
}

#[tokio::test]
async fn a_job_that_panics_or_outlives_its_timeout_is_retried_while_other_jobs_keep_flowing() {
    let p = TestPipeline::new().await;
    set_policy(&p, "test.panics_once", 5, 50, 1.0, 50).await;
    set_policy(&p, "test.hangs_once", 5, 50, 1.0, 50).await;
    let panicked = Arc::new(AtomicBool::new(false));
    let hung = Arc::new(AtomicBool::new(false));
    let finished_during_hang: Shared<Vec<Instant>> = Arc::default();
    let hang_ended: Shared<Option<Instant>> = Arc::default();
    let handlers = JobRegistry::standard()
        .with("test.panics_once", {
            let panicked = panicked.clone();
            move |_| {
                let first = !panicked.swap(true, Ordering::SeqCst);
                Box::pin(async move {
                    if first {
                        panic!("a bug in a handler");
                    }
                    Ok(())
                })
            }
        })
        .with("test.hangs_once", {
            let hung = hung.clone();
            let hang_ended = hang_ended.clone();
            move |_| {
                let first = !hung.swap(true, Ordering::SeqCst);
                let hang_ended = hang_ended.clone();
                Box::pin(async move {
                    if first {
                        // Dropped when the timeout aborts the attempt: records when it ended.
                        let _end =
                            OnDrop(move || *hang_ended.lock().unwrap() = Some(Instant::now()));
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    Ok(())
                })
            }
        })
        .with("test.quick", {
            let finished = finished_during_hang.clone();
            move |_| {
                finished.lock().unwrap().push(Instant::now());
                Box::pin(async { Ok(()) })
            }
        });
    let worker = p.start_worker_with(p.args(), handlers).await;
    let mut ids = vec![
        insert_job(&p, "test.panics_once").await,
        insert_job(&p, "test.hangs_once").await,
    ];
    for _ in 0..20 {
        ids.push(insert_job(&p, "test.quick").await);
    }
    worker.worker.queue.enqueue(&ids).await.unwrap();
    p.wait_until_idle(Duration::from_secs(20)).await;
    worker.stop().await;

    assert_eq!(
        p.count("select count(*) from jobs where status = 'done'")
            .await,
        22
    );
    assert_eq!(
        p.count("select count(*) from jobs where attempts = 2")
            .await,
        2
    );
    let errors: Vec<String> = p
        .client()
        .await
        .query(
            "select last_error from jobs where attempts = 2 order by kind",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect();
    assert!(errors[0].contains("timed out"), "{errors:?}");
    assert!(
        errors[1].contains("job panicked: a bug in a handler"),
        "{errors:?}"
    );
    // The quick jobs all finished while the hung one still held its slot.
    let quick = finished_during_hang.lock().unwrap().clone();
    let hang_ended = hang_ended
        .lock()
        .unwrap()
        .expect("the hung attempt was aborted");
    assert_eq!(quick.len(), 20);
    assert!(
        quick.iter().all(|t| *t < hang_ended),
        "quick jobs waited for the hung one"
    );
}

/// A recompute job that started, and a twin the relay added meanwhile (same product, not
/// started yet: the coalescing index allows one such job per product).
async fn started_job_and_waiting_twin(p: &TestPipeline) -> (i64, i64) {
    let rows = p
        .client()
        .await
        .query(
            "insert into jobs (kind, coalesce_key, attempts, last_started_at)
             values ('recompute_rating', 'product-1', 1, now()) returning id",
            &[],
        )
        .await
        .unwrap();
    let started: i64 = rows[0].get(0);
    let twin: i64 = p
        .client()
        .await
        .query_one(
            "insert into jobs (kind, coalesce_key) values ('recompute_rating', 'product-1') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (started, twin)
}

/// Makes job `dead` dead after 10 attempts, with its dead letter; returns the letter's id.
async fn dead_letter_of(p: &TestPipeline, dead: i64) -> i64 {
    p.sql(&format!(
        "update jobs set status = 'dead', attempts = 10, finished_at = now() where id = {dead};
         insert into dead_jobs (job_id, kind, payload, attempts, created_at)
         select id, kind, payload, attempts, created_at from jobs where id = {dead}"
    ))
    .await;
    p.count(&format!("select id from dead_jobs where job_id = {dead}"))
        .await
}

#[tokio::test]
async fn a_coalesced_job_handed_back_or_replayed_while_its_twin_waits_merges_into_the_twin() {
    let p = TestPipeline::new().await;
    let conn = p.db.conn().await.unwrap();
    let state = |id: i64| format!("select status || ' ' || attempts from jobs where id = {id}");

    // Handed back (a worker shutting down) while its twin waits: it would be a second
    // unstarted job for the product, which the coalescing index refuses.
    let (started, twin) = started_job_and_waiting_twin(&p).await;
    let attempt = |job_id| reviews_db::jobs::Attempt { job_id, attempt: 1 };
    assert!(reviews_db::jobs::hand_back_job(&conn, attempt(started))
        .await
        .expect("handing back succeeds"));
    assert_eq!(p.column::<String>(&state(started)).await, ["done 1"]);
    assert_eq!(p.column::<String>(&state(twin)).await, ["pending 0"]);

    // Without a twin, handing back gives the attempt back.
    p.sql("delete from jobs").await;
    let (alone, _) = started_job_and_waiting_twin(&p).await;
    p.sql(&format!("delete from jobs where id <> {alone}"))
        .await;
    assert!(reviews_db::jobs::hand_back_job(&conn, attempt(alone))
        .await
        .unwrap());
    assert_eq!(p.column::<String>(&state(alone)).await, ["pending 0"]);

    // Replayed from its dead letter while a twin waits: merged too, the letter replayed.
    p.sql("delete from jobs").await;
    let (dead, twin) = started_job_and_waiting_twin(&p).await;
    let letter = dead_letter_of(&p, dead).await;
    assert!(reviews_db::jobs::replay_dead_job(&conn, letter)
        .await
        .expect("replaying succeeds"));
    assert_eq!(p.column::<String>(&state(dead)).await, ["done 10"]);
    assert_eq!(p.column::<String>(&state(twin)).await, ["pending 0"]);
    assert_eq!(
        p.count("select count(*) from dead_jobs where replayed_at is not null")
            .await,
        1
    );
}

/// Runs `call` while a relay's insert of a twin (product-1's rating job) is held open,
/// commits the insert once `call` waits for it on a lock, and returns what `call` returned
/// (`what` names the call in failures).
async fn beside_a_twin_being_inserted<T: Send + 'static>(
    p: &TestPipeline,
    what: &str,
    call: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let relay = p.client().await;
    relay
        .batch_execute(
            "begin;
             insert into jobs (kind, coalesce_key) values ('recompute_rating', 'product-1')",
        )
        .await
        .unwrap();
    let call = tokio::spawn(call);
    let waiting = "select count(*) from pg_stat_activity
                   where datname = current_database() and wait_event_type = 'Lock'";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while p.count(waiting).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline && !call.is_finished(),
            "{what} should wait for the insert"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.batch_execute("commit").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| panic!("{what} ends once the insert commits"))
        .unwrap()
}

#[tokio::test]
async fn a_replay_that_meets_a_twin_being_inserted_merges_into_it_once_it_commits() {
    let p = TestPipeline::new().await;
    let state = |id: i64| format!("select status || ' ' || attempts from jobs where id = {id}");
    let (dead, twin) = started_job_and_waiting_twin(&p).await;
    p.sql(&format!("delete from jobs where id = {twin}")).await;
    let letter = dead_letter_of(&p, dead).await;

    // A relay's insert of a twin, not committed yet: the replay cannot see it, and making
    // the job pending again waits for it on the coalescing index.
    let db = p.db.clone();
    let replayed = beside_a_twin_being_inserted(&p, "the replay", async move {
        let conn = db.conn().await.unwrap();
        reviews_db::jobs::replay_dead_job(&conn, letter).await
    })
    .await;
    assert!(replayed.expect("no duplicate-key failure"));
    assert_eq!(p.column::<String>(&state(dead)).await, ["done 10"]);
    let twins: Vec<String> = p
        .column(&format!(
            "select status || ' ' || attempts || ' ' || (payload->>'recompute')
             from jobs where id <> {dead}"
        ))
        .await;
    assert_eq!(
        twins,
        ["pending 0 true"],
        "the twin recomputes for the replay"
    );
    assert_eq!(
        p.count("select count(*) from dead_jobs where replayed_at is not null")
            .await,
        1
    );
}

#[tokio::test]
async fn a_hand_back_that_meets_a_twin_being_inserted_merges_into_it_once_it_commits() {
    let p = TestPipeline::new().await;
    let state = |id: i64| format!("select status || ' ' || attempts from jobs where id = {id}");
    let (started, twin) = started_job_and_waiting_twin(&p).await;
    p.sql(&format!("delete from jobs where id = {twin}")).await;

    // A relay's insert of a twin, not committed yet: the hand-back cannot see it, and giving
    // the attempt back waits for it on the coalescing index.
    let db = p.db.clone();
    let handed_back = beside_a_twin_being_inserted(&p, "the hand-back", async move {
        let conn = db.conn().await.unwrap();
        let attempt = reviews_db::jobs::Attempt {
            job_id: started,
            attempt: 1,
        };
        reviews_db::jobs::hand_back_job(&conn, attempt).await
    })
    .await;
    assert!(handed_back.expect("no duplicate-key failure"));
    assert_eq!(p.column::<String>(&state(started)).await, ["done 1"]);
    let twins: Vec<String> = p
        .column(&format!(
            "select status || ' ' || attempts from jobs where id <> {started}"
        ))
        .await;
    assert_eq!(twins, ["pending 0"]);
}
