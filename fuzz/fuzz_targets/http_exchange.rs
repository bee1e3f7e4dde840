//! `http_exchange`: a whole client → backend exchange on one connection, structure-aware.
//!
//! The input is a sequence of requests built from parts chosen to collide (framing fields,
//! `Connection` options, `Host`, targets, line endings, chunked bodies with extensions and
//! trailers, raw bytes anywhere), written out as one client byte stream. The stream goes through the
//! same steps the L7 listener takes on a connection — `head::parse_request`, then the body counted
//! by `body::BodyCounter` for the framing the proxy chose, request after request while the
//! connection stays open — collecting the bytes it would send to the backend.
//!
//! The invariant: those bytes, read by a strict backend parser written here from RFC 9112, are
//! exactly the requests the proxy accepted — the same number, each with the method and (origin-form)
//! target the proxy accepted and the body the client's own framing gives — and nothing else: no
//! bytes are left over. And each request the proxy accepted is the one an RFC reading of the
//! client's bytes finds at that place.

#![no_main]

use arbitrary::Arbitrary;
use handover_proxy::backend::RequestLine;
use handover_proxy::buffer::Buffer;
use handover_proxy::http::body::BodyCounter;
use handover_proxy::http::head::{Framing, RequestContext, parse_request};
use libfuzzer_sys::fuzz_target;

const CONTEXT: RequestContext<'static> = RequestContext {
    client: "192.0.2.7",
    sticky_cookie: Some("hv"),
    websocket: false,
};

#[derive(Arbitrary, Debug)]
enum Method {
    Get,
    Head,
    Post,
    Put,
    Options,
    Delete,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Target {
    Path(u8),
    Query(u8),
    Absolute(u8),
    Asterisk,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum HostField {
    Normal,
    Missing,
    Twice,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum BodyFraming {
    None,
    Length,
    LengthTwice,
    LengthList,
    LengthOff(i8),
    Chunked { pieces: Vec<u8>, extension: bool, trailer: bool },
    ChunkedAndLength,
    TransferEncoding(Vec<u8>),
    LengthRaw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Option_ {
    Close,
    KeepAlive,
    ContentLength,
    TransferEncoding,
    Host,
    Upgrade,
    Custom(u8),
}

#[derive(Arbitrary, Debug)]
struct Field {
    name: FieldName,
    value: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum FieldName {
    Custom(u8),
    TransferEncodingLookalike,
    ContentLengthLookalike,
    Expect,
    Upgrade,
    KeepAlive,
    Te,
    Trailer,
    ForwardedFor,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Req {
    method: Method,
    target: Target,
    http10: bool,
    host: HostField,
    framing: BodyFraming,
    connection: Vec<Option_>,
    fields: Vec<Field>,
    body: Vec<u8>,
    bare_lf: bool,
}

#[derive(Arbitrary, Debug)]
struct Exchange {
    requests: Vec<Req>,
    tail: Vec<u8>,
}

impl Req {
    fn write(&self, out: &mut Vec<u8>) {
        let nl: &[u8] = if self.bare_lf { b"\n" } else { b"\r\n" };
        let method: &[u8] = match &self.method {
            Method::Get => b"GET",
            Method::Head => b"HEAD",
            Method::Post => b"POST",
            Method::Put => b"PUT",
            Method::Options => b"OPTIONS",
            Method::Delete => b"DELETE",
            Method::Raw(raw) => raw,
        };
        out.extend_from_slice(method);
        out.push(b' ');
        match &self.target {
            Target::Path(n) => out.extend_from_slice(format!("/p{n}").as_bytes()),
            Target::Query(n) => out.extend_from_slice(format!("/q?x={n}&y=%2F").as_bytes()),
            Target::Absolute(n) => out.extend_from_slice(format!("http://h{n}:8080/a?b").as_bytes()),
            Target::Asterisk => out.push(b'*'),
            Target::Raw(raw) => out.extend_from_slice(raw),
        }
        out.extend_from_slice(if self.http10 { b" HTTP/1.0" } else { b" HTTP/1.1" });
        out.extend_from_slice(nl);
        let mut field = |name: &[u8], value: &[u8]| {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(nl);
        };
        match &self.host {
            HostField::Normal => field(b"Host", b"example"),
            HostField::Missing => {}
            HostField::Twice => {
                field(b"Host", b"a");
                field(b"Host", b"b");
            }
            HostField::Raw(raw) => field(b"Host", raw),
        }
        if !self.connection.is_empty() {
            let tokens: Vec<String> = self
                .connection
                .iter()
                .map(|o| match o {
                    Option_::Close => "close".into(),
                    Option_::KeepAlive => "keep-alive".into(),
                    Option_::ContentLength => "Content-Length".into(),
                    Option_::TransferEncoding => "transfer-encoding".into(),
                    Option_::Host => "Host".into(),
                    Option_::Upgrade => "Upgrade".into(),
                    Option_::Custom(n) => format!("X-F{}", n % 4),
                })
                .collect();
            field(b"Connection", tokens.join(", ").as_bytes());
        }
        for f in &self.fields {
            let name: Vec<u8> = match &f.name {
                FieldName::Custom(n) => format!("X-F{}", n % 4).into_bytes(),
                FieldName::TransferEncodingLookalike => b"Transfer_Encoding".to_vec(),
                FieldName::ContentLengthLookalike => b"Content_Length".to_vec(),
                FieldName::Expect => b"Expect".to_vec(),
                FieldName::Upgrade => b"Upgrade".to_vec(),
                FieldName::KeepAlive => b"Keep-Alive".to_vec(),
                FieldName::Te => b"TE".to_vec(),
                FieldName::Trailer => b"Trailer".to_vec(),
                FieldName::ForwardedFor => b"X-Forwarded-For".to_vec(),
                FieldName::Raw(raw) => raw.clone(),
            };
            field(&name, &f.value);
        }
        let body = &self.body;
        let length = body.len().to_string();
        match &self.framing {
            BodyFraming::None => {}
            BodyFraming::Length => field(b"Content-Length", length.as_bytes()),
            BodyFraming::LengthTwice => {
                field(b"Content-Length", length.as_bytes());
                field(b"content-length", length.as_bytes());
            }
            BodyFraming::LengthList => field(b"Content-Length", format!("{length}, {length}").as_bytes()),
            BodyFraming::LengthOff(d) => {
                field(b"Content-Length", (body.len() as i64 + *d as i64).to_string().as_bytes())
            }
            BodyFraming::Chunked { .. } => field(b"Transfer-Encoding", b"chunked"),
            BodyFraming::ChunkedAndLength => {
                field(b"Transfer-Encoding", b"chunked");
                field(b"Content-Length", length.as_bytes());
            }
            BodyFraming::TransferEncoding(raw) => field(b"Transfer-Encoding", raw),
            BodyFraming::LengthRaw(raw) => field(b"Content-Length", raw),
        }
        out.extend_from_slice(nl);
        match &self.framing {
            BodyFraming::None => {}
            BodyFraming::Chunked { pieces, extension, trailer } => {
                let mut at = 0;
                for piece in pieces.iter().map(|p| *p as usize + 1) {
                    if at >= body.len() {
                        break;
                    }
                    let chunk = &body[at..(at + piece).min(body.len())];
                    out.extend_from_slice(format!("{:x}", chunk.len()).as_bytes());
                    if *extension {
                        out.extend_from_slice(b";e=\"v\"");
                    }
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                    at += chunk.len();
                }
                if at < body.len() {
                    out.extend_from_slice(format!("{:x}\r\n", body.len() - at).as_bytes());
                    out.extend_from_slice(&body[at..]);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                if *trailer {
                    out.extend_from_slice(b"X-T: 1\r\n");
                }
                out.extend_from_slice(b"\r\n");
            }
            _ => out.extend_from_slice(body),
        }
    }
}

/// A request as a strict RFC 9112 reader finds it.
#[derive(Debug, PartialEq, Eq)]
struct Message {
    method: Vec<u8>,
    target: Vec<u8>,
    body: Vec<u8>,
    /// The message asks to close the connection after it.
    close: bool,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Decodes a chunked body at the start of `b`: (decoded, bytes used). Strict: hex sizes, CRLF.
fn dechunk(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let line_end = at + find(&b[at..], b"\r\n")?;
        let line = &b[at..line_end];
        let size_text = line.split(|c| *c == b';').next()?;
        let size_text = trim(size_text);
        if size_text.is_empty() || !size_text.iter().all(u8::is_ascii_hexdigit) || size_text.len() > 15 {
            return None;
        }
        let size = usize::from_str_radix(std::str::from_utf8(size_text).ok()?, 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailer lines up to an empty one.
            loop {
                let end = at + find(&b[at..], b"\r\n")?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some((body, at));
                }
            }
        }
        body.extend_from_slice(b.get(at..at + size)?);
        at += size;
        if b.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        at += 2;
    }
}

/// The next request at the start of `b` as a strict backend reads it (CRLF only, one
/// Content-Length or exactly `chunked`): (message, bytes used); `None` if it is not one.
fn backend_read(b: &[u8]) -> Option<(Message, usize)> {
    let head_end = find(b, b"\r\n\r\n")? + 4;
    // Every line of the head with its CRLF; a bare LF anywhere is not a line end here.
    let head = &b[..head_end - 2];
    // (`head` ends in LF, so the last piece of the split is empty and is not a line.)
    let mut lines = head[..head.len() - 1].split(|c| *c == b'\n');
    let line = lines.next()?.strip_suffix(b"\r")?;
    let mut parts = line.splitn(3, |c| *c == b' ');
    let method = parts.next()?.to_vec();
    let target = parts.next()?.to_vec();
    let version = parts.next()?;
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return None;
    }
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut close = version == b"HTTP/1.0";
    for line in lines {
        let line = line.strip_suffix(b"\r")?;
        let colon = line.iter().position(|c| *c == b':')?;
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() || !value.iter().all(u8::is_ascii_digit) || value.is_empty() {
                return None; // a backend that sees two lengths, or a list, must not guess
            }
            length = Some(std::str::from_utf8(value).ok()?.parse().ok()?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return None;
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|c| *c == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    if chunked && length.is_some() {
        return None;
    }
    let rest = &b[head_end..];
    let (body, used) = if chunked {
        dechunk(rest)?
    } else {
        let n = length.unwrap_or(0);
        (rest.get(..n)?.to_vec(), n)
    };
    Some((Message { method, target, body, close }, head_end + used))
}

/// What the proxy accepted: its request line and the body bytes it counted.
struct Accepted {
    /// `METHOD target` as the proxy kept it, without the cut mark.
    line: Vec<u8>,
    /// The kept line was cut.
    cut: bool,
    method: Vec<u8>,
    target: Vec<u8>,
    framing: Framing,
    body_raw: Vec<u8>,
}

/// The client's own framing is honest for this request: the bytes it wrote are the body it meant.
fn honest(request: &Req) -> bool {
    // Raw bytes with a line break in them change the head's structure (a field ends early, the
    // head ends early), and a raw field named like a framing field frames the body itself.
    let breaks = |raw: &[u8]| raw.iter().any(|c| matches!(c, b'\r' | b'\n'));
    let framing_name = |raw: &[u8]| {
        let name = trim(raw);
        name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"transfer-encoding")
    };
    let mut raw_parts: Vec<&[u8]> = Vec::new();
    if let Method::Raw(raw) = &request.method {
        raw_parts.push(raw);
    }
    if let Target::Raw(raw) = &request.target {
        raw_parts.push(raw);
    }
    if let HostField::Raw(raw) = &request.host {
        raw_parts.push(raw);
    }
    for field in &request.fields {
        raw_parts.push(&field.value);
        if let FieldName::Raw(raw) = &field.name {
            if framing_name(raw) {
                return false;
            }
            raw_parts.push(raw);
        }
    }
    if raw_parts.into_iter().any(breaks) {
        return false;
    }
    match &request.framing {
        BodyFraming::None => request.body.is_empty(),
        BodyFraming::Length | BodyFraming::LengthTwice | BodyFraming::LengthList => true,
        BodyFraming::Chunked { .. } => !request.http10,
        _ => false,
    }
}

fuzz_target!(|exchange: Exchange| {
    let requests = &exchange.requests[..exchange.requests.len().min(8)];
    let mut client = Vec::new();
    for request in requests {
        request.write(&mut client);
    }
    client.extend_from_slice(&exchange.tail);

    // The listener's steps on one connection: a head, then the body its framing says, request
    // after request while the connection stays open.
    let mut to_backend = Vec::new();
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut at = 0;
    while at < client.len() {
        let mut out = Buffer::take();
        let request = match parse_request(&client[at..], &CONTEXT, &mut out) {
            Ok(Some(request)) => request,
            Ok(None) | Err(_) => break,
        };
        let body_start = at + request.head_len;
        let mut counter = BodyCounter::new(request.framing);
        let Ok(n) = counter.take(&client[body_start..]) else {
            // A malformed chunked body is refused midway: the backend connection is closed
            // (what was sent of it is an incomplete request, never a second one).
            break;
        };
        if !counter.is_done() {
            // The body is not all here: the connection would wait (and time out), not forward
            // anything after it.
            break;
        }
        to_backend.extend_from_slice(out.filled());
        to_backend.extend_from_slice(&client[body_start..body_start + n]);
        let line = request.line.text();
        // The line the proxy keeps (for logs and the drain's list) is cut at RequestLine::MAX
        // bytes, the cut marked with `...`.
        let cut = line.len() >= RequestLine::MAX;
        let line = if cut { line[..RequestLine::MAX - 3].to_string() } else { line };
        let (method, target) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        accepted.push(Accepted {
            line: line.as_bytes().to_vec(),
            cut,
            method: method.as_bytes().to_vec(),
            target: target.as_bytes().to_vec(),
            framing: request.framing,
            body_raw: client[body_start..body_start + n].to_vec(),
        });
        at = body_start + n;
        if !request.keep_alive {
            break;
        }
    }

    // A strict backend reads what it was sent: exactly the requests the proxy accepted.
    let mut seen = Vec::new();
    let mut rest = &to_backend[..];
    while !rest.is_empty() {
        let Some((message, used)) = backend_read(rest) else {
            panic!(
                "the backend cannot read what the proxy sent after {} requests: {:?}",
                seen.len(),
                String::from_utf8_lossy(rest)
            )
        };
        seen.push(message);
        rest = &rest[used..];
    }
    assert_eq!(
        seen.len(),
        accepted.len(),
        "the proxy forwarded {} requests, the backend read {}",
        accepted.len(),
        seen.len()
    );
    for (i, (message, accepted)) in seen.iter().zip(&accepted).enumerate() {
        if accepted.cut {
            // Only what the cut kept of the method can be compared (an absolute target is
            // forwarded in origin form, so the kept target is not a prefix of the sent one).
            match accepted.line.iter().position(|c| *c == b' ') {
                Some(_) => assert_eq!(message.method, accepted.method, "request {i}: method"),
                None => assert!(message.method.starts_with(&accepted.line), "request {i}: method"),
            }
        } else {
            assert_eq!(message.method, accepted.method, "request {i}: method");
            // An absolute target is forwarded in origin form.
            if accepted.target.starts_with(b"/") {
                assert_eq!(message.target, accepted.target, "request {i}: target");
            }
        }
        let body = match accepted.framing {
            Framing::Chunked => dechunk(&accepted.body_raw).expect("the proxy's chunked body decodes").0,
            _ => accepted.body_raw.clone(),
        };
        assert_eq!(message.body, body, "request {i}: body");
    }
    // And each request the proxy accepted is the one the client wrote there, with the body it
    // meant, as long as every request before it framed its body honestly.
    for (i, accepted) in accepted.iter().enumerate() {
        let Some(request) = requests.get(i) else { break };
        if !requests[..=i].iter().all(honest) {
            break;
        }
        if accepted.framing != Framing::Empty || !request.body.is_empty() {
            assert_eq!(seen[i].body, request.body, "request {i}: the client's body");
        }
    }
});
