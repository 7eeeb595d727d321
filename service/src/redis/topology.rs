//! A Redis Cluster's slot map as one node tells it (`CLUSTER NODES`): which primary serves a
//! key's slot, a replica of it, and the primaries that do not serve it. The chaos suite
//! aims its failover faults with it; the tests point clients at a node without the slot.

use redis::RedisError;

/// A node of the map: its address and the slots it serves (a primary's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    /// host:port
    pub addr: String,
    pub primary: bool,
    /// The primary a replica follows.
    pub follows: Option<String>,
    /// A node the cluster marked failed (or failing).
    pub failed: bool,
    pub slots: Vec<(u16, u16)>,
}

impl Node {
    pub fn port(&self) -> Option<u16> {
        self.addr.rsplit(':').next()?.parse().ok()
    }

    fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|(start, end)| (*start..=*end).contains(&slot))
    }
}

/// The nodes as `seed` (host:port) sees them, and `key`'s slot.
pub async fn slot_map(seed: &str, key: &str) -> Result<(u16, Vec<Node>), RedisError> {
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
    Ok((slot, nodes.lines().filter_map(parse_node).collect()))
}

/// A line of CLUSTER NODES: `id addr@bus flags primary-id ping pong epoch state slots...`.
fn parse_node(line: &str) -> Option<Node> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let flags = *fields.get(2)?;
    let slots = fields
        .iter()
        .skip(8)
        .filter_map(|range| {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            Some((start.parse().ok()?, end.parse().ok()?))
        })
        .collect();
    Some(Node {
        id: fields.first()?.to_string(),
        addr: fields.get(1)?.split('@').next()?.to_owned(),
        primary: flags.contains("master"),
        follows: fields
            .get(3)
            .filter(|id| **id != "-")
            .map(|id| id.to_string()),
        failed: flags.contains("fail"),
        slots,
    })
}

/// The live primary serving `slot`, and a live replica of it.
pub fn shard(nodes: &[Node], slot: u16) -> Option<(&Node, Option<&Node>)> {
    let primary = nodes
        .iter()
        .find(|n| n.primary && !n.failed && n.serves(slot))?;
    let replica = nodes
        .iter()
        .find(|n| !n.primary && !n.failed && n.follows.as_deref() == Some(primary.id.as_str()));
    Some((primary, replica))
}

/// A primary that does not serve `slot`: a client pointed there is answered MOVED.
pub fn primary_elsewhere(nodes: &[Node], slot: u16) -> Option<&Node> {
    nodes
        .iter()
        .find(|n| n.primary && !n.failed && !n.serves(slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922
c3 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383
d4 127.0.0.1:7003@17003 slave a1 0 0 1 connected
e5 127.0.0.1:7004@17004 slave,fail b2 0 0 2 connected
f6 127.0.0.1:7005@17005 slave c3 0 0 3 connected";

    #[test]
    fn the_slot_map_names_a_shard_and_a_primary_elsewhere() {
        let nodes: Vec<Node> = NODES.lines().filter_map(parse_node).collect();
        let (primary, replica) = shard(&nodes, 6000).unwrap();
        assert_eq!(primary.port(), Some(7001));
        assert!(replica.is_none(), "its replica failed");
        let (primary, replica) = shard(&nodes, 100).unwrap();
        assert_eq!(
            (primary.port(), replica.and_then(Node::port)),
            (Some(7000), Some(7003))
        );
        assert_ne!(primary_elsewhere(&nodes, 100).unwrap().port(), Some(7000));
    }
}
