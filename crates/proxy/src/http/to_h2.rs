//! An HTTP/1.1 request to a pool that speaks HTTP/2 to its backends (`protocol = "h2"`): the head
//! the edge rules wrote goes to the backend as an HTTP/2 request on the worker's connection to it
//! (`h2::to_h2`, the same path HTTP/2 clients take), its body as DATA frames (a chunked body
//! decoded, its trailers as HTTP/2 trailers), and the response comes back as HTTP/1.1: with its
//! `content-length` where it has one, chunked otherwise (trailers included).
//!
//! Not on the path of pools that speak HTTP/1.1: the engine decides once per request, from the
//! route, and those never come here.

use std::collections::VecDeque;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::Connection;
use super::answers;
use super::chunked::{ChunkedScanner, Piece};
use super::head::{Framing, MAX_HEADERS, Request};
use super::stream::ClientStream;
use crate::buffer::Buffer;
use crate::h2::ClientContext;
use crate::h2::body::{BoxError, ChannelBody, ResponseBody};
use crate::pools::SnapshotGuard;

/// Fields that do not go into an HTTP/2 request or come out of its response as they are.
const CONNECTION_SPECIFIC: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// The rewritten HTTP/1.1 head as the parts of an HTTP/2 request.
fn request_parts(head: &[u8]) -> Result<http::request::Parts, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed.parse(head).map_err(|e| format!("request head: {e}"))?;
    let method = parsed.method.ok_or("no method")?;
    let path = parsed.path.ok_or("no target")?;
    let host = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
        .ok_or("a request without Host cannot go to an HTTP/2 backend")?;
    let uri = if path == "*" {
        format!("http://{host}")
    } else {
        format!("http://{host}{path}")
    };
    let mut builder = http::Request::builder().method(method).uri(uri);
    for header in parsed.headers.iter() {
        let lower = header.name.to_ascii_lowercase();
        if CONNECTION_SPECIFIC.contains(&lower.as_str()) {
            continue;
        }
        builder = builder.header(lower.as_str(), header.value);
    }
    Ok(builder
        .body(())
        .map_err(|e| format!("request not valid in HTTP/2: {e}"))?
        .into_parts()
        .0)
}

/// The response head in HTTP/1.1, with the framing its body is sent in.
fn response_head(
    parts: &http::response::Parts,
    is_head: bool,
    keep_alive: bool,
    out: &mut Buffer,
) -> Framing {
    let status = parts.status;
    let no_body =
        is_head || status == http::StatusCode::NO_CONTENT || status == http::StatusCode::NOT_MODIFIED;
    let length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let framing = match (no_body, length) {
        (true, _) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Chunked,
    };
    let mut text = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        if CONNECTION_SPECIFIC.contains(&name.as_str()) {
            continue;
        }
        text.extend_from_slice(name.as_str().as_bytes());
        text.extend_from_slice(b": ");
        text.extend_from_slice(value.as_bytes());
        text.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        text.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if !keep_alive {
        text.extend_from_slice(b"Connection: close\r\n");
    }
    text.extend_from_slice(b"\r\n");
    out.clear();
    out.extend(&text[..text.len().min(out.room())]);
    framing
}

/// The request body on its way up: bytes from the client become DATA frames (a chunked body
/// decoded, its trailers a trailers frame).
struct Upload {
    framing: Framing,
    /// Bytes still owed by a `Content-Length`.
    left: u64,
    chunks: ChunkedScanner,
    trailers: Vec<u8>,
    /// Frames decoded and not yet handed over.
    pending: VecDeque<Frame<Bytes>>,
    frames: mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
}

impl Upload {
    /// Takes what belongs to the body from `bytes`; returns how many bytes that was.
    fn take(&mut self, bytes: &[u8]) -> Result<usize, String> {
        match self.framing {
            Framing::Length(_) => {
                let n = (self.left as usize).min(bytes.len());
                self.left -= n as u64;
                if n > 0 {
                    self.pending
                        .push_back(Frame::data(Bytes::copy_from_slice(&bytes[..n])));
                }
                Ok(n)
            }
            _ => {
                let mut data: Vec<Bytes> = Vec::new();
                let trailers = &mut self.trailers;
                let used = self
                    .chunks
                    .decode(bytes, |piece| match piece {
                        Piece::Data(d) => data.push(Bytes::copy_from_slice(d)),
                        Piece::Trailer(b) => trailers.push(b),
                    })
                    .map_err(|e| format!("request body: {e}"))?;
                self.pending.extend(data.into_iter().map(Frame::data));
                if self.chunks.is_done()
                    && let Some(frame) = crate::h2::to_http1::trailers_frame(&self.trailers)
                {
                    self.pending.push_back(frame);
                }
                Ok(used)
            }
        }
    }

    /// The whole body was read from the client.
    fn read_whole(&self) -> bool {
        match self.framing {
            Framing::Length(_) => self.left == 0,
            _ => self.chunks.is_done(),
        }
    }
}

/// Forwards one request; returns whether the client connection stays open. `snapshot` is the
/// pool's the head was parsed with: the first choice of a backend uses it too.
pub(super) async fn forward<S: ClientStream>(
    conn: &mut Connection<S>,
    request: Request,
    out: Buffer,
    snapshot: SnapshotGuard,
) -> bool {
    if request.websocket {
        return local(
            conn,
            &request,
            501,
            "WebSocket upgrades cannot go to a pool that speaks HTTP/2",
        )
        .await;
    }
    let parts = match request_parts(out.filled()) {
        Ok(parts) => parts,
        Err(why) => return local(conn, &request, 400, &why).await,
    };
    drop(out);
    let (frames_tx, frames_rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let (body, mut upload) = match request.framing {
        Framing::Empty => (crate::h2::body::full(Bytes::new()), None),
        framing => {
            let length = match framing {
                Framing::Length(n) => Some(n),
                _ => None,
            };
            let body = ChannelBody {
                frames: frames_rx,
                length,
            }
            .boxed_unsync();
            let upload = Upload {
                framing,
                left: length.unwrap_or(0),
                chunks: ChunkedScanner::new(),
                trailers: Vec::new(),
                pending: VecDeque::new(),
                frames: frames_tx,
            };
            (body, Some(upload))
        }
    };
    let context = ClientContext {
        route: conn.route.clone(),
        peer: conn.peer,
        peer_text: conn.peer_text.clone(),
    };
    let response = crate::h2::to_h2::send(parts, body, &context, snapshot);
    tokio::pin!(response);
    // The body goes up while the response is awaited; the response is awaited all along, since
    // the request only leaves once it is polled.
    let response = loop {
        if let Some(up) = upload.as_mut() {
            if let Some(input) = conn.input.as_mut().filter(|i| !i.is_empty())
                && up.pending.is_empty()
                && !up.read_whole()
            {
                match up.take(input.filled()) {
                    Ok(n) => input.consume(n),
                    Err(why) => {
                        conn.unread = true;
                        return local(conn, &request, 400, &why).await;
                    }
                }
            }
            if up.pending.is_empty() && up.read_whole() {
                // Dropping the sender ends the body.
                upload = None;
                continue;
            }
        }
        let reading = upload
            .as_ref()
            .is_some_and(|up| up.pending.is_empty() && !up.read_whole());
        let sending = upload.as_ref().is_some_and(|up| !up.pending.is_empty());
        let input = conn.input.get_or_insert_with(Buffer::take);
        // A sender of this iteration only (the body ends when the upload's is dropped).
        let frames = upload.as_ref().map(|up| up.frames.clone());
        tokio::select! {
            biased;
            response = &mut response => break response,
            permit = async { frames.as_ref().expect("sending").reserve().await }, if sending => {
                match permit {
                    Ok(permit) => {
                        let frame = upload.as_mut().and_then(|up| up.pending.pop_front()).expect("pending");
                        permit.send(Ok(frame));
                    }
                    // The request failed: its answer is on its way.
                    Err(_) => upload = None,
                }
            }
            read = input.read_from(&mut conn.stream), if reading => match read {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            },
        }
    };
    // A response before the whole body: the rest is not read, and the connection closes after it.
    let complete = upload.is_none();
    conn.unread = !complete;
    relay(conn, &request, response).await && complete
}

/// Writes an HTTP/2 response to the client in HTTP/1.1.
async fn relay<S: ClientStream>(
    conn: &mut Connection<S>,
    request: &Request,
    response: hyper::Response<ResponseBody>,
) -> bool {
    let keep_alive = request.keep_alive && !conn.shutdown.is_triggered();
    let (parts, mut body) = response.into_parts();
    if let Some(record) = conn.record.as_mut() {
        record.answered(parts.status.as_u16(), None);
    }
    let mut out = Buffer::take();
    let framing = response_head(&parts, request.is_head, keep_alive, &mut out);
    if conn.send(out.filled()).await.is_err() {
        return false;
    }
    drop(out);
    if framing == Framing::Empty {
        return keep_alive;
    }
    let mut sent: u64 = 0;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(_)) => return false,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    sent += data.len() as u64;
                    let written = if framing == Framing::Chunked {
                        let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
                        chunk.extend_from_slice(&data);
                        chunk.extend_from_slice(b"\r\n");
                        conn.send(&chunk).await
                    } else {
                        conn.send(&data).await
                    };
                    if written.is_err() {
                        return false;
                    }
                }
                Err(frame) => {
                    if framing == Framing::Chunked
                        && let Ok(trailers) = frame.into_trailers()
                    {
                        let mut text = b"0\r\n".to_vec();
                        for (name, value) in &trailers {
                            text.extend_from_slice(name.as_str().as_bytes());
                            text.extend_from_slice(b": ");
                            text.extend_from_slice(value.as_bytes());
                            text.extend_from_slice(b"\r\n");
                        }
                        text.extend_from_slice(b"\r\n");
                        return conn.send(&text).await.is_ok() && keep_alive;
                    }
                }
            },
        }
    }
    match framing {
        Framing::Chunked => conn.send(b"0\r\n\r\n").await.is_ok() && keep_alive,
        Framing::Length(n) => sent == n && keep_alive,
        _ => keep_alive,
    }
}

/// The proxy's own answer; the connection closes if the request had a body.
async fn local<S: ClientStream>(
    conn: &mut Connection<S>,
    request: &Request,
    status: u16,
    message: &str,
) -> bool {
    if let Some(record) = conn.record.as_mut() {
        record.answered(status, Some(message));
    }
    let keep = request.keep_alive && request.framing == Framing::Empty && !conn.shutdown.is_triggered();
    conn.unread = request.framing != Framing::Empty;
    let mut out = Buffer::take();
    answers::write(&mut out, status, message, keep);
    conn.send(out.filled()).await.is_ok() && keep
}
