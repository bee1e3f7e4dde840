//! `http_response_head`: the L7 listener's response head parser and rewriter
//! (`handover_proxy::http::head::parse_response`) on arbitrary backend bytes.
//!
//! The first byte chooses the request the response answers (bit 0: `HEAD`; bit 1: the client
//! spoke HTTP/1.1; bit 2: the client connection may stay open; bit 3: a sticky cookie is set);
//! the rest is what the backend sent. A response the proxy accepts must come out as exactly one
//! HTTP/1.1 head with the same status, the same body framing when parsed again, no hop-by-hop
//! header but the proxy's own `Connection` (which says truly whether the client connection stays
//! open), at most one `Content-Length` and never one beside `Transfer-Encoding`; every other header
//! passes in order. `head_len` never exceeds the input.

#![no_main]

use handover_fuzz::http::{Header, connection_tokens, decimal, is_fixed_hop_by_hop, is_framing_or_routing};
use handover_proxy::buffer::{Buffer, CAPACITY};
use handover_proxy::http::head::{Framing, MAX_HEADERS, ResponseContext, parse_response};
use libfuzzer_sys::fuzz_target;

const COOKIE: &str = "hv=1-vm-b; Path=/";

/// A response head as `httparse` reads it, owned.
struct Parsed {
    version: u8,
    status: u16,
    headers: Vec<Header>,
    len: usize,
}

fn parse_with_httparse(bytes: &[u8]) -> Option<Parsed> {
    let mut headers = [httparse::EMPTY_HEADER; 4 * MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    Some(Parsed {
        version: response.version?,
        status: response.code?,
        headers: response.headers.iter().map(Header::of).collect(),
        len,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let context = ResponseContext {
        is_head: flags & 1 != 0,
        client_version: (flags >> 1) & 1,
        client_keep_alive: flags & 4 != 0,
        set_cookie: (flags & 8 != 0).then_some(COOKIE),
        upgrade: flags & 16 != 0,
    };
    let mut out = Buffer::take();
    let response = match parse_response(bytes, &context, &mut out) {
        Ok(Some(response)) => response,
        Ok(None) => return,
        Err(e) => {
            assert!(!e.0.is_empty(), "a refusal without a reason");
            return;
        }
    };
    assert!(response.head_len <= bytes.len(), "head_len beyond the input");
    let input = parse_with_httparse(bytes).expect("an accepted head is a complete head");
    assert_eq!(input.len, response.head_len, "head_len differs from httparse's");
    assert_eq!(input.status, response.status);
    // A 101 that switches to WebSocket is the final response, not an interim one.
    assert_eq!(
        response.interim,
        (100..200).contains(&response.status) && !response.switching
    );
    assert!(
        !response.client_keep_alive || (context.client_keep_alive && response.framing != Framing::UntilClose),
        "the client connection is kept after a body that ends at close, or against the client"
    );

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
    assert_eq!(output.version, 1, "the status line does not say HTTP/1.1");
    assert_eq!(output.status, input.status, "status changed");

    // A 101 joins the connections: only to an upgrade the proxy passed on, and it keeps
    // `Upgrade` and says `Connection: Upgrade`; nothing else hop-by-hop goes through.
    if response.switching {
        assert!(context.upgrade, "a 101 accepted for a request without Upgrade");
        assert_eq!(response.status, 101);
        assert!(!response.upstream_reusable && !response.client_keep_alive);
        for header in &output.headers {
            assert!(
                header.is("upgrade") || !is_fixed_hop_by_hop(&header.name),
                "hop-by-hop header {} forwarded with a 101",
                header.name
            );
        }
        let connection: Vec<&[u8]> = output
            .headers
            .iter()
            .filter(|h| h.is("connection"))
            .map(|h| h.value.as_slice())
            .collect();
        assert_eq!(connection, vec![&b"Upgrade"[..]], "a 101 without Connection: Upgrade");
        return;
    }

    // Hop-by-hop headers go; the proxy's own Connection says what it will do.
    let named = connection_tokens(&input.headers);
    for header in &output.headers {
        assert!(
            !is_fixed_hop_by_hop(&header.name),
            "hop-by-hop header {} forwarded",
            header.name
        );
        // The proxy's own `Connection` (checked below) and sticky cookie.
        let own = header.is("connection")
            || (header.is("set-cookie") && context.set_cookie.is_some_and(|c| header.value == c.as_bytes()));
        assert!(
            !named.iter().any(|n| header.is(n)) || is_framing_or_routing(&header.name) || own,
            "header {} named by Connection forwarded",
            header.name
        );
    }
    let connection: Vec<&[u8]> = output
        .headers
        .iter()
        .filter(|h| h.is("connection"))
        .map(|h| h.value.as_slice())
        .collect();
    let expected: Vec<&[u8]> = if response.interim {
        vec![]
    } else if !response.client_keep_alive {
        vec![b"close"]
    } else if context.client_version == 0 {
        vec![b"keep-alive"]
    } else {
        vec![]
    };
    assert_eq!(
        connection, expected,
        "Connection does not say what the proxy does"
    );

    // Framing the client cannot read two ways: never a length beside a coding, at most one length,
    // and a body of n bytes announced by a length that is plain digits saying n (RFC 9110 §8.6:
    // a list is not forwarded as it came).
    let lengths: Vec<&Header> = output.headers.iter().filter(|h| h.is("content-length")).collect();
    let codings = output
        .headers
        .iter()
        .filter(|h| h.is("transfer-encoding"))
        .count();
    assert!(
        lengths.len() <= 1,
        "{} Content-Length headers forwarded",
        lengths.len()
    );
    assert!(
        lengths.is_empty() || codings == 0,
        "Content-Length forwarded beside Transfer-Encoding"
    );
    if let (Framing::Length(n), [length]) = (response.framing, lengths.as_slice()) {
        assert_eq!(
            decimal(&length.value),
            Some(n),
            "Content-Length {:?} does not say the body's length",
            String::from_utf8_lossy(&length.value)
        );
    }
    if let Some(cookie) = context.set_cookie.filter(|_| !response.interim) {
        assert!(
            output
                .headers
                .iter()
                .any(|h| h.is("set-cookie") && h.value == cookie.as_bytes()),
            "the sticky cookie is missing"
        );
    }

    // A length goes on once, unless beside a coding (RFC 9112 §6.3); checked above that it says
    // the body's length.
    let coded = input.headers.iter().any(|h| h.is("transfer-encoding"));
    let length_in = input.headers.iter().any(|h| h.is("content-length"));
    assert_eq!(
        lengths.len(),
        usize::from(length_in && !coded),
        "a length dropped or added"
    );
    // Every other header passes, in order (the length may move: a list of equal lengths is
    // written as one length after the other fields).
    let kept_in: Vec<&Header> = input
        .headers
        .iter()
        .filter(|h| {
            !(is_fixed_hop_by_hop(&h.name)
                || h.is("connection")
                || h.is("content-length")
                || (named.iter().any(|n| h.is(n)) && !is_framing_or_routing(&h.name)))
        })
        .collect();
    let added = usize::from(context.set_cookie.is_some() && !response.interim);
    let others = |h: &&Header| !h.is("connection") && !h.is("content-length");
    let kept_out: Vec<&Header> = output
        .headers
        .iter()
        .filter(others)
        .take(output.headers.iter().filter(others).count() - added)
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

    // Parsed again, the rewritten head frames the body the same way.
    let mut again = Buffer::take();
    match parse_response(&output_bytes, &context, &mut again) {
        Ok(Some(second)) => {
            assert_eq!(second.framing, response.framing, "framing changed");
            assert_eq!(second.status, response.status);
            assert_eq!(second.head_len, output_bytes.len());
            assert_eq!(second.client_keep_alive, response.client_keep_alive);
        }
        Ok(None) => panic!("the rewritten head is incomplete"),
        Err(e) => assert!(
            output_bytes.len() + 64 > CAPACITY || output.headers.len() >= MAX_HEADERS,
            "the rewritten head is refused: {e}"
        ),
    }
});
