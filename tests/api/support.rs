//! `TestApp`: the API on port 0 with a database of its own, and a client to talk to it.

use std::net::SocketAddr;
use std::time::Duration;

use reviews_api::auth::{Role, TokenKeys};
use reviews_db::testing::TestDatabase;
use reviews_db::Db;
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub struct TestApp {
    pub addr: SocketAddr,
    pub database: TestDatabase,
    /// The handle the server uses: its statement counter sees every query the API runs.
    pub db: Db,
    pub keys: TokenKeys,
    /// The secret the API verifies tokens with, to sign unusual tokens in tests.
    pub secret: String,
    pub http: reqwest::Client,
    _shutdown: oneshot::Sender<()>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        let database = TestDatabase::create().await;
        let db = database.db();
        Self::spawn_on(database, db).await
    }

    /// Spawns the API with a database handle of the test's choosing (e.g. through a proxy).
    pub async fn spawn_on(database: TestDatabase, db: Db) -> Self {
        let secret = Self::new_secret();
        let settings = reviews_api::ApiSettings::development(TokenKeys::new(secret.as_bytes()));
        Self::spawn_with(database, db, settings, secret).await
    }

    /// Spawns the API with settings of the test's choosing (limits, production mode); `secret`
    /// must be the one `settings.keys` was made from.
    pub async fn spawn_with(
        database: TestDatabase,
        db: Db,
        settings: reviews_api::ApiSettings,
        secret: String,
    ) -> Self {
        let keys = settings.keys.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let live = reviews_api::live::LiveFeed::start(
            reviews_db::PgTarget::plaintext(database.config.clone()),
            db.clone(),
        );
        let server = reviews_api::serve(
            db.clone(),
            live,
            settings,
            "127.0.0.1:0".parse().unwrap(),
            async {
                let _ = rx.await;
            },
        )
        .await
        .expect("starting the API");
        TestApp {
            addr: server.addr,
            database,
            db,
            keys,
            secret,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            _shutdown: tx,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A valid token for a user.
    pub fn token(&self, sub: &str) -> String {
        self.keys
            .mint(sub, Role::User, Duration::from_secs(3600))
            .unwrap()
    }

    pub fn admin_token(&self, sub: &str) -> String {
        self.keys
            .mint(sub, Role::Admin, Duration::from_secs(3600))
            .unwrap()
    }

    /// Runs an operation anonymously.
    pub async fn graphql(&self, query: &str, variables: Value) -> Value {
        self.graphql_with(None, query, variables).await
    }

    /// Runs an operation with a bearer token.
    pub async fn graphql_as(&self, token: &str, query: &str, variables: Value) -> Value {
        self.graphql_with(Some(token), query, variables).await
    }

    /// A fresh secret for a test app.
    pub fn new_secret() -> String {
        uuid::Uuid::new_v4().to_string().repeat(2)
    }

    pub async fn graphql_with(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut request = self
            .http
            .post(self.url("/graphql"))
            .json(&json!({"query": query, "variables": variables}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("POST /graphql");
        // Refusals before execution come with a 4xx status and the same JSON error shape.
        assert!(
            response.status().as_u16() < 500,
            "status {}",
            response.status()
        );
        response.json().await.expect("a JSON response")
    }

    /// Creates a product owned by `owner` and returns its id.
    pub async fn create_product(&self, owner: &str, name: &str) -> String {
        let response = self
            .graphql_as(
                &self.token(owner),
                "mutation($name: String!) { createProduct(input: {name: $name}) { id } }",
                json!({"name": name}),
            )
            .await;
        data(&response)["createProduct"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Adds a review by `author` and returns its id.
    pub async fn add_review(&self, author: &str, product_id: &str, rating: i32) -> String {
        let response = self
            .graphql_as(
                &self.token(author),
                ADD_REVIEW,
                review_input(product_id, rating),
            )
            .await;
        data(&response)["addReview"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Counts rows of a table, to prove that a refused operation changed nothing.
    pub async fn count_rows(&self, table: &str) -> i64 {
        let client = self.database.client().await;
        client
            .query_one(&format!("select count(*) from {table}"), &[])
            .await
            .unwrap()
            .get(0)
    }
}

pub const ADD_REVIEW: &str = "mutation($input: AddReviewInput!) {
    addReview(input: $input) { id rating title body authorId product { id } }
}";

pub fn review_input(product_id: &str, rating: i32) -> Value {
    json!({"input": {"productId": product_id, "rating": rating, "title": "Solid", "body": "Works as described."}})
}

/// The response's data, failing the test if it carries errors.
pub fn data(response: &Value) -> &Value {
    assert!(
        response.get("errors").is_none(),
        "unexpected errors: {response:#}"
    );
    &response["data"]
}

/// The code of the response's first error, failing the test if there is none.
pub fn error_code(response: &Value) -> String {
    let errors = response["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("expected an error: {response:#}"));
    errors[0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error without a code: {response:#}"))
        .to_owned()
}

pub fn error_message(response: &Value) -> String {
    response["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A worker running in-process against a TestApp's database, with its own Redis prefix.
pub struct TestWorker {
    prefix: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| {
        let host = std::env::var("REDIS_HOST").unwrap_or_else(|_| "127.0.0.1".into());
        let port = std::env::var("REDIS_PORT").unwrap_or_else(|_| "6379".into());
        format!("redis://{host}:{port}")
    })
}

impl TestApp {
    pub async fn start_worker(&self) -> TestWorker {
        self.start_worker_with(|_| {}).await
    }

    /// A worker whose settings `adjust` changes first (another Redis, a pooler).
    pub async fn start_worker_with(
        &self,
        adjust: impl FnOnce(&mut reviews_worker::config::WorkerArgs),
    ) -> TestWorker {
        use reviews_worker::config::{RedisArgs, Tuning, WorkerArgs};
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let mut db = reviews_db::DbArgs::local("unused");
        db.database_url = Some(self.database.config.clone().into());
        let mut redis = RedisArgs::local(&prefix);
        redis.redis_url = Some(redis_url().into());
        let args = WorkerArgs {
            db,
            redis,
            tuning: Tuning {
                poll_interval: Duration::from_millis(200),
                ..Tuning::default()
            },
            webhooks: Default::default(),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            run_ledger: None,
            log_format: reviews_service::LogFormat::Text,
        };
        let mut args = args;
        adjust(&mut args);
        let (stop, stopped) = oneshot::channel::<()>();
        let worker = reviews_worker::start(
            &args,
            reviews_worker::jobs::JobRegistry::standard(),
            async {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
        TestWorker {
            prefix,
            stop: Some(stop),
            task: Some(worker.task),
        }
    }

    /// Waits until the worker has relayed every event and finished every job.
    pub async fn wait_for_worker(&self) {
        let client = self.database.client().await;
        for _ in 0..400 {
            let pending: i64 = client
                .query_one(
                    "select (select count(*) from outbox_pending)
                          + (select count(*) from jobs where status = 'pending')",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the worker did not finish in 20 s");
    }
}

impl TestWorker {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        let pattern = format!("{{{}}}:*", self.prefix);
        let _ = std::thread::spawn(move || {
            let client = redis::Client::open(redis_url()).unwrap();
            if let Ok(mut conn) = client.get_connection() {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .query(&mut conn)
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query(&mut conn);
                }
            }
        })
        .join();
    }
}
