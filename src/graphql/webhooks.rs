//! Webhook endpoints (admin only): register, change, pause, rotate the secret, delete, and
//! read each endpoint's delivery attempts. The signing secret is shown once, when created
//! or rotated. Where a URL may point is enforced at delivery time by the worker (private
//! networks are refused unless allowed); here the URL's form is checked.

use async_graphql::{Context, InputObject, Object, SimpleObject, ID};
use base64::Engine;
use chrono::{DateTime, Utc};
use reviews_db::page::Position;
use reviews_db::{webhooks, Db};

use super::admin::require_admin;
use super::cursor::{page_complexity, page_request, parse_id};
use super::input::valid_text;
use super::types::{connection, Paged};
use crate::error::{ApiError, ApiResult};

/// The event types an endpoint may subscribe to.
pub const EVENT_TYPES: [&str; 3] = ["review.created", "review.updated", "review.deleted"];

pub struct Webhook(webhooks::Webhook);

#[Object]
impl Webhook {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn url(&self) -> &str {
        &self.0.url
    }
    /// Which events it receives: review.created, review.updated, review.deleted.
    async fn event_types(&self) -> &[String] {
        &self.0.event_types
    }
    async fn description(&self) -> &str {
        &self.0.description
    }
    /// A paused endpoint gets no deliveries (events while paused are not kept for it).
    async fn paused(&self) -> bool {
        self.0.paused
    }
    /// Set when the endpoint answered 410 Gone; resuming (`paused: false`) clears it.
    async fn disabled_at(&self) -> Option<DateTime<Utc>> {
        self.0.disabled_at
    }
    async fn disabled_reason(&self) -> Option<&str> {
        self.0.disabled_reason.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// After `rotateSecret`, until when the previous secret goes on signing beside the new one
    /// (24 hours: deliveries carry both signatures, so receivers can switch without failing
    /// one); null when no previous secret signs.
    async fn previous_secret_expires_at(&self) -> Option<DateTime<Utc>> {
        self.0
            .previous_secret_expires_at
            .filter(|expires| *expires > Utc::now())
    }
}

/// A new endpoint and its signing secret (`whsec_…`), shown this once.
#[derive(SimpleObject)]
pub struct CreatedWebhook {
    webhook: Webhook,
    secret: String,
}

/// A changed endpoint; `secret` is the new one when it was rotated, else null.
#[derive(SimpleObject)]
pub struct UpdatedWebhook {
    webhook: Webhook,
    secret: Option<String>,
}

#[derive(SimpleObject)]
pub struct WebhookDelivery {
    id: ID,
    event_id: ID,
    attempt: i32,
    /// The endpoint's HTTP status; null when there was no response (timeout, refused).
    status_code: Option<i32>,
    duration_ms: i32,
    error: Option<String>,
    created_at: DateTime<Utc>,
}

#[derive(InputObject)]
pub struct CreateWebhookInput {
    /// http(s) URL, at most 2000 characters, no credentials in it.
    url: String,
    event_types: Vec<String>,
    #[graphql(default)]
    description: String,
}

#[derive(InputObject)]
pub struct UpdateWebhookInput {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    description: Option<String>,
    /// Pause (true) or resume (false).
    paused: Option<bool>,
    /// Issue a new signing secret (returned once). The previous one goes on signing beside it
    /// for 24 hours (`previousSecretExpiresAt`).
    #[graphql(default)]
    rotate_secret: bool,
}

fn valid_url(url: &str) -> ApiResult<&str> {
    let url = url.trim();
    if url.is_empty() || url.len() > 2000 {
        return Err(ApiError::bad_input("url must be 1 to 2000 characters"));
    }
    let parsed = url::Url::parse(url)
        .map_err(|e| ApiError::bad_input(format!("url is not a valid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ApiError::bad_input("url must use http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::bad_input("url must have a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ApiError::bad_input("url must not contain credentials"));
    }
    Ok(url)
}

fn valid_event_types(types: &[String]) -> ApiResult<()> {
    if types.is_empty() {
        return Err(ApiError::bad_input(
            "eventTypes must name at least one event type",
        ));
    }
    if let Some(unknown) = types.iter().find(|t| !EVENT_TYPES.contains(&t.as_str())) {
        return Err(ApiError::bad_input(format!(
            "unknown event type {unknown:?}; known: {}",
            EVENT_TYPES.join(", ")
        )));
    }
    Ok(())
}

fn valid_description(description: &str) -> ApiResult<&str> {
    if description.trim().is_empty() {
        return Ok("");
    }
    valid_text("description", description, 500)
}

/// A fresh Standard Webhooks secret: `whsec_` and 24 random bytes in base64.
fn new_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[derive(Default)]
pub struct WebhookQuery;

#[Object]
impl WebhookQuery {
    /// Every webhook endpoint (admin only).
    async fn webhooks(&self, ctx: &Context<'_>) -> ApiResult<Vec<Webhook>> {
        require_admin(ctx)?;
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        Ok(webhooks::list_webhooks(&conn)
            .await?
            .into_iter()
            .map(Webhook)
            .collect())
    }

    /// An endpoint's delivery attempts, newest first (admin only).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        webhook_id: ID,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Paged<WebhookDelivery>> {
        require_admin(ctx)?;
        let webhook_id = parse_id(&webhook_id, "webhook")?;
        let request = page_request(first, after.as_deref())?;
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        if webhooks::webhook_by_id(&conn, webhook_id).await?.is_none() {
            return Err(ApiError::NotFound("webhook not found".into()));
        }
        let page = webhooks::list_deliveries(&conn, webhook_id, &request).await?;
        let position = |d: &webhooks::Delivery| -> Position { webhooks::delivery_position(d) };
        Ok(connection(page, after.is_some(), position, |d| {
            WebhookDelivery {
                id: ID(d.id.to_string()),
                event_id: ID(d.event_id.to_string()),
                attempt: d.attempt,
                status_code: d.status_code,
                duration_ms: d.duration_ms,
                error: d.error,
                created_at: d.created_at,
            }
        }))
    }
}

#[derive(Default)]
pub struct WebhookMutation;

#[Object]
impl WebhookMutation {
    /// Registers an endpoint (admin only). The secret is shown this once.
    async fn create_webhook(
        &self,
        ctx: &Context<'_>,
        input: CreateWebhookInput,
    ) -> ApiResult<CreatedWebhook> {
        require_admin(ctx)?;
        let url = valid_url(&input.url)?;
        valid_event_types(&input.event_types)?;
        let description = valid_description(&input.description)?;
        let secret = new_secret();
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        let webhook =
            webhooks::insert_webhook(&conn, url, &input.event_types, description, &secret).await?;
        Ok(CreatedWebhook {
            webhook: Webhook(webhook),
            secret,
        })
    }

    /// Changes an endpoint: URL, event types, description, pause or resume, or a new secret
    /// (admin only).
    async fn update_webhook(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateWebhookInput,
    ) -> ApiResult<UpdatedWebhook> {
        require_admin(ctx)?;
        let id = parse_id(&id, "webhook")?;
        let url = input.url.as_deref().map(valid_url).transpose()?;
        if let Some(types) = &input.event_types {
            valid_event_types(types)?;
        }
        let description = input
            .description
            .as_deref()
            .map(valid_description)
            .transpose()?;
        let secret = input.rotate_secret.then(new_secret);
        let patch = webhooks::WebhookPatch {
            url,
            event_types: input.event_types.as_deref(),
            description,
            paused: input.paused,
            secret: secret.as_deref(),
        };
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        let webhook = webhooks::update_webhook(&conn, id, &patch)
            .await?
            .ok_or_else(|| ApiError::NotFound("webhook not found".into()))?;
        Ok(UpdatedWebhook {
            webhook: Webhook(webhook),
            secret,
        })
    }

    /// Deletes an endpoint and its delivery records (admin only).
    async fn delete_webhook(&self, ctx: &Context<'_>, id: ID) -> ApiResult<ID> {
        require_admin(ctx)?;
        let webhook_id = parse_id(&id, "webhook")?;
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        if !webhooks::delete_webhook(&conn, webhook_id).await? {
            return Err(ApiError::NotFound("webhook not found".into()));
        }
        Ok(id)
    }
}
