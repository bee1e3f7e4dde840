//! The differential harness of HTTP/2 → HTTP/1.1 downgrades: requests a proxy could turn into
//! two HTTP/1.1 requests once it re-frames them (the H2.TE and H2.CL classes of request
//! smuggling, connection-specific fields, CR/LF and other bytes HTTP/1.1 reads as structure),
//! written frame by frame by a raw HTTP/2 client (`common::h2raw`) to a cleartext `http2 = true`
//! listener, and forwarded to the recording backends of the HTTP/1.1 harness (hyper, Python's
//! http.server, aiohttp, gunicorn), which say what their own parser made of the bytes.
//!
//! The invariant, for every case: a request the proxy accepts arrives as exactly one request with
//! the case's method, target and body; a refused one (a 4xx of the proxy's, RST_STREAM or GOAWAY)
//! leaves nothing at the backend — except where the client's headers announce a body its DATA
//! then contradicts, where the backend may have the announced request cut short, never more; a
//! canary request after it, on the same connection where it is still open, arrives as itself and
//! gets its own answer; nothing else arrives. The classes are listed in `docs/http.md`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Node;
use common::h2raw::{H2Raw, Outcome, Part, fields};
use common::harness;
use common::recorder::Recorder;

fn main() {
    harness::main(vec![
        harness::test_async(
            "downgraded_http2_requests_hold_against_hyper",
            downgraded_http2_requests_hold_against_hyper,
        ),
        harness::test_async(
            "downgraded_http2_requests_hold_against_python_http_server",
            downgraded_http2_requests_hold_against_python_http_server,
        )
        .needs(common::recorder::python_stdlib),
        harness::test_async(
            "downgraded_http2_requests_hold_against_aiohttp",
            downgraded_http2_requests_hold_against_aiohttp,
        )
        .needs(common::recorder::aiohttp),
        harness::test_async(
            "downgraded_http2_requests_hold_against_gunicorn",
            downgraded_http2_requests_hold_against_gunicorn,
        )
        .needs(common::recorder::gunicorn),
        harness::test(
            "every_downgrade_case_is_named_once_and_every_class_documented",
            every_downgrade_case_is_named_once_and_every_class_documented,
        ),
    ]);
}

/// What the proxy must do with a case.
#[derive(Debug, Clone)]
enum Expect {
    /// Forward it: the backend sees exactly this method, target and body.
    Forward {
        method: &'static str,
        target: &'static str,
        body: Vec<u8>,
    },
    /// Refuse it: nothing reaches a backend.
    Refuse,
    /// Its DATA contradicts its `content-length`: the stream fails, and the backend sees at most
    /// the announced request with part of its body — never a second request.
    AtMost {
        method: &'static str,
        target: &'static str,
    },
}

#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    class: &'static str,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    parts: Vec<Part>,
    expect: Expect,
}

/// The request-pseudo-fields of `METHOD path` with authority `t`, then `more`.
fn request(method: &str, path: &str, more: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut all = fields(&[
        (":method", method),
        (":scheme", "http"),
        (":authority", "t"),
        (":path", path),
    ]);
    all.extend(fields(more));
    all
}

fn data(bytes: &[u8]) -> Part {
    Part::Data(bytes.to_vec())
}

const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";

fn forward(
    name: &'static str,
    class: &'static str,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    parts: Vec<Part>,
    method: &'static str,
    target: &'static str,
    body: &[u8],
) -> Case {
    Case {
        name,
        class,
        fields,
        parts,
        expect: Expect::Forward {
            method,
            target,
            body: body.to_vec(),
        },
    }
}

fn refuse(
    name: &'static str,
    class: &'static str,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    parts: Vec<Part>,
) -> Case {
    Case {
        name,
        class,
        fields,
        parts,
        expect: Expect::Refuse,
    }
}

fn at_most(
    name: &'static str,
    class: &'static str,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    parts: Vec<Part>,
) -> Case {
    Case {
        name,
        class,
        fields,
        parts,
        expect: Expect::AtMost {
            method: "POST",
            target: "/x",
        },
    }
}

fn corpus() -> Vec<Case> {
    let mut smuggle_chunked = b"0\r\n\r\n".to_vec();
    smuggle_chunked.extend_from_slice(SMUGGLED);
    let mut cl_then_request = b"hello".to_vec();
    cl_then_request.extend_from_slice(SMUGGLED);
    vec![
        // --- valid requests, forwarded as they mean ---
        forward(
            "h2-get",
            "h2-valid",
            request("GET", "/plain", &[]),
            vec![],
            "GET",
            "/plain",
            b"",
        ),
        forward(
            "h2-get-query",
            "h2-valid",
            request("GET", "/a%20b?x=1", &[]),
            vec![],
            "GET",
            "/a%20b?x=1",
            b"",
        ),
        forward(
            "h2-post-length",
            "h2-valid",
            request("POST", "/cl", &[("content-length", "5")]),
            vec![data(b"hello")],
            "POST",
            "/cl",
            b"hello",
        ),
        forward(
            "h2-post-length-split",
            "h2-valid",
            request("POST", "/split", &[("content-length", "10")]),
            vec![data(b"01234"), data(b""), data(b"56789")],
            "POST",
            "/split",
            b"0123456789",
        ),
        forward(
            "h2-post-no-length",
            "h2-valid",
            request("POST", "/nolen", &[]),
            vec![data(b"hel"), data(b"lo")],
            "POST",
            "/nolen",
            b"hello",
        ),
        forward(
            "h2-post-no-length-binary",
            "h2-valid",
            request("PUT", "/bin", &[]),
            vec![data(b"\x00\r\n0\r\n\r\n\xff")],
            "PUT",
            "/bin",
            b"\x00\r\n0\r\n\r\n\xff",
        ),
        forward(
            "h2-request-trailers",
            "h2-valid",
            request("POST", "/trailers", &[]),
            vec![data(b"abc"), Part::Trailers(fields(&[("x-check", "1")]))],
            "POST",
            "/trailers",
            b"abc",
        ),
        forward(
            "h2-cookies-split",
            "h2-valid",
            request("GET", "/cookies", &[("cookie", "a=1"), ("cookie", "b=2")]),
            vec![],
            "GET",
            "/cookies",
            b"",
        ),
        forward(
            "h2-te-trailers",
            "h2-valid",
            request("GET", "/te", &[("te", "trailers")]),
            vec![],
            "GET",
            "/te",
            b"",
        ),
        forward(
            "h2-host-and-authority",
            "h2-valid",
            request("GET", "/host", &[("host", "other")]),
            vec![],
            "GET",
            "/host",
            b"",
        ),
        forward(
            "h2-empty-data-end",
            "h2-valid",
            request("POST", "/empty", &[("content-length", "0")]),
            vec![data(b"")],
            "POST",
            "/empty",
            b"",
        ),
        // --- H2.TE: Transfer-Encoding in HTTP/2 ---
        refuse(
            "h2-te-chunked",
            "h2-te",
            request("POST", "/x", &[("transfer-encoding", "chunked")]),
            vec![data(&smuggle_chunked)],
        ),
        refuse(
            "h2-te-chunked-with-length",
            "h2-te",
            request(
                "POST",
                "/x",
                &[("transfer-encoding", "chunked"), ("content-length", "5")],
            ),
            vec![data(&smuggle_chunked)],
        ),
        refuse(
            "h2-te-identity",
            "h2-te",
            request("POST", "/x", &[("transfer-encoding", "identity")]),
            vec![data(b"hello")],
        ),
        refuse(
            "h2-te-header-gzip",
            "h2-te",
            request("GET", "/x", &[("te", "gzip")]),
            vec![],
        ),
        // Malformed trailers reset a stream whose head and body are already on their way.
        at_most(
            "h2-te-in-trailers",
            "h2-te",
            request("POST", "/x", &[]),
            vec![
                data(b"abc"),
                Part::Trailers(fields(&[("transfer-encoding", "chunked")])),
            ],
        ),
        // --- H2.CL: content-length against the DATA frames ---
        at_most(
            "h2-cl-zero-with-request",
            "h2-cl",
            request("POST", "/x", &[("content-length", "0")]),
            vec![data(SMUGGLED)],
        ),
        at_most(
            "h2-cl-shorter-one-frame",
            "h2-cl",
            request("POST", "/x", &[("content-length", "5")]),
            vec![data(&cl_then_request)],
        ),
        at_most(
            "h2-cl-shorter-two-frames",
            "h2-cl",
            request("POST", "/x", &[("content-length", "5")]),
            vec![data(b"hello"), data(SMUGGLED)],
        ),
        at_most(
            "h2-cl-longer",
            "h2-cl",
            request("POST", "/x", &[("content-length", "50")]),
            vec![data(b"hello")],
        ),
        refuse(
            "h2-cl-without-data",
            "h2-cl",
            request("POST", "/x", &[("content-length", "5")]),
            vec![],
        ),
        refuse(
            "h2-cl-plus",
            "h2-cl",
            request("POST", "/x", &[("content-length", "+5")]),
            vec![data(b"hello")],
        ),
        refuse(
            "h2-cl-list",
            "h2-cl",
            request("POST", "/x", &[("content-length", "5, 6")]),
            vec![data(b"hello")],
        ),
        refuse(
            "h2-cl-twice-differing",
            "h2-cl",
            request("POST", "/x", &[("content-length", "5"), ("content-length", "6")]),
            vec![data(b"hello")],
        ),
        refuse(
            "h2-cl-lookalike",
            "h2-cl",
            request("POST", "/x", &[("content_length", "5")]),
            vec![data(b"hello")],
        ),
        // --- connection-specific fields (RFC 9113 §8.2.2) ---
        refuse(
            "h2-connection",
            "h2-connection-specific",
            request("GET", "/x", &[("connection", "close")]),
            vec![],
        ),
        refuse(
            "h2-connection-names-length",
            "h2-connection-specific",
            request(
                "POST",
                "/x",
                &[("connection", "content-length"), ("content-length", "5")],
            ),
            vec![data(b"hello")],
        ),
        refuse(
            "h2-keep-alive",
            "h2-connection-specific",
            request("GET", "/x", &[("keep-alive", "timeout=5")]),
            vec![],
        ),
        refuse(
            "h2-proxy-connection",
            "h2-connection-specific",
            request("GET", "/x", &[("proxy-connection", "keep-alive")]),
            vec![],
        ),
        refuse(
            "h2-upgrade",
            "h2-connection-specific",
            request("GET", "/x", &[("upgrade", "websocket")]),
            vec![],
        ),
        // --- bytes HTTP/1.1 reads as structure ---
        refuse(
            "h2-value-crlf",
            "h2-injection",
            request("GET", "/x", &[("x-a", "1\r\nTransfer-Encoding: chunked")]),
            vec![],
        ),
        refuse(
            "h2-value-lf",
            "h2-injection",
            request("GET", "/x", &[("x-a", "1\nHost: evil")]),
            vec![],
        ),
        refuse(
            "h2-value-nul",
            "h2-injection",
            request("GET", "/x", &[("x-a", "1\0")]),
            vec![],
        ),
        refuse(
            "h2-name-uppercase",
            "h2-injection",
            request("GET", "/x", &[("X-Upper", "1")]),
            vec![],
        ),
        refuse(
            "h2-name-space",
            "h2-injection",
            request("GET", "/x", &[("x a", "1")]),
            vec![],
        ),
        refuse(
            "h2-name-colon",
            "h2-injection",
            request("GET", "/x", &[("x:a", "1")]),
            vec![],
        ),
        refuse(
            "h2-path-space",
            "h2-injection",
            request("GET", "/a b", &[]),
            vec![],
        ),
        refuse(
            "h2-path-request-line",
            "h2-injection",
            request("GET", "/a HTTP/1.1\r\nHost: t\r\n\r\nGET /smuggled", &[]),
            vec![],
        ),
        refuse(
            "h2-method-space",
            "h2-injection",
            request("GET /smuggled HTTP/1.1\r\nX:", "/x", &[]),
            vec![],
        ),
        refuse(
            "h2-method-lowercase",
            "h2-injection",
            request("get", "/x", &[]),
            vec![],
        ),
        refuse(
            "h2-authority-crlf",
            "h2-injection",
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "t\r\nX: y"),
                (":path", "/x"),
            ]),
            vec![],
        ),
        refuse(
            "h2-authority-userinfo",
            "h2-injection",
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "u@t"),
                (":path", "/x"),
            ]),
            vec![],
        ),
        refuse(
            "h2-host-invalid-no-authority",
            "h2-injection",
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/x"),
                ("host", "a b"),
            ]),
            vec![],
        ),
        refuse(
            "h2-no-authority-no-host",
            "h2-injection",
            fields(&[(":method", "GET"), (":scheme", "http"), (":path", "/x")]),
            vec![],
        ),
        refuse(
            "h2-connect",
            "h2-injection",
            fields(&[(":method", "CONNECT"), (":authority", "t:443")]),
            vec![],
        ),
        refuse(
            "h2-pseudo-after-regular",
            "h2-injection",
            fields(&[
                (":method", "GET"),
                ("x-a", "1"),
                (":scheme", "http"),
                (":authority", "t"),
                (":path", "/x"),
            ]),
            vec![],
        ),
    ]
}

/// The recorder's answer text: `<seq> <method> <target>`.
fn recorder_seq(body: &[u8]) -> Option<u64> {
    String::from_utf8_lossy(body).split(' ').next()?.parse().ok()
}

async fn run(node: &Node, backend: &Recorder, case: &Case, canary_number: &mut u64) -> Result<(), String> {
    let address: SocketAddr = node.listener("h2c");
    let before = backend.records().len();
    let mut client = H2Raw::connect(address).await;
    let id = client.send(&case.fields, &case.parts).await;
    let outcome = client.outcome(id, Duration::from_secs(10)).await;
    if outcome == Outcome::Silent {
        return Err("no answer to the case".into());
    }
    let answered_by_backend = match &outcome {
        Outcome::Answered(body) => recorder_seq(body),
        _ => None,
    };
    let mut expected: Vec<(String, String, Vec<u8>)> = Vec::new();
    match &case.expect {
        Expect::Forward { method, target, body } => {
            let seq = answered_by_backend.ok_or_else(|| format!("not forwarded: {outcome:?}"))?;
            let record = backend
                .records()
                .into_iter()
                .find(|r| r.seq == seq)
                .ok_or("the answer names no recorded request")?;
            if (record.method.as_str(), record.target.as_str(), &record.body) != (*method, *target, body) {
                return Err(format!(
                    "the backend parsed {} {} {:?}",
                    record.method,
                    record.target,
                    String::from_utf8_lossy(&record.body)
                ));
            }
            expected.push((method.to_string(), target.to_string(), body.clone()));
        }
        Expect::Refuse => {
            if answered_by_backend.is_some() {
                return Err(format!("forwarded: {outcome:?}"));
            }
        }
        Expect::AtMost { .. } => {}
    }
    *canary_number += 1;
    let canary_target = format!("/canary-{canary_number}");
    if client.ended {
        client = H2Raw::connect(address).await;
    }
    let canary = client
        .send(
            &common::h2raw::fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "t"),
                (":path", &canary_target),
            ]),
            &[],
        )
        .await;
    let answer = match client.outcome(canary, Duration::from_secs(10)).await {
        Outcome::Answered(body) => body,
        other if !client.ended => return Err(format!("the canary got {other:?}")),
        _ => {
            // The case ended the connection as the canary went out: a new one.
            let mut fresh = H2Raw::connect(address).await;
            let canary = fresh
                .send(
                    &common::h2raw::fields(&[
                        (":method", "GET"),
                        (":scheme", "http"),
                        (":authority", "t"),
                        (":path", &canary_target),
                    ]),
                    &[],
                )
                .await;
            match fresh.outcome(canary, Duration::from_secs(10)).await {
                Outcome::Answered(body) => body,
                other => return Err(format!("the canary got {other:?}")),
            }
        }
    };
    let seq = recorder_seq(&answer)
        .ok_or_else(|| format!("the canary got {:?}", String::from_utf8_lossy(&answer)))?;
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
    // A backend may record a request cut short only when its connection closes, after the canary
    // was answered on another one: for those cases, wait until its records stop changing.
    let records = if matches!(case.expect, Expect::AtMost { .. }) {
        let mut last = records.len();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = backend.records().len();
            if now == last {
                break;
            }
            last = now;
        }
        backend.records()
    } else {
        records
    };
    let arrived: Vec<(String, String, Vec<u8>)> = records[before..]
        .iter()
        .map(|r| (r.method.clone(), r.target.clone(), r.body.clone()))
        .collect();
    let canary_record = ("GET".to_string(), canary_target, Vec::new());
    let ok = match &case.expect {
        Expect::AtMost { method, target } => {
            let sent: Vec<u8> = case
                .parts
                .iter()
                .filter_map(|p| match p {
                    Part::Data(d) => Some(d.clone()),
                    Part::Trailers(_) => None,
                })
                .flatten()
                .collect();
            // The canary once, and at most the announced request cut short, in either order.
            let (canaries, others): (Vec<_>, Vec<_>) = arrived.iter().partition(|r| **r == canary_record);
            canaries.len() == 1
                && match others.as_slice() {
                    [] => true,
                    [cut] => cut.0 == *method && cut.1 == *target && sent.starts_with(&cut.2),
                    _ => false,
                }
        }
        _ => {
            expected.push(canary_record);
            arrived == expected
        }
    };
    if !ok {
        return Err(format!(
            "the backend saw {:?}",
            arrived
                .iter()
                .map(|(m, t, b)| format!("{m} {t} {:?}", String::from_utf8_lossy(b)))
                .collect::<Vec<_>>()
        ));
    }
    Ok(())
}

fn config(backend: SocketAddr) -> String {
    format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"h2c\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nhttp2 = true\nclient_timeout = \"2s\"\nresponse_timeout = \"3s\"\n\n{}",
        common::pool_toml("p", "", &[backend])
    )
}

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
    let mut canary = 0;
    let cases = corpus();
    for case in &cases {
        if let Err(why) = run(&node, &backend, case, &mut canary).await {
            failures.push(format!("{} [{}]: {why}", case.name, case.class));
        }
    }
    assert!(
        failures.is_empty(),
        "{kind}: {} of {} cases broke the invariant:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

async fn downgraded_http2_requests_hold_against_hyper() {
    corpus_holds_against("hyper", "downgraded_http2_requests_hold_against_hyper").await;
}

async fn downgraded_http2_requests_hold_against_python_http_server() {
    corpus_holds_against(
        "stdlib",
        "downgraded_http2_requests_hold_against_python_http_server",
    )
    .await;
}

async fn downgraded_http2_requests_hold_against_aiohttp() {
    corpus_holds_against("aiohttp", "downgraded_http2_requests_hold_against_aiohttp").await;
}

async fn downgraded_http2_requests_hold_against_gunicorn() {
    corpus_holds_against("gunicorn", "downgraded_http2_requests_hold_against_gunicorn").await;
}

fn every_downgrade_case_is_named_once_and_every_class_documented() {
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
