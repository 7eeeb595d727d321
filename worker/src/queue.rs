//! The Redis job queue: the fast lane between the relay and the runners. It carries job ids
//! only; every job's state lives in Postgres, so whatever Redis forgets is re-enqueued from
//! there (see `reconcile`).
//!
//! Keys, all under one hash tag (`{prefix}`) so they share a cluster slot and scripts may
//! touch several:
//! - `{prefix}:jobs`: a stream of ready job ids, read by the consumer group `runners`. A
//!   delivered entry stays in the group's pending list until acknowledged: that is the job's
//!   lease. Runners renew it by heartbeat (XCLAIM resets its idle time, on Redis's clock) and
//!   take back entries idle longer than the lease (XAUTOCLAIM): their runner died.
//! - `{prefix}:delayed`: a sorted set of job ids due later (retries, and rating recomputes
//!   held back by `RATING_RECOMPUTE_INTERVAL`), scored by due time in ms of Redis's clock;
//!   promoted into the stream when due.
//! - `{prefix}:known`: the set of job ids the queue holds (stream, pending or delayed), so
//!   enqueueing the same job twice adds it once.

use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncConnectionConfig, Script, Value};

/// The consumer group every runner reads through.
pub const GROUP: &str = "runners";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(String),
}

/// A job id delivered to this runner, with the stream entry that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub entry_id: String,
    pub job_id: i64,
}

struct Keys {
    stream: String,
    delayed: String,
    known: String,
}

/// Adds job ids that the queue does not hold yet; returns how many were added. ARGV: job id
/// and delay pairs; a job with a delay (in ms of Redis's clock) goes to the delayed set.
const ENQUEUE: &str = r"
local now_ms
local added = 0
for i = 1, #ARGV, 2 do
  local id, delay = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('SADD', KEYS[2], id) == 1 then
    if delay > 0 then
      if not now_ms then
        local t = redis.call('TIME')
        now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      redis.call('ZADD', KEYS[3], now_ms + delay, id)
    else
      redis.call('XADD', KEYS[1], '*', 'job', id)
    end
    added = added + 1
  end
end
return added";

/// Acknowledges deliveries and forgets their jobs (they finished or died). ARGV: the group,
/// then entry id and job id pairs.
const FINISH: &str = r"
local entries, jobs = {}, {}
for i = 2, #ARGV, 2 do
  entries[#entries + 1] = ARGV[i]
  jobs[#jobs + 1] = ARGV[i + 1]
end
redis.call('XACK', KEYS[1], ARGV[1], unpack(entries))
redis.call('XDEL', KEYS[1], unpack(entries))
redis.call('SREM', KEYS[2], unpack(jobs))
return #entries";

/// Acknowledges a delivery and schedules the job again after ARGV[4] ms of Redis's clock.
const RETRY: &str = r"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[4]), ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
return 1";

/// Acknowledges a delivery and puts the job back at the end of the stream for another
/// runner (this one is shutting down).
const HAND_BACK: &str = r"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[1], '*', 'job', ARGV[3])
return 1";

/// Moves due retries into the stream. Returns {moved, ms until the next one or -1}.
const PROMOTE: &str = r"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('XADD', KEYS[2], '*', 'job', id)
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if next_due[2] then wait = math.max(0, tonumber(next_due[2]) - now_ms) end
return {#due, wait}";

/// The queue's handle: a pool for ordinary commands and one dedicated connection (no
/// response timeout) for the blocking read, which would stall a shared connection.
pub struct JobQueue {
    client: redis::Client,
    pool: bb8::Pool<RedisConnectionManager>,
    keys: Keys,
    enqueue: Script,
    finish: Script,
    retry: Script,
    hand_back: Script,
    promote: Script,
}

type Pooled<'a> = bb8::PooledConnection<'a, RedisConnectionManager>;

impl JobQueue {
    pub fn new(url: &str, prefix: &str) -> Result<Self, QueueError> {
        let client = redis::Client::open(url)?;
        let manager = RedisConnectionManager::new(url)?;
        let pool = bb8::Pool::builder()
            .max_size(8)
            .connection_timeout(Duration::from_secs(3))
            .test_on_check_out(false)
            .build_unchecked(manager);
        let tag = format!("{{{prefix}}}");
        Ok(JobQueue {
            client,
            pool,
            keys: Keys {
                stream: format!("{tag}:jobs"),
                delayed: format!("{tag}:delayed"),
                known: format!("{tag}:known"),
            },
            enqueue: Script::new(ENQUEUE),
            finish: Script::new(FINISH),
            retry: Script::new(RETRY),
            hand_back: Script::new(HAND_BACK),
            promote: Script::new(PROMOTE),
        })
    }

    async fn conn(&self) -> Result<Pooled<'_>, QueueError> {
        self.pool
            .get()
            .await
            .map_err(|e| QueueError::Pool(e.to_string()))
    }

    /// A connection for blocking reads: its own socket, no response timeout.
    pub async fn blocking_connection(&self) -> Result<MultiplexedConnection, QueueError> {
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_secs(3)));
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// Creates the stream and the consumer group if they are missing (first start, or Redis
    /// lost its data).
    pub async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut *conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Adds jobs to the ready stream in one round trip; ids already queued are skipped.
    pub async fn enqueue(&self, job_ids: &[i64]) -> Result<usize, QueueError> {
        self.enqueue_all(job_ids, &[]).await
    }

    /// Adds jobs to the ready stream and jobs due later (with how long until they are due)
    /// to the delayed set, in one round trip; ids already queued are skipped.
    pub async fn enqueue_all(
        &self,
        ready: &[i64],
        later: &[(i64, Duration)],
    ) -> Result<usize, QueueError> {
        if ready.is_empty() && later.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        let mut invocation = self.enqueue.key(&self.keys.stream);
        invocation.key(&self.keys.known).key(&self.keys.delayed);
        for id in ready {
            invocation.arg(id).arg(0);
        }
        for (id, due_in) in later {
            // At least 1 ms: 0 means "ready now" to the script.
            invocation.arg(id).arg(due_in.as_millis().max(1) as u64);
        }
        Ok(invocation.invoke_async(&mut *conn).await?)
    }

    /// Of `job_ids`, those the queue does not hold.
    pub async fn missing(&self, job_ids: &[i64]) -> Result<Vec<i64>, QueueError> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let held: Vec<bool> = redis::cmd("SMISMEMBER")
            .arg(&self.keys.known)
            .arg(job_ids)
            .query_async(&mut *conn)
            .await?;
        Ok(job_ids
            .iter()
            .zip(held)
            .filter(|(_, held)| !held)
            .map(|(id, _)| *id)
            .collect())
    }

    /// Waits up to `block` for at most `count` new deliveries for `consumer`.
    pub async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let options = StreamReadOptions::default()
            .group(GROUP, consumer)
            .count(count)
            .block(block.as_millis() as usize);
        let reply: Option<StreamReadReply> =
            redis::AsyncCommands::xread_options(conn, &[&self.keys.stream], &[">"], &options)
                .await?;
        Ok(reply
            .map(|r| {
                r.keys
                    .into_iter()
                    .flat_map(|k| k.ids)
                    .filter_map(delivery)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Renews the leases of the deliveries this consumer holds.
    pub async fn heartbeat(&self, consumer: &str, entry_ids: &[String]) -> Result<(), QueueError> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        redis::cmd("XCLAIM")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg(consumer)
            .arg(0)
            .arg(entry_ids)
            .arg("JUSTID")
            .query_async::<Value>(&mut *conn)
            .await?;
        Ok(())
    }

    /// Takes over deliveries whose lease expired (idle longer than `lease`): their runner
    /// died or stalled.
    pub async fn take_back_expired(
        &self,
        consumer: &str,
        lease: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut conn = self.conn().await?;
        let reply: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg(consumer)
            .arg(lease.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut *conn)
            .await?;
        Ok(reply.claimed.into_iter().filter_map(delivery).collect())
    }

    /// The job finished (done or dead): acknowledge and forget it.
    pub async fn finish(&self, delivery: &Delivery) -> Result<(), QueueError> {
        self.finish_all(std::slice::from_ref(delivery)).await
    }

    /// Jobs finished (done or dead): acknowledge and forget them, in one round trip.
    pub async fn finish_all(&self, deliveries: &[Delivery]) -> Result<(), QueueError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let mut invocation = self.finish.key(&self.keys.stream);
        invocation.key(&self.keys.known).arg(GROUP);
        for delivery in deliveries {
            invocation.arg(&delivery.entry_id).arg(delivery.job_id);
        }
        invocation.invoke_async::<i64>(&mut *conn).await?;
        Ok(())
    }

    /// The job failed and runs again after `delay`.
    pub async fn retry_later(
        &self,
        delivery: &Delivery,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        self.retry
            .key(&self.keys.stream)
            .key(&self.keys.delayed)
            .key(&self.keys.known)
            .arg(GROUP)
            .arg(&delivery.entry_id)
            .arg(delivery.job_id)
            .arg(delay.as_millis() as u64)
            .invoke_async::<i64>(&mut *conn)
            .await?;
        Ok(())
    }

    /// Returns a delivery this runner will not finish to the stream, for another runner.
    pub async fn hand_back(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        self.hand_back
            .key(&self.keys.stream)
            .arg(GROUP)
            .arg(&delivery.entry_id)
            .arg(delivery.job_id)
            .invoke_async::<i64>(&mut *conn)
            .await?;
        Ok(())
    }

    /// Moves due retries to the stream; returns how many, and how long until the next is due.
    pub async fn promote_due(&self, limit: usize) -> Result<(usize, Option<Duration>), QueueError> {
        let mut conn = self.conn().await?;
        let (moved, wait_ms): (usize, i64) = self
            .promote
            .key(&self.keys.delayed)
            .key(&self.keys.stream)
            .arg(limit)
            .invoke_async(&mut *conn)
            .await?;
        let next = (wait_ms >= 0).then(|| Duration::from_millis(wait_ms as u64));
        Ok((moved, next))
    }

    /// Entries waiting in the stream plus those delivered and not yet acknowledged, and the
    /// delayed retries (for metrics and tests).
    pub async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let mut conn = self.conn().await?;
        let (stream, delayed, known): (usize, usize, usize) = redis::pipe()
            .cmd("XLEN")
            .arg(&self.keys.stream)
            .cmd("ZCARD")
            .arg(&self.keys.delayed)
            .cmd("SCARD")
            .arg(&self.keys.known)
            .query_async(&mut *conn)
            .await?;
        Ok(QueueDepth {
            stream,
            delayed,
            known,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    /// Entries in the stream (ready or leased).
    pub stream: usize,
    /// Retries waiting for their time.
    pub delayed: usize,
    /// Jobs the queue holds in all.
    pub known: usize,
}

fn delivery(entry: redis::streams::StreamId) -> Option<Delivery> {
    let job_id = match entry.map.get("job")? {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok()?,
        _ => return None,
    };
    Some(Delivery {
        entry_id: entry.id,
        job_id,
    })
}

/// True when Redis says the stream or group is gone (it lost its data): recreate and retry.
pub fn is_missing_group(error: &QueueError) -> bool {
    matches!(error, QueueError::Redis(e) if e.code() == Some("NOGROUP"))
}
