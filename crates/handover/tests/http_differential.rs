//! The differential harness of the HTTP edge: a corpus of tricky requests — every refusal the docs
//! list, the probes of issue 13, and the framing mutations public smuggling scanners try
//! (smuggler.py's Transfer-Encoding permutations, CL.TE / TE.CL / TE.TE, chunk-size tricks) —
//! sent through a real `http` listener to backends that record exactly what their own parser made
//! of the bytes (hyper; and, where installed, Python's http.server with a lenient chunked reader,
//! aiohttp's llhttp, gunicorn).
//!
//! The invariant, checked for every case, for HTTP/1.0 and 1.1, keep-alive and not, pipelined and
//! not: a request the proxy accepts arrives at the backend as exactly one request with the method,
//! target and body the case says; a request it refuses gets the case's status from the proxy and
//! nothing of it reaches a backend; a canary request sent after it on the same connection (or a
//! new one, where the connection must close) arrives as itself and gets its own answer; and
//! nothing else arrives. The corpus, by class, with the rule each class gets, is in
//! `docs/http.md`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Node;
use common::harness;
use common::raw::{RawClient, Received};
use common::recorder::{Record, Recorder};

fn main() {
    harness::main(vec![
        harness::test_async("the_corpus_holds_against_hyper", the_corpus_holds_against_hyper),
        harness::test_async(
            "the_corpus_holds_against_python_http_server",
            the_corpus_holds_against_python_http_server,
        )
        .needs(common::recorder::python_stdlib),
        harness::test_async(
            "the_corpus_holds_against_aiohttp",
            the_corpus_holds_against_aiohttp,
        )
        .needs(common::recorder::aiohttp),
        harness::test_async(
            "the_corpus_holds_against_gunicorn",
            the_corpus_holds_against_gunicorn,
        )
        .needs(common::recorder::gunicorn),
        harness::test(
            "every_case_name_is_unique_and_every_class_documented",
            every_case_name_is_unique_and_every_class_documented,
        ),
    ]);
}

/// What the proxy must do with a case.
#[derive(Debug, Clone)]
enum Expect {
    /// Forward it: the backend sees exactly this method, target and (decoded) body.
    Forward {
        method: &'static str,
        target: &'static str,
        body: Vec<u8>,
    },
    /// Answer it itself with this status and close the connection.
    Refuse(u16),
    /// Either refuse it (any 4xx or 5xx of the proxy's own) or forward it as described: used for
    /// generated mutations whose exact status is not the point, only that nothing is smuggled.
    ForwardOrRefuse {
        method: &'static str,
        target: &'static str,
        body: Vec<u8>,
    },
}

/// Which modes a case runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Modes {
    /// Keep-alive and not, pipelined and not.
    All,
    /// HTTP/1.1 keep-alive, sequential, against hyper only: cases that wait out a timeout.
    Slow,
    /// HTTP/1.1 keep-alive with the canary pipelined behind it (where a smuggled prefix would
    /// land): the generated families, which are many.
    Pipelined,
}

/// Which HTTP versions a case runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Versions {
    /// As written (HTTP/1.1) and rewritten to HTTP/1.0, with the same expectation.
    Both,
    /// Only as written.
    AsWritten,
}

/// One request of the corpus.
#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    class: &'static str,
    raw: Vec<u8>,
    expect: Expect,
    versions: Versions,
    /// Which modes it runs in.
    modes: Modes,
}

fn forward(
    name: &'static str,
    class: &'static str,
    raw: &[u8],
    method: &'static str,
    target: &'static str,
    body: &[u8],
) -> Case {
    Case {
        name,
        class,
        raw: raw.to_vec(),
        expect: Expect::Forward {
            method,
            target,
            body: body.to_vec(),
        },
        versions: Versions::Both,
        modes: Modes::All,
    }
}

fn refuse(name: &'static str, class: &'static str, raw: &[u8], status: u16) -> Case {
    Case {
        name,
        class,
        raw: raw.to_vec(),
        expect: Expect::Refuse(status),
        versions: Versions::Both,
        modes: Modes::All,
    }
}

impl Case {
    /// Only in the version it is written in.
    fn only_as_written(mut self) -> Self {
        self.versions = Versions::AsWritten;
        self
    }

    fn slow(mut self) -> Self {
        self.modes = Modes::Slow;
        self.versions = Versions::AsWritten;
        self
    }
}

/// The Transfer-Encoding gadgets of defparam's smuggler.py (`configs/exhaustive.py`): each as
/// the first field of a POST framed by its `Content-Length`, whose body a backend that took the
/// gadget for chunked would read as an empty chunked body followed by a smuggled request.
fn smuggler_gadgets() -> Vec<Case> {
    let mut gadgets: Vec<(String, Vec<u8>)> = [
        ("nameprefix1", &b" Transfer-Encoding: chunked"[..]),
        ("tabprefix1", b"Transfer-Encoding:\tchunked"),
        ("tabprefix2", b"Transfer-Encoding\t:\tchunked"),
        ("spacejoin1", b"Transfer Encoding: chunked"),
        ("underjoin1", b"Transfer_Encoding: chunked"),
        ("smashed", b"Transfer Encoding:chunked"),
        ("space1", b"Transfer-Encoding : chunked"),
        ("valueprefix1", b"Transfer-Encoding:  chunked"),
        ("vertprefix1", b"Transfer-Encoding:\x0bchunked"),
        ("commaCow", b"Transfer-Encoding: chunked, cow"),
        ("cowComma", b"Transfer-Encoding: cow, chunked"),
        ("contentEnc", b"Content-Encoding: chunked"),
        ("linewrapped1", b"Transfer-Encoding:\n chunked"),
        ("quoted", b"Transfer-Encoding: \"chunked\""),
        ("aposed", b"Transfer-Encoding: 'chunked'"),
        ("lazygrep", b"Transfer-Encoding: chunk"),
        ("sarcasm", b"TrAnSFer-EnCODinG: cHuNkeD"),
        ("yelling", b"TRANSFER-ENCODING: CHUNKED"),
        ("0dsuffix", b"Transfer-Encoding: chunked\r"),
        ("tabsuffix", b"Transfer-Encoding: chunked\t"),
        (
            "revdualchunk",
            b"Transfer-Encoding: cow\r\nTransfer-Encoding: chunked",
        ),
        ("0dspam", b"Transfer\r-Encoding: chunked"),
        ("nested", b"Transfer-Encoding: cow chunked bar"),
        ("spaceFF", b"Transfer-Encoding:\xffchunked"),
        ("accentCH", b"Transfer-Encoding: ch\x96nked"),
        ("accentTE", b"Transf\x82r-Encoding: chunked"),
        ("x-rout", b"X:X\rTransfer-Encoding: chunked"),
        ("x-nout", b"X:X\nTransfer-Encoding: chunked"),
    ]
    .into_iter()
    .map(|(name, gadget)| (name.to_string(), gadget.to_vec()))
    .collect();
    for i in (0x01u8..0x20).chain(0x7f..=0xff) {
        gadgets.push((
            format!("midspace-{i:02x}"),
            [&b"Transfer-Encoding:"[..], &[i], b"chunked"].concat(),
        ));
        gadgets.push((
            format!("postspace-{i:02x}"),
            [&b"Transfer-Encoding"[..], &[i], b": chunked"].concat(),
        ));
        gadgets.push((
            format!("prespace-{i:02x}"),
            [&[i][..], b"Transfer-Encoding: chunked"].concat(),
        ));
        gadgets.push((
            format!("endspace-{i:02x}"),
            [&b"Transfer-Encoding: chunked"[..], &[i]].concat(),
        ));
    }
    let body = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    gadgets
        .into_iter()
        .map(|(name, gadget)| {
            let mut raw = b"POST /gadget HTTP/1.1\r\n".to_vec();
            raw.extend_from_slice(&gadget);
            raw.extend_from_slice(
                format!("\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            );
            raw.extend_from_slice(body);
            Case {
                name: Box::leak(format!("smuggler-{name}").into_boxed_str()),
                class: "te-gadgets",
                raw,
                expect: Expect::ForwardOrRefuse {
                    method: "POST",
                    target: "/gadget",
                    body: body.to_vec(),
                },
                versions: Versions::AsWritten,
                modes: Modes::Pipelined,
            }
        })
        .collect()
}

/// A chunked POST to `/chunked` with this body section.
fn chunked(body: &str) -> Vec<u8> {
    format!("POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}").into_bytes()
}

/// A POST to `/te` whose Transfer-Encoding field line is `line`, with a valid chunked body.
fn te_line(line: &str) -> Vec<u8> {
    format!("POST /te HTTP/1.1\r\nHost: t\r\n{line}\r\n\r\n5\r\nhello\r\n0\r\n\r\n").into_bytes()
}

/// A GET of `/` with these extra header lines.
fn get_with(lines: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\n{lines}\r\n").into_bytes()
}

fn corpus() -> Vec<Case> {
    let mut cases = vec![
        // --- valid requests: forwarded as they mean ---
        forward("get", "valid", b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n", "GET", "/plain", b""),
        forward("get-query", "valid", b"GET /a%20b?x=1&y=%2F HTTP/1.1\r\nHost: t\r\n\r\n", "GET", "/a%20b?x=1&y=%2F", b""),
        forward("head", "valid", b"HEAD /head HTTP/1.1\r\nHost: t\r\n\r\n", "HEAD", "/head", b""),
        forward("post-length", "valid", b"POST /cl HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", "POST", "/cl", b"hello"),
        forward("post-empty", "valid", b"POST /empty HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", "POST", "/empty", b""),
        forward("put-binary", "valid", b"PUT /bin HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n\x00\r\n\xff\x01\n", "PUT", "/bin", b"\x00\r\n\xff\x01\n"),
        forward("options-asterisk", "valid", b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", "OPTIONS", "*", b""),
        forward("absolute-form", "valid", b"GET http://t/abs?q=1 HTTP/1.1\r\nHost: other\r\n\r\n", "GET", "/abs?q=1", b""),
        forward("absolute-form-bare-query", "valid", b"GET http://t?q HTTP/1.1\r\nHost: t\r\n\r\n", "GET", "/?q", b""),
        forward("lowercase-names", "valid", b"POST /lower HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nok", "POST", "/lower", b"ok"),
        forward("bare-lf", "valid", b"POST /lf HTTP/1.1\nHost: t\nContent-Length: 2\n\nok", "POST", "/lf", b"ok"),
        forward("leading-empty-line", "valid", b"\r\nGET /lead HTTP/1.1\r\nHost: t\r\n\r\n", "GET", "/lead", b""),
        forward("hop-by-hop", "valid", b"GET /hop HTTP/1.1\r\nHost: t\r\nConnection: X-Drop\r\nX-Drop: 1\r\nKeep-Alive: timeout=1\r\nTE: trailers\r\nUpgrade: websocket\r\nProxy-Connection: close\r\n\r\n", "GET", "/hop", b""),
        forward("h2c-upgrade", "valid", b"GET /h2c HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", "GET", "/h2c", b""),
        forward("obs-text-value", "valid", b"GET /text HTTP/1.1\r\nHost: t\r\nX-Text: caf\xe9\r\n\r\n", "GET", "/text", b""),
        forward("tab-in-value", "valid", b"GET /tab HTTP/1.1\r\nHost: t\r\nX-Tab:\ta\tb\r\n\r\n", "GET", "/tab", b""),
        forward("empty-value", "valid", b"GET /ev HTTP/1.1\r\nHost: t\r\nX-Empty:\r\n\r\n", "GET", "/ev", b""),
        forward("extension-method", "valid", b"PURGE /cache HTTP/1.1\r\nHost: t\r\n\r\n", "PURGE", "/cache", b""),
        forward("dot-segments", "valid", b"GET /a//b/../c HTTP/1.1\r\nHost: t\r\n\r\n", "GET", "/a//b/../c", b""),
        forward("host-ipv6", "valid", b"GET /v6 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", "GET", "/v6", b""),
        forward("forwarded-for-chain", "valid", b"GET /xff HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: X-Forwarded-For\r\n\r\n", "GET", "/xff", b""),
        // --- Content-Length: one value, plain digits ---
        forward("length-twice-equal", "content-length", b"POST /cl2 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "POST", "/cl2", b"hello"),
        forward("length-list-equal", "content-length", b"POST /cll HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello", "POST", "/cll", b"hello"),
        forward("length-leading-zeros", "content-length", b"POST /cl0 HTTP/1.1\r\nHost: t\r\nContent-Length: 0005\r\n\r\nhello", "POST", "/cl0", b"hello"),
        refuse("length-twice-differing", "content-length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
        refuse("length-list-differing", "content-length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!", 400),
        refuse("length-plus", "content-length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello", 400),
        refuse("length-minus", "content-length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
        refuse("length-hex", "content-length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0x5\r\n\r\nhello", 400),
        refuse("length-decimal-point", "content-length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5.0\r\n\r\nhello", 400),
        refuse("length-space-inside", "content-length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5 5\r\n\r\nhello", 400),
        refuse("length-empty", "content-length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length:\r\n\r\n", 400),
        refuse("length-underscore-digits", "content-length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1_0\r\n\r\n0123456789", 400),
        refuse("length-too-large", "content-length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        refuse("length-space-before-colon", "content-length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\nhello", 400),
        // --- Connection may not name a framing or routing field ---
        refuse("connection-content-length", "connection-names-framing", b"POST / HTTP/1.1\r\nHost: t\r\nConnection: Content-Length\r\nContent-Length: 40\r\n\r\nGET /other?SMUGGLED HTTP/1.1\r\nX-Ignore: ", 400),
        refuse("connection-content-length-lowercase", "connection-names-framing", b"POST / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, content-length\r\nContent-Length: 5\r\n\r\nhello", 400),
        refuse("connection-second-field", "connection-names-framing", b"POST / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello", 400),
        refuse("connection-transfer-encoding", "connection-names-framing", b"POST / HTTP/1.1\r\nHost: t\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n28\r\nGET /other?SMUGGLED HTTP/1.1\r\nX-Ignore: \r\n0\r\n\r\n", 400).only_as_written(),
        refuse("connection-host", "connection-names-framing", b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Host\r\n\r\n", 400),
        // --- Content-Length with Transfer-Encoding (CL.TE, TE.CL) ---
        refuse("cl-te", "length-and-coding", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", 400).only_as_written(),
        refuse("te-cl", "length-and-coding", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", 400).only_as_written(),
        refuse("te-cl-zero", "length-and-coding", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n", 400).only_as_written(),
        refuse("te-in-http10", "length-and-coding", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400).only_as_written(),
        // --- Transfer-Encoding: exactly chunked, once, last ---
        forward("te-uppercase", "transfer-encoding", &te_line("Transfer-Encoding: CHUNKED"), "POST", "/te", b"hello").only_as_written(),
        forward("te-padded", "transfer-encoding", &te_line("Transfer-Encoding:   chunked  "), "POST", "/te", b"hello").only_as_written(),
        forward("te-tab", "transfer-encoding", &te_line("Transfer-Encoding:\tchunked"), "POST", "/te", b"hello").only_as_written(),
        forward("te-empty-member", "transfer-encoding", &te_line("Transfer-Encoding: , chunked"), "POST", "/te", b"hello").only_as_written(),
        refuse("te-xchunked", "transfer-encoding", &te_line("Transfer-Encoding: xchunked"), 400).only_as_written(),
        refuse("te-chunk", "transfer-encoding", &te_line("Transfer-Encoding: chunk"), 400).only_as_written(),
        refuse("te-quoted", "transfer-encoding", &te_line("Transfer-Encoding: \"chunked\""), 400).only_as_written(),
        refuse("te-parameter", "transfer-encoding", &te_line("Transfer-Encoding: chunked;q=1"), 400).only_as_written(),
        refuse("te-identity", "transfer-encoding", &te_line("Transfer-Encoding: identity"), 400).only_as_written(),
        refuse("te-chunked-identity", "transfer-encoding", &te_line("Transfer-Encoding: chunked, identity"), 400).only_as_written(),
        refuse("te-twice-one-field", "transfer-encoding", &te_line("Transfer-Encoding: chunked, chunked"), 400).only_as_written(),
        refuse("te-twice-two-fields", "transfer-encoding", &te_line("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"), 400).only_as_written(),
        refuse("te-second-field-other", "transfer-encoding", &te_line("Transfer-Encoding: chunked\r\nTransfer-Encoding: x"), 400).only_as_written(),
        refuse("te-gzip-chunked", "transfer-encoding", &te_line("Transfer-Encoding: gzip, chunked"), 501).only_as_written(),
        refuse("te-first-field-other", "transfer-encoding", &te_line("Transfer-Encoding: x\r\nTransfer-Encoding: chunked"), 501).only_as_written(),
        refuse("te-empty", "transfer-encoding", &te_line("Transfer-Encoding:"), 400).only_as_written(),
        refuse("te-vertical-tab", "transfer-encoding", &te_line("Transfer-Encoding: \x0bchunked"), 400).only_as_written(),
        refuse("te-nul", "transfer-encoding", &te_line("Transfer-Encoding: chunked\x00"), 400).only_as_written(),
        refuse("te-space-before-colon", "transfer-encoding", &te_line("Transfer-Encoding : chunked"), 400).only_as_written(),
        refuse("te-tab-before-colon", "transfer-encoding", &te_line("Transfer-Encoding\t: chunked"), 400).only_as_written(),
        refuse("te-folded", "transfer-encoding", &te_line("Transfer-Encoding:\r\n chunked"), 400).only_as_written(),
        refuse("te-folded-after", "transfer-encoding", &te_line("Transfer-Encoding: chunked\r\n x"), 400).only_as_written(),
        refuse("te-leading-space-name", "transfer-encoding", &te_line(" Transfer-Encoding: chunked"), 400).only_as_written(),
        refuse("te-underscore", "lookalike", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello", 400),
        refuse("cl-underscore", "lookalike", b"POST / HTTP/1.1\r\nHost: t\r\nContent_Length: 5\r\n\r\nhello", 400),
        // --- chunk framing ---
        forward("chunked-extensions-trailers", "chunked", &chunked("5;a=b\r\nhello\r\n6;q=\"x;y\"\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"), "POST", "/chunked", b"hello world").only_as_written(),
        forward("chunked-hex-upper", "chunked", &chunked("A\r\n0123456789\r\n0\r\n\r\n"), "POST", "/chunked", b"0123456789").only_as_written(),
        forward("chunked-leading-zeros", "chunked", &chunked("005\r\nhello\r\n000\r\n\r\n"), "POST", "/chunked", b"hello").only_as_written(),
        refuse("chunk-size-0x", "chunked", &chunked("0x5\r\nhello\r\n0\r\n\r\n"), 400).only_as_written(),
        refuse("chunk-size-plus", "chunked", &chunked("+5\r\nhello\r\n0\r\n\r\n"), 400).only_as_written(),
        refuse("chunk-size-minus", "chunked", &chunked("-5\r\nhello\r\n0\r\n\r\n"), 400).only_as_written(),
        refuse("chunk-size-leading-space", "chunked", &chunked(" 5\r\nhello\r\n0\r\n\r\n"), 400).only_as_written(),
        refuse("chunk-size-underscore", "chunked", &chunked("5_0\r\nhello\r\n0\r\n\r\n"), 400).only_as_written(),
        refuse("chunk-size-bare-lf", "chunked", &chunked("5\nhello\r\n0\r\n\r\n"), 400).only_as_written(),
        refuse("chunk-data-no-crlf", "chunked", &chunked("5\r\nhelloXX0\r\n\r\n"), 400).only_as_written(),
        refuse("chunk-data-bare-lf", "chunked", &chunked("5\r\nhello\n0\r\n\r\n"), 400).only_as_written(),
        refuse("chunk-size-overflow", "chunked", &chunked("fffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), 400).only_as_written(),
        refuse("chunk-ext-nul", "chunked", &chunked("5;a\x00b\r\nhello\r\n0\r\n\r\n"), 400).only_as_written(),
        refuse("chunk-last-bare-lf", "chunked", &chunked("5\r\nhello\r\n0\n\n"), 400).only_as_written(),
        refuse("chunk-ext-too-long", "chunked", &chunked(&format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(5000))), 400).only_as_written(),
        // --- Host ---
        refuse("host-missing", "host", b"GET / HTTP/1.1\r\n\r\n", 400).only_as_written(),
        refuse("host-missing-absolute", "host", b"GET http://t/ HTTP/1.1\r\n\r\n", 400).only_as_written(),
        forward("host-missing-http10", "host", b"GET /old HTTP/1.0\r\n\r\n", "GET", "/old", b"").only_as_written(),
        refuse("host-twice", "host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        refuse("host-empty", "host", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400),
        refuse("host-space", "host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        refuse("host-slash", "host", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        refuse("host-userinfo", "host", b"GET / HTTP/1.1\r\nHost: u@h\r\n\r\n", 400),
        refuse("host-bad-port", "host", b"GET / HTTP/1.1\r\nHost: h:80x\r\n\r\n", 400),
        // --- request targets ---
        refuse("target-fragment", "target", b"GET /a#frag HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refuse("target-asterisk-get", "target", b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refuse("target-authority-form", "target", b"GET t:80 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refuse("target-userinfo", "target", b"GET http://u@t/ HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refuse("target-other-scheme", "target", b"GET ftp://t/ HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refuse("target-space", "target", b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refuse("target-non-ascii", "target", b"GET /caf\xe9 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refuse("target-utf8", "target", "GET /café HTTP/1.1\r\nHost: t\r\n\r\n".as_bytes(), 400),
        refuse("connect", "target", b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n", 405),
        // --- head syntax ---
        refuse("http09", "syntax", b"GET /\r\n\r\n", 400).only_as_written(),
        refuse("version-1-2", "syntax", b"GET / HTTP/1.2\r\nHost: t\r\n\r\n", 400).only_as_written(),
        refuse("version-2", "syntax", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 400).only_as_written(),
        refuse("version-lowercase", "syntax", b"GET / http/1.1\r\nHost: t\r\n\r\n", 400).only_as_written(),
        refuse("method-lowercase", "syntax", b"get / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refuse("double-space", "syntax", b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refuse("trailing-space-line", "syntax", b"GET / HTTP/1.1 \r\nHost: t\r\n\r\n", 400).only_as_written(),
        refuse("nul-in-value", "syntax", b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n", 400),
        refuse("cr-in-value", "syntax", b"GET / HTTP/1.1\r\nHost: t\r\nX: a\rb\r\n\r\n", 400),
        refuse("no-colon", "syntax", b"GET / HTTP/1.1\r\nHost: t\r\nX-NoColon\r\n\r\n", 400),
        refuse("space-before-colon", "syntax", b"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400),
        refuse("obs-fold", "syntax", b"GET / HTTP/1.1\r\nHost: t\r\nX: 1\r\n folded\r\n\r\n", 400),
        refuse("leading-space-header", "syntax", b"GET / HTTP/1.1\r\n Host: t\r\n\r\n", 400),
        // --- limits ---
        refuse("too-many-fields", "limits", &get_with(&format!("Host: t\r\n{}", (0..101).map(|i| format!("X-{i}: 1\r\n")).collect::<String>())), 431),
        refuse("head-too-large", "limits", &get_with(&format!("Host: t\r\nX-Big: {}\r\n", "a".repeat(17 * 1024))), 431),
        // --- incomplete: the client stalls (client_timeout is 1 s here) ---
        refuse("stalled-head", "stalled", b"GET /stall HTTP/1.1\r\nHost: t\r\n", 408).slow(),
        refuse("stalled-length-body", "stalled", b"POST /stall HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc", 408).slow(),
        refuse("stalled-chunked-body", "stalled", &chunked("5\r\nhello\r\n0\r\n"), 408).slow(),
    ];
    cases.extend(smuggler_gadgets());
    cases.sort_by_key(|c| c.class);
    cases
}

/// The case as sent in `version` (0 or 1), with `Connection` set for `keep_alive` where the
/// version's default differs.
fn variant(case: &Case, version: u8, keep_alive: bool) -> Vec<u8> {
    let mut raw = case.raw.clone();
    if version == 0 && case.versions == Versions::Both {
        let at = find(&raw, b" HTTP/1.1").expect("cases are written in HTTP/1.1");
        raw[at + 8] = b'0';
    }
    let written_10 = find(&raw, b" HTTP/1.0").is_some();
    let line: &[u8] = match (written_10, keep_alive) {
        (false, false) => b"Connection: close\r\n",
        (true, true) => b"Connection: keep-alive\r\n",
        _ => b"",
    };
    if let Some(end) = raw.iter().position(|b| *b == b'\n')
        && !line.is_empty()
        && find(&raw, b"\r\n").is_some()
    {
        let skip_leading = raw.starts_with(b"\r\n");
        let at = if skip_leading {
            2 + raw[2..].iter().position(|b| *b == b'\n').unwrap_or(0) + 1
        } else {
            end + 1
        };
        raw.splice(at..at, line.iter().copied());
    }
    raw
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether the client may expect its connection to stay open after the case.
fn persistent(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw).to_ascii_lowercase();
    let http10 = text.contains(" http/1.0");
    let has = |line: &str| text.lines().any(|l| l.trim_end() == line);
    let close = has("connection: close");
    let keep = has("connection: keep-alive");
    if http10 { keep && !close } else { !close }
}

/// Reads the final response (skipping interim ones).
async fn final_response(client: &mut RawClient, head_request: bool) -> Option<Received> {
    loop {
        let response = tokio::time::timeout(Duration::from_secs(10), client.response_to(head_request))
            .await
            .ok()??;
        if !(100..200).contains(&response.status) {
            return Some(response);
        }
    }
}

/// One run of a case in one mode; `Err` describes how the invariant failed.
async fn run(
    node: &Node,
    backend: &Recorder,
    case: &Case,
    version: u8,
    keep_alive: bool,
    pipelined: bool,
    canary_number: &mut u64,
) -> Result<(), String> {
    let raw = variant(case, version, keep_alive);
    *canary_number += 1;
    let canary_target = format!("/canary-{canary_number}");
    let canary = format!("GET {canary_target} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes();
    let before = backend.records().len();
    let mut expected: Vec<(String, String, Vec<u8>)> = Vec::new();

    let mut client = RawClient::connect(node.listener("web")).await;
    let mut sent = raw.clone();
    if pipelined {
        sent.extend_from_slice(&canary);
    }
    client.send_some(&sent).await;
    let is_head = raw.starts_with(b"HEAD ");
    let answer = final_response(&mut client, is_head)
        .await
        .ok_or("no answer to the case")?;
    let mut canary_on_same = false;
    match &case.expect {
        Expect::Refuse(status) => {
            if answer.status != *status || answer.header("x-seq").is_some() {
                return Err(format!(
                    "expected the proxy's {status}, got {} {}",
                    answer.status,
                    answer.text()
                ));
            }
            if !client.closed_within(Duration::from_secs(5)).await {
                return Err("the connection stayed open after a refusal".into());
            }
        }
        Expect::ForwardOrRefuse { .. } if answer.header("x-seq").is_none() => {
            if answer.status < 400 {
                return Err(format!(
                    "neither forwarded nor refused: {} {}",
                    answer.status,
                    answer.text()
                ));
            }
            if !client.closed_within(Duration::from_secs(5)).await {
                return Err("the connection stayed open after a refusal".into());
            }
        }
        Expect::Forward { method, target, body } | Expect::ForwardOrRefuse { method, target, body } => {
            let seq: u64 = answer
                .header("x-seq")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("no backend answer: {} {}", answer.status, answer.text()))?;
            let records = backend.records();
            let record = records
                .iter()
                .find(|r| r.seq == seq)
                .ok_or("the answer names no recorded request")?;
            if (record.method.as_str(), record.target.as_str(), &record.body) != (*method, *target, body) {
                return Err(format!(
                    "the backend parsed {} {} {:?}, expected {method} {target} {:?}",
                    record.method,
                    record.target,
                    String::from_utf8_lossy(&record.body),
                    String::from_utf8_lossy(body)
                ));
            }
            expected.push((method.to_string(), target.to_string(), body.clone()));
            if persistent(&raw) {
                canary_on_same = true;
            } else if !client.closed_within(Duration::from_secs(5)).await {
                return Err("the connection stayed open after a response the client asked to close".into());
            }
        }
    }
    // The canary: on the same connection where it stays open, else on a new one (a pipelined
    // canary behind a closing request is dropped with the connection).
    if canary_on_same || !pipelined {
        if !canary_on_same {
            client = RawClient::connect(node.listener("web")).await;
        }
        if !(pipelined && canary_on_same) {
            client.send(&canary).await;
        }
        let answer = final_response(&mut client, false)
            .await
            .ok_or("no answer to the canary")?;
        let seq: u64 = answer
            .header("x-seq")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("the canary got {} {}", answer.status, answer.text()))?;
        let records = backend.records();
        let record = records
            .iter()
            .find(|r| r.seq == seq)
            .ok_or("canary not recorded")?;
        if record.target != canary_target {
            return Err(format!(
                "the canary got the answer to {} {}",
                record.method, record.target
            ));
        }
        expected.push(("GET".into(), canary_target.clone(), Vec::new()));
    }
    let arrived: Vec<(String, String, Vec<u8>)> = backend.records()[before..]
        .iter()
        .map(|r: &Record| (r.method.clone(), r.target.clone(), r.body.clone()))
        .collect();
    if arrived != expected {
        return Err(format!(
            "the backend saw {:?}, expected exactly {:?}",
            arrived
                .iter()
                .map(|(m, t, b)| format!("{m} {t} {:?}", String::from_utf8_lossy(b)))
                .collect::<Vec<_>>(),
            expected
                .iter()
                .map(|(m, t, b)| format!("{m} {t} {:?}", String::from_utf8_lossy(b)))
                .collect::<Vec<_>>()
        ));
    }
    Ok(())
}

fn config(backend: SocketAddr) -> String {
    format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nclient_timeout = \"1s\"\n\n{}",
        common::pool_toml("p", "", &[backend])
    )
}

/// Runs the whole corpus in every mode against one backend; fails with every violation.
async fn corpus_holds_against(kind: &'static str, test: &str) {
    let backend = match kind {
        "hyper" => Recorder::hyper().await,
        python => match Recorder::python(python) {
            Ok(backend) => backend,
            Err(reason) => panic!("{test}: the {python} backend cannot start: {reason}"),
        },
    };
    let node = Node::start_with(&config(backend.address()), &["--workers", "1"]);
    let mut failures = Vec::new();
    let mut runs = 0;
    let mut canary = 0;
    for case in corpus() {
        if case.modes == Modes::Slow && kind != "hyper" {
            continue;
        }
        let versions: &[u8] = if case.versions == Versions::Both {
            &[1, 0]
        } else {
            &[1]
        };
        for &version in versions {
            for keep_alive in [true, false] {
                for pipelined in [false, true] {
                    let wanted = match case.modes {
                        Modes::All => true,
                        Modes::Slow => keep_alive && !pipelined,
                        Modes::Pipelined => keep_alive && pipelined,
                    };
                    if !wanted {
                        continue;
                    }
                    runs += 1;
                    if let Err(why) = run(
                        &node,
                        &backend,
                        &case,
                        version,
                        keep_alive,
                        pipelined,
                        &mut canary,
                    )
                    .await
                    {
                        failures.push(format!(
                            "{} [{}] HTTP/1.{version} {} {}: {why}",
                            case.name,
                            case.class,
                            if keep_alive { "keep-alive" } else { "close" },
                            if pipelined { "pipelined" } else { "sequential" },
                        ));
                    }
                }
            }
        }
    }
    eprintln!("{kind}: {runs} runs of {} cases", corpus().len());
    assert!(
        failures.is_empty(),
        "{kind}: {} of {runs} runs broke the invariant:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

async fn the_corpus_holds_against_hyper() {
    corpus_holds_against("hyper", "the_corpus_holds_against_hyper").await;
}

async fn the_corpus_holds_against_python_http_server() {
    corpus_holds_against("stdlib", "the_corpus_holds_against_python_http_server").await;
}

async fn the_corpus_holds_against_aiohttp() {
    corpus_holds_against("aiohttp", "the_corpus_holds_against_aiohttp").await;
}

async fn the_corpus_holds_against_gunicorn() {
    corpus_holds_against("gunicorn", "the_corpus_holds_against_gunicorn").await;
}

fn every_case_name_is_unique_and_every_class_documented() {
    let cases = corpus();
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "duplicate case names");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/http.md"))
        .expect("docs/http.md");
    for class in cases.iter().map(|c| c.class) {
        assert!(
            docs.contains(&format!("`{class}`")),
            "docs/http.md does not describe class {class}"
        );
    }
}
