//! `ErrorCode`, the codes clients see in `extensions.code`; `ApiError`, the one error type
//! resolvers return, and how each becomes a GraphQL error with its code.
//!
//! `ApiError` deliberately does not implement `Display`: async-graphql converts anything
//! displayable into an error *without* a code, so keeping `Display` off forces every error
//! through [`From<ApiError> for async_graphql::Error`], the one place codes are set and
//! internal detail is logged instead of returned.

use async_graphql::ErrorExtensions;
use reviews_db::StoreError;

/// Every code a client can see in `extensions.code` (and the `code` label of
/// `graphql_errors_total`): a closed set, so metrics labels stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadUserInput,
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    RateLimited,
    Timeout,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadUserInput,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::RateLimited,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadUserInput => "BAD_USER_INPUT",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// The code an error's extension names; a string that is none of ours is INTERNAL
    /// (something other than our resolvers made it, and its text is not for clients).
    pub fn from_extension(code: &str) -> ErrorCode {
        Self::ALL
            .into_iter()
            .find(|known| known.as_str() == code)
            .unwrap_or(ErrorCode::Internal)
    }
}

#[derive(Debug, Clone)]
pub enum ApiError {
    /// The input is wrong; the message says how to fix it.
    BadInput(String),
    /// No valid token (missing, expired, forged).
    Unauthenticated(String),
    /// A valid token, but not allowed to do this.
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    /// Anything that is not the client's fault; logged, never shown.
    Internal(std::sync::Arc<anyhow::Error>),
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadInput(_) => ErrorCode::BadUserInput,
            ApiError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        ApiError::BadInput(message.into())
    }

    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(std::sync::Arc::new(cause.into()))
    }
}

/// Constraint names (from db/migrations) mapped to what a client is told. The one place
/// where database rules become client errors.
fn constraint_error(constraint: &str) -> Option<ApiError> {
    let error = match constraint {
        "reviews_one_per_author" => {
            ApiError::Conflict("you have already reviewed this product".into())
        }
        "reviews_rating_range" => ApiError::bad_input("rating must be between 1 and 5"),
        "reviews_title_length" => ApiError::bad_input("title must be between 1 and 200 characters"),
        "reviews_body_length" => ApiError::bad_input("body must be between 1 and 10000 characters"),
        "reviews_product_id_fkey" => ApiError::NotFound("product not found".into()),
        "products_name_length" => ApiError::bad_input("name must be between 1 and 200 characters"),
        "retry_policies_max_not_below_base" => {
            ApiError::bad_input("maxDelayMs must not be below baseDelayMs")
        }
        _ => return None,
    };
    Some(error)
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        error
            .constraint()
            .and_then(constraint_error)
            .unwrap_or_else(|| ApiError::internal(error))
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(error: ApiError) -> Self {
        let code = error.code();
        let message = match error {
            ApiError::BadInput(m)
            | ApiError::Unauthenticated(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m) => m,
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                "internal error".to_owned()
            }
        };
        async_graphql::Error::new(message).extend_with(|_, e| e.set("code", code.as_str()))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_from_its_extension_and_strangers_are_internal() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_extension(code.as_str()), code);
        }
        assert_eq!(ErrorCode::from_extension("OOPS"), ErrorCode::Internal);
    }
}
