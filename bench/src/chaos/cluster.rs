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

/// Asks `seed` for the slot map and finds `key`'s shard in it.
async fn shard_of(seed: &str, key: &str) -> anyhow::Result<Shard> {
    use reviews_service::redis::topology;
    let (slot, nodes) = topology::slot_map(seed, key).await?;
    let (primary, replica) = topology::shard(&nodes, slot)
        .ok_or_else(|| anyhow::anyhow!("no live primary owns slot {slot} yet"))?;
    Ok(Shard {
        primary_port: primary
            .port()
            .ok_or_else(|| anyhow::anyhow!("unreadable node {primary:?}"))?,
        replica_port: replica.and_then(|r| r.port()),
    })
}
