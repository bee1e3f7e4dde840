//! HTTP/2 from clients, and what a listener with TLS or HTTP/2 does with a new connection.
//!
//! A TLS listener completes the handshake (within `client_timeout`) and serves HTTP/2 where ALPN
//! chose `h2`, the HTTP/1.1 engine otherwise. A cleartext listener with `http2 = true` looks at
//! the first bytes: the HTTP/2 connection preface (prior knowledge, RFC 9113 §3.3) starts an
//! HTTP/2 connection, anything else goes to the HTTP/1.1 engine with the bytes already read.
//!
//! An HTTP/2 connection is served by hyper's HTTP/2 server (the `h2` crate: framing, flow control,
//! HPACK, and the protocol's own checks). Every stream is one request, balanced on its own: it
//! picks its backend from the pool's current snapshot exactly as an HTTP/1.1 request does, so a
//! draining VM gets no new stream while streams in flight to it finish. Every request meets the
//! same edge rules ([`request`]), then goes to the backend in the protocol its pool speaks:
//! HTTP/1.1 ([`to_http1`]) or HTTP/2 ([`to_h2`]). When the worker shuts down, or the connection
//! has had no stream for the listener's `idle_timeout` ([`idle`]), it sends GOAWAY and ends once
//! its streams are done.
//!
//! - [`request`]: the edge rules for an HTTP/2 request.
//! - [`to_http1`]: a stream forwarded to an HTTP/1.1 backend (the upstream pool of the engine).
//! - [`to_h2`]: a request forwarded to an HTTP/2 backend over the worker's connection to it.
//! - [`body`]: response bodies (streamed from a backend, or the proxy's own answers).
//! - [`logging`]: a stream's access log line, handed over when its response body ends.
//! - [`idle`]: the streams a connection has open, for its idle timeout.

pub mod body;
pub mod idle;
mod logging;
pub mod request;
pub mod to_h2;
pub mod to_http1;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use crate::buffer::Buffer;
use crate::http::HttpRoute;
use crate::shutdown::ShutdownListener;
use crate::tls::ALPN_H2;
use body::ResponseBody;

/// The client connection preface of HTTP/2, up to where it differs from any HTTP/1.1 request.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Most concurrent streams a client may open on one connection.
const MAX_STREAMS: u32 = 256;

/// What the streams of one client connection share.
#[derive(Debug)]
pub struct ClientContext {
    /// The listener's settings and pool.
    pub route: Arc<HttpRoute>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The same, as `X-Forwarded-For` shows it.
    pub peer_text: String,
}

/// A cleartext connection of a listener that allows HTTP/2 by prior knowledge.
pub(crate) async fn serve_cleartext(
    mut stream: TcpStream,
    peer: SocketAddr,
    route: Arc<HttpRoute>,
    shutdown: ShutdownListener,
) {
    let mut first = Buffer::take();
    let deadline = tokio::time::Instant::now() + route.client_timeout;
    // Enough bytes to tell the preface from a request line.
    while first.len() < PREFACE.len() && PREFACE.starts_with(first.filled()) {
        match tokio::time::timeout_at(deadline, first.read_from(&mut stream)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ if first.is_empty() => return,
            // Hand what there is to the HTTP/1.1 engine, which answers a partial head.
            _ => break,
        }
    }
    if first.filled().starts_with(PREFACE) {
        let io = Prefixed { first, stream };
        serve_h2(io, peer, route, shutdown).await;
    } else {
        crate::http::serve_read(stream, peer, route, shutdown, Some(first)).await;
    }
}

/// A connection of a TLS listener: handshake, then HTTP/2 or HTTP/1.1 as ALPN chose.
pub(crate) async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    route: Arc<HttpRoute>,
    shutdown: ShutdownListener,
) {
    let Some(tls) = route.tls.as_ref() else { return };
    let session = match tokio::time::timeout(route.client_timeout, tls.acceptor.accept(stream)).await {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            debug!(client = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(client = %peer, "TLS handshake did not finish in time");
            return;
        }
    };
    if session.get_ref().1.alpn_protocol() == Some(ALPN_H2) {
        serve_h2(session, peer, route, shutdown).await;
    } else {
        crate::http::serve_read(session, peer, route, shutdown, None).await;
    }
}

/// Serves an HTTP/2 connection until the client closes it, the worker shuts down, or it has had
/// no stream for the listener's `idle_timeout` (then GOAWAY, and the streams in flight finish).
async fn serve_h2<I>(io: I, peer: SocketAddr, route: Arc<HttpRoute>, mut shutdown: ShutdownListener)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle_timeout = route.h2_idle_timeout;
    let activity = idle_timeout.map(|_| idle::Activity::new());
    let context = Arc::new(ClientContext {
        peer_text: peer.ip().to_string(),
        route,
        peer,
    });
    let streams = activity.clone();
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let context = context.clone();
        let open = streams.as_ref().map(idle::Activity::stream);
        async move {
            let response = forward(request, context).await;
            Ok::<_, Infallible>(match open {
                None => response,
                Some(open) => response.map(|body| {
                    body::Guarded {
                        body,
                        guard: Some(open),
                    }
                    .boxed_unsync()
                }),
            })
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    loop {
        // When the connection will have been idle long enough, if it has no stream now.
        let idle_at = match (&activity, idle_timeout) {
            (Some(activity), Some(timeout)) => activity.idle_until(timeout),
            _ => None,
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    debug!(client = %peer, error = %e, "HTTP/2 connection ended with an error");
                }
                return;
            }
            _ = &mut shutdown => break,
            // The last stream ended: the idle time starts now.
            () = async { activity.as_ref().expect("guarded").quiet().await }, if activity.is_some() && idle_at.is_none() => {}
            () = tokio::time::sleep_until(idle_at.unwrap_or_else(tokio::time::Instant::now)), if idle_at.is_some() => {
                // A stream may have started meanwhile: then the loop waits for its end.
                if let (Some(activity), Some(timeout)) = (&activity, idle_timeout)
                    && activity.idle_until(timeout).is_some_and(|at| at <= tokio::time::Instant::now())
                {
                    debug!(client = %peer, ?timeout, "closing an idle HTTP/2 connection");
                    break;
                }
            }
        }
    }
    // GOAWAY; the streams in flight finish, then the connection closes.
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// One stream: to the backend in the protocol its pool speaks; with its access log line where the
/// listener has one.
async fn forward(
    request: hyper::Request<Incoming>,
    context: Arc<ClientContext>,
) -> hyper::Response<ResponseBody> {
    let Some(log) = context.route.access_log.clone() else {
        return dispatch(request, &context).await;
    };
    let pending = logging::StreamRecord::start(&request, context.peer);
    let response = dispatch(request, &context).await;
    pending.attach(response, log)
}

async fn dispatch(
    request: hyper::Request<Incoming>,
    context: &ClientContext,
) -> hyper::Response<ResponseBody> {
    // Fixed when the route was built: a reload that changes the pool's protocol builds new routes.
    if context.route.upstream_h2 {
        to_h2::forward(request, context).await
    } else {
        to_http1::forward(request, context).await
    }
}

/// A stream that replays bytes already read before the socket's own.
struct Prefixed<S> {
    first: Buffer,
    stream: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first.filled()[..n]);
            self.first.consume(n);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
