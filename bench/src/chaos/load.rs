//! The steady load and its ledger: `addReview` through the APIs at a fixed rate, and the SQL
//! writers some faults add. The ledger records every review whose write was acknowledged,
//! and every author ever sent (a request that failed may still have committed: its review
//! is not lost if it has no effect, nor unexpected if it has one).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::processes::SECRET;

/// Products the load spreads its reviews over.
pub const PRODUCTS: u128 = 20;

/// A write as the load saw it.
#[derive(Debug, Clone)]
pub struct Write {
    /// Who wrote: `api` (the steady load), or a fault's own SQL writer.
    pub writer: &'static str,
    pub review_id: Option<Uuid>,
    pub sent_at: SystemTime,
    pub took: Duration,
}

#[derive(Default)]
pub struct Ledger {
    writes: Mutex<Vec<Write>>,
    authors: Mutex<HashSet<String>>,
    next: AtomicU64,
}

impl Ledger {
    /// A fresh author (one review each, so reviews never conflict).
    pub fn author(&self, kind: &str) -> String {
        let author = format!("{kind}-{}", self.next.fetch_add(1, Ordering::Relaxed));
        self.authors.lock().unwrap().insert(author.clone());
        author
    }

    pub fn record(&self, write: Write) {
        self.writes.lock().unwrap().push(write);
    }

    pub fn writes(&self) -> Vec<Write> {
        self.writes.lock().unwrap().clone()
    }

    pub fn sent_authors(&self) -> HashSet<String> {
        self.authors.lock().unwrap().clone()
    }
}

/// The product of the `n`th review.
pub fn product(n: u64) -> Uuid {
    Uuid::from_u128(u128::from(n) % PRODUCTS + 1)
}

/// Sends `addReview` at `rate` a second, spread over the APIs, until `stop`.
pub async fn graphql_load(
    api_ports: Vec<u16>,
    rate: u64,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) {
    let keys = reviews_api::auth::TokenKeys::new(SECRET.as_bytes());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut n = 0u64;
    let mut inflight = tokio::task::JoinSet::new();
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        while inflight.try_join_next().is_some() {}
        let author = ledger.author("api");
        let token = keys
            .mint(
                &author,
                reviews_api::auth::Role::User,
                Duration::from_secs(3600),
            )
            .unwrap();
        let body = json!({
            "query": "mutation($i: AddReviewInput!) { addReview(input: $i) { id } }",
            "variables": {"i": {"productId": product(n), "rating": n % 5 + 1, "title": "chaos", "body": "steady load"}},
        });
        let url = format!(
            "http://127.0.0.1:{}/graphql",
            api_ports[n as usize % api_ports.len()]
        );
        let (http, ledger) = (http.clone(), ledger.clone());
        inflight.spawn(async move {
            let sent_at = SystemTime::now();
            let started = Instant::now();
            let answer = async {
                http.post(&url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await?
                    .json::<serde_json::Value>()
                    .await
            };
            let review_id = answer
                .await
                .ok()
                .and_then(|v| v["data"]["addReview"]["id"].as_str()?.parse().ok());
            ledger.record(Write {
                writer: "api",
                review_id,
                sent_at,
                took: started.elapsed(),
            });
        });
    }
    while inflight.join_next().await.is_some() {}
}

/// Inserts one review through SQL in a transaction of `isolation`, held open `hold` after
/// the insert; records it when the commit is acknowledged.
pub async fn sql_write(
    database_url: &str,
    ledger: &Ledger,
    kind: &'static str,
    isolation: &str,
    hold: Duration,
) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let author = ledger.author(kind);
    let n = ledger.next.load(Ordering::Relaxed);
    let sent_at = SystemTime::now();
    let started = Instant::now();
    client
        .batch_execute(&format!("begin isolation level {isolation}; select 1"))
        .await?;
    let row = client
        .query_one(
            "insert into reviews (product_id, author_id, rating, title, body)
             values ($1, $2, 3, 'chaos', 'sql writer') returning id",
            &[&product(n), &author],
        )
        .await;
    let review_id = match row {
        Ok(row) => {
            tokio::time::sleep(hold).await;
            client.batch_execute("commit").await?;
            Some(row.get(0))
        }
        Err(error) => {
            let _ = client.batch_execute("rollback").await;
            return Err(error.into());
        }
    };
    ledger.record(Write {
        writer: kind,
        review_id,
        sent_at,
        took: started.elapsed(),
    });
    Ok(())
}
