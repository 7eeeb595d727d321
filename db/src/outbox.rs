//! The `outbox` table: claiming pending events and turning them into jobs.

use std::time::Duration;

use tokio_postgres::types::Type;

use crate::config::Bookkeeping;
use crate::jobs::StartedJob;
use crate::sql::{AsClient, Sql, StoreError};

/// What one relay pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayedBatch {
    /// Events claimed and taken off `outbox_pending`.
    pub events: i64,
    /// Jobs created for them that may run now (coalesced jobs are not created twice).
    pub job_ids: Vec<i64>,
    /// Jobs created for them that are due later: rating recomputes held back because their
    /// product was recomputed less than the interval ago. Each with how long until it is due.
    pub held_back: Vec<(i64, Duration)>,
    /// Jobs created for them and started in the same statement (their first attempt
    /// recorded), for a runner of this process with free slots: see [`relay_and_start`].
    /// They are not in `job_ids`.
    pub started: Vec<StartedJob>,
}

/// What a relay statement is built with: its worker's settings, fixed for the process.
#[derive(Debug, Clone, Copy)]
pub struct RelayConstants {
    /// Events claimed per statement.
    pub batch_size: i64,
    /// How long after a product's last rating recompute its next one may start (the kinds'
    /// `relay_settings.recompute_interval_ms`).
    pub recompute_interval: Duration,
    /// How the statement commits (it is the worker's bookkeeping).
    pub bookkeeping: Bookkeeping,
}

/// The relay's two statements for a set of job kinds, built once per worker and run by
/// [`relay_pending_events`] and [`relay_and_start`].
///
/// Their worker's settings ([`RelayConstants`]) are written into their text rather than
/// passed as parameters: Postgres plans a prepared statement without parameters once and
/// reuses the plan, where a parameter it could tailor a plan to (the batch size's `limit`,
/// the interval that drops a sub-select when 0) makes it plan every call anew, which took
/// as long as running the statement. The statement that starts jobs keeps one parameter,
/// how many (`$1`): it changes neither plan, so Postgres settles on one after its first five
/// calls. A kept plan is made for the tables' sizes of its time: each connection prepares
/// the statements again once they are older than [`RELAY_PLAN_MAX_AGE`], so that whatever a
/// plan assumed about a table that has grown since lasts a second at most (a plan made
/// while the outbox was empty hashed all of it every batch once it had grown; now its
/// lookups go row by row, see `plans.rs`). The statement that starts jobs then has its five
/// custom plans again: noise under load, where the relay runs it hundreds of times a second;
/// a relay that runs it less than five times a second plans it every call, as before.
///
/// Each claims up to the batch size of pending events (skipping rows other workers hold),
/// creates the jobs every kind makes of them, and takes the events off `outbox_pending`, all
/// in one statement (and so one transaction). Each `(name, from_events)` pair names a kind
/// and the `select` that makes its jobs from the claimed events, `claimed c` (see the
/// worker's `JobKind::FROM_EVENTS`): the outbox rows, and whether their webhooks are
/// delivered (`c.webhooks`, false for a replay without --webhooks). The outbox rows
/// themselves are only read: see `migrations/0011_pending_events_table.sql`. A job whose kind
/// and coalesce key match one that waits unstarted is not created twice. Jobs due later
/// (`run_at` in the future) come back apart, with how long until they are due. The relayed
/// event ids are announced on `review_events` (for the API's live subscriptions), in the
/// same transaction.
#[derive(Debug, Clone)]
pub struct RelayStatements {
    batch_size: i64,
    /// How long a connection keeps its plans of these statements.
    plan_max_age: Duration,
    /// The commit mode written in (checked against the connection's in debug builds).
    bookkeeping: Bookkeeping,
    /// Creates every job unstarted. No parameter.
    relay: String,
    /// Creates up to `$1` of the jobs that may run now started (attempt 1, as
    /// `jobs::start_jobs` would record it), for a runner of this process that has that many
    /// free slots, unless a job with their key waits unstarted (it takes their events in, as
    /// above); a started job never takes another job's events in.
    relay_and_start: String,
}

impl RelayStatements {
    pub fn new<'a>(
        kinds: impl IntoIterator<Item = (&'a str, &'a str)>,
        constants: RelayConstants,
    ) -> Self {
        assert!(
            constants.batch_size > 0,
            "a relay batch claims at least one event"
        );
        let made: Vec<String> = kinds
            .into_iter()
            .map(|(name, from_events)| {
                assert!(
                    name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "job kind names are [a-z_]+: {name:?}"
                );
                // A `$n` would bind to the start count, or to nothing.
                assert!(
                    !from_events
                        .as_bytes()
                        .windows(2)
                        .any(|w| w[0] == b'$' && w[1].is_ascii_digit()),
                    "a job kind's FROM_EVENTS takes no parameters (it reads relay_settings): {name}"
                );
                format!(
                    "(select '{name}'::text as kind, made.* from ({}\n) as made (event_id, coalesce_key, payload, run_at))",
                    from_events.trim_end()
                )
            })
            .collect();
        let made = made.join("\n             union all\n             ");
        let interval_ms =
            i64::try_from(constants.recompute_interval.as_millis()).unwrap_or(i64::MAX);
        let statement = |chosen: &str| {
            relay_statement_text(
                &made,
                constants.batch_size,
                interval_ms,
                chosen,
                constants.bookkeeping,
            )
        };
        RelayStatements {
            batch_size: constants.batch_size,
            plan_max_age: RELAY_PLAN_MAX_AGE,
            bookkeeping: constants.bookkeeping,
            relay: statement("select new_jobs.*, false as start from new_jobs"),
            relay_and_start: statement(
                "select candidates.*,
                          startable
                          and row_number() over (order by not startable, event_id) <= $1
                              as start
                   -- Due now, and no twin waits to take its events in (coalescing first).
                   -- Looked up job by job (the lateral limit keeps a plan made on an empty
                   -- table from hashing every waiting job for as long as it is kept).
                   from (select new_jobs.*, run_at <= now() and twin.id is null as startable
                         from new_jobs
                         left join lateral (select twin.id from jobs twin
                                            where twin.kind = new_jobs.kind
                                              and twin.coalesce_key = new_jobs.coalesce_key
                                              and twin.status = 'pending'
                                              and twin.attempts = 0
                                            limit 1) twin on true) as candidates",
            ),
        }
    }

    /// Events claimed per statement.
    pub fn batch_size(&self) -> i64 {
        self.batch_size
    }

    /// The same statements, planned again every `max_age` instead of
    /// [`RELAY_PLAN_MAX_AGE`] (for tests).
    pub fn replanned_every(mut self, max_age: Duration) -> Self {
        self.plan_max_age = max_age;
        self
    }
}

/// How long a connection keeps the relay statements' plans. Planning one takes about as
/// long as running it (a millisecond or so): once a second is noise beside a relay that runs
/// it hundreds of times a second under load, and a plan made for tables that have grown
/// since lasts a second at most.
pub const RELAY_PLAN_MAX_AGE: Duration = Duration::from_secs(1);

/// The text of a relay statement: `made`, the kinds' selects; `chosen`, a select of
/// `new_jobs` adding `start`, whether the job is created started.
fn relay_statement_text(
    made: &str,
    batch_size: i64,
    interval_ms: i64,
    chosen: &str,
    bookkeeping: Bookkeeping,
) -> String {
    format!(
        "with relay_settings (recompute_interval_ms) as (
             values ({interval_ms}::int8)
         ), relayed as (
             -- By ctid, not by a join on id: a TID scan, whatever the planner thinks of the
             -- backlog's size. The locked rows cannot move: pending rows are only ever
             -- inserted and deleted, never updated.
             delete from outbox_pending
             where ctid = any (array(select ctid from outbox_pending
                                     order by id
                                     limit {batch_size}
                                     for update skip locked))
             returning id, webhooks, replayed
         ), claimed as (
             -- Event by event (`offset 0` keeps the lookup apart): a plan made while the
             -- outbox was new and nearly empty would otherwise hash all of it, every batch.
             -- (Statistics of a tiny outbox can still make each lookup read it whole, until
             -- the plan is made again: RELAY_PLAN_MAX_AGE.)
             select o.id, o.event_id, o.event_type, o.review_id, o.product_id, o.payload,
                    o.actor_id, o.request_id, o.occurred_at, r.webhooks, r.replayed
             from relayed r
             cross join lateral (select * from outbox where outbox.id = r.id offset 0) o
         ), new_jobs as (
             {made}
         ), inserted as (
             insert into jobs (kind, event_id, coalesce_key, payload, run_at, attempts,
                               last_started_at)
             select kind, event_id, coalesce_key, payload, run_at,
                    start::int, case when start then clock_timestamp() end
             from ({chosen}) as chosen
             -- A job that waits unstarted with the same key takes the new events in (a rating
             -- job adds their deltas: merge_job_payloads; other kinds keep theirs).
             on conflict (kind, coalesce_key)
                 where status = 'pending' and attempts = 0 and coalesce_key is not null
                 do update set payload = merge_job_payloads(jobs.kind, jobs.payload, excluded.payload)
                 where merge_job_payloads(jobs.kind, jobs.payload, excluded.payload)
                       is distinct from jobs.payload
             -- xmax is 0 in a row this statement inserted: a job merged into is queued already.
             -- A started row is outside the coalescing index, so it is always inserted.
             returning id, kind, payload, run_at, attempts, created_at, xmax = 0 as created
         ), held_back as (
             select id, ceil(extract(epoch from run_at - now()) * 1000)::int8 as due_in_ms
             from inserted where created and run_at > now()
         ), announced as (
             select pg_notify('review_events', string_agg(c.event_id::text, ','))
             from claimed c
             group by c.id / 100
         )
         select (select count(*) from relayed) as events,
                (select count(*) from announced) as announcements,
                coalesce((select array_agg(id) from inserted
                          where created and run_at <= now() and attempts = 0), '{{}}') as job_ids,
                coalesce((select array_agg(id order by id) from inserted where attempts > 0),
                         '{{}}') as started_ids,
                coalesce((select array_agg(kind order by id) from inserted where attempts > 0),
                         '{{}}') as started_kinds,
                coalesce((select array_agg(payload order by id) from inserted where attempts > 0),
                         '{{}}') as started_payloads,
                coalesce((select array_agg(created_at order by id) from inserted
                          where attempts > 0), '{{}}') as started_created_at,
                coalesce((select array_agg(id order by id) from held_back), '{{}}') as held_ids,
                coalesce((select array_agg(due_in_ms order by id) from held_back), '{{}}')
                    as held_due_in_ms,
                {commit} as commit",
        commit = crate::jobs::commit_to(&bookkeeping.literal()),
    )
}

/// Relays up to the batch size of pending events with `statements`, creating every job
/// unstarted.
pub async fn relay_pending_events<C: AsClient>(
    db: &Sql<C>,
    statements: &RelayStatements,
) -> Result<RelayedBatch, StoreError> {
    relay_and_start(db, statements, 0).await
}

/// [`relay_pending_events`], creating up to `start` of the jobs that may run now started
/// (in `RelayedBatch::started`): the caller holds that many free slots to run them in, and
/// hands each back (`jobs::hand_back_jobs`) if it cannot take its lease in the queue.
pub async fn relay_and_start<C: AsClient>(
    db: &Sql<C>,
    statements: &RelayStatements,
    start: i64,
) -> Result<RelayedBatch, StoreError> {
    debug_assert_eq!(
        statements.bookkeeping.setting(),
        db.commit_setting(),
        "relay statements written for another commit mode than this connection's"
    );
    let max_age = statements.plan_max_age;
    let row = if start > 0 {
        let count = [(&start as _, Type::INT8)];
        db.query_typed_one_replanned(&statements.relay_and_start, &count, max_age)
            .await?
    } else {
        db.query_typed_one_replanned(&statements.relay, &[], max_age)
            .await?
    };
    let held_ids: Vec<i64> = row.get("held_ids");
    let due_in_ms: Vec<i64> = row.get("held_due_in_ms");
    let started_ids: Vec<i64> = row.get("started_ids");
    let kinds: Vec<String> = row.get("started_kinds");
    let payloads: Vec<serde_json::Value> = row.get("started_payloads");
    let created_at: Vec<chrono::DateTime<chrono::Utc>> = row.get("started_created_at");
    let started = started_ids
        .into_iter()
        .zip(kinds)
        .zip(payloads)
        .zip(created_at)
        .map(|(((id, kind), payload), created_at)| StartedJob {
            id,
            kind,
            payload,
            attempt: 1,
            created_at,
        })
        .collect();
    Ok(RelayedBatch {
        started,
        events: row.get("events"),
        job_ids: row.get("job_ids"),
        held_back: held_ids
            .into_iter()
            .zip(due_in_ms)
            .map(|(id, ms)| (id, Duration::from_millis(ms.max(0) as u64)))
            .collect(),
    })
}

/// How many events wait to be relayed, and the age of the oldest in milliseconds.
pub async fn pending_events<C: AsClient>(db: &Sql<C>) -> Result<(i64, i64), StoreError> {
    let row = db
        .query_one(
            "select count(*),
                    coalesce((extract(epoch from now() - min(o.occurred_at)) * 1000)::bigint, 0)
             from outbox_pending p join outbox o on o.id = p.id",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
