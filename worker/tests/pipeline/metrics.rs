//! The worker binary serves Prometheus metrics that move with the work.

use std::process::{Command, Stdio};
use std::time::Duration;

use reviews_db::testing::url_of;

use crate::support::*;

/// The worker binary on `p`'s database and queue, serving metrics on `port`, with `settings`
/// in its environment besides.
fn worker_serving_metrics(
    p: &TestPipeline,
    port: u16,
    poll_interval: &str,
    settings: &[(&str, &str)],
) -> KilledOnDrop {
    let child = Command::new(env!("CARGO_BIN_EXE_reviews-worker"))
        .envs(settings.iter().copied())
        .env("DATABASE_URL", url_of(&p.database.config))
        .env(redis_env(p).0, redis_env(p).1)
        .env("REDIS_PREFIX", &p.prefix)
        .env("OUTBOX_POLL_INTERVAL", poll_interval)
        .env("WORKER_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    KilledOnDrop(child)
}

#[tokio::test]
async fn the_worker_serves_metrics_that_count_relays_and_job_runs() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let port = free_port();
    let mut child = worker_serving_metrics(&p, port, "200ms", &[]);
    p.add_reviews(product, authors("r", 3)).await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    // Let one slow poll sample the gauges.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = metrics_body(port).await;
    child.kill().unwrap();
    child.wait().unwrap();

    // One notify job per relay batch: the three events came in one, two or three.
    let notify_jobs = p
        .count("select count(*) from jobs where kind = 'notify_owner' and status = 'done'")
        .await;
    assert!((1..=3).contains(&notify_jobs), "{notify_jobs} notify jobs");
    let runs =
        format!("job_runs_total{{kind=\"notify_owner\",outcome=\"succeeded\"}} {notify_jobs}");
    let end_to_end = format!("job_end_to_end_seconds_count{{kind=\"notify_owner\"}} {notify_jobs}");
    for expected in [
        "relay_events_total 3",
        &runs,
        "job_attempts_total{kind=\"recompute_rating\"}",
        "job_duration_seconds_bucket{kind=\"notify_owner\"",
        &end_to_end,
        "outbox_pending_events 0",
        "queue_stream_entries 0",
    ] {
        assert!(
            body.contains(expected),
            "metrics lack {expected:?}:\n{body}"
        );
    }
}

/// The worker's /metrics page.
async fn metrics_body(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A counter from the worker's /metrics (0 before its first increment).
async fn counter(port: u16, name: &str) -> f64 {
    metrics_body(port)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |value| value.parse().unwrap())
}

/// Waits until the worker serves its metrics.
async fn wait_for_metrics(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "no metrics served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (20 s at most) until the worker's counter `name` reaches `at_least`.
async fn wait_for_counter(port: u16, name: &str, at_least: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while counter(port, name).await < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed below {at_least} for 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the worker's relay has gone to sleep on the doorbell `sleeps` times in all.
async fn wait_for_sleeps(port: u16, sleeps: f64) {
    wait_for_counter(port, "relay_sleeps_total", sleeps).await;
}

#[tokio::test]
async fn a_bell_costs_the_relay_one_look_that_finds_the_events_and_one_once_asleep() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let port = free_port();
    // No slow poll within the test: every look after start-up follows the bell.
    let mut child = worker_serving_metrics(&p, port, "10min", &[]);
    wait_for_metrics(port).await;
    // Started up: it found nothing and sleeps.
    wait_for_sleeps(port, 1.0).await;
    // The listener's first connection rings once, which may come after that first sleep:
    // wait until the relay has slept through 300 ms.
    loop {
        let sleeps = counter(port, "relay_sleeps_total").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if counter(port, "relay_sleeps_total").await == sleeps {
            break;
        }
    }
    let looks = counter(port, "relay_looks_total").await;
    let found_nothing = counter(port, "relay_looks_found_nothing_total").await;
    let sleeps = counter(port, "relay_sleeps_total").await;

    // One writer transaction, three events: one bell.
    p.sql(&format!(
        "insert into reviews (product_id, author_id, rating, title, body)
         values ('{product}', 'a', 5, 't', 'b'), ('{product}', 'b', 4, 't', 'b'),
                ('{product}', 'c', 3, 't', 'b')"
    ))
    .await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    wait_for_sleeps(port, sleeps + 1.0).await;

    // The look that relays the three finds fewer than a batch: the outbox is empty, so the
    // relay tries to sleep at once, and asleep looks once more (nothing), as it must.
    assert_eq!(counter(port, "relay_events_total").await, 3.0);
    assert_eq!(counter(port, "relay_looks_total").await - looks, 2.0);
    assert_eq!(
        counter(port, "relay_looks_found_nothing_total").await - found_nothing,
        1.0
    );
    assert_eq!(counter(port, "relay_sleeps_total").await, sleeps + 1.0);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A writer in flight for as long as the returned client lives, as the outbox trigger marks
/// one (a shared hold on "relay asleep"): the relay cannot sleep, so it keeps looking. The
/// hold waits while the relay sleeps, and is granted when the bell of a first review on
/// `product` wakes it.
async fn writer_in_flight_from_the_first_review(
    p: &TestPipeline,
    product: uuid::Uuid,
) -> tokio_postgres::Client {
    let in_flight = p.client().await;
    let held = tokio::spawn(async move {
        in_flight
            .execute(
                "select pg_advisory_lock_shared($1)",
                &[&reviews_db::locks::RELAY_ASLEEP],
            )
            .await
            .unwrap();
        in_flight
    });
    p.add_reviews(product, authors("first", 1)).await;
    tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the relay woke to the bell")
        .unwrap()
}

/// Inserts `n` reviews on `product`, each committed on its own, 10 ms apart.
async fn reviews_one_by_one(p: &TestPipeline, product: uuid::Uuid, n: usize) {
    let writer = p.client().await;
    for i in 0..n {
        writer
            .execute(
                "insert into reviews (product_id, author_id, rating, title, body)
                 values ($1, $2, 5, 't', 'b')",
                &[&product, &format!("load-{i}")],
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn under_load_the_relay_lingers_and_each_look_gathers_several_commits() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let port = free_port();
    // It lingers 1 s while events come faster than 1/s (here: one every 10-odd ms).
    let settings = [("RELAY_LINGER", "1s"), ("RELAY_LINGER_ABOVE", "1")];
    let mut child = worker_serving_metrics(&p, port, "10min", &settings);
    wait_for_metrics(port).await;
    wait_for_sleeps(port, 1.0).await;

    let in_flight = writer_in_flight_from_the_first_review(&p, product).await;
    wait_for_counter(port, "relay_events_total", 1.0).await;
    let looks = counter(port, "relay_looks_total").await;
    let found_nothing = counter(port, "relay_looks_found_nothing_total").await;
    let events = counter(port, "relay_events_total").await;
    let sleeps = counter(port, "relay_sleeps_total").await;

    reviews_one_by_one(&p, product, 60).await;
    // Every event relayed, while the writer is still in flight.
    wait_for_counter(port, "relay_events_total", events + 60.0).await;
    let looks_with_events = (counter(port, "relay_looks_total").await - looks)
        - (counter(port, "relay_looks_found_nothing_total").await - found_nothing);
    let relayed = counter(port, "relay_events_total").await - events;
    assert_eq!(
        counter(port, "relay_sleeps_total").await,
        sleeps,
        "the relay slept: no writer was in flight"
    );
    // Looking again at the timer's next tick, as it does without lingering, it finds each
    // commit in a look of its own. Lingering 1 s gathers many.
    let per_look = relayed / looks_with_events;
    assert!(
        per_look >= 5.0,
        "{relayed} events in {looks_with_events} looks: {per_look:.1} a look"
    );
    drop(in_flight);
    p.wait_until_idle(Duration::from_secs(20)).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn while_it_lingers_the_relay_does_not_try_to_sleep() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let port = free_port();
    // It lingers 700 ms while events come faster than 1/s (here: one every 10-odd ms): only
    // a writer stalled that long would end the linger before the load does.
    let settings = [("RELAY_LINGER", "700ms"), ("RELAY_LINGER_ABOVE", "1")];
    let mut child = worker_serving_metrics(&p, port, "10min", &settings);
    wait_for_metrics(port).await;
    wait_for_sleeps(port, 1.0).await;
    // With a writer always in flight, every try to sleep fails: a relay that tried after
    // each look would count a try per look.
    let in_flight = writer_in_flight_from_the_first_review(&p, product).await;
    // It lingers from its first window of 20 ms with events (its first look's); 30 events
    // in, it has lingered at least once.
    let lingering = async {
        wait_for_counter(port, "relay_events_total", 31.0).await;
        (
            counter(port, "relay_sleep_tries_total").await,
            counter(port, "relay_looks_total").await,
            counter(port, "relay_sleeps_total").await,
        )
    };
    let ((), (tries, looks, sleeps)) =
        tokio::join!(reviews_one_by_one(&p, product, 150), lingering);
    // Read as the last events are relayed: the next look, 700 ms later, finds nothing, and
    // only then does the relay stop lingering (and try to sleep again).
    wait_for_counter(port, "relay_events_total", 151.0).await;
    let tries_after = counter(port, "relay_sleep_tries_total").await;
    let looks_after = counter(port, "relay_looks_total").await;
    assert!(
        looks_after - looks >= 2.0,
        "the load lasted 1.5 s: {} looks",
        looks_after - looks
    );
    assert_eq!(
        tries_after - tries,
        0.0,
        "tries to sleep in {} looks while lingering",
        looks_after - looks
    );
    assert_eq!(counter(port, "relay_sleeps_total").await, sleeps);
    assert!(tries > 0.0, "the relay tried to sleep before the load");
    drop(in_flight);
    p.wait_until_idle(Duration::from_secs(20)).await;
    child.kill().unwrap();
    child.wait().unwrap();
}
