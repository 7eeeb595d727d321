//! Prometheus metrics: one recorder per process, with one list of latency buckets for every
//! histogram of both binaries (HTTP requests, GraphQL operations, job runs, end-to-end).

use std::net::SocketAddr;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets in seconds: a sub-millisecond job start up to a job near its timeout.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .expect("the bucket list is not empty")
}

/// Installs the process-wide recorder; the caller renders it (the API's `GET /metrics`).
/// Fails if a recorder is installed already.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    builder().install_recorder().map_err(|e| e.to_string())
}

/// Installs the process-wide recorder and serves it at `GET /metrics` on `addr` (the
/// worker, which has no HTTP server of its own).
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    builder()
        .with_http_listener(addr)
        .install()
        .map_err(|e| e.to_string())
}
