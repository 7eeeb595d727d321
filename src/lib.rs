//! The reviews API: GraphQL over HTTP (warp + async-graphql) on PostgreSQL.
//!
//! A mutation writes a `reviews` row; the database's triggers take it from there (outbox,
//! worker). This crate only reads and writes the tables through `reviews-db`.
//!
//! # Layout
//! - `config`: command line and environment (`reviews-api --help`).
//! - `http`: routes, request ids, readiness.
//! - `auth`: bearer tokens and roles.
//! - `limits`, `rate_limit`: what one request may ask for, how often mutations may come.
//! - `graphql`: the schema (queries, mutations, types, loaders).
//! - `live`: the LISTEN connection that feeds subscriptions.
//! - `graphiql`: the GraphiQL page and its embedded assets (works offline).
//! - `error`: `ApiError` and the codes clients see.
//! - `metrics`: Prometheus counters and histograms, `GET /metrics`.

pub mod auth;
pub mod config;
pub mod error;
pub mod graphiql;
pub mod graphql;
pub mod http;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod rate_limit;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use reviews_db::Db;

use crate::auth::TokenKeys;
use crate::config::{AppEnv, Limits, ServeArgs};
use crate::http::AppState;
use crate::live::LiveFeed;
use crate::rate_limit::MutationLimits;

/// A running server: where it listens and the task to await until it has shut down.
pub struct Server {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds the HTTP server and serves until `shutdown` completes; in-flight requests are
/// drained before the task ends.
pub async fn run(
    args: &ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Server> {
    let settings = ApiSettings {
        keys: args.auth.token_keys()?,
        limits: args.limits.clone(),
        app_env: args.app_env,
    };
    let db = Db::connect_lazy(args.db.pg_config(), args.db.db_pool_size);
    let live = LiveFeed::start(args.db.pg_config(), db.clone());
    serve(db, live, settings, args.api_addr, shutdown).await
}

/// What the API needs besides its database and address.
#[derive(Clone)]
pub struct ApiSettings {
    pub keys: TokenKeys,
    pub limits: Limits,
    pub app_env: AppEnv,
}

impl ApiSettings {
    /// Development settings with the default limits.
    pub fn development(keys: TokenKeys) -> Self {
        ApiSettings {
            keys,
            limits: Limits::default(),
            app_env: AppEnv::Development,
        }
    }
}

/// [`run`] with its parts built: tests pass their own database handle to watch it.
pub async fn serve(
    db: Db,
    live: LiveFeed,
    settings: ApiSettings,
    api_addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Server> {
    metrics::handle();
    let mutation_limits = MutationLimits::new(
        settings.limits.mutations_per_user_per_minute,
        settings.limits.mutations_per_ip_per_minute,
    );
    tokio::spawn({
        let limits = mutation_limits.clone();
        async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                limits.forget_idle();
            }
        }
    });
    let state = AppState {
        schema: graphql::build_schema(db.clone(), live, &settings.limits, settings.app_env),
        db,
        keys: Arc::new(settings.keys),
        limits: settings.limits,
        mutation_limits,
        app_env: settings.app_env,
        documents: Arc::default(),
    };
    let (addr, serving) = warp::serve(http::routes(state))
        .try_bind_with_graceful_shutdown(api_addr, shutdown)
        .with_context(|| format!("while binding API_ADDR={api_addr}"))?;
    tracing::info!(%addr, "serving GraphQL at http://{addr}/graphql");
    Ok(Server {
        addr,
        task: tokio::spawn(serving),
    })
}
