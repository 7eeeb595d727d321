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
