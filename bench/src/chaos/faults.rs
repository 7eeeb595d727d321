//! The faults, one at a time, each in a window of its own while the load goes on. Only the
//! worker-kill fault restarts a process (the worker it killed): every other fault must heal
//! while the processes keep running.

use std::sync::Arc;
use std::time::Duration;

use crate::load::{sql_write, Ledger};
use crate::processes::{signal_pid, Processes, LEASE};
use crate::proxy::Proxy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    WorkerKill,
    WorkerStop,
    RedisRestart,
    RedisPause,
    RedisCut,
    PostgresRestart,
    ListenerKill,
    LongWriter,
    RepeatableRead,
}

impl Fault {
    pub const ALL: [Fault; 9] = [
        Fault::WorkerKill,
        Fault::WorkerStop,
        Fault::RedisRestart,
        Fault::RedisPause,
        Fault::RedisCut,
        Fault::PostgresRestart,
        Fault::ListenerKill,
        Fault::LongWriter,
        Fault::RepeatableRead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::WorkerKill => "worker-kill",
            Fault::WorkerStop => "worker-stop",
            Fault::RedisRestart => "redis-restart",
            Fault::RedisPause => "redis-pause",
            Fault::RedisCut => "redis-cut",
            Fault::PostgresRestart => "postgres-restart",
            Fault::ListenerKill => "listener-kill",
            Fault::LongWriter => "long-writer",
            Fault::RepeatableRead => "repeatable-read",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Fault::WorkerKill => "a worker killed with SIGKILL, then started again",
            Fault::WorkerStop => "a worker stopped (SIGSTOP) past its lease, then resumed",
            Fault::RedisRestart => "Redis killed and started again empty",
            Fault::RedisPause => "Redis paused (SIGSTOP), then resumed",
            Fault::RedisCut => "every worker connection to Redis cut by a proxy",
            Fault::PostgresRestart => "Postgres restarted in immediate mode",
            Fault::ListenerKill => "the listeners' Postgres backends terminated",
            Fault::LongWriter => "a review written in a transaction held open",
            Fault::RepeatableRead => "reviews written by REPEATABLE READ transactions",
        }
    }

    pub fn parse(name: &str) -> Result<Fault, String> {
        Fault::ALL
            .into_iter()
            .find(|fault| fault.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown fault {name:?}; the faults are {}",
                    names.join(", ")
                )
            })
    }

    /// How long the fault lasts.
    pub fn length(self, quick: bool) -> Duration {
        let (full, short) = match self {
            Fault::WorkerKill | Fault::RedisRestart | Fault::ListenerKill => (1, 1),
            Fault::WorkerStop => (LEASE.as_secs() + 2, LEASE.as_secs() + 2),
            Fault::RedisPause | Fault::RedisCut => (10, 4),
            Fault::PostgresRestart => (2, 2),
            Fault::LongWriter => (20, 6),
            Fault::RepeatableRead => (5, 3),
        };
        Duration::from_secs(if quick { short } else { full })
    }

    /// Whether writers may be refused while it lasts (Postgres is down).
    pub fn refuses_writes(self) -> bool {
        self == Fault::PostgresRestart
    }
}

/// What the faults act on.
pub struct Target<'a> {
    pub processes: &'a mut Processes,
    pub proxy: &'a Proxy,
    pub database_url: &'a str,
    pub ledger: &'a Arc<Ledger>,
    pub pg_restart: &'a str,
    pub redis_stop: &'a str,
    pub redis_start: &'a str,
    pub redis_pid_file: &'a str,
    /// Which worker the next worker fault hits (they take turns).
    pub next_worker: usize,
}

impl Target<'_> {
    fn pick_worker(&mut self) -> usize {
        let n = self.next_worker % self.processes.workers();
        self.next_worker += 1;
        n
    }

    fn redis_pid(&self) -> anyhow::Result<u32> {
        Ok(std::fs::read_to_string(self.redis_pid_file)?
            .trim()
            .parse()?)
    }
}

/// Injects `fault` and returns when it is over (its length has passed, and what it broke
/// is put back where the fault itself is a restart).
pub async fn inject(fault: Fault, target: &mut Target<'_>, quick: bool) -> anyhow::Result<()> {
    let length = fault.length(quick);
    match fault {
        Fault::WorkerKill => {
            let n = target.pick_worker();
            target.processes.kill_worker(n);
            tokio::time::sleep(length).await;
            target.processes.restart_worker(n)?;
        }
        Fault::WorkerStop => {
            let n = target.pick_worker();
            target.processes.signal_worker(n, "STOP");
            tokio::time::sleep(length).await;
            target.processes.signal_worker(n, "CONT");
        }
        Fault::RedisRestart => {
            shell(target.redis_stop);
            tokio::time::sleep(length).await;
            shell(target.redis_start);
        }
        Fault::RedisPause => {
            let pid = target.redis_pid()?;
            signal_pid(pid, "STOP");
            tokio::time::sleep(length).await;
            signal_pid(pid, "CONT");
        }
        Fault::RedisCut => {
            target.proxy.cut();
            tokio::time::sleep(length).await;
            target.proxy.mend();
        }
        Fault::PostgresRestart => shell(target.pg_restart),
        Fault::ListenerKill => {
            let (client, connection) =
                tokio_postgres::connect(target.database_url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client
                .execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity
                     where application_name = 'reviews-worker-listener'",
                    &[],
                )
                .await?;
            tokio::time::sleep(length).await;
        }
        Fault::LongWriter => {
            sql_write(
                target.database_url,
                target.ledger,
                "long",
                "read committed",
                length,
            )
            .await?;
        }
        Fault::RepeatableRead => {
            let started = tokio::time::Instant::now();
            let mut writers = tokio::task::JoinSet::new();
            while started.elapsed() < length {
                let (url, ledger) = (target.database_url.to_owned(), target.ledger.clone());
                writers.spawn(async move {
                    sql_write(&url, &ledger, "rr", "repeatable read", Duration::ZERO).await
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            while let Some(written) = writers.join_next().await {
                written??;
            }
        }
    }
    Ok(())
}

fn shell(command: &str) {
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(command)
        .status()
        .expect("bash");
    if !status.success() {
        eprintln!("chaos: `{command}` failed: {status}");
    }
}
