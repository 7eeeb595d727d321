//! What happens to a job after a run: a pure decision from how the run ended, the attempt
//! and the kind's retry policy. `completer` applies it (Postgres first, then Redis).

use std::time::Duration;

use crate::jobs::JobError;
use crate::retry::RetryPolicy;

/// How a job's run ended.
#[derive(Debug)]
pub enum RunResult {
    Succeeded,
    Failed(JobError),
}

/// What to do with a job after a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done: record it and forget it.
    Complete,
    /// Failed, with attempts left: run it again after `delay`.
    Retry { delay: Duration, error: String },
    /// Not run (not an attempt): give the attempt back and run it again after `delay`.
    Defer { delay: Duration, reason: String },
    /// Failed for good: a dead letter.
    Bury { error: String, why: BuryReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuryReason {
    /// The job said it can never work.
    Permanent,
    /// This was its last attempt.
    OutOfAttempts,
}

impl BuryReason {
    /// The log message of a burial.
    pub fn message(self) -> &'static str {
        match self {
            BuryReason::Permanent => "job failed permanently; now a dead letter",
            BuryReason::OutOfAttempts => "job used up its attempts; now a dead letter",
        }
    }
}

/// Decides what follows a run of attempt `attempt` (from 1) under `policy`. `jitter_draw` is
/// uniform in [0, 1): it shortens a retry's delay by up to the policy's jitter.
pub fn outcome(result: RunResult, attempt: i32, policy: &RetryPolicy, jitter_draw: f64) -> Outcome {
    let (error, asked_after) = match result {
        RunResult::Succeeded => return Outcome::Complete,
        RunResult::Failed(JobError::Permanent(error)) => {
            return Outcome::Bury {
                error: format!("{error:#}"),
                why: BuryReason::Permanent,
            }
        }
        RunResult::Failed(JobError::Deferred { after, reason }) => {
            return Outcome::Defer {
                delay: after,
                reason,
            }
        }
        RunResult::Failed(JobError::RetryAfter { after, error }) => (error, Some(after)),
        RunResult::Failed(JobError::Retryable(error)) => (error, None),
    };
    let error = format!("{error:#}");
    if attempt >= policy.max_attempts {
        return Outcome::Bury {
            error,
            why: BuryReason::OutOfAttempts,
        };
    }
    let scheduled = Duration::from_millis(policy.delay_ms(attempt, jitter_draw).max(0) as u64);
    // A Retry-After is honoured, but never beyond the policy's cap.
    let cap = Duration::from_millis(policy.max_delay_ms.max(0) as u64);
    let delay = match asked_after {
        Some(after) => scheduled.max(after).min(cap),
        None => scheduled,
    };
    Outcome::Retry { delay, error }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base_delay_ms: 1_000,
        multiplier: 2.0,
        max_delay_ms: 10_000,
        jitter: 0.5,
    };

    fn failed(error: JobError) -> RunResult {
        RunResult::Failed(error)
    }

    fn retryable() -> JobError {
        JobError::Retryable(anyhow::anyhow!("database blinked"))
    }

    #[test]
    fn a_success_completes_whatever_the_attempt() {
        assert_eq!(
            outcome(RunResult::Succeeded, 3, &POLICY, 0.0),
            Outcome::Complete
        );
    }

    #[test]
    fn a_retryable_failure_with_attempts_left_retries_on_the_schedule() {
        let decided = outcome(failed(retryable()), 2, &POLICY, 0.0);
        assert_eq!(
            decided,
            Outcome::Retry {
                delay: Duration::from_secs(2),
                error: "database blinked".into()
            }
        );
        // The draw shortens the delay by up to the jitter.
        let Outcome::Retry { delay, .. } = outcome(failed(retryable()), 2, &POLICY, 0.5) else {
            panic!("a retry");
        };
        assert_eq!(delay, Duration::from_millis(1_500));
    }

    #[test]
    fn the_last_attempt_buries_the_job() {
        assert_eq!(
            outcome(failed(retryable()), 3, &POLICY, 0.0),
            Outcome::Bury {
                error: "database blinked".into(),
                why: BuryReason::OutOfAttempts
            }
        );
    }

    #[test]
    fn a_permanent_failure_buries_at_once() {
        let error = JobError::Permanent(anyhow::anyhow!("unreadable payload"));
        assert_eq!(
            outcome(failed(error), 1, &POLICY, 0.0),
            Outcome::Bury {
                error: "unreadable payload".into(),
                why: BuryReason::Permanent
            }
        );
    }

    #[test]
    fn a_deferral_is_not_an_attempt_even_on_the_last_one() {
        let error = JobError::Deferred {
            after: Duration::from_millis(500),
            reason: "endpoint busy".into(),
        };
        assert_eq!(
            outcome(failed(error), 3, &POLICY, 0.0),
            Outcome::Defer {
                delay: Duration::from_millis(500),
                reason: "endpoint busy".into()
            }
        );
    }

    #[test]
    fn retry_after_is_honoured_within_the_cap() {
        let asks = |secs| JobError::RetryAfter {
            after: Duration::from_secs(secs),
            error: anyhow::anyhow!("503"),
        };
        let delay = |decided| match decided {
            Outcome::Retry { delay, .. } => delay,
            other => panic!("a retry, not {other:?}"),
        };
        // Later than the schedule: the server's wish.
        assert_eq!(
            delay(outcome(failed(asks(5)), 1, &POLICY, 0.0)),
            Duration::from_secs(5)
        );
        // Sooner than the schedule: the schedule.
        assert_eq!(
            delay(outcome(failed(asks(0)), 2, &POLICY, 0.0)),
            Duration::from_secs(2)
        );
        // Beyond the cap: the cap.
        assert_eq!(
            delay(outcome(failed(asks(3_600)), 1, &POLICY, 0.0)),
            Duration::from_secs(10)
        );
        // On the last attempt, a dead letter all the same.
        assert!(matches!(
            outcome(failed(asks(5)), 3, &POLICY, 0.0),
            Outcome::Bury {
                why: BuryReason::OutOfAttempts,
                ..
            }
        ));
    }
}
