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
use reviews_db::webhooks::{disable_webhook, record_delivery, signing_endpoint, NewDelivery};
use reviews_db::Db;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::{Job, JobError, JobKind};
use crate::config::WebhookSettings;
use crate::retry::RetryPolicy;

/// Most bytes of a response body read (the rest is dropped unread).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// One event for one endpoint.
#[derive(Debug, Serialize, Deserialize)]
pub struct Payload {
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub occurred_at: Value,
    /// The outbox row's `{"old": …, "new": …}`.
    pub data: Value,
    pub actor_id: Option<String>,
    pub request_id: Option<String>,
}

/// The kind: one delivery per job, through the worker's [`Sender`].
pub struct DeliverWebhook {
    sender: Sender,
}

impl DeliverWebhook {
    pub fn new(settings: WebhookSettings) -> Self {
        DeliverWebhook {
            sender: Sender::new(settings),
        }
    }
}

impl JobKind for DeliverWebhook {
    const NAME: &'static str = "deliver_webhook";
    type Payload = Payload;
    /// Remote systems get a longer, gentler schedule: 12 attempts from 5 s doubling to 1 h.
    const DEFAULT_POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 12,
        base_delay_ms: 5_000,
        multiplier: 2.0,
        max_delay_ms: 3_600_000,
        jitter: 0.3,
    };
    const IN_BATCHES: bool = false;
    // One job per event and endpoint that wants its type, is neither paused nor disabled,
    // and was registered before the event occurred; none for a replay without --webhooks.
    const FROM_EVENTS: &'static str = "
        select c.event_id, null::text,
               jsonb_build_object(
                   'webhook_id', w.id,
                   'event_id', c.event_id,
                   'event_type', c.event_type,
                   'occurred_at', c.occurred_at,
                   'data', c.payload,
                   'actor_id', c.actor_id,
                   'request_id', c.request_id),
               now()
        from claimed c
        join webhooks w on c.event_type = any (w.event_types)
        where c.webhooks and not w.paused and w.disabled_at is null
          and w.created_at <= c.occurred_at";

    /// Delivers each job's event (the runner passes one job per call).
    async fn run(&self, db: Db, jobs: Vec<Job<Payload>>) -> Vec<Result<(), JobError>> {
        let mut results = Vec::with_capacity(jobs.len());
        for job in &jobs {
            results.push(self.sender.deliver(&db, job).await);
        }
        results
    }
}

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

/// Networks a webhook never reaches unless `WEBHOOK_ALLOW_PRIVATE_NETWORKS`: everything but
/// global unicast. IPv4: "this" network, private, shared (carrier-grade NAT), loopback, link
/// local, IETF protocol assignments, documentation, benchmarking, the 6to4 relay, multicast
/// and reserved (broadcast included). IPv6 outside 2000::/3 (so loopback, unspecified,
/// IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, unique local, link local, site local
/// and multicast), and inside it the ranges that tunnel to IPv4 (6to4 2002::/16, Teredo
/// 2001::/32), ORCHID and documentation. An IPv4-mapped address is judged as IPv4.
static NOT_GLOBAL: std::sync::LazyLock<Vec<ipnet::IpNet>> = std::sync::LazyLock::new(|| {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "2001::/32",
        "2001:10::/28",
        "2001:20::/28",
        "2001:db8::/32",
        "2002::/16",
        "3fff::/20",
    ]
    .iter()
    .map(|net| net.parse().expect("a valid network"))
    .collect()
});

/// Whether a webhook may reach `ip` by default: a global unicast address only.
pub fn is_global_unicast(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None if (v6.segments()[0] & 0xe000) != 0x2000 => return false,
            None => ip,
        },
        v4 => v4,
    };
    !NOT_GLOBAL.iter().any(|net| net.contains(&ip))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_global_unicast_addresses_are_reachable_by_default() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "192.0.0.8",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "2001:0:4136:e378::1",
            "2001:db8::1",
        ] {
            assert!(!is_global_unicast(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34"] {
            assert!(is_global_unicast(ip.parse().unwrap()), "{ip}");
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
