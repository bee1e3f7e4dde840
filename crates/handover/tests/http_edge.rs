//! The HTTP edge cannot be turned against its users (issue 13), through the real binary: a request
//! whose `Connection` names a framing field smuggles nothing onto a pooled backend connection, for
//! every backend parser we have (the standard library's http.server, aiohttp, gunicorn, hyper);
//! `Host` is required and never stripped; repeated lengths reach the backend as one; a stalled
//! head or body gets 408; and no error a client sees names a backend address.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Node;
use common::harness;
use common::raw::{Plan, RawBackend, RawClient, ok};
use common::recorder::Recorder;

fn main() {
    let mut tests = smuggling_tests();
    tests.extend([
        harness::test_async(
            "host_is_required_and_never_stripped_and_lengths_arrive_as_one",
            host_is_required_and_never_stripped_and_lengths_arrive_as_one,
        ),
        harness::test_async("a_stalled_head_or_body_gets_408", a_stalled_head_or_body_gets_408),
        harness::test_async(
            "errors_sent_to_clients_name_no_backend_address",
            errors_sent_to_clients_name_no_backend_address,
        ),
    ]);
    harness::main(tests);
}

fn config(addresses: &[SocketAddr], listener_extra: &str) -> String {
    format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n{listener_extra}\n\n{}",
        common::pool_toml("p", "", addresses)
    )
}

/// A recorder of `kind` (`hyper`, `stdlib`, `aiohttp`, `gunicorn`), or the reason it cannot run.
async fn recorder(kind: &'static str) -> Result<Recorder, String> {
    match kind {
        "hyper" => Ok(Recorder::hyper().await),
        python => Recorder::python(python),
    }
}

/// A GET through the node on a new connection; returns (status, X-Seq, body).
async fn get(node: &Node, path: &str) -> (u16, Option<u64>, String) {
    let mut client = RawClient::connect(node.listener("web")).await;
    client
        .send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await;
    let answer = client.response().await.expect("an answer");
    (
        answer.status,
        answer.header("x-seq").and_then(|s| s.parse().ok()),
        answer.text(),
    )
}

/// Sends `attack` on its own connection, then six victims on new connections one after another;
/// every victim must get the answer to its own request and the backend must never see the
/// smuggled one.
async fn nothing_is_smuggled(kind: &'static str, test: &str, attack: &[u8]) {
    let backend = match recorder(kind).await {
        Ok(backend) => backend,
        Err(reason) => panic!("{test}: the {kind} backend cannot start: {reason}"),
    };
    // One worker: every request shares its idle list, so the attack's backend connection is the
    // one the victims reuse.
    let node = Node::start_with(&config(&[backend.address()], ""), &["--workers", "1"]);
    let (status, _, _) = get(&node, "/warm").await;
    assert_eq!(status, 200, "the pool is warm");

    let mut attacker = RawClient::connect(node.listener("web")).await;
    attacker.send_some(attack).await;
    let answer = attacker.response().await.expect("the attacker gets an answer");
    assert_eq!(answer.status, 400, "{kind}: {}", answer.text());
    assert!(
        answer.header("x-seq").is_none(),
        "the proxy answered, not the backend"
    );

    for i in 0..6 {
        let (status, seq, body) = get(&node, &format!("/name{i}")).await;
        assert_eq!(status, 200, "{kind}: victim {i}: {body}");
        let records = backend.records();
        let seq = seq.expect("a backend answer");
        let record = records
            .iter()
            .find(|r| r.seq == seq)
            .expect("the backend recorded it");
        assert_eq!(
            record.target,
            format!("/name{i}"),
            "{kind}: victim {i} got the answer to another request: {records:?}"
        );
    }
    let records = backend.records();
    assert!(
        records.iter().all(|r| !r.target.contains("SMUGGLED")),
        "{kind}: the smuggled request reached the backend: {records:?}"
    );
    assert_eq!(
        records.len(),
        7,
        "{kind}: warm-up and six victims, nothing else: {records:?}"
    );
}

const CONNECTION_CONTENT_LENGTH: &[u8] = b"POST / HTTP/1.1\r\nHost: t\r\nConnection: Content-Length\r\nContent-Length: 40\r\n\r\nGET /other?SMUGGLED HTTP/1.1\r\nX-Ignore: ";

const CONNECTION_TRANSFER_ENCODING: &[u8] = b"POST / HTTP/1.1\r\nHost: t\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n28\r\nGET /other?SMUGGLED HTTP/1.1\r\nX-Ignore: \r\n0\r\n\r\n";

/// One test per backend and attack, and `smuggling_tests()`, their list for the harness; a Python
/// backend needs its module.
macro_rules! smuggling_tests {
    ($($name:ident: $kind:literal, $attack:expr;)*) => {
        $(
            async fn $name() {
                nothing_is_smuggled($kind, stringify!($name), $attack).await;
            }
        )*
        fn smuggling_tests() -> Vec<harness::Test> {
            vec![$(recorder_needs($kind, harness::test_async(stringify!($name), $name)),)*]
        }
    };
}

/// `test` with what the recorder of `kind` needs.
fn recorder_needs(kind: &str, test: harness::Test) -> harness::Test {
    match kind {
        "stdlib" => test.needs(common::recorder::python_stdlib),
        "aiohttp" => test.needs(common::recorder::aiohttp),
        "gunicorn" => test.needs(common::recorder::gunicorn),
        _ => test,
    }
}

smuggling_tests! {
    connection_content_length_smuggles_nothing_into_http_server: "stdlib", CONNECTION_CONTENT_LENGTH;
    connection_content_length_smuggles_nothing_into_aiohttp: "aiohttp", CONNECTION_CONTENT_LENGTH;
    connection_content_length_smuggles_nothing_into_gunicorn: "gunicorn", CONNECTION_CONTENT_LENGTH;
    connection_content_length_smuggles_nothing_into_hyper: "hyper", CONNECTION_CONTENT_LENGTH;
    connection_transfer_encoding_smuggles_nothing_into_http_server: "stdlib", CONNECTION_TRANSFER_ENCODING;
    connection_transfer_encoding_smuggles_nothing_into_aiohttp: "aiohttp", CONNECTION_TRANSFER_ENCODING;
    connection_transfer_encoding_smuggles_nothing_into_gunicorn: "gunicorn", CONNECTION_TRANSFER_ENCODING;
    connection_transfer_encoding_smuggles_nothing_into_hyper: "hyper", CONNECTION_TRANSFER_ENCODING;
}

/// A raw backend that answers `fine` and a node in front of it.
async fn raw_node(listener_extra: &str) -> (Node, RawBackend) {
    let backend = RawBackend::start(|_| Plan::answer(ok("fine"))).await;
    let node = Node::start(&config(&[backend.address], listener_extra));
    (node, backend)
}

async fn exchange(node: &Node, request: &[u8]) -> common::raw::Received {
    let mut client = RawClient::connect(node.listener("web")).await;
    client.send_some(request).await;
    client.response().await.expect("an answer")
}

async fn host_is_required_and_never_stripped_and_lengths_arrive_as_one() {
    let (node, backend) = raw_node("").await;
    for (request, status) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Host\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
    ] {
        let answer = exchange(&node, request).await;
        assert_eq!(answer.status, status, "{}", String::from_utf8_lossy(request));
    }
    assert!(backend.requests().is_empty(), "{:?}", backend.requests());

    let answer = exchange(
        &node,
        b"POST /twice HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = backend.requests();
    assert_eq!(seen.len(), 1);
    let lengths = seen[0]
        .head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
        .count();
    assert_eq!(lengths, 1, "{}", seen[0].head);
    assert_eq!(seen[0].body, b"abc");
    assert_eq!(seen[0].header("host").as_deref(), Some("t"));
}

async fn a_stalled_head_or_body_gets_408() {
    let (node, backend) = raw_node("client_timeout = \"1s\"").await;
    // Part of a head, then nothing.
    let mut client = RawClient::connect(node.listener("web")).await;
    client.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n").await;
    let answer = client.response().await.expect("an answer");
    assert_eq!(answer.status, 408, "{}", answer.text());
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert!(client.closed_within(Duration::from_secs(5)).await);

    // A connection that sends nothing is closed quietly.
    let mut idle = RawClient::connect(node.listener("web")).await;
    assert!(idle.closed_within(Duration::from_secs(10)).await);
    assert!(
        idle.response().await.is_none(),
        "nothing is said to a silent connection"
    );

    // Part of a body, then nothing.
    let mut client = RawClient::connect(node.listener("web")).await;
    client
        .send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        .await;
    let answer = client.response().await.expect("an answer");
    assert_eq!(answer.status, 408, "{}", answer.text());
    assert!(client.closed_within(Duration::from_secs(5)).await);
    // The half-sent request never counts as a whole one, and the node serves on.
    assert!(backend.requests().iter().all(|r| r.body.len() != 10));
    let answer = exchange(&node, b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "fine"));
}

async fn errors_sent_to_clients_name_no_backend_address() {
    // A backend that is not there: 502.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let node = Node::start(&config(&[closed], ""));
    let answer = exchange(&node, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(answer.status, 502);
    let port = closed.port().to_string();
    assert!(!answer.text().contains(&port), "{}", answer.text());
    assert!(
        common::log_contains(&node, &closed.to_string(), Duration::from_secs(5)).await,
        "the log keeps the detail:\n{}",
        node.log()
    );

    // A backend that does not answer in time: 504.
    let silent = RawBackend::start(|_| Plan {
        delay: Duration::from_secs(5),
        ..Plan::answer(ok("late"))
    })
    .await;
    let node = Node::start(&config(&[silent.address], "response_timeout = \"300ms\""));
    let answer = exchange(&node, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(answer.status, 504);
    assert!(
        !answer.text().contains(&silent.address.port().to_string()),
        "{}",
        answer.text()
    );
    assert!(common::log_contains(&node, &silent.address.to_string(), Duration::from_secs(5)).await);
}
