//! What bb8 pools leave out: the reason a checkout timed out. bb8 keeps retrying a failing
//! connect until the checkout's deadline and then reports only "timed out"; the pools here
//! keep the last connect error so the timeout can say why ("certificate refused",
//! "connection refused", "password authentication failed").

use std::fmt::Display;
use std::sync::{Arc, Mutex};

/// A bb8 error sink that remembers the last connect error, shared with its pool's owner.
#[derive(Debug, Clone, Default)]
pub struct LastError(Arc<Mutex<Option<String>>>);

impl LastError {
    /// "timed out waiting for a connection to `what`", with the last connect error if any.
    pub fn timed_out(&self, what: &str) -> String {
        let last = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match last {
            Some(error) => {
                format!("timed out waiting for a connection to {what}; the last attempt failed: {error}")
            }
            None => format!("timed out waiting for a connection to {what}"),
        }
    }
}

impl<E: Display + Send + 'static> bb8::ErrorSink<E> for LastError {
    fn sink(&self, error: E) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error.to_string());
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<E>> {
        Box::new(self.clone())
    }
}
