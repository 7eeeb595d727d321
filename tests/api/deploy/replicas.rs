//! Several API processes: with Redis named, a user's mutation allowance is shared by every
//! process (two APIs give a user the limit once, not twice); without it, or while Redis
//! cannot be reached, each process limits on its own.

use std::sync::Arc;

use reviews_api::auth::TokenKeys;
use reviews_api::config::Limits;
use reviews_api::rate_limit::SharedAllowances;
use reviews_api::ApiSettings;
use reviews_service::redis::{Redis, RedisTarget};
use serde_json::json;
use tokio::sync::oneshot;

use crate::support::*;

const CREATE: &str = r#"mutation { createProduct(input: {name: "Shared"}) { id } }"#;

/// A second API process on `app`'s database, with `settings`; stops when the sender drops.
async fn another_api(app: &TestApp, settings: ApiSettings) -> (String, oneshot::Sender<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let db = app.database.db();
    let live = reviews_api::live::LiveFeed::idle();
    let server = reviews_api::serve(db, live, settings, "127.0.0.1:0".parse().unwrap(), async {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    (format!("http://{}/graphql", server.addr), stop)
}

fn settings(secret: &str, shared: Option<Arc<SharedAllowances>>) -> ApiSettings {
    let mut settings = ApiSettings::development(TokenKeys::new(secret.as_bytes()));
    settings.limits = Limits {
        mutations_per_user_per_minute: 3,
        mutations_per_ip_per_minute: 0,
        ..Limits::default()
    };
    settings.shared_limits = shared;
    settings
}

/// Each process's own handle to Redis, as two processes would have.
pub fn allowances(target: RedisTarget, prefix: &str) -> Arc<SharedAllowances> {
    Arc::new(SharedAllowances::new(
        Redis::new(target, 2).unwrap(),
        prefix,
    ))
}

/// Sends `CREATE` as `user` to the APIs in turn, `n` times; returns the HTTP statuses.
pub async fn alternate(app: &TestApp, urls: &[String], user: &str, n: usize) -> Vec<u16> {
    creates_in_turn(&app.http, urls, &app.token(user), n).await
}

/// Sends `CREATE` with `token` to the GraphQL endpoints `urls` in turn, `n` times; returns
/// the HTTP statuses.
async fn creates_in_turn(
    http: &reqwest::Client,
    urls: &[String],
    token: &str,
    n: usize,
) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let response = http
            .post(&urls[i % urls.len()])
            .bearer_auth(token)
            .json(&json!({ "query": CREATE }))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

/// Two APIs sharing `target` (fresh prefix): a user's 3 a minute hold across both.
pub async fn two_apis_share_one_allowance(target: RedisTarget) {
    let secret = TestApp::new_secret();
    let prefix = format!("rate-{}", uuid::Uuid::new_v4().simple());
    let database = reviews_db::testing::TestDatabase::create().await;
    let db = database.db();
    let first = settings(&secret, Some(allowances(target.clone(), &prefix)));
    let app = TestApp::spawn_with(database, db, first, secret.clone()).await;
    let (second, _stop) =
        another_api(&app, settings(&secret, Some(allowances(target, &prefix)))).await;
    let urls = [app.url("/graphql"), second];
    assert_eq!(
        alternate(&app, &urls, "alice", 5).await,
        vec![200, 200, 200, 429, 429],
        "3 a minute in all, whichever API is asked"
    );
    assert_eq!(
        alternate(&app, &urls, "bob", 3).await,
        vec![200, 200, 200],
        "another user has an allowance of their own"
    );
}

#[tokio::test]
async fn two_api_processes_share_a_users_allowance_through_redis() {
    two_apis_share_one_allowance(RedisTarget::server(&redis_url())).await;
}

#[tokio::test]
async fn without_redis_or_while_it_is_unreachable_each_process_limits_on_its_own() {
    let secret = TestApp::new_secret();
    let database = reviews_db::testing::TestDatabase::create().await;
    let db = database.db();
    let app = TestApp::spawn_with(database, db, settings(&secret, None), secret.clone()).await;
    let (second, _stop) = another_api(&app, settings(&secret, None)).await;
    let urls = [app.url("/graphql"), second];
    assert_eq!(
        alternate(&app, &urls, "carol", 8).await,
        vec![200, 200, 200, 200, 200, 200, 429, 429],
        "each process allows 3"
    );

    // Redis named but down: the process still limits, alone.
    let dead = format!("redis://127.0.0.1:{}", super::servers::free_ports(1, 0));
    let (third, _stop) = another_api(
        &app,
        settings(
            &secret,
            Some(allowances(RedisTarget::server(&dead), "down")),
        ),
    )
    .await;
    assert_eq!(
        alternate(&app, &[third], "dave", 4).await,
        vec![200, 200, 200, 429]
    );
}

/// A `reviews-api serve` process, killed by its process id when dropped.
struct ApiProcess {
    child: std::process::Child,
    url: String,
}

impl ApiProcess {
    async fn start(database: &reviews_db::testing::TestDatabase, env: &[(&str, &str)]) -> Self {
        let port = super::servers::free_ports(1, 0);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_reviews-api"))
            .arg("serve")
            .env("DATABASE_URL", database.url())
            .env("API_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let api = ApiProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if http
                .get(format!("{}/healthz", api.url))
                .send()
                .await
                .is_ok()
            {
                return api;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("reviews-api did not answer on port {port}");
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binaries as deployed: two `reviews-api serve` processes configured only by their
/// environment (REDIS_URL, RATE_LIMIT_USER_PER_MINUTE) share a user's allowance.
#[tokio::test]
async fn two_api_binaries_configured_by_environment_share_a_users_allowance() {
    let database = reviews_db::testing::TestDatabase::create().await;
    let secret = TestApp::new_secret();
    let prefix = format!("rate-bin-{}", uuid::Uuid::new_v4().simple());
    let redis = redis_url();
    let env = [
        ("AUTH_JWT_SECRET", secret.as_str()),
        ("REDIS_URL", redis.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
        ("RATE_LIMIT_USER_PER_MINUTE", "3"),
        ("RATE_LIMIT_IP_PER_MINUTE", "0"),
    ];
    let apis = [
        ApiProcess::start(&database, &env).await,
        ApiProcess::start(&database, &env).await,
    ];
    let token = TokenKeys::new(secret.as_bytes())
        .mint(
            "erin",
            reviews_api::auth::Role::User,
            std::time::Duration::from_secs(600),
        )
        .unwrap();
    let urls: Vec<String> = apis
        .iter()
        .map(|api| format!("{}/graphql", api.url))
        .collect();
    let statuses = creates_in_turn(&reqwest::Client::new(), &urls, &token, 5).await;
    // The allowance's keys go with the test.
    let mut conn = redis::Client::open(redis.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !keys.is_empty(),
        "the allowance is kept in Redis under REDIS_PREFIX"
    );
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        statuses,
        vec![200, 200, 200, 429, 429],
        "3 a minute in all, whichever process is asked"
    );
}
