//! The connections to Redis: ordinary commands share a pool (one server) or one cluster
//! connection (a cluster); blocking reads get connections of their own.
//!
//! A multiplexed connection does not reconnect by itself, and bb8-redis's manager never
//! reports one as broken, so after Redis restarts every pooled connection would fail forever
//! (`broken pipe`). Here each pooled connection remembers whether a command on it failed in a
//! way that means the connection is gone (I/O error, timeout, dropped or refused); bb8 drops
//! such a connection when it comes back, and the next checkout connects afresh. Checkouts are
//! not pinged (a round trip per command): a dead connection costs one failed command. The
//! cluster connection follows slot moves and failovers itself (MOVED, ASK, refreshing the
//! slot map); one that fails the same way is dropped too, and the next command connects
//! again from the seed nodes.

use std::sync::Mutex;
use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

use super::settings::RedisTarget;
use crate::pool::LastError;

/// Whether `error` means the connection it came from can no longer be used.
pub fn means_connection_lost(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
        || error.kind() == ErrorKind::ClusterConnectionNotFound
}

/// How long a checkout waits for a connection, and a connection attempt for Redis.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an ordinary command waits for its answer on a cluster.
const CLUSTER_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The handle to Redis both processes share.
pub struct Redis {
    target: RedisTarget,
    backend: Backend,
}

// One per process: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Server {
        client: redis::Client,
        pool: bb8::Pool<Manager>,
        last_error: LastError,
    },
    Cluster(Cluster),
}

struct Cluster {
    ordinary: ClusterClient,
    /// Without a response timeout: a blocking read waits on purpose.
    blocking: ClusterClient,
    shared: Mutex<Option<ClusterConnection>>,
}

impl Redis {
    /// Connects lazily: nothing is reached until the first command, so a process starts
    /// while Redis is still coming up. `pool_size` bounds one server's pool.
    pub fn new(target: RedisTarget, pool_size: u32) -> Result<Self, RedisError> {
        let certificates = target.certificates();
        let backend = match &target {
            RedisTarget::Server { url, .. } => {
                let client = match certificates {
                    Some(certificates) => {
                        redis::Client::build_with_tls(url.as_str(), certificates)?
                    }
                    None => redis::Client::open(url.as_str())?,
                };
                let manager = Manager {
                    inner: RedisConnectionManager::new(client.get_connection_info().clone())?,
                    trusted: target.trusted(),
                };
                let last_error = LastError::default();
                let pool = bb8::Pool::builder()
                    .max_size(pool_size)
                    .connection_timeout(CHECKOUT_TIMEOUT)
                    .test_on_check_out(false)
                    .error_sink(Box::new(last_error.clone()))
                    .build_unchecked(manager);
                Backend::Server {
                    client,
                    pool,
                    last_error,
                }
            }
            RedisTarget::Cluster { seeds, .. } => {
                let builder = |response_timeout: Duration| {
                    let mut builder = ClusterClient::builder(seeds.iter().map(String::as_str))
                        .connection_timeout(CHECKOUT_TIMEOUT)
                        .response_timeout(response_timeout);
                    if let Some(certificates) = &certificates {
                        builder = builder.certs(certificates.clone());
                    }
                    builder.build()
                };
                Backend::Cluster(Cluster {
                    ordinary: builder(CLUSTER_RESPONSE_TIMEOUT)?,
                    blocking: builder(Duration::from_secs(24 * 3600))?,
                    shared: Mutex::new(None),
                })
            }
        };
        Ok(Redis { target, backend })
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// A connection for ordinary commands; pass each command's result through
    /// [`Checkout::check`].
    pub async fn checkout(&self) -> Result<Checkout<'_>, RedisError> {
        match &self.backend {
            Backend::Server {
                pool, last_error, ..
            } => pool.get().await.map(Checkout::Pooled).map_err(|e| match e {
                bb8::RunError::User(e) => e,
                bb8::RunError::TimedOut => RedisError::from((
                    ErrorKind::Io,
                    "Redis unavailable",
                    last_error.timed_out("Redis"),
                )),
            }),
            Backend::Cluster(cluster) => {
                let Cluster {
                    ordinary, shared, ..
                } = cluster;
                let held = lock(shared).clone();
                let connection = match held {
                    Some(connection) => connection,
                    None => {
                        let connection = ordinary
                            .get_async_connection()
                            .await
                            .map_err(|e| explain(e, &self.target.trusted()))?;
                        *lock(shared) = Some(connection.clone());
                        connection
                    }
                };
                Ok(Checkout::Cluster { connection, shared })
            }
        }
    }

    /// A connection of its own for blocking reads: no response timeout (the read blocks on
    /// purpose; its caller bounds the wait), so it never stalls the shared connections.
    pub async fn dedicated(&self) -> Result<Connection, RedisError> {
        let connection = match &self.backend {
            Backend::Server { client, .. } => {
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(None)
                    .set_connection_timeout(Some(CHECKOUT_TIMEOUT));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Connection::Server)
            }
            Backend::Cluster(cluster) => cluster
                .blocking
                .get_async_connection()
                .await
                .map(Connection::Cluster),
        };
        connection.map_err(|e| explain(e, &self.target.trusted()))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A refused certificate, said with what it had to be signed by (`trusted`).
fn explain(error: RedisError, trusted: &str) -> RedisError {
    let text = error.to_string();
    if text.contains("certificate") || text.contains("UnknownIssuer") {
        return RedisError::from((
            ErrorKind::Io,
            "TLS to Redis failed: its certificate was refused",
            format!("it must be signed by {trusted} and name the host connected to ({text})"),
        ));
    }
    error
}

/// A connection for ordinary commands.
pub enum Checkout<'a> {
    Pooled(bb8::PooledConnection<'a, Manager>),
    Cluster {
        connection: ClusterConnection,
        shared: &'a Mutex<Option<ClusterConnection>>,
    },
}

impl Checkout<'_> {
    /// Passes a command's result on, giving up the connection when the failure means it is
    /// gone.
    pub fn check<T>(&mut self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(error) = &result {
            if means_connection_lost(error) {
                match self {
                    Checkout::Pooled(pooled) => pooled.broken = true,
                    Checkout::Cluster { shared, .. } => *lock(shared) = None,
                }
            }
        }
        result
    }
}

impl Checkout<'_> {
    fn inner(&mut self) -> &mut (dyn ConnectionLike + Send) {
        match self {
            Checkout::Pooled(pooled) => &mut pooled.connection,
            Checkout::Cluster { connection, .. } => connection,
        }
    }

    fn db(&self) -> i64 {
        match self {
            Checkout::Pooled(pooled) => pooled.connection.get_db(),
            Checkout::Cluster { connection, .. } => connection.get_db(),
        }
    }
}

/// A connection of its own (blocking reads).
pub enum Connection {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Connection {
    fn inner(&mut self) -> &mut (dyn ConnectionLike + Send) {
        match self {
            Connection::Server(connection) => connection,
            Connection::Cluster(connection) => connection,
        }
    }

    fn db(&self) -> i64 {
        match self {
            Connection::Server(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Both kinds of connection pass each command to the connection they hold.
macro_rules! delegate_connection_like {
    ($type:ty) => {
        impl ConnectionLike for $type {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
                self.inner().req_packed_command(cmd)
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                pipeline: &'a Pipeline,
                offset: usize,
                count: usize,
            ) -> RedisFuture<'a, Vec<Value>> {
                self.inner().req_packed_commands(pipeline, offset, count)
            }

            fn get_db(&self) -> i64 {
                self.db()
            }
        }
    };
}

delegate_connection_like!(Checkout<'_>);
delegate_connection_like!(Connection);

/// A pooled connection and whether it has failed.
pub struct Tracked {
    connection: MultiplexedConnection,
    broken: bool,
}

/// bb8-redis's manager, with connections that report themselves broken and TLS failures
/// that say what the certificate had to be signed by.
pub struct Manager {
    inner: RedisConnectionManager,
    trusted: String,
}

impl bb8::ManageConnection for Manager {
    type Connection = Tracked;
    type Error = RedisError;

    async fn connect(&self) -> Result<Tracked, RedisError> {
        let connection = self
            .inner
            .connect()
            .await
            .map_err(|e| explain(e, &self.trusted))?;
        Ok(Tracked {
            connection,
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut Tracked) -> Result<(), RedisError> {
        self.inner.is_valid(&mut conn.connection).await
    }

    fn has_broken(&self, conn: &mut Tracked) -> bool {
        conn.broken
    }
}
