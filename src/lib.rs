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
use crate::config::{AppEnv, Edges, Limits, ServeArgs};
use crate::graphql::guards::Guards;
use crate::http::AppState;
use crate::live::LiveFeed;
use crate::rate_limit::{ClientLimits, SharedAllowances};
use reviews_service::redis::Redis;

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
    let shared_limits = match args.redis.named() {
        true => Some(SharedAllowances::new(
            Redis::new(args.redis.target()?, 4)
                .context("while reading REDIS_URL / REDIS_CLUSTER_NODES")?,
            &args.redis.redis_prefix,
        )),
        false => None,
    };
    let settings = ApiSettings {
        keys: args.auth.token_keys(args.app_env)?,
        limits: args.limits.clone(),
        edges: args.edges.clone(),
        app_env: args.app_env,
        shared_limits: shared_limits.map(Arc::new),
    };
    let targets = args.db.targets()?;
    let db = Db::connect_lazy(targets.pool, args.db.db_pool_size, targets.pool_mode);
    let live = LiveFeed::start(targets.session, db.clone());
    serve(db, live, settings, args.api_addr, shutdown).await
}

/// What the API needs besides its database and address.
#[derive(Clone)]
pub struct ApiSettings {
    pub keys: TokenKeys,
    pub limits: Limits,
    pub edges: Edges,
    pub app_env: AppEnv,
    /// Mutation allowances in Redis, shared with the other API processes (None: this
    /// process limits on its own).
    pub shared_limits: Option<Arc<SharedAllowances>>,
}

impl ApiSettings {
    /// Development settings with the default limits.
    pub fn development(keys: TokenKeys) -> Self {
        ApiSettings {
            keys,
            limits: Limits::default(),
            edges: Edges::default(),
            app_env: AppEnv::Development,
            shared_limits: None,
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
    let limits = &settings.limits;
    let mut clients = ClientLimits::new(
        limits.mutations_per_user_per_minute,
        limits.mutations_per_ip_per_minute,
        limits.concurrent_per_client,
    );
    if let Some(shared) = &settings.shared_limits {
        clients = clients.shared_through(shared.clone());
    }
    tokio::spawn({
        let clients = clients.clone();
        async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                clients.forget_idle();
            }
        }
    });
    let guards = Arc::new(Guards {
        limits: settings.limits.clone(),
        app_env: settings.app_env,
        clients,
        db: db.clone(),
    });
    let edges = settings.edges;
    let state = AppState {
        schema: graphql::build_schema(db.clone(), live, guards),
        db,
        keys: Arc::new(settings.keys),
        sockets: http::Sockets::new(edges.ws_max_sockets, edges.ws_max_sockets_per_client),
        edges: Arc::new(edges.clone()),
        app_env: settings.app_env,
        documents: Arc::default(),
        schema_current: Arc::default(),
    };
    let service = warp::service(http::routes(state));
    let (addr, serving) = http::server::serve(api_addr, service, &edges, shutdown)
        .await
        .with_context(|| format!("while binding API_ADDR={api_addr}"))?;
    tracing::info!(%addr, "serving GraphQL at http://{addr}/graphql");
    Ok(Server {
        addr,
        task: tokio::spawn(serving),
    })
}
