//! Counters of what a worker's runner did, read by tests (and summed up in the metrics).

use std::sync::atomic::AtomicU64;

#[derive(Debug, Default)]
pub struct RunnerStats {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    pub taken_back: AtomicU64,
    pub skipped: AtomicU64,
    /// Jobs the relay started and handed to this runner (no read, no start statement).
    pub handed_over: AtomicU64,
    /// Statements that recorded attempts (one per batch of deliveries).
    pub start_batches: AtomicU64,
    /// Statements that recorded successes (one per batch: see `completer`).
    pub completion_batches: AtomicU64,
}
