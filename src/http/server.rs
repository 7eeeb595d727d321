//! The HTTP server under the routes: hyper, built by hand rather than by `warp::serve`, for
//! two edges warp does not expose: a header-read timeout (a client that trickles its headers
//! is cut off, not served for ever) and a cap on connections held at once (more wait in the
//! kernel's backlog until one closes). Each request carries its peer's address as an
//! extension ([`PeerAddr`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::server::accept::Accept;
use hyper::service::{make_service_fn, service_fn};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Edges;

/// The address of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Binds `addr` and serves `service` (the routes, as `warp::service` makes them) until
/// `shutdown`, then drains in-flight requests.
pub async fn serve<S>(
    addr: SocketAddr,
    service: S,
    edges: &Edges,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()>)>
where
    S: hyper::service::Service<
            hyper::Request<hyper::Body>,
            Response = hyper::Response<hyper::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let incoming = Incoming {
        listener,
        slots: Arc::new(Semaphore::new(edges.max_connections as usize)),
        waiting: None,
    };
    let make = make_service_fn(move |conn: &Counted| {
        let peer = PeerAddr(conn.peer);
        let service = service.clone();
        async move {
            Ok::<_, Infallible>(service_fn(move |mut request| {
                request.extensions_mut().insert(peer);
                let mut service = service.clone();
                hyper::service::Service::call(&mut service, request)
            }))
        }
    });
    let server = hyper::Server::builder(incoming)
        .http1_header_read_timeout(edges.header_read_timeout)
        .serve(make)
        .with_graceful_shutdown(shutdown);
    Ok((local, async move {
        if let Err(error) = server.await {
            tracing::error!(error = %error, "the HTTP server failed");
        }
    }))
}

/// Accepted connections, at most as many at once as there are slots.
struct Incoming {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    waiting: Option<Pin<Box<dyn Future<Output = OwnedSemaphorePermit> + Send>>>,
}

impl Accept for Incoming {
    type Conn = Counted;
    type Error = std::io::Error;

    fn poll_accept(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Counted, std::io::Error>>> {
        loop {
            let slots = self.slots.clone();
            let mut waiting = self.waiting.take().unwrap_or_else(|| {
                Box::pin(async move { slots.acquire_owned().await.expect("never closed") })
            });
            let permit = match waiting.as_mut().poll(cx) {
                Poll::Ready(permit) => permit,
                Poll::Pending => {
                    self.waiting = Some(waiting);
                    return Poll::Pending;
                }
            };
            match self.listener.poll_accept(cx) {
                Poll::Ready(Ok((stream, peer))) => {
                    let _ = stream.set_nodelay(true);
                    return Poll::Ready(Some(Ok(Counted {
                        stream,
                        peer,
                        _slot: permit,
                    })));
                }
                // An accept error (too many open files, a reset before accept) is one
                // connection's: keep serving.
                Poll::Ready(Err(error)) => {
                    tracing::warn!(error = %error, "could not accept a connection");
                }
                Poll::Pending => {
                    // Keep the slot for the next connection.
                    self.waiting = Some(Box::pin(async move { permit }));
                    return Poll::Pending;
                }
            }
        }
    }
}

/// A connection holding its slot until it closes.
pub struct Counted {
    stream: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
