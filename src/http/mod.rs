//! HTTP routes (warp): `/graphql` (POST for everything, GET for queries and the GraphiQL
//! page), the GraphiQL assets, `/healthz`, `/readyz` and `/metrics`.
//!
//! # Layout
//! - `graphql`: the GraphQL endpoint: CSRF rules, request limits, rate limits, timeouts and
//!   how errors are shaped.
//! - `documents`: parsed queries kept by their text, so a repeated query is parsed once.
//! - `socket`: GraphQL over websocket, with the socket's own edges.
//! - `client`: the client's address (the peer's, or behind `TRUSTED_PROXIES`).
//! - `reply`: request ids and the error bodies of requests refused before execution.
//! - `server`: hyper under warp: header-read timeout, connection cap, peer addresses.
//! - `state`: what every request handler shares (`AppState`).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use reviews_db::migrate::SchemaState;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::Filter;

mod client;
mod documents;
mod graphql;
mod reply;
pub mod server;
mod socket;
mod state;

use crate::error::ErrorCode;
use crate::graphql::RequestId;
pub use documents::DocumentCache;
use reply::error_response;
pub use socket::Sockets;
pub use state::AppState;

/// Largest request body we read, in bytes.
pub const MAX_BODY_BYTES: u64 = 256 * 1024;

/// How long /readyz waits for Postgres before answering 503.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Every route of the API.
pub fn routes(state: AppState) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let caller = graphql::caller(Arc::new(state.edges.trusted_proxies.clone()));
    let with_state = warp::any().map(move || state.clone());

    let graphql_post = warp::path("graphql")
        .and(warp::path::end())
        .and(warp::post())
        .and(with_state.clone())
        .and(caller.clone())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .then(graphql::post);

    let subscriptions = warp::path("graphql")
        .and(warp::path::end())
        .and(warp::ws())
        .and(async_graphql_warp::graphql_protocol())
        .and(with_state.clone())
        .and(caller.clone())
        .map(socket::upgrade);

    let graphql_get = warp::path("graphql")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state.clone())
        .and(caller)
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .then(graphql::get);

    let graphiql_assets =
        warp::path!("graphiql" / String)
            .and(warp::get())
            .and_then(|name: String| async move {
                crate::graphiql::asset(&name).ok_or_else(warp::reject::not_found)
            });

    let healthz = warp::path("healthz")
        .and(warp::path::end())
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response());

    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .map(|| {
            warp::reply::with_header(
                crate::metrics::handle().render(),
                "content-type",
                "text/plain; version=0.0.4",
            )
            .into_response()
        });

    let readyz = warp::path("readyz")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state)
        .then(readiness);

    graphql_post
        .or(subscriptions)
        .unify()
        .or(graphql_get)
        .unify()
        .or(graphiql_assets)
        .unify()
        .or(healthz)
        .unify()
        .or(metrics)
        .unify()
        .or(readyz)
        .unify()
        .recover(reject_cleanly)
        .unify()
        .with(warp::log::custom(|info| {
            let labels = [
                ("route", crate::metrics::route_label(info.path())),
                ("method", method_label(info.method())),
                ("status", status_class(info.status())),
            ];
            metrics::counter!("http_requests_total", &labels).increment(1);
            metrics::histogram!("http_request_duration_seconds", &labels)
                .record(info.elapsed().as_secs_f64());
        }))
        .with(warp::trace::request())
}

fn method_label(method: &warp::http::Method) -> &'static str {
    match *method {
        warp::http::Method::GET => "GET",
        warp::http::Method::POST => "POST",
        _ => "other",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Ready when Postgres answers and has every migration this build embeds (new binaries
/// started before `migrate` ran are not ready: docs/DEPLOYING.md).
async fn readiness(state: AppState) -> Response {
    let checked = async {
        if state.schema_current.load(Ordering::Relaxed) {
            return state.db.ping().await.map(|()| SchemaState::Current);
        }
        let schema = reviews_db::migrate::schema_state(&state.db.conn().await?).await?;
        if schema == SchemaState::Current {
            state.schema_current.store(true, Ordering::Relaxed);
        }
        Ok(schema)
    };
    match tokio::time::timeout(READY_TIMEOUT, checked).await {
        Ok(Ok(SchemaState::Current)) => {
            warp::reply::json(&json!({"status": "ready"})).into_response()
        }
        Ok(Ok(SchemaState::Behind { applied, needed })) => {
            tracing::warn!(
                applied = applied.as_deref().unwrap_or("older than 0024"),
                needed,
                "not ready: the database lacks migrations of this build (run migrate)"
            );
            warp::reply::with_status(
                warp::reply::json(&json!({
                    "status": "unavailable",
                    "schema": "behind",
                    "applied": applied,
                    "needed": needed,
                })),
                StatusCode::SERVICE_UNAVAILABLE,
            )
            .into_response()
        }
        outcome => {
            let reason = match outcome {
                Ok(Err(error)) => error.to_string(),
                _ => "timed out".to_owned(),
            };
            tracing::warn!(%reason, "not ready: postgres unreachable");
            warp::reply::with_status(
                warp::reply::json(&json!({"status": "unavailable", "postgres": "unreachable"})),
                StatusCode::SERVICE_UNAVAILABLE,
            )
            .into_response()
        }
    }
}

/// Turns warp's rejections (unknown path, wrong method, body too large) into plain JSON.
async fn reject_cleanly(rejection: warp::Rejection) -> Result<Response, Infallible> {
    let request_id = RequestId(uuid::Uuid::new_v4().to_string());
    let (status, code, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BadUserInput,
            "request body too large",
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BadUserInput,
            "method not allowed",
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            ErrorCode::BadUserInput,
            "content-length required",
        )
    } else {
        (
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUserInput,
            "bad request",
        )
    };
    Ok(error_response(status, code, message, &request_id))
}
