//! The plumbing both reviews binaries (`reviews-api`, `reviews-worker`) run on, written once:
//! how they log, how they expose metrics, how they hear that it is time to stop, and how
//! their loops back off after a failure.
//!
//! # Layout
//! - `telemetry`: `tracing` to stderr as text or JSON (`LOG_FORMAT`), levels from `RUST_LOG`.
//! - `metrics`: the Prometheus recorder and its one list of latency buckets.
//! - `shutdown`: the signal (SIGINT or SIGTERM) that starts a graceful stop.
//! - `backoff`: capped exponential backoff for loops that can fail.
//! - `pool`: the reason a pool checkout timed out.
//! - `settings`: how a duration or a secret is read from the environment.
//! - `redis`: reaching Redis (one server or a cluster, TLS) and its connections.

pub mod backoff;
pub mod metrics;
pub mod pool;
pub mod redis;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use backoff::Backoff;
pub use telemetry::LogFormat;

/// A binary's exit: 0, or 1 after printing the error and its causes on one line. Never a
/// backtrace (`main` returning the error would print one when `RUST_BACKTRACE` is set,
/// burying a configuration error's one clear line under 30 frames).
pub fn exit_with(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
