//! `TestPipeline`: a database of its own, a Redis key prefix of its own, and workers started
//! in-process (or as processes) against them, with short timings so tests run fast.
//!
//! With `REVIEWS_TEST_REDIS_CLUSTER` set (host:port seeds; scripts/test starts a six-node
//! cluster and runs this suite again with it), every pipeline's queue is on that cluster,
//! and its workers are pointed at a primary that does not own the pipeline's slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reviews_db::testing::TestDatabase;
use reviews_db::{Db, DbArgs};
use reviews_service::LogFormat;
use std::collections::HashMap;

use reviews_db::outbox::RelayStatements;
use reviews_service::redis::{ClusterSeeds, Connection, Redis, RedisTarget};
use reviews_worker::config::{RedisArgs, Tuning, WorkerArgs};
pub use reviews_worker::jobs::ledger::{MemoryLedger, Run};
use reviews_worker::jobs::JobRegistry;
use reviews_worker::relay::statements_for;
use tokio::sync::oneshot;
use tokio_postgres::Client;
use uuid::Uuid;

pub struct TestPipeline {
    pub database: TestDatabase,
    pub db: Db,
    pub prefix: String,
    /// Where this pipeline's queue is: one server, or a cluster's node that does not own
    /// the prefix's slot.
    pub redis_target: RedisTarget,
    redis: Arc<Redis>,
}

/// A worker running in this process; dropped, it is told to stop.
pub struct TestWorker {
    pub worker: reviews_worker::Worker,
    /// Every handler run of this worker.
    pub ledger: Arc<MemoryLedger>,
    stop: Option<oneshot::Sender<()>>,
}

impl TestWorker {
    /// Stops the worker gracefully and waits until it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.worker.task).await.unwrap();
    }
}

/// Runs a closure when dropped (a handler's end, however it ends).
pub struct OnDrop<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// A process a test started (a worker to kill mid-run): killed when dropped, so a test that
/// fails before its own kill leaves nothing running against its dropped database.
pub struct KilledOnDrop(pub std::process::Child);

impl std::ops::Deref for KilledOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KilledOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        // Already gone when the test killed it itself: nothing to do then.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The cluster the suite runs against, if any (`REVIEWS_TEST_REDIS_CLUSTER`).
pub fn test_cluster() -> Option<Vec<String>> {
    std::env::var("REVIEWS_TEST_REDIS_CLUSTER")
        .ok()
        .filter(|seeds| !seeds.is_empty())
        .map(|seeds| seeds.split(',').map(str::to_owned).collect())
}

/// How a worker process reaches this pipeline's Redis: (variable, value).
pub fn redis_env(p: &TestPipeline) -> (&'static str, String) {
    match &p.redis_target {
        RedisTarget::Cluster { seeds, .. } => ("REDIS_CLUSTER_NODES", seeds.join(",")),
        RedisTarget::Server { url, .. } => ("REDIS_URL", url.clone()),
    }
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| {
        let host = std::env::var("REDIS_HOST").unwrap_or_else(|_| "127.0.0.1".into());
        let port = std::env::var("REDIS_PORT").unwrap_or_else(|_| "6379".into());
        format!("redis://{host}:{port}")
    })
}

impl TestPipeline {
    pub async fn new() -> Self {
        let Some(seeds) = test_cluster() else {
            return Self::with_redis(&redis_url()).await;
        };
        let prefix = format!("test-{}", Uuid::new_v4().simple());
        let elsewhere = node_not_owning(&seeds, &format!("{{{prefix}}}")).await;
        let target = RedisTarget::Cluster {
            seeds: vec![format!("redis://{elsewhere}")],
            ca: None,
        };
        Self::on(target, prefix).await
    }

    /// A pipeline whose workers use the Redis at `url` (a private one a test may kill).
    pub async fn with_redis(url: &str) -> Self {
        let prefix = format!("test-{}", Uuid::new_v4().simple());
        Self::on(RedisTarget::server(url), prefix).await
    }

    async fn on(redis_target: RedisTarget, prefix: String) -> Self {
        let database = TestDatabase::create().await;
        TestPipeline {
            db: database.db(),
            database,
            prefix,
            redis: Arc::new(Redis::new(redis_target.clone(), 2).unwrap()),
            redis_target,
        }
    }

    /// A queue handle of the test's own on this pipeline's Redis and prefix.
    pub fn queue(&self) -> reviews_worker::queue::JobQueue {
        reviews_worker::queue::JobQueue::new(self.redis_target.clone(), &self.prefix).unwrap()
    }

    /// Settings with timings short enough for tests.
    pub fn args(&self) -> WorkerArgs {
        let mut db = DbArgs::local("unused");
        db.database_url = Some(self.database.config.clone().into());
        db.db_pool_size = 8;
        let mut redis = RedisArgs::local(&self.prefix);
        match &self.redis_target {
            RedisTarget::Server { url, .. } => redis.redis_url = Some(url.clone().into()),
            RedisTarget::Cluster { seeds, .. } => {
                redis.redis_cluster_nodes = Some(ClusterSeeds(seeds.clone()))
            }
        }
        WorkerArgs {
            db,
            redis,
            tuning: Tuning {
                poll_interval: Duration::from_millis(200),
                concurrency: 8,
                relay_batch_size: 200,
                // The defaults: a test's load lingers as any load would.
                relay_linger: Tuning::default().relay_linger,
                relay_linger_above: Tuning::default().relay_linger_above,
                rating_recompute_interval: Duration::ZERO,
                lease: Duration::from_millis(1_500),
                job_timeout: Duration::from_millis(1_000),
                reconcile_after: Duration::from_millis(500),
                shutdown_grace: Duration::from_secs(5),
                async_commit: true,
                // The default: hand_off.rs switches it off where a test needs every job to
                // go through the queue.
                relay_hand_off: true,
                relay_notify_payload: Default::default(),
            },
            // What start() checks against the job timeout; the tests' webhook deliveries use
            // the settings their registry was given.
            webhooks: reviews_worker::config::WebhookSettings {
                timeout: Duration::from_millis(500),
                connect_timeout: Duration::from_millis(250),
                ..Default::default()
            },
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            run_ledger: None,
            log_format: LogFormat::Text,
        }
    }

    pub async fn start_worker(&self) -> TestWorker {
        self.start_worker_with(self.args(), JobRegistry::standard())
            .await
    }

    pub async fn start_worker_with(&self, args: WorkerArgs, registry: JobRegistry) -> TestWorker {
        let (stop, stopped) = oneshot::channel::<()>();
        let ledger = Arc::new(MemoryLedger::default());
        let registry = registry.with_ledger(ledger.clone());
        let worker = reviews_worker::start(&args, registry, async {
            let _ = stopped.await;
        })
        .await
        .expect("starting the worker");
        TestWorker {
            worker,
            ledger,
            stop: Some(stop),
        }
    }

    /// The relay's statements for `registry` as the tests run them: batches of 500, no
    /// recompute interval, committing as this pipeline's pool does.
    pub fn relay_statements(&self, registry: &JobRegistry) -> RelayStatements {
        statements_for(registry, 500, Duration::ZERO, self.db.bookkeeping())
    }

    /// Relays what is pending once, as a relay of the standard kinds would, creating every
    /// job unstarted.
    pub async fn relay_pending(&self) -> reviews_db::outbox::RelayedBatch {
        let statements = self.relay_statements(&JobRegistry::standard());
        let conn = self.db.conn().await.unwrap();
        reviews_db::outbox::relay_pending_events(&conn, &statements)
            .await
            .unwrap()
    }

    pub async fn client(&self) -> Client {
        self.database.client().await
    }

    /// A connection of its own with LISTEN on `channel`, and the payloads it hears.
    pub async fn listening(
        &self,
        channel: &str,
    ) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use futures::StreamExt;

        let (client, mut connection) = self
            .database
            .config
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    let _ = tx.send(n.payload().to_owned());
                }
            }
        });
        client
            .batch_execute(&format!("listen {channel}"))
            .await
            .unwrap();
        (client, rx)
    }

    /// A connection of the test's own to this pipeline's Redis (one server or the cluster).
    pub async fn redis(&self) -> Connection {
        self.redis.dedicated().await.unwrap()
    }

    /// Deletes every key of this test's prefix at once (one Lua script, so atomically, as
    /// FLUSHALL or a restart without persistence would), without touching other tests' keys.
    /// The script names a key of the prefix, so a cluster runs it on the slot's node.
    pub async fn forget_redis(&self) {
        let mut conn = self.redis().await;
        redis::Script::new(
            "local keys = redis.call('KEYS', ARGV[1])
             for _, key in ipairs(keys) do redis.call('DEL', key) end
             return #keys",
        )
        .key(format!("{{{}}}:jobs", self.prefix))
        .arg(format!("{{{}}}:*", self.prefix))
        .invoke_async::<i64>(&mut conn)
        .await
        .unwrap();
    }

    pub async fn create_product(&self, owner: &str) -> Uuid {
        self.client()
            .await
            .query_one(
                "insert into products (name, owner_id) values ('p', $1) returning id",
                &[&owner],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Commits one review per author, each in its own transaction; returns their ids.
    pub async fn add_reviews(
        &self,
        product: Uuid,
        authors: impl IntoIterator<Item = String>,
    ) -> Vec<Uuid> {
        let client = self.client().await;
        let statement = client
            .prepare("insert into reviews (product_id, author_id, rating, title, body) values ($1, $2, $3, 't', 'b') returning id")
            .await
            .unwrap();
        let mut ids = Vec::new();
        for (i, author) in authors.into_iter().enumerate() {
            let rating = (i % 5) as i16 + 1;
            ids.push(
                client
                    .query_one(&statement, &[&product, &author, &rating])
                    .await
                    .unwrap()
                    .get(0),
            );
        }
        ids
    }

    /// Runs statements (set-up of a test's state).
    pub async fn sql(&self, sql: &str) {
        self.client().await.batch_execute(sql).await.unwrap();
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    /// The first column of every row `sql` returns.
    pub async fn column<T: for<'a> tokio_postgres::types::FromSql<'a>>(&self, sql: &str) -> Vec<T> {
        self.client()
            .await
            .query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Waits until every outbox event is relayed and no job is pending; panics with the state
    /// after `limit`.
    pub async fn wait_until_idle(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let pending = self
                .count(
                    "select (select count(*) from outbox_pending)
                          + (select count(*) from jobs where status = 'pending')",
                )
                .await;
            if pending == 0 {
                return;
            }
            if started.elapsed() > limit {
                let client = self.client().await;
                let rows = client
                    .query("select kind, status, attempts, last_error from jobs where status = 'pending' limit 5", &[])
                    .await
                    .unwrap();
                let sample: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        format!(
                            "{}/{}/{}/{:?}",
                            r.get::<_, String>(0),
                            r.get::<_, String>(1),
                            r.get::<_, i32>(2),
                            r.get::<_, Option<String>>(3)
                        )
                    })
                    .collect();
                panic!("not idle after {limit:?}: {pending} pending; e.g. {sample:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts that every rating summary equals the aggregate of the reviews table: count,
    /// sum and all five buckets.
    pub async fn assert_ratings_match_reviews(&self) {
        let wrong = self
            .column::<String>(
                "select p.id::text from products p
                 left join product_ratings pr on pr.product_id = p.id
                 left join lateral (
                     select count(*) as n, coalesce(sum(rating), 0) as s,
                            count(*) filter (where rating = 1) as s1,
                            count(*) filter (where rating = 2) as s2,
                            count(*) filter (where rating = 3) as s3,
                            count(*) filter (where rating = 4) as s4,
                            count(*) filter (where rating = 5) as s5
                     from reviews r where r.product_id = p.id) agg on true
                 where (coalesce(pr.review_count, 0), coalesce(pr.rating_sum, 0),
                        coalesce(pr.stars_1, 0), coalesce(pr.stars_2, 0), coalesce(pr.stars_3, 0),
                        coalesce(pr.stars_4, 0), coalesce(pr.stars_5, 0))
                       <> (agg.n, agg.s, agg.s1, agg.s2, agg.s3, agg.s4, agg.s5)",
            )
            .await;
        assert!(
            wrong.is_empty(),
            "rating summaries differ from the reviews table: {wrong:?}"
        );
    }

    /// Counts, from the runs of `ledgers`, how often each event's owner notification ran:
    /// asserts that every one of the `expected` events (and no other) is covered by a
    /// notify job that ran, that each event has its one notification row, and returns how
    /// many runs were more than once (duplicates).
    pub async fn notify_duplicates(&self, runs: &[Run], expected: i64) -> usize {
        // Each notify job with the events it covers, whichever form its payload has.
        let covered: Vec<(i64, i64)> = self
            .client()
            .await
            .query(
                "select j.id, e.outbox_id
                 from jobs j cross join lateral notify_job_outbox_ids(j.payload) as e (outbox_id)
                 where j.kind = 'notify_owner'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut runs_per_event: HashMap<i64, usize> = HashMap::new();
        for (job, event) in covered {
            let ran = runs.iter().filter(|run| run.job_id == job).count();
            *runs_per_event.entry(event).or_default() += ran;
        }
        let outbox_events = self.count("select count(*) from outbox").await;
        assert_eq!(outbox_events, expected, "events in the outbox");
        assert_eq!(
            runs_per_event.len() as i64,
            expected,
            "events with a notify job"
        );
        let never = runs_per_event.values().filter(|&&n| n == 0).count();
        assert_eq!(never, 0, "events whose notify job never ran");
        assert_eq!(
            self.count("select count(*) from notifications").await,
            expected,
            "notification rows"
        );
        runs_per_event.values().map(|n| n - 1).sum()
    }

    /// Asserts that each of the `expected` events was notified by exactly one handler run.
    pub async fn assert_notified_once_each(&self, runs: &[Run], expected: i64) {
        assert_eq!(
            self.notify_duplicates(runs, expected).await,
            0,
            "events whose notify job ran more than once"
        );
    }
}

impl Drop for TestPipeline {
    fn drop(&mut self) {
        let redis = self.redis.clone();
        let prefix = self.prefix.clone();
        // A runtime of its own: the test's may be shutting down.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut conn) = redis.dedicated().await {
                    let _: Result<i64, _> = redis::Script::new(
                        "local keys = redis.call('KEYS', ARGV[1])
                         for _, key in ipairs(keys) do redis.call('DEL', key) end
                         return #keys",
                    )
                    .key(format!("{{{prefix}}}:jobs"))
                    .arg(format!("{{{prefix}}}:*"))
                    .invoke_async(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Of a cluster's nodes, a primary that does not own `key`'s slot (a client pointed there is
/// answered MOVED).
async fn node_not_owning(seeds: &[String], key: &str) -> String {
    use reviews_service::redis::topology;
    let (slot, nodes) = topology::slot_map(&seeds[0], key).await.unwrap();
    topology::primary_elsewhere(&nodes, slot)
        .unwrap_or_else(|| panic!("no primary without slot {slot}"))
        .addr
        .clone()
}

/// Authors `prefix-0`, `prefix-1`, …
pub fn authors(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

pub type Shared<T> = Arc<std::sync::Mutex<T>>;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Redis server of a test's own (so the test may kill, pause or restart it), started from
/// the system's `redis-server` on a free loopback port without persistence; killed when
/// dropped.
pub struct PrivateRedis {
    pub port: u16,
    process: Option<std::process::Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let mut redis = PrivateRedis {
            port: free_port(),
            process: None,
        };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.process.as_ref().expect("running").id()
    }

    /// Kills the server with SIGKILL: everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts it again (empty) on the same port; returns once it answers.
    pub async fn restart(&mut self) {
        self.kill();
        let process = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.process = Some(process);
        let client = redis::Client::open(self.url()).unwrap();
        for _ in 0..100 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the private redis-server did not answer");
    }

    /// Sends the server a signal (STOP to pause it, CONT to resume it).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if self.process.is_some() {
            // A paused server ignores SIGKILL's delivery only until it runs: resume it first.
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(self.pid().to_string())
                .status();
        }
        self.kill();
    }
}
