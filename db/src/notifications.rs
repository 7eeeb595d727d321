//! The `notifications` table: what users are told (written by the worker, read by the API).

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

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

/// A notification to write, keyed by the event that caused it.
pub struct NewNotification<'a> {
    pub event_id: Uuid,
    pub kind: &'a str,
    pub review_id: Uuid,
    pub product_id: Uuid,
    /// The review's author: the owner is not told about their own reviews.
    pub author_id: &'a str,
}

/// Tells the product's owner about a review event, once per event: a redelivered event
/// inserts nothing. Returns whether a row was written (false for duplicates, for owners
/// reviewing their own product, and for products that are gone).
pub async fn notify_product_owner<C: AsClient>(
    db: &Sql<C>,
    n: &NewNotification<'_>,
) -> Result<bool, StoreError> {
    let written = db
        .execute(
            "insert into notifications (recipient_id, kind, review_id, product_id, event_id)
             select p.owner_id, $2, $3, p.id, $1
             from products p
             where p.id = $4 and p.owner_id <> $5
             on conflict (event_id, recipient_id, kind) do nothing",
            &[
                &n.event_id,
                &n.kind,
                &n.review_id,
                &n.product_id,
                &n.author_id,
            ],
        )
        .await?;
    Ok(written == 1)
}
