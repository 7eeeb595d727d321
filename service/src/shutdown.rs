//! The shutdown signal: SIGINT (Ctrl-C) or SIGTERM (what `docker stop`, systemd and
//! Kubernetes send). Each binary's `run` takes it as a future, so tests stop a server or a
//! worker with a future of their own instead.

/// Completes on the first SIGINT or SIGTERM; logs which, and what the process does next.
pub async fn signal(then: &str) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    let name = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    tracing::info!(signal = name, "shutdown signal received; {then}");
}
