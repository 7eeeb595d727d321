//! Command line and environment of `reviews-worker`; `reviews-worker --help` lists every
//! variable with its default.

use std::time::Duration;

use clap::{Parser, Subcommand};
use reviews_db::DbArgs;
pub use reviews_service::redis::RedisArgs;
use reviews_service::settings::parse_duration;
use reviews_service::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "reviews-worker",
    version,
    about = "Relays the reviews outbox into Redis and runs the jobs"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: WorkerArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run listener, relay and runner until SIGINT/SIGTERM (the default).
    Run(WorkerArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub tuning: Tuning,
    #[command(flatten)]
    pub webhooks: WebhookSettings,
    /// Where the worker serves Prometheus metrics (GET /metrics).
    #[arg(
        long = "worker-metrics-addr",
        env = "WORKER_METRICS_ADDR",
        value_name = "WORKER_METRICS_ADDR",
        default_value = "127.0.0.1:9101"
    )]
    pub metrics_addr: std::net::SocketAddr,
    /// A testing aid, not for production: append every handler run to this file (the chaos
    /// suite counts runs with it).
    #[arg(
        long = "job-run-ledger",
        env = "JOB_RUN_LEDGER",
        value_name = "JOB_RUN_LEDGER",
        hide = true
    )]
    pub run_ledger: Option<std::path::PathBuf>,
    /// Log format: text or json. RUST_LOG sets the levels (default info).
    #[arg(
        long = "log-format",
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

impl WorkerArgs {
    /// Checks the settings against each other; the message names the variables.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.tuning.validate()?;
        anyhow::ensure!(
            self.webhooks.timeout < self.tuning.job_timeout,
            "WEBHOOK_TIMEOUT ({:?}) must be shorter than JOB_TIMEOUT ({:?}): a delivery must end before its job times out",
            self.webhooks.timeout,
            self.tuning.job_timeout
        );
        anyhow::ensure!(
            self.webhooks.connect_timeout <= self.webhooks.timeout,
            "WEBHOOK_CONNECT_TIMEOUT ({:?}) must not be longer than WEBHOOK_TIMEOUT ({:?})",
            self.webhooks.connect_timeout,
            self.webhooks.timeout
        );
        Ok(())
    }
}

/// How the worker paces itself. Durations take units: `250ms`, `5s`, `1m`.
#[derive(Debug, Clone, clap::Args)]
pub struct Tuning {
    /// The slow fallback poll of the outbox: how long a missed doorbell can delay an event.
    #[arg(long = "outbox-poll-interval", env = "OUTBOX_POLL_INTERVAL", value_name = "OUTBOX_POLL_INTERVAL",
          default_value = "5s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Jobs run at once by this worker.
    #[arg(long = "worker-concurrency", env = "WORKER_CONCURRENCY", value_name = "WORKER_CONCURRENCY",
          default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Outbox events claimed per relay statement.
    #[arg(long = "relay-batch-size", env = "RELAY_BATCH_SIZE", value_name = "RELAY_BATCH_SIZE",
          default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub relay_batch_size: u32,
    /// How long the relay waits before its next look, under load: after a round of looks
    /// that found events while the events it relays come faster than RELAY_LINGER_ABOVE, so
    /// that the next batch gathers more. Trades up to this much latency under load for far
    /// less Postgres CPU per event (docs/PERFORMANCE.md, runs M and Q). `0ms` never lingers.
    #[arg(long = "relay-linger", env = "RELAY_LINGER", value_name = "RELAY_LINGER",
          default_value = "16ms", value_parser = parse_duration)]
    pub relay_linger: Duration,
    /// The rate (events per second that this worker's relay relays, measured over 20 ms or
    /// more) above which the relay lingers; lingering, it stops below three quarters of it.
    #[arg(long = "relay-linger-above", env = "RELAY_LINGER_ABOVE", value_name = "RELAY_LINGER_ABOVE",
          default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub relay_linger_above: u32,
    /// How long after a product's last rating recompute its next one waits: events of a
    /// product recomputed less than this ago share the next recompute (one relayed while a
    /// recompute runs may get its own, so: about one per interval). Trades how
    /// soon a busy product's rating shows its reviews for less recompute work (see
    /// docs/PERFORMANCE.md); `0ms` recomputes as soon as the events are relayed.
    #[arg(long = "rating-recompute-interval", env = "RATING_RECOMPUTE_INTERVAL",
          value_name = "RATING_RECOMPUTE_INTERVAL", default_value = "0ms",
          value_parser = parse_duration)]
    pub rating_recompute_interval: Duration,
    /// How long a job stays leased to a runner without a heartbeat before another takes it back.
    #[arg(long = "job-lease", env = "JOB_LEASE", value_name = "JOB_LEASE", default_value = "30s",
          value_parser = parse_duration)]
    pub lease: Duration,
    /// Longest a job may run; must be shorter than JOB_LEASE.
    #[arg(long = "job-timeout", env = "JOB_TIMEOUT", value_name = "JOB_TIMEOUT", default_value = "20s",
          value_parser = parse_duration)]
    pub job_timeout: Duration,
    /// How long a pending job may be overdue before the worker re-enqueues it from Postgres
    /// (it was lost between commit and Redis, or Redis forgot it).
    #[arg(long = "reconcile-after", env = "RECONCILE_AFTER", value_name = "RECONCILE_AFTER",
          default_value = "10s", value_parser = parse_duration)]
    pub reconcile_after: Duration,
    /// On SIGINT/SIGTERM, how long running jobs may take to finish before they are handed back.
    #[arg(long = "shutdown-grace", env = "SHUTDOWN_GRACE", value_name = "SHUTDOWN_GRACE",
          default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Commit the worker's own transactions (claims, job starts, completions, retries, and
    /// the effects committed with a completion) with `synchronous_commit = off`, set per
    /// transaction: a Postgres crash may then lose their last fraction of a second, which
    /// only makes that work run again. Writers' transactions are never affected.
    #[arg(long = "worker-async-commit", env = "WORKER_ASYNC_COMMIT", value_name = "WORKER_ASYNC_COMMIT",
          default_value_t = true, action = clap::ArgAction::Set)]
    pub async_commit: bool,
    /// Let the relay start the jobs it makes for this worker's free slots and hand them to its
    /// runner, with their Redis leases taken in the enqueue's round trip: a job starts without
    /// a queue read or a start statement of its own. Jobs go through the queue as before when
    /// no slot is free, other jobs wait in the queue, or a backlog of events waits. On by
    /// default since run I of docs/PERFORMANCE.md (`false`: every job through the queue).
    #[arg(long = "relay-hand-off", env = "RELAY_HAND_OFF", value_name = "RELAY_HAND_OFF",
          default_value_t = true, action = clap::ArgAction::Set)]
    pub relay_hand_off: bool,
    /// What a notify_owner job made by the relay carries: `outbox-ids`, its events' outbox
    /// ids (the handler reads the events there); `events`, every event whole, the only form
    /// workers from before db/migrations/0019 read. Set `events` while such workers still
    /// run beside this one (a rolling deploy), then go back to the default.
    #[arg(long = "relay-notify-payload", env = "RELAY_NOTIFY_PAYLOAD",
          value_name = "RELAY_NOTIFY_PAYLOAD", value_enum, default_value_t = NotifyPayload::OutboxIds)]
    pub relay_notify_payload: NotifyPayload,
}

/// What the relay's notify_owner jobs carry (`RELAY_NOTIFY_PAYLOAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NotifyPayload {
    /// The events' outbox ids.
    #[default]
    OutboxIds,
    /// Every event whole.
    Events,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            poll_interval: Duration::from_secs(5),
            concurrency: 16,
            relay_batch_size: 500,
            relay_linger: Duration::from_millis(16),
            relay_linger_above: 2_000,
            rating_recompute_interval: Duration::ZERO,
            lease: Duration::from_secs(30),
            job_timeout: Duration::from_secs(20),
            reconcile_after: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            async_commit: true,
            relay_hand_off: true,
            relay_notify_payload: NotifyPayload::OutboxIds,
        }
    }
}

impl Tuning {
    /// Checks the settings against each other; the message names the variables.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.job_timeout < self.lease,
            "JOB_TIMEOUT ({:?}) must be shorter than JOB_LEASE ({:?}): a job must end before its lease can expire",
            self.job_timeout,
            self.lease
        );
        anyhow::ensure!(
            self.poll_interval >= Duration::from_millis(10),
            "OUTBOX_POLL_INTERVAL must be at least 10ms"
        );
        anyhow::ensure!(
            self.lease >= Duration::from_millis(100),
            "JOB_LEASE must be at least 100ms"
        );
        anyhow::ensure!(
            self.relay_linger <= Duration::from_secs(1),
            "RELAY_LINGER must be at most 1s: under load every event would wait up to that long"
        );
        anyhow::ensure!(
            self.rating_recompute_interval <= Duration::from_secs(60),
            "RATING_RECOMPUTE_INTERVAL must be at most 1m: ratings would lag that long"
        );
        Ok(())
    }
}

/// How webhooks are delivered (`deliver_webhook`).
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookSettings {
    /// Allow webhook URLs that resolve to private, loopback or link-local addresses.
    #[arg(long = "webhook-allow-private-networks", env = "WEBHOOK_ALLOW_PRIVATE_NETWORKS",
          value_name = "WEBHOOK_ALLOW_PRIVATE_NETWORKS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_private_networks: bool,
    /// Connect timeout of a delivery.
    #[arg(long = "webhook-connect-timeout", env = "WEBHOOK_CONNECT_TIMEOUT", value_name = "WEBHOOK_CONNECT_TIMEOUT",
          default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Total timeout of a delivery (must be shorter than JOB_TIMEOUT).
    #[arg(long = "webhook-timeout", env = "WEBHOOK_TIMEOUT", value_name = "WEBHOOK_TIMEOUT",
          default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Deliveries in flight at once to one endpoint, per worker.
    #[arg(
        long = "webhook-concurrency-per-endpoint",
        env = "WEBHOOK_CONCURRENCY_PER_ENDPOINT",
        value_name = "WEBHOOK_CONCURRENCY_PER_ENDPOINT",
        default_value_t = 4
    )]
    pub concurrency_per_endpoint: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            allow_private_networks: false,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            concurrency_per_endpoint: 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("reviews-worker").chain(args.iter().copied()))
    }

    #[test]
    fn the_rating_recompute_interval_defaults_to_none_and_takes_units() {
        let cli = parse(&[]).unwrap();
        assert_eq!(cli.run.tuning.rating_recompute_interval, Duration::ZERO);
        let cli = parse(&["--rating-recompute-interval", "250ms"]).unwrap();
        assert_eq!(
            cli.run.tuning.rating_recompute_interval,
            Duration::from_millis(250)
        );
        cli.run.tuning.validate().unwrap();
    }

    #[test]
    fn a_webhook_timeout_not_shorter_than_the_job_timeout_is_refused() {
        let cli = parse(&["--webhook-timeout", "30s"]).unwrap();
        let message = cli.run.validate().unwrap_err().to_string();
        assert!(
            message.contains("WEBHOOK_TIMEOUT (30s) must be shorter than JOB_TIMEOUT (20s)"),
            "{message}"
        );
        let cli = parse(&[
            "--webhook-timeout",
            "30s",
            "--job-timeout",
            "40s",
            "--job-lease",
            "60s",
        ])
        .unwrap();
        cli.run.validate().unwrap();
        parse(&[]).unwrap().run.validate().unwrap();
    }

    #[test]
    fn the_relay_lingers_16ms_above_2000_events_a_second_by_default_and_bad_settings_are_refused() {
        let tuning = parse(&[]).unwrap().run.tuning;
        assert_eq!(tuning.relay_linger, Duration::from_millis(16));
        assert_eq!(tuning.relay_linger_above, 2_000);
        let default = Tuning::default();
        assert_eq!(
            (default.relay_linger, default.relay_linger_above),
            (tuning.relay_linger, tuning.relay_linger_above)
        );
        let tuning = parse(&["--relay-linger", "0ms", "--relay-linger-above", "500"])
            .unwrap()
            .run
            .tuning;
        assert_eq!(
            (tuning.relay_linger, tuning.relay_linger_above),
            (Duration::ZERO, 500)
        );
        tuning.validate().unwrap();

        let message = parse(&["--relay-linger", "soon"]).unwrap_err().to_string();
        assert!(message.contains("RELAY_LINGER"), "{message}");
        assert!(message.contains("examples: 250ms"), "{message}");
        for bad in ["0", "-5", "fast"] {
            let message = parse(&[&format!("--relay-linger-above={bad}")])
                .unwrap_err()
                .to_string();
            assert!(message.contains("RELAY_LINGER_ABOVE"), "{bad}: {message}");
        }
        let cli = parse(&["--relay-linger", "2s"]).unwrap();
        let message = cli.run.tuning.validate().unwrap_err().to_string();
        assert!(
            message.contains("RELAY_LINGER must be at most 1s"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_rating_recompute_interval_is_refused_with_examples() {
        let error = parse(&["--rating-recompute-interval", "often"]).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("RATING_RECOMPUTE_INTERVAL"), "{message}");
        assert!(message.contains("examples: 250ms"), "{message}");

        let cli = parse(&["--rating-recompute-interval", "2m"]).unwrap();
        let message = cli.run.tuning.validate().unwrap_err().to_string();
        assert!(
            message.contains("RATING_RECOMPUTE_INTERVAL must be at most 1m"),
            "{message}"
        );
    }
}
