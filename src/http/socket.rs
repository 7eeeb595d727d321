//! GraphQL over websocket (`graphql-transport-ws`, and the older `graphql-ws`), with the
//! same guards as HTTP (the schema's extension) and the socket's own edges:
//!
//! - at most `WS_MAX_SOCKETS` sockets in the process and `WS_MAX_SOCKETS_PER_CLIENT` per
//!   client address (more are refused before the upgrade: 503, RATE_LIMITED);
//! - messages of at most [`MAX_MESSAGE_BYTES`] (a larger one closes the socket, 1009);
//! - `connection_init` within `WS_CONNECTION_INIT_TIMEOUT` (else closed, 4408);
//! - a token given in `connection_init` is checked there (an invalid one closes the socket)
//!   and the socket is closed when it expires (4401);
//! - at most `WS_MAX_SUBSCRIPTIONS_PER_SOCKET` operations at once on one socket.
//!
//! Mutations over the socket are allowed, and guarded exactly as over HTTP: the alias limit,
//! the rate limits by root field, the deadline and the masking are the extension's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_graphql::http::{WebSocketProtocols, WsMessage};
use futures::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::ws::Message;

use super::graphql::Caller;
use super::reply::error_response;
use super::state::AppState;
use crate::auth::Auth;
use crate::error::ErrorCode;
use crate::graphql::guards::{ClientAddr, SocketSubscriptions};
use crate::graphql::RequestId;
use crate::rate_limit::client_key;

/// Largest websocket message (and frame) read, in bytes: the same as an HTTP body.
pub const MAX_MESSAGE_BYTES: usize = super::MAX_BODY_BYTES as usize;

/// The open sockets: in the process and per client address.
pub struct Sockets {
    total: Arc<Semaphore>,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    max_per_client: usize,
}

/// A socket's place, given back when it closes.
pub struct SocketSlot {
    sockets: Arc<Sockets>,
    client: Option<IpAddr>,
    _total: OwnedSemaphorePermit,
}

impl Sockets {
    pub fn new(max: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(Sockets {
            total: Arc::new(Semaphore::new(max)),
            per_client: Mutex::default(),
            max_per_client,
        })
    }

    fn try_open(self: &Arc<Self>, client: Option<IpAddr>) -> Result<SocketSlot, &'static str> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| "too many websockets on this server (WS_MAX_SOCKETS)")?;
        let client = client.map(client_key);
        if let Some(ip) = client {
            let mut open = self.per_client.lock().expect("sockets lock poisoned");
            let count = open.entry(ip).or_default();
            if *count >= self.max_per_client {
                return Err("too many websockets from your address (WS_MAX_SOCKETS_PER_CLIENT)");
            }
            *count += 1;
        }
        Ok(SocketSlot {
            sockets: self.clone(),
            client,
            _total: total,
        })
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.client {
            let mut open = self
                .sockets
                .per_client
                .lock()
                .expect("sockets lock poisoned");
            if let Some(count) = open.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

/// `GET /graphql` with a websocket upgrade.
pub fn upgrade(
    ws: warp::ws::Ws,
    protocol: WebSocketProtocols,
    state: AppState,
    caller: Caller,
) -> Response {
    let slot = match state.sockets.try_open(caller.client) {
        Ok(slot) => slot,
        Err(why) => {
            let mut refused = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::RateLimited,
                why,
                &caller.request_id,
            );
            refused
                .headers_mut()
                .insert("retry-after", warp::http::HeaderValue::from_static("5"));
            return refused;
        }
    };
    let client = caller.client;
    let reply = ws
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| serve(socket, protocol, state, client, slot));
    warp::reply::with_header(
        reply,
        "Sec-WebSocket-Protocol",
        protocol.sec_websocket_protocol(),
    )
    .into_response()
}

/// Why the suite of messages from the client stopped.
#[derive(Default)]
struct ReadEnd(Mutex<Option<(u16, String)>>);

async fn serve(
    socket: warp::ws::WebSocket,
    protocol: WebSocketProtocols,
    state: AppState,
    client: Option<IpAddr>,
    _slot: SocketSlot,
) {
    let (mut sink, stream) = socket.split();
    let read_end = Arc::new(ReadEnd::default());
    let incoming = {
        let read_end = read_end.clone();
        stream
            .take_while(move |message| {
                let go_on = match message {
                    Ok(message) => !message.is_close(),
                    Err(error) => {
                        let too_big = error.to_string().contains("too long");
                        let (code, why) = if too_big {
                            (
                                1009,
                                format!("message too big: at most {MAX_MESSAGE_BYTES} bytes"),
                            )
                        } else {
                            (1002, "protocol error".to_owned())
                        };
                        *read_end.0.lock().expect("read end lock poisoned") = Some((code, why));
                        false
                    }
                };
                futures::future::ready(go_on)
            })
            .filter_map(|message| {
                futures::future::ready(match message {
                    Ok(message) if message.is_text() || message.is_binary() => {
                        Some(message.into_bytes())
                    }
                    _ => None,
                })
            })
    };

    let initialised = Arc::new(AtomicBool::new(false));
    let expires_at: Arc<Mutex<Option<u64>>> = Arc::default();
    let on_init = {
        let (keys, initialised, expires_at) =
            (state.keys.clone(), initialised.clone(), expires_at.clone());
        let max_operations = state.edges.ws_max_subscriptions_per_socket;
        move |payload: serde_json::Value| async move {
            let token = payload
                .get("Authorization")
                .or_else(|| payload.get("authorization"))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .or_else(|| {
                    payload
                        .get("token")
                        .and_then(|v| v.as_str())
                        .map(|t| format!("Bearer {t}"))
                });
            let auth = Auth::from_header(&keys, token.as_deref());
            if let Auth::Invalid(reason) = &auth {
                return Err(async_graphql::Error::new(reason.clone()));
            }
            if let Auth::User(claims) = &auth {
                *expires_at.lock().expect("expiry lock poisoned") = Some(claims.exp);
            }
            initialised.store(true, Ordering::SeqCst);
            let mut data = async_graphql::Data::default();
            data.insert(auth);
            data.insert(RequestId(uuid::Uuid::new_v4().to_string()));
            data.insert(ClientAddr(client));
            data.insert(SocketSubscriptions {
                running: Arc::default(),
                max: max_operations,
            });
            Ok(data)
        }
    };
    let mut graphql = async_graphql::http::WebSocket::new(state.schema.clone(), incoming, protocol)
        .on_connection_init(on_init);
    let init_deadline = tokio::time::Instant::now() + state.edges.ws_init_timeout;

    let close = loop {
        let expiry = expires_at
            .lock()
            .expect("expiry lock poisoned")
            .map(instant_of_unix);
        tokio::select! {
            message = graphql.next() => match message {
                Some(WsMessage::Text(text)) => {
                    if sink.send(Message::text(text)).await.is_err() {
                        break None;
                    }
                }
                Some(WsMessage::Close(code, reason)) => break Some((code, reason)),
                None => break read_end.0.lock().expect("read end lock poisoned").take(),
            },
            _ = tokio::time::sleep_until(init_deadline), if !initialised.load(Ordering::SeqCst) => {
                break Some((4408, "Connection initialisation timeout".to_owned()));
            }
            _ = tokio::time::sleep_until(expiry.unwrap_or(init_deadline)), if expiry.is_some() => {
                break Some((4401, "token expired".to_owned()));
            }
        }
    };
    if let Some((code, reason)) = close {
        let _ = sink.send(Message::close_with(code, reason)).await;
    }
    let _ = sink.close().await;
}

/// The tokio instant of a Unix time in seconds (now, if it has passed).
fn instant_of_unix(seconds: u64) -> tokio::time::Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(seconds).saturating_sub(now);
    tokio::time::Instant::now() + left
}
