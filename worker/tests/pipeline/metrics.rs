//! The worker binary serves Prometheus metrics that move with the work.

use std::process::{Command, Stdio};
use std::time::Duration;

use reviews_db::testing::url_of;

use crate::support::*;

#[tokio::test]
async fn the_worker_serves_metrics_that_count_relays_and_job_runs() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_reviews-worker"))
        .env("DATABASE_URL", url_of(&p.database.config))
        .env(redis_env(&p).0, redis_env(&p).1)
        .env("REDIS_PREFIX", &p.prefix)
        .env("OUTBOX_POLL_INTERVAL", "200ms")
        .env("WORKER_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KilledOnDrop(child);
    p.add_reviews(product, authors("r", 3)).await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    // Let one slow poll sample the gauges.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
