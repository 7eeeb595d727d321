//! Prometheus metrics: the recorder (installed once per process) and `GET /metrics`.
//!
//! Labels are bounded sets (routes we serve, status classes, error codes), never
//! client-chosen strings such as operation names.

use std::sync::OnceLock;

use metrics_exporter_prometheus::PrometheusHandle;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder on first call and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        reviews_service::metrics::install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

/// The route label for a request path: one of ours, or "other".
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/graphql" => "/graphql",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        _ => "other",
    }
}
