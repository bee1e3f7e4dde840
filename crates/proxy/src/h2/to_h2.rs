//! Requests forwarded to a pool that speaks HTTP/2 to its backends (gRPC needs it): each worker
//! keeps one HTTP/2 connection per backend (over TLS where the pool asks), on which every stream
//! of the worker's clients to that backend is multiplexed. Trailers, and bodies streaming both
//! ways for as long as the stream lives, pass as they are.
//!
//! A connection is not used for new streams once its backend retired its connections (a drain
//! with `keep = "in-flight"`, a moved VM, the long-lived policy's time): the worker drops it, and
//! it closes once the streams in flight on it finish. Each stream counts as a request in flight
//! to its backend until its response body ends.

use std::cell::RefCell;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::ClientContext;
use super::body::{Guarded, ResponseBody, answer};
use super::request;
use crate::backend::{BackendRuntime, Traffic};
use crate::buffer::Buffer;
use crate::http::head::RequestContext;
use crate::http::upstream::ConnectError;
use crate::pools::{Pool, SnapshotGuard};
use crate::snapshot::BackendEntry;
use crate::tls::upstream::UpstreamTls;

/// A worker's connection to one backend.
struct Pooled {
    sender: SendRequest<ResponseBody>,
    address: SocketAddr,
    generation: u64,
}

thread_local! {
    /// This worker's HTTP/2 connections, by backend uid.
    static CONNECTIONS: RefCell<Vec<Option<Pooled>>> = const { RefCell::new(Vec::new()) };
}

/// This worker's usable connection to a backend, if it has one.
fn pooled(backend: &BackendRuntime, address: SocketAddr) -> Option<SendRequest<ResponseBody>> {
    CONNECTIONS.with(|connections| {
        let mut connections = connections.borrow_mut();
        let slot = connections.get_mut(backend.uid)?;
        let usable = slot.as_ref().is_some_and(|p| {
            !p.sender.is_closed() && p.address == address && p.generation == backend.idle_generation()
        });
        if usable {
            slot.as_ref().map(|p| p.sender.clone())
        } else {
            // Dropping the last sender lets the connection close once its streams end.
            *slot = None;
            None
        }
    })
}

/// Opens a connection to a backend and keeps it for the worker's next streams.
async fn connect(
    entry: &BackendEntry,
    pool: &Pool,
    tls: Option<&UpstreamTls>,
) -> Result<SendRequest<ResponseBody>, ConnectError> {
    let backend = &entry.backend;
    let generation = backend.idle_generation();
    let address = entry.address;
    let timeout = pool.snapshot().config.connect_timeout;
    let tcp = match tokio::time::timeout(timeout, crate::descriptors::connect(address)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(ConnectError::Io(address, e)),
        Err(_) => return Err(ConnectError::Timeout(address, timeout)),
    };
    let _ = tcp.set_nodelay(true);
    let sender = match tls {
        Some(tls) => {
            let session = match tokio::time::timeout(timeout, tls.connect(address, tcp)).await {
                Ok(Ok(session)) => session,
                Ok(Err(e)) => return Err(ConnectError::Tls(address, e)),
                Err(_) => return Err(ConnectError::Timeout(address, timeout)),
            };
            handshake(session, address).await?
        }
        None => handshake(tcp, address).await?,
    };
    CONNECTIONS.with(|connections| {
        let mut connections = connections.borrow_mut();
        if connections.len() <= backend.uid {
            connections.resize_with(backend.uid + 1, || None);
        }
        connections[backend.uid] = Some(Pooled {
            sender: sender.clone(),
            address,
            generation,
        });
    });
    Ok(sender)
}

/// The HTTP/2 handshake on a new connection to `address`; the connection is then driven by a
/// task of its own until it ends.
async fn handshake<I>(io: I, address: SocketAddr) -> Result<SendRequest<ResponseBody>, ConnectError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    let (sender, connection) = builder
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ConnectError::Http2(address, e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(backend = %address, error = %e, "HTTP/2 upstream connection ended");
        }
    });
    Ok(sender)
}

/// Drops this worker's connections that can take no new stream (closed, or retired by their
/// backend); `generation_of` gives a backend's current generation by uid.
pub fn sweep(generation_of: impl Fn(usize) -> Option<u64>) {
    CONNECTIONS.with(|connections| {
        for (uid, slot) in connections.borrow_mut().iter_mut().enumerate() {
            let keep = slot
                .as_ref()
                .is_some_and(|p| !p.sender.is_closed() && Some(p.generation) == generation_of(uid));
            if !keep {
                *slot = None;
            }
        }
    });
}

/// Forwards one request (from an HTTP/2 client) to an HTTP/2 backend.
pub async fn forward(
    request: hyper::Request<Incoming>,
    client: &ClientContext,
) -> hyper::Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let body = body.map_err(Into::into).boxed_unsync();
    let snapshot = client.route.pool.snapshot();
    send(parts, body, client, snapshot).await
}

/// Forwards a request whose body is already a [`ResponseBody`]-typed stream (HTTP/2 clients,
/// and HTTP/1.1 clients whose pool speaks HTTP/2). `snapshot` is the pool's, read when the
/// request arrived: the edge rules and the first choice of a backend use it (one read per request
/// on the hot path), and it is dropped before the first wait.
pub async fn send(
    parts: http::request::Parts,
    body: ResponseBody,
    client: &ClientContext,
    snapshot: SnapshotGuard,
) -> hyper::Response<ResponseBody> {
    let route = &client.route;
    let pool = &route.pool;
    let has_body = !http_body::Body::is_end_stream(&body);
    let context = RequestContext {
        client: &client.peer_text,
        sticky_cookie: snapshot.config.sticky.as_ref().map(|s| s.cookie.as_str()),
        websocket: false,
    };
    // The same edge rules as every request (the HTTP/1.1 form written is not used).
    let mut scratch = Buffer::take();
    let checked = match request::check(&parts, has_body, &context, &mut scratch) {
        Ok(checked) => checked,
        Err(error) => {
            debug!(client = %client.peer, status = error.status, reason = %error.reason, "HTTP/2 request refused");
            return answer(error.status, &error.reason);
        }
    };
    drop(scratch);
    let mut first = Some(snapshot);
    let started = Instant::now();
    let mut tried: Vec<usize> = Vec::new();
    let mut last_error: Option<String> = None;
    let (entry, guard, set_cookie, mut sender) = loop {
        // The retry limit is read only when a retry is considered.
        if !tried.is_empty() && tried.len() > pool.snapshot().config.retries as usize {
            warn!(pool = %pool.name, error = last_error.as_deref().unwrap_or("none tried"), "no backend could be reached");
            return answer(502, &format!("no backend of pool {} could be reached", pool.name));
        }
        let choice = {
            let snapshot = first.take().unwrap_or_else(|| pool.snapshot());
            crate::http::choose_backend(&snapshot, checked.sticky, snapshot.config.drain.keep, &tried).map(
                |entry| {
                    let set_cookie = crate::http::sticky_set_cookie(&snapshot, checked.sticky, &entry);
                    (entry, set_cookie)
                },
            )
        };
        let Some((entry, set_cookie)) = choice else {
            if tried.is_empty() {
                return answer(
                    503,
                    &format!("no backend of pool {} can take new requests", pool.name),
                );
            }
            return answer(502, &format!("no backend of pool {} could be reached", pool.name));
        };
        let guard = entry
            .backend
            .track(client.peer, entry.address, Traffic::Http(checked.line), started);
        let sender = match pooled(&entry.backend, entry.address) {
            Some(sender) => sender,
            None => match connect(&entry, pool, route.upstream_tls.as_ref()).await {
                Ok(sender) => sender,
                Err(e) => {
                    last_error = Some(e.record(&route.listener, pool, &entry));
                    tried.push(entry.index);
                    continue;
                }
            },
        };
        break (entry, guard, set_cookie, sender);
    };
    let outgoing = match outgoing(parts, body, client, route.upstream_tls.is_some()) {
        Ok(outgoing) => outgoing,
        Err(why) => return answer(400, &why),
    };
    if sender.ready().await.is_err() {
        entry.backend.record_failure();
        pool.record_traffic(&entry.backend, false);
        return answer(502, "the backend failed to answer");
    }
    let response = match tokio::time::timeout(route.response_timeout, sender.send_request(outgoing)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            entry.backend.record_failure();
            pool.record_traffic(&entry.backend, false);
            warn!(listener = %route.listener, backend = %entry.address, error = %e, "upstream HTTP/2 request failed");
            return answer(502, "the backend failed to answer");
        }
        Err(_) => {
            entry.backend.record_failure();
            pool.record_traffic(&entry.backend, false);
            return answer(
                504,
                &format!("the backend did not answer within {:?}", route.response_timeout),
            );
        }
    };
    entry
        .backend
        .record_latency(Instant::now().saturating_duration_since(started).as_nanos() as u64);
    pool.record_traffic(&entry.backend, response.status().as_u16() < 500);
    let (mut parts, body) = response.into_parts();
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        parts.headers.remove(name);
    }
    if let Some(value) = set_cookie.and_then(|cookie| http::HeaderValue::from_str(&cookie).ok()) {
        parts.headers.append(http::header::SET_COOKIE, value);
    }
    let body = Guarded {
        body: body.map_err(Into::into),
        guard: Some(guard),
    };
    parts.extensions.insert(super::logging::Chosen(entry.clone()));
    hyper::Response::from_parts(parts, body.boxed_unsync())
}

/// The request as the backend gets it: an absolute URI (HTTP/2 sends it as `:scheme`,
/// `:authority`, `:path`), hop-by-hop fields gone (`TE: trailers` stays: gRPC needs it), the
/// client appended to `X-Forwarded-For`.
fn outgoing(
    parts: http::request::Parts,
    body: ResponseBody,
    client: &ClientContext,
    tls: bool,
) -> Result<hyper::Request<ResponseBody>, String> {
    let authority = match parts.uri.authority() {
        Some(authority) => authority.as_str().to_string(),
        None => parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or("a request without :authority or Host")?
            .to_string(),
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let scheme = if tls { "https" } else { "http" };
    let uri: http::Uri = format!("{scheme}://{authority}{path}")
        .parse()
        .map_err(|e| format!("invalid target: {e}"))?;
    let mut builder = hyper::Request::builder()
        .method(parts.method)
        .uri(uri)
        .version(http::Version::HTTP_2);
    let mut forwarded: Vec<u8> = Vec::new();
    for (name, value) in &parts.headers {
        match name.as_str() {
            "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "trailer" => {}
            "te" if !value.as_bytes().eq_ignore_ascii_case(b"trailers") => {}
            "x-forwarded-for" => {
                forwarded.extend_from_slice(value.as_bytes());
                forwarded.extend_from_slice(b", ");
            }
            _ => builder = builder.header(name, value),
        }
    }
    forwarded.extend_from_slice(client.peer_text.as_bytes());
    builder = builder.header("x-forwarded-for", Bytes::from(forwarded).as_ref());
    builder.body(body).map_err(|e| format!("invalid request: {e}"))
}
