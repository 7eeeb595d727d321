//! The `webhooks` and `webhook_deliveries` tables.
//!
//! Endpoints are read without their secrets ([`Webhook`]): the API sets a secret (when it
//! creates or rotates one) but never reads it back, and its database role may not. Only the
//! worker reads them, to sign ([`signing_endpoint`]).

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::page::{Page, PageRequest};
use crate::sql::{AsClient, Sql, StoreError};

#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    pub paused: bool,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Until when a rotated-out secret signs beside the current one.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

impl From<&Row> for Webhook {
    fn from(row: &Row) -> Self {
        Webhook {
            id: row.get("id"),
            url: row.get("url"),
            event_types: row.get("event_types"),
            description: row.get("description"),
            paused: row.get("paused"),
            disabled_at: row.get("disabled_at"),
            disabled_reason: row.get("disabled_reason"),
            created_at: row.get("created_at"),
            previous_secret_expires_at: row.get("previous_secret_expires_at"),
        }
    }
}

const COLUMNS: &str =
    "id, url, event_types, description, paused, disabled_at, disabled_reason, created_at,
     previous_secret_expires_at";

/// How long a rotated secret goes on signing beside the new one, so that receivers can
/// switch without failing a delivery.
pub const SECRET_OVERLAP_HOURS: i32 = 24;

pub async fn insert_webhook<C: AsClient>(
    db: &Sql<C>,
    url: &str,
    event_types: &[String],
    description: &str,
    secret: &str,
) -> Result<Webhook, StoreError> {
    let sql = format!(
        "insert into webhooks (url, event_types, description, secret) values ($1, $2, $3, $4)
         returning {COLUMNS}"
    );
    let row = db
        .query_one(&sql, &[&url, &event_types, &description, &secret])
        .await?;
    Ok(Webhook::from(&row))
}

/// Changes to an endpoint; `None` keeps a value. Resuming (`paused: Some(false)`) also
/// clears a disablement (after a 410 Gone).
#[derive(Debug, Default)]
pub struct WebhookPatch<'a> {
    pub url: Option<&'a str>,
    pub event_types: Option<&'a [String]>,
    pub description: Option<&'a str>,
    pub paused: Option<bool>,
    /// A new secret; the old one signs beside it for [`SECRET_OVERLAP_HOURS`].
    pub secret: Option<&'a str>,
}

pub async fn update_webhook<C: AsClient>(
    db: &Sql<C>,
    id: Uuid,
    patch: &WebhookPatch<'_>,
) -> Result<Option<Webhook>, StoreError> {
    let sql = format!(
        "update webhooks set
             url = coalesce($2, url),
             event_types = coalesce($3, event_types),
             description = coalesce($4, description),
             paused = coalesce($5, paused),
             previous_secret = case when $6::text is null then previous_secret else secret end,
             previous_secret_expires_at = case when $6::text is null then previous_secret_expires_at
                 else now() + make_interval(hours => $7) end,
             secret = coalesce($6, secret),
             disabled_at = case when $5 = false then null else disabled_at end,
             disabled_reason = case when $5 = false then null else disabled_reason end,
             updated_at = now()
         where id = $1
         returning {COLUMNS}"
    );
    let row = db
        .query_opt(
            &sql,
            &[
                &id,
                &patch.url,
                &patch.event_types,
                &patch.description,
                &patch.paused,
                &patch.secret,
                &SECRET_OVERLAP_HOURS,
            ],
        )
        .await?;
    Ok(row.as_ref().map(Webhook::from))
}

pub async fn delete_webhook<C: AsClient>(db: &Sql<C>, id: Uuid) -> Result<bool, StoreError> {
    Ok(db
        .execute("delete from webhooks where id = $1", &[&id])
        .await?
        == 1)
}

pub async fn webhook_by_id<C: AsClient>(
    db: &Sql<C>,
    id: Uuid,
) -> Result<Option<Webhook>, StoreError> {
    let sql = format!("select {COLUMNS} from webhooks where id = $1");
    Ok(db
        .query_opt(&sql, &[&id])
        .await?
        .as_ref()
        .map(Webhook::from))
}

/// An endpoint as a delivery needs it: where, whether it takes deliveries, and the secrets
/// to sign with (the current one first, then a rotated one still in its overlap; Debug never
/// prints them).
#[derive(Debug, Clone)]
pub struct SigningEndpoint {
    pub id: Uuid,
    pub url: String,
    pub active: bool,
    pub secrets: Vec<secrecy::SecretString>,
}

/// The worker's view of an endpoint, secrets included.
pub async fn signing_endpoint<C: AsClient>(
    db: &Sql<C>,
    id: Uuid,
) -> Result<Option<SigningEndpoint>, StoreError> {
    let row = db
        .query_opt(
            "select id, url, not paused and disabled_at is null as active,
                    array_remove(array[secret,
                        case when previous_secret_expires_at > now() then previous_secret end],
                        null) as secrets
             from webhooks where id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|row| SigningEndpoint {
        id: row.get("id"),
        url: row.get("url"),
        active: row.get("active"),
        secrets: row
            .get::<_, Vec<String>>("secrets")
            .into_iter()
            .map(secrecy::SecretString::from)
            .collect(),
    }))
}

pub async fn list_webhooks<C: AsClient>(db: &Sql<C>) -> Result<Vec<Webhook>, StoreError> {
    let sql = format!("select {COLUMNS} from webhooks order by created_at, id");
    Ok(db
        .query(&sql, &[])
        .await?
        .iter()
        .map(Webhook::from)
        .collect())
}

/// Disables an endpoint (it answered 410 Gone): no more deliveries until it is resumed.
pub async fn disable_webhook<C: AsClient>(
    db: &Sql<C>,
    id: Uuid,
    reason: &str,
) -> Result<(), StoreError> {
    db.execute(
        "update webhooks set disabled_at = now(), disabled_reason = $2, updated_at = now() where id = $1",
        &[&id, &reason],
    )
    .await?;
    Ok(())
}

/// One delivery attempt, as recorded.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub attempt: i32,
    pub status_code: Option<i32>,
    pub duration_ms: i32,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
}

pub struct NewDelivery<'a> {
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub job_id: i64,
    pub attempt: i32,
    pub status_code: Option<i32>,
    pub duration_ms: i32,
    pub error: Option<&'a str>,
}

pub async fn record_delivery<C: AsClient>(
    db: &Sql<C>,
    d: &NewDelivery<'_>,
) -> Result<(), StoreError> {
    db.execute(
        "insert into webhook_deliveries (webhook_id, event_id, job_id, attempt, status_code, duration_ms, error)
         select $1, $2, $3, $4, $5, $6, $7 where exists (select 1 from webhooks where id = $1)",
        &[&d.webhook_id, &d.event_id, &d.job_id, &d.attempt, &d.status_code, &d.duration_ms, &d.error],
    )
    .await?;
    Ok(())
}

/// A page of an endpoint's delivery attempts, newest first. (Ordered by `(created_at, id)`;
/// the cursor's id is the delivery id as a UUID-free position, see [`delivery_position`].)
pub async fn list_deliveries<C: AsClient>(
    db: &Sql<C>,
    webhook_id: Uuid,
    page: &PageRequest,
) -> Result<Page<Delivery>, StoreError> {
    let (after_at, after_id) = page.after_params();
    // Delivery ids are numbers; the page position's uuid carries them in its low 64 bits.
    let after_num = after_id.as_u64_pair().1.min(i64::MAX as u64) as i64;
    let rows = db
        .query(
            "select id, webhook_id, event_id, attempt, status_code, duration_ms, error, created_at
             from webhook_deliveries
             where webhook_id = $1 and (created_at, id) < ($2, $3)
             order by created_at desc, id desc
             limit $4",
            &[&webhook_id, &after_at, &after_num, &page.limit()],
        )
        .await?;
    let rows = rows
        .iter()
        .map(|r| Delivery {
            id: r.get("id"),
            webhook_id: r.get("webhook_id"),
            event_id: r.get("event_id"),
            attempt: r.get("attempt"),
            status_code: r.get("status_code"),
            duration_ms: r.get("duration_ms"),
            error: r.get("error"),
            created_at: r.get("created_at"),
        })
        .collect();
    Ok(Page::from_rows(rows, page))
}

/// The page position of a delivery: its time and its id in a UUID's low 64 bits.
pub fn delivery_position(d: &Delivery) -> crate::page::Position {
    crate::page::Position {
        created_at: d.created_at,
        id: Uuid::from_u64_pair(0, d.id as u64),
    }
}
