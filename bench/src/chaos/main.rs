//! `reviews-chaos`: the fault-injection suite (run it through scripts/chaos, which starts a
//! private Postgres and Redis it may kill and restart; or a six-node Redis Cluster; and
//! PgBouncer in front of Postgres).
//!
//! It runs the API and several workers under a steady stream of `addReview`, keeps a ledger
//! of every acknowledged write, and injects the faults one at a time, each in a window of its
//! own, while the load goes on and without restarting any process except the worker the
//! worker-kill fault kills. Then it drains and checks, per window and in all (see `report`).
//!
//! # Layout
//! - `processes`: the API and worker processes.
//! - `proxy`: the TCP proxy between the workers and Redis (the redis-cut fault).
//! - `cluster`: the Redis Cluster's shards (the failover faults).
//! - `load`: the steady load and its ledger; the SQL writers some faults add.
//! - `faults`: the faults and how each is injected.
//! - `report`: the checks and the table.

mod cluster;
mod faults;
mod load;
mod processes;
mod proxy;
mod report;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use reviews_worker::jobs::ledger::FileLedger;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::faults::{inject, Fault, RedisUnderTest, Target};
use crate::load::{graphql_load, Ledger};
use crate::processes::{Processes, Settings};
use crate::proxy::Proxy;
use crate::report::{Observed, Window};

#[derive(Parser)]
#[command(about = "Fault-injection suite for the reviews pipeline (run it through scripts/chaos)")]
struct Args {
    /// Postgres URL of the private database (scripts/chaos sets it).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The private Redis (the workers reach it through the suite's proxy); unset with a
    /// cluster.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// A Redis Cluster's nodes (host:port, comma-separated) instead of one server.
    #[arg(long, env = "CHAOS_REDIS_CLUSTER_NODES", requires = "cluster_dir")]
    cluster_nodes: Option<String>,
    /// The cluster's directory (a folder per node port, with its pid file).
    #[arg(long, env = "CHAOS_REDIS_CLUSTER_DIR")]
    cluster_dir: Option<PathBuf>,
    /// PgBouncer's URL (transaction mode): the processes' pools go through it, LISTEN goes
    /// to DATABASE_URL.
    #[arg(long, env = "CHAOS_PGBOUNCER_URL")]
    pgbouncer_url: Option<String>,
    /// Shell command that restarts Postgres in immediate mode.
    #[arg(long, env = "CHAOS_PG_RESTART")]
    pg_restart: String,
    /// Shell command that stops Redis without saving.
    #[arg(long, env = "CHAOS_REDIS_STOP", default_value = "")]
    redis_stop: String,
    /// Shell command that starts Redis (empty).
    #[arg(long, env = "CHAOS_REDIS_START", default_value = "")]
    redis_start: String,
    /// Redis's pid file (the redis-pause fault stops it by its process id).
    #[arg(long, env = "CHAOS_REDIS_PIDFILE", default_value = "")]
    redis_pid_file: String,
    /// Folder of the reviews-api and reviews-worker binaries.
    #[arg(long, env = "CHAOS_BIN_DIR")]
    bin_dir: PathBuf,
    /// Folder for the processes' logs and run ledgers.
    #[arg(long, env = "CHAOS_DIR")]
    dir: PathBuf,
    /// addReview requests per second.
    #[arg(long, default_value_t = 40)]
    rate: u64,
    /// Shorter faults: the form scripts/test runs.
    #[arg(long)]
    quick: bool,
    /// The faults to inject, in order (comma-separated); all by default.
    #[arg(long, value_delimiter = ',', value_parser = Fault::parse)]
    faults: Vec<Fault>,
    /// Worker processes (at least 2: one keeps running while another is stopped).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    workers: u32,
    /// API processes the load is spread over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    apis: u32,
    /// Print the faults' names and what each does, then exit.
    #[arg(long, exclusive = true)]
    list_faults: bool,
}

/// The quiet stretch after the last fault, still under load.
const COOL_DOWN: Duration = Duration::from_secs(3);
/// The longest a drain may take before the suite gives up.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.list_faults {
        for fault in Fault::ALL {
            println!("{:<21} {}", fault.name(), fault.describe());
        }
        return Ok(());
    }
    let cluster = match (&args.cluster_nodes, &args.cluster_dir) {
        (Some(nodes), Some(dir)) => Some(Cluster {
            seeds: nodes.split(',').map(str::to_owned).collect(),
            dir: dir.clone(),
        }),
        _ => None,
    };
    let faults = if args.faults.is_empty() {
        Fault::ALL
            .into_iter()
            .filter(|fault| fault.applies(cluster.is_some()))
            .collect()
    } else {
        args.faults.clone()
    };
    if let Some(fault) = faults.iter().find(|f| !f.applies(cluster.is_some())) {
        anyhow::bail!(
            "the {} fault needs {}",
            fault.name(),
            if cluster.is_some() {
                "a single Redis server (not --redis-cluster)"
            } else {
                "--redis-cluster"
            }
        );
    }
    let started = Instant::now();
    let progress =
        |what: &str| println!("chaos [{:>5.1} s] {what}", started.elapsed().as_secs_f64());
    {
        let (mut db, connection) =
            tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        reviews_db::migrate::run_migrations(&mut db).await?;
        db.batch_execute(&format!(
            "insert into products (id, name, owner_id)
             select lpad(to_hex(i), 32, '0')::uuid, 'p' || i, 'owner-' || i
             from generate_series(1, {}) i
             on conflict do nothing",
            load::PRODUCTS
        ))
        .await?;
    }
    // One server is reached through the suite's proxy (the redis-cut fault); a cluster
    // directly (its clients follow the nodes themselves).
    let (proxy, redis_env) = match (&cluster, &args.redis_url) {
        (Some(cluster), _) => (None, ("REDIS_CLUSTER_NODES", cluster.seeds.join(","))),
        (None, Some(url)) => {
            let addr = url
                .trim_start_matches("redis://")
                .parse()
                .map_err(|e| anyhow::anyhow!("REDIS_URL must be redis://host:port here: {e}"))?;
            let proxy = Proxy::start(addr).await?;
            let url = format!("redis://{}", proxy.addr);
            (Some(proxy), ("REDIS_URL", url))
        }
        (None, None) => anyhow::bail!("set REDIS_URL or CHAOS_REDIS_CLUSTER_NODES"),
    };
    let mut db_env = vec![("DATABASE_URL", args.database_url.clone())];
    if let Some(pooled) = &args.pgbouncer_url {
        db_env = vec![
            ("DATABASE_URL", pooled.clone()),
            ("DATABASE_DIRECT_URL", args.database_url.clone()),
            ("DB_POOL_MODE", "transaction".into()),
        ];
    }
    let ledger_dir = args.dir.join("ledgers");
    let log_dir = args.dir.join("logs");
    std::fs::create_dir_all(&ledger_dir)?;
    std::fs::create_dir_all(&log_dir)?;
    let mut processes = Processes::start(
        Settings {
            bin_dir: args.bin_dir.clone(),
            env: db_env
                .into_iter()
                .chain([redis_env])
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            ledger_dir,
            log_dir,
        },
        args.apis as usize,
        args.workers as usize,
    )?;
    progress(&format!(
        "started {} API and {} worker processes{}{}; load {} addReview/s",
        args.apis,
        args.workers,
        if cluster.is_some() {
            " on a Redis Cluster"
        } else {
            ""
        },
        if args.pgbouncer_url.is_some() {
            " through PgBouncer (transaction mode)"
        } else {
            ""
        },
        args.rate
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Some(exited) = processes.exited() {
        anyhow::bail!("a process under test did not start:{exited}");
    }

    let ledger = Arc::new(Ledger::default());
    let stop_load = CancellationToken::new();
    let load = tokio::spawn(graphql_load(
        processes.api_ports.clone(),
        args.rate,
        ledger.clone(),
        stop_load.clone(),
    ));
    let mut windows = vec![Window {
        fault: None,
        length: Duration::ZERO,
        start: SystemTime::now(),
    }];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let redis = match (&cluster, &proxy) {
        (Some(cluster), _) => RedisUnderTest::Cluster(cluster),
        (None, Some(proxy)) => RedisUnderTest::Server {
            proxy,
            stop: &args.redis_stop,
            start: &args.redis_start,
            pid_file: &args.redis_pid_file,
        },
        (None, None) => unreachable!("one of them was set up above"),
    };
    let mut target = Target {
        processes: &mut processes,
        redis,
        database_url: &args.database_url,
        ledger: &ledger,
        pg_restart: &args.pg_restart,
        next_worker: 0,
    };
    for fault in &faults {
        let length = fault.length(args.quick);
        progress(&format!(
            "{}: {} ({} s)",
            fault.name(),
            fault.describe(),
            length.as_secs()
        ));
        windows.push(Window {
            fault: Some(*fault),
            length,
            start: SystemTime::now(),
        });
        inject(*fault, &mut target, args.quick).await?;
        // Load goes on between faults: recovery happens under it.
        tokio::time::sleep(Duration::from_secs(if args.quick { 2 } else { 5 })).await;
    }
    tokio::time::sleep(COOL_DOWN).await;
    stop_load.cancel();
    load.await?;
    progress("load stopped; draining");

    let (db, connection) =
        tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
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
        if let Some(exited) = processes.exited() {
            anyhow::bail!("{pending} pending, and a process under test exited:{exited}");
        }
        anyhow::ensure!(
            drain_started.elapsed() < DRAIN_LIMIT,
            "not drained after {DRAIN_LIMIT:?}: {pending} pending (logs in {})",
            processes.log_dir().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress(&format!(
        "drained in {:.1} s; checking",
        drain_started.elapsed().as_secs_f64()
    ));

    let mut runs_per_worker = Vec::new();
    for file in processes.ledger_files() {
        runs_per_worker.push(match file.exists() {
            true => FileLedger::read(&file)?,
            false => Vec::new(),
        });
    }
    // Departed runners' consumers are forgotten on the reconciler's cadence: give it one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let consumers = count_consumers(&args, cluster.as_ref()).await?;
    let dead = processes.all_running();
    let sent: HashSet<String> = ledger.sent_authors();
    let writes = ledger.writes();
    let observed = Observed {
        windows: &windows,
        writes: &writes,
        sent_authors: &sent,
        runs_per_worker: &runs_per_worker,
        dead: &dead,
        consumers,
    };
    let ok = report::check(&db, &observed).await?;
    println!("chaos: {}", if ok { "PASS" } else { "FAIL" });
    anyhow::ensure!(
        ok,
        "the pipeline lost, delayed or skewed work under faults (logs in {})",
        processes.log_dir().display()
    );
    Ok(())
}

/// The consumers in the queue's group (REDIS_PREFIX=chaos), asked of Redis directly.
async fn count_consumers(args: &Args, cluster: Option<&Cluster>) -> anyhow::Result<usize> {
    use reviews_service::redis::RedisTarget;
    let target = match (cluster, &args.redis_url) {
        (Some(cluster), _) => RedisTarget::Cluster {
            seeds: cluster
                .seeds
                .iter()
                .map(|s| format!("redis://{s}"))
                .collect(),
            ca: None,
        },
        (None, Some(url)) => RedisTarget::server(url),
        (None, None) => anyhow::bail!("no Redis"),
    };
    let queue = reviews_worker::queue::JobQueue::new(target, "chaos")?;
    Ok(queue.consumers().await?.len())
}
