//! What one client may do: mutations per minute, per user and per client address, counted
//! one unit per root mutation field; and operations at once per client address. Reads are
//! not rate limited; their cost is bounded by the query limits and the concurrency cap.
//!
//! The mutation limits are GCRA allowances: in this process (governor's keyed limiters), or,
//! when the API is given Redis (`REDIS_URL` or `REDIS_CLUSTER_NODES`), in Redis, shared by
//! every API process, so N replicas do not give a user N times the limit. Each allowance is
//! one key, changed by one script (cluster-safe). While Redis cannot be reached each process
//! limits on its own, and says so in its log and `rate_limit_shared_failures_total`.
//!
//! A client address is the peer's, or the right-most untrusted hop of `X-Forwarded-For` when
//! the peer is a trusted proxy (`crate::http::client`). IPv6 addresses are keyed by their /64
//! (one subscriber's network), IPv4-mapped ones as IPv4.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use reviews_service::redis::Redis;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a client was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Over a limit: the next try is allowed after `seconds`.
    Wait { seconds: u64, what: &'static str },
    /// The request alone asks more than a limit allows in a minute: waiting will not help.
    TooBig { asked: u32, allowed: u32 },
}

/// The key a client address is limited under: IPv6 by its /64, IPv4-mapped as IPv4.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Clone)]
pub struct ClientLimits {
    per_user: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    per_ip: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    user_quota: u32,
    ip_quota: u32,
    concurrency: usize,
    running: Arc<Mutex<HashMap<IpAddr, Arc<Semaphore>>>>,
    shared: Option<Arc<SharedAllowances>>,
}

/// The mutation allowances kept in Redis, shared by every API process.
pub struct SharedAllowances {
    redis: Redis,
    prefix: String,
    script: redis::Script,
}

/// Takes `ARGV[2]` units from the allowance at `KEYS[1]` (GCRA: the key holds the
/// theoretical arrival time, in ms of Redis's clock, of the next unit; a minute's quota may
/// be used at once), one unit every `ARGV[1]` ms. Returns 0 when taken, else how many ms
/// until they could be.
const TAKE: &str = r"
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local after = tat + interval * tonumber(ARGV[2])
local wait = after - 60000 - now
if wait > 0 then return math.ceil(wait) end
redis.call('SET', KEYS[1], tostring(after), 'PX', math.ceil(after - now) + 1)
return 0
";

impl SharedAllowances {
    pub fn new(redis: Redis, prefix: &str) -> Self {
        SharedAllowances {
            redis,
            prefix: prefix.to_owned(),
            script: redis::Script::new(TAKE),
        }
    }

    /// Takes `units` from `key`'s allowance of `quota` a minute: Ok(None) when taken,
    /// Ok(Some(wait)) when refused.
    async fn take(
        &self,
        key: &str,
        units: u32,
        quota: u32,
    ) -> Result<Option<Duration>, redis::RedisError> {
        let mut invocation = self.script.key(format!("{}:rate:{key}", self.prefix));
        invocation.arg(60_000.0 / f64::from(quota)).arg(units);
        let mut conn = self.redis.checkout().await?;
        let result = invocation.invoke_async::<u64>(&mut conn).await;
        let wait_ms = conn.check(result)?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }
}

impl ClientLimits {
    /// `per_user` and `per_ip` mutations a minute (0 turns one off); at most `concurrency`
    /// operations of one client address at once (0: no cap).
    pub fn new(per_user: u32, per_ip: u32, concurrency: usize) -> Self {
        ClientLimits {
            per_user: NonZeroU32::new(per_user)
                .map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n)))),
            per_ip: NonZeroU32::new(per_ip)
                .map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n)))),
            user_quota: per_user,
            ip_quota: per_ip,
            concurrency,
            running: Arc::default(),
            shared: None,
        }
    }

    /// The same limits, with the mutation allowances kept in Redis.
    pub fn shared_through(mut self, allowances: Arc<SharedAllowances>) -> Self {
        self.shared = Some(allowances);
        self
    }

    /// Counts `units` mutations (a request's root mutation fields) for the user and the
    /// client address; refused when either limit is over.
    pub async fn check_mutations(
        &self,
        user: Option<&str>,
        client: Option<IpAddr>,
        units: u32,
    ) -> Result<(), Refusal> {
        let units = NonZeroU32::new(units).unwrap_or(NonZeroU32::MIN);
        // More than a minute's allowance can never be taken: say so instead of "wait".
        let quotas = [
            (client.is_some(), self.ip_quota),
            (user.is_some(), self.user_quota),
        ];
        if let Some(&(_, allowed)) = quotas
            .iter()
            .find(|&&(applies, quota)| applies && quota != 0 && units.get() > quota)
        {
            return Err(Refusal::TooBig {
                asked: units.get(),
                allowed,
            });
        }
        if let Some(shared) = &self.shared {
            match self.check_shared(shared, user, client, units.get()).await {
                Ok(verdict) => return verdict,
                Err(error) => {
                    metrics::counter!("rate_limit_shared_failures_total").increment(1);
                    tracing::warn!(error = %error, "rate limits: Redis unreachable; limiting in this process alone");
                }
            }
        }
        if let (Some(limiter), Some(ip)) = (&self.per_ip, client) {
            take(limiter, &client_key(ip), units, self.ip_quota)?;
        }
        if let (Some(limiter), Some(user)) = (&self.per_user, user) {
            take(limiter, &user.to_owned(), units, self.user_quota)?;
        }
        Ok(())
    }

    async fn check_shared(
        &self,
        shared: &SharedAllowances,
        user: Option<&str>,
        client: Option<IpAddr>,
        units: u32,
    ) -> Result<Result<(), Refusal>, redis::RedisError> {
        let mut keys = Vec::new();
        if let (true, Some(ip)) = (self.ip_quota != 0, client) {
            keys.push((format!("ip:{}", client_key(ip)), self.ip_quota));
        }
        if let (true, Some(user)) = (self.user_quota != 0, user) {
            keys.push((format!("user:{user}"), self.user_quota));
        }
        for (key, quota) in keys {
            if let Some(wait) = shared.take(&key, units, quota).await? {
                return Ok(Err(Refusal::Wait {
                    seconds: wait.as_secs_f64().ceil().max(1.0) as u64,
                    what: "mutations",
                }));
            }
        }
        Ok(Ok(()))
    }

    /// Enters an operation of `client`: refused when it already runs as many as allowed.
    /// The slot is held until the returned permit drops.
    pub fn enter(&self, client: Option<IpAddr>) -> Result<Option<OwnedSemaphorePermit>, Refusal> {
        let Some(ip) = client.filter(|_| self.concurrency > 0) else {
            return Ok(None);
        };
        let slots = self
            .running
            .lock()
            .expect("client slots lock poisoned")
            .entry(client_key(ip))
            .or_insert_with(|| Arc::new(Semaphore::new(self.concurrency)))
            .clone();
        match slots.try_acquire_owned() {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => Err(Refusal::Wait {
                seconds: 1,
                what: "operations at once from your address (API_MAX_CONCURRENT_PER_CLIENT)",
            }),
        }
    }

    /// Forgets keys that are back to a full allowance, so memory follows active clients.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.per_user {
            limiter.retain_recent();
        }
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
        }
        let concurrency = self.concurrency;
        self.running
            .lock()
            .expect("client slots lock poisoned")
            .retain(|_, slots| slots.available_permits() < concurrency);
    }
}

fn take<K: Clone + std::hash::Hash + Eq>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    units: NonZeroU32,
    quota: u32,
) -> Result<(), Refusal> {
    let now = DefaultClock::default().now();
    match limiter.check_key_n(key, units) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => {
            let wait: Duration = not_until.wait_time_from(now);
            Err(Refusal::Wait {
                seconds: wait.as_secs_f64().ceil().max(1.0) as u64,
                what: "mutations",
            })
        }
        Err(_) => Err(Refusal::TooBig {
            asked: units.get(),
            allowed: quota,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_user_over_the_limit_is_told_how_long_to_wait_and_others_are_not() {
        let limits = ClientLimits::new(2, 0, 0);
        assert!(limits.check_mutations(Some("alice"), None, 1).await.is_ok());
        assert!(limits.check_mutations(Some("alice"), None, 1).await.is_ok());
        let Err(Refusal::Wait { seconds, .. }) =
            limits.check_mutations(Some("alice"), None, 1).await
        else {
            panic!("refused with a wait");
        };
        assert!((1..=30).contains(&seconds), "{seconds}");
        assert!(limits.check_mutations(Some("bob"), None, 1).await.is_ok());
    }

    #[tokio::test]
    async fn each_root_mutation_field_counts_and_more_than_a_minute_allows_is_too_big() {
        let limits = ClientLimits::new(5, 0, 0);
        assert!(limits.check_mutations(Some("alice"), None, 3).await.is_ok());
        assert!(matches!(
            limits.check_mutations(Some("alice"), None, 3).await,
            Err(Refusal::Wait { .. })
        ));
        assert_eq!(
            limits.check_mutations(Some("bob"), None, 6).await,
            Err(Refusal::TooBig {
                asked: 6,
                allowed: 5
            })
        );
    }

    #[tokio::test]
    async fn an_address_over_the_limit_is_refused_whoever_the_user_and_ipv6_counts_per_64() {
        let limits = ClientLimits::new(0, 1, 0);
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(limits
            .check_mutations(Some("alice"), Some(ip), 1)
            .await
            .is_ok());
        assert!(limits
            .check_mutations(Some("bob"), Some(ip), 1)
            .await
            .is_err());
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limits.check_mutations(None, Some(a), 1).await.is_ok());
        assert!(
            limits.check_mutations(None, Some(b), 1).await.is_err(),
            "same /64"
        );
        assert!(limits.check_mutations(None, Some(other), 1).await.is_ok());
        assert_eq!(
            client_key("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn operations_at_once_are_capped_per_address() {
        let limits = ClientLimits::new(0, 0, 2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let first = limits.enter(Some(ip)).unwrap();
        let _second = limits.enter(Some(ip)).unwrap();
        assert!(limits.enter(Some(ip)).is_err());
        assert!(limits.enter(Some("10.0.0.2".parse().unwrap())).is_ok());
        drop(first);
        assert!(limits.enter(Some(ip)).is_ok());
    }
}
