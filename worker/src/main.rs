//! `reviews-worker [run]`: listener, relay and runner until SIGINT/SIGTERM.

use clap::Parser;
use reviews_worker::config::{Cli, Command};
use reviews_worker::jobs::JobHandlers;
use reviews_worker::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Run(args)) => args,
        None => cli.run,
    };
    telemetry::init(args.log_format);
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ])?
        .with_http_listener(args.metrics_addr)
        .install()
        .map_err(|e| {
            anyhow::anyhow!(
                "while serving metrics on WORKER_METRICS_ADDR={}: {e}",
                args.metrics_addr
            )
        })?;
    let worker = reviews_worker::start(
        &args,
        JobHandlers::standard().with_webhooks(args.webhooks.clone()),
        shutdown_signal(),
    )
    .await?;
    worker.task.await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutdown signal received; finishing running jobs");
}
