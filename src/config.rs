//! Command line and environment. Every setting is an environment variable (flags mirror
//! them); `reviews-api --help` lists each with its default.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use reviews_db::DbArgs;
use secrecy::{ExposeSecret, SecretString};

use crate::auth::Role;
use reviews_service::redis::RedisArgs;
use reviews_service::settings::{parse_duration, parse_secret};
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

// Parsed once at start-up: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
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
    pub edges: Edges,
    #[command(flatten)]
    pub db: DbArgs,
    /// Redis, for rate limits shared by every API process; used only when REDIS_URL or
    /// REDIS_CLUSTER_NODES is set (otherwise each process limits on its own).
    #[command(flatten)]
    pub redis: RedisArgs,
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
    /// Operations of one client address running at once (reads included; 0: no cap).
    #[arg(
        long = "api-max-concurrent-per-client",
        env = "API_MAX_CONCURRENT_PER_CLIENT",
        value_name = "API_MAX_CONCURRENT_PER_CLIENT",
        default_value_t = 32
    )]
    pub concurrent_per_client: usize,
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
            concurrent_per_client: 32,
        }
    }
}

/// The server's edges: connections, proxies in front, websockets.
#[derive(Debug, Clone, clap::Args)]
pub struct Edges {
    /// Proxies in front of the API (comma-separated CIDRs, e.g. 10.0.0.0/8,::1/128): from a
    /// trusted peer, the client address is the right-most untrusted hop of X-Forwarded-For.
    /// Empty: the peer's address, whatever the headers say.
    #[arg(long = "trusted-proxies", env = "TRUSTED_PROXIES", value_name = "TRUSTED_PROXIES",
          value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Longest a client may take to send a request's headers (slowloris).
    #[arg(long = "api-header-read-timeout", env = "API_HEADER_READ_TIMEOUT",
          value_name = "API_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: std::time::Duration,
    /// Most connections the server holds at once; more wait to be accepted.
    #[arg(long = "api-max-connections", env = "API_MAX_CONNECTIONS",
          value_name = "API_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// How long a websocket may go without `connection_init` before it is closed (4408).
    #[arg(long = "ws-connection-init-timeout", env = "WS_CONNECTION_INIT_TIMEOUT",
          value_name = "WS_CONNECTION_INIT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub ws_init_timeout: std::time::Duration,
    /// Most websockets open at once in this process.
    #[arg(
        long = "ws-max-sockets",
        env = "WS_MAX_SOCKETS",
        value_name = "WS_MAX_SOCKETS",
        default_value_t = 1024
    )]
    pub ws_max_sockets: usize,
    /// Most websockets open at once from one client address.
    #[arg(
        long = "ws-max-sockets-per-client",
        env = "WS_MAX_SOCKETS_PER_CLIENT",
        value_name = "WS_MAX_SOCKETS_PER_CLIENT",
        default_value_t = 16
    )]
    pub ws_max_sockets_per_client: usize,
    /// Most operations (subscriptions mostly) running at once on one websocket.
    #[arg(
        long = "ws-max-subscriptions-per-socket",
        env = "WS_MAX_SUBSCRIPTIONS_PER_SOCKET",
        value_name = "WS_MAX_SUBSCRIPTIONS_PER_SOCKET",
        default_value_t = 16
    )]
    pub ws_max_subscriptions_per_socket: usize,
}

impl Default for Edges {
    fn default() -> Self {
        Edges {
            trusted_proxies: Vec::new(),
            header_read_timeout: std::time::Duration::from_secs(10),
            max_connections: 4096,
            ws_init_timeout: std::time::Duration::from_secs(10),
            ws_max_sockets: 1024,
            ws_max_sockets_per_client: 16,
            ws_max_subscriptions_per_socket: 16,
        }
    }
}

fn parse_cidr(value: &str) -> Result<ipnet::IpNet, String> {
    let value = value.trim();
    value
        .parse::<ipnet::IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{value:?} is not a CIDR (10.0.0.0/8) or an address"))
}

#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// Secret that signs and verifies bearer tokens (HS256); at least 32 bytes. Required.
    #[arg(
        long = "auth-jwt-secret",
        env = "AUTH_JWT_SECRET",
        value_name = "AUTH_JWT_SECRET",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub auth_jwt_secret: Option<SecretString>,
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
    /// Longest a token may still be valid for (its `exp` from now); a token valid longer is
    /// refused. Default: none in development, 24h in production.
    #[arg(long = "auth-jwt-max-ttl", env = "AUTH_JWT_MAX_TTL", value_name = "AUTH_JWT_MAX_TTL",
          value_parser = parse_duration)]
    pub auth_jwt_max_ttl: Option<std::time::Duration>,
}

/// A token's longest remaining life in production, unless AUTH_JWT_MAX_TTL says otherwise.
pub const PRODUCTION_MAX_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl AuthArgs {
    /// The token rules these settings describe. In production, tokens must name their
    /// issuer and audience (a token minted for another service must not pass here) and
    /// live at most AUTH_JWT_MAX_TTL.
    pub fn token_keys(&self, app_env: AppEnv) -> anyhow::Result<crate::auth::TokenKeys> {
        let max_ttl = match app_env {
            AppEnv::Production => {
                anyhow::ensure!(
                    self.auth_jwt_issuer.is_some() && self.auth_jwt_audience.is_some(),
                    "APP_ENV=production needs AUTH_JWT_ISSUER and AUTH_JWT_AUDIENCE: tokens must \
                     say who issued them and for whom"
                );
                Some(self.auth_jwt_max_ttl.unwrap_or(PRODUCTION_MAX_TTL))
            }
            AppEnv::Development => self.auth_jwt_max_ttl,
        };
        Ok(crate::auth::TokenKeys::new(self.secret()?.as_bytes())
            .with_issuer(self.auth_jwt_issuer.as_deref())
            .with_audience(self.auth_jwt_audience.as_deref())
            .with_max_ttl(max_ttl))
    }
}

/// Shortest secret we accept: HS256 wants at least as many bytes as its output.
pub const MIN_SECRET_LEN: usize = 32;

impl AuthArgs {
    /// The secret, or a start-up error naming the variable.
    pub fn secret(&self) -> anyhow::Result<&str> {
        match self.auth_jwt_secret.as_ref().map(|s| s.expose_secret()) {
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
    /// The API's environment: in production a token carries the issuer and audience.
    #[arg(
        long = "app-env",
        env = "APP_ENV",
        value_name = "APP_ENV",
        default_value = "development"
    )]
    pub app_env: AppEnv,
    #[command(flatten)]
    pub auth: AuthArgs,
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn serve(args: &[&str]) -> ServeArgs {
        Cli::try_parse_from(std::iter::once("reviews-api").chain(args.iter().copied()))
            .unwrap()
            .serve
    }

    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes!";

    #[test]
    fn the_secret_never_prints() {
        let args = serve(&["--auth-jwt-secret", SECRET]);
        let shown = format!("{args:?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
    }

    #[test]
    fn production_needs_an_issuer_and_an_audience_and_bounds_a_tokens_life() {
        let bare = serve(&["--auth-jwt-secret", SECRET]);
        let refused = bare
            .auth
            .token_keys(AppEnv::Production)
            .err()
            .unwrap()
            .to_string();
        assert!(
            refused.contains("AUTH_JWT_ISSUER") && refused.contains("AUTH_JWT_AUDIENCE"),
            "{refused}"
        );
        bare.auth.token_keys(AppEnv::Development).unwrap();

        let named = serve(&[
            "--auth-jwt-secret",
            SECRET,
            "--auth-jwt-issuer",
            "https://auth.example.com",
            "--auth-jwt-audience",
            "reviews",
        ]);
        let keys = named.auth.token_keys(AppEnv::Production).unwrap();
        let day = std::time::Duration::from_secs(24 * 3600);
        let within = keys.mint("alice", crate::auth::Role::User, day).unwrap();
        keys.verify(&within).unwrap();
        assert!(keys
            .mint("alice", crate::auth::Role::User, day * 2)
            .is_err());
        // A token minted elsewhere for two days is refused here.
        let lax = crate::auth::TokenKeys::new(SECRET.as_bytes())
            .with_issuer(Some("https://auth.example.com"))
            .with_audience(Some("reviews"));
        let long = lax.mint("alice", crate::auth::Role::User, day * 2).unwrap();
        assert!(keys.verify(&long).unwrap_err().contains("longer"));
    }

    #[test]
    fn trusted_proxies_take_cidrs_or_addresses_and_refuse_the_rest() {
        let args = serve(&["--trusted-proxies", "10.0.0.0/8, ::1"]);
        assert_eq!(args.edges.trusted_proxies.len(), 2);
        let bad = Cli::try_parse_from(["reviews-api", "--trusted-proxies", "proxy.local"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            bad.contains("TRUSTED_PROXIES") && bad.contains("not a CIDR"),
            "{bad}"
        );
    }
}
