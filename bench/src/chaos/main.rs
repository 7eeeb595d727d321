//! `reviews-chaos`: the fault-injection suite (run it through scripts/chaos, which starts a
//! private Postgres and Redis it may kill and restart).
//!
//! It runs the API and several workers under a steady stream of `addReview`, keeps a ledger
//! of every acknowledged write, and injects the faults one at a time, each in a window of its
//! own, while the load goes on and without restarting any process except the worker the
//! worker-kill fault kills. Then it drains and checks, per window and in all (see `report`).
//!
//! # Layout
//! - `processes`: the API and worker processes.
//! - `proxy`: the TCP proxy between the workers and Redis (the redis-cut fault).
//! - `load`: the steady load and its ledger; the SQL writers some faults add.
//! - `faults`: the faults and how each is injected.
//! - `report`: the checks and the table.

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

use crate::faults::{inject, Fault, Target};
use crate::load::{graphql_load, Ledger};
use crate::processes::{Processes, Settings};
use crate::proxy::Proxy;
use crate::report::Window;

#[derive(Parser)]
#[command(about = "Fault-injection suite for the reviews pipeline (run it through scripts/chaos)")]
struct Args {
    /// Postgres URL of the private database (scripts/chaos sets it).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The private Redis (the workers reach it through the suite's proxy).
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
    /// Redis's pid file (the redis-pause fault stops it by its process id).
    #[arg(long, env = "CHAOS_REDIS_PIDFILE")]
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
            println!("{:<17} {}", fault.name(), fault.describe());
        }
        return Ok(());
    }
    let faults = if args.faults.is_empty() {
        Fault::ALL.to_vec()
    } else {
        args.faults.clone()
    };
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
    let redis_addr = args
        .redis_url
        .trim_start_matches("redis://")
        .parse()
        .map_err(|e| anyhow::anyhow!("REDIS_URL must be redis://host:port here: {e}"))?;
    let proxy = Proxy::start(redis_addr).await?;
    let ledger_dir = args.dir.join("ledgers");
    let log_dir = args.dir.join("logs");
    std::fs::create_dir_all(&ledger_dir)?;
    std::fs::create_dir_all(&log_dir)?;
    let mut processes = Processes::start(
        Settings {
            bin_dir: args.bin_dir.clone(),
            database_url: args.database_url.clone(),
            worker_redis_url: format!("redis://{}", proxy.addr),
            ledger_dir,
            log_dir,
        },
        args.apis as usize,
        args.workers as usize,
    )?;
    progress(&format!(
        "started {} API and {} worker processes; load {} addReview/s",
        args.apis, args.workers, args.rate
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
    let mut target = Target {
        processes: &mut processes,
        proxy: &proxy,
        database_url: &args.database_url,
        ledger: &ledger,
        pg_restart: &args.pg_restart,
        redis_stop: &args.redis_stop,
        redis_start: &args.redis_start,
        redis_pid_file: &args.redis_pid_file,
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

    let mut runs = Vec::new();
    for file in processes.ledger_files() {
        if file.exists() {
            runs.extend(FileLedger::read(&file)?);
        }
    }
    let dead = processes.all_running();
    let sent: HashSet<String> = ledger.sent_authors();
    let ok = report::check(&db, &windows, &ledger.writes(), &sent, &runs, &dead).await?;
    println!("chaos: {}", if ok { "PASS" } else { "FAIL" });
    anyhow::ensure!(
        ok,
        "the pipeline lost, delayed or skewed work under faults (logs in {})",
        processes.log_dir().display()
    );
    Ok(())
}
