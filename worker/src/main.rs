//! `reviews-worker [run]`: listener, relay and runner until SIGINT/SIGTERM.

use clap::Parser;
use reviews_service::{metrics, shutdown, telemetry};
use reviews_worker::config::{Cli, Command};
use reviews_worker::jobs::ledger::FileLedger;
use reviews_worker::jobs::JobRegistry;

fn main() -> std::process::ExitCode {
    reviews_service::exit_with(run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Run(args)) => args,
        None => cli.run,
    };
    telemetry::init(args.log_format);
    metrics::serve(args.metrics_addr).map_err(|e| {
        anyhow::anyhow!(
            "while serving metrics on WORKER_METRICS_ADDR={}: {e}",
            args.metrics_addr
        )
    })?;
    let mut registry = JobRegistry::standard().with_webhooks(args.webhooks.clone());
    if let Some(path) = &args.run_ledger {
        let ledger = FileLedger::open(path)
            .map_err(|e| anyhow::anyhow!("while opening JOB_RUN_LEDGER={}: {e}", path.display()))?;
        registry = registry.with_ledger(std::sync::Arc::new(ledger));
    }
    let worker =
        reviews_worker::start(&args, registry, shutdown::signal("finishing running jobs")).await?;
    worker.task.await?;
    tracing::info!("stopped");
    Ok(())
}
