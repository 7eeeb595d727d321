//! Opaque cursors and page arguments for the Relay connections.
//!
//! A cursor is the base64url of `v1:<created_at in µs>:<id>`: clients must treat it as
//! opaque, and the version prefix lets the format change without breaking old ones silently.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use reviews_db::page::{PageRequest, Position};
use uuid::Uuid;

use crate::error::ApiError;

/// Page size when `first` is not given.
pub const DEFAULT_PAGE_SIZE: i32 = 20;
/// Largest `first` a client may ask for.
pub const MAX_PAGE_SIZE: i32 = 100;

pub fn encode_cursor(position: &Position) -> String {
    let raw = format!(
        "v1:{}:{}",
        position.created_at.timestamp_micros(),
        position.id
    );
    URL_SAFE_NO_PAD.encode(raw)
}

pub fn decode_cursor(cursor: &str) -> Result<Position, ApiError> {
    let invalid = || ApiError::bad_input("invalid cursor: pass a cursor from a previous page");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let raw = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = raw.splitn(3, ':');
    if parts.next() != Some("v1") {
        return Err(invalid());
    }
    let micros: i64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)?;
    let id: Uuid = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)?;
    let created_at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(invalid)?;
    Ok(Position { created_at, id })
}

/// Checks `first` and `after` and turns them into a page request.
pub fn page_request(first: Option<i32>, after: Option<&str>) -> Result<PageRequest, ApiError> {
    let first = first.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(0..=MAX_PAGE_SIZE).contains(&first) {
        return Err(ApiError::bad_input(format!(
            "first must be between 0 and {MAX_PAGE_SIZE}, got {first}"
        )));
    }
    let after = after.map(decode_cursor).transpose()?;
    Ok(PageRequest {
        first: first as usize,
        after,
    })
}

/// The complexity of a page: its size (the default when `first` is absent, at least 1)
/// times what each node asks for, plus the connection itself.
pub fn page_complexity(first: Option<i32>, child_complexity: usize) -> usize {
    let size = first.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE) as usize;
    size * child_complexity + 1
}

/// Parses a GraphQL `ID` that must be a UUID; `what` names it in the error.
pub fn parse_id(id: &async_graphql::ID, what: &str) -> Result<Uuid, ApiError> {
    id.parse::<Uuid>()
        .map_err(|_| ApiError::bad_input(format!("invalid {what} id: expected a UUID")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_decodes_to_the_position_it_encodes() {
        let position = Position {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: Uuid::new_v4(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&position)).unwrap(), position);
    }

    #[test]
    fn garbage_cursors_are_bad_input() {
        for cursor in ["", "!!!", "djE6eHh4", &URL_SAFE_NO_PAD.encode("v2:1:x")] {
            let error = decode_cursor(cursor).unwrap_err();
            assert_eq!(
                error.code(),
                crate::error::ErrorCode::BadUserInput,
                "{cursor}"
            );
        }
    }

    #[test]
    fn page_sizes_outside_zero_to_one_hundred_are_refused() {
        assert!(page_request(Some(-1), None).is_err());
        assert!(page_request(Some(101), None).is_err());
        assert_eq!(page_request(Some(100), None).unwrap().first, 100);
        assert_eq!(page_request(None, None).unwrap().first, 20);
    }
}
