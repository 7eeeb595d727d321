//! The `jobs` table: the durable state of every job (attempts, schedule, outcome) and the
//! `dead_jobs` letters of those that ran out of attempts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::types::Type;

use crate::sql::{AsClient, Sql, StoreError};

/// A job about to run: its attempt has been recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedJob {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    /// This attempt's number, from 1.
    pub attempt: i32,
    pub created_at: DateTime<Utc>,
}

impl StartedJob {
    /// This run's fencing token.
    pub fn fencing(&self) -> Attempt {
        Attempt {
            job_id: self.id,
            attempt: self.attempt,
        }
    }
}

/// Sets the transaction's `synchronous_commit` to parameter `$n` (null: the server's), for
/// the worker's bookkeeping ([`crate::Bookkeeping`]): in a RETURNING list, it runs when the
/// statement changed a row, which is when there is something to commit.
pub(crate) fn commit_as(n: usize) -> String {
    commit_to(&format!("${n}"))
}

/// [`commit_as`] with the setting given as an SQL expression (a literal, or a parameter).
pub(crate) fn commit_to(setting: &str) -> String {
    format!(
        "set_config('synchronous_commit', coalesce({setting}::text, current_setting('synchronous_commit')), true)"
    )
}

/// The most attempts of a job's kind: its `retry_policies` row, else `$2` (the fallback).
const MAX_ATTEMPTS: &str =
    "coalesce((select max_attempts from retry_policies p where p.kind = jobs.kind), $2)";

/// The rows (locked with `{lock}`) of the jobs whose ids are in `$1`, as `j`, looked up one
/// by one through the primary key and nothing else: conditions on them go *outside*.
///
/// Why so roundabout: the partial index of pending jobs matches any query that says
/// `status = 'pending'`, and when the table's statistics say pending jobs are rare (most
/// jobs are done, or it was analyzed before a burst) the planner reads that index for every
/// wanted id, or ANDs it with the primary key. During a 100,000-job backlog that cost more
/// than the rest of the pipeline together (drain 600 events/s instead of 10,000). Inside the
/// lateral subquery the only condition is the id, and `offset 0` keeps the planner from
/// merging it with the conditions outside.
fn by_id(lock: &str) -> String {
    by_id_in(lock, "unnest($1::bigint[]) as wanted (id)")
}

/// [`by_id`] for the ids of `wanted`, a set of rows with an `id` column.
fn by_id_in(lock: &str, wanted: &str) -> String {
    format!(
        "{wanted}
         cross join lateral (
             select id, kind, status, run_at, attempts from jobs
             where jobs.id = wanted.id offset 0 {lock}
         ) j"
    )
}

/// How long a connection keeps its plans of the job statements the worker runs often or in
/// bulk ([`start_jobs`], [`complete_jobs`], [`schedule_retry`], [`job_state`],
/// [`still_pending`]) and of the notify statement
/// ([`crate::notifications::notify_product_owners`]). The worker's pool plans generically
/// (`PlanCache::Generic`) and keeps its prepared statements: a plan made while `jobs` was a
/// page finds `id = any(...)` by reading the whole table, and the connection would keep it
/// as the table grows, until the table is next analyzed (never, with autovacuum off).
/// Planning again once a second bounds that, as the relay's statements do
/// (`outbox::RELAY_PLAN_MAX_AGE`); a plan costs a fraction of a millisecond (the notify
/// statement's about 1 ms).
pub const JOB_PLAN_MAX_AGE: Duration = Duration::from_secs(1);

/// The statement of [`start_jobs`] (public so that a test can check its plan).
pub fn start_jobs_sql() -> String {
    format!(
        "with startable as materialized (
             select j.id from {jobs}
             where j.status = 'pending' and j.run_at <= now() and j.attempts < {max}
         )
         update jobs set attempts = attempts + 1, last_started_at = now()
         where jobs.id = any (array(select id from startable))
         returning jobs.id, kind, payload, attempts, created_at, {commit}",
        jobs = by_id("for update skip locked"),
        max = MAX_ATTEMPTS.replace("jobs.kind", "j.kind"),
        commit = commit_as(3),
    )
}

/// Records the next attempt of each pending, due job of `ids` that has attempts left, in one
/// statement, and returns those jobs (in no particular order). A job missing from the answer
/// is not startable now ([`job_state`] says why), or another worker is starting it this
/// instant (its row is locked: skipped, not waited for). `fallback_max_attempts` applies to
/// kinds without a retry policy.
pub async fn start_jobs<C: AsClient>(
    db: &Sql<C>,
    ids: &[i64],
    fallback_max_attempts: i32,
) -> Result<Vec<StartedJob>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = start_jobs_sql();
    let rows = db
        .query_typed_replanned(
            &sql,
            &[
                (&ids, Type::INT8_ARRAY),
                (&fallback_max_attempts, Type::INT4),
                (&db.commit_setting(), Type::TEXT),
            ],
            JOB_PLAN_MAX_AGE,
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| StartedJob {
            id: row.get("id"),
            kind: row.get("kind"),
            payload: row.get("payload"),
            attempt: row.get("attempts"),
            created_at: row.get("created_at"),
        })
        .collect())
}

/// Why a job could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// No such job (purged), or it already finished: nothing to do.
    Finished,
    /// Pending but not due yet: a retry is scheduled this many ms from now.
    Scheduled { in_ms: i64 },
    /// Pending with no attempts left: its last attempt never reported back.
    Exhausted { attempts: i32 },
    /// Startable after all (a race with another start); try again later.
    Pending,
}

pub async fn job_state<C: AsClient>(
    db: &Sql<C>,
    id: i64,
    fallback_max_attempts: i32,
) -> Result<JobState, StoreError> {
    let sql = format!(
        "select status, attempts, {MAX_ATTEMPTS} as max_attempts,
                greatest(0, (extract(epoch from run_at - now()) * 1000)::bigint) as in_ms
         from jobs where id = $1"
    );
    let rows = db
        .query_typed_replanned(
            &sql,
            &[(&id, Type::INT8), (&fallback_max_attempts, Type::INT4)],
            JOB_PLAN_MAX_AGE,
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok(JobState::Finished);
    };
    let status: &str = row.get("status");
    let attempts: i32 = row.get("attempts");
    let max_attempts: i32 = row.get("max_attempts");
    let in_ms: i64 = row.get("in_ms");
    Ok(match status {
        "pending" if attempts >= max_attempts => JobState::Exhausted { attempts },
        "pending" if in_ms > 0 => JobState::Scheduled { in_ms },
        "pending" => JobState::Pending,
        _ => JobState::Finished,
    })
}

/// A started job's fencing token: its id and the attempt that started it. An outcome is
/// recorded only while the job is pending at that attempt; once another runner took the job
/// over and started it again (its lease expired while this one stalled), the attempts moved
/// on and the stale runner's outcome changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attempt {
    pub job_id: i64,
    pub attempt: i32,
}

/// `attempts` in id order, as the two arrays the fenced statements take (job ids, attempt
/// numbers): jobs locked in id order never wait for each other in a cycle.
pub(crate) fn in_lock_order(attempts: impl IntoIterator<Item = Attempt>) -> (Vec<i64>, Vec<i32>) {
    let mut attempts: Vec<Attempt> = attempts.into_iter().collect();
    attempts.sort_unstable();
    attempts.iter().map(|a| (a.job_id, a.attempt)).unzip()
}

/// The statement of [`complete_jobs`] (public so that a test can check its plan).
pub fn complete_jobs_sql() -> String {
    format!(
        "update jobs set status = 'done', finished_at = now()
         where id = any (array(select j.id from {jobs}
                               where j.status = 'pending' and j.attempts = wanted.attempt))
         returning id, {commit}",
        jobs = by_id_in(
            "for update",
            "unnest($1::bigint[], $2::int4[]) as wanted (id, attempt)"
        ),
        commit = commit_as(3),
    )
}

/// Marks jobs done, each if still pending at its attempt, in one statement; returns the ids
/// it marked. `last_error` stays: a job that succeeded on a retry still shows why the
/// earlier attempt failed.
pub async fn complete_jobs<C: AsClient>(
    db: &Sql<C>,
    attempts: &[Attempt],
) -> Result<Vec<i64>, StoreError> {
    if attempts.is_empty() {
        return Ok(Vec::new());
    }
    // Checked once locked: a job another worker buried or took over meanwhile stays so.
    let (ids, numbers) = in_lock_order(attempts.iter().copied());
    let sql = complete_jobs_sql();
    let rows = db
        .query_typed_replanned(
            &sql,
            &[
                (&ids, Type::INT8_ARRAY),
                (&numbers, Type::INT4_ARRAY),
                (&db.commit_setting(), Type::TEXT),
            ],
            JOB_PLAN_MAX_AGE,
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Records a failed attempt and when the job may run again; false when the job is no longer
/// pending at that attempt (nothing changed).
pub async fn schedule_retry<C: AsClient>(
    db: &Sql<C>,
    attempt: Attempt,
    delay_ms: i64,
    error: &str,
) -> Result<bool, StoreError> {
    let sql = format!(
        "update jobs set run_at = now() + $3 * interval '1 millisecond', last_error = $4
         where id = $1 and status = 'pending' and attempts = $2
         returning {}",
        commit_as(5)
    );
    let changed = db
        .execute_typed_replanned(
            &sql,
            &[
                (&attempt.job_id, Type::INT8),
                (&attempt.attempt, Type::INT4),
                (&(delay_ms as f64), Type::FLOAT8),
                (&error, Type::TEXT),
                (&db.commit_setting(), Type::TEXT),
            ],
            JOB_PLAN_MAX_AGE,
        )
        .await?;
    Ok(changed == 1)
}

/// Ends a job as a dead letter (status dead and one `dead_jobs` row, in one statement); false
/// when the job is no longer pending at that attempt (nothing changed).
pub async fn bury_job<C: AsClient>(
    db: &Sql<C>,
    attempt: Attempt,
    error: &str,
) -> Result<bool, StoreError> {
    let sql = format!(
        "with buried as (
             update jobs set status = 'dead', finished_at = now(), last_error = $3
             where id = $1 and status = 'pending' and attempts = $2
             returning id, kind, payload, attempts, last_error, created_at
         )
         insert into dead_jobs (job_id, kind, payload, attempts, last_error, created_at)
         select id, kind, payload, attempts, last_error, created_at from buried
         returning {}",
        commit_as(4)
    );
    let buried = db
        .execute_typed(
            &sql,
            &[
                (&attempt.job_id, Type::INT8),
                (&attempt.attempt, Type::INT4),
                (&error, Type::TEXT),
                (&db.commit_setting(), Type::TEXT),
            ],
        )
        .await?;
    Ok(buried == 1)
}

/// Pending jobs that have been due for longer than `grace_ms`: candidates the queue may have
/// lost (a crash between commit and enqueue, a Redis restart). Oldest first.
pub async fn overdue_job_ids<C: AsClient>(
    db: &Sql<C>,
    grace_ms: i64,
    limit: i64,
) -> Result<Vec<i64>, StoreError> {
    let rows = db
        .query(
            "select id from jobs
             where status = 'pending' and run_at < now() - $1 * interval '1 millisecond'
             order by run_at
             limit $2",
            &[&(grace_ms as f64), &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Of `ids`, the jobs still pending (one statement, primary-key lookups).
pub async fn still_pending<C: AsClient>(db: &Sql<C>, ids: &[i64]) -> Result<Vec<i64>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!("select j.id from {} where j.status = 'pending'", by_id(""));
    let rows = db
        .query_typed_replanned(&sql, &[(&ids, Type::INT8_ARRAY)], JOB_PLAN_MAX_AGE)
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Gives back an attempt that was recorded but never ran to an end (the worker shut down
/// and handed the job back, or the job was deferred), so it does not cost the job one of its
/// attempts; false when the job is no longer pending at that attempt (nothing changed). A
/// job of a coalesced kind whose twin waits unstarted is merged into it, a rating job's
/// deltas added to the twin's (see `hand_back_job` in db/migrations/0013 and
/// `merge_into_waiting_twin` in 0017).
pub async fn hand_back_job<C: AsClient>(db: &Sql<C>, attempt: Attempt) -> Result<bool, StoreError> {
    let sql = format!("select hand_back_job($1, $2), {}", commit_as(3));
    let row = db
        .query_typed_one(
            &sql,
            &[
                (&attempt.job_id, Type::INT8),
                (&attempt.attempt, Type::INT4),
                (&db.commit_setting(), Type::TEXT),
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// [`hand_back_job`] for several attempts in one statement (in lock order); returns how
/// many were given back.
pub async fn hand_back_jobs<C: AsClient>(
    db: &Sql<C>,
    attempts: &[Attempt],
) -> Result<i64, StoreError> {
    if attempts.is_empty() {
        return Ok(0);
    }
    let (ids, numbers) = in_lock_order(attempts.iter().copied());
    let sql = format!(
        "select count(*) filter (where given_back), {commit}
         from (select hand_back_job(wanted.id, wanted.attempt) as given_back
               from unnest($1::bigint[], $2::int4[]) as wanted (id, attempt)) as handed",
        commit = commit_as(3)
    );
    let row = db
        .query_typed_one(
            &sql,
            &[
                (&ids, Type::INT8_ARRAY),
                (&numbers, Type::INT4_ARRAY),
                (&db.commit_setting(), Type::TEXT),
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Replays a dead letter (see `replay_dead_job` in db/migrations); false when it was
/// already replayed or does not exist.
pub async fn replay_dead_job<C: AsClient>(
    db: &Sql<C>,
    dead_job_id: i64,
) -> Result<bool, StoreError> {
    let row = db
        .query_one("select replay_dead_job($1)", &[&dead_job_id])
        .await?;
    Ok(row.get(0))
}

/// A row of `dead_jobs`.
#[derive(Debug, Clone)]
pub struct DeadJob {
    pub id: i64,
    pub job_id: i64,
    pub kind: String,
    pub payload: Value,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub died_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// Dead letters, newest first; only open ones (not replayed) unless `include_replayed`.
pub async fn list_dead_jobs<C: AsClient>(
    db: &Sql<C>,
    kind: Option<&str>,
    include_replayed: bool,
    limit: i64,
) -> Result<Vec<DeadJob>, StoreError> {
    let rows = db
        .query(
            "select id, job_id, kind, payload, attempts, last_error, died_at, replayed_at
             from dead_jobs
             where ($1::text is null or kind = $1) and ($2 or replayed_at is null)
             order by died_at desc, id desc
             limit $3",
            &[&kind, &include_replayed, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DeadJob {
            id: r.get("id"),
            job_id: r.get("job_id"),
            kind: r.get("kind"),
            payload: r.get("payload"),
            attempts: r.get("attempts"),
            last_error: r.get("last_error"),
            died_at: r.get("died_at"),
            replayed_at: r.get("replayed_at"),
        })
        .collect())
}

pub async fn dead_job_exists<C: AsClient>(db: &Sql<C>, id: i64) -> Result<bool, StoreError> {
    Ok(db
        .query_opt("select 1 from dead_jobs where id = $1", &[&id])
        .await?
        .is_some())
}
