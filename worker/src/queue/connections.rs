//! The queue's connections to Redis: a pool for ordinary commands that drops a connection
//! once it fails, and dedicated connections for blocking reads.
//!
//! A multiplexed connection does not reconnect by itself, and bb8-redis's manager never
//! reports one as broken, so after Redis restarts every pooled connection would fail forever
//! (`broken pipe`). Here each pooled connection remembers whether a command on it failed in a
//! way that means the connection is gone (I/O error, timeout, dropped or refused); bb8 drops
//! such a connection when it comes back, and the next checkout connects afresh. Checkouts are
//! not pinged (a round trip per command): a dead connection costs one failed command.

use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};

/// A pooled connection and whether it has failed.
pub struct Tracked {
    connection: MultiplexedConnection,
    broken: bool,
}

impl Tracked {
    pub fn connection(&mut self) -> &mut MultiplexedConnection {
        &mut self.connection
    }

    /// Passes a command's result on, remembering a failure that means the connection is
    /// gone.
    pub fn check<T>(&mut self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(error) = &result {
            if means_connection_lost(error) {
                self.broken = true;
            }
        }
        result
    }
}

/// Whether `error` means the connection it came from can no longer be used.
pub fn means_connection_lost(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
}

/// bb8-redis's manager, with connections that report themselves broken.
pub struct Manager(pub RedisConnectionManager);

impl bb8::ManageConnection for Manager {
    type Connection = Tracked;
    type Error = RedisError;

    async fn connect(&self) -> Result<Tracked, RedisError> {
        Ok(Tracked {
            connection: self.0.connect().await?,
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut Tracked) -> Result<(), RedisError> {
        self.0.is_valid(&mut conn.connection).await
    }

    fn has_broken(&self, conn: &mut Tracked) -> bool {
        conn.broken
    }
}

pub type Pool = bb8::Pool<Manager>;

/// The pool of ordinary commands: at most `size` connections, a checkout waits at most
/// `CHECKOUT_TIMEOUT` (while Redis is down, a command fails after that instead of hanging).
pub fn pool(url: &str, size: u32) -> Result<Pool, RedisError> {
    Ok(bb8::Pool::builder()
        .max_size(size)
        .connection_timeout(CHECKOUT_TIMEOUT)
        .test_on_check_out(false)
        .build_unchecked(Manager(RedisConnectionManager::new(url)?)))
}

/// How long a checkout waits for a connection.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection of its own for blocking reads: no response timeout (the read blocks on
/// purpose; its caller bounds the wait), so it never stalls the pool's shared connections.
pub async fn dedicated(client: &redis::Client) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(Some(CHECKOUT_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}
