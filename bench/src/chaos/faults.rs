//! The faults, one at a time, each in a window of its own while the load goes on. Only the
//! worker-kill fault restarts a process (the worker it killed): every other fault must heal
//! while the processes keep running. The Redis faults are a single server's (restart,
//! pause, cut) or a cluster's (failover, a primary killed).

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Cluster;
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
    ClusterFailover,
    ClusterPrimaryKill,
}

/// A cluster node's timeout (scripts/lib/redis-cluster sets it): how long before replicas
/// elect a new primary for one that stopped answering.
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// How Redis runs under test.
pub enum RedisUnderTest<'a> {
    /// One server behind the suite's proxy.
    Server {
        proxy: &'a Proxy,
        stop: &'a str,
        start: &'a str,
        pid_file: &'a str,
    },
    Cluster(&'a Cluster),
}

impl Fault {
    pub const ALL: [Fault; 11] = [
        Fault::WorkerKill,
        Fault::WorkerStop,
        Fault::RedisRestart,
        Fault::RedisPause,
        Fault::RedisCut,
        Fault::PostgresRestart,
        Fault::ListenerKill,
        Fault::LongWriter,
        Fault::RepeatableRead,
        Fault::ClusterFailover,
        Fault::ClusterPrimaryKill,
    ];

    /// Whether the fault can hit Redis as it runs (a cluster's faults need a cluster, a
    /// single server's need one).
    pub fn applies(self, cluster: bool) -> bool {
        match self {
            Fault::RedisRestart | Fault::RedisPause | Fault::RedisCut => !cluster,
            Fault::ClusterFailover | Fault::ClusterPrimaryKill => cluster,
            _ => true,
        }
    }

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
            Fault::ClusterFailover => "cluster-failover",
            Fault::ClusterPrimaryKill => "cluster-primary-kill",
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
            Fault::ClusterFailover => {
                "--redis-cluster: the queue's primary hands over to its replica (CLUSTER FAILOVER)"
            }
            Fault::ClusterPrimaryKill => {
                "--redis-cluster: the queue's primary killed with SIGKILL; its replica takes over"
            }
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
            Fault::ClusterFailover | Fault::ClusterPrimaryKill => return CLUSTER_NODE_TIMEOUT,
        };
        Duration::from_secs(if quick { short } else { full })
    }

    /// How long after the fault's end its events may take to their effects: a cluster's
    /// within the node timeout + 10 s of the fault (the length is the node timeout).
    pub fn settle(self) -> Duration {
        match self {
            Fault::ClusterFailover | Fault::ClusterPrimaryKill => Duration::from_secs(10),
            _ => Duration::from_secs(15),
        }
    }

    /// Whether writers may be refused while it lasts (Postgres is down).
    pub fn refuses_writes(self) -> bool {
        self == Fault::PostgresRestart
    }
}

/// What the faults act on.
pub struct Target<'a> {
    pub processes: &'a mut Processes,
    pub redis: RedisUnderTest<'a>,
    pub database_url: &'a str,
    pub ledger: &'a Arc<Ledger>,
    pub pg_restart: &'a str,
    /// Which worker the next worker fault hits (they take turns).
    pub next_worker: usize,
}

impl Target<'_> {
    fn pick_worker(&mut self) -> usize {
        let n = self.next_worker % self.processes.workers();
        self.next_worker += 1;
        n
    }

    fn server(&self) -> anyhow::Result<(&Proxy, &str, &str, u32)> {
        match &self.redis {
            RedisUnderTest::Server {
                proxy,
                stop,
                start,
                pid_file,
            } => Ok((
                proxy,
                stop,
                start,
                std::fs::read_to_string(pid_file)
                    .unwrap_or_default()
                    .trim()
                    .parse()
                    .unwrap_or(0),
            )),
            RedisUnderTest::Cluster(_) => anyhow::bail!("this fault needs a single Redis server"),
        }
    }

    fn cluster(&self) -> anyhow::Result<&Cluster> {
        match &self.redis {
            RedisUnderTest::Cluster(cluster) => Ok(cluster),
            RedisUnderTest::Server { .. } => anyhow::bail!("this fault needs --redis-cluster"),
        }
    }
}

/// The key whose slot holds the suite's queue (REDIS_PREFIX=chaos).
const QUEUE_KEY: &str = "{chaos}";

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
            let (_, stop, start, _) = target.server()?;
            shell(stop);
            tokio::time::sleep(length).await;
            shell(start);
        }
        Fault::RedisPause => {
            let (_, _, _, pid) = target.server()?;
            signal_pid(pid, "STOP");
            tokio::time::sleep(length).await;
            signal_pid(pid, "CONT");
        }
        Fault::RedisCut => {
            let (proxy, ..) = target.server()?;
            proxy.cut();
            tokio::time::sleep(length).await;
            proxy.mend();
        }
        Fault::ClusterFailover => {
            let cluster = target.cluster()?;
            let shard = cluster.shard_of(QUEUE_KEY).await?;
            let replica = shard
                .replica_port
                .ok_or_else(|| anyhow::anyhow!("the queue's primary has no replica: {shard:?}"))?;
            let client = redis::Client::open(format!("redis://127.0.0.1:{replica}"))?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("CLUSTER")
                .arg("FAILOVER")
                .query_async::<()>(&mut conn)
                .await?;
            tokio::time::sleep(length).await;
        }
        Fault::ClusterPrimaryKill => {
            let cluster = target.cluster()?;
            let shard = cluster.shard_of(QUEUE_KEY).await?;
            anyhow::ensure!(
                shard.replica_port.is_some(),
                "the queue's primary has no replica to take over: {shard:?}"
            );
            signal_pid(cluster.pid(shard.primary_port)?, "KILL");
            tokio::time::sleep(length).await;
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
