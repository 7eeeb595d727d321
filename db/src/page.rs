//! Keyset pagination. Every list is ordered newest first by `(created_at, id)`; a page starts
//! strictly after a [`Position`] and asks for one row more than it returns, to learn whether
//! another page follows.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A place in a `(created_at desc, id desc)` ordering: the row a cursor points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// What a page query needs: how many rows and where to start.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub first: usize,
    pub after: Option<Position>,
}

impl PageRequest {
    /// The SQL `limit`: one more than asked, to tell whether there is a next page.
    pub fn limit(&self) -> i64 {
        self.first as i64 + 1
    }

    /// The cursor's parts as SQL parameters; with no cursor, a position after every row.
    pub fn after_params(&self) -> (DateTime<Utc>, Uuid) {
        match self.after {
            Some(p) => (p.created_at, p.id),
            None => (DateTime::<Utc>::MAX_UTC, Uuid::max()),
        }
    }
}

/// One page of rows and whether more follow.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub rows: Vec<T>,
    pub has_next: bool,
}

impl<T> Page<T> {
    /// Cuts the `limit()` rows a query returned down to the page asked for.
    pub fn from_rows(mut rows: Vec<T>, request: &PageRequest) -> Self {
        let has_next = rows.len() > request.first;
        rows.truncate(request.first);
        Page { rows, has_next }
    }
}
