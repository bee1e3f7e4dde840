//! An HTTP/2 stream forwarded to an HTTP/1.1 backend: the head the edge rules wrote ([`check`])
//! goes out on a connection from the worker's upstream pool — the same idle lists, the same
//! reuse rules as the HTTP/1.1 engine's — and the body follows in the framing that head
//! announces: exactly `content-length` bytes (more or fewer DATA than it says ends the stream and
//! closes the backend connection, so the backend never reads a neighbour's bytes as a request),
//! or chunked when the client gave no length. The response comes back as HTTP/2: its head
//! through the same response rules, a chunked body decoded into DATA frames and its trailers
//! into HTTP/2 trailers.
//!
//! A task per stream drives the backend connection (the request body up, the response down),
//! so the stream's response can be returned as soon as its head is here.
//!
//! [`check`]: super::request::check

use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use super::ClientContext;
use super::body::{BoxError, ChannelBody, ResponseBody, answer};
use super::request;
use crate::backend::{ActiveGuard, Traffic};
use crate::buffer::Buffer;
use crate::http::backend_stream::BackendWrite;
use crate::http::body::BodyCounter;
use crate::http::chunked::{ChunkedScanner, Piece};
use crate::http::head::{self, Framing, RequestContext, ResponseContext};
use crate::http::upstream::{self, Upstream};
use crate::pools::Pool;
use crate::snapshot::BackendEntry;

/// Fields HTTP/2 does not carry in a response.
const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// What the exchange task tells the stream once the response head is here (or why it is not).
type Head = Result<(http::response::Parts, Option<u64>), (u16, String)>;

/// Forwards one stream; the response is returned once its head arrived.
pub async fn forward(
    request: hyper::Request<Incoming>,
    client: &ClientContext,
) -> hyper::Response<ResponseBody> {
    let route = &client.route;
    let pool = &route.pool;
    let (parts, body) = request.into_parts();
    let has_body = !body.is_end_stream();
    // The edge rules and the first choice of a backend read the same snapshot (one read per
    // request on the hot path); it is dropped before the first wait.
    let snapshot = pool.snapshot();
    let context = RequestContext {
        client: &client.peer_text,
        sticky_cookie: snapshot.config.sticky.as_ref().map(|s| s.cookie.as_str()),
        websocket: false,
    };
    let mut out = Buffer::take();
    let checked = match request::check(&parts, has_body, &context, &mut out) {
        Ok(checked) => checked,
        Err(error) => {
            debug!(client = %client.peer, status = error.status, reason = %error.reason, "HTTP/2 request refused");
            return answer(error.status, &error.reason);
        }
    };
    let head = Bytes::copy_from_slice(out.filled());
    drop(out);
    let mut first = Some(snapshot);
    let started = Instant::now();
    let mut tried: Vec<usize> = Vec::new();
    let mut last_error: Option<String> = None;
    let mut fresh_only = false;
    let mut body = Some(body);
    loop {
        // The retry limit is read only when a retry is considered.
        if !tried.is_empty() && tried.len() > pool.snapshot().config.retries as usize {
            return unreachable(&route.listener, pool, last_error.as_deref());
        }
        let choice = {
            let snapshot = first.take().unwrap_or_else(|| pool.snapshot());
            crate::http::choose_backend(&snapshot, checked.sticky, snapshot.config.drain.keep, &tried)
                .map(|entry| {
                    let set_cookie = crate::http::sticky_set_cookie(&snapshot, checked.sticky, &entry);
                    (entry, set_cookie)
                })
                .ok_or_else(|| {
                    let down = snapshot.entries.iter().filter(|e| !e.available).count();
                    (down, snapshot.entries.len())
                })
        };
        let (entry, set_cookie) = match choice {
            Ok(chosen) => chosen,
            Err((down, total)) if tried.is_empty() => {
                return answer(
                    503,
                    &format!(
                        "no backend of pool {} can take new requests ({down} of {total} down)",
                        pool.name
                    ),
                );
            }
            Err(_) => return unreachable(&route.listener, pool, last_error.as_deref()),
        };
        let guard = entry
            .backend
            .track(client.peer, entry.address, Traffic::Http(checked.line), started);
        let upstream =
            match upstream::obtain(pool, &entry, route.upstream_tls.as_ref(), fresh_only, started).await {
                Ok(upstream) => upstream,
                Err(e) => {
                    last_error = Some(e.record(&route.listener, pool, &entry));
                    tried.push(entry.index);
                    continue;
                }
            };
        let reused = upstream.reused;
        let (head_tx, head_rx) = oneshot::channel();
        let (frames_tx, frames_rx) = mpsc::channel(4);
        // Only a bodiless request can be sent again on a new connection.
        let request_body = if has_body { body.take() } else { None };
        tokio::spawn(exchange(Exchange {
            upstream,
            head: head.clone(),
            body: request_body,
            framing: checked.framing,
            is_head: checked.is_head,
            set_cookie,
            entry: entry.clone(),
            guard,
            started,
            response_timeout: route.response_timeout,
            client_timeout: route.client_timeout,
            head_tx,
            frames_tx,
            pool: pool.clone(),
        }));
        match head_rx.await {
            Ok(Ok((mut parts, length))) => {
                let body = ChannelBody {
                    frames: frames_rx,
                    length,
                };
                parts.extensions.insert(super::logging::Chosen(entry.clone()));
                return hyper::Response::from_parts(parts, body.boxed_unsync());
            }
            Ok(Err((status, _))) if status == STALE && reused && !has_body && !fresh_only => {
                debug!(backend = %entry.address, "reused connection was closed by the backend; trying a new one");
                fresh_only = true;
            }
            Ok(Err((status, message))) => {
                let status = if status == STALE { 502 } else { status };
                return answer(status, &message);
            }
            Err(_) => return answer(502, "the backend failed to answer"),
        }
    }
}

/// Marks a reused connection that failed before anything was answered (not a real status).
const STALE: u16 = 0;

/// The 502 when no backend could be connected to (the addresses go to the log only, at most a
/// line a second).
fn unreachable(listener: &str, pool: &Pool, last_error: Option<&str>) -> hyper::Response<ResponseBody> {
    answer(
        502,
        &crate::http::unreachable_text(listener, &pool.name, last_error),
    )
}

/// Everything the task of one stream owns.
struct Exchange {
    upstream: Upstream,
    head: Bytes,
    /// The request body, if DATA frames follow the head.
    body: Option<Incoming>,
    framing: Framing,
    is_head: bool,
    set_cookie: Option<String>,
    entry: BackendEntry,
    guard: ActiveGuard,
    started: Instant,
    response_timeout: Duration,
    client_timeout: Duration,
    head_tx: oneshot::Sender<Head>,
    frames_tx: mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    pool: std::sync::Arc<Pool>,
}

/// How the request body goes up.
struct Upload {
    body: Option<Incoming>,
    framing: Framing,
    /// Bytes still owed by a `content-length`.
    left: u64,
}

impl Upload {
    fn done(&self) -> bool {
        self.body.is_none()
    }

    /// Writes one frame of the client's body in the framing announced. `Err` says why the
    /// stream must end (the backend connection is then never reused).
    async fn step(
        &mut self,
        frame: Option<Result<Frame<Bytes>, hyper::Error>>,
        backend: &mut BackendWrite<'_>,
    ) -> Result<(), String> {
        let write_error = |e: std::io::Error| format!("backend write: {e}");
        match frame {
            None => {
                self.body = None;
                match self.framing {
                    Framing::Length(_) if self.left > 0 => {
                        return Err("less DATA than content-length".into());
                    }
                    Framing::Chunked => backend.send(b"0\r\n\r\n").await.map_err(write_error)?,
                    _ => {}
                }
            }
            Some(Err(e)) => return Err(format!("client body: {e}")),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => match self.framing {
                    Framing::Length(_) => {
                        if data.len() as u64 > self.left {
                            return Err("more DATA than content-length".into());
                        }
                        self.left -= data.len() as u64;
                        backend.send(&data).await.map_err(write_error)?;
                    }
                    Framing::Chunked => {
                        let size = format!("{:x}\r\n", data.len());
                        backend.send(size.as_bytes()).await.map_err(write_error)?;
                        backend.send(&data).await.map_err(write_error)?;
                        backend.send(b"\r\n").await.map_err(write_error)?;
                    }
                    _ => return Err("DATA on a request without a body".into()),
                },
                Err(frame) => {
                    // Trailers end the body.
                    self.body = None;
                    let trailers = frame.into_trailers().unwrap_or_default();
                    match self.framing {
                        Framing::Chunked => {
                            let mut text = b"0\r\n".to_vec();
                            for (name, value) in &trailers {
                                if forbidden_trailer(name.as_str()) {
                                    continue;
                                }
                                text.extend_from_slice(name.as_str().as_bytes());
                                text.extend_from_slice(b": ");
                                text.extend_from_slice(value.as_bytes());
                                text.extend_from_slice(b"\r\n");
                            }
                            text.extend_from_slice(b"\r\n");
                            backend.send(&text).await.map_err(write_error)?;
                        }
                        Framing::Length(_) if self.left > 0 => {
                            return Err("less DATA than content-length".into());
                        }
                        // A length-framed body has no room for trailers in HTTP/1.1.
                        _ => {}
                    }
                }
            },
        }
        Ok(())
    }
}

/// Trailer fields that must not be sent (RFC 9110 §6.5.1): framing, routing, authentication.
fn forbidden_trailer(name: &str) -> bool {
    matches!(
        name,
        "content-length" | "transfer-encoding" | "host" | "content-type" | "authorization" | "te" | "trailer"
    )
}

/// The response head (rewritten by the response rules) as HTTP/2 parts.
fn response_parts(
    rewritten: &[u8],
    framing: Framing,
) -> Result<(http::response::Parts, Option<u64>), String> {
    let mut headers = [httparse::EMPTY_HEADER; head::MAX_HEADERS + 4];
    let mut parsed = httparse::Response::new(&mut headers);
    parsed
        .parse(rewritten)
        .map_err(|e| format!("rewritten response head: {e}"))?;
    let status = parsed.code.ok_or("no status")?;
    let mut builder = hyper::Response::builder().status(status);
    for header in parsed.headers.iter() {
        let lower = header.name.to_ascii_lowercase();
        if CONNECTION_SPECIFIC.contains(&lower.as_str()) {
            continue;
        }
        if lower == "content-length" && !matches!(framing, Framing::Length(_)) {
            continue;
        }
        builder = builder.header(lower.as_str(), header.value);
    }
    let length = match framing {
        Framing::Length(n) => Some(n),
        Framing::Empty => Some(0),
        _ => None,
    };
    let response = builder
        .body(())
        .map_err(|e| format!("response head not valid in HTTP/2: {e}"))?;
    Ok((response.into_parts().0, length))
}

/// Trailers of a chunked body as an HTTP/2 trailers frame (forbidden and connection-specific
/// fields left out).
pub(crate) fn trailers_frame(section: &[u8]) -> Option<Frame<Bytes>> {
    let mut headers = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
    let mut text = section.to_vec();
    text.extend_from_slice(b"\r\n");
    let httparse::Status::Complete((_, parsed)) = httparse::parse_headers(&text, &mut headers).ok()? else {
        return None;
    };
    let mut map = http::HeaderMap::new();
    for header in parsed {
        let lower = header.name.to_ascii_lowercase();
        if forbidden_trailer(&lower) || CONNECTION_SPECIFIC.contains(&lower.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(lower.as_bytes()),
            http::HeaderValue::from_bytes(header.value),
        ) {
            map.append(name, value);
        }
    }
    (!map.is_empty()).then(|| Frame::trailers(map))
}

/// The task of one stream: the request up, the response head back to the stream, the body down
/// through the channel; the connection goes back to the pool only if both messages ended cleanly.
async fn exchange(x: Exchange) {
    let Exchange {
        mut upstream,
        head,
        body,
        framing,
        is_head,
        set_cookie,
        entry,
        guard,
        started,
        response_timeout,
        client_timeout,
        head_tx,
        frames_tx,
        pool,
    } = x;
    let reused = upstream.reused;
    let mut upload = Upload {
        body,
        framing,
        left: match framing {
            Framing::Length(n) => n,
            _ => 0,
        },
    };
    if let Err(e) = upstream.stream.send(&head).await {
        let status = if reused { STALE } else { 502 };
        let _ = head_tx.send(Err((status, format!("the backend failed to answer ({e})"))));
        return;
    }
    let address = upstream.address;
    let mut from_backend = Buffer::take();
    let mut deadline = started + response_timeout;
    let failed = |why: &str| {
        entry.backend.record_failure();
        pool.record_traffic(&entry.backend, false);
        debug!(backend = %address, why, "HTTP/2 stream to an HTTP/1.1 backend failed");
    };
    // 1. The request body goes up while the response head is awaited.
    let (rewritten, response) = {
        let (mut read, mut write) = upstream.stream.split();
        let mut out = Buffer::take();
        let mut answered_anything = false;
        loop {
            if !from_backend.is_empty() {
                answered_anything = true;
                let context = ResponseContext {
                    is_head,
                    client_version: 1,
                    client_keep_alive: true,
                    set_cookie: set_cookie.as_deref(),
                    upgrade: false,
                };
                out.clear();
                match head::parse_response(from_backend.filled(), &context, &mut out) {
                    Ok(Some(response)) if response.interim => {
                        // HTTP/2 streams get no interim responses from here: the final one follows.
                        from_backend.consume(response.head_len);
                        continue;
                    }
                    Ok(Some(response)) => break (out, response),
                    Ok(None) if from_backend.is_full() => {
                        failed("response head too large");
                        let _ = head_tx.send(Err((502, "the backend failed to answer".into())));
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        failed(&e.to_string());
                        let _ = head_tx.send(Err((502, "the backend failed to answer".into())));
                        return;
                    }
                }
            }
            tokio::select! {
                biased;
                read = from_backend.read_from(&mut read) => match read {
                    Ok(n) if n > 0 => {}
                    _ if reused && !answered_anything && upload.framing == Framing::Empty => {
                        let _ = head_tx.send(Err((STALE, "the backend failed to answer".into())));
                        return;
                    }
                    _ => {
                        failed("closed before a complete response head");
                        let _ = head_tx.send(Err((502, "the backend failed to answer".into())));
                        return;
                    }
                },
                frame = async { upload.body.as_mut().expect("guarded").frame().await }, if !upload.done() => {
                    if let Err(why) = upload.step(frame, &mut write).await {
                        debug!(backend = %address, %why, "request body refused");
                        let _ = head_tx.send(Err((400, format!("request body: {why}"))));
                        return;
                    }
                    if upload.done() {
                        deadline = Instant::now() + response_timeout;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    failed("no response head in time");
                    let message = format!("the backend did not answer within {response_timeout:?}");
                    let _ = head_tx.send(Err((504, message)));
                    return;
                }
            }
        }
    };
    entry
        .backend
        .record_latency(Instant::now().saturating_duration_since(started).as_nanos() as u64);
    pool.record_traffic(&entry.backend, response.status < 500);
    from_backend.consume(response.head_len);
    match response_parts(rewritten.filled(), response.framing) {
        Ok(parts) => {
            if head_tx.send(Ok(parts)).is_err() {
                return;
            }
        }
        Err(why) => {
            failed(&why);
            let _ = head_tx.send(Err((502, "the backend failed to answer".into())));
            return;
        }
    }
    drop(rewritten);

    // 2. The response body goes down (and the rest of the request body up).
    let mut counter = BodyCounter::new(response.framing);
    let mut chunks = ChunkedScanner::new();
    let mut trailers: Vec<u8> = Vec::new();
    let clean = 'relay: {
        let (mut read, mut write) = upstream.stream.split();
        loop {
            // What is buffered goes on as frames.
            if !from_backend.is_empty() {
                let mut frames: Vec<Bytes> = Vec::new();
                let used = match response.framing {
                    Framing::Chunked => chunks.decode(from_backend.filled(), |piece| match piece {
                        Piece::Data(data) => frames.push(Bytes::copy_from_slice(data)),
                        Piece::Trailer(byte) => trailers.push(byte),
                    }),
                    _ => counter.take(from_backend.filled()).inspect(|&n| {
                        if n > 0 {
                            frames.push(Bytes::copy_from_slice(&from_backend.filled()[..n]));
                        }
                    }),
                };
                let Ok(used) = used else {
                    failed("malformed chunked body");
                    let _ = frames_tx.send(Err("malformed response body".into())).await;
                    break 'relay false;
                };
                from_backend.consume(used);
                for data in frames {
                    if frames_tx.send(Ok(Frame::data(data))).await.is_err() {
                        break 'relay false;
                    }
                }
            }
            let body_done = match response.framing {
                Framing::Chunked => chunks.is_done(),
                _ => counter.is_done(),
            };
            if body_done && upload.done() {
                if let Some(frame) = trailers_frame(&trailers) {
                    let _ = frames_tx.send(Ok(frame)).await;
                }
                break 'relay from_backend.is_empty();
            }
            let silent = Instant::now() + response_timeout.max(client_timeout);
            tokio::select! {
                biased;
                read = from_backend.read_from(&mut read), if !body_done => match read {
                    Ok(0) if response.framing == Framing::UntilClose => {
                        counter = BodyCounter::Done;
                        if upload.done() {
                            break 'relay false;
                        }
                    }
                    Ok(0) | Err(_) => {
                        failed("closed inside the response body");
                        let _ = frames_tx.send(Err("the backend closed inside the body".into())).await;
                        break 'relay false;
                    }
                    Ok(_) => {}
                },
                frame = async { upload.body.as_mut().expect("guarded").frame().await }, if !upload.done() => {
                    if upload.step(frame, &mut write).await.is_err() {
                        break 'relay false;
                    }
                }
                _ = frames_tx.closed() => break 'relay false,
                _ = tokio::time::sleep_until(silent) => {
                    failed("silent inside the response body");
                    let _ = frames_tx.send(Err("the backend went silent inside the body".into())).await;
                    break 'relay false;
                }
            }
        }
    };
    drop(frames_tx);
    if clean && response.upstream_reusable && response.framing != Framing::UntilClose {
        upstream::checkin(&entry.backend, upstream, Instant::now());
    }
    drop(guard);
}
