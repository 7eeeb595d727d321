//! Logging: `tracing` to stderr, as text or JSON (`LOG_FORMAT`), levels from `RUST_LOG`
//! (default [`DEFAULT_FILTER`]).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The levels without `RUST_LOG`: info, but warp's own per-request lines ("processing
/// request", "finished processing") only when they warn: the API logs one line per GraphQL
/// request itself, with its request id.
pub const DEFAULT_FILTER: &str = "info,warp::filters::trace=warn";

/// Installs the global subscriber. Call once, from main.
///
/// Text is coloured only when stderr is a terminal: a log file or a pipe gets plain text,
/// so `grep 'job.id=35' worker.log` finds what it looks for.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
