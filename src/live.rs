//! The live feed behind GraphQL subscriptions: one LISTEN connection per API process (its
//! own, not pooled; it reconnects with capped backoff) on `review_events` (event ids the
//! worker relayed) and `rating_changed` (products whose summary changed: one id, or a relay
//! batch's ids comma-separated). Each notification is turned into events with one query and
//! fanned out in memory to every subscriber.
//!
//! Subscribers read from a bounded broadcast channel: one that falls behind by more than
//! [`BUFFER`] events is dropped (its stream ends) rather than let memory grow.

use std::sync::Arc;

use futures::StreamExt;
use reviews_db::ratings::RatingSummary;
use reviews_db::reviews::Review;
use reviews_db::Db;
use reviews_db::PgTarget;
use reviews_service::Backoff;
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;
use uuid::Uuid;

/// Events a subscriber may fall behind by before it is dropped. Every subscriber receives
/// every event (each keeps its own product's), and a relay batch of 500 events on as many
/// products makes about 1,000 within milliseconds (its reviews, 100 a query, and its rating
/// changes, 200 a query: db/migrations/0022).
pub const BUFFER: usize = 1024;

#[derive(Debug, Clone)]
pub enum LiveEvent {
    ReviewAdded(Review),
    RatingChanged(RatingSummary),
}

#[derive(Clone)]
pub struct LiveFeed {
    sender: broadcast::Sender<Arc<LiveEvent>>,
}

impl LiveFeed {
    /// Starts listening in the background for as long as the process runs.
    pub fn start(target: PgTarget, db: Db) -> Self {
        let (sender, _) = broadcast::channel(BUFFER);
        let feed = LiveFeed { sender };
        tokio::spawn(feed.clone().listen_forever(target, db));
        feed
    }

    /// A feed that never hears anything (for printing the schema).
    pub fn idle() -> Self {
        let (sender, _) = broadcast::channel(1);
        LiveFeed { sender }
    }

    /// The events from now on, ending if the subscriber falls more than [`BUFFER`] behind
    /// (it is dropped rather than buffered without bound).
    pub fn events(&self) -> impl futures::Stream<Item = Arc<LiveEvent>> {
        until_lagging(self.sender.subscribe())
    }

    async fn listen_forever(self, target: PgTarget, db: Db) {
        let target = target.named("reviews-api-live");
        let mut backoff = Backoff::reconnecting();
        loop {
            match self.listen(&target, &db).await {
                Ok(()) => backoff.reset(),
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = format!("{error:#}"),
                        retry_in_ms = delay.as_millis() as u64,
                        "live feed lost its Postgres connection; reconnecting"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn listen(&self, target: &PgTarget, db: &Db) -> anyhow::Result<()> {
        let (client, mut connection) = target.connect().await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                if let AsyncMessage::Notification(n) = message? {
                    if tx
                        .send((n.channel().to_owned(), n.payload().to_owned()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
            Ok::<(), tokio_postgres::Error>(())
        });
        client
            .batch_execute("listen review_events; listen rating_changed")
            .await?;
        while let Some((channel, payload)) = rx.recv().await {
            if self.sender.receiver_count() == 0 {
                continue;
            }
            if let Err(error) = self.publish(db, &channel, &payload).await {
                tracing::warn!(error = %error, %channel, "could not publish a live event");
            }
        }
        drop(client);
        driver.await??;
        anyhow::bail!("the connection closed")
    }

    async fn publish(&self, db: &Db, channel: &str, payload: &str) -> anyhow::Result<()> {
        let (ids, malformed) = ids_in(payload);
        if !malformed.is_empty() {
            tracing::warn!(%channel, ?malformed, "skipped parts of a notification that are not ids");
        }
        if ids.is_empty() {
            return Ok(());
        }
        let conn = db.conn().await?;
        match channel {
            "review_events" => {
                for review in reviews_db::reviews::reviews_created_by_events(&conn, &ids).await? {
                    let _ = self.sender.send(Arc::new(LiveEvent::ReviewAdded(review)));
                }
            }
            // One product (recompute_product_rating), or a relay batch's (apply_rating_jobs,
            // db/migrations/0022): one query for all of them.
            "rating_changed" => {
                let found = reviews_db::ratings::ratings_by_product_ids(&conn, &ids).await?;
                for product in ids {
                    let summary = found
                        .iter()
                        .find(|s| s.product_id == product)
                        .cloned()
                        .unwrap_or_else(|| RatingSummary::empty(product));
                    let _ = self
                        .sender
                        .send(Arc::new(LiveEvent::RatingChanged(summary)));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The ids of a notification's payload, comma-separated, and the parts that are not ids.
fn ids_in(payload: &str) -> (Vec<Uuid>, Vec<&str>) {
    let mut ids = Vec::new();
    let mut malformed = Vec::new();
    for part in payload.split(',') {
        match part.parse() {
            Ok(id) => ids.push(id),
            Err(_) => malformed.push(part),
        }
    }
    (ids, malformed)
}

fn until_lagging(
    receiver: broadcast::Receiver<Arc<LiveEvent>>,
) -> impl futures::Stream<Item = Arc<LiveEvent>> {
    tokio_stream::wrappers::BroadcastStream::new(receiver)
        .take_while(|event| {
            if event.is_err() {
                metrics::counter!("subscribers_dropped_total").increment(1);
                tracing::warn!("a subscriber fell behind the live feed; dropping it");
            }
            futures::future::ready(event.is_ok())
        })
        .filter_map(|event| futures::future::ready(event.ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i32) -> Arc<LiveEvent> {
        let mut summary = RatingSummary::empty(Uuid::nil());
        summary.count = n;
        Arc::new(LiveEvent::RatingChanged(summary))
    }

    #[test]
    fn a_payload_names_one_id_or_several_and_parts_that_are_not_ids_are_set_apart() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(ids_in(&a.to_string()), (vec![a], vec![]));
        assert_eq!(ids_in(&format!("{a},{b}")), (vec![a, b], vec![]));
        assert_eq!(
            ids_in(&format!("{a},not-an-id,,{b}")),
            (vec![a, b], vec!["not-an-id", ""])
        );
        assert_eq!(ids_in(""), (vec![], vec![""]));
    }

    #[tokio::test]
    async fn a_subscriber_that_keeps_up_sees_every_event() {
        let (sender, _) = broadcast::channel(BUFFER);
        let feed = LiveFeed { sender };
        let events = feed.events();
        for n in 0..10 {
            feed.sender.send(event(n)).unwrap();
        }
        drop(feed);
        assert_eq!(events.count().await, 10);
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_dropped() {
        let (sender, _) = broadcast::channel(BUFFER);
        let feed = LiveFeed { sender };
        let events = feed.events();
        for n in 0..(BUFFER as i32 + 10) {
            feed.sender.send(event(n)).unwrap();
        }
        // The stream ends at the lag instead of delivering a backlog (or growing one).
        let seen = tokio::time::timeout(std::time::Duration::from_secs(1), events.count())
            .await
            .unwrap();
        assert_eq!(seen, 0);
    }
}
