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

impl From<&tokio_postgres::Row> for RetryPolicyRow {
    fn from(r: &tokio_postgres::Row) -> Self {
        RetryPolicyRow {
            kind: r.get("kind"),
            max_attempts: r.get("max_attempts"),
            base_delay_ms: r.get("base_delay_ms"),
            multiplier: r.get("multiplier"),
            max_delay_ms: r.get("max_delay_ms"),
            jitter: r.get("jitter"),
        }
    }
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
    Ok(rows.iter().map(RetryPolicyRow::from).collect())
}

/// Gives each kind of `defaults` that has no row its default schedule (a kind added to the
/// code gets one when a worker first starts); rows that exist, and an operator's changes to
/// them, are kept. Returns how many rows were added.
pub async fn insert_missing_retry_policies<C: AsClient>(
    db: &Sql<C>,
    defaults: &[RetryPolicyRow],
) -> Result<u64, StoreError> {
    let kinds: Vec<&str> = defaults.iter().map(|p| p.kind.as_str()).collect();
    let max_attempts: Vec<i32> = defaults.iter().map(|p| p.max_attempts).collect();
    let base_delay_ms: Vec<i64> = defaults.iter().map(|p| p.base_delay_ms).collect();
    let multiplier: Vec<f64> = defaults.iter().map(|p| p.multiplier).collect();
    let max_delay_ms: Vec<i64> = defaults.iter().map(|p| p.max_delay_ms).collect();
    let jitter: Vec<f64> = defaults.iter().map(|p| p.jitter).collect();
    db.execute(
        "insert into retry_policies (kind, max_attempts, base_delay_ms, multiplier, max_delay_ms, jitter)
         select * from unnest($1::text[], $2::int4[], $3::int8[], $4::float8[], $5::int8[], $6::float8[])
         on conflict (kind) do nothing",
        &[&kinds, &max_attempts, &base_delay_ms, &multiplier, &max_delay_ms, &jitter],
    )
    .await
}

/// Changes a kind's policy; `None` fields keep their value. Returns the new row, or `None`
/// for an unknown kind. The table's checks (max not below base, jitter in 0..1, …) hold.
pub async fn update_retry_policy<C: AsClient>(
    db: &Sql<C>,
    kind: &str,
    max_attempts: Option<i32>,
    base_delay_ms: Option<i64>,
    multiplier: Option<f64>,
    max_delay_ms: Option<i64>,
    jitter: Option<f64>,
) -> Result<Option<RetryPolicyRow>, StoreError> {
    let row = db
        .query_opt(
            "update retry_policies set
                 max_attempts = coalesce($2, max_attempts),
                 base_delay_ms = coalesce($3, base_delay_ms),
                 multiplier = coalesce($4, multiplier),
                 max_delay_ms = coalesce($5, max_delay_ms),
                 jitter = coalesce($6, jitter),
                 updated_at = now()
             where kind = $1
             returning kind, max_attempts, base_delay_ms, multiplier, max_delay_ms, jitter",
            &[
                &kind,
                &max_attempts,
                &base_delay_ms,
                &multiplier,
                &max_delay_ms,
                &jitter,
            ],
        )
        .await?;
    Ok(row.as_ref().map(RetryPolicyRow::from))
}
