//! HTTP routes (warp): `POST /graphql`, the GraphiQL page on `GET /graphql`, `/healthz` and
//! `/readyz`.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use async_graphql::ErrorExtensions;
use bytes::Bytes;
use reviews_db::Db;
use serde_json::json;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use warp::Filter;

use crate::auth::{Auth, TokenKeys};
use crate::graphql::{request_data, RequestId, ReviewsSchema};

/// Largest request body we read, in bytes.
pub const MAX_BODY_BYTES: u64 = 256 * 1024;

/// How long /readyz waits for Postgres before answering 503.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct AppState {
    pub schema: ReviewsSchema,
    pub db: Db,
    pub keys: TokenKeys,
}

/// Every route of the API.
pub fn routes(state: AppState) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let with_state = warp::any().map(move || state.clone());

    let graphql_post = warp::path("graphql")
        .and(warp::path::end())
        .and(warp::post())
        .and(with_state.clone())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("x-request-id"))
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .then(execute_graphql);

    let graphiql = warp::path("graphql")
        .and(warp::path::end())
        .and(warp::get())
        .map(crate::graphiql::page);

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
        .or(graphiql)
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

/// A request id from the client when it looks like one, else a fresh one.
fn request_id(header: Option<String>) -> RequestId {
    match header {
        Some(id)
            if !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            RequestId(id)
        }
        _ => RequestId(uuid::Uuid::new_v4().to_string()),
    }
}

/// A GraphQL-shaped error body for requests that never reached the executor.
fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &RequestId,
) -> Response {
    let body = json!({"errors": [{"message": message, "extensions": {"code": code}}]});
    let mut response = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    set_request_id(&mut response, request_id);
    response
}

fn set_request_id(response: &mut Response, request_id: &RequestId) {
    if let Ok(value) = HeaderValue::from_str(&request_id.0) {
        response.headers_mut().insert("x-request-id", value);
    }
}

async fn execute_graphql(
    state: AppState,
    authorization: Option<String>,
    request_id_header: Option<String>,
    body: Bytes,
) -> Response {
    let request_id = request_id(request_id_header);
    let started = Instant::now();
    let request = match serde_json::from_slice::<async_graphql::Request>(&body) {
        Ok(request) if is_blank(&request.query) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "the body must be a JSON object with a non-empty `query` string",
                &request_id,
            );
        }
        Ok(request) => request,
        Err(error) => {
            let message = if body.first() == Some(&b'[') {
                "batched requests are not supported: send one operation per request".to_owned()
            } else {
                format!("the body must be a JSON object with a `query` string: {error}")
            };
            return error_response(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                &message,
                &request_id,
            );
        }
    };
    let auth = Auth::from_header(&state.keys, authorization.as_deref());
    let operation = request.operation_name.clone().unwrap_or_default();
    let request = request_data(request, &state.db, auth, request_id.clone());
    let mut response = state.schema.execute(request).await;

    // Errors raised before any resolver ran (syntax, unknown fields, wrong argument types)
    // are the client's: give them the input code so every error carries one.
    for error in &mut response.errors {
        let has_code = error
            .extensions
            .as_ref()
            .is_some_and(|e| e.get("code").is_some());
        if !has_code {
            let extended = async_graphql::Error::new(error.message.clone())
                .extend_with(|_, e| e.set("code", "BAD_USER_INPUT"));
            error.extensions = extended.extensions;
        }
    }
    let outcome = if response.errors.is_empty() {
        "ok"
    } else {
        "error"
    };
    metrics::counter!("graphql_operations_total", "outcome" => outcome).increment(1);
    metrics::histogram!("graphql_operation_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    for error in &response.errors {
        let code = error
            .extensions
            .as_ref()
            .and_then(|e| e.get("code"))
            .and_then(|v| match v {
                async_graphql::Value::String(s) => Some(error_code_label(s)),
                _ => None,
            })
            .unwrap_or("INTERNAL");
        metrics::counter!("graphql_errors_total", "code" => code).increment(1);
    }
    tracing::info!(
        request.id = %request_id.0,
        graphql.operation = %operation,
        graphql.errors = response.errors.len(),
        duration_ms = started.elapsed().as_millis() as u64,
        "graphql request"
    );
    let mut reply = warp::reply::json(&response).into_response();
    set_request_id(&mut reply, &request_id);
    reply
}

/// Our error codes as static labels (anything else counts as INTERNAL).
fn error_code_label(code: &str) -> &'static str {
    match code {
        "BAD_USER_INPUT" => "BAD_USER_INPUT",
        "UNAUTHENTICATED" => "UNAUTHENTICATED",
        "FORBIDDEN" => "FORBIDDEN",
        "NOT_FOUND" => "NOT_FOUND",
        "CONFLICT" => "CONFLICT",
        _ => "INTERNAL",
    }
}

fn is_blank(query: &str) -> bool {
    query.trim().is_empty()
}

async fn readiness(state: AppState) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, state.db.ping()).await {
        Ok(Ok(())) => warp::reply::json(&json!({"status": "ready"})).into_response(),
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
        (StatusCode::NOT_FOUND, "NOT_FOUND", "no such route")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "BAD_USER_INPUT",
            "request body too large",
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "BAD_USER_INPUT",
            "method not allowed",
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "BAD_USER_INPUT",
            "content-length required",
        )
    } else {
        (StatusCode::BAD_REQUEST, "BAD_USER_INPUT", "bad request")
    };
    Ok(error_response(status, code, message, &request_id))
}
