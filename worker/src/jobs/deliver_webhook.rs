//! `deliver_webhook`: POSTs one event to one endpoint, signed the Standard Webhooks way.
//!
//! - Headers: `webhook-id` (the event id, the same on every retry, so receivers can
//!   deduplicate), `webhook-timestamp` (Unix seconds), `webhook-signature`
//!   (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the secret's base64-decoded
//!   bytes after `whsec_`).
//! - 2xx is success; 410 Gone disables the endpoint; anything else, and timeouts, retry on
//!   the `deliver_webhook` schedule, no sooner than a `Retry-After` asks (within the cap).
//! - Safety: connect and total timeouts, a cap on how much of the response is read, no
//!   redirects, and destinations that resolve to private, loopback or link-local addresses
//!   are refused unless allowed; the connection goes to the address that was checked.
//! - One slow endpoint cannot hold every runner slot: each endpoint has a concurrency limit,
//!   and a job that finds its endpoint busy is deferred without spending an attempt.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use reviews_db::webhooks::{disable_webhook, record_delivery, webhook_by_id, NewDelivery};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::{parse_payload, JobContext, JobError};

pub const KIND: &str = "deliver_webhook";

/// Most bytes of a response body read (the rest is dropped unread).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, clap::Args)]
pub struct WebhookSettings {
    /// Allow webhook URLs that resolve to private, loopback or link-local addresses.
    #[arg(long = "webhook-allow-private-networks", env = "WEBHOOK_ALLOW_PRIVATE_NETWORKS",
          value_name = "WEBHOOK_ALLOW_PRIVATE_NETWORKS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_private_networks: bool,
    /// Connect timeout of a delivery.
    #[arg(long = "webhook-connect-timeout", env = "WEBHOOK_CONNECT_TIMEOUT", value_name = "WEBHOOK_CONNECT_TIMEOUT",
          default_value = "5s", value_parser = crate::config::parse_duration)]
    pub connect_timeout: Duration,
    /// Total timeout of a delivery (must be shorter than JOB_TIMEOUT).
    #[arg(long = "webhook-timeout", env = "WEBHOOK_TIMEOUT", value_name = "WEBHOOK_TIMEOUT",
          default_value = "10s", value_parser = crate::config::parse_duration)]
    pub timeout: Duration,
    /// Deliveries in flight at once to one endpoint, per worker.
    #[arg(
        long = "webhook-concurrency-per-endpoint",
        env = "WEBHOOK_CONCURRENCY_PER_ENDPOINT",
        value_name = "WEBHOOK_CONCURRENCY_PER_ENDPOINT",
        default_value_t = 4
    )]
    pub concurrency_per_endpoint: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            allow_private_networks: false,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            concurrency_per_endpoint: 4,
        }
    }
}

#[derive(Deserialize)]
struct Payload {
    webhook_id: Uuid,
    event_id: Uuid,
    event_type: String,
    occurred_at: Value,
    data: Value,
}

/// Delivers webhooks; one per worker, shared by its runner tasks.
pub struct Sender {
    settings: WebhookSettings,
    busy: Mutex<HashMap<Uuid, Arc<Semaphore>>>,
}

/// The Standard Webhooks signature of a body: `v1,<base64 HMAC-SHA256("id.ts.body")>`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|_| "the endpoint's secret is not base64".to_owned())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// Whether an address is one a webhook must not reach unless allowed: loopback, private,
/// link-local, unspecified, carrier-grade NAT or unique-local.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
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
            .find(|a| self.settings.allow_private_networks || !is_internal(a.ip()));
        match allowed {
            Some(address) => Ok((host, *address)),
            None => Err(format!(
                "{host} resolves to a private, loopback or link-local address; refused (WEBHOOK_ALLOW_PRIVATE_NETWORKS)"
            )),
        }
    }

    pub async fn deliver(&self, job: &JobContext) -> Result<(), JobError> {
        let p: Payload = parse_payload(&job.payload)?;
        let webhook = {
            let conn = job.db.conn().await?;
            webhook_by_id(&conn, p.webhook_id).await?
        };
        let Some(webhook) = webhook.filter(|w| !w.paused && w.disabled_at.is_none()) else {
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
        let outcome = self.post(&webhook.url, &webhook.secret, &p).await;
        let duration_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
        let (status, error) = match &outcome {
            Ok(response) => (Some(i32::from(response.status)), None),
            Err(error) => (None, Some(error.clone())),
        };
        let error_text = error.clone().or_else(|| match &outcome {
            Ok(r) if !(200..300).contains(&r.status) => {
                Some(format!("endpoint answered {}", r.status))
            }
            _ => None,
        });
        {
            let conn = job.db.conn().await?;
            record_delivery(
                &conn,
                &NewDelivery {
                    webhook_id: webhook.id,
                    event_id: p.event_id,
                    job_id: job.job_id,
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
                let conn = job.db.conn().await?;
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
            Err(message) if message.starts_with("refused:") => {
                Err(JobError::Permanent(anyhow::anyhow!(message)))
            }
            Err(message) => Err(JobError::Retryable(anyhow::anyhow!(message))),
        }
    }

    async fn post(&self, url: &str, secret: &str, p: &Payload) -> Result<Response, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("refused: invalid URL: {e}"))?;
        let (host, address) = self
            .destination(&url)
            .await
            .map_err(|e| format!("refused: {e}"))?;
        let body = serde_json::to_vec(&json!({
            "id": p.event_id,
            "type": p.event_type,
            "occurredAt": p.occurred_at,
            "data": {"old": p.data.get("old"), "new": p.data.get("new")},
        }))
        .map_err(|e| e.to_string())?;
        let id = p.event_id.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign(secret, &id, timestamp, &body).map_err(|e| format!("refused: {e}"))?;
        let client = reqwest::Client::builder()
            .connect_timeout(self.settings.connect_timeout)
            .timeout(self.settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            // Connect to the address that was checked, not to whatever DNS says next.
            .resolve(&host, address)
            .build()
            .map_err(|e| e.to_string())?;
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
                    "timed out".to_owned()
                } else {
                    format!("request failed: {e}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
