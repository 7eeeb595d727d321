//! Mutation inputs and their validation. Everything a client can get wrong is caught here,
//! with a message that says what to send instead; the database constraints stay as the
//! last line of defence (see `error::constraint_error`).

use async_graphql::{InputObject, ID};

use crate::error::ApiError;

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_BODY_CHARS: usize = 10_000;

#[derive(Debug, InputObject)]
pub struct CreateProductInput {
    /// 1 to 200 characters.
    pub name: String,
}

#[derive(Debug, InputObject)]
pub struct AddReviewInput {
    pub product_id: ID,
    /// Stars, 1 to 5.
    pub rating: i32,
    /// 1 to 200 characters.
    pub title: String,
    /// 1 to 10000 characters.
    pub body: String,
}

/// Fields to change; omitted ones keep their value. At least one is needed.
#[derive(Debug, InputObject)]
pub struct UpdateReviewInput {
    pub rating: Option<i32>,
    pub title: Option<String>,
    pub body: Option<String>,
}

/// Checks a star rating and narrows it to the column's type.
pub fn valid_rating(rating: i32) -> Result<i16, ApiError> {
    if (1..=5).contains(&rating) {
        Ok(rating as i16)
    } else {
        Err(ApiError::bad_input(format!(
            "rating must be between 1 and 5, got {rating}"
        )))
    }
}

/// Trims a text field and checks its length and characters. Control characters (NUL above
/// all, which Postgres text cannot hold) are refused; newlines and tabs are fine.
pub fn valid_text<'a>(field: &str, value: &'a str, max_chars: usize) -> Result<&'a str, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::bad_input(format!("{field} must not be empty")));
    }
    if value.chars().count() > max_chars {
        return Err(ApiError::bad_input(format!(
            "{field} must be at most {max_chars} characters"
        )));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ApiError::bad_input(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratings_outside_one_to_five_are_refused() {
        assert!(valid_rating(0).is_err());
        assert!(valid_rating(6).is_err());
        assert_eq!(valid_rating(5).unwrap(), 5);
    }

    #[test]
    fn text_is_trimmed_and_checked() {
        assert_eq!(valid_text("title", "  ok \n", 10).unwrap(), "ok");
        assert!(valid_text("title", "   ", 10).is_err());
        assert!(valid_text("title", "a\0b", 10).is_err());
        assert!(valid_text("title", &"é".repeat(11), 10).is_err());
        assert!(valid_text("title", &"é".repeat(10), 10).is_ok());
    }
}
