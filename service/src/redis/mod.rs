//! How both processes reach Redis: one server (`REDIS_URL`, `redis://` or `rediss://`) or a
//! cluster (`REDIS_CLUSTER_NODES`), with a private CA for TLS (`REDIS_CA_CERT`).
//!
//! - `settings`: the variables, read and checked at start-up.
//! - `connections`: ordinary commands (a pool that replaces failed connections, or one
//!   cluster connection that follows the slots) and connections of their own for blocking
//!   reads.
//! - `topology`: a cluster's slot map (the chaos suite's failovers, the tests).

mod connections;
mod settings;
pub mod topology;

pub use connections::{means_connection_lost, Checkout, Connection, Redis};
pub use settings::{CaCert, ClusterSeeds, RedisArgs, RedisConfigError, RedisTarget};
