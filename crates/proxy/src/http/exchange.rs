//! Forwarding one request to a backend of the route's pool and its response back to the client.
//!
//! 1. Pick a backend (a sticky session's own if it may still take work), count the request as in
//!    flight to it, take an idle connection or open one. A failed connect tries another backend,
//!    up to the pool's `retries`.
//! 2. Send the rewritten head with as much of the body as is already here, in one write; stream
//!    the rest of the body while watching the backend, which may answer before the body is whole
//!    (`100 Continue`, or an early error).
//! 3. Read the response head within the route's `response_timeout`; pass interim responses on.
//! 4. Send the rewritten head with the start of the body in one write, stream the rest, and give
//!    the backend connection back for reuse if both messages ended cleanly.
//!
//! A reused connection that its backend had closed (it fails before answering anything) is not
//! the backend's fault: the request goes again on a new connection when it can be replayed (its
//! body was here whole, and its method is idempotent unless nothing could be written at all).

use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use handover_core::model::Keep;

use super::Connection;
use super::answers;
use super::body::BodyCounter;
use super::head::{self, Framing, Request, Response, ResponseContext};
use super::stream::ClientStream;
use super::upstream::{self, Upstream};
use crate::backend::Traffic;
use crate::buffer::Buffer;
use crate::log_limit::LogLimit;
use crate::pools::SnapshotGuard;
use crate::random;
use crate::snapshot::{BackendEntry, PoolSnapshot};

/// How a try on one backend connection ended without a response head.
enum Failure {
    /// A reused connection failed before anything was answered: try again on a new one.
    Stale,
    /// The backend failed; the client gets 502 with this.
    Backend(String),
    /// No response head within the response timeout.
    Timeout,
    /// The client's body is malformed; it gets 400.
    BadRequest(String),
    /// The client stopped sending its body for `client_timeout`; it gets 408.
    ClientTimeout,
    /// The client went away.
    Client,
}

/// A response head received, with what it came on.
struct Answered {
    upstream: Upstream,
    /// Bytes from the backend: the head and whatever followed it.
    input: Buffer,
    response: Response,
    /// The request body was sent whole.
    request_complete: bool,
}

/// Forwards one request; returns whether the client connection stays open. `out` holds the
/// request head as it is forwarded. What the access log needs is noted in `conn.record` on the
/// way, where the listener has one.
pub(super) async fn forward<S: ClientStream>(
    conn: &mut Connection<S>,
    request: Request,
    mut out: Buffer,
    snapshot: SnapshotGuard,
) -> bool {
    // Read when the head was parsed; dropped before the first wait (a guard is not held long).
    let mut parsed_with = Some(snapshot);
    let route = conn.route.clone();
    let pool = &route.pool;
    let started = Instant::now();
    let head_len = out.len();
    let mut tried: Vec<usize> = Vec::new();
    // Allocated only when a connect fails (the hot path allocates nothing).
    let mut last_error: Option<String> = None;
    let mut stale_retries = 0;
    let mut fresh_only = false;
    let (entry, guard, answered) = loop {
        // The first attempt reads nothing more than the choice's snapshot (the hot path).
        if !tried.is_empty() && tried.len() > pool.snapshot().config.retries as usize {
            return refuse(
                conn,
                &request,
                out,
                502,
                &unreachable(&route.listener, &pool.name, last_error.as_deref()),
            )
            .await;
        }
        let choice = {
            let snapshot = parsed_with.take().unwrap_or_else(|| pool.snapshot());
            choose(&snapshot, request.sticky, snapshot.config.drain.keep, &tried)
                .map(|entry| {
                    let set_cookie = sticky_set_cookie(&snapshot, request.sticky, &entry);
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
                let message = format!(
                    "no backend of pool {} can take new requests ({down} of {total} down)",
                    pool.name
                );
                return refuse(conn, &request, out, 503, &message).await;
            }
            Err(_) => {
                let message = unreachable(&route.listener, &pool.name, last_error.as_deref());
                return refuse(conn, &request, out, 502, &message).await;
            }
        };
        let guard = entry
            .backend
            .track(conn.peer, entry.address, Traffic::Http(request.line), started);
        if let Some(record) = conn.record.as_mut() {
            record.backend = Some(entry.clone());
        }
        let tls = route.upstream_tls.as_ref();
        let upstream = match upstream::obtain(pool, &entry, tls, fresh_only, started).await {
            Ok(upstream) => upstream,
            Err(e) => {
                last_error = Some(e.record(&route.listener, pool, &entry));
                tried.push(entry.index);
                continue;
            }
        };
        out.truncate_to(head_len);
        match attempt(conn, &request, &mut out, upstream, started, set_cookie).await {
            Ok(answered) => break (entry, guard, answered),
            Err(Failure::Stale) if stale_retries == 0 => {
                debug!(backend = %entry.address, "reused connection was closed by the backend; trying a new one");
                stale_retries += 1;
                fresh_only = true;
            }
            Err(Failure::Stale) => {
                return backend_failed(
                    conn,
                    &request,
                    out,
                    &entry,
                    "closed the connection before answering",
                )
                .await;
            }
            Err(Failure::Backend(error)) => return backend_failed(conn, &request, out, &entry, &error).await,
            Err(Failure::Timeout) => {
                entry.backend.record_failure();
                pool.record_traffic(&entry.backend, false);
                if let Some(left_out) = BACKEND_FAILED.admit() {
                    warn!(listener = %route.listener, backend = %entry.address, timeout = ?route.response_timeout, left_out, "backend did not answer in time");
                }
                let message = format!("the backend did not answer within {:?}", route.response_timeout);
                return refuse(conn, &request, out, 504, &message).await;
            }
            Err(Failure::BadRequest(reason)) => {
                debug!(client = %conn.peer, %reason, "request body refused");
                return close_with(conn, out, 400, &reason).await;
            }
            Err(Failure::ClientTimeout) => {
                debug!(client = %conn.peer, "request body stalled");
                let message = format!("the request body stalled for {:?}", route.client_timeout);
                return close_with(conn, out, 408, &message).await;
            }
            Err(Failure::Client) => {
                if let Some(record) = conn.record.as_mut() {
                    record.failed("the client went away before its request was whole");
                }
                return false;
            }
        }
        drop(guard);
    };

    let now = Instant::now();
    entry
        .backend
        .record_latency(now.saturating_duration_since(started).as_nanos() as u64);
    pool.record_traffic(&entry.backend, answered.response.status < 500);
    if answered.response.switching {
        // The request is over; the tunnel is counted as a connection of its own (and its access
        // log line, status 101, is written when it closes).
        drop(guard);
        if let Some(record) = conn.record.as_mut() {
            record.answered(101, None);
        }
        let Answered {
            upstream,
            input: mut from_backend,
            response,
            ..
        } = answered;
        from_backend.consume(response.head_len);
        super::upgrade::tunnel(conn, &entry, request.line, upstream, out, from_backend).await;
        return false;
    }
    let keep = relay_response(conn, &entry, answered, out).await;
    drop(guard);
    keep
}

/// One line per second at most for backend failures a flood could repeat per request.
static BACKEND_FAILED: LogLimit = LogLimit::new(Duration::from_secs(1));

/// The 502 text when no backend of `pool` could be connected to (the client is not told which
/// addresses were tried or why they failed: the log says, with `last_error`, the last connect
/// failure).
pub(crate) fn unreachable(listener: &str, pool: &str, last_error: Option<&str>) -> String {
    if let Some(left_out) = BACKEND_FAILED.admit() {
        warn!(
            listener,
            pool,
            error = last_error.unwrap_or("no backend was tried"),
            left_out,
            "no backend could be reached"
        );
    }
    format!("no backend of pool {pool} could be reached")
}

/// Answers with a local error and closes the client connection (reading what it still sends
/// for a while, so the answer is not lost to a reset).
async fn close_with<S: ClientStream>(
    conn: &mut Connection<S>,
    mut out: Buffer,
    status: u16,
    message: &str,
) -> bool {
    if let Some(record) = conn.record.as_mut() {
        record.answered(status, Some(message));
    }
    answers::write(&mut out, status, message, false);
    conn.unread = true;
    let _ = conn.send(out.filled()).await;
    false
}

/// Sends the request on `upstream` and reads until a final response head; interim responses go
/// on to the client as they come. On success `out` holds the rewritten response head.
async fn attempt<S: ClientStream>(
    conn: &mut Connection<S>,
    request: &Request,
    out: &mut Buffer,
    mut upstream: Upstream,
    started: Instant,
    set_cookie: Option<String>,
) -> Result<Answered, Failure> {
    let response_timeout = conn.route.response_timeout;
    let reused = upstream.reused;
    let mut body = BodyCounter::new(request.framing);
    let input = conn.input.get_or_insert_with(Buffer::take);
    // The body bytes already here go with the head.
    let here = body
        .take(input.filled())
        .map_err(|e| Failure::BadRequest(format!("request body: {e}")))?;
    if let Some(record) = conn.record.as_mut() {
        record.body_in += here as u64;
    }
    let fits = here.min(out.room());
    out.extend(&input.filled()[..fits]);
    let mut written = upstream.stream.send(out.filled()).await;
    if written.is_ok() && fits < here {
        written = upstream.stream.send(&input.filled()[fits..here]).await;
    }
    if let Err(e) = written {
        return Err(if reused {
            Failure::Stale
        } else {
            Failure::Backend(e.to_string())
        });
    }
    // A body that was here whole stays in the input until the answer, so the request can be sent
    // again; the start of a longer one is consumed now and the rest streamed.
    let replayable = body.is_done();
    if !replayable {
        input.consume(here);
    }

    // The response timeout runs from when the backend has the whole request.
    let mut deadline = started + response_timeout;
    let mut from_backend = Buffer::take();
    let mut answered_anything = false;
    loop {
        if !body.is_done() {
            pump_body(conn, &mut upstream, &mut body, &mut from_backend).await?;
            if body.is_done() {
                deadline = Instant::now() + response_timeout;
            }
        }
        let response = loop {
            if !from_backend.is_empty() {
                answered_anything = true;
                // Decided now, not when the request went out: a shutdown meanwhile closes it.
                let context = ResponseContext {
                    is_head: request.is_head,
                    client_version: request.version,
                    client_keep_alive: request.keep_alive && body.is_done() && !conn.shutdown.is_triggered(),
                    set_cookie: set_cookie.as_deref(),
                    upgrade: request.websocket,
                };
                out.clear();
                match head::parse_response(from_backend.filled(), &context, out) {
                    Ok(Some(response)) => break response,
                    Ok(None) if from_backend.is_full() => {
                        return Err(Failure::Backend("response head too large".into()));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(Failure::Backend(e.to_string())),
                }
            }
            let read = tokio::select! {
                biased;
                read = from_backend.read_from(&mut upstream.stream) => read,
                _ = conn.timer.until(deadline) => return Err(Failure::Timeout),
            };
            match read {
                Ok(0) if !answered_anything && reused && replayable && request.idempotent => {
                    return Err(Failure::Stale);
                }
                Ok(0) => {
                    return Err(Failure::Backend(
                        "connection closed before a complete response head".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) if !answered_anything && reused && replayable && request.idempotent => {
                    debug!(error = %e, "reused connection failed");
                    return Err(Failure::Stale);
                }
                Err(e) => return Err(Failure::Backend(e.to_string())),
            }
        };
        if response.interim {
            from_backend.consume(response.head_len);
            // An HTTP/1.0 client cannot be sent a 1xx (RFC 9110 §15.2): it waits for the final one.
            if request.version == 1 {
                conn.send(out.filled()).await.map_err(|_| Failure::Client)?;
            }
            continue;
        }
        if replayable && let Some(input) = conn.input.as_mut() {
            input.consume(here);
        }
        return Ok(Answered {
            upstream,
            input: from_backend,
            response,
            request_complete: body.is_done(),
        });
    }
}

/// The `Set-Cookie` value that binds a new session to the chosen backend, when the pool is sticky
/// and the request's cookie (`sticky`, the backend index it names) did not already name it.
pub(crate) fn sticky_set_cookie(
    snapshot: &PoolSnapshot,
    sticky: Option<usize>,
    entry: &BackendEntry,
) -> Option<String> {
    let config = snapshot.config.sticky.as_ref()?;
    (sticky != Some(entry.index)).then(|| {
        format!(
            "{}={}-{}; Path=/; HttpOnly",
            config.cookie, entry.index, entry.backend.vm
        )
    })
}

/// Streams the rest of the request body to the backend until it is whole, or until the backend
/// starts answering (its first bytes are then in `from_backend`).
async fn pump_body<S: ClientStream>(
    conn: &mut Connection<S>,
    upstream: &mut Upstream,
    body: &mut BodyCounter,
    from_backend: &mut Buffer,
) -> Result<(), Failure> {
    let client_timeout = conn.route.client_timeout;
    let input = conn.input.get_or_insert_with(Buffer::take);
    let (mut backend_read, mut backend_write) = upstream.stream.split();
    let timer = &mut conn.timer;
    let record = &mut conn.record;
    loop {
        if body.is_done() {
            return Ok(());
        }
        // Each step that moves bytes starts the stall limit again.
        let stalled = Instant::now() + client_timeout;
        if !input.is_empty() {
            let n = body
                .take(input.filled())
                .map_err(|e| Failure::BadRequest(format!("request body: {e}")))?;
            tokio::select! {
                biased;
                arrival = backend_read.arrival(from_backend) => {
                    if answered(arrival)? {
                        return Ok(());
                    }
                }
                written = backend_write.send(&input.filled()[..n]) => {
                    written.map_err(|e| Failure::Backend(e.to_string()))?;
                    input.consume(n);
                    if let Some(record) = record.as_mut() {
                        record.body_in += n as u64;
                    }
                }
                // The backend takes no more of the body and does not answer either.
                _ = timer.until(stalled) => return Err(Failure::Timeout),
            }
            continue;
        }
        tokio::select! {
            biased;
            arrival = backend_read.arrival(from_backend) => {
                if answered(arrival)? {
                    return Ok(());
                }
            }
            read = input.read_from(&mut conn.stream) => match read {
                Ok(0) | Err(_) => return Err(Failure::Client),
                Ok(_) => {}
            },
            // The client stopped sending its body midway.
            _ = timer.until(stalled) => return Err(Failure::ClientTimeout),
        }
    }
}

/// After [`BackendRead::arrival`](super::backend_stream::BackendRead::arrival): whether the backend really sent something (read into
/// `from_backend`); a stale readiness read nothing.
fn answered(arrival: std::io::Result<Option<usize>>) -> Result<bool, Failure> {
    match arrival {
        Ok(Some(0)) => Err(Failure::Backend(
            "connection closed while the request body was sent".into(),
        )),
        Ok(Some(_)) => Ok(true),
        Ok(None) => Ok(false),
        Err(e) => Err(Failure::Backend(e.to_string())),
    }
}

/// Sends the response head (in `out`) and its body to the client; gives the backend connection
/// back when it can carry another request. Returns whether the client connection stays open.
async fn relay_response<S: ClientStream>(
    conn: &mut Connection<S>,
    entry: &BackendEntry,
    answered: Answered,
    mut out: Buffer,
) -> bool {
    let Answered {
        upstream,
        input: mut from_backend,
        response,
        request_complete,
    } = answered;
    from_backend.consume(response.head_len);
    let mut body = BodyCounter::new(response.framing);
    if let Some(record) = conn.record.as_mut() {
        record.answered(response.status, None);
    }
    let failed = |conn: &mut Connection<S>, reason: &str| {
        entry.backend.record_failure();
        debug!(backend = %entry.address, reason, "response ended early");
        if let Some(record) = conn.record.as_mut() {
            record.failed(reason);
        }
        false
    };
    let Ok(here) = body.take(from_backend.filled()) else {
        return failed(conn, "malformed chunked body");
    };
    // The head and as much of the body as fits go in one write.
    let fits = here.min(out.room());
    out.extend(&from_backend.filled()[..fits]);
    from_backend.consume(fits);
    let mut pending = here - fits;
    if conn.send(out.filled()).await.is_err() {
        return client_gone(conn);
    }
    drop(out);
    let mut upstream = upstream;
    loop {
        if pending > 0 {
            if conn.send(&from_backend.filled()[..pending]).await.is_err() {
                return client_gone(conn);
            }
            from_backend.consume(pending);
        }
        if body.is_done() {
            break;
        }
        // A backend silent for `response_timeout` inside the body ends the response (and the
        // client connection, which cannot be told otherwise once the head is out).
        let silent = Instant::now() + conn.route.response_timeout;
        let read = tokio::select! {
            biased;
            read = from_backend.read_from(&mut upstream.stream) => read,
            _ = conn.timer.until(silent) => return failed(conn, "the backend went silent inside the body"),
        };
        match read {
            Ok(0) if matches!(body, BodyCounter::UntilClose) => break,
            Ok(0) => return failed(conn, "connection closed inside the body"),
            Ok(_) => {}
            Err(_) => return failed(conn, "read error inside the body"),
        }
        match body.take(from_backend.filled()) {
            Ok(n) => pending = n,
            Err(_) => return failed(conn, "malformed chunked body"),
        }
    }
    // Bytes after the body are a protocol error: such a connection is not reused.
    let clean = from_backend.is_empty();
    if response.upstream_reusable && request_complete && clean && response.framing != Framing::UntilClose {
        upstream::checkin(&entry.backend, upstream, Instant::now());
    }
    conn.unread = !request_complete;
    response.client_keep_alive && request_complete
}

/// The client stopped taking the response: noted for the access log; the connection closes.
fn client_gone<S>(conn: &mut Connection<S>) -> bool {
    if let Some(record) = conn.record.as_mut() {
        record.failed("the client stopped reading the response");
    }
    false
}

/// Answers with a local error; the connection stays open only for a bodiless request that asked
/// for it.
async fn refuse<S: ClientStream>(
    conn: &mut Connection<S>,
    request: &Request,
    mut out: Buffer,
    status: u16,
    message: &str,
) -> bool {
    let keep = request.keep_alive && request.framing == Framing::Empty && !conn.shutdown.is_triggered();
    conn.unread = request.framing != Framing::Empty;
    if let Some(record) = conn.record.as_mut() {
        record.answered(status, Some(message));
    }
    answers::write(&mut out, status, message, keep);
    conn.send(out.filled()).await.is_ok() && keep
}

/// A backend failed after the request went out: 502.
async fn backend_failed<S: ClientStream>(
    conn: &mut Connection<S>,
    request: &Request,
    out: Buffer,
    entry: &BackendEntry,
    error: &str,
) -> bool {
    entry.backend.record_failure();
    conn.route.pool.record_traffic(&entry.backend, false);
    if let Some(left_out) = BACKEND_FAILED.admit() {
        warn!(listener = %conn.route.listener, backend = %entry.address, %error, left_out, "upstream request failed");
    }
    refuse(conn, request, out, 502, "the backend failed to answer").await
}

/// The sticky backend if the session may still go there, else the selector's pick.
pub(crate) fn choose(
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
