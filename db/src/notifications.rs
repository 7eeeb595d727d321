//! The `notifications` table: what users are told (written by the worker, read by the API).

use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::jobs::JOB_PLAN_MAX_AGE;
use crate::page::{Page, PageRequest};
use crate::sql::{AsClient, Sql, StoreError};

#[derive(Debug, Clone)]
pub struct Notification {
    pub id: Uuid,
    pub recipient_id: String,
    pub kind: String,
    pub review_id: Option<Uuid>,
    pub product_id: Option<Uuid>,
    pub event_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
}

impl From<&Row> for Notification {
    fn from(row: &Row) -> Self {
        Notification {
            id: row.get("id"),
            recipient_id: row.get("recipient_id"),
            kind: row.get("kind"),
            review_id: row.get("review_id"),
            product_id: row.get("product_id"),
            event_id: row.get("event_id"),
            created_at: row.get("created_at"),
            read_at: row.get("read_at"),
        }
    }
}

const COLUMNS: &str =
    "id, recipient_id, kind, review_id, product_id, event_id, created_at, read_at";

/// A page of one recipient's notifications, newest first.
pub async fn list_notifications_for_recipient<C: AsClient>(
    db: &Sql<C>,
    recipient_id: &str,
    page: &PageRequest,
) -> Result<Page<Notification>, StoreError> {
    let (after_at, after_id) = page.after_params();
    let sql = format!(
        "select {COLUMNS} from notifications
         where recipient_id = $1 and (created_at, id) < ($2, $3)
         order by created_at desc, id desc
         limit $4"
    );
    let rows = db
        .query(&sql, &[&recipient_id, &after_at, &after_id, &page.limit()])
        .await?;
    Ok(Page::from_rows(
        rows.iter().map(Notification::from).collect(),
        page,
    ))
}

/// A notification to write, keyed by the event that caused it (an event carried in a job's
/// payload whole, as jobs written before db/migrations/0019 carry them).
pub struct NewNotification<'a> {
    pub event_id: Uuid,
    pub kind: &'a str,
    pub review_id: Uuid,
    pub product_id: Uuid,
    /// The review's author: the owner is not told about their own reviews.
    pub author_id: &'a str,
}

/// What [`notify_product_owners`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notified {
    /// The notifications are written and the jobs done; how many rows were written.
    Written(u64),
    /// Nothing was written and no job completed: these outbox ids are not in the outbox (its
    /// rows were deleted after all, since `scripts/purge` keeps the events of pending and
    /// dead notify jobs).
    Missing(Vec<i64>),
}

/// Tells each product's owner about review events, once per event, and marks the jobs that
/// carry them done (at the attempts that ran them), all in one statement: it fails whole if
/// any job is no longer at its attempt (`complete_jobs_fenced`, db/migrations/0016), so the
/// notifications commit exactly when their jobs do. The events are `events`, carried whole,
/// and the outbox's events of `outbox_ids`, read there. A notification written already (a
/// replayed event) is skipped; owners reviewing their own product and products that are gone
/// get none. If any of `outbox_ids` is not in the outbox the statement writes and completes
/// nothing, and says which.
///
/// Its prepared statement is made again once it is older than [`JOB_PLAN_MAX_AGE`]: the
/// worker's sessions plan generically, and a plan made while `outbox` and `products` were a
/// page each (a new database) would read both whole at every call once they have grown,
/// until the tables are next analyzed (never, with autovacuum off). A plan costs about 1 ms.
pub async fn notify_product_owners<C: AsClient>(
    db: &Sql<C>,
    events: &[NewNotification<'_>],
    outbox_ids: &[i64],
    jobs: &[crate::jobs::Attempt],
) -> Result<Notified, StoreError> {
    let event_ids: Vec<Uuid> = events.iter().map(|n| n.event_id).collect();
    let kinds: Vec<&str> = events.iter().map(|n| n.kind).collect();
    let review_ids: Vec<Uuid> = events.iter().map(|n| n.review_id).collect();
    let product_ids: Vec<Uuid> = events.iter().map(|n| n.product_id).collect();
    let author_ids: Vec<&str> = events.iter().map(|n| n.author_id).collect();
    let (job_ids, attempts) = crate::jobs::in_lock_order(jobs.iter().copied());
    let mut outbox_ids = outbox_ids.to_vec();
    outbox_ids.sort_unstable();
    outbox_ids.dedup();
    let row = db
        .query_typed_one_replanned(
            "with from_outbox as materialized (
                 select o.event_id, o.event_type as kind, o.review_id, o.product_id,
                        coalesce(o.payload->'new'->>'author_id',
                                 o.payload->'old'->>'author_id') as author_id
                 from unnest($6::int8[]) as wanted (id)
                 cross join lateral (select * from outbox o
                                     where o.id = wanted.id offset 0) o
             ), missing as materialized (
                 -- Looked for only when some are (the ids come without duplicates).
                 select case when (select count(*) from from_outbox) = cardinality($6)
                             then '{}'::int8[]
                             else array(select id from unnest($6::int8[]) as wanted (id)
                                        where not exists (select from outbox o
                                                          where o.id = wanted.id)
                                        order by id)
                        end as ids
             ), completed as materialized (
                 select complete_jobs_fenced($7, $8, $9) as jobs
                 where cardinality((select ids from missing)) = 0
             ), written as (
                 insert into notifications (recipient_id, kind, review_id, product_id, event_id)
                 select p.owner_id, e.kind, e.review_id, p.id, e.event_id
                 from (select event_id, kind, review_id, product_id, author_id
                       from unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[])
                            as carried (event_id, kind, review_id, product_id, author_id)
                       union all
                       select event_id, kind, review_id, product_id, author_id
                       from from_outbox) e
                 join products p on p.id = e.product_id
                 where p.owner_id <> e.author_id
                   and cardinality((select ids from missing)) = 0
                 on conflict (event_id, recipient_id, kind) do nothing
                 returning 1
             )
             -- Naming `completed` here runs it whatever the insert writes.
             select (select jobs from completed), (select count(*) from written),
                    (select ids from missing)",
            &[
                (&event_ids, Type::UUID_ARRAY),
                (&kinds, Type::TEXT_ARRAY),
                (&review_ids, Type::UUID_ARRAY),
                (&product_ids, Type::UUID_ARRAY),
                (&author_ids, Type::TEXT_ARRAY),
                (&outbox_ids, Type::INT8_ARRAY),
                (&job_ids, Type::INT8_ARRAY),
                (&attempts, Type::INT4_ARRAY),
                (&db.commit_setting(), Type::TEXT),
            ],
            JOB_PLAN_MAX_AGE,
        )
        .await?;
    let missing: Vec<i64> = row.get(2);
    Ok(if missing.is_empty() {
        Notified::Written(row.get::<_, i64>(1) as u64)
    } else {
        Notified::Missing(missing)
    })
}
