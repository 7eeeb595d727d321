//! Figures read back from the database after a run: latencies on the database's own clock,
//! waiting for the worker, claim cost.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

/// p50, p95, p99 and max of a set of milliseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn percentiles(mut values: Vec<f64>) -> Percentiles {
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        if values.is_empty() {
            return f64::NAN;
        }
        values[((values.len() as f64 - 1.0) * q).round() as usize]
    };
    Percentiles {
        count: values.len(),
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// Waits until every event is relayed and every job finished; returns how long it took.
pub async fn wait_until_idle(client: &Client, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        // `exists`, not `count(*)`: counting a 100,000-event backlog 50 times a second cost
        // Postgres more CPU than the worker's own statements did.
        let busy: bool = client
            .query_one(
                "select exists (select from outbox_pending)
                     or exists (select from jobs where status = 'pending')",
                &[],
            )
            .await?
            .get(0);
        if !busy {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "the worker did not finish within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each outbox event `o` with the notify job `j` that covers it (one per relay batch, its
/// events named in the payload: db/migrations/0019).
const NOTIFY_JOB_OF_EVENT: &str = "(select * from jobs where kind = 'notify_owner') j
    cross join lateral notify_job_outbox_ids(j.payload) as e (outbox_id)
    join outbox o on o.id = e.outbox_id";

/// Commit → job start of every event's notify job, in ms (the event's transaction time to
/// the attempt's start, both on the database's clock).
pub async fn commit_to_job_start(client: &Client) -> anyhow::Result<Percentiles> {
    let rows = client
        .query(
            &format!(
                "select extract(epoch from j.last_started_at - o.occurred_at)::float8 * 1000
             from {NOTIFY_JOB_OF_EVENT}
             where j.last_started_at is not null"
            ),
            &[],
        )
        .await?;
    Ok(percentiles(rows.iter().map(|r| r.get(0)).collect()))
}

/// Commit → handler start of every event's notify job, in ms: from the event's transaction
/// start (as [`commit_to_job_start`]) to the moment the worker called the job's handler, as
/// its run ledger recorded it (`ledger`; same machine, same clock). The job start above is
/// the start statement's transaction time; the handler begins once that statement's
/// answer is back.
pub async fn commit_to_handler_start(
    client: &Client,
    ledger: &std::path::Path,
) -> anyhow::Result<Percentiles> {
    let mut began: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    for run in reviews_worker::jobs::ledger::FileLedger::read(ledger)? {
        let first = began.entry(run.job_id).or_insert(run.started_at_us);
        *first = (*first).min(run.started_at_us);
    }
    let rows = client
        .query(
            &format!(
                "select j.id, extract(epoch from o.occurred_at)::float8 from {NOTIFY_JOB_OF_EVENT}"
            ),
            &[],
        )
        .await?;
    Ok(percentiles(
        rows.iter()
            .filter_map(|r| {
                let began = *began.get(&r.get::<_, i64>(0))?;
                Some((began as f64 / 1e6 - r.get::<_, f64>(1)) * 1000.0)
            })
            .collect(),
    ))
}

/// Acknowledged commit → job start of each review of `acknowledged`, in ms: from the moment
/// its writer got the commit's acknowledgement to the start of its notify job. The commit
/// itself lies between the event's transaction start ([`commit_to_job_start`]'s origin, which
/// counts the writer's own insert and WAL flush) and this acknowledgement, which reaches the
/// writer some µs after it (more if the writer's task is scheduled late).
pub async fn acknowledged_to_job_start(
    client: &Client,
    acknowledged: &[crate::load::Acknowledged],
) -> anyhow::Result<Percentiles> {
    let ids: Vec<&str> = acknowledged.iter().map(|a| a.review_id.as_str()).collect();
    let times: Vec<f64> = acknowledged.iter().map(|a| a.at_epoch_s).collect();
    let rows = client
        .query(
            &format!(
                "with starts as (
                     select o.review_id, j.last_started_at from {NOTIFY_JOB_OF_EVENT}
                     where j.last_started_at is not null)
                 select (extract(epoch from s.last_started_at) - a.at_epoch_s) * 1000
                 from unnest($1::text[], $2::float8[]) a (review_id, at_epoch_s)
                 join starts s on s.review_id = a.review_id::uuid"
            ),
            &[&ids, &times],
        )
        .await?;
    Ok(percentiles(rows.iter().map(|r| r.get(0)).collect()))
}

/// The two halves of commit → job start, in ms: commit → the relay's claim (its transaction
/// start, which is the job's `created_at`), and the claim → the job's start.
pub async fn job_start_split(client: &Client) -> anyhow::Result<(Percentiles, Percentiles)> {
    let rows = client
        .query(
            &format!(
                "select extract(epoch from j.created_at - o.occurred_at)::float8 * 1000,
                    extract(epoch from j.last_started_at - j.created_at)::float8 * 1000
             from {NOTIFY_JOB_OF_EVENT}
             where j.last_started_at is not null"
            ),
            &[],
        )
        .await?;
    Ok((
        percentiles(rows.iter().map(|r| r.get(0)).collect()),
        percentiles(rows.iter().map(|r| r.get(1)).collect()),
    ))
}

/// Commit → rating visible: the end of the first rating job that changed the event's
/// product and started after the event committed, in ms.
pub async fn commit_to_rating_visible(client: &Client) -> anyhow::Result<Percentiles> {
    // The products of each rating job (a batch's job has many), indexed for this query only:
    // an index on jobs kept during the load would make every job start a non-HOT update and
    // slow the pipeline being measured.
    client
        .batch_execute(
            "create temporary table bench_rating_jobs as
                 select e.product_id, j.last_started_at, j.finished_at
                 from jobs j cross join lateral rating_job_products(j.payload) e
                 where j.kind = 'recompute_rating' and j.status = 'done';
             create index on bench_rating_jobs (product_id, last_started_at);
             analyze bench_rating_jobs",
        )
        .await?;
    let rows = client
        .query(
            "select extract(epoch from (
                 select min(j.finished_at) from bench_rating_jobs j
                 where j.product_id = o.product_id and j.last_started_at >= o.occurred_at)
                 - o.occurred_at)::float8 * 1000
             from outbox o",
            &[],
        )
        .await?;
    client.batch_execute("drop table bench_rating_jobs").await?;
    Ok(percentiles(
        rows.iter()
            .filter_map(|r| r.get::<_, Option<f64>>(0))
            .collect(),
    ))
}

/// Median time of the relay's claim statement over `runs` runs, in ms, each in a
/// transaction that is rolled back (so every run claims the same pending rows).
pub async fn claim_cost(client: &mut Client, runs: usize) -> anyhow::Result<f64> {
    let statements = reviews_worker::relay::statements_for(
        &reviews_worker::jobs::JobRegistry::standard(),
        500,
        Duration::ZERO,
        reviews_db::Bookkeeping::Synchronous,
    );
    let mut times = Vec::new();
    for _ in 0..runs {
        let tx = client.transaction().await?;
        let sql = reviews_db::Sql::new(tx, Default::default());
        let started = Instant::now();
        reviews_db::outbox::relay_pending_events(&sql, &statements).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        drop(sql);
    }
    Ok(percentiles(times).p50)
}
