//! The GraphQL endpoint.
//!
//! - CSRF: `POST` must say `content-type: application/json` (so a plain HTML form or a
//!   `text/plain` body cannot reach it); `GET` may run queries only, never mutations.
//! - Limits before execution: batches are refused, aliases are counted, mutations are rate
//!   limited per user and per IP; depth, complexity and directives are limited by the schema.
//! - Every request has a deadline; every error carries a code; INTERNAL errors carry the
//!   request id, so a report can be matched with the log line that holds the detail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use async_graphql::parser::types::OperationType;
use async_graphql::ErrorExtensions;
use bytes::Bytes;
use tracing::Instrument;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::Filter;

use super::reply::{error_response, rate_limited, request_id, set_request_id};
use super::state::AppState;
use crate::auth::Auth;
use crate::config::AppEnv;
use crate::error::ErrorCode;
use crate::graphql::{request_data, RequestId};
use crate::limits::inspect_document;

/// Who is calling: the Authorization header, the client's request id and address.
pub struct Caller {
    authorization: Option<String>,
    request_id: RequestId,
    ip: Option<std::net::IpAddr>,
}

pub fn caller() -> impl Filter<Extract = (Caller,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(warp::header::optional::<String>("x-request-id"))
        .and(warp::addr::remote())
        .map(|authorization, id, remote: Option<SocketAddr>| Caller {
            authorization,
            request_id: request_id(id),
            ip: remote.map(|r| r.ip()),
        })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
}

/// `POST /graphql`: one operation as a JSON object.
pub async fn post(
    state: AppState,
    caller: Caller,
    content_type: Option<String>,
    body: Bytes,
) -> Response {
    let is_json = content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadUserInput,
            "POST /graphql needs content-type: application/json",
            &caller.request_id,
        );
    }
    let request = match serde_json::from_slice::<async_graphql::Request>(&body) {
        Ok(request) => request,
        Err(error) => {
            let message = if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
                "batched requests are not supported: send one operation per request".to_owned()
            } else {
                format!("the body must be a JSON object with a `query` string: {error}")
            };
            return error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                &message,
                &caller.request_id,
            );
        }
    };
    execute(state, caller, Method::Post, request).await
}

/// `GET /graphql`: a query from the URL (`?query=…&variables=…&operationName=…`), or the
/// GraphiQL page (development only) when there is none.
pub async fn get(state: AppState, caller: Caller, params: HashMap<String, String>) -> Response {
    let Some(query) = params.get("query") else {
        return match state.app_env {
            AppEnv::Development => crate::graphiql::page(),
            AppEnv::Production => error_response(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "GraphiQL is off in production",
                &caller.request_id,
            ),
        };
    };
    let mut request = async_graphql::Request::new(query.clone());
    if let Some(name) = params.get("operationName") {
        request = request.operation_name(name.clone());
    }
    if let Some(variables) = params.get("variables") {
        match serde_json::from_str::<serde_json::Value>(variables) {
            Ok(value) => request = request.variables(async_graphql::Variables::from_json(value)),
            Err(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadUserInput,
                    "variables must be a JSON object",
                    &caller.request_id,
                )
            }
        }
    }
    execute(state, caller, Method::Get, request).await
}

async fn execute(
    state: AppState,
    caller: Caller,
    method: Method,
    request: async_graphql::Request,
) -> Response {
    let request_id = caller.request_id.clone();
    let refuse = |status, code: ErrorCode, message: &str| {
        metrics::counter!("graphql_errors_total", "code" => code.as_str()).increment(1);
        error_response(status, code, message, &request_id)
    };
    if request.query.trim().is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUserInput,
            "the body must be a JSON object with a non-empty `query` string",
        );
    }
    let auth = Auth::from_header(&state.keys, caller.authorization.as_deref());
    if let Auth::Invalid(reason) = &auth {
        // A token that was sent must be valid, whatever the operation: a forged or expired
        // one is not the same as none, even on an open read.
        let mut response = refuse(StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated, reason);
        response.headers_mut().insert(
            "www-authenticate",
            warp::http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        return response;
    }
    let mut request = request;
    let operation_name = request.operation_name.clone();
    let facts = state
        .documents
        .parse(&mut request)
        .map(|document| inspect_document(&document, operation_name.as_deref()));
    if let Some(facts) = facts {
        if facts.aliases > state.limits.max_aliases {
            let message = format!(
                "too many aliases: {} (at most {})",
                facts.aliases, state.limits.max_aliases
            );
            return refuse(StatusCode::BAD_REQUEST, ErrorCode::BadUserInput, &message);
        }
        if facts.introspects && state.app_env == AppEnv::Production {
            return refuse(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                "introspection is disabled",
            );
        }
        if facts.operation == Some(OperationType::Mutation) {
            if method == Method::Get {
                return refuse(
                    StatusCode::METHOD_NOT_ALLOWED,
                    ErrorCode::BadUserInput,
                    "mutations must be sent with POST and content-type: application/json",
                );
            }
            let user = match &auth {
                Auth::User(claims) => Some(claims.sub.as_str()),
                _ => None,
            };
            if let Err(wait) = state.mutation_limits.check(user, caller.ip) {
                return rate_limited(wait, &request_id);
            }
        }
    }

    let started = Instant::now();
    let operation = request.operation_name.clone().unwrap_or_default();
    let user_id = match &auth {
        Auth::User(claims) => claims.sub.clone(),
        _ => String::new(),
    };
    let request = request_data(request, &state.db, auth, request_id.clone());
    // Every line logged while it runs (an internal error's detail, for one) carries the
    // request id, so a client's report can be matched with it.
    let span = tracing::info_span!("graphql", request.id = %request_id.0);
    let executed = tokio::time::timeout(
        state.limits.request_timeout,
        state.schema.execute(request).instrument(span),
    )
    .await;
    let Ok(mut response) = executed else {
        tracing::warn!(request.id = %request_id.0, "graphql request timed out");
        let message = format!(
            "the request took longer than {:?} and was cancelled",
            state.limits.request_timeout
        );
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout,
            &message,
        );
    };

    for error in &mut response.errors {
        let code = error
            .extensions
            .as_ref()
            .and_then(|e| e.get("code"))
            .and_then(|v| match v {
                async_graphql::Value::String(s) => Some(ErrorCode::from_extension(s)),
                _ => None,
            });
        // Errors raised before any resolver ran (syntax, unknown fields, wrong argument
        // types, limits) are the client's: give them the input code so every error has one.
        let code = code.unwrap_or(ErrorCode::BadUserInput);
        if let Some(message) = limit_message(&error.message, &state.limits) {
            error.message = message;
        }
        let request_id = request_id.0.clone();
        let extended = async_graphql::Error::new(error.message.clone()).extend_with(|_, e| {
            e.set("code", code.as_str());
            if code == ErrorCode::Internal {
                e.set("requestId", request_id.clone());
            }
        });
        error.extensions = extended.extensions;
        metrics::counter!("graphql_errors_total", "code" => code.as_str()).increment(1);
    }
    let outcome = if response.errors.is_empty() {
        "ok"
    } else {
        "error"
    };
    metrics::counter!("graphql_operations_total", "outcome" => outcome).increment(1);
    metrics::histogram!("graphql_operation_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    tracing::info!(
        request.id = %request_id.0,
        user.id = %user_id,
        graphql.operation = %operation,
        graphql.errors = response.errors.len(),
        duration_ms = started.elapsed().as_millis() as u64,
        "graphql request"
    );
    let mut reply = warp::reply::json(&response).into_response();
    set_request_id(&mut reply, &request_id);
    reply
}

/// async-graphql's refusals of a query over a limit, said with the limit and its setting.
fn limit_message(message: &str, limits: &crate::config::Limits) -> Option<String> {
    match message {
        "Query is nested too deep." => Some(format!(
            "query is nested too deep: at most {} levels (GRAPHQL_MAX_DEPTH)",
            limits.max_depth
        )),
        "Query is too complex." => Some(format!(
            "query is too complex: at most {} (GRAPHQL_MAX_COMPLEXITY; a list counts `first` \
             times its fields)",
            limits.max_complexity
        )),
        _ => None,
    }
}

/// `GET /graphql` with a websocket upgrade: subscriptions. A token may come in the
/// `connection_init` payload (`{"Authorization": "Bearer …"}` or `{"token": "…"}`); an
/// invalid one closes the connection.
pub fn subscribe(
    ws: warp::ws::Ws,
    protocol: async_graphql::http::WebSocketProtocols,
    state: AppState,
) -> Response {
    let keys = state.keys.clone();
    let db = state.db.clone();
    let schema = state.schema.clone();
    let reply = ws.on_upgrade(move |socket| {
        async_graphql_warp::GraphQLWebSocket::new(socket, schema, protocol)
            .on_connection_init(move |payload| async move {
                let token = payload
                    .get("Authorization")
                    .or_else(|| payload.get("authorization"))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .or_else(|| {
                        payload
                            .get("token")
                            .and_then(|v| v.as_str())
                            .map(|t| format!("Bearer {t}"))
                    });
                let auth = Auth::from_header(&keys, token.as_deref());
                if let Auth::Invalid(reason) = &auth {
                    return Err(async_graphql::Error::new(reason.clone()));
                }
                let request_id = RequestId(uuid::Uuid::new_v4().to_string());
                Ok(crate::graphql::connection_data(&db, auth, request_id))
            })
            .serve()
    });
    warp::reply::with_header(
        reply,
        "Sec-WebSocket-Protocol",
        protocol.sec_websocket_protocol(),
    )
    .into_response()
}
