//! `reviews-bench`: measures the stack on this machine and prints a table (and writes JSON).
//! See docs/PERFORMANCE.md for what each figure means and the targets.
//!
//! # Layout
//! - `stack`: scratch database, Redis prefix, the release binaries as child processes.
//! - `load`: SQL and GraphQL load at fixed rates or flat out.
//! - `measure`: latencies on the database clock, idle waits, claim cost.
//! - `wrk`: the API-alone figures, from wrk (an HTTP load generator in C).

mod load;
mod measure;
mod stack;
mod wrk;

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};

use crate::measure::{percentiles, Percentiles};
use crate::stack::Stack;

#[derive(Parser)]
#[command(about = "Benchmarks the reviews stack (scripts/bench builds and runs it)")]
struct Args {
    /// Postgres server URL without a database name.
    #[arg(
        long,
        env = "BENCH_SERVER_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    server_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Seconds per load phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds the idle worker is watched.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// Events in the backlog-drain test.
    #[arg(long, default_value_t = 100_000)]
    backlog: i64,
    /// Products the backlog's reviews are spread over (of the bench's 100), round robin.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=100))]
    backlog_products: i64,
    /// Finished outbox rows for the claim-cost test.
    #[arg(long, default_value_t = 1_000_000)]
    finished_rows: i64,
    /// Where the JSON report goes (wrk's Lua scripts go beside it).
    #[arg(long, default_value = "target/bench.json")]
    json: String,
    /// The worker's WORKER_CONCURRENCY (jobs at once; also the largest batch it starts).
    #[arg(long, default_value_t = 128)]
    worker_concurrency: u32,
    /// Run only these phases (comma-separated): latency, sustained, api, drain, idle, claim.
    /// Peak memory is always reported.
    #[arg(long, value_delimiter = ',', value_parser = ["latency", "sustained", "api", "drain", "idle", "claim"])]
    only: Vec<String>,
    /// The doorbell-only pgbench rate measured just before (bench/doorbell.sh, which
    /// scripts/bench runs first): the sustained SQL rate is reported as a share of it.
    #[arg(long, env = "BENCH_DOORBELL_TPS")]
    doorbell_tps: Option<f64>,
    /// The processes' DB_POOL_MODE: `transaction` runs every statement unnamed (no statement
    /// cache), as behind PgBouncer, to measure what that costs.
    #[arg(long, default_value = "session", value_parser = ["session", "transaction"])]
    db_pool_mode: String,
}

impl Args {
    fn wants(&self, phase: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == phase)
    }
}

fn row(name: &str, value: String) {
    println!("{name:<58} {value}");
}

fn lat(p: &Percentiles) -> String {
    format!(
        "p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  (n={})",
        p.p50, p.p95, p.p99, p.count
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let phase = Duration::from_secs(args.seconds);
    let mut report = serde_json::Map::new();
    let mut stack = Stack::create(&args.server_url, &args.redis_url).await?;
    stack.worker_concurrency = args.worker_concurrency;
    stack.pool_mode = args.db_pool_mode.clone();
    load::seed_products(&stack).await?;
    stack.start_api()?;
    stack.start_worker()?;
    stack.wait_for_api().await?;
    let client = stack.client().await?;
    println!(
        "reviews-bench: {} s per phase, Postgres {}, Redis {}",
        args.seconds, args.server_url, args.redis_url
    );

    let script_dir = std::path::Path::new(&args.json)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();

    // End-to-end latency at fixed arrival rates.
    let latency_runs = if args.wants("latency") {
        &[
            ("sql", 200.0),
            ("sql", 1000.0),
            ("graphql", 200.0),
            ("graphql", 1000.0),
        ][..]
    } else {
        &[]
    };
    for &(via, rate) in latency_runs {
        stack.reset().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let hand_offs_before = hand_offs(&stack).await;
        let relay_before = RelayRests::read(&stack).await;
        let started = Instant::now();
        let (done, acknowledged) = match via {
            "sql" => {
                let acknowledged = load::sql_inserts(&stack, 8, Some(rate), phase).await?;
                (acknowledged.len() as u64, Some(acknowledged))
            }
            _ => {
                let (done, _) = load::graphql_inserts(&stack, 32, Some(rate), phase).await?;
                (done, None)
            }
        };
        let achieved = done as f64 / started.elapsed().as_secs_f64();
        let relay = RelayRests::read(&stack)
            .await
            .since(&relay_before, started.elapsed());
        measure::wait_until_idle(&client, Duration::from_secs(120)).await?;
        let job = measure::commit_to_job_start(&client).await?;
        let handler = measure::commit_to_handler_start(&client, &stack.ledger_path()).await?;
        let rating = measure::commit_to_rating_visible(&client).await?;
        row(
            &format!("{via} {rate}/s (achieved {achieved:.0}/s): commit -> job start"),
            lat(&job),
        );
        row("  commit -> handler start", lat(&handler));
        let (to_relay, relay_to_start) = measure::job_start_split(&client).await?;
        row("  of which commit -> relay's claim", lat(&to_relay));
        row("  and relay's claim -> job start", lat(&relay_to_start));
        // With RELAY_HAND_OFF: how many jobs skipped the queue read and the start statement.
        let (handed_over, refused) = {
            let after = hand_offs(&stack).await;
            (after.0 - hand_offs_before.0, after.1 - hand_offs_before.1)
        };
        let jobs: i64 = client
            .query_one("select count(*) from jobs", &[])
            .await?
            .get(0);
        row(
            "  jobs handed over by the relay / refused hand-offs",
            format!("{handed_over:.0} of {jobs} / {refused:.0}"),
        );
        row(
            "  relay's looks / sleeps on the doorbell / look-again waits",
            relay.describe(),
        );
        // The writer's view: from its commit's acknowledgement (SQL only: through GraphQL the
        // writer hears of the commit only with the HTTP response, well after it).
        let from_ack = match &acknowledged {
            Some(acknowledged) => {
                let p = measure::acknowledged_to_job_start(&client, acknowledged).await?;
                row("  acknowledged commit -> job start", lat(&p));
                Some(p)
            }
            None => None,
        };
        row(
            &format!("{via} {rate}/s: commit -> rating visible"),
            lat(&rating),
        );
        report.insert(format!("latency_{via}_{rate}"), json!({"achieved_per_s": achieved, "commit_to_job_start_ms": job, "commit_to_handler_start_ms": handler, "acknowledged_commit_to_job_start_ms": from_ack, "commit_to_relay_ms": to_relay, "relay_to_job_start_ms": relay_to_start, "commit_to_rating_visible_ms": rating, "jobs": jobs, "handed_over": handed_over, "hand_offs_refused": refused, "relay": relay.json()}));
    }

    // Highest sustained rate: flat out, then how long the worker needs to catch up.
    let sustained_runs = if args.wants("sustained") {
        &["sql", "graphql"][..]
    } else {
        &[]
    };
    for &via in sustained_runs {
        // The same writers with the worker stopped, just before (and after) the SQL run: the
        // share of their rate they keep with the worker is what the worker costs them,
        // measured minutes closer than the doorbell-only pgbench run and with this client.
        let alone_before = if via == "sql" {
            Some(writers_alone(&mut stack, phase).await?)
        } else {
            None
        };
        stack.reset().await?;
        let relay_before = RelayRests::read(&stack).await;
        // In the GraphQL run the API's pool, which shares the name, is busy too: SQL only.
        let backends_before = match via {
            "sql" => Some(worker_backends_cpu(&client).await?),
            _ => None,
        };
        let started = Instant::now();
        let (done, latencies) = match via {
            "sql" => {
                let acknowledged = load::sql_inserts(&stack, 8, None, phase).await?;
                (acknowledged.len() as u64, Vec::new())
            }
            _ => load::graphql_inserts(&stack, 32, None, phase).await?,
        };
        let rate = done as f64 / started.elapsed().as_secs_f64();
        let relay = RelayRests::read(&stack)
            .await
            .since(&relay_before, started.elapsed());
        let catch_up = measure::wait_until_idle(&client, Duration::from_secs(300)).await?;
        // Through the catch-up: the work of every event of the run.
        let cpu_per_event_us = match backends_before {
            Some(before) => {
                let after = worker_backends_cpu(&client).await?;
                (!after.is_empty()).then(|| {
                    let used: f64 = after
                        .iter()
                        .map(|(pid, cpu)| cpu - before.get(pid).unwrap_or(&0.0))
                        .sum();
                    used / done as f64 * 1e6
                })
            }
            None => None,
        };
        let alone = match alone_before {
            Some(before) => Some((before, writers_alone(&mut stack, phase).await?)),
            None => None,
        };
        let mut value = format!(
            "{rate:.0} reviews/s; worker done {:.2} s after the load",
            catch_up.as_secs_f64()
        );
        if let Some((before, after)) = alone {
            value.push_str(&format!(
                "; {:.0}% of the same writers with the worker stopped ({before:.0} and \
                 {after:.0} reviews/s, just before and after)",
                200.0 * rate / (before + after)
            ));
        }
        if let Some(us) = cpu_per_event_us {
            value.push_str(&format!(
                "; the worker's Postgres backends: {us:.0} µs of CPU an event"
            ));
        }
        if let (true, Some(doorbell)) = (via == "sql", args.doorbell_tps) {
            value.push_str(&format!(
                "; {:.0}% of the doorbell-only pgbench rate of this run ({doorbell:.0} tx/s)",
                100.0 * rate / doorbell
            ));
        }
        if !latencies.is_empty() {
            let p = percentiles(latencies.clone());
            value.push_str(&format!(
                "; request p50 {:.1} ms p99 {:.1} ms",
                p.p50, p.p99
            ));
        }
        row(
            &format!(
                "sustained {via} inserts ({} clients)",
                if via == "sql" { 8 } else { 32 }
            ),
            value,
        );
        row(
            "  relay's looks / sleeps on the doorbell / look-again waits",
            relay.describe(),
        );
        report.insert(format!("sustained_{via}"), json!({"per_s": rate, "catch_up_s": catch_up.as_secs_f64(), "request_ms": (!latencies.is_empty()).then(|| percentiles(latencies)), "relay": relay.json(), "writers_alone_per_s": alone.map(|(before, after)| [before, after]), "worker_postgres_cpu_us_per_event": cpu_per_event_us}));
    }

    // API alone (worker stopped), loaded by wrk: addReview and a 20-review page.
    if args.wants("api") {
        stack.stop_worker();
        stack.reset().await?;
        let added = wrk::add_review(&stack, 32, phase, &script_dir)?;
        // wrk counts HTTP errors only: a GraphQL error is a 200, so count the rows instead.
        let rows: i64 = client
            .query_one("select count(*) from reviews", &[])
            .await?
            .get(0);
        let failed = added.requests.saturating_sub(rows as u64);
        row(
            "API alone: addReview (wrk, 32 connections)",
            format!(
                "{:.0} req/s  p50 {:.1} ms  p99 {:.1} ms  ({} requests, {} not stored)",
                added.per_s, added.p50_ms, added.p99_ms, added.requests, failed
            ),
        );
        report.insert(
            "api_add_review".into(),
            json!({"wrk": added, "not_stored": failed}),
        );
        let page = wrk::review_page(&stack, 32, phase, &script_dir)?;
        row(
            "API alone: 20-review page query (wrk, 32 connections)",
            format!(
                "{:.0} req/s  p50 {:.1} ms  p99 {:.1} ms  ({} errors)",
                page.per_s, page.p50_ms, page.p99_ms, page.errors
            ),
        );
        report.insert("api_review_page".into(), json!({"wrk": page}));
    }

    // Backlog drain: events committed while no worker runs, then a cold worker.
    if args.wants("drain") {
        stack.stop_worker();
        stack.reset().await?;
        client
        .execute(
            "insert into reviews (product_id, author_id, rating, title, body)
             select lpad(to_hex(i % $2 + 1), 32, '0')::uuid, 'drain-' || i, i % 5 + 1, 'bench', 'backlog'
             from generate_series(1, $1::bigint) i",
            &[&args.backlog, &args.backlog_products],
        )
        .await?;
        let cpu_before = (
            stack::cpu_seconds_of("postgres"),
            stack::cpu_seconds_of("redis-server"),
        );
        let started = Instant::now();
        stack.start_worker()?;
        let took = measure::wait_until_idle(&client, Duration::from_secs(600)).await?;
        let drain_rate = args.backlog as f64 / started.elapsed().as_secs_f64();
        // Where the time went: CPU seconds of each process during the drain (2 cores in all).
        let worker_cpu = stack
            .worker_pid()
            .and_then(stack::cpu_seconds)
            .unwrap_or(f64::NAN);
        let postgres_cpu = stack::cpu_seconds_of("postgres") - cpu_before.0;
        let redis_cpu = stack::cpu_seconds_of("redis-server") - cpu_before.1;
        row(
            &format!("backlog drain: {} events, cold worker", args.backlog),
            format!("{drain_rate:.0} events/s ({:.1} s)", took.as_secs_f64()),
        );
        row(
            "  CPU during the drain: worker / postgres / redis",
            format!("{worker_cpu:.1} s / {postgres_cpu:.1} s / {redis_cpu:.1} s"),
        );
        // The work the events turned into (rating recomputes are coalesced per product).
        let kinds: Vec<(String, i64)> = client
            .query(
                "select kind, count(*) from jobs group by kind order by kind",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        row(
            "  jobs run during the drain",
            kinds
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        // A recompute reads the product's reviews and the whole backlog, where a delta updates
        // one row; a second start means a retry or a take-back.
        let costly = client
            .query_one(
                "select (select count(*) from jobs j
                         cross join lateral rating_job_products(j.payload) e
                         where j.kind = 'recompute_rating' and e.recompute),
                        (select count(*) from jobs where attempts > 1)",
                &[],
            )
            .await?;
        let (recomputed, retried): (i64, i64) = (costly.get(0), costly.get(1));
        row(
            "  rating recomputes (products) / jobs started more than once",
            format!("{recomputed} / {retried}"),
        );
        report.insert(
            "backlog_drain".into(),
            json!({"events": args.backlog, "per_s": drain_rate, "seconds": took.as_secs_f64(),
        "cpu_seconds": {"worker": worker_cpu, "postgres": postgres_cpu, "redis": redis_cpu},
        "recomputed": recomputed, "retried": retried}),
        );
    }

    // Peak memory after all of the above.
    let api_mib = stack.api_pid().and_then(stack::peak_rss_mib);
    let worker_mib = stack.worker_pid().and_then(stack::peak_rss_mib);
    // A process the chosen phases never started has no peak to show.
    let mib = |peak: Option<f64>| peak.map_or("not started".to_string(), |m| format!("{m:.1} MiB"));
    row(
        "peak memory (VmHWM): API / worker",
        format!("{} / {}", mib(api_mib), mib(worker_mib)),
    );
    report.insert(
        "peak_memory_mib".into(),
        json!({"api": api_mib, "worker": worker_mib}),
    );

    // Idle cost: what an idle worker asks of Postgres, and its CPU.
    if args.wants("idle") {
        stack.start_worker()?;
        let pid = stack.worker_pid().expect("worker runs");
        let port = stack.worker_metrics_port;
        // The worker counts its own statements; the counter refreshes on each slow poll (5 s).
        tokio::time::sleep(Duration::from_secs(6)).await;
        let statements = || stack::worker_metric(port, "db_statements_total");
        let (before, cpu_before) = (
            statements().await.unwrap_or(f64::NAN),
            stack::cpu_seconds(pid).unwrap_or(0.0),
        );
        tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
        let (after, cpu_after) = (
            statements().await.unwrap_or(f64::NAN),
            stack::cpu_seconds(pid).unwrap_or(0.0),
        );
        let per_minute = (after - before) * 60.0 / args.idle_seconds as f64;
        row(
            &format!("idle worker over {} s", args.idle_seconds),
            format!(
                "{per_minute:.1} statements/min, {:.2} s CPU",
                cpu_after - cpu_before
            ),
        );
        report.insert("idle".into(), json!({"statements_per_minute": per_minute, "cpu_seconds": cpu_after - cpu_before, "seconds": args.idle_seconds}));
    }

    // Claim cost with no finished rows and with many.
    if args.wants("claim") {
        stack.stop_worker();
        stack.reset().await?;
        client
        .batch_execute("insert into reviews (product_id, author_id, rating, title, body)
                        select lpad(to_hex(i % 100 + 1), 32, '0')::uuid, 'claim-' || i, 3, 't', 'b' from generate_series(1, 500) i")
        .await?;
        let mut claimer = stack.client().await?;
        // Each measured claim is rolled back; vacuum first so that neither measurement pays
        // for the other's dead job rows.
        client
            .batch_execute("vacuum analyze outbox, outbox_pending, jobs")
            .await?;
        let empty = measure::claim_cost(&mut claimer, 20).await?;
        // Relayed history: outbox rows with no `outbox_pending` entry.
        client
            .execute(
                "insert into outbox (event_type, review_id, product_id, payload, occurred_at)
             select 'review.created', gen_random_uuid(), gen_random_uuid(), '{}', now()
             from generate_series(1, $1::bigint)",
                &[&args.finished_rows],
            )
            .await?;
        client
            .batch_execute("vacuum analyze outbox, outbox_pending, jobs")
            .await?;
        let full = measure::claim_cost(&mut claimer, 20).await?;
        row(
            &format!("claim 500 events: 0 / {} finished rows", args.finished_rows),
            format!("{empty:.2} ms / {full:.2} ms (median of 20)"),
        );
        report.insert("claim_cost_ms".into(), json!({"no_finished_rows": empty, "finished_rows": args.finished_rows, "with_finished_rows": full}));
    }

    std::fs::write(
        &args.json,
        serde_json::to_vec_pretty(&Value::Object(report))?,
    )?;
    println!("JSON written to {}", args.json);
    stack.drop_all().await?;
    Ok(())
}

/// The worker's counts of jobs its relay handed over and of refused hand-offs (0 before the
/// first: a counter appears in /metrics once it is incremented).
async fn hand_offs(stack: &stack::Stack) -> (f64, f64) {
    let port = stack.worker_metrics_port;
    (
        stack::worker_metric(port, "jobs_handed_over_total")
            .await
            .unwrap_or(0.0),
        stack::worker_metric(port, "relay_hand_offs_refused_total")
            .await
            .unwrap_or(0.0),
    )
}

/// How the relay spent a phase between looks (the worker's relay_* counters), per second.
#[derive(Default)]
struct RelayRests {
    looks: f64,
    looks_found_nothing: f64,
    sleep_tries: f64,
    sleeps: f64,
    look_again_waits: f64,
    look_again_wait_seconds: f64,
}

impl RelayRests {
    async fn read(stack: &stack::Stack) -> Self {
        let port = stack.worker_metrics_port;
        let metric = |name: &'static str| async move {
            stack::worker_metric(port, name).await.unwrap_or(0.0)
        };
        RelayRests {
            looks: metric("relay_looks_total").await,
            looks_found_nothing: metric("relay_looks_found_nothing_total").await,
            sleep_tries: metric("relay_sleep_tries_total").await,
            sleeps: metric("relay_sleeps_total").await,
            look_again_waits: metric("relay_look_again_wait_seconds_count").await,
            look_again_wait_seconds: metric("relay_look_again_wait_seconds_sum").await,
        }
    }

    /// The counts from `before` to these, per second of `elapsed`.
    fn since(&self, before: &RelayRests, elapsed: Duration) -> Self {
        let per_s = |now: f64, then: f64| (now - then) / elapsed.as_secs_f64();
        RelayRests {
            looks: per_s(self.looks, before.looks),
            looks_found_nothing: per_s(self.looks_found_nothing, before.looks_found_nothing),
            sleep_tries: per_s(self.sleep_tries, before.sleep_tries),
            sleeps: per_s(self.sleeps, before.sleeps),
            look_again_waits: per_s(self.look_again_waits, before.look_again_waits),
            look_again_wait_seconds: per_s(
                self.look_again_wait_seconds,
                before.look_again_wait_seconds,
            ),
        }
    }

    fn mean_wait_ms(&self) -> f64 {
        if self.look_again_waits > 0.0 {
            self.look_again_wait_seconds / self.look_again_waits * 1000.0
        } else {
            0.0
        }
    }

    fn describe(&self) -> String {
        format!(
            "{:.0}/s ({:.0}/s found nothing) / {:.1}/s ({:.0}/s tries) / {:.0}/s, {:.2} ms mean",
            self.looks,
            self.looks_found_nothing,
            self.sleeps,
            self.sleep_tries,
            self.look_again_waits,
            self.mean_wait_ms()
        )
    }

    fn json(&self) -> Value {
        json!({"looks_per_s": self.looks, "looks_found_nothing_per_s": self.looks_found_nothing,
               "sleeps_per_s": self.sleeps, "sleep_tries_per_s": self.sleep_tries, "look_again_waits_per_s": self.look_again_waits,
               "look_again_wait_mean_ms": self.mean_wait_ms()})
    }
}

/// The sustained SQL load's rate with the worker stopped (its events wait in the outbox and
/// are emptied after); the worker runs again, ready, when it returns.
async fn writers_alone(stack: &mut Stack, phase: Duration) -> anyhow::Result<f64> {
    stack.stop_worker();
    stack.reset().await?;
    let started = Instant::now();
    let acknowledged = load::sql_inserts(stack, 8, None, phase).await?;
    let rate = acknowledged.len() as f64 / started.elapsed().as_secs_f64();
    stack.reset().await?;
    stack.start_worker()?;
    stack.wait_for_worker().await?;
    Ok(rate)
}

/// CPU seconds used so far by each Postgres backend of the worker (its pool, `reviews`, and
/// its listener) on the bench's database, by pid, read from /proc: empty when Postgres runs
/// on another host. The API's pool has the same name (idle in the SQL runs).
async fn worker_backends_cpu(
    client: &tokio_postgres::Client,
) -> anyhow::Result<std::collections::HashMap<i32, f64>> {
    let rows = client
        .query(
            "select pid from pg_stat_activity
             where datname = current_database()
               and application_name in ('reviews', 'reviews-worker-listener')",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let pid: i32 = row.get(0);
            stack::cpu_seconds(pid as u32).map(|cpu| (pid, cpu))
        })
        .collect())
}
