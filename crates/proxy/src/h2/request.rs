//! An HTTP/2 request meets the same edge rules as an HTTP/1.1 one, plus HTTP/2's own (RFC 9113
//! §8.2.2, §8.1.1): it is written out as the HTTP/1.1 head it stands for and that head goes
//! through [`head::parse_request`] — the very function the HTTP/1.1 engine uses — so `Host`,
//! targets, methods, lengths and the rest are judged by one piece of code whatever the client
//! spoke.
//!
//! HTTP/2's own rules, checked first, are those whose breach smuggles a request once it is
//! turned into HTTP/1.1 (the H2.CL and H2.TE classes): a connection-specific field (`Connection`,
//! `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`) makes the request malformed,
//! `TE` may only say `trailers`, and a `content-length` must agree with the DATA frames (checked
//! here when there are none, and by the body's counter while they stream).

use http::request::Parts;

use crate::buffer::Buffer;
use crate::http::head::{self, Request, RequestContext, RequestError};

/// Fields HTTP/2 forbids in a request (RFC 9113 §8.2.2).
const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

fn bad(reason: impl Into<String>) -> RequestError {
    RequestError {
        status: 400,
        reason: reason.into(),
    }
}

/// Checks a request and writes the HTTP/1.1 head it is forwarded as to `out` (for a backend
/// spoken to in HTTP/1.1; a backend spoken to in HTTP/2 gets the request itself, checked all
/// the same). `has_body`: DATA frames follow the headers.
pub fn check(
    parts: &Parts,
    has_body: bool,
    context: &RequestContext<'_>,
    out: &mut Buffer,
) -> Result<Request, RequestError> {
    let headers = &parts.headers;
    for name in CONNECTION_SPECIFIC {
        if headers.contains_key(name) {
            return Err(bad(format!(
                "connection-specific field {name} in an HTTP/2 request"
            )));
        }
    }
    for te in headers.get_all(http::header::TE) {
        if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            return Err(bad("TE other than trailers in an HTTP/2 request"));
        }
    }
    let mut length: Option<&[u8]> = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        if length.is_some_and(|l| l != value.as_bytes()) {
            return Err(bad("conflicting content-length fields"));
        }
        length = Some(value.as_bytes());
    }
    if !has_body && length.is_some_and(|l| l.iter().any(|b| *b != b'0')) {
        return Err(bad(
            "content-length disagrees with the DATA frames (there are none)",
        ));
    }

    // The request as an HTTP/1.1 head, for the shared rules.
    let mut text: Vec<u8> = Vec::with_capacity(256);
    text.extend_from_slice(parts.method.as_str().as_bytes());
    text.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    text.extend_from_slice(target.as_bytes());
    text.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = parts.uri.authority();
    if let Some(authority) = authority {
        text.extend_from_slice(b"host: ");
        text.extend_from_slice(authority.as_str().as_bytes());
        text.extend_from_slice(b"\r\n");
    }
    let mut cookies: Vec<&[u8]> = Vec::new();
    for (name, value) in headers {
        if name == http::header::COOKIE {
            // Split into several fields in HTTP/2; one field in HTTP/1.1 (RFC 9113 §8.2.3).
            cookies.push(value.as_bytes());
            continue;
        }
        if authority.is_some() && name == http::header::HOST {
            // :authority wins over Host (RFC 9113 §8.3.1).
            continue;
        }
        text.extend_from_slice(name.as_str().as_bytes());
        text.extend_from_slice(b": ");
        text.extend_from_slice(value.as_bytes());
        text.extend_from_slice(b"\r\n");
    }
    if !cookies.is_empty() {
        text.extend_from_slice(b"cookie: ");
        text.extend_from_slice(&cookies.join(&b"; "[..]));
        text.extend_from_slice(b"\r\n");
    }
    if has_body && length.is_none() {
        // A body of unknown length goes on chunked, as HAProxy does.
        text.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    text.extend_from_slice(b"\r\n");
    match head::parse_request(&text, context, out)? {
        Some(request) => Ok(request),
        None => Err(RequestError {
            status: 431,
            reason: "request head too large".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTEXT: RequestContext<'static> = RequestContext {
        client: "10.0.0.9",
        sticky_cookie: None,
        websocket: false,
    };

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn forwarded(parts: &Parts, has_body: bool) -> Result<String, RequestError> {
        let mut out = Buffer::take();
        check(parts, has_body, &CONTEXT, &mut out)?;
        Ok(String::from_utf8(out.filled().to_vec()).unwrap())
    }

    #[test]
    fn a_request_becomes_the_http11_head_it_stands_for() {
        let p = parts(
            "GET",
            "https://api.test/a?b=1",
            &[
                ("cookie", "a=1"),
                ("accept", "*/*"),
                ("cookie", "b=2"),
                ("te", "trailers"),
            ],
        );
        assert_eq!(
            forwarded(&p, false).unwrap(),
            "GET /a?b=1 HTTP/1.1\r\nhost: api.test\r\naccept: */*\r\ncookie: a=1; b=2\r\nX-Forwarded-For: 10.0.0.9\r\n\r\n"
        );
        let post = parts("POST", "https://api.test/up", &[("content-length", "5")]);
        assert!(forwarded(&post, true).unwrap().contains("Content-Length: 5\r\n"));
        let unknown = parts("POST", "https://api.test/up", &[]);
        assert!(
            forwarded(&unknown, true)
                .unwrap()
                .contains("Transfer-Encoding: chunked\r\n"),
            "a body without a length goes on chunked"
        );
    }

    #[test]
    fn what_would_smuggle_once_downgraded_is_refused() {
        for (headers, has_body) in [
            (vec![("transfer-encoding", "chunked")], true),
            (vec![("connection", "keep-alive")], false),
            (vec![("upgrade", "websocket")], false),
            (vec![("keep-alive", "timeout=5")], false),
            (vec![("proxy-connection", "close")], false),
            (vec![("te", "gzip")], false),
            (vec![("content-length", "5")], false),
            (vec![("content-length", "5"), ("content-length", "6")], true),
            (vec![("content-length", "5, 6")], true),
            (vec![("content-length", "+5")], true),
        ] {
            let p = parts("POST", "https://api.test/x", &headers);
            let error = forwarded(&p, has_body).unwrap_err();
            assert_eq!(error.status, 400, "{headers:?}");
        }
    }

    #[test]
    fn the_http11_rules_apply_as_they_are() {
        let host = parts("GET", "/x", &[("host", "a b")]);
        assert_eq!(forwarded(&host, false).unwrap_err().status, 400);
        let none = parts("GET", "/x", &[]);
        assert_eq!(
            forwarded(&none, false).unwrap_err().status,
            400,
            "no authority, no Host"
        );
        let lookalike = parts("POST", "https://h/x", &[("content_length", "5")]);
        assert_eq!(forwarded(&lookalike, true).unwrap_err().status, 400);
        let connect = parts("CONNECT", "h:443", &[]);
        assert_eq!(forwarded(&connect, false).unwrap_err().status, 405);
    }
}
