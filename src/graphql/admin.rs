//! Admin-only operations on the pipeline: dead letters and retry policies. Anonymous callers
//! get UNAUTHENTICATED, users FORBIDDEN.

use async_graphql::{Context, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use reviews_db::{jobs, retry_policies, Db};

use crate::auth::{Auth, Claims, Role};
use crate::error::{ApiError, ApiResult};

pub(super) fn require_admin<'a>(ctx: &'a Context<'_>) -> ApiResult<&'a Claims> {
    let user = ctx.data_unchecked::<Auth>().user()?;
    if user.role != Role::Admin {
        return Err(ApiError::Forbidden("this operation is for admins".into()));
    }
    Ok(user)
}

#[derive(SimpleObject)]
pub struct DeadJob {
    id: ID,
    job_id: ID,
    kind: String,
    attempts: i32,
    last_error: Option<String>,
    /// The job's payload, as JSON text.
    payload: String,
    died_at: DateTime<Utc>,
    replayed_at: Option<DateTime<Utc>>,
}

#[derive(SimpleObject)]
pub struct RetryPolicy {
    kind: String,
    max_attempts: i32,
    base_delay_ms: i64,
    multiplier: f64,
    max_delay_ms: i64,
    jitter: f64,
}

impl From<retry_policies::RetryPolicyRow> for RetryPolicy {
    fn from(r: retry_policies::RetryPolicyRow) -> Self {
        RetryPolicy {
            kind: r.kind,
            max_attempts: r.max_attempts,
            base_delay_ms: r.base_delay_ms,
            multiplier: r.multiplier,
            max_delay_ms: r.max_delay_ms,
            jitter: r.jitter,
        }
    }
}

/// Changes to a retry policy; omitted fields keep their value.
#[derive(InputObject)]
pub struct UpdateRetryPolicyInput {
    kind: String,
    /// 1 to 1000.
    max_attempts: Option<i32>,
    base_delay_ms: Option<i64>,
    /// At least 1.
    multiplier: Option<f64>,
    /// Not below the base delay.
    max_delay_ms: Option<i64>,
    /// 0 to 1: the fraction by which a delay may be shortened at random.
    jitter: Option<f64>,
}

#[derive(Default)]
pub struct AdminQuery;

#[Object]
impl AdminQuery {
    /// Dead letters, newest first (admin only).
    async fn dead_jobs(
        &self,
        ctx: &Context<'_>,
        kind: Option<String>,
        #[graphql(default = false)] include_replayed: bool,
        #[graphql(default = 20)] first: i32,
    ) -> ApiResult<Vec<DeadJob>> {
        require_admin(ctx)?;
        if !(0..=100).contains(&first) {
            return Err(ApiError::bad_input("first must be between 0 and 100"));
        }
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        let rows = jobs::list_dead_jobs(&conn, kind.as_deref(), include_replayed, i64::from(first))
            .await?;
        Ok(rows
            .into_iter()
            .map(|d| DeadJob {
                id: ID(d.id.to_string()),
                job_id: ID(d.job_id.to_string()),
                kind: d.kind,
                attempts: d.attempts,
                last_error: d.last_error,
                payload: d.payload.to_string(),
                died_at: d.died_at,
                replayed_at: d.replayed_at,
            })
            .collect())
    }

    /// Every job kind's retry schedule (admin only).
    async fn retry_policies(&self, ctx: &Context<'_>) -> ApiResult<Vec<RetryPolicy>> {
        require_admin(ctx)?;
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        let rows = retry_policies::load_retry_policies(&conn).await?;
        Ok(rows.into_iter().map(RetryPolicy::from).collect())
    }
}

#[derive(Default)]
pub struct AdminMutation;

#[Object]
impl AdminMutation {
    /// Makes a dead letter's job pending again with fresh attempts (admin only); a rating
    /// recompute whose product already has one waiting is merged into it (marked done).
    /// False when it was already replayed.
    async fn replay_dead_job(&self, ctx: &Context<'_>, id: ID) -> ApiResult<bool> {
        require_admin(ctx)?;
        let id: i64 = id
            .parse()
            .map_err(|_| ApiError::bad_input("invalid dead job id: expected a number"))?;
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        if !jobs::dead_job_exists(&conn, id).await? {
            return Err(ApiError::NotFound("dead job not found".into()));
        }
        Ok(jobs::replay_dead_job(&conn, id).await?)
    }

    /// Changes a job kind's retry schedule (admin only); workers reload it at once.
    async fn update_retry_policy(
        &self,
        ctx: &Context<'_>,
        input: UpdateRetryPolicyInput,
    ) -> ApiResult<RetryPolicy> {
        require_admin(ctx)?;
        if input.max_attempts.is_some_and(|n| !(1..=1000).contains(&n)) {
            return Err(ApiError::bad_input(
                "maxAttempts must be between 1 and 1000",
            ));
        }
        if input.base_delay_ms.is_some_and(|n| n <= 0) || input.max_delay_ms.is_some_and(|n| n <= 0)
        {
            return Err(ApiError::bad_input("delays must be positive"));
        }
        if input
            .multiplier
            .is_some_and(|m| !(m >= 1.0 && m.is_finite()))
        {
            return Err(ApiError::bad_input("multiplier must be at least 1"));
        }
        if input.jitter.is_some_and(|j| !(0.0..=1.0).contains(&j)) {
            return Err(ApiError::bad_input("jitter must be between 0 and 1"));
        }
        let conn = ctx.data_unchecked::<Db>().conn().await?;
        retry_policies::update_retry_policy(
            &conn,
            &input.kind,
            input.max_attempts,
            input.base_delay_ms,
            input.multiplier,
            input.max_delay_ms,
            input.jitter,
        )
        .await?
        .map(RetryPolicy::from)
        .ok_or_else(|| ApiError::NotFound(format!("no retry policy for kind {:?}", input.kind)))
    }
}
