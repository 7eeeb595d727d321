//! Load generators: review inserts through SQL or GraphQL, paced at a fixed arrival rate or
//! as fast as they go, from several connections.

use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use crate::stack::{connect, Stack};

/// Products the load spreads its reviews over.
pub const PRODUCTS: i64 = 100;

pub async fn seed_products(stack: &Stack) -> anyhow::Result<()> {
    let client = stack.client().await?;
    client
        .batch_execute(&format!(
            "insert into products (id, name, owner_id)
             select lpad(to_hex(i), 32, '0')::uuid, 'p' || i, 'owner-' || (i % 10) from generate_series(1, {PRODUCTS}) i
             on conflict do nothing;"
        ))
        .await?;
    Ok(())
}

/// The pace of task `worker` of `workers` that share `rate` arrivals a second: each ticks
/// every `workers / rate` seconds, their first ticks spread evenly over one period from
/// `start`. (Started together, they ticked together: a "200/s" load was bursts of 32
/// requests every 160 ms.) None: as fast as they go.
fn pace(
    rate: Option<f64>,
    workers: usize,
    worker: usize,
    start: tokio::time::Instant,
) -> Option<tokio::time::Interval> {
    rate.map(|rate| {
        let period = Duration::from_secs_f64(workers as f64 / rate);
        let offset = period.mul_f64(worker as f64 / workers as f64);
        let mut tick = tokio::time::interval_at(start + offset, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        tick
    })
}

/// A committed review and when its writer got the commit's acknowledgement (seconds since
/// the epoch, on the same clock as the database's `now()`: both run on this machine).
#[derive(Debug, Clone)]
pub struct Acknowledged {
    pub review_id: String,
    pub at_epoch_s: f64,
}

/// Inserts reviews through SQL from `connections` connections for `duration`, at `rate` per
/// second in all (None: as fast as they go). Returns each committed review with the time
/// its commit was acknowledged.
pub async fn sql_inserts(
    stack: &Stack,
    connections: usize,
    rate: Option<f64>,
    duration: Duration,
) -> anyhow::Result<Vec<Acknowledged>> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(&stack.database_url()).await?);
    }
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (worker, client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let statement = client
                .prepare(
                    "insert into reviews (product_id, author_id, rating, title, body)
                     values (lpad(to_hex($1::bigint % 100 + 1), 32, '0')::uuid, gen_random_uuid()::text, $2, 'bench', 'a review')
                     returning id::text",
                )
                .await?;
            let mut tick = pace(rate, connections, worker, start);
            let started = Instant::now();
            let mut n: i64 = worker as i64;
            let mut acknowledged = Vec::new();
            while started.elapsed() < duration {
                if let Some(tick) = tick.as_mut() {
                    tick.tick().await;
                }
                let rating = (n % 5 + 1) as i16;
                let row = client.query_one(&statement, &[&n, &rating]).await?;
                acknowledged.push(Acknowledged {
                    review_id: row.get(0),
                    at_epoch_s: now_epoch_s(),
                });
                n += connections as i64;
            }
            anyhow::Ok(acknowledged)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

fn now_epoch_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

/// Sends `addReview` through GraphQL from `concurrency` tasks for `duration`, at `rate` per
/// second in all (None: as fast as they go). Returns the committed count and each request's
/// latency in ms.
pub async fn graphql_inserts(
    stack: &Stack,
    concurrency: usize,
    rate: Option<f64>,
    duration: Duration,
) -> anyhow::Result<(u64, Vec<f64>)> {
    let keys = reviews_api::auth::TokenKeys::new(stack.secret.as_bytes());
    let url = format!("http://127.0.0.1:{}/graphql", stack.api_port);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (http, url, keys) = (http.clone(), url.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut tick = pace(rate, concurrency, worker, start);
            let started = Instant::now();
            let mut n = worker as u64;
            while started.elapsed() < duration {
                if let Some(tick) = tick.as_mut() {
                    tick.tick().await;
                }
                // A new author each time: one review per author and product.
                let token = keys.mint(&format!("bench-{}", uuid::Uuid::new_v4().simple()), reviews_api::auth::Role::User, Duration::from_secs(600))?;
                let product = uuid_of(n % PRODUCTS as u64 + 1);
                let body = serde_json::json!({
                    "query": "mutation($i: AddReviewInput!) { addReview(input: $i) { id } }",
                    "variables": {"i": {"productId": product, "rating": (n % 5 + 1), "title": "bench", "body": "a review"}},
                });
                let sent = Instant::now();
                let response = http.post(&url).bearer_auth(token).json(&body).send().await?;
                let text = response.text().await?;
                anyhow::ensure!(!text.contains("\"errors\""), "addReview failed: {text}");
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                n += concurrency as u64;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok((all.len() as u64, all))
}

/// The id of product number `i`: the same as `lpad(to_hex(i), 32, '0')::uuid` in SQL.
fn uuid_of(i: u64) -> String {
    uuid::Uuid::from_u128(u128::from(i)).to_string()
}
