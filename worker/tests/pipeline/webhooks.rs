//! Webhook delivery against real HTTP receivers in this process: signatures (checked by an
//! independent Python implementation), at-least-once delivery per event and endpoint, retries
//! and dead letters, replay, pausing, 410 Gone, Retry-After, isolation of a hanging
//! endpoint, and hostile answers (a redirect, a body that never ends).

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reviews_worker::config::WebhookSettings;
use reviews_worker::jobs::JobRegistry;
use uuid::Uuid;
use warp::Filter;

use crate::support::*;

/// One delivery as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: bytes::Bytes,
    at: Instant,
}

/// An HTTP receiver: records every delivery and answers with `status` (after `delay`).
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    retry_after: Arc<Mutex<Option<String>>>,
    delay: Arc<Mutex<Duration>>,
}

impl Receiver {
    async fn start() -> Self {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(200));
        let retry_after: Arc<Mutex<Option<String>>> = Arc::default();
        let delay: Arc<Mutex<Duration>> = Arc::default();
        let state = (
            received.clone(),
            status.clone(),
            retry_after.clone(),
            delay.clone(),
        );
        let route = warp::post()
            .and(warp::header::<String>("webhook-id"))
            .and(warp::header::<String>("webhook-timestamp"))
            .and(warp::header::<String>("webhook-signature"))
            .and(warp::body::bytes())
            .then(move |id, timestamp, signature, body| {
                let (received, status, retry_after, delay) = state.clone();
                async move {
                    let wait = *delay.lock().unwrap();
                    tokio::time::sleep(wait).await;
                    received.lock().unwrap().push(Received {
                        id,
                        timestamp,
                        signature,
                        body,
                        at: Instant::now(),
                    });
                    let code =
                        warp::http::StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
                    let mut response = warp::http::Response::builder().status(code);
                    if let Some(after) = retry_after.lock().unwrap().clone() {
                        response = response.header("retry-after", after);
                    }
                    response.body(String::new()).unwrap()
                }
            });
        let (addr, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
        tokio::spawn(server);
        Receiver {
            addr,
            received,
            status,
            retry_after,
            delay,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Webhook settings for tests: loopback receivers allowed, short timeouts.
fn handlers(timeout: Duration) -> JobRegistry {
    JobRegistry::standard().with_webhooks(WebhookSettings {
        allow_private_networks: true,
        connect_timeout: Duration::from_secs(1),
        timeout,
        concurrency_per_endpoint: 2,
    })
}

async fn register(p: &TestPipeline, url: &str, types: &[&str]) -> (Uuid, String) {
    let secret = format!("whsec_{}", base64_of(Uuid::new_v4().as_bytes()));
    let conn = p.db.conn().await.unwrap();
    let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
    let webhook = reviews_db::webhooks::insert_webhook(&conn, url, &types, "test", &secret)
        .await
        .unwrap();
    (webhook.id, secret)
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn wait_for(mut done: impl FnMut() -> bool, limit: Duration, what: &str) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Checks a delivery with docs/verify_webhook.py (Python's hmac, not our code).
fn python_verifies(secret: &str, r: &Received) -> bool {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/verify_webhook.py");
    let mut child = Command::new("python3")
        .args([script, secret, &r.id, &r.timestamp, &r.signature])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&r.body).unwrap();
    child.wait().unwrap().success()
}

#[tokio::test]
async fn every_event_reaches_every_matching_endpoint_signed_so_python_can_verify_it() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let (a, b, c) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let (_, secret_a) = register(&p, &a.url(), &["review.created", "review.deleted"]).await;
    let (_, secret_b) = register(&p, &b.url(), &["review.created"]).await;
    register(&p, &c.url(), &["review.updated"]).await;
    let worker = p
        .start_worker_with(p.args(), handlers(Duration::from_secs(5)))
        .await;

    let reviews = p.add_reviews(product, authors("r", 5)).await;
    p.client()
        .await
        .execute("delete from reviews where id = $1", &[&reviews[0]])
        .await
        .unwrap();
    p.wait_until_idle(Duration::from_secs(20)).await;
    worker.stop().await;

    assert_eq!(c.count(), 0, "nobody wanted updates");
    let event_ids: Vec<String> = p
        .client()
        .await
        .query("select event_id::text from outbox order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (receiver, secret, expected) in [(&a, &secret_a, 6), (&b, &secret_b, 5)] {
        let got = receiver.all();
        let mut ids: Vec<String> = got.iter().map(|r| r.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), expected, "one delivery per event");
        assert!(
            ids.iter().all(|id| event_ids.contains(id)),
            "webhook-id is the event id"
        );
        for delivery in &got {
            assert!(
                python_verifies(secret, delivery),
                "signature of {}",
                delivery.id
            );
            assert!(
                !python_verifies("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAA", delivery),
                "a wrong secret must fail"
            );
            let envelope: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
            assert_eq!(envelope["id"], delivery.id);
            assert!(envelope["type"].as_str().unwrap().starts_with("review."));
            assert!(envelope["occurredAt"].is_string());
            assert!(envelope["data"].get("old").is_some() && envelope["data"].get("new").is_some());
        }
    }
    assert_eq!(
        p.count("select count(*) from webhook_deliveries where status_code = 200")
            .await,
        11
    );
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_on_schedule_then_dead_and_replay_delivers_with_the_same_id()
{
    let p = TestPipeline::new().await;
    p.client()
        .await
        .execute(
            "update retry_policies set max_attempts = 3, base_delay_ms = 100, multiplier = 2, max_delay_ms = 1000, jitter = 0
             where kind = 'deliver_webhook'",
            &[],
        )
        .await
        .unwrap();
    let product = p.create_product("owner").await;
    let receiver = Receiver::start().await;
    receiver.status.store(500, Ordering::SeqCst);
    let (webhook, secret) = register(&p, &receiver.url(), &["review.created"]).await;
    let worker = p
        .start_worker_with(p.args(), handlers(Duration::from_secs(5)))
        .await;
    p.add_reviews(product, authors("r", 1)).await;
    p.wait_until_idle(Duration::from_secs(20)).await;

    let attempts = receiver.all();
    assert_eq!(attempts.len(), 3);
    for (gap, nominal) in attempts
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .zip([100u64, 200])
    {
        assert!(
            gap >= Duration::from_millis(nominal),
            "retried after {gap:?}, scheduled {nominal} ms"
        );
    }
    assert!(
        attempts.iter().all(|r| r.id == attempts[0].id),
        "every retry carries the same webhook-id"
    );
    assert_eq!(
        p.count("select count(*) from dead_jobs where kind = 'deliver_webhook'")
            .await,
        1
    );
    assert_eq!(
        p.count(&format!("select count(*) from webhook_deliveries where webhook_id = '{webhook}' and status_code = 500")).await,
        3
    );

    receiver.status.store(204, Ordering::SeqCst);
    let dead: i64 = p
        .client()
        .await
        .query_one("select id from dead_jobs", &[])
        .await
        .unwrap()
        .get(0);
    let conn = p.db.conn().await.unwrap();
    assert!(reviews_db::jobs::replay_dead_job(&conn, dead)
        .await
        .unwrap());
    wait_for(
        || receiver.count() == 4,
        Duration::from_secs(10),
        "the replayed delivery",
    )
    .await;
    p.wait_until_idle(Duration::from_secs(10)).await;
    worker.stop().await;
    let last = receiver.all().pop().unwrap();
    assert_eq!(last.id, attempts[0].id);
    assert!(python_verifies(&secret, &last));
}

#[tokio::test]
async fn a_paused_endpoint_gets_nothing_and_one_answering_410_is_disabled() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let (paused, gone) = (Receiver::start().await, Receiver::start().await);
    let (paused_id, _) = register(&p, &paused.url(), &["review.created"]).await;
    let (gone_id, _) = register(&p, &gone.url(), &["review.created"]).await;
    gone.status.store(410, Ordering::SeqCst);
    let conn = p.db.conn().await.unwrap();
    let patch = reviews_db::webhooks::WebhookPatch {
        paused: Some(true),
        ..Default::default()
    };
    reviews_db::webhooks::update_webhook(&conn, paused_id, &patch)
        .await
        .unwrap();
    let worker = p
        .start_worker_with(p.args(), handlers(Duration::from_secs(5)))
        .await;

    p.add_reviews(product, authors("first", 1)).await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    assert_eq!(gone.count(), 1);
    let disabled = reviews_db::webhooks::webhook_by_id(&conn, gone_id)
        .await
        .unwrap()
        .unwrap();
    assert!(disabled.disabled_at.is_some());

    p.add_reviews(product, authors("second", 3)).await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    worker.stop().await;
    assert_eq!(paused.count(), 0, "a paused endpoint gets nothing");
    assert_eq!(gone.count(), 1, "a disabled endpoint gets nothing more");
    assert_eq!(p.count("select count(*) from dead_jobs").await, 0);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let p = TestPipeline::new().await;
    p.client()
        .await
        .execute("update retry_policies set base_delay_ms = 50, max_delay_ms = 10000, jitter = 0 where kind = 'deliver_webhook'", &[])
        .await
        .unwrap();
    let product = p.create_product("owner").await;
    let receiver = Receiver::start().await;
    receiver.status.store(503, Ordering::SeqCst);
    *receiver.retry_after.lock().unwrap() = Some("1".into());
    register(&p, &receiver.url(), &["review.created"]).await;
    let worker = p
        .start_worker_with(p.args(), handlers(Duration::from_secs(5)))
        .await;
    p.add_reviews(product, authors("r", 1)).await;
    wait_for(
        || receiver.count() >= 1,
        Duration::from_secs(10),
        "the first attempt",
    )
    .await;
    receiver.status.store(200, Ordering::SeqCst);
    wait_for(
        || receiver.count() >= 2,
        Duration::from_secs(10),
        "the retry",
    )
    .await;
    p.wait_until_idle(Duration::from_secs(10)).await;
    worker.stop().await;
    let got = receiver.all();
    assert!(
        got[1].at - got[0].at >= Duration::from_secs(1),
        "retried after {:?}",
        got[1].at - got[0].at
    );
}

#[tokio::test]
async fn an_endpoint_that_hangs_does_not_slow_a_healthy_one() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let (hanging, healthy) = (Receiver::start().await, Receiver::start().await);
    *hanging.delay.lock().unwrap() = Duration::from_secs(30);
    register(&p, &hanging.url(), &["review.created"]).await;
    register(&p, &healthy.url(), &["review.created"]).await;
    let mut args = p.args();
    args.tuning.job_timeout = Duration::from_secs(10);
    args.tuning.lease = Duration::from_secs(20);
    let worker = p
        .start_worker_with(args, handlers(Duration::from_secs(3)))
        .await;

    let started = Instant::now();
    p.add_reviews(product, authors("r", 10)).await;
    wait_for(
        || healthy.count() == 10,
        Duration::from_secs(20),
        "the healthy endpoint's deliveries",
    )
    .await;
    let healthy_done = healthy.all().iter().map(|r| r.at).max().unwrap();
    worker.stop().await;
    // The hanging endpoint's first attempts cannot end before its 3 s timeout; the healthy
    // endpoint had everything long before.
    assert!(
        healthy_done - started < Duration::from_secs(3),
        "healthy deliveries took {:?}",
        healthy_done - started
    );
}

#[tokio::test]
async fn a_url_resolving_to_loopback_is_refused_unless_allowed() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let receiver = Receiver::start().await;
    let (webhook, _) = register(&p, &receiver.url(), &["review.created"]).await;
    // The worker's default settings: private networks not allowed.
    let worker = p.start_worker_with(p.args(), JobRegistry::standard()).await;
    p.add_reviews(product, authors("r", 1)).await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    worker.stop().await;

    assert_eq!(receiver.count(), 0, "nothing may reach a loopback address");
    let error: String = p
        .client()
        .await
        .query_one(
            "select last_error from dead_jobs where kind = 'deliver_webhook'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        error.contains("refused") && error.contains("WEBHOOK_ALLOW_PRIVATE_NETWORKS"),
        "{error}"
    );
    assert_eq!(
        p.count(&format!("select count(*) from webhook_deliveries where webhook_id = '{webhook}' and status_code is null")).await,
        1
    );
}

/// An endpoint of its own: `/moved` answers 307 to `target`, `/endless` answers 200 with a
/// body that never ends.
fn start_hostile_endpoint(target: String) -> SocketAddr {
    let moved = warp::path("moved").map(move || {
        warp::http::Response::builder()
            .status(307)
            .header("location", target.clone())
            .body(warp::hyper::Body::empty())
            .unwrap()
    });
    let endless = warp::path("endless").map(|| {
        let chunks = futures::stream::repeat_with(|| {
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(&[b'x'; 8192]))
        });
        warp::http::Response::new(warp::hyper::Body::wrap_stream(chunks))
    });
    let (addr, server) =
        warp::serve(warp::post().and(moved.or(endless))).bind_ephemeral(([127, 0, 0, 1], 0));
    tokio::spawn(server);
    addr
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_an_endless_response_is_not_read_to_its_end() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let target = Receiver::start().await;
    let hostile = start_hostile_endpoint(target.url());
    let (moved_id, _) = register(&p, &format!("http://{hostile}/moved"), &["review.created"]).await;
    let (endless_id, _) = register(
        &p,
        &format!("http://{hostile}/endless"),
        &["review.created"],
    )
    .await;
    // A timeout the endless body would hit if it were read to its end.
    let worker = p
        .start_worker_with(p.args(), handlers(Duration::from_secs(3)))
        .await;
    p.add_reviews(product, authors("a", 1)).await;

    let job = |webhook: Uuid| {
        format!(
            "select count(*) from jobs where kind = 'deliver_webhook' and payload->>'webhook_id' = '{webhook}' and {{}}"
        )
    };
    let started = Instant::now();
    loop {
        let endless_done = p
            .count(&job(endless_id).replace("{}", "status = 'done'"))
            .await;
        let moved_failed = p
            .count(&job(moved_id).replace("{}", "last_error = 'endpoint answered 307'"))
            .await;
        if endless_done == 1 && moved_failed == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "endless delivery done: {endless_done}, redirected delivery failed: {moved_failed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await;

    assert_eq!(target.count(), 0, "a redirect must not be followed");
    assert_eq!(
        p.count(&job(endless_id).replace("{}", "attempts = 1"))
            .await,
        1,
        "the endless response succeeded at its first attempt, without waiting for the timeout"
    );
    let recorded: Vec<String> = p
        .column(&format!(
            "select coalesce(status_code::text, '') || ' ' || coalesce(error, '') from webhook_deliveries where webhook_id = '{moved_id}'"
        ))
        .await;
    assert!(
        !recorded.is_empty() && recorded.iter().all(|r| r == "307 endpoint answered 307"),
        "{recorded:?}"
    );
}

/// After `rotateSecret` the old secret keeps signing beside the new one for the overlap, so
/// receivers holding either verify; once the overlap is over, only the new one signs.
#[tokio::test]
async fn a_rotated_secret_signs_beside_the_new_one_until_its_overlap_ends() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let receiver = Receiver::start().await;
    let (id, old) = register(&p, &receiver.url(), &["review.created"]).await;
    let new = format!("whsec_{}", base64_of(Uuid::new_v4().as_bytes()));
    let conn = p.db.conn().await.unwrap();
    let rotate = reviews_db::webhooks::WebhookPatch {
        secret: Some(&new),
        ..Default::default()
    };
    reviews_db::webhooks::update_webhook(&conn, id, &rotate)
        .await
        .unwrap();
    let worker = p
        .start_worker_with(p.args(), handlers(Duration::from_secs(5)))
        .await;
    p.add_reviews(product, authors("during", 1)).await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    let during = receiver.all();
    assert_eq!(during.len(), 1);
    assert_eq!(
        during[0].signature.split(' ').count(),
        2,
        "{}",
        during[0].signature
    );
    assert!(python_verifies(&new, &during[0]), "the new secret verifies");
    assert!(
        python_verifies(&old, &during[0]),
        "the old secret verifies during the overlap"
    );

    p.sql(&format!(
        "update webhooks set previous_secret_expires_at = now() - interval '1 second' where id = '{id}'"
    ))
    .await;
    p.add_reviews(product, authors("after", 1)).await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    worker.stop().await;
    let after = receiver.all().pop().unwrap();
    assert_eq!(after.signature.split(' ').count(), 1);
    assert!(python_verifies(&new, &after));
    assert!(
        !python_verifies(&old, &after),
        "the old secret no longer signs"
    );
}

/// Replaying events (scripts/replay-events) re-delivers their webhooks only when asked, and
/// never to an endpoint registered after the event occurred.
#[tokio::test]
async fn replayed_events_deliver_webhooks_only_when_asked_and_never_to_later_endpoints() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let (early, late) = (Receiver::start().await, Receiver::start().await);
    register(&p, &early.url(), &["review.created"]).await;
    let worker = p
        .start_worker_with(p.args(), handlers(Duration::from_secs(5)))
        .await;
    p.add_reviews(product, authors("r", 1)).await;
    // The second as the API writes it: the acting user in `app.user_id`.
    p.sql(&format!(
        "begin; set local app.user_id = 'acting-user';
         insert into reviews (product_id, author_id, rating, title, body)
         values ('{product}', 'acting-user', 4, 't', 'b'); commit;"
    ))
    .await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    assert_eq!(early.count(), 2);
    register(&p, &late.url(), &["review.created"]).await;

    // Replayed to rebuild ratings: no webhook.
    p.sql("insert into outbox_pending (id, webhooks) select id, false from outbox")
        .await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    assert_eq!(
        early.count(),
        2,
        "a replay without --webhooks sends nothing out"
    );
    // Replayed with --webhooks: to the endpoint that existed, not to the later one.
    p.sql("insert into outbox_pending (id, webhooks) select id, true from outbox")
        .await;
    p.wait_until_idle(Duration::from_secs(20)).await;
    worker.stop().await;
    assert_eq!(early.count(), 4);
    assert_eq!(
        late.count(),
        0,
        "never to an endpoint registered after the event"
    );
    // Each delivery names who acted (the job's span logs actor.id from it).
    let actors: Vec<Option<String>> = p
        .column(
            "select distinct payload->>'actor_id' from jobs where kind = 'deliver_webhook'
             order by 1 nulls first",
        )
        .await;
    assert_eq!(actors, [None, Some("acting-user".to_owned())]);
}

#[test]
fn the_verifier_says_why_a_mistyped_secret_is_invalid_instead_of_crashing() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/verify_webhook.py");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    for (secret, why) in [
        ("whsec_not base64!", "mistyped?"),
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "no signature matches",
        ),
    ] {
        let mut child = Command::new("python3")
            .args([script, secret, "msg", &now, "v1,abc"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"{}").unwrap();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.starts_with("invalid: "), "{stderr}");
        assert!(!stderr.contains("Traceback"), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
    }
}

/// A worker run with `HTTP_PROXY`/`HTTPS_PROXY` set still connects to the endpoint's checked
/// address itself: a proxy would reach what the address check refuses.
#[tokio::test]
async fn deliveries_ignore_proxy_settings() {
    let p = TestPipeline::new().await;
    let product = p.create_product("owner").await;
    let receiver = Receiver::start().await;
    register(&p, &receiver.url(), &["review.created"]).await;
    // A "proxy" that only counts who connects to it.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let proxied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn({
        let proxied = proxied.clone();
        async move {
            while let Ok((_socket, _)) = proxy.accept().await {
                proxied.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let child = Command::new(env!("CARGO_BIN_EXE_reviews-worker"))
        .env(
            "DATABASE_URL",
            reviews_db::testing::url_of(&p.database.config),
        )
        .env(redis_env(&p).0, redis_env(&p).1)
        .env("REDIS_PREFIX", &p.prefix)
        .env("OUTBOX_POLL_INTERVAL", "200ms")
        .env("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true")
        .env("WORKER_METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("HTTP_PROXY", &proxy_url)
        .env("HTTPS_PROXY", &proxy_url)
        .env("ALL_PROXY", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _worker = KilledOnDrop(child);
    p.add_reviews(product, authors("r", 1)).await;
    wait_for(
        || receiver.count() == 1,
        Duration::from_secs(20),
        "the delivery",
    )
    .await;
    assert_eq!(
        proxied.load(Ordering::SeqCst),
        0,
        "a delivery went through the proxy"
    );
}
