//! Response bodies of HTTP/2 streams: frames that a task reading the backend hands over a
//! channel, a backend's own HTTP/2 body kept counted as the backend's work until it ends, and the
//! proxy's own short answers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use tokio::sync::mpsc;

use crate::backend::ActiveGuard;

/// Any error a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the HTTP/2 server sends.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A whole body in one frame.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The proxy's own answer: plain text that says why.
pub fn answer(status: u16, message: &str) -> hyper::Response<ResponseBody> {
    let mut response = hyper::Response::new(full(format!("{message}\n")));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .extensions_mut()
        .insert(super::logging::Answered(message.to_string()));
    response
}

/// Frames sent by a task over a bounded channel (the bound is the back-pressure: the task reads
/// the backend no faster than the client takes the frames).
#[derive(Debug)]
pub struct ChannelBody {
    /// Where the frames arrive; closed by the task at the end.
    pub frames: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    /// What the response head said the length is, if it did.
    pub length: Option<u64>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.frames.poll_recv(cx)
    }

    fn size_hint(&self) -> SizeHint {
        self.length.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// A body that holds `guard` until it ends (or the client goes away and it is dropped): by
/// default the stream's count as in flight to its backend; [`super::idle::OpenStream`] keeps a
/// connection from counting as idle.
pub struct Guarded<B, G = ActiveGuard> {
    /// The body.
    pub body: B,
    /// Dropped at the end.
    pub guard: Option<G>,
}

impl<B: Body + Unpin, G: Unpin> Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.guard = None;
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
