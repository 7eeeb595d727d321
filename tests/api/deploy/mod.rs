//! Where our users deploy: TLS to Postgres and Redis, Redis Cluster, PgBouncer in
//! transaction mode, several API processes sharing rate limits. The servers are the
//! system's binaries on loopback ports (`servers`).

mod bad_input;
mod cluster;
mod pgbouncer;
mod replicas;
mod servers;
mod tls;
