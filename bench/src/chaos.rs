//! `reviews-chaos`: the fault-injection suite. Against a private Postgres and Redis (which
//! scripts/chaos starts, so they may be killed and restarted), it runs the API and the worker
//! under a steady stream of `addReview`, keeps a ledger of every acknowledged review, and
//! meanwhile: kills the worker with SIGKILL (twice), restarts Redis empty, restarts Postgres
//! in immediate mode, terminates the listener's backend, and stops the worker (SIGSTOP) past
//! its lease. After draining it checks and prints: lost = 0 (every acknowledged review has
//! its effects), unexpected = 0, every rating equals the aggregate of the reviews table, every
//! notification exactly once, no dead letters, and how many jobs ran more than once against
//! the bound of the jobs in flight at the faults.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use tokio_postgres::NoTls;
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "Fault-injection suite for the reviews pipeline (run it through scripts/chaos)")]
struct Args {
    /// Postgres URL of the private database (scripts/chaos sets it).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    /// Shell command that restarts Postgres in immediate mode.
    #[arg(long, env = "CHAOS_PG_RESTART")]
    pg_restart: String,
    /// Shell command that stops Redis without saving.
    #[arg(long, env = "CHAOS_REDIS_STOP")]
    redis_stop: String,
    /// Shell command that starts Redis (empty).
    #[arg(long, env = "CHAOS_REDIS_START")]
    redis_start: String,
    /// Folder of the reviews-api and reviews-worker binaries.
    #[arg(long, env = "CHAOS_BIN_DIR")]
    bin_dir: PathBuf,
    /// Length of the steady run, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// addReview requests per second.
    #[arg(long, default_value_t = 40)]
    rate: u64,
}

const SECRET: &str = "chaos-secret-chaos-secret-chaos-secret-0";
const LEASE_SECS: u64 = 3;
const CONCURRENCY: u64 = 8;

struct Processes {
    args: Args,
    api: Option<Child>,
    worker: Option<Child>,
}

impl Processes {
    fn spawn(&self, name: &str, extra: &[(&str, String)]) -> Child {
        let mut command = Command::new(self.args.bin_dir.join(name));
        command
            .env("DATABASE_URL", &self.args.database_url)
            .env("REDIS_URL", &self.args.redis_url)
            .env("REDIS_PREFIX", "chaos")
            .env("AUTH_JWT_SECRET", SECRET)
            .env("RATE_LIMIT_USER_PER_MINUTE", "0")
            .env("RATE_LIMIT_IP_PER_MINUTE", "0")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in extra {
            command.env(key, value);
        }
        command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"))
    }

    fn start_worker(&mut self) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        self.worker = Some(self.spawn(
            "reviews-worker",
            &[
                ("JOB_LEASE", format!("{LEASE_SECS}s")),
                ("JOB_TIMEOUT", "2s".into()),
                ("OUTBOX_POLL_INTERVAL", "1s".into()),
                ("RECONCILE_AFTER", "2s".into()),
                // Each product gets a review a second: with this, most of its recomputes are
                // held back in Redis's delayed set, where the faults hit them too.
                ("RATING_RECOMPUTE_INTERVAL", "1s".into()),
                ("WORKER_CONCURRENCY", CONCURRENCY.to_string()),
                ("WORKER_METRICS_ADDR", format!("127.0.0.1:{port}")),
            ],
        ));
    }

    fn signal_worker(&self, signal: &str) {
        if let Some(worker) = &self.worker {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(worker.id().to_string())
                .status();
        }
    }

    fn kill_worker(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            let _ = worker.kill();
            let _ = worker.wait();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in [self.api.take(), self.worker.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn shell(command: &str) {
    let status = Command::new("bash")
        .arg("-c")
        .arg(command)
        .status()
        .expect("bash");
    if !status.success() {
        eprintln!("chaos: `{command}` failed: {status}");
    }
}

async fn client(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = Duration::from_secs(args.seconds);
    {
        let mut db = client(&args.database_url).await?;
        reviews_db::migrate::run_migrations(&mut db).await?;
        db.batch_execute(
            "insert into products (id, name, owner_id)
             select lpad(to_hex(i), 32, '0')::uuid, 'p' || i, 'owner-' || i from generate_series(1, 20) i
             on conflict do nothing",
        )
        .await?;
    }
    let api_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let rate = args.rate;
    let mut processes = Processes {
        args,
        api: None,
        worker: None,
    };
    processes.api = Some(processes.spawn(
        "reviews-api",
        &[("API_ADDR", format!("127.0.0.1:{api_port}"))],
    ));
    processes.start_worker();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The ledger: every review the API acknowledged.
    let ledger: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = tokio::spawn({
        let (ledger, refused) = (ledger.clone(), refused.clone());
        async move {
            let keys = reviews_api::auth::TokenKeys::new(SECRET.as_bytes());
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let url = format!("http://127.0.0.1:{api_port}/graphql");
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            let started = Instant::now();
            let mut n = 0u64;
            let mut inflight = tokio::task::JoinSet::new();
            while started.elapsed() < run {
                tick.tick().await;
                n += 1;
                let author = format!("author-{n}");
                let token = keys
                    .mint(
                        &author,
                        reviews_api::auth::Role::User,
                        Duration::from_secs(3600),
                    )
                    .unwrap();
                let body = json!({
                    "query": "mutation($i: AddReviewInput!) { addReview(input: $i) { id } }",
                    "variables": {"i": {"productId": Uuid::from_u128(u128::from(n % 20 + 1)), "rating": n % 5 + 1, "title": "chaos", "body": "steady load"}},
                });
                let (http, url, ledger, refused) =
                    (http.clone(), url.clone(), ledger.clone(), refused.clone());
                inflight.spawn(async move {
                    let answer = async {
                        http.post(&url)
                            .bearer_auth(token)
                            .json(&body)
                            .send()
                            .await?
                            .json::<serde_json::Value>()
                            .await
                    };
                    match answer.await {
                        Ok(v) if v["data"]["addReview"]["id"].is_string() => {
                            ledger.lock().unwrap().push(
                                v["data"]["addReview"]["id"]
                                    .as_str()
                                    .unwrap()
                                    .parse()
                                    .unwrap(),
                            );
                        }
                        _ => {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
            while inflight.join_next().await.is_some() {}
        }
    });

    // The faults, spread over the run.
    let at = |fraction: f64| run.mul_f64(fraction);
    let started = Instant::now();
    let mut faults = Vec::new();
    let wait_until = |t: Duration| async move {
        let now = started.elapsed();
        if t > now {
            tokio::time::sleep(t - now).await;
        }
    };
    wait_until(at(0.10)).await;
    processes.kill_worker();
    faults.push("worker SIGKILL");
    tokio::time::sleep(Duration::from_secs(1)).await;
    processes.start_worker();

    wait_until(at(0.25)).await;
    shell(&processes.args.redis_stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    shell(&processes.args.redis_start);
    faults.push("Redis restarted empty");

    wait_until(at(0.40)).await;
    shell(&processes.args.pg_restart);
    faults.push("Postgres restarted (immediate)");

    wait_until(at(0.55)).await;
    if let Ok(db) = client(&processes.args.database_url).await {
        let _ = db
            .execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'reviews-worker-listener'",
                &[],
            )
            .await;
    }
    faults.push("listener backend terminated");

    wait_until(at(0.70)).await;
    processes.signal_worker("STOP");
    tokio::time::sleep(Duration::from_secs(LEASE_SECS + 2)).await;
    processes.signal_worker("CONT");
    faults.push("worker SIGSTOP past its lease");

    wait_until(at(0.85)).await;
    processes.kill_worker();
    faults.push("worker SIGKILL");
    processes.start_worker();

    load.await?;
    // Drain.
    let db = client(&processes.args.database_url).await?;
    let drain_started = Instant::now();
    loop {
        let pending: i64 = db
            .query_one(
                "select (select count(*) from outbox_pending) + (select count(*) from jobs where status = 'pending')",
                &[],
            )
            .await?
            .get(0);
        if pending == 0 {
            break;
        }
        anyhow::ensure!(
            drain_started.elapsed() < Duration::from_secs(180),
            "not drained after 180 s: {pending} pending"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The checks.
    let acknowledged: HashSet<Uuid> = ledger.lock().unwrap().iter().copied().collect();
    let notified: HashSet<Uuid> = db
        .query(
            "select review_id from notifications where kind = 'review.created'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let stored: HashSet<Uuid> = db
        .query("select id from reviews", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost = acknowledged
        .iter()
        .filter(|id| !notified.contains(id) || !stored.contains(id))
        .count();
    let unexpected = notified.difference(&acknowledged).count();
    let duplicate_notifications: i64 = db
        .query_one(
            "select count(*) - count(distinct (event_id, recipient_id, kind)) from notifications",
            &[],
        )
        .await?
        .get(0);
    let wrong_ratings: i64 = db
        .query_one(
            "select count(*) from products p
             left join product_ratings pr on pr.product_id = p.id
             left join lateral (select count(*) n, coalesce(sum(rating), 0) s from reviews r where r.product_id = p.id) a on true
             where coalesce(pr.review_count, 0) <> a.n or coalesce(pr.rating_sum, 0) <> a.s",
            &[],
        )
        .await?
        .get(0);
    let dead: i64 = db
        .query_one("select count(*) from dead_jobs", &[])
        .await?
        .get(0);
    let reruns: i64 = db
        .query_one("select count(*) from jobs where attempts > 1", &[])
        .await?
        .get(0);
    let rerun_bound = CONCURRENCY as i64 * faults.len() as i64;
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);

    println!(
        "chaos: {} s at {} addReview/s; faults: {}",
        run.as_secs(),
        rate,
        faults.join(", ")
    );
    println!("  acknowledged reviews     {}", acknowledged.len());
    println!("  refused during faults    {refused}  (never acknowledged: not in the ledger)");
    println!("  lost                     {lost}");
    println!("  unexpected               {unexpected}  (notified reviews the ledger lacks)");
    println!("  duplicate notifications  {duplicate_notifications}");
    println!("  ratings != aggregate     {wrong_ratings}");
    println!("  dead letters             {dead}");
    println!("  jobs run more than once  {reruns}  (bound: {CONCURRENCY} in flight x {} faults = {rerun_bound})", faults.len());
    println!(
        "  drained in               {:.1} s",
        drain_started.elapsed().as_secs_f64()
    );
    let ok = lost == 0
        && unexpected == 0
        && duplicate_notifications == 0
        && wrong_ratings == 0
        && dead == 0
        && reruns <= rerun_bound;
    println!("chaos: {}", if ok { "PASS" } else { "FAIL" });
    anyhow::ensure!(ok, "the pipeline lost, doubled or skewed work under faults");
    Ok(())
}
