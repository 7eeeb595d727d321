//! The checks after the run, per fault window and in all: nothing lost (every acknowledged
//! review has its row and its notification), nothing unexpected, duplicate handler runs
//! counted from the workers' run ledgers, every rating equal to the aggregate, no dead
//! letter, and every event's notification within the fault's length + 15 s of its commit.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use reviews_worker::jobs::ledger::Run;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::faults::Fault;
use crate::load::Write;

/// How long after the warm-up's start an event may take to its effect.
pub const SETTLE: Duration = Duration::from_secs(15);

/// A stretch of the run: from a fault's start to the next one's (writes sent in it belong
/// to it). `fault` None: the warm-up before the first fault.
#[derive(Debug, Clone)]
pub struct Window {
    pub fault: Option<Fault>,
    pub length: Duration,
    pub start: SystemTime,
}

impl Window {
    fn name(&self) -> &'static str {
        self.fault.map_or("(warm-up)", Fault::name)
    }

    fn bound(&self) -> Duration {
        self.length + self.fault.map_or(SETTLE, Fault::settle)
    }
}

#[derive(Default)]
struct Tally {
    writes: usize,
    refused: usize,
    slowest_write: Duration,
    lost: usize,
    duplicates: usize,
    longest: Duration,
    late: usize,
}

/// What the run left to check, besides the database.
pub struct Observed<'a> {
    pub windows: &'a [Window],
    pub writes: &'a [Write],
    pub sent_authors: &'a HashSet<String>,
    /// Each worker's handler runs (one ledger per worker, kept across its restart).
    pub runs_per_worker: &'a [Vec<Run>],
    /// The processes that are not running at the end.
    pub dead: &'a [String],
    /// The consumers left in the stream's group at the end.
    pub consumers: usize,
}

/// Each worker must run at least this share of the jobs (the load is spread).
const LEAST_SHARE: f64 = 0.15;

/// Prints the checks; true when all hold.
pub async fn check(db: &Client, observed: &Observed<'_>) -> anyhow::Result<bool> {
    let Observed {
        windows,
        writes,
        sent_authors,
        runs_per_worker,
        dead: workers_running,
        consumers,
    } = *observed;
    let runs: Vec<Run> = runs_per_worker.iter().flatten().cloned().collect();
    let runs = &runs;
    let acknowledged: Vec<Uuid> = writes.iter().filter_map(|w| w.review_id).collect();
    // Each acknowledged review: stored? its creation's commit and notification times.
    let rows = db
        .query(
            "select r.id, extract(epoch from o.occurred_at)::float8,
                    extract(epoch from n.created_at)::float8
             from unnest($1::uuid[]) as r (id)
             left join outbox o on o.review_id = r.id and o.event_type = 'review.created'
             left join notifications n on n.event_id = o.event_id",
            &[&acknowledged],
        )
        .await?;
    let effects: HashMap<Uuid, (Option<f64>, Option<f64>)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let stored: HashSet<Uuid> = db
        .query(
            "select id from reviews where id = any($1)",
            &[&acknowledged],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Runs of each review's notify job(s).
    let mut runs_of_job: HashMap<i64, usize> = HashMap::new();
    for run in runs.iter().filter(|run| run.kind == "notify_owner") {
        *runs_of_job.entry(run.job_id).or_default() += 1;
    }
    let mut runs_of_review: HashMap<Uuid, usize> = HashMap::new();
    for row in db
        .query(
            "select j.id, o.review_id
             from jobs j
             cross join lateral notify_job_outbox_ids(j.payload) as e (outbox_id)
             join outbox o on o.id = e.outbox_id
             where j.kind = 'notify_owner'",
            &[],
        )
        .await?
    {
        let ran = runs_of_job.get(&row.get::<_, i64>(0)).copied().unwrap_or(0);
        *runs_of_review.entry(row.get(1)).or_default() += ran;
    }

    let window_of = |at: SystemTime| windows.iter().rposition(|w| w.start <= at).unwrap_or(0);
    let mut tallies: Vec<Tally> = windows.iter().map(|_| Tally::default()).collect();
    for write in writes {
        let n = window_of(write.sent_at);
        let tally = &mut tallies[n];
        tally.writes += 1;
        if write.writer == "api" {
            // The steady load's writes: a fault's own writer may hold its transaction open.
            tally.slowest_write = tally.slowest_write.max(write.took);
        }
        let Some(review) = write.review_id else {
            tally.refused += 1;
            continue;
        };
        match effects.get(&review) {
            Some((Some(committed), Some(notified))) if stored.contains(&review) => {
                let took = Duration::from_secs_f64((notified - committed).max(0.0));
                tally.longest = tally.longest.max(took);
                if took > windows[n].bound() {
                    tally.late += 1;
                }
            }
            _ => tally.lost += 1,
        }
        tally.duplicates += runs_of_review
            .get(&review)
            .map_or(0, |runs| runs.saturating_sub(1));
    }

    let unexpected: i64 = {
        let authors: Vec<String> = db
            .query(
                "select r.author_id from notifications n join reviews r on r.id = n.review_id",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        authors
            .iter()
            .filter(|a| !sent_authors.contains(*a))
            .count() as i64
    };
    let duplicate_rows: i64 = db
        .query_one(
            "select count(*) - count(distinct (event_id, recipient_id, kind)) from notifications",
            &[],
        )
        .await?
        .get(0);
    let wrong_ratings: i64 = db
        .query_one(
            "select count(*) from products p
             left join product_ratings pr on pr.product_id = p.id
             left join lateral (
                 select count(*) n, coalesce(sum(rating), 0) s,
                        count(*) filter (where rating = 1) s1, count(*) filter (where rating = 2) s2,
                        count(*) filter (where rating = 3) s3, count(*) filter (where rating = 4) s4,
                        count(*) filter (where rating = 5) s5
                 from reviews r where r.product_id = p.id) a on true
             where (coalesce(pr.review_count, 0), coalesce(pr.rating_sum, 0),
                    coalesce(pr.stars_1, 0), coalesce(pr.stars_2, 0), coalesce(pr.stars_3, 0),
                    coalesce(pr.stars_4, 0), coalesce(pr.stars_5, 0))
                   <> (a.n, a.s, a.s1, a.s2, a.s3, a.s4, a.s5)",
            &[],
        )
        .await?
        .get(0);
    let dead: i64 = db
        .query_one("select count(*) from dead_jobs", &[])
        .await?
        .get(0);

    println!(
        "{:<20} {:>6} {:>7} {:>9} {:>5} {:>5} {:>9} {:>10} {:>6}  result",
        "window", "writes", "refused", "slowest", "lost", "late", "dup runs", "longest", "bound"
    );
    let mut ok = true;
    for (window, tally) in windows.iter().zip(&tallies) {
        let refused_ok = tally.refused == 0 || window.fault.is_some_and(Fault::refuses_writes);
        let window_ok = tally.lost == 0 && tally.late == 0 && refused_ok;
        ok &= window_ok;
        println!(
            "{:<20} {:>6} {:>7} {:>7.2} s {:>5} {:>5} {:>9} {:>8.2} s {:>4} s  {}",
            window.name(),
            tally.writes,
            tally.refused,
            tally.slowest_write.as_secs_f64(),
            tally.lost,
            tally.late,
            tally.duplicates,
            tally.longest.as_secs_f64(),
            window.bound().as_secs(),
            if window_ok { "ok" } else { "FAIL" },
        );
    }
    let total = |f: fn(&Tally) -> usize| tallies.iter().map(f).sum::<usize>();
    println!(
        "in all: {} writes acknowledged, {} lost, {} late, {} duplicate handler runs (notify_owner)",
        acknowledged.len(),
        total(|t| t.lost),
        total(|t| t.late),
        total(|t| t.duplicates)
    );
    println!("  unexpected notifications     {unexpected}  (of reviews the load never sent)");
    println!("  duplicate notification rows  {duplicate_rows}");
    println!("  ratings != aggregate         {wrong_ratings}  (count, sum and all five buckets)");
    println!("  dead letters                 {dead}");
    if !workers_running.is_empty() {
        println!(
            "  processes that died          {}",
            workers_running.join(", ")
        );
    }
    // A job run twice in one attempt is a duplicate no lease take-back explains (a take-back
    // starts a new attempt), unless Postgres lost the commit of its start: the worker's
    // bookkeeping commits asynchronously (WORKER_ASYNC_COMMIT), and an immediate restart
    // loses its last fraction of a second; the effects, committed with the completion, were
    // lost with it (the ratings and notifications checks above would see them twice).
    let mut per_attempt: HashMap<(i64, i32), Vec<SystemTime>> = HashMap::new();
    for run in runs {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(run.started_at_us.max(0) as u64);
        per_attempt
            .entry((run.job_id, run.attempt))
            .or_default()
            .push(at);
    }
    let around_a_restart = |at: SystemTime| {
        windows.iter().enumerate().any(|(n, window)| {
            let end = windows
                .get(n + 1)
                .map_or(SystemTime::now(), |next| next.start);
            window.fault == Some(Fault::PostgresRestart)
                && at + Duration::from_secs(1) >= window.start
                && at <= end
        })
    };
    let (mut same_attempt_twice, mut lost_starts) = (0, 0);
    for starts in per_attempt.values().filter(|starts| starts.len() > 1) {
        let first = starts
            .iter()
            .min()
            .copied()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match around_a_restart(first) {
            true => lost_starts += starts.len() - 1,
            false => same_attempt_twice += starts.len() - 1,
        }
    }
    println!(
        "  runs of one attempt twice    {same_attempt_twice}  (duplicates beyond lease take-backs)"
    );
    println!(
        "  re-runs of lost job starts   {lost_starts}  (Postgres lost their asynchronous commit in a restart)"
    );
    let workers = runs_per_worker.len();
    let shares: Vec<f64> = runs_per_worker
        .iter()
        .map(|mine| mine.len() as f64 / runs.len().max(1) as f64)
        .collect();
    let spread_ok = workers < 2 || shares.iter().all(|share| *share >= LEAST_SHARE);
    println!(
        "  each worker's share of runs  {}  (each at least {:.0}%)",
        shares
            .iter()
            .map(|s| format!("{:.0}%", s * 100.0))
            .collect::<Vec<_>>()
            .join(" "),
        LEAST_SHARE * 100.0
    );
    let live = workers
        - workers_running
            .iter()
            .filter(|p| p.starts_with("worker"))
            .count();
    let consumers_ok = consumers <= live + 1;
    println!("  consumers in the group       {consumers}  (at most one more than the {live} live workers)");
    ok &= unexpected == 0
        && duplicate_rows == 0
        && wrong_ratings == 0
        && dead == 0
        && workers_running.is_empty()
        && same_attempt_twice == 0
        && spread_ok
        && consumers_ok;
    Ok(ok)
}
