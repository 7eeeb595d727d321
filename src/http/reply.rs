//! How the HTTP layer answers before (or instead of) the GraphQL executor: request ids, and
//! GraphQL-shaped error bodies that carry an [`ErrorCode`].

use serde_json::json;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};

use crate::error::ErrorCode;
use crate::graphql::RequestId;

/// A request id from the client when it looks like one, else a fresh one.
pub fn request_id(header: Option<String>) -> RequestId {
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
pub fn error_response(
    status: StatusCode,
    code: ErrorCode,
    message: &str,
    request_id: &RequestId,
) -> Response {
    let body = json!({"errors": [{"message": message, "extensions": {"code": code.as_str()}}]});
    let mut response = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    set_request_id(&mut response, request_id);
    response
}

pub fn set_request_id(response: &mut Response, request_id: &RequestId) {
    if let Ok(value) = HeaderValue::from_str(&request_id.0) {
        response.headers_mut().insert("x-request-id", value);
    }
}
