//! Request and response heads: parsed in place with `httparse`, checked against the framing rules
//! that keep a proxy in step with both its peers (RFC 9112 §6: request smuggling is two parsers
//! disagreeing on where a message ends), and written out for the next hop in the same pass.
//!
//! What is written differs from what came in only by the proxy's header rules:
//! - hop-by-hop headers go (`Connection`, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`,
//!   `Proxy-Authorization`, `TE`, `Trailer`, `Upgrade`, and every header `Connection` names —
//!   which may never be a framing or routing field, see [`fields`](super::fields));
//! - requests: framing is written in one canonical form (one `Content-Length: N`, or
//!   `Transfer-Encoding: chunked`), an absolute-form target becomes origin-form with `Host` taken
//!   from it, the client's address is appended to `X-Forwarded-For`, and an HTTP/1.0 request asks
//!   the backend to keep the connection (`Connection: keep-alive`: it is reused whatever the client
//!   does);
//! - responses: the status line says HTTP/1.1, repeated equal lengths become one, a
//!   sticky-session cookie may be added, and `Connection` says what the proxy will do with the
//!   client connection.
//!
//! Nothing here allocates for an ordinary message: headers are parsed into an uninitialised array
//! on the stack and copied straight into the output buffer.

use std::mem::MaybeUninit;

use super::fields::{Field, Scan};
use super::rewrite::{HeadWriter, emit_headers};
use super::target::{self, Target};
use crate::backend::RequestLine;
use crate::buffer::Buffer;

pub use super::fields::MAX_HEADERS;

/// Where a message body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding, passed through as is.
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// A request head that cannot be forwarded; the client gets `status` and the connection closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct RequestError {
    /// Status of the answer.
    pub status: u16,
    /// What was wrong, for the client and the log.
    pub reason: String,
}

impl RequestError {
    fn bad(reason: impl Into<String>) -> Self {
        Self {
            status: 400,
            reason: reason.into(),
        }
    }
}

/// A response head that cannot be forwarded (the client gets 502).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid response from the backend: {0}")]
pub struct ResponseError(pub String);

/// What the proxy needs from a request once its head is written out.
#[derive(Debug, Clone)]
pub struct Request {
    /// Bytes of the head in the input.
    pub head_len: usize,
    /// Body framing.
    pub framing: Framing,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The client allows the connection to stay open after the response.
    pub keep_alive: bool,
    /// `HEAD`: the response has no body whatever its headers say.
    pub is_head: bool,
    /// The method may be retried automatically (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expects_continue: bool,
    /// The backend index the sticky-session cookie names.
    pub sticky: Option<usize>,
    /// A WebSocket upgrade the listener allows: `Upgrade: websocket` went on, and a 101 joins
    /// the connections.
    pub websocket: bool,
    /// Method and target, for drain status.
    pub line: RequestLine,
}

/// Per-connection inputs of request rewriting.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// The client's address as text, appended to `X-Forwarded-For`.
    pub client: &'a str,
    /// Name of the pool's sticky-session cookie.
    pub sticky_cookie: Option<&'a str>,
    /// The listener passes WebSocket upgrades on.
    pub websocket: bool,
}

/// What the proxy needs from a response once its head is written out.
#[derive(Debug, Clone, Copy)]
pub struct Response {
    /// Bytes of the head in the input.
    pub head_len: usize,
    /// Status code.
    pub status: u16,
    /// Body framing.
    pub framing: Framing,
    /// A 1xx interim response: the final one follows.
    pub interim: bool,
    /// The backend connection may carry another request after this response.
    pub upstream_reusable: bool,
    /// The client connection stays open after this response (and said so).
    pub client_keep_alive: bool,
    /// A 101 to a WebSocket upgrade: the connections are joined after the head.
    pub switching: bool,
}

/// Per-request inputs of response rewriting.
#[derive(Debug, Clone, Copy)]
pub struct ResponseContext<'a> {
    /// The request was `HEAD`.
    pub is_head: bool,
    /// HTTP version of the client's request (0 or 1).
    pub client_version: u8,
    /// The client connection may stay open after this response.
    pub client_keep_alive: bool,
    /// A `Set-Cookie` value to add (sticky sessions).
    pub set_cookie: Option<&'a str>,
    /// The request was a WebSocket upgrade the proxy passed on: a 101 may answer it.
    pub upgrade: bool,
}

/// The backend index a sticky cookie names (`<index>-<vm>`); `fields` classifies `headers`.
fn sticky_index(headers: &[httparse::Header<'_>], fields: &[Field], cookie: &str) -> Option<usize> {
    headers
        .iter()
        .zip(fields)
        .filter(|(_, field)| **field == Field::Cookie)
        .flat_map(|(h, _)| h.value.split(|b| *b == b';'))
        .filter_map(|pair| {
            let pair = super::fields::trim(pair);
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq] == *cookie.as_bytes()).then(|| &pair[eq + 1..])
        })
        .find_map(|value| {
            let dash = value.iter().position(|b| *b == b'-')?;
            std::str::from_utf8(&value[..dash]).ok()?.parse().ok()
        })
}

/// Where a request's body ends, from its framing fields (RFC 9112 §6.1–6.3): chunked must be the
/// one and last coding, and is never combined with a length; other codings are not supported.
fn request_framing(scan: &Scan<'_>, version: u8) -> Result<Framing, RequestError> {
    let codings = &scan.codings;
    if !codings.present {
        return Ok(match scan.content_length {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        });
    }
    if version == 0 {
        return Err(RequestError::bad("Transfer-Encoding in an HTTP/1.0 request"));
    }
    if scan.content_length.is_some() {
        return Err(RequestError::bad("both Transfer-Encoding and Content-Length"));
    }
    if !codings.last_is_chunked {
        return Err(RequestError::bad("Transfer-Encoding does not end in chunked"));
    }
    if codings.chunked > 1 {
        return Err(RequestError::bad("chunked is applied more than once"));
    }
    if let Some(other) = codings.other {
        return Err(RequestError {
            status: 501,
            reason: format!(
                "transfer coding {:?} is not supported",
                String::from_utf8_lossy(other)
            ),
        });
    }
    Ok(Framing::Chunked)
}

/// Parses the request head at the start of `input` and writes its forwarded form to `out`.
/// `Ok(None)`: the head is not complete yet.
pub fn parse_request(
    input: &[u8],
    context: &RequestContext<'_>,
    out: &mut Buffer,
) -> Result<Option<Request>, RequestError> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(input, &mut storage) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(RequestError {
                status: 431,
                reason: format!("more than {MAX_HEADERS} header fields"),
            });
        }
        Err(e) => return Err(RequestError::bad(format!("malformed request head: {e}"))),
    };
    let (Some(method), Some(raw_target), Some(version)) = (request.method, request.path, request.version)
    else {
        return Err(RequestError::bad("malformed request line"));
    };
    let headers = &*request.headers;
    if method == "CONNECT" {
        return Err(RequestError {
            status: 405,
            reason: "CONNECT is not supported by this proxy".into(),
        });
    }
    // Methods are case-sensitive tokens; servers disagree on anything but upper case (as nginx).
    if !method
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-')
    {
        return Err(RequestError::bad("a method is upper-case letters, '-' and '_'"));
    }
    let target = Target::parse(method, raw_target).map_err(RequestError::bad)?;
    let scan = Scan::of(headers).map_err(RequestError::bad)?;
    match (scan.hosts, scan.host) {
        (0, _) if version == 1 => return Err(RequestError::bad("an HTTP/1.1 request without Host")),
        (2.., _) => return Err(RequestError::bad("more than one Host header")),
        (_, Some(host)) if !target::is_authority(super::fields::trim(host)) => {
            return Err(RequestError::bad("invalid Host header"));
        }
        _ => {}
    }
    let framing = request_framing(&scan, version)?;
    // A WebSocket handshake (RFC 6455 §4.1): a GET in HTTP/1.1 with `Connection: upgrade` and
    // `Upgrade: websocket`. Any other upgrade (`h2c`, say) is dropped with its fields.
    let websocket = context.websocket
        && scan.upgrade_websocket
        && scan.connection_upgrade
        && version == 1
        && method == "GET";
    if websocket && framing != Framing::Empty {
        return Err(RequestError::bad("a WebSocket upgrade with a body"));
    }

    let absolute = match target {
        Target::Absolute { authority, .. } => Some(authority),
        _ => None,
    };
    let mut w = HeadWriter { out, overflow: false };
    w.put(method.as_bytes());
    w.put(b" ");
    let path = target.forwarded();
    if path.starts_with('?') {
        w.put(b"/");
    }
    w.put(path.as_bytes());
    w.put(if version == 0 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    let mut forwarded_for: Option<&[u8]> = None;
    let mut more_forwarded = false;
    emit_headers(&mut w, input, headers, |index, header| {
        match scan.fields[index] {
            Field::Host if absolute.is_some() => false,
            // Written once below, in one canonical form.
            Field::ContentLength | Field::TransferEncoding => false,
            Field::Upgrade if websocket => true,
            // Folded into one header below, with the client appended.
            Field::ForwardedFor => {
                if forwarded_for.is_some() {
                    more_forwarded = true;
                } else {
                    forwarded_for = Some(header.value);
                }
                false
            }
            _ => !scan.hop_by_hop(index, header.name),
        }
    });
    if let Some(authority) = absolute {
        w.header(b"Host", authority.as_bytes());
    }
    match (framing, scan.content_length) {
        (Framing::Chunked, _) => w.put(b"Transfer-Encoding: chunked\r\n"),
        (_, Some(length)) => {
            w.put(b"Content-Length: ");
            w.number(length);
            w.put(b"\r\n");
        }
        _ => {}
    }
    w.put(b"X-Forwarded-For: ");
    if more_forwarded {
        for value in headers
            .iter()
            .zip(scan.fields)
            .filter(|(_, field)| *field == Field::ForwardedFor)
            .map(|(h, _)| h)
            .map(|h| super::fields::trim(h.value))
            .filter(|v| !v.is_empty())
        {
            w.put(value);
            w.put(b", ");
        }
    } else if let Some(value) = forwarded_for.map(super::fields::trim).filter(|v| !v.is_empty()) {
        w.put(value);
        w.put(b", ");
    }
    w.put(context.client.as_bytes());
    // HTTP/1.0 closes by default: ask the backend to keep the connection for the next request.
    w.put(if version == 0 {
        b"\r\nConnection: keep-alive\r\n\r\n"
    } else if websocket {
        b"\r\nConnection: Upgrade\r\n\r\n"
    } else {
        b"\r\n\r\n"
    });
    if w.overflow {
        return Err(RequestError {
            status: 431,
            reason: "request head too large".into(),
        });
    }

    Ok(Some(Request {
        head_len,
        framing,
        version,
        keep_alive: scan.persistent(version),
        is_head: method == "HEAD",
        idempotent: matches!(method, "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"),
        // A 1.0 client cannot be sent `100 Continue` (RFC 9110 §10.1.1): its Expect is ignored.
        expects_continue: scan.expects_continue && framing != Framing::Empty && version == 1,
        sticky: context
            .sticky_cookie
            .and_then(|cookie| sticky_index(headers, &scan.fields, cookie)),
        websocket,
        line: RequestLine::new(method, raw_target),
    }))
}

/// Parses the response head at the start of `input` and writes its forwarded form to `out`.
/// `Ok(None)`: the head is not complete yet.
pub fn parse_response(
    input: &[u8],
    context: &ResponseContext<'_>,
    out: &mut Buffer,
) -> Result<Option<Response>, ResponseError> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        input,
        &mut storage,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ResponseError(e.to_string())),
    };
    let (Some(version), Some(status)) = (response.version, response.code) else {
        return Err(ResponseError("malformed status line".into()));
    };
    let headers = &*response.headers;
    if status == 101 {
        if !context.upgrade {
            return Err(ResponseError(
                "101 Switching Protocols to a request without Upgrade".into(),
            ));
        }
        return switching(input, head_len, version, headers, out).map(Some);
    }
    if !(100..1000).contains(&status) {
        return Err(ResponseError(format!("status {status} out of range")));
    }
    let interim = (100..200).contains(&status);
    let scan = Scan::of(headers).map_err(ResponseError)?;
    let codings = &scan.codings;
    let framing = if interim || status == 204 || status == 304 || context.is_head {
        Framing::Empty
    } else if codings.present {
        if codings.last_is_chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match scan.content_length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let persistent = scan.persistent(version);
    let client_keep_alive = context.client_keep_alive && framing != Framing::UntilClose;

    let mut w = HeadWriter { out, overflow: false };
    let mut line = *b"HTTP/1.1 000 ";
    line[9] = b'0' + (status / 100) as u8;
    line[10] = b'0' + (status / 10 % 10) as u8;
    line[11] = b'0' + (status % 10) as u8;
    w.put(&line);
    w.put(response.reason.unwrap_or("").as_bytes());
    w.put(b"\r\n");
    let mut length_written = false;
    let mut length_rewritten = false;
    emit_headers(&mut w, input, headers, |index, header| match scan.fields[index] {
        // A length beside a transfer coding is dropped (RFC 9112 §6.3); repeated equal lengths
        // go on as one, and a list of equal lengths (`5, 5`) as the one length it says
        // (RFC 9110 §8.6), written after the other fields.
        Field::ContentLength => {
            if codings.present || std::mem::replace(&mut length_written, true) {
                false
            } else if header.value.iter().all(u8::is_ascii_digit) {
                true
            } else {
                length_rewritten = true;
                false
            }
        }
        _ => !scan.hop_by_hop(index, header.name),
    });
    if let (true, Some(length)) = (length_rewritten, scan.content_length) {
        w.put(b"Content-Length: ");
        w.number(length);
        w.put(b"\r\n");
    }
    if !interim {
        if let Some(cookie) = context.set_cookie {
            w.header(b"Set-Cookie", cookie.as_bytes());
        }
        if !client_keep_alive {
            w.put(b"Connection: close\r\n");
        } else if context.client_version == 0 {
            w.put(b"Connection: keep-alive\r\n");
        }
    }
    w.put(b"\r\n");
    if w.overflow {
        return Err(ResponseError("response head too large".into()));
    }
    Ok(Some(Response {
        head_len,
        status,
        framing,
        interim,
        upstream_reusable: persistent && framing != Framing::UntilClose,
        client_keep_alive,
        switching: false,
    }))
}

/// The 101 that accepts a WebSocket upgrade: checked (it must say `Upgrade: websocket` and
/// `Connection: upgrade`, in HTTP/1.1), then written with its fields as they are.
fn switching(
    input: &[u8],
    head_len: usize,
    version: u8,
    headers: &[httparse::Header<'_>],
    out: &mut Buffer,
) -> Result<Response, ResponseError> {
    let scan = Scan::of(headers).map_err(ResponseError)?;
    if version != 1 || !scan.upgrade_websocket || !scan.connection_upgrade {
        return Err(ResponseError(
            "a 101 that does not switch to websocket in HTTP/1.1".into(),
        ));
    }
    let mut w = HeadWriter { out, overflow: false };
    w.put(b"HTTP/1.1 101 Switching Protocols\r\n");
    emit_headers(&mut w, input, headers, |index, header| match scan.fields[index] {
        Field::Upgrade => true,
        _ => !scan.hop_by_hop(index, header.name),
    });
    w.put(b"Connection: Upgrade\r\n\r\n");
    if w.overflow {
        return Err(ResponseError("response head too large".into()));
    }
    Ok(Response {
        head_len,
        status: 101,
        framing: Framing::Empty,
        interim: false,
        upstream_reusable: false,
        client_keep_alive: false,
        switching: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: RequestContext<'static> = RequestContext {
        client: "127.0.0.1",
        sticky_cookie: Some("hv"),
        websocket: true,
    };

    fn request(text: &str) -> Result<Option<(Request, String)>, RequestError> {
        let mut out = Buffer::take();
        Ok(parse_request(text.as_bytes(), &CLIENT, &mut out)?
            .map(|r| (r, String::from_utf8(out.filled().to_vec()).unwrap())))
    }

    fn status_of(text: &str) -> u16 {
        request(text).unwrap_err().status
    }

    fn response(
        text: &str,
        context: ResponseContext<'_>,
    ) -> Result<Option<(Response, String)>, ResponseError> {
        let mut out = Buffer::take();
        Ok(parse_response(text.as_bytes(), &context, &mut out)?
            .map(|r| (r, String::from_utf8(out.filled().to_vec()).unwrap())))
    }

    const PLAIN: ResponseContext<'static> = ResponseContext {
        is_head: false,
        client_version: 1,
        client_keep_alive: true,
        set_cookie: None,
        upgrade: false,
    };

    #[test]
    fn a_partial_head_asks_for_more() {
        assert!(request("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        assert!(response("HTTP/1.1 200 OK\r\n", PLAIN).unwrap().is_none());
    }

    #[test]
    fn hop_by_hop_headers_go_and_the_client_is_appended() {
        let text = "GET /a?b HTTP/1.1\r\nHost: example\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
             Keep-Alive: timeout=5\r\nUpgrade: websocket\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\n\
             X-Forwarded-For: 10.0.0.2\r\nAccept: */*\r\n\r\nBODY";
        let (req, out) = request(text).unwrap().unwrap();
        assert_eq!(
            out,
            "GET /a?b HTTP/1.1\r\nHost: example\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2, 127.0.0.1\r\n\r\n"
        );
        assert!(req.keep_alive);
        assert_eq!(req.framing, Framing::Empty);
        assert_eq!(req.line.text(), "GET /a?b");
        assert_eq!(req.head_len, text.len() - "BODY".len());
    }

    #[test]
    fn kept_lines_are_copied_verbatim_and_odd_ones_rewritten() {
        let (_, out) =
            request("GET / HTTP/1.1\r\nHost: h\r\nA:  x \t\r\nB: y\nC: z\r\nD:\r\nTE: x\r\nE: w\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: h\r\nA:  x \t\r\nB: y\r\nC: z\r\nD: \r\nE: w\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n",
            "a bare LF never reaches the backend"
        );
    }

    #[test]
    fn the_head_length_excludes_the_body() {
        let text = "POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nBODY";
        let (req, _) = request(text).unwrap().unwrap();
        assert_eq!(req.head_len, text.len() - 4);
        assert_eq!(req.framing, Framing::Length(4));
        assert!(!req.idempotent);
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_its_host() {
        let (_, out) = request("GET http://api.example:8080?q=1 HTTP/1.1\r\nHost: other\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            out,
            "GET /?q=1 HTTP/1.1\r\nHost: api.example:8080\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"
        );
    }

    #[test]
    fn framing_is_forwarded_in_one_canonical_form() {
        let (req, out) = request(
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\ncontent-length: 005\r\nA: b\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(req.framing, Framing::Length(5), "equal lengths are one length");
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: h\r\nA: b\r\nContent-Length: 5\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"
        );
        let (req, out) = request("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:  Chunked \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.framing, Framing::Chunked);
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"
        );
        let (req, out) = request("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.framing, Framing::Empty);
        assert!(
            out.contains("\r\nContent-Length: 0\r\n"),
            "an empty body keeps its length"
        );
    }

    #[test]
    fn framing_that_two_parsers_could_read_differently_is_refused() {
        for text in [
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX: 1\r\n folded\r\n\r\n",
        ] {
            assert_eq!(status_of(text), 400, "{text:?}");
        }
        assert_eq!(status_of("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"), 405);
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501,
            "codings other than chunked are not forwarded"
        );
    }

    #[test]
    fn connection_never_strips_framing_or_routing() {
        for named in [
            "Content-Length",
            "Transfer-Encoding",
            "Host",
            "close, content-length",
        ] {
            let text =
                format!("POST / HTTP/1.1\r\nHost: h\r\nConnection: {named}\r\nContent-Length: 3\r\n\r\nabc");
            let error = request(&text).unwrap_err();
            assert_eq!(error.status, 400, "{named}");
            assert!(error.reason.contains("Connection names"), "{}", error.reason);
        }
        let response_error = response(
            "HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\nhi",
            PLAIN,
        )
        .unwrap_err();
        assert!(response_error.0.contains("Connection names"), "{response_error}");
    }

    #[test]
    fn host_is_required_in_http11_and_must_be_an_authority() {
        assert_eq!(status_of("GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status_of("GET http://a/ HTTP/1.1\r\n\r\n"), 400);
        for bad in ["", "a b", "a/b", "user@a", "a:8x"] {
            assert_eq!(
                status_of(&format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n")),
                400,
                "{bad:?}"
            );
        }
        let (_, out) = request("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!out.contains("Host"), "HTTP/1.0 may go without Host");
        assert!(request("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n").is_ok());
    }

    #[test]
    fn targets_other_than_a_path_or_an_http_uri_are_refused() {
        for target in ["/a#frag", "*", "example.com:80", "http://u@h/", "h/path"] {
            assert_eq!(
                status_of(&format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n")),
                400,
                "{target}"
            );
        }
        assert!(request("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").is_ok());
    }

    #[test]
    fn too_many_headers_or_too_large_a_head_is_431() {
        let mut text = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for i in 0..=MAX_HEADERS {
            text.push_str(&format!("X-{i}: 1\r\n"));
        }
        text.push_str("\r\n");
        assert_eq!(status_of(&text), 431);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
            "a".repeat(crate::buffer::CAPACITY)
        );
        assert_eq!(status_of(&big), 431);
    }

    #[test]
    fn an_http10_request_asks_the_backend_to_keep_the_connection() {
        let (req, out) = request("GET / HTTP/1.0\r\nHost: a\r\n\r\n").unwrap().unwrap();
        assert!(!req.keep_alive, "the client's own connection still closes");
        assert_eq!(
            out,
            "GET / HTTP/1.0\r\nHost: a\r\nX-Forwarded-For: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn persistence_follows_the_version_and_connection() {
        let keep = |text: &str| request(text).unwrap().unwrap().0.keep_alive;
        assert!(keep("GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn the_sticky_cookie_names_a_backend() {
        let (req, _) = request("GET / HTTP/1.1\r\nHost: h\r\nCookie: a=b; hv=2-vm-c; z=1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.sticky, Some(2));
        let (req, _) = request("GET / HTTP/1.1\r\nHost: h\r\nCookie: hvx=1-vm\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.sticky, None);
    }

    #[test]
    fn expect_continue_matters_only_with_a_body_from_an_http11_client() {
        let expects = |text: &str| request(text).unwrap().unwrap().0.expects_continue;
        assert!(expects(
            "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n"
        ));
        assert!(!expects(
            "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n"
        ));
        assert!(!expects(
            "PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n"
        ));
    }

    #[test]
    fn response_framing() {
        let framing = |text: &str, context| response(text, context).unwrap().unwrap().0.framing;
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", PLAIN),
            Framing::Length(12)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", PLAIN),
            Framing::Chunked
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n", PLAIN), Framing::UntilClose);
        assert_eq!(framing("HTTP/1.1 204 No Content\r\n\r\n", PLAIN), Framing::Empty);
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", PLAIN),
            Framing::Empty
        );
        let head = ResponseContext {
            is_head: true,
            ..PLAIN
        };
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", head),
            Framing::Empty
        );
        assert!(response("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", PLAIN).is_err());
        assert!(response("HTTP/1.1 101 Switching Protocols\r\n\r\n", PLAIN).is_err());
    }

    #[test]
    fn repeated_equal_response_lengths_go_on_as_one() {
        let (resp, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            PLAIN,
        )
        .unwrap()
        .unwrap();
        assert_eq!(resp.framing, Framing::Length(2));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
        assert!(
            response(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
                PLAIN
            )
            .is_err()
        );
    }

    #[test]
    fn a_response_length_list_goes_on_as_the_one_length_it_says() {
        let (resp, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nA: b\r\ncontent-length: 5\r\n\r\n",
            PLAIN,
        )
        .unwrap()
        .unwrap();
        assert_eq!(resp.framing, Framing::Length(5));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nA: b\r\nContent-Length: 5\r\n\r\n");
    }

    #[test]
    fn chunked_wins_over_a_length_and_the_length_is_dropped() {
        let (resp, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n",
            PLAIN,
        )
        .unwrap()
        .unwrap();
        assert_eq!(resp.framing, Framing::Chunked);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    }

    #[test]
    fn the_client_is_told_when_its_connection_closes() {
        let closing = ResponseContext {
            client_keep_alive: false,
            set_cookie: Some("hv=1-vm-b; Path=/; HttpOnly"),
            ..PLAIN
        };
        let (resp, out) = response(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
            closing,
        )
        .unwrap()
        .unwrap();
        assert!(resp.upstream_reusable);
        assert!(!resp.client_keep_alive);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nSet-Cookie: hv=1-vm-b; Path=/; HttpOnly\r\nConnection: close\r\n\r\n"
        );
        // A body that ends at close cannot leave the client connection open.
        let (resp, out) = response("HTTP/1.0 200 OK\r\n\r\n", PLAIN).unwrap().unwrap();
        assert!(!resp.upstream_reusable && !resp.client_keep_alive);
        assert!(out.ends_with("Connection: close\r\n\r\n"));
        // An HTTP/1.0 client that asked to keep its connection is told it is kept.
        let old = ResponseContext {
            client_version: 0,
            ..PLAIN
        };
        let (_, out) = response("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", old)
            .unwrap()
            .unwrap();
        assert!(out.ends_with("Connection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn interim_responses_pass_without_proxy_headers() {
        let closing = ResponseContext {
            client_keep_alive: false,
            ..PLAIN
        };
        let (resp, out) = response("HTTP/1.1 100 Continue\r\n\r\n", closing)
            .unwrap()
            .unwrap();
        assert!(resp.interim);
        assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn a_websocket_upgrade_goes_on_only_as_a_get_the_listener_allows() {
        let upgrade = "GET /chat HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let (req, out) = request(upgrade).unwrap().unwrap();
        assert!(req.websocket);
        assert_eq!(
            out,
            "GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nX-Forwarded-For: 127.0.0.1\r\nConnection: Upgrade\r\n\r\n"
        );
        let not_allowed = RequestContext {
            websocket: false,
            ..CLIENT
        };
        let mut out = Buffer::take();
        let req = parse_request(upgrade.as_bytes(), &not_allowed, &mut out)
            .unwrap()
            .unwrap();
        assert!(!req.websocket);
        assert!(
            !String::from_utf8_lossy(out.filled()).contains("Upgrade"),
            "dropped as hop-by-hop"
        );
        for other in [
            upgrade.replace("Upgrade: websocket", "Upgrade: h2c"),
            upgrade.replace("GET /chat", "POST /chat"),
            upgrade.replace("HTTP/1.1", "HTTP/1.0"),
            upgrade.replace("keep-alive, Upgrade", "keep-alive"),
            upgrade.replace("Upgrade: websocket", "Upgrade: websocket, h2c"),
        ] {
            let (req, out) = request(&other).unwrap().unwrap();
            assert!(!req.websocket, "{other}");
            assert!(!out.contains("Upgrade"), "{other}");
        }
        let with_body = upgrade.replace("\r\n\r\n", "\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(status_of(&with_body), 400);
    }

    #[test]
    fn a_101_is_accepted_only_for_a_websocket_upgrade() {
        let switching = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        let upgraded = ResponseContext {
            upgrade: true,
            ..PLAIN
        };
        let (resp, out) = response(switching, upgraded).unwrap().unwrap();
        assert!(resp.switching && !resp.upstream_reusable && !resp.client_keep_alive);
        assert_eq!(
            out,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
             Connection: Upgrade\r\n\r\n"
        );
        assert!(response(switching, PLAIN).is_err(), "no upgrade was asked for");
        let h2c = switching.replace("Upgrade: websocket", "Upgrade: h2c");
        assert!(response(&h2c, upgraded).is_err());
        // A backend that declines answers as usual.
        let (resp, _) = response(
            "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n",
            upgraded,
        )
        .unwrap()
        .unwrap();
        assert!(!resp.switching);
    }

    #[test]
    fn a_backend_that_closes_is_not_reused() {
        let reusable = |text: &str| response(text, PLAIN).unwrap().unwrap().0.upstream_reusable;
        assert!(reusable("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!reusable(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!reusable("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(reusable(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
    }
}
