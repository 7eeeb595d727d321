//! Sends one delivery: the endpoint's checks, its concurrency limit, the signed request and
//! what its answer means for the job.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reviews_db::webhooks::{disable_webhook, record_delivery, signing_endpoint, NewDelivery};
use reviews_db::Db;
use serde_json::json;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::{is_global_unicast, sign, Payload};
use crate::config::WebhookSettings;
use crate::jobs::{Job, JobError};

/// Most bytes of a response body read (the rest is dropped unread).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why a delivery was not made, or not answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// It must not be made (an invalid URL, a destination that is not allowed, a secret that
    /// cannot sign): it never will be, so the job becomes a dead letter at once.
    #[error("refused: {0}")]
    Refused(String),
    #[error("timed out")]
    TimedOut,
    /// No answer (connection refused, reset, TLS failure…): retried on schedule.
    #[error("request failed: {0}")]
    Failed(String),
}

/// Delivers webhooks; one per worker, shared by its runner tasks.
pub struct Sender {
    settings: WebhookSettings,
    busy: Mutex<HashMap<Uuid, Arc<Semaphore>>>,
}

impl Sender {
    pub fn new(settings: WebhookSettings) -> Self {
        Sender {
            settings,
            busy: Mutex::default(),
        }
    }

    fn slots(&self, webhook: Uuid) -> Arc<Semaphore> {
        self.busy
            .lock()
            .expect("webhook slots lock poisoned")
            .entry(webhook)
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    self.settings.concurrency_per_endpoint.max(1),
                ))
            })
            .clone()
    }

    /// Checks the URL and where its host resolves; returns the host and the address to use.
    async fn destination(&self, url: &reqwest::Url) -> Result<(String, SocketAddr), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("unsupported scheme {}", url.scheme()));
        }
        let host = url.host_str().ok_or("the URL has no host")?.to_owned();
        let port = url.port_or_known_default().ok_or("the URL has no port")?;
        let lookup = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((lookup.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        let allowed = addresses
            .iter()
            .find(|a| self.settings.allow_private_networks || is_global_unicast(a.ip()));
        match allowed {
            Some(address) => Ok((host, *address)),
            None => Err(format!(
                "{host} resolves to no global unicast address (private, loopback, link-local, reserved…); refused (WEBHOOK_ALLOW_PRIVATE_NETWORKS)"
            )),
        }
    }

    pub async fn deliver(&self, db: &Db, job: &Job<Payload>) -> Result<(), JobError> {
        let p = &job.payload;
        let webhook = {
            let conn = db.conn().await?;
            signing_endpoint(&conn, p.webhook_id).await?
        };
        let Some(webhook) = webhook.filter(|w| w.active) else {
            tracing::info!(webhook.id = %p.webhook_id, "endpoint deleted, paused or disabled; delivery skipped");
            return Ok(());
        };
        let slots = self.slots(webhook.id);
        let Ok(_slot) = slots.try_acquire() else {
            return Err(JobError::Deferred {
                after: Duration::from_millis(500),
                reason: format!("endpoint {} is at its concurrency limit", webhook.id),
            });
        };

        let started = Instant::now();
        let outcome = self.post(&webhook.url, &webhook.secrets, p).await;
        let duration_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
        let (status, error) = match &outcome {
            Ok(response) => (Some(i32::from(response.status)), None),
            Err(error) => (None, Some(error.to_string())),
        };
        let error_text = error.clone().or_else(|| match &outcome {
            Ok(r) if !(200..300).contains(&r.status) => {
                Some(format!("endpoint answered {}", r.status))
            }
            _ => None,
        });
        {
            let conn = db.conn().await?;
            record_delivery(
                &conn,
                &NewDelivery {
                    webhook_id: webhook.id,
                    event_id: p.event_id,
                    job_id: job.id,
                    attempt: job.attempt,
                    status_code: status,
                    duration_ms,
                    error: error_text.as_deref(),
                },
            )
            .await?;
        }
        metrics::counter!("webhook_deliveries_total", "outcome" => match &outcome {
            Ok(r) if (200..300).contains(&r.status) => "success",
            Ok(_) => "http_error",
            Err(_) => "failed",
        })
        .increment(1);

        match outcome {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) if r.status == 410 => {
                let conn = db.conn().await?;
                disable_webhook(&conn, webhook.id, "the endpoint answered 410 Gone").await?;
                tracing::warn!(webhook.id = %webhook.id, "endpoint answered 410 Gone; disabled");
                Ok(())
            }
            Ok(r) => {
                let error = anyhow::anyhow!("endpoint answered {}", r.status);
                match r.retry_after {
                    Some(after) => Err(JobError::RetryAfter { after, error }),
                    None => Err(JobError::Retryable(error)),
                }
            }
            Err(error @ DeliveryError::Refused(_)) => Err(JobError::Permanent(error.into())),
            Err(error) => Err(JobError::Retryable(error.into())),
        }
    }

    /// Posts the event, signed with each of `secrets` (several during a rotation's overlap).
    async fn post(
        &self,
        url: &str,
        secrets: &[secrecy::SecretString],
        p: &Payload,
    ) -> Result<Response, DeliveryError> {
        let url = reqwest::Url::parse(url)
            .map_err(|e| DeliveryError::Refused(format!("invalid URL: {e}")))?;
        let (host, address) = self
            .destination(&url)
            .await
            .map_err(DeliveryError::Refused)?;
        let body = serde_json::to_vec(&json!({
            "id": p.event_id,
            "type": p.event_type,
            "occurredAt": p.occurred_at,
            "data": {"old": p.data.get("old"), "new": p.data.get("new")},
        }))
        .map_err(|e| DeliveryError::Refused(format!("cannot encode the event: {e}")))?;
        let id = p.event_id.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let signature = secrets
            .iter()
            .map(|secret| {
                sign(
                    secrecy::ExposeSecret::expose_secret(secret),
                    &id,
                    timestamp,
                    &body,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(DeliveryError::Refused)?
            .join(" ");
        let client = reqwest::Client::builder()
            .connect_timeout(self.settings.connect_timeout)
            .timeout(self.settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            // HTTP(S)_PROXY would send the request to the proxy, not to the address that was
            // checked: a proxy could reach what the guard refuses.
            .no_proxy()
            // Connect to the address that was checked, not to whatever DNS says next.
            .resolve(&host, address)
            .build()
            .map_err(|e| DeliveryError::Failed(e.to_string()))?;
        let mut response = client
            .post(url)
            .header("content-type", "application/json")
            .header("user-agent", "reviews-webhooks/1")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    DeliveryError::TimedOut
                } else {
                    DeliveryError::Failed(e.to_string())
                }
            })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read at most MAX_RESPONSE_BYTES; the rest is never read.
        let mut read = 0;
        while read < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
        Ok(Response {
            status,
            retry_after,
        })
    }
}

struct Response {
    status: u16,
    retry_after: Option<Duration>,
}
