//! Command line and environment. Every setting is an environment variable (flags mirror
//! them); `reviews-api --help` lists each with its default.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use reviews_db::DbArgs;

use crate::auth::Role;
use reviews_service::LogFormat;

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
    /// `production` turns off GraphiQL, introspection and field suggestions.
    #[arg(
        long = "app-env",
        env = "APP_ENV",
        value_name = "APP_ENV",
        default_value = "development"
    )]
    pub app_env: AppEnv,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AppEnv {
    Development,
    Production,
}

/// What one request may ask for, and how often mutations may come.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Deepest selection nesting a query may have.
    #[arg(
        long = "graphql-max-depth",
        env = "GRAPHQL_MAX_DEPTH",
        value_name = "GRAPHQL_MAX_DEPTH",
        default_value_t = 12
    )]
    pub max_depth: usize,
    /// Most complexity a query may have: each field counts 1, a list counts its page size
    /// (`first`) times its children.
    #[arg(
        long = "graphql-max-complexity",
        env = "GRAPHQL_MAX_COMPLEXITY",
        value_name = "GRAPHQL_MAX_COMPLEXITY",
        default_value_t = 5_000
    )]
    pub max_complexity: usize,
    /// Most aliased fields in one request.
    #[arg(
        long = "graphql-max-aliases",
        env = "GRAPHQL_MAX_ALIASES",
        value_name = "GRAPHQL_MAX_ALIASES",
        default_value_t = 30
    )]
    pub max_aliases: usize,
    /// Most directives on one field.
    #[arg(
        long = "graphql-max-directives",
        env = "GRAPHQL_MAX_DIRECTIVES",
        value_name = "GRAPHQL_MAX_DIRECTIVES",
        default_value_t = 5
    )]
    pub max_directives: usize,
    /// Longest a request may take before it is cancelled (e.g. 10s, 500ms).
    #[arg(long = "api-request-timeout", env = "API_REQUEST_TIMEOUT", value_name = "API_REQUEST_TIMEOUT",
          default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: std::time::Duration,
    /// Mutations one user may send per minute (0 turns the limit off).
    #[arg(
        long = "rate-limit-user-per-minute",
        env = "RATE_LIMIT_USER_PER_MINUTE",
        value_name = "RATE_LIMIT_USER_PER_MINUTE",
        default_value_t = 120
    )]
    pub mutations_per_user_per_minute: u32,
    /// Mutations one client IP may send per minute (0 turns the limit off).
    #[arg(
        long = "rate-limit-ip-per-minute",
        env = "RATE_LIMIT_IP_PER_MINUTE",
        value_name = "RATE_LIMIT_IP_PER_MINUTE",
        default_value_t = 600
    )]
    pub mutations_per_ip_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 12,
            max_complexity: 5_000,
            max_aliases: 30,
            max_directives: 5,
            request_timeout: std::time::Duration::from_secs(10),
            mutations_per_user_per_minute: 120,
            mutations_per_ip_per_minute: 600,
        }
    }
}

fn parse_duration(value: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("{e} (examples: 500ms, 10s)"))
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
    /// When set, tokens must carry this `iss` claim.
    #[arg(
        long = "auth-jwt-issuer",
        env = "AUTH_JWT_ISSUER",
        value_name = "AUTH_JWT_ISSUER"
    )]
    pub auth_jwt_issuer: Option<String>,
    /// When set, tokens must carry this `aud` claim.
    #[arg(
        long = "auth-jwt-audience",
        env = "AUTH_JWT_AUDIENCE",
        value_name = "AUTH_JWT_AUDIENCE"
    )]
    pub auth_jwt_audience: Option<String>,
}

impl AuthArgs {
    /// The token rules these settings describe.
    pub fn token_keys(&self) -> anyhow::Result<crate::auth::TokenKeys> {
        Ok(crate::auth::TokenKeys::new(self.secret()?.as_bytes())
            .with_issuer(self.auth_jwt_issuer.as_deref())
            .with_audience(self.auth_jwt_audience.as_deref()))
    }
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
