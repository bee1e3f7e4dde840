//! The L7 listener: HTTP/1.1 with keep-alive on both sides. Every request picks its backend from
//! the pool's current snapshot, so when a VM drains, the next request of an open client connection
//! already goes elsewhere while requests in flight to the VM finish. Bodies stream both ways,
//! chunked ones unchanged; upstream connections are kept per worker and backend for reuse.
//!
//! The hot path is built to cost as little as the work itself: one task per client connection
//! that also drives the upstream connection of its request (no channel, no second task), heads
//! parsed in place and rewritten straight into a recycled buffer, a small response written with
//! its head in one system call, no timer touched for most requests ([`timer`]), no lock but the
//! backend's short one that lists what is in flight.
//!
//! Errors a client can see: 400/405/431/501 for a request that cannot be forwarded, 408 for a
//! request head or body that stalled, 503 when no backend can take new work, 502 when no backend
//! could be reached or one answered with garbage, 504 when a backend did not answer in time. Their
//! texts never name a backend address; the log does.
//!
//! - [`head`]: request and response heads: parsed, checked, rewritten for the next hop.
//! - [`fields`]: what each header field is, and the framing and `Connection` rules.
//! - [`target`]: request targets and `Host` values.
//! - [`rewrite`]: writing a head out.
//! - [`chunked`] + [`body`]: where a body ends.
//! - [`exchange`]: forwarding one request and its response.
//! - [`upstream`]: backend connections and the per-worker idle lists.
//! - [`backend_stream`]: a backend connection's socket, plain TCP or TLS.
//! - [`answers`]: responses the proxy writes itself.
//! - [`timer`]: the per-connection deadline.
//! - [`logging`]: what a request's access log line says, gathered while it is served.
//! - [`stream`]: the client connection, plain TCP or TLS.
//! - [`upgrade`]: WebSocket upgrades and the tunnel after a 101.
//! - `to_h2`: a request to a pool that speaks HTTP/2 to its backends.
//!
//! A listener with neither TLS nor HTTP/2 serves every connection with the engine over a plain
//! TCP socket, as it always did; TLS and HTTP/2 are decided per connection at accept (ALPN, or the
//! HTTP/2 preface on a cleartext listener that allows it) and never looked at on the plain path.
//!
//! `LIFECYCLE.md` beside this file tells the life of a connection and a request, state by state.

mod answers;
pub mod backend_stream;
pub mod body;
pub mod chunked;
mod exchange;
mod fields;
pub mod head;
mod logging;
mod rewrite;
pub mod stream;
mod target;
mod timer;
mod to_h2;
pub mod upgrade;
pub mod upstream;

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
#[cfg(test)]
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use exchange::{choose as choose_backend, sticky_set_cookie, unreachable as unreachable_text};

use crate::accept::accept_loop;
use crate::access_log::AccessLog;
use crate::buffer::Buffer;
use crate::pools::{Pool, SnapshotGuard};
use crate::shutdown::{Shutdown, ShutdownListener, Wake};
use crate::tls::TlsServer;
use crate::tls::upstream::UpstreamTls;
use head::{Request, RequestContext, RequestError};
use stream::ClientStream;
use timer::LazyTimer;

/// Settings of one L7 listener.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    /// Listener name (logs).
    pub listener: String,
    /// The pool it routes to.
    pub pool: Arc<Pool>,
    /// How long to wait for a backend's response headers.
    pub response_timeout: Duration,
    /// How long a client may take to send a request head (from the connect or the end of the
    /// previous response: idle keep-alive connections close after it), or stay without progress
    /// while it sends a request body or reads a response.
    pub client_timeout: Duration,
    /// One line per request, if configured.
    pub access_log: Option<AccessLog>,
    /// TLS termination, if the listener has it.
    pub tls: Option<TlsServer>,
    /// HTTP/2 from clients: by ALPN with TLS, by prior knowledge without.
    pub http2: bool,
    /// WebSocket upgrades are passed on.
    pub websocket: bool,
    /// TLS to the pool's backends, if it asks for it.
    pub upstream_tls: Option<UpstreamTls>,
    /// The pool speaks HTTP/2 to its backends: HTTP/1.1 requests are bridged to it.
    pub upstream_h2: bool,
    /// An HTTP/2 client connection without a stream for this long is sent GOAWAY and closed.
    pub h2_idle_timeout: Option<Duration>,
}

impl HttpRoute {
    /// A route with neither TLS nor HTTP/2 nor WebSocket (tests and benchmarks).
    pub fn plain(
        listener: &str,
        pool: Arc<Pool>,
        response_timeout: Duration,
        client_timeout: Duration,
    ) -> Self {
        Self {
            listener: listener.to_string(),
            pool,
            response_timeout,
            client_timeout,
            access_log: None,
            tls: None,
            http2: false,
            websocket: false,
            upstream_tls: None,
            upstream_h2: false,
            h2_idle_timeout: None,
        }
    }
}

/// How long a connection closed with part of a request unread keeps reading (and dropping) what
/// the client still sends, so the response is not destroyed by a reset.
const LINGER: Duration = Duration::from_secs(2);

/// Accepts connections until cancelled. `shutdown` is the worker's: once triggered, idle client
/// connections close and busy ones close after the response in progress.
pub async fn serve(
    listener: TcpListener,
    route: Arc<HttpRoute>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    shutdown: Arc<Shutdown>,
) {
    let name = route.listener.clone();
    match (route.tls.is_some(), route.http2) {
        (false, false) => {
            accept_loop(listener, &name, false, cancel, tasks, move |stream, peer| {
                serve_connection(stream, peer, route.clone(), shutdown.listen())
            })
            .await
        }
        (false, true) => {
            accept_loop(listener, &name, false, cancel, tasks, move |stream, peer| {
                crate::h2::serve_cleartext(stream, peer, route.clone(), shutdown.listen())
            })
            .await
        }
        (true, _) => {
            accept_loop(listener, &name, false, cancel, tasks, move |stream, peer| {
                crate::h2::serve_tls(stream, peer, route.clone(), shutdown.listen())
            })
            .await
        }
    }
}

/// Serves one client connection. Until the client sends its first bytes the connection costs only
/// this small task (no buffer, no HTTP state, no timer: its deadline is kept by the worker's
/// registry): idle connections stay cheap. The request is often there already when the connection
/// is accepted; it is read at once then.
pub(crate) async fn serve_connection<S: ClientStream>(
    mut stream: S,
    peer: SocketAddr,
    route: Arc<HttpRoute>,
    mut shutdown: ShutdownListener,
) {
    let mut first = Buffer::take();
    match first.read_now(&mut stream) {
        Some(Ok(0) | Err(_)) => return,
        Some(Ok(_)) => {
            return Box::pin(Connection::new(stream, peer, route, shutdown, Some(first)).serve()).await;
        }
        None => drop(first),
    }
    shutdown.set_deadline(Some(Instant::now() + route.client_timeout));
    let woke = tokio::select! {
        biased;
        wake = &mut shutdown => Some(wake),
        ready = poll_fn(|cx| stream.poll_idle(cx)) => {
            if ready.is_err() {
                return;
            }
            None
        }
    };
    match woke {
        Some(Wake::Expired) => return,
        Some(Wake::Shutdown) => {
            // Boxed: only a connection that meets a shutdown pays for this state.
            return Box::pin(serve_first_request_after_shutdown(stream, peer, route, shutdown)).await;
        }
        None => {}
    }
    shutdown.set_deadline(None);
    Box::pin(Connection::new(stream, peer, route, shutdown, None).serve()).await;
}

/// How long a connection accepted before shutdown waits for its first request after it.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// A connection accepted just before shutdown (a reload's or a binary upgrade's handover to the
/// new process, or a stop) whose first request is still on its way: its client opened it to send
/// one, and closing it unanswered would fail that request (a keep-alive connection that already
/// carried requests is closed at once instead: its client retries on a new one). Waits up to
/// [`FIRST_REQUEST_GRACE`] (at most the client timeout) for the first bytes, then serves that one
/// request, answered with `Connection: close`.
async fn serve_first_request_after_shutdown<S: ClientStream>(
    mut stream: S,
    peer: SocketAddr,
    route: Arc<HttpRoute>,
    shutdown: ShutdownListener,
) {
    let deadline = Instant::now() + FIRST_REQUEST_GRACE.min(route.client_timeout);
    let mut first = Buffer::take();
    loop {
        match first.read_now(&mut stream) {
            Some(Ok(0) | Err(_)) => return,
            Some(Ok(_)) => {
                return Box::pin(Connection::new(stream, peer, route, shutdown, Some(first)).serve()).await;
            }
            None => {}
        }
        match tokio::time::timeout_at(deadline, poll_fn(|cx| stream.poll_idle(cx))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Serves a client connection whose first bytes were already read (TLS sessions, and cleartext
/// connections looked at for the HTTP/2 preface).
pub(crate) async fn serve_read<S: ClientStream>(
    stream: S,
    peer: SocketAddr,
    route: Arc<HttpRoute>,
    shutdown: ShutdownListener,
    first: Option<Buffer>,
) {
    Box::pin(Connection::new(stream, peer, route, shutdown, first.filter(|b| !b.is_empty())).serve()).await;
}

/// What waiting for the next request gave.
enum Next {
    /// A request head, parsed, its rewritten form in a buffer, and the pool's snapshot it was
    /// parsed with (the first choice of a backend uses it: one snapshot read per request).
    Request(Request, Buffer, SnapshotGuard),
    /// The client closed, was idle too long, or the worker shuts down.
    Closed,
    /// The head cannot be forwarded: answer this and close.
    Refused(RequestError),
}

/// One client connection and what it carries between requests.
pub(crate) struct Connection<S> {
    /// The client socket.
    stream: S,
    /// The client's address.
    peer: SocketAddr,
    /// The client's address as `X-Forwarded-For` shows it.
    peer_text: String,
    /// Listener settings and pool.
    route: Arc<HttpRoute>,
    /// Bytes from the client not consumed yet; none while the connection is idle.
    input: Option<Buffer>,
    /// The worker is shutting down.
    shutdown: ShutdownListener,
    /// Request and response deadlines.
    timer: LazyTimer,
    /// Writes so far (`TCP_NODELAY` is set before the second: a connection that carries one
    /// response written at once never needs it).
    writes: u32,
    /// Part of the last request may still be unread: close with [`Connection::linger`].
    unread: bool,
    /// The access log line of the request in progress (only when the listener logs).
    record: Option<Box<logging::RequestRecord>>,
}

impl<S: ClientStream> Connection<S> {
    fn new(
        stream: S,
        peer: SocketAddr,
        route: Arc<HttpRoute>,
        shutdown: ShutdownListener,
        input: Option<Buffer>,
    ) -> Self {
        Self {
            stream,
            peer,
            peer_text: peer.ip().to_string(),
            route,
            input,
            shutdown,
            timer: LazyTimer::new(),
            writes: 0,
            unread: false,
            record: None,
        }
    }

    /// Requests one after another until either side closes.
    async fn serve(mut self) {
        loop {
            let (request, out, snapshot) = match self.next_request().await {
                Next::Request(request, out, snapshot) => (request, out, snapshot),
                Next::Closed => return,
                Next::Refused(error) => {
                    let mut out = Buffer::take();
                    tracing::debug!(client = %self.peer, status = error.status, reason = %error.reason, "request refused");
                    answers::write(&mut out, error.status, &error.reason, false);
                    if self.route.access_log.is_some() {
                        let head = self.input.as_ref().map_or(0, |i| i.len() as u64);
                        let mut record = logging::RequestRecord::new(None, head);
                        record.answered(error.status, Some(&error.reason));
                        self.record = Some(record);
                    }
                    let sent = self.send(out.filled()).await;
                    self.finish_record();
                    if sent.is_ok() {
                        self.linger().await;
                    }
                    return;
                }
            };
            if self.route.access_log.is_some() {
                self.record = Some(logging::RequestRecord::new(
                    Some(request.line.text()),
                    request.head_len as u64,
                ));
            }
            let keep = if self.route.upstream_h2 {
                to_h2::forward(&mut self, request, out, snapshot).await
            } else {
                exchange::forward(&mut self, request, out, snapshot).await
            };
            self.finish_record();
            if !keep {
                if self.unread {
                    self.linger().await;
                }
                return;
            }
            if self.input.as_ref().is_some_and(Buffer::is_empty) {
                self.input = None;
            }
        }
    }

    /// Reads until a whole request head is buffered, then parses it and writes its forwarded form
    /// to a buffer.
    async fn next_request(&mut self) -> Next {
        let deadline = Instant::now() + self.route.client_timeout;
        loop {
            if let Some(input) = self.input.as_mut().filter(|input| !input.is_empty()) {
                let snapshot = self.route.pool.snapshot();
                let context = RequestContext {
                    client: &self.peer_text,
                    sticky_cookie: snapshot.config.sticky.as_ref().map(|s| s.cookie.as_str()),
                    websocket: self.route.websocket,
                };
                let mut out = Buffer::take();
                match head::parse_request(input.filled(), &context, &mut out) {
                    Ok(Some(request)) => {
                        input.consume(request.head_len);
                        return Next::Request(request, out, snapshot);
                    }
                    Ok(None) if input.is_full() => {
                        return Next::Refused(RequestError {
                            status: 431,
                            reason: "request head too large".into(),
                        });
                    }
                    Ok(None) => {}
                    Err(error) => return Next::Refused(error),
                }
            } else {
                // Nothing buffered: wait without holding a buffer.
                let stream = &self.stream;
                tokio::select! {
                    biased;
                    _ = &mut self.shutdown => return Next::Closed,
                    ready = poll_fn(|cx| stream.poll_idle(cx)) => {
                        if ready.is_err() {
                            return Next::Closed;
                        }
                    }
                    _ = self.timer.until(deadline) => return Next::Closed,
                }
            }
            let input = self.input.get_or_insert_with(Buffer::take);
            let read = tokio::select! {
                biased;
                read = input.read_from(&mut self.stream) => read,
                // Part of a head and no more in time: the client is told (408); a connection
                // that sent nothing is closed quietly.
                _ = self.timer.until(deadline) => {
                    if input.is_empty() {
                        return Next::Closed;
                    }
                    return Next::Refused(RequestError {
                        status: 408,
                        reason: format!("the request head was not complete within {:?}", self.route.client_timeout),
                    });
                }
            };
            match read {
                Ok(0) | Err(_) => return Next::Closed,
                Ok(_) => {}
            }
        }
    }

    /// Closes a connection whose client may still be sending: the write side first, then what
    /// arrives is read and dropped for up to [`LINGER`], so the client's kernel does not answer
    /// our close with a reset that destroys the response before it is read (nginx's lingering
    /// close).
    async fn linger(&mut self) {
        let _ = self.stream.shutdown().await;
        let mut scratch = self.input.take().unwrap_or_else(Buffer::take);
        let _ = tokio::time::timeout(LINGER, async {
            loop {
                scratch.clear();
                match scratch.read_from(&mut self.stream).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    /// Hands the access log line of the request that ended to the log.
    fn finish_record(&mut self) {
        if let (Some(record), Some(log)) = (self.record.take(), &self.route.access_log) {
            (*record).finish(log, self.peer);
        }
    }

    /// Writes to the client.
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(record) = self.record.as_mut() {
            record.sent(bytes.len());
        }
        if self.writes == 1 {
            self.stream.nodelay();
        }
        self.writes = self.writes.saturating_add(1);
        self.stream
            .send_all(bytes, &mut self.timer, self.route.client_timeout)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route to a one-backend pool: responses within 1 s, clients within 60 s.
    fn route() -> Arc<HttpRoute> {
        let config = handover_core::config::parse(
            "[control]\nbind = \"127.0.0.1:0\"\n[pools.p]\n[[pools.p.backends]]\naddress = \"127.0.0.1:1\"\nvm = \"v\"\n",
        )
        .unwrap();
        Arc::new(HttpRoute::plain(
            "web",
            crate::pools::Pools::new(&config).pool("p").unwrap(),
            Duration::from_secs(1),
            Duration::from_secs(60),
        ))
    }

    /// Memory per idle connection is a goal (at most HAProxy's): the state of a connection that
    /// sent nothing yet must stay small. Tokio adds about 110 bytes of task header, rounded up to
    /// 128-byte lines, and the socket's registration.
    #[tokio::test]
    async fn an_idle_connection_holds_little_state() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stream = TcpStream::connect(address).await.unwrap();
        let route = route();
        let idle = serve_connection::<TcpStream>(stream, address, route, Shutdown::new().listen());
        let size = std::mem::size_of_val(&idle);
        assert!(size <= 320, "an idle connection's future is {size} bytes");
    }

    /// A client that stops reading its response is cut off after `client_timeout` of no
    /// progress, not held forever. (Time is paused: tokio moves it on whenever all waits.)
    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_off_after_the_stall_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let _client = TcpStream::connect(address).await.unwrap(); // never reads
        let (accepted, peer) = listener.accept().await.unwrap();
        let route = route();
        let mut conn = Connection::new(accepted, peer, route, Shutdown::new().listen(), None);
        let started = Instant::now();
        let error = conn.send(&vec![b'x'; 64 << 20]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let limit = Duration::from_secs(60);
        assert!(
            started.elapsed() >= limit,
            "not before the limit: {:?}",
            started.elapsed()
        );
        assert!(started.elapsed() < limit * 2, "{:?}", started.elapsed());
    }
}
