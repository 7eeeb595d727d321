//! The `retry_policies` table: one retry schedule per job kind.

use crate::sql::{AsClient, Sql, StoreError};

/// A row of `retry_policies`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicyRow {
    pub kind: String,
    pub max_attempts: i32,
    pub base_delay_ms: i64,
    pub multiplier: f64,
    pub max_delay_ms: i64,
    pub jitter: f64,
}

pub async fn load_retry_policies<C: AsClient>(
    db: &Sql<C>,
) -> Result<Vec<RetryPolicyRow>, StoreError> {
    let rows = db
        .query(
            "select kind, max_attempts, base_delay_ms, multiplier, max_delay_ms, jitter
             from retry_policies",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| RetryPolicyRow {
            kind: r.get("kind"),
            max_attempts: r.get("max_attempts"),
            base_delay_ms: r.get("base_delay_ms"),
            multiplier: r.get("multiplier"),
            max_delay_ms: r.get("max_delay_ms"),
            jitter: r.get("jitter"),
        })
        .collect())
}
