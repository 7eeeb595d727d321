//! Rate limits on mutations, per user and per client IP (governor's keyed GCRA limiters).
//! Reads are not limited here; their cost is bounded by the query limits.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

#[derive(Clone)]
pub struct MutationLimits {
    per_user: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    per_ip: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
}

impl MutationLimits {
    /// Limits of `per_user` and `per_ip` mutations a minute; 0 turns one off.
    pub fn new(per_user: u32, per_ip: u32) -> Self {
        MutationLimits {
            per_user: NonZeroU32::new(per_user)
                .map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n)))),
            per_ip: NonZeroU32::new(per_ip)
                .map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n)))),
        }
    }

    /// Counts one mutation; `Err(wait)` when either limit is exceeded, with how long until
    /// the next is allowed.
    pub fn check(&self, user: Option<&str>, ip: Option<IpAddr>) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        if let (Some(limiter), Some(ip)) = (&self.per_ip, ip) {
            limiter
                .check_key(&ip)
                .map_err(|not_until| not_until.wait_time_from(now))?;
        }
        if let (Some(limiter), Some(user)) = (&self.per_user, user) {
            limiter
                .check_key(&user.to_owned())
                .map_err(|not_until| not_until.wait_time_from(now))?;
        }
        Ok(())
    }

    /// Forgets keys that are back to a full allowance, so memory follows active clients.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.per_user {
            limiter.retain_recent();
        }
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_over_the_limit_is_told_how_long_to_wait_and_others_are_not() {
        let limits = MutationLimits::new(2, 0);
        assert!(limits.check(Some("alice"), None).is_ok());
        assert!(limits.check(Some("alice"), None).is_ok());
        let wait = limits.check(Some("alice"), None).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(limits.check(Some("bob"), None).is_ok());
    }

    #[test]
    fn an_ip_over_the_limit_is_refused_whoever_the_user() {
        let limits = MutationLimits::new(0, 1);
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(limits.check(Some("alice"), Some(ip)).is_ok());
        assert!(limits.check(Some("bob"), Some(ip)).is_err());
    }
}
