//! Subscriptions over websocket (graphql-transport-ws and the older graphql-ws protocol),
//! fed by the process's live feed (`crate::live`). Open to everyone, like reads; a token in
//! `connection_init` identifies the caller, and an invalid one closes the connection.

use async_graphql::{Context, Subscription, ID};
use futures::{Stream, StreamExt};

use super::cursor::parse_id;
use super::types::{RatingSummary, Review};

use crate::live::{LiveEvent, LiveFeed};

#[derive(Default)]
pub struct Subscription;

fn live_events(ctx: &Context<'_>) -> impl Stream<Item = std::sync::Arc<LiveEvent>> {
    ctx.data_unchecked::<LiveFeed>().events()
}

#[Subscription]
impl Subscription {
    /// New reviews of a product, as they are committed and relayed.
    async fn review_added(
        &self,
        ctx: &Context<'_>,
        product_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = Review>> {
        let product_id = parse_id(&product_id, "product")?;
        Ok(live_events(ctx).filter_map(move |event| {
            futures::future::ready(match &*event {
                LiveEvent::ReviewAdded(review) if review.product_id == product_id => {
                    Some(Review(review.clone()))
                }
                _ => None,
            })
        }))
    }

    /// A product's rating summary, each time the worker recomputes it.
    async fn rating_changed(
        &self,
        ctx: &Context<'_>,
        product_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = RatingSummary>> {
        let product_id = parse_id(&product_id, "product")?;
        Ok(live_events(ctx).filter_map(move |event| {
            futures::future::ready(match &*event {
                LiveEvent::RatingChanged(summary) if summary.product_id == product_id => {
                    Some(RatingSummary(summary.clone()))
                }
                _ => None,
            })
        }))
    }
}
