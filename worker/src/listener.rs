//! The listener: its own Postgres connection (not pooled: a pool's connection task drops
//! notifications) with LISTEN on the doorbell channels. It reconnects with capped backoff;
//! notifications sent while it was away are gone, so after every (re)connect it rings every
//! bell, and the relay and reconciler look for themselves. The relay sleeps on this
//! connection too (see `doorbell`): it is shared through [`ListenerConnection`].

use std::sync::Arc;

use futures::StreamExt;
use reviews_db::PgTarget;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use reviews_service::Backoff;

use crate::doorbell::ListenerConnection;

/// The `application_name` of the listener's connection (to find it in pg_stat_activity).
pub const APPLICATION_NAME: &str = "reviews-worker-listener";

/// What the listener rings; each bell keeps one wake-up until somebody waits for it.
#[derive(Clone, Default)]
pub struct Bells {
    /// New outbox rows may be waiting (`NOTIFY outbox`).
    pub outbox: Arc<Notify>,
    /// Jobs were made pending outside the relay, e.g. a replayed dead letter (`NOTIFY jobs`).
    pub jobs: Arc<Notify>,
    /// `retry_policies` changed (`NOTIFY retry_policies`).
    pub retry_policies: Arc<Notify>,
}

impl Bells {
    fn ring_all(&self) {
        self.outbox.notify_one();
        self.jobs.notify_one();
        self.retry_policies.notify_one();
    }

    /// Rings the bell of a notification's channel (other channels ring nothing).
    fn ring(&self, channel: &str) {
        match channel {
            "outbox" => self.outbox.notify_one(),
            "jobs" => self.jobs.notify_one(),
            "retry_policies" => self.retry_policies.notify_one(),
            _ => {}
        }
    }
}

pub struct Listener {
    target: PgTarget,
    bells: Bells,
    connection: ListenerConnection,
    /// Connections made, so each has a number of its own.
    connections: std::sync::atomic::AtomicU64,
    reconnects: Arc<std::sync::atomic::AtomicU64>,
}

/// Clears the shared connection when its life ends, however it ends.
struct ClearedOnDrop<'a>(&'a ListenerConnection);

impl Drop for ClearedOnDrop<'_> {
    fn drop(&mut self) {
        self.0.clear();
    }
}

impl Listener {
    pub fn new(target: PgTarget, bells: Bells, connection: ListenerConnection) -> Self {
        Listener {
            target: target.named(APPLICATION_NAME),
            bells,
            connection,
            connections: Default::default(),
            reconnects: Default::default(),
        }
    }

    /// How many times the connection was re-established.
    pub fn reconnects(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.reconnects.clone()
    }

    /// Listens until `shutdown`, reconnecting whenever the connection is lost.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::reconnecting();
        let mut connected_before = false;
        loop {
            let error = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = self.listen(&mut backoff, &mut connected_before) => match result {
                    Ok(()) => return,
                    Err(error) => error,
                },
            };
            let delay = backoff.next_delay();
            tracing::warn!(
                error = format!("{error:#}"),
                retry_in_ms = delay.as_millis() as u64,
                "listener lost its Postgres connection; reconnecting"
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection's life: connect, LISTEN, ring every bell, then ring each notification's
    /// bell until the connection ends.
    async fn listen(
        &self,
        backoff: &mut Backoff,
        connected_before: &mut bool,
    ) -> anyhow::Result<()> {
        let (client, mut connection) = self.target.connect().await?;
        // The connection's own task rings the bells: a task of its own in between would add
        // a wake-up to every bell, between a writer's commit and the relay's look.
        let bells = self.bells.clone();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                if let AsyncMessage::Notification(n) = message? {
                    bells.ring(n.channel());
                }
            }
            Ok::<(), tokio_postgres::Error>(())
        });
        client
            .batch_execute("listen outbox; listen jobs; listen retry_policies")
            .await?;
        let client = Arc::new(client);
        let generation = self
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.connection.set(generation, client.clone());
        let _cleared = ClearedOnDrop(&self.connection);
        backoff.reset();
        if *connected_before {
            self.reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("listener_reconnects_total").increment(1);
            tracing::info!("listener reconnected");
        }
        *connected_before = true;
        // Whatever was announced while we were away is lost: everybody looks now.
        self.bells.ring_all();

        let ended = driver.await?;
        drop(client);
        match ended {
            Ok(()) => anyhow::bail!("the connection closed"),
            Err(e) => Err(e.into()),
        }
    }
}
