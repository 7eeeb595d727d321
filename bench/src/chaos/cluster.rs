//! The Redis Cluster under test (`scripts/chaos --redis-cluster` starts six nodes with
//! scripts/lib/redis-cluster): which primary owns the queue's slot, and its replica, for
//! the failover faults.

use std::path::PathBuf;

/// The cluster: its seed nodes (host:port) and the directory of its nodes' files.
pub struct Cluster {
    pub seeds: Vec<String>,
    pub dir: PathBuf,
}

/// A shard: the primary serving a slot and a replica of it.
#[derive(Debug)]
pub struct Shard {
    pub primary_port: u16,
    pub replica_port: Option<u16>,
}

impl Cluster {
    /// The shard that owns `key`'s slot now.
    pub async fn shard_of(&self, key: &str) -> anyhow::Result<Shard> {
        let mut last_error = None;
        for seed in &self.seeds {
            match shard_of(seed, key).await {
                Ok(shard) => return Ok(shard),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no seed nodes")))
    }

    /// The process id of the node on `port` (from its pid file).
    pub fn pid(&self, port: u16) -> anyhow::Result<u32> {
        let file = self.dir.join(port.to_string()).join("redis.pid");
        Ok(std::fs::read_to_string(&file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
            .trim()
            .parse()?)
    }
}

/// Asks `seed` for the slot map (CLUSTER NODES: `id addr flags primary-id ... slots`).
async fn shard_of(seed: &str, key: &str) -> anyhow::Result<Shard> {
    let client = redis::Client::open(format!("redis://{seed}"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut conn)
        .await?;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await?;
    let lines: Vec<Vec<&str>> = nodes
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    let port = |fields: &[&str]| -> Option<u16> {
        fields
            .get(1)?
            .split('@')
            .next()?
            .rsplit(':')
            .next()?
            .parse()
            .ok()
    };
    let owns = |fields: &[&str]| {
        fields.iter().skip(8).any(|range| {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            matches!((start.parse::<u16>(), end.parse::<u16>()), (Ok(s), Ok(e)) if (s..=e).contains(&slot))
        })
    };
    let primary = lines
        .iter()
        .find(|f| f.len() > 8 && f[2].contains("master") && !f[2].contains("fail") && owns(f))
        .ok_or_else(|| anyhow::anyhow!("no live primary owns slot {slot} yet"))?;
    let replica = lines.iter().find(|f| {
        f.len() > 3 && f[2].contains("slave") && !f[2].contains("fail") && f[3] == primary[0]
    });
    Ok(Shard {
        primary_port: port(primary)
            .ok_or_else(|| anyhow::anyhow!("unreadable node {primary:?}"))?,
        replica_port: replica.and_then(|r| port(r)),
    })
}
