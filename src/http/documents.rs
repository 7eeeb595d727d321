//! Parsed GraphQL documents by query text. Clients send the same few query strings over and
//! over; parsing one (async-graphql's pest grammar) was an eighth of the API's CPU under the
//! review-page load, and a copy of the parsed tree costs a fraction of that.
//!
//! Bounded like the statement cache (`reviews_db::statements`): at most [`MAX_ENTRIES`]
//! documents of at most [`MAX_QUERY_BYTES`] each, and a full cache is emptied rather than
//! grown, so a client sending endless distinct queries costs parsing, never memory. Only
//! documents that parsed are kept: a syntax error is parsed (and reported) every time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::parser::types::ExecutableDocument;

/// How many distinct documents are kept.
pub const MAX_ENTRIES: usize = 256;
/// Longer queries are parsed every time (they are rare, and would make the bound large).
pub const MAX_QUERY_BYTES: usize = 8 * 1024;

#[derive(Default)]
pub struct DocumentCache {
    documents: Mutex<HashMap<Arc<str>, Arc<ExecutableDocument>>>,
}

impl DocumentCache {
    /// Gives `request` its parsed document, from the cache or by parsing (and keeping) it.
    /// Returns the document, or None when the query does not parse (the executor reports
    /// the syntax error).
    pub fn parse(&self, request: &mut async_graphql::Request) -> Option<Arc<ExecutableDocument>> {
        if let Some(document) = self.get(&request.query) {
            request.set_parsed_query(ExecutableDocument::clone(&document));
            return Some(document);
        }
        let document = Arc::new(request.parsed_query().ok()?.clone());
        if request.query.len() <= MAX_QUERY_BYTES {
            let mut documents = self.lock();
            if documents.len() >= MAX_ENTRIES {
                documents.clear();
            }
            documents.insert(Arc::from(request.query.as_str()), document.clone());
        }
        Some(document)
    }

    fn get(&self, query: &str) -> Option<Arc<ExecutableDocument>> {
        self.lock().get(query).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<ExecutableDocument>>> {
        // A panic while holding the lock cannot leave the map half-updated: recover it.
        self.documents.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str) -> async_graphql::Request {
        async_graphql::Request::new(query)
    }

    #[test]
    fn a_query_is_parsed_once_and_served_from_the_cache_after() {
        let cache = DocumentCache::default();
        let first = cache.parse(&mut request("{ a }")).unwrap();
        assert_eq!(cache.len(), 1);
        let mut again = request("{ a }");
        let second = cache.parse(&mut again).unwrap();
        assert!(
            Arc::ptr_eq(&first, &second),
            "the second parse came from the cache"
        );
        // The request carries the document for the executor.
        assert_eq!(
            again.parsed_query().unwrap().operations.iter().count(),
            first.operations.iter().count()
        );
    }

    #[test]
    fn syntax_errors_and_long_queries_are_not_kept() {
        let cache = DocumentCache::default();
        assert!(cache.parse(&mut request("{ a ")).is_none());
        let long = format!("{{ a {} }}", " ".repeat(MAX_QUERY_BYTES));
        assert!(cache.parse(&mut request(&long)).is_some());
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_starts_over_instead_of_growing() {
        let cache = DocumentCache::default();
        for i in 0..MAX_ENTRIES {
            cache.parse(&mut request(&format!("{{ a{i} }}")));
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        cache.parse(&mut request("{ one_more }"));
        assert_eq!(cache.len(), 1);
    }
}
