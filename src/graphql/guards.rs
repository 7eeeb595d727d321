//! One set of guards for every transport: an async-graphql extension, so an operation is
//! guarded the same whether it arrives by POST, by GET or over the websocket.
//!
//! - Before validation: at most `GRAPHQL_MAX_ALIASES` aliases; at most `GRAPHQL_MAX_DEPTH`
//!   levels of fields, introspection apart (at most [`INTROSPECTION_MAX_DEPTH`], and none in
//!   production); mutations are rate limited per user and per client address, one unit per
//!   root mutation field (30 aliased `createProduct`s cost 30, not 1).
//! - Around execution: at most `API_MAX_CONCURRENT_PER_CLIENT` operations of one client
//!   address at once; the request deadline (`API_REQUEST_TIMEOUT`); a span carrying the
//!   request id, so every line logged while it runs names it.
//! - On the way out: every error gets an `extensions.code` (errors raised before any
//!   resolver ran are the client's: BAD_USER_INPUT); INTERNAL ones carry the request id and
//!   nothing else; limit refusals say their limit; metrics count operations and errors.
//! - Per operation: fresh DataLoaders (a websocket's operations never share a cache, and
//!   cache nothing: a subscription's events each read what is current), and a request id of
//!   its own.
//!
//! Complexity and directives are limited by the schema itself (`build_schema`).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextRequest, NextSubscribe, NextValidation,
};
use async_graphql::parser::types::{ExecutableDocument, OperationType};
use async_graphql::{
    ErrorExtensionValues, Request, Response, ServerError, ServerResult, ValidationResult, Variables,
};
use futures::stream::BoxStream;
use futures::StreamExt;
use reviews_db::Db;
use tracing::Instrument;

use super::RequestId;
use crate::auth::Auth;
use crate::config::{AppEnv, Limits};
use crate::error::ErrorCode;
use crate::limits::{inspect_document, DocumentFacts};
use crate::rate_limit::{ClientLimits, Refusal};

/// How deep introspection may nest, counted from `__schema` or `__type`: graphql-js's
/// standard introspection query with every option needs 15 (its type references); a few
/// levels more leave room, and the complexity limit still bounds its size.
pub const INTROSPECTION_MAX_DEPTH: usize = 20;

/// Where an operation comes from: the client's address, as the HTTP layer determined it
/// (`TRUSTED_PROXIES`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

/// Set when an operation reaches execution. An error response without it failed before: to
/// parse, to validate, or to coerce its variables (the request's fault: 400 under
/// GraphQL-over-HTTP's media type).
#[derive(Debug, Clone, Default)]
pub struct Executed(pub Arc<std::sync::atomic::AtomicBool>);

impl Executed {
    pub fn happened(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A websocket's subscriptions: how many run, and how many may.
#[derive(Debug, Clone)]
pub struct SocketSubscriptions {
    pub running: Arc<std::sync::atomic::AtomicUsize>,
    pub max: usize,
}

/// The guards' settings, shared by every operation.
pub struct Guards {
    pub limits: Limits,
    pub app_env: AppEnv,
    pub clients: ClientLimits,
    pub db: Db,
}

/// The guards' settings as each operation's guard holds them.
pub type Shared = Arc<Guards>;

/// Builds the extension (one guard per operation) from the shared settings.
pub struct GuardsExtension(pub Shared);

impl ExtensionFactory for GuardsExtension {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(GuardedOperation {
            guards: self.0.clone(),
            state: Arc::default(),
        })
    }
}

/// One operation's guard (async-graphql makes one per request, and one per websocket
/// operation).
struct GuardedOperation {
    guards: Shared,
    /// Shared with the response stream of a websocket operation, which outlives the hook.
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    operation_name: Option<String>,
    facts: Option<DocumentFacts>,
    request_id: Option<String>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Gives every error of a response a code, counts errors and the operation; `started` times
/// it.
fn finish(
    guards: &Guards,
    state: &Mutex<State>,
    mut response: Response,
    started: Option<Instant>,
) -> Response {
    let request_id = lock(state).request_id.clone().unwrap_or_default();
    for error in &mut response.errors {
        mask(error, &request_id, &guards.limits);
    }
    let outcome = if response.errors.is_empty() {
        "ok"
    } else {
        "error"
    };
    metrics::counter!("graphql_operations_total", "outcome" => outcome).increment(1);
    if let Some(started) = started {
        metrics::histogram!("graphql_operation_duration_seconds")
            .record(started.elapsed().as_secs_f64());
    }
    response
}

impl GuardedOperation {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for GuardedOperation {
    /// HTTP: the whole request, from preparation to response.
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let started = Instant::now();
        let response = next.run(ctx).await;
        let response = finish(&self.guards, &self.state, response, Some(started));
        let state = self.state();
        tracing::info!(
            request.id = state.request_id.as_deref().unwrap_or(""),
            user.id = user_of(ctx).unwrap_or(""),
            graphql.operation = state.operation_name.as_deref().unwrap_or(""),
            graphql.errors = response.errors.len(),
            duration_ms = started.elapsed().as_millis() as u64,
            "graphql request"
        );
        response
    }

    /// Websocket: each operation's stream of responses; subscriptions count against the
    /// socket's cap while they run.
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        let (guards, state) = (self.guards.clone(), self.state.clone());
        let Some(slots) = ctx.data_opt::<SocketSubscriptions>().cloned() else {
            return next
                .run(ctx, stream)
                .map(move |response| finish(&guards, &state, response, None))
                .boxed();
        };
        let held = slots
            .running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if held >= slots.max {
            slots
                .running
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            let refusal = guard_error(
                ErrorCode::BadUserInput,
                format!(
                    "too many operations on this socket: at most {} at once (WS_MAX_SUBSCRIPTIONS_PER_SOCKET)",
                    slots.max
                ),
            );
            metrics::counter!("graphql_errors_total", "code" => ErrorCode::BadUserInput.as_str())
                .increment(1);
            return futures::stream::once(async move { Response::from_errors(vec![refusal]) })
                .boxed();
        }
        let release = ReleaseOnDrop(slots.running);
        next.run(ctx, stream)
            .map(move |response| {
                let _held = &release;
                finish(&guards, &state, response, None)
            })
            .boxed()
    }

    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        {
            let mut state = self.state();
            state.operation_name = request.operation_name.clone();
        }
        // A cache of this operation's own: loaders never outlive it. Over a websocket an
        // operation may live for hours (a subscription resolves every event in it): there the
        // loaders batch but do not cache, so each event reads what is current.
        let (products, ratings) = super::loaders(&self.guards.db);
        if ctx.data_opt::<SocketSubscriptions>().is_some() {
            products.enable_all_cache(false);
            ratings.enable_all_cache(false);
        }
        request = request.data(products).data(ratings);
        // The HTTP layer names each request (in the request's own data: the context sees it
        // only after this hook); a websocket operation gets an id of its own.
        let named = request
            .data
            .get(&std::any::TypeId::of::<RequestId>())
            .and_then(|id| id.downcast_ref::<RequestId>())
            .cloned();
        let request_id = match named {
            Some(id) => id,
            None => {
                let id = RequestId(uuid::Uuid::new_v4().to_string());
                request = request.data(id.clone());
                id
            }
        };
        self.state().request_id = Some(request_id.0);
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let mut state = self.state();
        let facts = inspect_document(&document, state.operation_name.as_deref());
        state.facts = Some(facts);
        Ok(document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let facts = self.state().facts.clone();
        if let Some(facts) = facts {
            let limits = &self.guards.limits;
            if facts.aliases > limits.max_aliases {
                return Err(vec![guard_error(
                    ErrorCode::BadUserInput,
                    format!(
                        "too many aliases: {} (at most {}; GRAPHQL_MAX_ALIASES)",
                        facts.aliases, limits.max_aliases
                    ),
                )]);
            }
            if facts.introspects && self.guards.app_env == AppEnv::Production {
                return Err(vec![guard_error(
                    ErrorCode::BadUserInput,
                    "introspection is disabled".to_owned(),
                )]);
            }
            if facts.depth > limits.max_depth {
                return Err(vec![guard_error(
                    ErrorCode::BadUserInput,
                    format!(
                        "query is nested too deep: {} levels (at most {}; GRAPHQL_MAX_DEPTH)",
                        facts.depth, limits.max_depth
                    ),
                )]);
            }
            if facts.introspection_depth > INTROSPECTION_MAX_DEPTH {
                return Err(vec![guard_error(
                    ErrorCode::BadUserInput,
                    format!(
                        "introspection is nested too deep: {} levels (at most \
                         {INTROSPECTION_MAX_DEPTH}; the standard introspection query needs 15)",
                        facts.introspection_depth
                    ),
                )]);
            }
            if facts.operation == Some(OperationType::Mutation) {
                let client = ctx.data_opt::<ClientAddr>().and_then(|c| c.0);
                let units = facts.root_fields.max(1) as u32;
                let clients = &self.guards.clients;
                if let Err(refusal) = clients.check_mutations(user_of(ctx), client, units).await {
                    return Err(vec![refusal_error(refusal)]);
                }
            }
        }
        next.run(ctx).await
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        if let Some(executed) = ctx.data_opt::<Executed>() {
            executed.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let client = ctx.data_opt::<ClientAddr>().and_then(|c| c.0);
        let _slot = match self.guards.clients.enter(client) {
            Ok(slot) => slot,
            Err(refusal) => return Response::from_errors(vec![refusal_error(refusal)]),
        };
        let request_id = self.state().request_id.clone().unwrap_or_default();
        let span = tracing::info_span!("graphql", request.id = %request_id);
        let deadline = self.guards.limits.request_timeout;
        match tokio::time::timeout(deadline, next.run(ctx, operation_name).instrument(span)).await {
            Ok(response) => response,
            Err(_) => {
                tracing::warn!(request.id = %request_id, "graphql operation timed out");
                Response::from_errors(vec![guard_error(
                    ErrorCode::Timeout,
                    format!(
                        "the operation took longer than {deadline:?} and was cancelled (API_REQUEST_TIMEOUT)"
                    ),
                )])
            }
        }
    }
}

/// The caller's user id, if a valid token named one.
fn user_of<'a>(ctx: &ExtensionContext<'a>) -> Option<&'a str> {
    match ctx.data_opt::<Auth>() {
        Some(Auth::User(claims)) => Some(claims.sub.as_str()),
        _ => None,
    }
}

/// Decrements a websocket's count of running operations when an operation's stream ends.
struct ReleaseOnDrop(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An error of the guards', with its code.
fn guard_error(code: ErrorCode, message: String) -> ServerError {
    let mut error = ServerError::new(message, None);
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", code.as_str());
    error.extensions = Some(extensions);
    error
}

/// A rate limit's refusal: RATE_LIMITED with how long to wait, or BAD_USER_INPUT when the
/// request alone asks more than the limit ever allows.
fn refusal_error(refusal: Refusal) -> ServerError {
    match refusal {
        Refusal::Wait { seconds, what } => {
            let mut error = guard_error(
                ErrorCode::RateLimited,
                format!("too many {what}: try again in {seconds} s"),
            );
            if let Some(extensions) = &mut error.extensions {
                extensions.set("retryAfterSeconds", seconds);
            }
            error
        }
        Refusal::TooBig { asked, allowed } => guard_error(
            ErrorCode::BadUserInput,
            format!(
                "too many mutations in one request: {asked} root fields (at most {allowed} a minute)"
            ),
        ),
    }
}

/// Gives an error its code (BAD_USER_INPUT when nothing set one: it was raised before any
/// resolver ran), the request id when INTERNAL, and a limit's setting when a limit refused.
fn mask(error: &mut ServerError, request_id: &str, limits: &Limits) {
    let code = error
        .extensions
        .as_ref()
        .and_then(|e| e.get("code"))
        .and_then(|v| match v {
            async_graphql::Value::String(s) => Some(ErrorCode::from_extension(s)),
            _ => None,
        })
        .unwrap_or(ErrorCode::BadUserInput);
    if let Some(message) = limit_message(&error.message, limits) {
        error.message = message;
    }
    let extensions = error.extensions.get_or_insert_with(Default::default);
    extensions.set("code", code.as_str());
    if code == ErrorCode::Internal {
        extensions.set("requestId", request_id.to_owned());
    }
    metrics::counter!("graphql_errors_total", "code" => code.as_str()).increment(1);
}

/// async-graphql's refusals of a query over a limit, said with the limit and its setting.
fn limit_message(message: &str, limits: &Limits) -> Option<String> {
    match message {
        "Query is too complex." => Some(format!(
            "query is too complex: at most {} (GRAPHQL_MAX_COMPLEXITY; a list counts `first` \
             times its fields)",
            limits.max_complexity
        )),
        _ => None,
    }
}
