//! The access log line of an HTTP/2 stream: the backend chosen and the proxy's own answer travel
//! as response extensions from the forwarders ([`Chosen`], [`Answered`]); the line is handed to
//! the log when the response body ends (or the client resets the stream and the body is dropped).
//! For a stream, `bytes_in` and `bytes_out` count body bytes (DATA frames), not the compressed
//! headers.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::body::{BoxError, ResponseBody};
use crate::access_log::{AccessLog, Entry};
use crate::snapshot::BackendEntry;

/// The backend a stream was sent to (a response extension).
#[derive(Debug, Clone)]
pub struct Chosen(pub BackendEntry);

/// Why the proxy answered a stream itself (a response extension).
#[derive(Debug, Clone)]
pub struct Answered(pub String);

/// What is known of a stream before its response.
#[derive(Debug)]
pub struct StreamRecord {
    started: Instant,
    client: SocketAddr,
    request: String,
    bytes_in: u64,
}

impl StreamRecord {
    /// A stream whose request head just arrived.
    pub fn start<B>(request: &hyper::Request<B>, client: SocketAddr) -> Self {
        let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        Self {
            started: Instant::now(),
            client,
            request: format!("{} {target}", request.method()),
            bytes_in: request
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0),
        }
    }

    /// The response, with a body that hands the line to `log` when it ends.
    pub fn attach(
        self,
        response: hyper::Response<ResponseBody>,
        log: AccessLog,
    ) -> hyper::Response<ResponseBody> {
        let (parts, body) = response.into_parts();
        let chosen = parts.extensions.get::<Chosen>().map(|c| c.0.clone());
        let entry = Entry {
            time: SystemTime::now(),
            client: self.client,
            protocol: "http2",
            request: Some(self.request),
            status: Some(parts.status.as_u16()),
            phase: chosen.as_ref().map(|c| c.phase),
            backend: chosen.map(|c| (c.backend, c.address)),
            bytes_in: self.bytes_in,
            bytes_out: 0,
            ttfb: Some(self.started.elapsed()),
            total: self.started.elapsed(),
            error: parts.extensions.get::<Answered>().map(|a| a.0.clone()),
        };
        let body = Logged {
            body,
            started: self.started,
            pending: Some((entry, log)),
        };
        hyper::Response::from_parts(parts, body.boxed_unsync())
    }
}

/// A response body that counts what it passes and logs the stream at its end.
struct Logged {
    body: ResponseBody,
    started: Instant,
    /// The line and its log, until it is handed over.
    pending: Option<(Entry, AccessLog)>,
}

impl Logged {
    fn finish(&mut self, error: Option<String>) {
        if let Some((mut entry, log)) = self.pending.take() {
            entry.time = SystemTime::now();
            entry.total = self.started.elapsed();
            if entry.error.is_none() {
                entry.error = error;
            }
            log.record(entry);
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some((entry, _))) = (frame.data_ref(), self.pending.as_mut()) {
                    entry.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let error = e.to_string();
                self.finish(Some(error));
            }
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // A body dropped before its end: the client reset the stream or went away (an empty
        // body may never be polled: it had nothing left to send).
        let error = (!self.body.is_end_stream())
            .then(|| "the stream ended before its response was whole".to_string());
        self.finish(error);
    }
}
