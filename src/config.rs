//! Command line and environment. Every setting is an environment variable (flags mirror
//! them); `reviews-api --help` lists each with its default.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use reviews_db::DbArgs;

use crate::auth::Role;
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "reviews-api",
    version,
    about = "GraphQL API for product reviews"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings for `serve`, the default command.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP (the default).
    Serve(ServeArgs),
    /// Apply db/migrations (embedded in this binary) and exit.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Print the GraphQL schema (SDL) and exit.
    PrintSchema,
    /// Print a signed bearer token for development.
    Token(TokenArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address the HTTP server listens on.
    #[arg(
        long = "api-addr",
        env = "API_ADDR",
        value_name = "API_ADDR",
        default_value = "127.0.0.1:3000"
    )]
    pub api_addr: SocketAddr,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// Secret that signs and verifies bearer tokens (HS256); at least 32 bytes. Required.
    #[arg(
        long = "auth-jwt-secret",
        env = "AUTH_JWT_SECRET",
        value_name = "AUTH_JWT_SECRET",
        hide_env_values = true
    )]
    pub auth_jwt_secret: Option<String>,
}

/// Shortest secret we accept: HS256 wants at least as many bytes as its output.
pub const MIN_SECRET_LEN: usize = 32;

impl AuthArgs {
    /// The secret, or a start-up error naming the variable.
    pub fn secret(&self) -> anyhow::Result<&str> {
        match self.auth_jwt_secret.as_deref() {
            None | Some("") => anyhow::bail!(
                "AUTH_JWT_SECRET is not set: the API signs and checks tokens with it \
                 (scripts/dev sets a development secret)"
            ),
            Some(s) if s.len() < MIN_SECRET_LEN => {
                anyhow::bail!("AUTH_JWT_SECRET is too short: use at least {MIN_SECRET_LEN} bytes")
            }
            Some(s) => Ok(s),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: text for people, json for machines. RUST_LOG sets the levels (default info).
    #[arg(
        long = "log-format",
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The user id (`sub` claim).
    #[arg(long)]
    pub sub: String,
    /// The role claim.
    #[arg(long, value_enum, default_value = "user")]
    pub role: Role,
    /// Lifetime in seconds.
    #[arg(long = "ttl", default_value_t = 86_400)]
    pub ttl_secs: u64,
    #[command(flatten)]
    pub auth: AuthArgs,
}
