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
//!
//! The connections (one server or a cluster, TLS) are `reviews_service::redis`'s; the Lua
//! scripts (atomic, every key declared) are in `scripts`.

mod scripts;

use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamReadOptions, StreamReadReply};
use redis::{Script, Value};
pub use reviews_service::redis::means_connection_lost;
use reviews_service::redis::{Checkout, Connection, Redis, RedisTarget};

use scripts::*;

/// The consumer group every runner reads through.
pub const GROUP: &str = "runners";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A blocking read got no answer long after its block time: Redis is paused or the
    /// connection hangs. The connection is dropped.
    #[error("redis did not answer a blocking read within {0:?}")]
    ReadTimedOut(Duration),
}

/// A job id delivered to this runner, with the stream entry that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub entry_id: String,
    pub job_id: i64,
}

/// What became of the jobs [`JobQueue::hand_off_and_enqueue`] was given to hand over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handed {
    /// Added and delivered to the consumer, in the order given, except those the queue held
    /// already (queued by a reconciler meanwhile): the queue runs those.
    Delivered(Vec<Delivery>),
    /// Not added: the group has entries it has not delivered yet, and a read returns those
    /// first; or the stream is gone (Redis lost its data), and the group with it.
    Refused,
}

struct Keys {
    stream: String,
    delayed: String,
    known: String,
}

/// How much longer than its block time a blocking read may take before its connection is
/// given up as hung.
const READ_MARGIN: Duration = Duration::from_secs(2);

/// The queue's handle: shared connections for ordinary commands (failed ones are replaced)
/// and dedicated connections for blocking reads, which would stall a shared connection.
pub struct JobQueue {
    redis: Redis,
    keys: Keys,
    enqueue: Script,
    finish: Script,
    retry: Script,
    hand_back: Script,
    promote: Script,
    heartbeat: Script,
    discard: Script,
    forget_consumers: Script,
}

/// Runs a command on a checked-out connection, giving the connection up if the command
/// failed because of it.
macro_rules! on {
    ($conn:expr, $command:expr) => {{
        let conn: &mut Checkout<'_> = &mut $conn;
        let result = $command(&mut *conn).await;
        conn.check(result)?
    }};
}

impl JobQueue {
    /// The queue under `prefix` on `target` (connects lazily).
    pub fn new(target: RedisTarget, prefix: &str) -> Result<Self, QueueError> {
        let tag = format!("{{{prefix}}}");
        Ok(JobQueue {
            redis: Redis::new(target, 8)?,
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
            heartbeat: Script::new(HEARTBEAT),
            discard: Script::new(DISCARD),
            forget_consumers: Script::new(FORGET_CONSUMERS),
        })
    }

    /// The queue on one server at `url` (tests, tools).
    pub fn at_url(url: &str, prefix: &str) -> Result<Self, QueueError> {
        Self::new(RedisTarget::server(url), prefix)
    }

    async fn conn(&self) -> Result<Checkout<'_>, QueueError> {
        Ok(self.redis.checkout().await?)
    }

    /// A connection for blocking reads: its own socket, no response timeout.
    pub async fn blocking_connection(&self) -> Result<Connection, QueueError> {
        Ok(self.redis.dedicated().await?)
    }

    /// Creates the stream and the consumer group if they are missing (first start, or Redis
    /// lost its data).
    pub async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        let command = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .to_owned();
        let created: Result<(), redis::RedisError> = {
            let result = command.query_async(&mut conn).await;
            conn.check(result)
        };
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Adds jobs to the ready stream in one round trip; ids already queued are skipped.
    /// Returns how many were added.
    pub async fn enqueue(&self, job_ids: &[i64]) -> Result<usize, QueueError> {
        self.enqueue_all(job_ids, &[]).await
    }

    /// Adds jobs to the ready stream and jobs due later (with how long until they are due)
    /// to the delayed set, in one round trip; ids already queued are skipped. Returns how
    /// many were added.
    pub async fn enqueue_all(
        &self,
        ready: &[i64],
        later: &[(i64, Duration)],
    ) -> Result<usize, QueueError> {
        if ready.is_empty() && later.is_empty() {
            return Ok(0);
        }
        let (added, _) = self.hand_off_and_enqueue("", &[], ready, later).await?;
        Ok(added)
    }

    /// [`enqueue_all`](Self::enqueue_all), first adding the jobs `handed` (started already)
    /// and delivering them to `consumer` in the same round trip: their leases are that
    /// consumer's, as if it had read them. Returns how many of `ready` and `later` were
    /// added, and what became of `handed` (see `scripts::ENQUEUE`).
    pub async fn hand_off_and_enqueue(
        &self,
        consumer: &str,
        handed: &[i64],
        ready: &[i64],
        later: &[(i64, Duration)],
    ) -> Result<(usize, Handed), QueueError> {
        let mut invocation = self.enqueue.key(&self.keys.stream);
        invocation
            .key(&self.keys.known)
            .key(&self.keys.delayed)
            .arg(GROUP)
            .arg(consumer)
            .arg(handed.len())
            .arg(handed);
        for id in ready {
            invocation.arg(id).arg(0);
        }
        for (id, due_in) in later {
            // At least 1 ms: 0 means "ready now" to the script.
            invocation.arg(id).arg(due_in.as_millis().max(1) as u64);
        }
        let mut conn = self.conn().await?;
        let (added, delivered, made): (usize, Vec<(String, i64)>, bool) =
            on!(conn, |c| invocation.invoke_async(c));
        let handed = if made {
            Handed::Delivered(
                delivered
                    .into_iter()
                    .map(|(entry_id, job_id)| Delivery { entry_id, job_id })
                    .collect(),
            )
        } else {
            Handed::Refused
        };
        Ok((added, handed))
    }

    /// Of `job_ids`, those the queue does not hold.
    pub async fn missing(&self, job_ids: &[i64]) -> Result<Vec<i64>, QueueError> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let command = redis::cmd("SMISMEMBER")
            .arg(&self.keys.known)
            .arg(job_ids)
            .to_owned();
        let mut conn = self.conn().await?;
        let held: Vec<bool> = on!(conn, |c| command.query_async(c));
        Ok(job_ids
            .iter()
            .zip(held)
            .filter(|(_, held)| !held)
            .map(|(id, _)| *id)
            .collect())
    }

    /// Waits up to `block` for at most `count` new deliveries for `consumer`, on a dedicated
    /// connection. A read that gets no answer for `block` plus a margin fails with
    /// [`QueueError::ReadTimedOut`]: drop that connection.
    pub async fn read(
        &self,
        conn: &mut Connection,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let options = StreamReadOptions::default()
            .group(GROUP, consumer)
            .count(count)
            .block(block.as_millis() as usize);
        let keys = [&self.keys.stream];
        let read = redis::AsyncCommands::xread_options(conn, &keys, &[">"], &options);
        let reply: Option<StreamReadReply> =
            match tokio::time::timeout(block + READ_MARGIN, read).await {
                Ok(reply) => reply?,
                Err(_) => return Err(QueueError::ReadTimedOut(block + READ_MARGIN)),
            };
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

    /// Renews the leases of the deliveries `consumer` holds; returns those another runner
    /// owns now (taken over while this one stalled): they are that runner's. Entries settled
    /// meanwhile (acknowledged after the list was made) are neither renewed nor lost.
    pub async fn heartbeat(
        &self,
        consumer: &str,
        entry_ids: &[String],
    ) -> Result<Vec<String>, QueueError> {
        if entry_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.heartbeat.key(&self.keys.stream);
        invocation.arg(GROUP).arg(consumer).arg(entry_ids);
        let mut conn = self.conn().await?;
        Ok(on!(conn, |c| invocation.invoke_async(c)))
    }

    /// Takes over at most `count` deliveries whose lease expired (idle longer than `lease`:
    /// their runner died or stalled), scanning the pending list from `cursor` and leaving
    /// the cursor where the scan stopped, so expired entries behind live ones are reached on
    /// the next calls. Entries that carry no job id are acknowledged and deleted.
    pub async fn take_back_expired(
        &self,
        consumer: &str,
        lease: Duration,
        count: usize,
        cursor: &mut String,
    ) -> Result<Vec<Delivery>, QueueError> {
        let command = redis::cmd("XAUTOCLAIM")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg(consumer)
            .arg(lease.as_millis() as u64)
            .arg(cursor.as_str())
            .arg("COUNT")
            .arg(count)
            .to_owned();
        let mut conn = self.conn().await?;
        let reply: StreamAutoClaimReply = on!(conn, |c| command.query_async(c));
        *cursor = reply.next_stream_id;
        let mut deliveries = Vec::with_capacity(reply.claimed.len());
        let mut unreadable = Vec::new();
        for entry in reply.claimed {
            let entry_id = entry.id.clone();
            match delivery(entry) {
                Some(delivery) => deliveries.push(delivery),
                None => unreadable.push(entry_id),
            }
        }
        if !unreadable.is_empty() {
            tracing::warn!(entries = ?unreadable, "discarded stream entries that carry no job id");
            let mut invocation = self.discard.key(&self.keys.stream);
            invocation.arg(GROUP).arg(&unreadable);
            on!(conn, |c| invocation.invoke_async::<i64>(c));
        }
        Ok(deliveries)
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
        let mut invocation = self.finish.key(&self.keys.stream);
        invocation.key(&self.keys.known).arg(GROUP);
        for delivery in deliveries {
            invocation.arg(&delivery.entry_id).arg(delivery.job_id);
        }
        let mut conn = self.conn().await?;
        on!(conn, |c| invocation.invoke_async::<i64>(c));
        Ok(())
    }

    /// The job failed and runs again after `delay`.
    pub async fn retry_later(
        &self,
        delivery: &Delivery,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let mut invocation = self.retry.key(&self.keys.stream);
        invocation
            .key(&self.keys.delayed)
            .key(&self.keys.known)
            .arg(GROUP)
            .arg(&delivery.entry_id)
            .arg(delivery.job_id)
            .arg(delay.as_millis() as u64);
        let mut conn = self.conn().await?;
        on!(conn, |c| invocation.invoke_async::<i64>(c));
        Ok(())
    }

    /// Returns a delivery `consumer` will not finish to the stream, for another runner;
    /// false when `consumer` no longer owns it (another runner took it over).
    pub async fn hand_back(&self, delivery: &Delivery, consumer: &str) -> Result<bool, QueueError> {
        let mut invocation = self.hand_back.key(&self.keys.stream);
        invocation
            .arg(GROUP)
            .arg(&delivery.entry_id)
            .arg(delivery.job_id)
            .arg(consumer);
        let mut conn = self.conn().await?;
        let handed: i64 = on!(conn, |c| invocation.invoke_async(c));
        Ok(handed == 1)
    }

    /// Moves due jobs to the stream; returns how many, and how long until the next is due.
    pub async fn promote_due(&self, limit: usize) -> Result<(usize, Option<Duration>), QueueError> {
        let mut invocation = self.promote.key(&self.keys.delayed);
        invocation.key(&self.keys.stream).arg(limit);
        let mut conn = self.conn().await?;
        let (moved, wait_ms): (usize, i64) = on!(conn, |c| invocation.invoke_async(c));
        let next = (wait_ms >= 0).then(|| Duration::from_millis(wait_ms as u64));
        Ok((moved, next))
    }

    /// Deletes the group's consumers that hold nothing and have not read for `idle` (their
    /// runners are gone); returns how many.
    pub async fn forget_departed_consumers(&self, idle: Duration) -> Result<usize, QueueError> {
        let mut invocation = self.forget_consumers.key(&self.keys.stream);
        invocation.arg(GROUP).arg(idle.as_millis() as u64);
        let mut conn = self.conn().await?;
        Ok(on!(conn, |c| invocation.invoke_async(c)))
    }

    /// The group's consumers: (name, deliveries held).
    pub async fn consumers(&self) -> Result<Vec<(String, usize)>, QueueError> {
        let command = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .to_owned();
        let mut conn = self.conn().await?;
        let reply: redis::streams::StreamInfoConsumersReply = on!(conn, |c| command.query_async(c));
        Ok(reply
            .consumers
            .into_iter()
            .map(|c| (c.name, c.pending))
            .collect())
    }

    /// Entries waiting in the stream plus those delivered and not yet acknowledged, and the
    /// delayed jobs (for metrics and tests).
    pub async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let pipeline = redis::pipe()
            .cmd("XLEN")
            .arg(&self.keys.stream)
            .cmd("ZCARD")
            .arg(&self.keys.delayed)
            .cmd("SCARD")
            .arg(&self.keys.known)
            .to_owned();
        let mut conn = self.conn().await?;
        let (stream, delayed, known): (usize, usize, usize) =
            on!(conn, |c| pipeline.query_async(c));
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
    /// Jobs waiting for their time.
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
