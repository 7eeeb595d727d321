//! The processes under test: the API and worker binaries as children of the suite, each
//! stopped by its process id. A worker is started again only after the fault that kills it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The signing secret of the suite's API processes.
pub const SECRET: &str = "chaos-secret-chaos-secret-chaos-secret-0";
/// The workers' lease: the worker-stop fault pauses a worker past it.
pub const LEASE: Duration = Duration::from_secs(3);
/// Jobs each worker runs at once.
pub const CONCURRENCY: u64 = 8;

pub struct Settings {
    pub bin_dir: PathBuf,
    /// Where the processes reach Postgres and Redis (DATABASE_URL, REDIS_URL, ...).
    pub env: Vec<(String, String)>,
    /// Where each worker appends its handler runs (`JOB_RUN_LEDGER`), one file per worker.
    pub ledger_dir: PathBuf,
    pub log_dir: PathBuf,
}

pub struct Processes {
    settings: Settings,
    pub api_ports: Vec<u16>,
    apis: Vec<Child>,
    workers: Vec<Option<Child>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Processes {
    pub fn start(settings: Settings, apis: usize, workers: usize) -> anyhow::Result<Self> {
        let mut processes = Processes {
            settings,
            api_ports: Vec::new(),
            apis: Vec::new(),
            workers: Vec::new(),
        };
        for n in 0..apis {
            let port = free_port();
            let api = processes.spawn(
                "reviews-api",
                &format!("api-{n}"),
                &[("API_ADDR", format!("127.0.0.1:{port}"))],
            )?;
            processes.apis.push(api);
            processes.api_ports.push(port);
        }
        for n in 0..workers {
            let worker = processes.spawn_worker(n)?;
            processes.workers.push(Some(worker));
        }
        Ok(processes)
    }

    fn spawn(&self, binary: &str, name: &str, extra: &[(&str, String)]) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.settings.log_dir.join(format!("{name}.log")))?;
        let mut command = Command::new(self.settings.bin_dir.join(binary));
        command
            .envs(self.settings.env.iter().map(|(k, v)| (k, v)))
            .env("REDIS_PREFIX", "chaos")
            .env("AUTH_JWT_SECRET", SECRET)
            .env("RATE_LIMIT_USER_PER_MINUTE", "0")
            .env("RATE_LIMIT_IP_PER_MINUTE", "0")
            .env("RUST_LOG", "warn")
            .env("LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in extra {
            command.env(key, value);
        }
        command
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {binary}: {e}"))
    }

    fn spawn_worker(&self, n: usize) -> anyhow::Result<Child> {
        self.spawn(
            "reviews-worker",
            &format!("worker-{n}"),
            &[
                ("JOB_LEASE", format!("{}s", LEASE.as_secs())),
                ("JOB_TIMEOUT", "2s".into()),
                // Within JOB_TIMEOUT, or the worker refuses to start.
                ("WEBHOOK_TIMEOUT", "1s".into()),
                ("WEBHOOK_CONNECT_TIMEOUT", "500ms".into()),
                ("OUTBOX_POLL_INTERVAL", "1s".into()),
                ("RECONCILE_AFTER", "2s".into()),
                // Each product gets a review a second: most of its recomputes are held back
                // in Redis's delayed set, where the faults hit them too.
                ("RATING_RECOMPUTE_INTERVAL", "1s".into()),
                ("WORKER_CONCURRENCY", CONCURRENCY.to_string()),
                ("WORKER_METRICS_ADDR", format!("127.0.0.1:{}", free_port())),
                (
                    "JOB_RUN_LEDGER",
                    self.ledger_file(n).to_string_lossy().into_owned(),
                ),
            ],
        )
    }

    fn ledger_file(&self, n: usize) -> PathBuf {
        self.settings.ledger_dir.join(format!("worker-{n}.runs"))
    }

    /// Every worker's ledger file.
    pub fn ledger_files(&self) -> Vec<PathBuf> {
        (0..self.workers.len())
            .map(|n| self.ledger_file(n))
            .collect()
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The process id of worker `n`.
    pub fn worker_pid(&self, n: usize) -> Option<u32> {
        self.workers[n].as_ref().map(Child::id)
    }

    /// Sends worker `n` a signal by its process id (STOP, CONT).
    pub fn signal_worker(&self, n: usize, signal: &str) {
        if let Some(pid) = self.worker_pid(n) {
            signal_pid(pid, signal);
        }
    }

    /// Kills worker `n` with SIGKILL.
    pub fn kill_worker(&mut self, n: usize) {
        if let Some(mut worker) = self.workers[n].take() {
            let _ = worker.kill();
            let _ = worker.wait();
        }
    }

    /// Starts worker `n` again (after a kill: the one restart the suite makes).
    pub fn restart_worker(&mut self, n: usize) -> anyhow::Result<()> {
        self.kill_worker(n);
        self.workers[n] = Some(self.spawn_worker(n)?);
        Ok(())
    }

    /// Whether every process still runs (none crashed).
    pub fn all_running(&mut self) -> Vec<String> {
        let mut dead = Vec::new();
        for (n, api) in self.apis.iter_mut().enumerate() {
            if !matches!(api.try_wait(), Ok(None)) {
                dead.push(format!("api-{n}"));
            }
        }
        for (n, worker) in self.workers.iter_mut().enumerate() {
            let running = worker
                .as_mut()
                .is_some_and(|worker| matches!(worker.try_wait(), Ok(None)));
            if !running {
                dead.push(format!("worker-{n}"));
            }
        }
        dead
    }

    /// The processes that exited, each with the last lines of its log: a process that
    /// refused to start or crashed fails the suite at once instead of at the drain's limit.
    pub fn exited(&mut self) -> Option<String> {
        let dead = self.all_running();
        if dead.is_empty() {
            return None;
        }
        let mut said = String::new();
        for name in dead {
            let log = std::fs::read_to_string(self.settings.log_dir.join(format!("{name}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            said.push_str(&format!("\n{name} exited; its log ends:"));
            for line in tail.into_iter().rev() {
                said.push_str(&format!("\n  {line}"));
            }
        }
        Some(said)
    }

    pub fn log_dir(&self) -> &Path {
        &self.settings.log_dir
    }
}

pub fn signal_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Processes {
    fn drop(&mut self) {
        for n in 0..self.workers.len() {
            // A stopped process must run again to die.
            self.signal_worker(n, "CONT");
            self.kill_worker(n);
        }
        for api in &mut self.apis {
            let _ = api.kill();
            let _ = api.wait();
        }
    }
}
