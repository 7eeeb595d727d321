//! The doorbell: writers ring while a relay sleeps and never wait for anyone; a relay never
//! sleeps past a writer's rows it has not seen (db/migrations/0013).

use std::time::{Duration, Instant};

use reviews_db::doorbell::{try_to_sleep, wake, SleepAttempt};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::support::*;

/// The `outbox` notifications a `listening` connection hears within `wait`.
async fn rings_within(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    wait: Duration,
) -> usize {
    let mut rings = 0;
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        rings += 1;
    }
    rings
}

/// A session standing in for a relay: it tries to sleep and wakes, as the worker's does on
/// its listener connection.
struct RelaySession(reviews_db::Sql<Client>);

impl RelaySession {
    async fn open(p: &TestPipeline) -> Self {
        RelaySession(reviews_db::Sql::new(p.client().await, Default::default()))
    }

    /// Tries to sleep, failing the test if that takes more than a moment (it never waits).
    async fn try_to_sleep(&self) -> SleepAttempt {
        tokio::time::timeout(Duration::from_secs(1), try_to_sleep(&self.0))
            .await
            .expect("trying to sleep never waits")
            .unwrap()
    }

    async fn wake(&self) {
        wake(&self.0).await.unwrap();
    }
}

fn insert_review(product: Uuid, author: &str) -> String {
    format!(
        "insert into reviews (product_id, author_id, rating, title, body) values ('{product}', '{author}', 4, 't', 'b')"
    )
}

#[tokio::test]
async fn writers_ring_while_a_relay_sleeps_and_not_while_it_is_awake() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let (_listener, mut rings) = p.listening("outbox").await;
    let relay = RelaySession::open(&p).await;

    // Nobody sleeps: nobody rings.
    p.add_reviews(product, authors("a", 3)).await;
    assert_eq!(
        rings_within(&mut rings, Duration::from_millis(300)).await,
        0
    );

    // Asleep: every writer transaction rings (one NOTIFY per transaction, however many rows).
    assert_eq!(relay.try_to_sleep().await, SleepAttempt::Asleep);
    p.add_reviews(product, authors("b", 3)).await;
    p.sql(&format!(
        "begin; {}; {}; commit;",
        insert_review(product, "c-0"),
        insert_review(product, "c-1")
    ))
    .await;
    assert_eq!(
        rings_within(&mut rings, Duration::from_millis(300)).await,
        4
    );

    // Awake again: silence.
    relay.wake().await;
    p.add_reviews(product, authors("d", 3)).await;
    assert_eq!(
        rings_within(&mut rings, Duration::from_millis(300)).await,
        0
    );
}

/// The race the lock closes: a writer that found the relay awake and has not committed would
/// neither ring nor be seen by the relay's last look. The relay cannot sleep until it ends,
/// and learns so at once instead of waiting.
#[tokio::test]
async fn a_relay_cannot_sleep_before_an_open_writer_ends_and_does_not_wait_for_it() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let relay = RelaySession::open(&p).await;

    let mut writer = p.client().await;
    let tx = writer.transaction().await.unwrap();
    tx.batch_execute(&insert_review(product, "late"))
        .await
        .unwrap();
    assert_eq!(relay.try_to_sleep().await, SleepAttempt::WriterInFlight);
    tx.commit().await.unwrap();

    assert_eq!(relay.try_to_sleep().await, SleepAttempt::Asleep);
    // What the relay's look after falling asleep sees: the late writer's event.
    assert_eq!(
        p.count("select count(*) from outbox_pending p join outbox o on o.id = p.id join reviews r on r.id = o.review_id where r.author_id = 'late'")
            .await,
        1
    );
    // A second relay sees that one sleeping, and sleeps without the lock.
    let other = RelaySession::open(&p).await;
    assert_eq!(other.try_to_sleep().await, SleepAttempt::AnotherRelaySleeps);
}

/// One open transaction that wrote a review (a bulk import, a forgotten psql session) must not
/// hold back any other writer, whether the relay was asleep or awake when it wrote.
#[tokio::test]
async fn an_open_review_transaction_holds_back_no_other_writer() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let relay = RelaySession::open(&p).await;
    for relay_asleep in [false, true] {
        if relay_asleep {
            assert_eq!(relay.try_to_sleep().await, SleepAttempt::Asleep);
        }
        let mut long = p.client().await;
        let tx = long.transaction().await.unwrap();
        tx.batch_execute(&insert_review(product, &format!("long-{relay_asleep}")))
            .await
            .unwrap();
        // While it stays open: other writers, the relay trying to sleep (and, asleep, waking
        // and trying again) each finish at once.
        let writer = p.client().await;
        writer
            .batch_execute("set statement_timeout = '1s'")
            .await
            .unwrap();
        for i in 0..3 {
            let started = Instant::now();
            writer
                .batch_execute(&insert_review(
                    product,
                    &format!("other-{relay_asleep}-{i}"),
                ))
                .await
                .expect("another writer is not held back");
            assert!(started.elapsed() < Duration::from_secs(1));
        }
        relay.wake().await;
        let attempt = relay.try_to_sleep().await;
        assert_eq!(
            attempt,
            if relay_asleep {
                // It found the relay asleep and took no lock: the relay may sleep again.
                SleepAttempt::Asleep
            } else {
                SleepAttempt::WriterInFlight
            }
        );
        relay.wake().await;
        tx.commit().await.unwrap();
    }
    assert_eq!(p.count("select count(*) from reviews").await, 8);
}

/// A REPEATABLE READ or SERIALIZABLE writer whose snapshot is older than the relay's sleep
/// still rings (the lock is not read from a snapshot), and never fails because of the bell.
#[tokio::test]
async fn repeatable_read_and_serializable_writers_ring_and_never_fail_because_of_the_bell() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let (_listener, mut rings) = p.listening("outbox").await;
    let relay = RelaySession::open(&p).await;
    for isolation in ["repeatable read", "serializable"] {
        // Two writers take their snapshots while the relay is awake…
        let first = p.client().await;
        let second = p.client().await;
        for writer in [&first, &second] {
            // The snapshot is taken by the first statement.
            writer
                .batch_execute(&format!("begin isolation level {isolation}; select 1"))
                .await
                .unwrap();
        }
        // …the relay falls asleep, then both write and commit.
        assert_eq!(relay.try_to_sleep().await, SleepAttempt::Asleep);
        for (writer, name) in [(&first, "x"), (&second, "y")] {
            writer
                .batch_execute(&format!(
                    "{}; commit",
                    insert_review(product, &format!("{isolation}-{name}"))
                ))
                .await
                .unwrap_or_else(|e| panic!("a {isolation} writer failed: {e:?}"));
        }
        assert_eq!(
            rings_within(&mut rings, Duration::from_millis(300)).await,
            2,
            "{isolation} writers ring"
        );
        relay.wake().await;
    }
}

/// Settings whose slow poll cannot hide a missing bell within the tests' bounds.
fn slow_poll(p: &TestPipeline) -> reviews_worker::config::WorkerArgs {
    let mut args = p.args();
    args.tuning.poll_interval = Duration::from_secs(30);
    args
}

async fn notified_within(p: &TestPipeline, author: &str, limit: Duration) {
    let started = Instant::now();
    let sql = format!(
        "select count(*) from notifications n join reviews r on r.id = n.review_id where r.author_id = '{author}'"
    );
    while p.count(&sql).await == 0 {
        assert!(
            started.elapsed() < limit,
            "{author}'s review had no effect within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn with_a_worker_running_an_open_review_transaction_holds_back_no_writer_and_events_flow() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let worker = p
        .start_worker_with(slow_poll(&p), reviews_worker::jobs::JobRegistry::standard())
        .await;
    p.add_reviews(product, authors("warm", 1)).await;
    p.wait_until_idle(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut long = p.client().await;
    let tx = long.transaction().await.unwrap();
    tx.batch_execute(&insert_review(product, "long"))
        .await
        .unwrap();
    let writer = p.client().await;
    writer
        .batch_execute("set statement_timeout = '2s'")
        .await
        .unwrap();
    for i in 0..3 {
        let author = format!("other-{i}");
        writer
            .batch_execute(&insert_review(product, &author))
            .await
            .unwrap_or_else(|e| panic!("writer {i} was held back by the open one: {e:?}"));
        // Relayed and run while the long transaction stays open, well before the slow poll.
        notified_within(&p, &author, Duration::from_secs(3)).await;
    }
    tx.commit().await.unwrap();
    notified_within(&p, "long", Duration::from_secs(3)).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_repeatable_read_writer_whose_snapshot_predates_the_workers_sleep_commits_and_wakes_it() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let worker = p
        .start_worker_with(slow_poll(&p), reviews_worker::jobs::JobRegistry::standard())
        .await;
    p.wait_until_idle(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let rr = p.client().await;
    rr.batch_execute("begin isolation level repeatable read; select 1")
        .await
        .unwrap();
    // Another writer wakes the worker; it works and falls asleep again after the snapshot.
    p.add_reviews(product, authors("between", 1)).await;
    p.wait_until_idle(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    rr.batch_execute(&format!("{}; commit", insert_review(product, "rr")))
        .await
        .unwrap_or_else(|e| panic!("the REPEATABLE READ writer failed: {e:?}"));
    notified_within(&p, "rr", Duration::from_secs(3)).await;
    worker.stop().await;
}

/// Whether `pid` holds an exclusive advisory lock (for these tests: "relay asleep").
async fn asleep_on(p: &TestPipeline, pid: i32) -> bool {
    p.count(&format!(
        "select count(*) from pg_locks
         where locktype = 'advisory' and mode = 'ExclusiveLock' and granted and pid = {pid}"
    ))
    .await
        == 1
}

#[tokio::test]
async fn a_woken_relay_looks_without_waiting_for_its_wake_to_be_answered() {
    use reviews_db::Bookkeeping;
    use reviews_worker::doorbell::{Doorbell, ListenerConnection};
    use reviews_worker::jobs::JobRegistry;
    use reviews_worker::listener::Bells;
    use reviews_worker::relay::{statements_for, Linger, Relay};

    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    // The relay sleeps on a connection this test shares with it, as the listener's.
    let listener = std::sync::Arc::new(p.client().await);
    let pid: i32 = listener
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let connection = ListenerConnection::default();
    connection.set(0, listener.clone());
    let bells = Bells::default();
    let relay = Relay {
        db: p.db.clone(),
        queue: std::sync::Arc::new(p.queue()),
        doorbell: Doorbell::new(p.db.clone(), connection),
        bells: bells.clone(),
        poll_interval: Duration::from_secs(600),
        statements: statements_for(
            &JobRegistry::standard(),
            100,
            Duration::ZERO,
            Bookkeeping::Synchronous,
        ),
        delayed_bell: Default::default(),
        hand_off: None,
        linger: Linger::OFF,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !asleep_on(&p, pid).await {
        assert!(Instant::now() < deadline, "the relay did not fall asleep");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The listener's connection is busy for 5 s: the wake (its unlock) waits behind that.
    let busy = {
        let listener = listener.clone();
        tokio::spawn(async move {
            listener.batch_execute("select pg_sleep(5)").await.unwrap();
        })
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    while p
        .count(&format!(
            "select count(*) from pg_stat_activity
             where pid = {pid} and state = 'active' and query like '%pg_sleep%'"
        ))
        .await
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the listener's connection is not busy"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.add_reviews(product, authors("bell", 1)).await;
    bells.outbox.notify_one();
    while p.count("select count(*) from outbox_pending").await > 0 {
        assert!(
            !busy.is_finished(),
            "the event waited for the wake's answer on the listener's connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!busy.is_finished());
    busy.await.unwrap();
    stop.cancel();
    running.await.unwrap();
}
