//! The API-alone figures come from wrk (Debian's package), an HTTP load generator written in
//! C: an in-process Rust client would spend a large share of the two cores on itself and
//! measure mostly its own cost.
//!
//! wrk sends the requests a Lua script builds (written next to the JSON report); its summary
//! gives requests/s and, with `--latency`, the p50 and p99.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::load::PRODUCTS;
use crate::stack::Stack;

#[derive(Debug, Clone, Serialize)]
pub struct WrkResult {
    pub requests: u64,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Non-2xx/3xx responses and socket errors wrk counted.
    pub errors: u64,
}

/// Authors whose tokens the addReview script cycles through: one review per author and
/// product, so `AUTHORS * PRODUCTS` reviews at most (enough for ~25 s at 10,000/s).
const AUTHORS: u64 = 2_500;

/// addReview from `connections` connections for `duration`: each request a new (author,
/// product) pair, authors' tokens minted up front.
pub fn add_review(
    stack: &Stack,
    connections: usize,
    duration: Duration,
    script_dir: &Path,
) -> anyhow::Result<WrkResult> {
    let keys = reviews_api::auth::TokenKeys::new(stack.secret.as_bytes());
    let mut tokens = Vec::with_capacity(AUTHORS as usize);
    for i in 0..AUTHORS {
        tokens.push(format!(
            "{:?}",
            keys.mint(
                &format!("wrk-{i}"),
                reviews_api::auth::Role::User,
                Duration::from_secs(3600)
            )?
        ));
    }
    let products: Vec<String> = (1..=PRODUCTS as u128)
        .map(|i| format!("{:?}", uuid::Uuid::from_u128(i).to_string()))
        .collect();
    // Each wrk thread has its own Lua state: threads take interleaved request numbers.
    let script = format!(
        r#"local tokens = {{{tokens}}}
local products = {{{products}}}
local threads, counter = 0, 0
function setup(thread)
  thread:set("offset", threads)
  threads = threads + 1
end
function init(args)
  counter = offset
  step = tonumber(args[1])
end
function request()
  local n = counter
  counter = counter + step
  local product = products[n % #products + 1]
  local token = tokens[math.floor(n / #products) % #tokens + 1]
  local body = '{{"query":"mutation($i: AddReviewInput!) {{ addReview(input: $i) {{ id }} }}",'
    .. '"variables":{{"i":{{"productId":"' .. product .. '","rating":' .. (n % 5 + 1)
    .. ',"title":"bench","body":"a review"}}}}}}'
  return wrk.format("POST", "/graphql",
    {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}}, body)
end
"#,
        tokens = tokens.join(","),
        products = products.join(","),
    );
    run(
        stack,
        connections,
        duration,
        script_dir,
        "add_review.lua",
        &script,
    )
}

/// The 20-review page of one product with each review's product and its rating.
pub fn review_page(
    stack: &Stack,
    connections: usize,
    duration: Duration,
    script_dir: &Path,
) -> anyhow::Result<WrkResult> {
    let product = uuid::Uuid::from_u128(1);
    let script = format!(
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{{"query":"query($p: ID!) {{ reviews(productId: $p, first: 20) {{ edges {{ node {{ id rating title product {{ name rating {{ average }} }} }} }} }} }}","variables":{{"p":"{product}"}}}}'
function init(args) end
"#
    );
    run(
        stack,
        connections,
        duration,
        script_dir,
        "review_page.lua",
        &script,
    )
}

fn run(
    stack: &Stack,
    connections: usize,
    duration: Duration,
    script_dir: &Path,
    script_name: &str,
    script: &str,
) -> anyhow::Result<WrkResult> {
    let path = script_dir.join(script_name);
    std::fs::write(&path, script)?;
    let threads = 2.min(connections);
    let output = Command::new("wrk")
        .arg(format!("--threads={threads}"))
        .arg(format!("--connections={connections}"))
        .arg(format!("--duration={}s", duration.as_secs()))
        .arg("--latency")
        .arg(format!("--script={}", path.display()))
        .arg(format!("http://127.0.0.1:{}/graphql", stack.api_port))
        .arg("--")
        .arg(threads.to_string())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run wrk (apt-get install wrk): {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse(&text).ok_or_else(|| anyhow::anyhow!("cannot read wrk's summary:\n{text}"))
}

/// Reads wrk's summary: the `--latency` distribution, the request count and Requests/sec.
fn parse(text: &str) -> Option<WrkResult> {
    let mut result = WrkResult {
        requests: 0,
        per_s: 0.0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        errors: 0,
    };
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("50%"), Some(value)) => result.p50_ms = millis(value)?,
            (Some("99%"), Some(value)) => result.p99_ms = millis(value)?,
            (Some("Requests/sec:"), Some(value)) => result.per_s = value.parse().ok()?,
            (Some("Non-2xx"), _) => {
                result.errors += line.rsplit(' ').next()?.parse::<u64>().ok()?
            }
            (Some("Socket"), _) => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                result.errors += line
                    .split(',')
                    .filter_map(|part| part.rsplit(' ').next()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
            (Some(count), Some("requests")) => result.requests = count.parse().ok()?,
            _ => {}
        }
    }
    (result.requests > 0).then_some(result)
}

/// "1.23ms", "456.00us", "1.20s" in milliseconds.
fn millis(value: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = value.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    Some(number.parse::<f64>().ok()? * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_summary() {
        let text = "Running 5s test @ http://127.0.0.1:1/graphql
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     9.41ms    3.10ms  40.00ms   80.00%
  Latency Distribution
     50%    8.90ms
     75%   10.10ms
     90%   12.00ms
     99%   16.60ms
  16730 requests in 5.00s, 3.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   3346.00
Transfer/sec:    635.00KB
";
        let r = parse(text).expect("parses");
        assert_eq!(r.requests, 16730);
        assert_eq!(r.per_s, 3346.0);
        assert_eq!(r.p50_ms, 8.9);
        assert_eq!(r.p99_ms, 16.6);
        assert_eq!(r.errors, 7);
        assert_eq!(millis("450.00us"), Some(0.45));
        assert_eq!(millis("1.50s"), Some(1500.0));
        assert_eq!(millis("oops"), None);
        assert!(parse("no summary").is_none());
    }
}
