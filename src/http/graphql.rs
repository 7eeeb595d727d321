//! The GraphQL endpoint over HTTP: what only HTTP has. The guards every transport shares
//! (limits, rate limits, deadline, error codes, metrics) are the schema's extension
//! (`graphql::guards`).
//!
//! - CSRF: `POST` must say `content-type: application/json` (so a plain HTML form or a
//!   `text/plain` body cannot reach it); `GET` may run queries only, never mutations.
//! - Batches are refused; a token that was sent must be valid (401 otherwise).
//! - A refusal's HTTP status: 429 with `Retry-After` when rate limited, 503 on the deadline.
//! - GraphQL-over-HTTP: a client that accepts `application/graphql-response+json` gets it,
//!   and with it the spec's statuses: 400 (and no `data` entry) when the request fails to
//!   parse, validate or coerce its variables. Others get `application/json`, always 200 for
//!   GraphQL errors (the legacy behaviour clients of that type expect).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use async_graphql::parser::types::OperationType;
use bytes::Bytes;
use ipnet::IpNet;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use warp::Filter;

use super::client::client_address;
use super::reply::{error_response, request_id, set_request_id};
use super::server::PeerAddr;
use super::state::AppState;
use crate::auth::Auth;
use crate::config::AppEnv;
use crate::error::ErrorCode;
use crate::graphql::guards::{ClientAddr, Executed};
use crate::graphql::{request_data, RequestId};
use crate::limits::inspect_document;

/// Who is calling: the Authorization header, the client's request id and address, the media
/// type it accepts.
pub struct Caller {
    pub authorization: Option<String>,
    pub request_id: RequestId,
    /// The peer's address, or the client's behind a trusted proxy.
    pub client: Option<IpAddr>,
    pub media: MediaType,
}

/// GraphQL-over-HTTP's own media type.
pub const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// What a response is sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    /// `application/graphql-response+json`: statuses say whether the request was valid.
    GraphqlResponse,
    /// `application/json`: the legacy type (and the answer to no `Accept`, or `*/*`).
    Json,
}

impl MediaType {
    /// From an `Accept` header: GraphQL's type when accepted at least as much as JSON.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return MediaType::Json;
        };
        let (mut graphql, mut json) = (0.0_f32, 0.0_f32);
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let kind = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let quality = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match kind.as_str() {
                GRAPHQL_RESPONSE_JSON => graphql = graphql.max(quality),
                "application/json" => json = json.max(quality),
                _ => {}
            }
        }
        if graphql > 0.0 && graphql >= json {
            MediaType::GraphqlResponse
        } else {
            MediaType::Json
        }
    }

    fn header(self) -> HeaderValue {
        match self {
            MediaType::GraphqlResponse => {
                HeaderValue::from_static("application/graphql-response+json; charset=utf-8")
            }
            MediaType::Json => HeaderValue::from_static("application/json"),
        }
    }
}

pub fn caller(
    trusted_proxies: Arc<Vec<IpNet>>,
) -> impl Filter<Extract = (Caller,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(warp::header::optional::<String>("x-request-id"))
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and(warp::header::optional::<String>("accept"))
        .map(
            move |authorization,
                  id,
                  peer: Option<PeerAddr>,
                  forwarded: Option<String>,
                  accept: Option<String>| Caller {
                authorization,
                request_id: request_id(id),
                client: client_address(
                    peer.map(|p| p.0.ip()),
                    forwarded.as_deref(),
                    &trusted_proxies,
                ),
                media: MediaType::negotiate(accept.as_deref()),
            },
        )
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
    let media = caller.media;
    in_media_type(media, post_as_json(state, caller, content_type, body).await)
}

/// Every answer is JSON; its content type is the one negotiated.
fn in_media_type(media: MediaType, mut response: Response) -> Response {
    let is_json = response
        .headers()
        .get("content-type")
        .is_some_and(|c| c.as_bytes().starts_with(b"application/json"));
    if is_json {
        response
            .headers_mut()
            .insert("content-type", media.header());
    }
    response
}

async fn post_as_json(
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
    let media = caller.media;
    in_media_type(media, get_as_json(state, caller, params).await)
}

async fn get_as_json(state: AppState, caller: Caller, params: HashMap<String, String>) -> Response {
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
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        return response;
    }
    let mut request = request;
    let operation_name = request.operation_name.clone();
    let facts = state
        .documents
        .parse(&mut request)
        .map(|document| inspect_document(&document, operation_name.as_deref()));
    if method == Method::Get && facts.is_some_and(|f| f.operation == Some(OperationType::Mutation))
    {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BadUserInput,
            "mutations must be sent with POST and content-type: application/json",
        );
    }

    let executed = Executed::default();
    let request = request_data(request, auth, request_id.clone())
        .data(ClientAddr(caller.client))
        .data(executed.clone());
    let response = state.schema.execute(request).await;
    let invalid_request = !executed.happened() && !response.errors.is_empty();
    let mut reply = match (caller.media, invalid_request) {
        (MediaType::GraphqlResponse, true) => {
            // The request never ran: no `data` entry, and a status that says so.
            let mut body = serde_json::to_value(&response).unwrap_or_default();
            if let Some(body) = body.as_object_mut() {
                body.remove("data");
            }
            warp::reply::with_status(warp::reply::json(&body), StatusCode::BAD_REQUEST)
                .into_response()
        }
        _ => warp::reply::json(&response).into_response(),
    };
    // A refusal of the guards keeps its HTTP meaning.
    let codes = response
        .errors
        .iter()
        .filter_map(|e| e.extensions.as_ref()?.get("code"));
    for code in codes {
        match code {
            async_graphql::Value::String(code) if code == ErrorCode::RateLimited.as_str() => {
                *reply.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                let seconds = response
                    .errors
                    .iter()
                    .filter_map(|e| e.extensions.as_ref()?.get("retryAfterSeconds"))
                    .find_map(|v| match v {
                        async_graphql::Value::Number(n) => n.as_u64(),
                        _ => None,
                    })
                    .unwrap_or(1);
                reply
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(seconds));
            }
            async_graphql::Value::String(code) if code == ErrorCode::Timeout.as_str() => {
                *reply.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            _ => {}
        }
    }
    set_request_id(&mut reply, &request_id);
    reply
}
