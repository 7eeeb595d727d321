//! Retry schedules, read from the `retry_policies` table (one row per job kind) and reloaded
//! when the table announces a change.
//!
//! The delay before attempt n+1 (after n failed attempts) is
//! `min(max_delay, base_delay × multiplier^(n−1))`, then shortened at random by up to
//! `jitter` of itself, so retries of many jobs that failed together spread out instead of
//! arriving as one wave. A job that has used `max_attempts` becomes a dead letter.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use reviews_db::retry_policies::{load_retry_policies, RetryPolicyRow};
use reviews_db::{Db, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: i32,
    pub base_delay_ms: i64,
    pub multiplier: f64,
    pub max_delay_ms: i64,
    /// Fraction (0..=1) by which a delay may be shortened at random.
    pub jitter: f64,
}

impl RetryPolicy {
    /// The schedule for kinds without a row: 10 attempts, 1 s doubling to at most 5 min.
    pub const FALLBACK: RetryPolicy = RetryPolicy {
        max_attempts: 10,
        base_delay_ms: 1_000,
        multiplier: 2.0,
        max_delay_ms: 300_000,
        jitter: 0.2,
    };

    /// The delay before the next attempt after `failed_attempts` failures (≥ 1), without
    /// jitter.
    pub fn nominal_delay_ms(&self, failed_attempts: i32) -> i64 {
        let exponent = (failed_attempts.max(1) - 1) as f64;
        let delay = self.base_delay_ms as f64 * self.multiplier.powf(exponent);
        // powf can overflow to infinity for long schedules; the cap keeps it finite.
        delay.min(self.max_delay_ms as f64) as i64
    }

    /// The delay with jitter applied; `random` is uniform in [0, 1).
    pub fn delay_ms(&self, failed_attempts: i32, random: f64) -> i64 {
        let nominal = self.nominal_delay_ms(failed_attempts) as f64;
        (nominal * (1.0 - self.jitter * random)).round() as i64
    }

    /// The delay after `failed_attempts` failures, with fresh randomness.
    pub fn next_delay(&self, failed_attempts: i32) -> Duration {
        let ms = self.delay_ms(failed_attempts, rand::random::<f64>());
        Duration::from_millis(ms.max(0) as u64)
    }
}

impl RetryPolicy {
    /// This schedule as the `retry_policies` row of `kind`.
    pub fn row(&self, kind: &str) -> RetryPolicyRow {
        RetryPolicyRow {
            kind: kind.to_owned(),
            max_attempts: self.max_attempts,
            base_delay_ms: self.base_delay_ms,
            multiplier: self.multiplier,
            max_delay_ms: self.max_delay_ms,
            jitter: self.jitter,
        }
    }
}

impl From<&RetryPolicyRow> for RetryPolicy {
    fn from(row: &RetryPolicyRow) -> Self {
        RetryPolicy {
            max_attempts: row.max_attempts,
            base_delay_ms: row.base_delay_ms,
            multiplier: row.multiplier,
            max_delay_ms: row.max_delay_ms,
            jitter: row.jitter,
        }
    }
}

/// Every kind's policy, shared by the runner's tasks and swapped whole on reload.
#[derive(Clone, Default)]
pub struct RetryPolicies {
    by_kind: Arc<RwLock<HashMap<String, RetryPolicy>>>,
}

impl RetryPolicies {
    /// The policy for `kind`, or [`RetryPolicy::FALLBACK`].
    pub fn for_kind(&self, kind: &str) -> RetryPolicy {
        self.by_kind
            .read()
            .expect("retry policies lock poisoned")
            .get(kind)
            .cloned()
            .unwrap_or(RetryPolicy::FALLBACK)
    }

    /// Reloads the table whenever `bell` rings (it changed), until `shutdown`.
    pub async fn reload_when_rung(
        self,
        db: Db,
        bell: Arc<tokio::sync::Notify>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = bell.notified() => {}
            }
            if let Err(error) = self.reload(&db).await {
                tracing::warn!(error = %error, "could not reload retry policies");
            }
        }
    }

    /// Reads the table again.
    pub async fn reload(&self, db: &Db) -> Result<(), StoreError> {
        let conn = db.conn().await?;
        let rows = load_retry_policies(&conn).await?;
        let by_kind = rows
            .iter()
            .map(|r| (r.kind.clone(), RetryPolicy::from(r)))
            .collect();
        *self.by_kind.write().expect("retry policies lock poisoned") = by_kind;
        tracing::info!(policies = rows.len(), "loaded retry policies");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay_ms: 1_000,
            multiplier: 2.0,
            max_delay_ms: 5_000,
            jitter,
        }
    }

    #[test]
    fn delays_grow_by_the_multiplier_up_to_the_cap() {
        let delays: Vec<i64> = (1..=6).map(|n| policy(0.0).nominal_delay_ms(n)).collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 5_000, 5_000, 5_000]);
    }

    #[test]
    fn jitter_only_shortens_and_by_at_most_its_fraction() {
        let p = policy(0.2);
        assert_eq!(p.delay_ms(2, 0.0), 2_000);
        assert_eq!(p.delay_ms(2, 0.5), 1_800);
        assert_eq!(p.delay_ms(2, 0.999_999), 1_600);
    }

    #[test]
    fn a_huge_exponent_stays_at_the_cap() {
        let mut p = policy(0.0);
        p.multiplier = 10.0;
        assert_eq!(p.nominal_delay_ms(1_000), 5_000);
    }
}
