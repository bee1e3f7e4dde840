//! `http_request_head`: the L7 listener's request head parser and rewriter
//! (`handover_proxy::http::head::parse_request`) on arbitrary client bytes.
//!
//! Beyond "no panic", a head the proxy accepts must come out as what the backend can only read one
//! way: its rewritten form re-parses (with `httparse` and with `parse_request` itself) as exactly
//! one request head with the same method, the same target in origin-form, the same version and
//! the same body framing, written one way (`Transfer-Encoding: chunked` alone, or one plain
//! `Content-Length` saying the length); it carries no hop-by-hop header, the routing header `Host`
//! is the client's (or the absolute-form target's authority; an HTTP/1.1 request has one), exactly
//! one `X-Forwarded-For` ending with the client; every other header passes in order. `head_len`
//! never exceeds the input. A refused head gets 400, 405, 431 or 501 with a reason.

#![no_main]

use handover_fuzz::http::{
    Header, connection_tokens, decimal, is_fixed_hop_by_hop, is_framing_or_routing, split_absolute_form,
};
use handover_proxy::buffer::{Buffer, CAPACITY};
use handover_proxy::http::head::{Framing, MAX_HEADERS, RequestContext, parse_request};
use libfuzzer_sys::fuzz_target;

const CLIENT: &str = "192.0.2.7";
const CONTEXT: RequestContext<'static> = RequestContext {
    client: CLIENT,
    sticky_cookie: Some("hv"),
    websocket: false,
};

/// A request head as `httparse` reads it, owned.
struct Parsed {
    method: String,
    target: String,
    version: u8,
    headers: Vec<Header>,
    len: usize,
}

fn parse_with_httparse(bytes: &[u8]) -> Option<Parsed> {
    let mut headers = [httparse::EMPTY_HEADER; 4 * MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    Some(Parsed {
        method: request.method?.to_string(),
        target: request.path?.to_string(),
        version: request.version?,
        headers: request.headers.iter().map(Header::of).collect(),
        len,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut out = Buffer::take();
    let request = match parse_request(data, &CONTEXT, &mut out) {
        Ok(Some(request)) => request,
        Ok(None) => return,
        Err(e) => {
            assert!(
                matches!(e.status, 400 | 405 | 431 | 501),
                "refused with status {}",
                e.status
            );
            assert!(!e.reason.is_empty(), "a refusal without a reason");
            return;
        }
    };
    assert!(
        request.head_len <= data.len(),
        "head_len {} > input {}",
        request.head_len,
        data.len()
    );
    let input = parse_with_httparse(data).expect("an accepted head is a complete head");
    assert_eq!(input.len, request.head_len, "head_len differs from httparse's");
    let output_bytes = out.filled().to_vec();
    let output = parse_with_httparse(&output_bytes).unwrap_or_else(|| {
        panic!(
            "the rewritten head does not parse: {:?}",
            String::from_utf8_lossy(&output_bytes)
        )
    });
    assert_eq!(
        output.len,
        output_bytes.len(),
        "the rewritten head is not exactly one head"
    );

    // Method, target in origin-form, version.
    assert_eq!(output.method, input.method, "method changed");
    let absolute = split_absolute_form(&input.target);
    let expected_target = match absolute {
        Some((_, path)) if path.starts_with('?') => format!("/{path}"),
        Some((_, "")) => "/".to_string(),
        Some((_, path)) => path.to_string(),
        None => input.target.clone(),
    };
    assert_eq!(output.target, expected_target, "target changed");
    assert!(
        output.target.starts_with('/') || (output.target == "*" && output.method == "OPTIONS"),
        "forwarded target {:?} is not in origin-form",
        output.target
    );
    assert_eq!(output.version, input.version, "version changed");
    assert_eq!(request.version, input.version);

    // An HTTP/1.1 request names its host (RFC 9112 §3.2).
    let input_hosts: Vec<&Header> = input.headers.iter().filter(|h| h.is("host")).collect();
    if input.version == 1 && absolute.is_none() {
        assert_eq!(
            input_hosts.len(),
            1,
            "an HTTP/1.1 request with {} Host headers was accepted",
            input_hosts.len()
        );
    }

    // Hop-by-hop headers: the fixed ones and those `Connection` names (framing and routing
    // headers excepted: the proxy's own decisions rest on them).
    let named = connection_tokens(&input.headers);
    for header in &output.headers {
        assert!(
            !is_fixed_hop_by_hop(&header.name),
            "hop-by-hop header {} forwarded",
            header.name
        );
        // `Connection` and `X-Forwarded-For` are the proxy's own (checked below).
        let own = header.is("connection") || header.is("x-forwarded-for");
        assert!(
            !named.iter().any(|n| header.is(n)) || is_framing_or_routing(&header.name) || own,
            "header {} named by Connection forwarded",
            header.name
        );
    }
    let connection: Vec<&Header> = output.headers.iter().filter(|h| h.is("connection")).collect();
    if input.version == 0 {
        assert!(
            connection.len() == 1 && connection[0].value == b"keep-alive",
            "an HTTP/1.0 request is forwarded without exactly Connection: keep-alive"
        );
    } else {
        assert!(connection.is_empty(), "Connection forwarded");
    }

    // Host: the client's, or the absolute-form target's authority.
    let output_hosts: Vec<&[u8]> = output
        .headers
        .iter()
        .filter(|h| h.is("host"))
        .map(|h| h.value.as_slice())
        .collect();
    match absolute {
        Some((authority, _)) => assert_eq!(output_hosts, vec![authority.as_bytes()], "Host"),
        None => assert_eq!(
            output_hosts,
            input_hosts.iter().map(|h| h.value.as_slice()).collect::<Vec<_>>(),
            "Host changed"
        ),
    }

    // Framing, written so that the backend cannot read it two ways: a chunked body with exactly
    // `Transfer-Encoding: chunked`, a body of n bytes with exactly one `Content-Length` saying n
    // (RFC 9110 §8.6: a list is not forwarded as it came), no body with neither (or a length of 0).
    let lengths: Vec<Option<u64>> = output
        .headers
        .iter()
        .filter(|h| h.is("content-length"))
        .map(|h| decimal(&h.value))
        .collect();
    let codings: Vec<&[u8]> = output
        .headers
        .iter()
        .filter(|h| h.is("transfer-encoding"))
        .map(|h| h.value.as_slice())
        .collect();
    let canonical = match request.framing {
        Framing::Chunked => {
            lengths.is_empty() && codings.len() == 1 && codings[0].eq_ignore_ascii_case(b"chunked")
        }
        Framing::Length(n) => codings.is_empty() && lengths == [Some(n)],
        Framing::Empty => codings.is_empty() && (lengths.is_empty() || lengths == [Some(0)]),
        Framing::UntilClose => false,
    };
    assert!(
        canonical,
        "{:?} forwarded with Content-Length {lengths:?} and Transfer-Encoding {codings:?}",
        request.framing
    );

    // The client is appended to X-Forwarded-For.
    let forwarded: Vec<&Header> = output
        .headers
        .iter()
        .filter(|h| h.is("x-forwarded-for"))
        .collect();
    assert_eq!(forwarded.len(), 1, "X-Forwarded-For must be one header");
    assert!(
        forwarded[0].value.ends_with(CLIENT.as_bytes()),
        "X-Forwarded-For does not end with the client"
    );

    // Every other header passes, in order.
    let kept_in: Vec<&Header> = input
        .headers
        .iter()
        .filter(|h| {
            !(is_fixed_hop_by_hop(&h.name)
                || h.is("connection")
                || h.is("x-forwarded-for")
                || h.is("content-length")
                || h.is("transfer-encoding")
                || (h.is("host") && absolute.is_some())
                || (named.iter().any(|n| h.is(n)) && !is_framing_or_routing(&h.name)))
        })
        .collect();
    let kept_out: Vec<&Header> = output
        .headers
        .iter()
        .filter(|h| {
            !(h.is("connection")
                || h.is("x-forwarded-for")
                || h.is("content-length")
                || h.is("transfer-encoding")
                || (h.is("host") && absolute.is_some()))
        })
        .collect();
    let names = |headers: &[&Header]| {
        headers
            .iter()
            .map(|h| h.name.to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&kept_out),
        names(&kept_in),
        "headers changed on the way through"
    );
    for (a, b) in kept_in.iter().zip(&kept_out) {
        assert_eq!(a.value, b.value, "value of {} changed", a.name);
    }

    // The rewritten head, parsed again by the proxy, frames the body the same way.
    let mut again = Buffer::take();
    match parse_request(&output_bytes, &CONTEXT, &mut again) {
        Ok(Some(second)) => {
            assert_eq!(second.framing, request.framing, "framing changed");
            assert_eq!(second.head_len, output_bytes.len());
            assert_eq!(second.version, request.version);
            assert_eq!(second.is_head, request.is_head);
        }
        Ok(None) => panic!("the rewritten head is incomplete"),
        // Growing past the buffer or the header limit is the only excuse.
        Err(e) => assert!(
            e.status == 431 && (output_bytes.len() + 64 > CAPACITY || output.headers.len() >= MAX_HEADERS),
            "the rewritten head is refused: {e:?}"
        ),
    }
});
