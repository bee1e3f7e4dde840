//! The L7 listener: HTTP/1.1 with keep-alive on both sides. Every request picks its backend from
//! the pool's current snapshot, so when a VM drains, the next request of an open client connection
//! already goes elsewhere while requests in flight to the VM finish. Bodies stream in both
//! directions; upstream connections are pooled per backend.
//!
//! Errors a client can see: 503 when no backend can take new work, 502 when no backend could be
//! reached or one failed mid-response, 504 when a backend did not answer in time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use handover_core::model::Keep;

use crate::accept::accept_loop;
use crate::backend::{ActiveGuard, Traffic};
use crate::headers::{append_forwarded_for, strip_hop_by_hop};
use crate::pools::Pool;
use crate::random;
use crate::snapshot::{BackendEntry, PoolSnapshot};
use crate::upstream::{self, UpstreamSender};

/// Error type of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Settings of one L7 listener.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    /// Listener name (logs).
    pub listener: String,
    /// The pool it routes to.
    pub pool: Arc<Pool>,
    /// How long to wait for a backend's response headers.
    pub response_timeout: Duration,
}

/// Accepts connections until cancelled; open connections are then shut down gracefully (the
/// request in progress finishes, keep-alive ends).
pub async fn serve(
    listener: TcpListener,
    route: Arc<HttpRoute>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let name = route.listener.clone();
    let shutdown = cancel.clone();
    accept_loop(listener, &name, cancel, tasks, move |stream, peer| {
        serve_connection(stream, peer, route.clone(), shutdown.clone())
    })
    .await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    route: Arc<HttpRoute>,
    cancel: CancellationToken,
) {
    let service = service_fn(move |request| {
        let route = route.clone();
        async move { Ok::<_, Infallible>(forward(&route, request, peer).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(60))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                debug!(client = %peer, error = %e, "client connection ended with an error");
            }
        }
        _ = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Forwards one request to a backend of the route's pool.
async fn forward(route: &HttpRoute, request: Request<Incoming>, client: SocketAddr) -> Response<ProxyBody> {
    if request.method() == Method::CONNECT {
        return local(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported by this proxy\n",
        );
    }
    let pool = &route.pool;
    let sticky_cookie = pool.config.sticky.as_ref().map(|s| s.cookie.as_str());
    let sticky_index = sticky_cookie.and_then(|name| sticky_backend(&request, name));
    let mut request = prepare_request(request, client);
    let method = request.method().clone();
    let uri = request.uri().clone();

    let attempts = pool.config.retries as usize + 1;
    let mut tried: Vec<usize> = Vec::with_capacity(attempts);
    let mut last_error = String::from("no backend was tried");
    for _ in 0..attempts {
        let choice = {
            let snapshot = pool.snapshot();
            choose(&snapshot, sticky_index, pool.config.drain.keep, &tried)
        };
        let Some(entry) = choice else {
            if tried.is_empty() {
                let snapshot = pool.snapshot();
                let down = snapshot.entries.iter().filter(|e| !e.available).count();
                let message = format!(
                    "no backend of pool {} can take new requests ({down} of {} down)\n",
                    pool.config.name,
                    snapshot.entries.len()
                );
                return local(StatusCode::SERVICE_UNAVAILABLE, &message);
            }
            break;
        };
        let guard = entry.backend.track(
            client,
            entry.address,
            Traffic::Http {
                method: method.clone(),
                uri: uri.clone(),
            },
        );
        let mut sender = match checkout(&entry, pool.config.connect_timeout).await {
            Ok(sender) => sender,
            Err(e) => {
                entry.backend.record_failure();
                pool.record_traffic(entry.backend.index, false);
                warn!(listener = %route.listener, backend = %entry.address, error = %e, "trying another backend");
                last_error = e.to_string();
                tried.push(entry.backend.index);
                continue;
            }
        };
        let started = Instant::now();
        match tokio::time::timeout(route.response_timeout, sender.try_send_request(request)).await {
            Err(_) => {
                entry.backend.record_failure();
                pool.record_traffic(entry.backend.index, false);
                return local(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "backend {} did not answer within {:?}\n",
                        entry.address, route.response_timeout
                    ),
                );
            }
            Ok(Ok(response)) => {
                entry.backend.record_latency(started.elapsed().as_nanos() as u64);
                pool.record_traffic(entry.backend.index, !response.status().is_server_error());
                let set_cookie = sticky_cookie
                    .filter(|_| sticky_index != Some(entry.backend.index))
                    .map(|name| format!("{name}={}; Path=/; HttpOnly", sticky_value(&entry)));
                return respond(response, entry, guard, sender, set_cookie);
            }
            Ok(Err(mut error)) => match error.take_message() {
                // Never written to the connection: safe to send elsewhere.
                Some(unsent) => {
                    request = unsent;
                    last_error = error.into_error().to_string();
                    tried.push(entry.backend.index);
                }
                None => {
                    entry.backend.record_failure();
                    pool.record_traffic(entry.backend.index, false);
                    let error = error.into_error();
                    debug!(listener = %route.listener, backend = %entry.address, %error, "upstream request failed");
                    return local(
                        StatusCode::BAD_GATEWAY,
                        &format!("backend {} failed: {error}\n", entry.address),
                    );
                }
            },
        }
    }
    local(
        StatusCode::BAD_GATEWAY,
        &format!(
            "no backend of pool {} could be reached: {last_error}\n",
            pool.config.name
        ),
    )
}

/// The sticky backend if the session may still go there, else the selector's pick.
fn choose(
    snapshot: &PoolSnapshot,
    sticky: Option<usize>,
    keep: Keep,
    tried: &[usize],
) -> Option<BackendEntry> {
    if let Some(index) = sticky.filter(|i| !tried.contains(i))
        && let Some(entry) = snapshot.entries.get(index)
    {
        let draining_session = keep == Keep::Sessions && entry.phase.is_drained();
        if entry.effective_weight > 0.0 || draining_session {
            return Some(entry.clone());
        }
    }
    let index = snapshot.pick(random::next_u64(), tried)?;
    Some(snapshot.entries[index].clone())
}

/// An idle pooled connection that is still usable, or a new one.
async fn checkout(
    entry: &BackendEntry,
    connect_timeout: Duration,
) -> Result<UpstreamSender, upstream::ConnectError> {
    while let Some(mut sender) = entry.backend.idle.take(entry.address) {
        if sender.ready().await.is_ok() {
            return Ok(sender);
        }
    }
    upstream::connect(entry.address, connect_timeout).await
}

/// Origin-form URI, no hop-by-hop headers, a Host header, and the client in X-Forwarded-For.
fn prepare_request(request: Request<Incoming>, client: SocketAddr) -> Request<Incoming> {
    let (mut parts, body) = request.into_parts();
    if parts.uri.authority().is_some() {
        if !parts.headers.contains_key(header::HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    strip_hop_by_hop(&mut parts.headers);
    append_forwarded_for(&mut parts.headers, client.ip());
    Request::from_parts(parts, body)
}

fn respond(
    response: Response<Incoming>,
    entry: BackendEntry,
    guard: ActiveGuard,
    sender: UpstreamSender,
    set_cookie: Option<String>,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(cookie) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    let completion = Completion {
        guard,
        sender,
        address: entry.address,
    };
    let body = if body.is_end_stream() {
        completion.finish();
        ProxyBody::Local(Full::new(Bytes::new()))
    } else {
        ProxyBody::Upstream {
            body,
            completion: Some(completion),
        }
    };
    Response::from_parts(parts, body)
}

/// Cookie value naming a backend: `<index>-<vm>`.
fn sticky_value(entry: &BackendEntry) -> String {
    format!("{}-{}", entry.backend.index, entry.backend.vm)
}

/// The backend index a request's sticky cookie names, if any.
fn sticky_backend(request: &Request<Incoming>, cookie: &str) -> Option<usize> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == cookie)
        .and_then(|(_, value)| value.split_once('-'))
        .and_then(|(index, _)| index.parse().ok())
}

fn local(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::Local(Full::new(Bytes::from(message.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Ends a proxied request: the upstream connection goes back to the pool, the request stops
/// counting as in flight.
struct Completion {
    guard: ActiveGuard,
    sender: UpstreamSender,
    address: SocketAddr,
}

impl Completion {
    fn finish(self) {
        self.guard.backend().idle.put(self.address, self.sender);
        drop(self.guard);
    }
}

/// Body of a proxied response: the backend's stream, or a locally generated message.
enum ProxyBody {
    /// Streamed from a backend; completes the request when the stream ends.
    Upstream {
        /// The backend's body.
        body: Incoming,
        /// Done when the body ends; dropped (connection not reused) if the client goes away first.
        completion: Option<Completion>,
    },
    /// Generated by the proxy.
    Local(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream { body, completion } => match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(None) => {
                    if let Some(done) = completion.take() {
                        done.finish();
                    }
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(failed) = completion.take() {
                        failed.guard.backend().record_failure();
                    }
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // With a known length, the server stops polling once the last byte is read:
                    // complete now, or the upstream connection would never go back to the pool.
                    if body.is_end_stream()
                        && let Some(done) = completion.take()
                    {
                        done.finish();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Pending => Poll::Pending,
            },
            ProxyBody::Local(full) => Pin::new(full).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Local(full) => full.size_hint(),
        }
    }
}
