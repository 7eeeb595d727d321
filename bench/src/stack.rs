//! The stack under test: a scratch database on the configured Postgres server, a Redis key
//! prefix of its own, and the release binaries of the API and the worker as child processes
//! (so their memory and CPU are their own).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use tokio_postgres::{Client, NoTls};

pub struct Stack {
    pub db_name: String,
    pub server_url: String,
    pub redis_url: String,
    pub prefix: String,
    pub api_port: u16,
    pub secret: String,
    pub worker_metrics_port: u16,
    /// The worker's WORKER_CONCURRENCY.
    pub worker_concurrency: u32,
    /// Both processes' DB_POOL_MODE (transaction: no statement cache, as behind PgBouncer).
    pub pool_mode: String,
    api: Option<Child>,
    worker: Option<Child>,
}

fn binary(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/release")
        .join(name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Stack {
    /// A fresh, migrated scratch database; nothing running yet.
    pub async fn create(server_url: &str, redis_url: &str) -> anyhow::Result<Self> {
        let db_name = "reviews_bench".to_owned();
        let admin = connect(&format!("{server_url}/postgres")).await?;
        admin
            .batch_execute(&format!("drop database if exists {db_name} with (force)"))
            .await?;
        admin
            .batch_execute(&format!("create database {db_name}"))
            .await?;
        let mut client = connect(&format!("{server_url}/{db_name}")).await?;
        reviews_db::migrate::run_migrations(&mut client).await?;
        Ok(Stack {
            db_name,
            server_url: server_url.to_owned(),
            redis_url: redis_url.to_owned(),
            prefix: format!("bench-{}", uuid::Uuid::new_v4().simple()),
            api_port: free_port(),
            secret: "bench-secret-bench-secret-bench-secret-00".into(),
            worker_metrics_port: free_port(),
            worker_concurrency: 128,
            pool_mode: "session".into(),
            api: None,
            worker: None,
        })
    }

    pub fn database_url(&self) -> String {
        format!("{}/{}", self.server_url, self.db_name)
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        connect(&self.database_url()).await
    }

    /// How both processes reach Postgres: plaintext on loopback (as the figures before TLS
    /// support were taken), in the pool mode asked for.
    fn database_env(&self) -> [(&'static str, String); 4] {
        [
            ("DATABASE_URL", self.database_url()),
            ("DATABASE_DIRECT_URL", self.database_url()),
            ("DB_SSLMODE", "disable".into()),
            ("DB_POOL_MODE", self.pool_mode.clone()),
        ]
    }

    pub fn start_api(&mut self) -> anyhow::Result<()> {
        let child = Command::new(binary("reviews-api"))
            .arg("serve")
            .envs(self.database_env())
            .env("API_ADDR", format!("127.0.0.1:{}", self.api_port))
            .env("AUTH_JWT_SECRET", &self.secret)
            .env("RATE_LIMIT_USER_PER_MINUTE", "0")
            .env("RATE_LIMIT_IP_PER_MINUTE", "0")
            .env("DB_POOL_SIZE", "16")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting target/release/reviews-api (cargo build --release)")?;
        self.api = Some(child);
        Ok(())
    }

    /// Starts the worker unless it runs already.
    pub fn start_worker(&mut self) -> anyhow::Result<()> {
        if self.worker.is_some() {
            return Ok(());
        }
        let child = Command::new(binary("reviews-worker"))
            .envs(self.database_env())
            .env("REDIS_URL", &self.redis_url)
            .env("REDIS_PREFIX", &self.prefix)
            .env(
                "WORKER_METRICS_ADDR",
                format!("127.0.0.1:{}", self.worker_metrics_port),
            )
            .env("WORKER_CONCURRENCY", self.worker_concurrency.to_string())
            // When each handler began: commit → handler start is measured from it.
            .env("JOB_RUN_LEDGER", self.ledger_path())
            .env("OUTBOX_POLL_INTERVAL", "5s")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            // Warnings and errors, for a run that goes wrong (the file is appended to).
            .stderr(log_file("target/bench-worker.log")?)
            .spawn()
            .context("starting target/release/reviews-worker (cargo build --release)")?;
        self.worker = Some(child);
        Ok(())
    }

    pub fn stop_worker(&mut self) {
        if let Some(mut child) = self.worker.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    pub fn api_pid(&self) -> Option<u32> {
        self.api.as_ref().map(Child::id)
    }

    pub fn worker_pid(&self) -> Option<u32> {
        self.worker.as_ref().map(Child::id)
    }

    pub async fn wait_for_api(&self) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/healthz", self.api_port);
        for _ in 0..100 {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the API did not come up")
    }

    /// Waits until the worker serves its metrics and its relay has looked once.
    pub async fn wait_for_worker(&self) -> anyhow::Result<()> {
        for _ in 0..100 {
            if worker_metric(self.worker_metrics_port, "relay_looks_total")
                .await
                .is_some()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the worker did not come up")
    }

    /// Where the worker records when each handler began (one line per run).
    pub fn ledger_path(&self) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-runs.ledger")
    }

    /// Empties the review data between scenarios (the schema and policies stay).
    pub async fn reset(&self) -> anyhow::Result<()> {
        // The worker appends to it: emptied, it fills again from the start.
        if self.ledger_path().exists() {
            std::fs::File::create(self.ledger_path())?;
        }
        let client = self.client().await?;
        client
            .batch_execute(
                // Replica mode skips the trigger that refuses TRUNCATE of reviews (it writes
                // no events): a scratch database may be emptied at once.
                "begin;
                 set local session_replication_role = replica;
                 truncate reviews, outbox, outbox_pending, jobs, dead_jobs, notifications, product_ratings, webhook_deliveries;
                 commit;",
            )
            .await?;
        Ok(())
    }

    pub async fn drop_all(mut self) -> anyhow::Result<()> {
        self.stop_worker();
        if let Some(mut api) = self.api.take() {
            let _ = api.kill();
            let _ = api.wait();
        }
        let admin = connect(&format!("{}/postgres", self.server_url)).await?;
        admin
            .batch_execute(&format!(
                "drop database if exists {} with (force)",
                self.db_name
            ))
            .await?;
        let redis = redis::Client::open(self.redis_url.as_str())?;
        let mut conn = redis.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{{}}}:*", self.prefix))
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(keys)
                .query_async::<i64>(&mut conn)
                .await?;
        }
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in [self.api.take(), self.worker.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_file(path: &str) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {path}"))
}

pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Peak resident memory of a process (VmHWM), in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A counter from the worker's /metrics, or None.
pub async fn worker_metric(port: u16, name: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// CPU seconds used so far by every process whose command name is `name` (e.g. postgres).
pub fn cpu_seconds_of(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .filter_map(cpu_seconds)
        .sum()
}
