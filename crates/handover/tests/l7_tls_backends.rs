//! TLS to HTTP/1.1 backends, through the real binary: Python `ssl` backends with a test CA, curl
//! (and a raw WebSocket handshake) through an `http` listener. The backends are verified against
//! the pool's CA (a wrong CA gets 502 and the reason in the log), `insecure = true` works and is
//! warned about at startup, keep-alive connections and their TLS sessions are reused across
//! requests (counted at the backends), a backend that closed an idle session costs the client
//! nothing, a drain moves new requests off the VM, and a WebSocket tunnel runs over TLS.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::harness;
use common::ws::{TLS_HTTP1, WsServer};
use common::{Node, pool_toml};

fn main() {
    harness::main(vec![
        harness::test_async(
            "http1_backends_over_tls_are_verified_and_their_sessions_reused_across_requests",
            http1_backends_over_tls_are_verified_and_their_sessions_reused_across_requests,
        )
        .needs(common::tls::openssl_available)
        .needs(common::tls::curl_available),
        harness::test_async(
            "a_backend_whose_certificate_the_pools_ca_did_not_sign_gets_no_request",
            a_backend_whose_certificate_the_pools_ca_did_not_sign_gets_no_request,
        )
        .needs(common::tls::openssl_available)
        .needs(common::tls::curl_available),
        harness::test_async(
            "insecure_tls_to_http1_backends_works_and_is_warned_about_at_startup",
            insecure_tls_to_http1_backends_works_and_is_warned_about_at_startup,
        )
        .needs(common::tls::openssl_available)
        .needs(common::tls::curl_available),
        harness::test_async(
            "a_tls_session_the_backend_closed_while_idle_is_not_reused",
            a_tls_session_the_backend_closed_while_idle_is_not_reused,
        )
        .needs(common::tls::openssl_available)
        .needs(common::tls::curl_available),
        harness::test_async(
            "a_draining_vm_gets_no_new_request_over_tls",
            a_draining_vm_gets_no_new_request_over_tls,
        )
        .needs(common::tls::openssl_available)
        .needs(common::tls::curl_available),
        harness::test_async(
            "a_websocket_upgrade_runs_over_a_tls_backend_connection",
            a_websocket_upgrade_runs_over_a_tls_backend_connection,
        )
        .needs(common::tls::openssl_available)
        .needs(common::tls::curl_available),
    ]);
}

/// Three TLS backends (vm-a, vm-b, vm-c) with a certificate for `backend.test` from their CA, and
/// another CA that did not sign it.
struct Backends {
    servers: Vec<WsServer>,
    ca: PathBuf,
    other_ca: PathBuf,
    _dir: tempfile::TempDir,
}

fn backends() -> Backends {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::tls::ca_and_leaf(dir.path(), "backend.test", "backend").unwrap();
    let (other_ca, _, _) = common::tls::ca_and_leaf(dir.path(), "backend.test", "other").unwrap();
    let servers = ["vm-a", "vm-b", "vm-c"]
        .iter()
        .map(|vm| WsServer::start_script_with(TLS_HTTP1, vm, &[cert.as_path(), key.as_path()]))
        .collect();
    Backends {
        servers,
        ca,
        other_ca,
        _dir: dir,
    }
}

impl Backends {
    /// A node (one worker) with an `http` listener `web` in front of the backends, the pool
    /// speaking TLS as `tls` says.
    fn node(&self, tls: &str) -> Node {
        let addresses: Vec<_> = self.servers.iter().map(|s| s.address).collect();
        let config = format!(
            "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n{}",
            pool_toml("p", &format!("tls = {tls}\nretries = 0"), &addresses)
        );
        Node::start_with(&config, &["--workers", "1"])
    }

    fn verified(&self, ca: &Path) -> String {
        format!("{{ ca = \"{}\", server_name = \"backend.test\" }}", ca.display())
    }

    /// TLS connections each backend accepted so far, by VM.
    fn connections(&self) -> BTreeMap<String, u32> {
        ["vm-a", "vm-b", "vm-c"]
            .iter()
            .zip(&self.servers)
            .map(|(vm, s)| (vm.to_string(), s.note("conns").trim().parse().unwrap_or(0)))
            .collect()
    }
}

/// `paths` requested over one keep-alive client connection: `(status, body)` of each.
fn get_all(node: &Node, paths: &[&str]) -> Vec<(u16, String)> {
    let base = format!("http://{}", node.listener("web"));
    let urls: Vec<String> = paths.iter().map(|p| format!("{base}{p}")).collect();
    let mut args = vec!["--http1.1", "-w", "\n@@%{http_code}\n"];
    args.extend(urls.iter().map(String::as_str));
    let out = common::tls::curl(&args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // BODY \n@@STATUS \n BODY \n@@STATUS \n ...
    let mut pieces = text.split("\n@@");
    let mut body = pieces.next().unwrap_or_default().to_string();
    let mut answers = Vec::new();
    for piece in pieces {
        let (status, next) = piece.split_once('\n').unwrap_or((piece, ""));
        answers.push((status.parse().unwrap_or(0), body.trim_end().to_string()));
        body = next.to_string();
    }
    answers
}

/// The VM named in a backend's answer.
fn vm_of(body: &str) -> &str {
    body.split(' ').next().unwrap_or_default()
}

async fn http1_backends_over_tls_are_verified_and_their_sessions_reused_across_requests() {
    let backends = backends();
    let node = backends.node(&backends.verified(&backends.ca));
    let answers = get_all(&node, &["/r"; 12]);
    assert_eq!(answers.len(), 12, "{answers:?}");
    let mut by_vm: BTreeMap<&str, usize> = BTreeMap::new();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{answers:?}");
        *by_vm.entry(vm_of(body)).or_default() += 1;
    }
    assert_eq!(by_vm.len(), 3, "balanced over the three backends: {by_vm:?}");
    // One worker, one request at a time: each backend saw one TLS connection for all its requests.
    assert_eq!(
        backends.connections().values().copied().collect::<Vec<_>>(),
        [1, 1, 1],
        "{answers:?}"
    );
    for (_, body) in &answers {
        assert!(body.contains("conn=1 "), "{body}");
    }
    // A second client connection reuses the same upstream sessions.
    let again = get_all(&node, &["/s"; 6]);
    assert!(again.iter().all(|(status, _)| *status == 200), "{again:?}");
    assert_eq!(
        backends.connections().values().copied().collect::<Vec<_>>(),
        [1, 1, 1]
    );
    // A request body goes over TLS too.
    let out = common::tls::curl(&[
        "--http1.1",
        "--data-binary",
        &"x".repeat(100_000),
        &format!("http://{}/upload", node.listener("web")),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("path=/upload body=100000"), "{text}");
    assert!(!node.log().contains("not verified"), "{}", node.log());
}

async fn a_backend_whose_certificate_the_pools_ca_did_not_sign_gets_no_request() {
    let backends = backends();
    let node = backends.node(&backends.verified(&backends.other_ca));
    let answers = get_all(&node, &["/r"; 3]);
    assert_eq!(answers.len(), 3, "{answers:?}");
    for (status, body) in &answers {
        assert_eq!(*status, 502, "{answers:?}");
        assert!(!body.contains("vm-"), "{body}");
    }
    assert!(
        common::log_contains(&node, "TLS handshake with", Duration::from_secs(5)).await,
        "{}",
        node.log()
    );
    assert!(node.log().contains("invalid peer certificate"), "{}", node.log());
    // The name is checked too: the right CA, but a name the certificate does not have.
    let node = backends.node(&format!(
        "{{ ca = \"{}\", server_name = \"elsewhere.test\" }}",
        backends.ca.display()
    ));
    let answers = get_all(&node, &["/r"]);
    assert_eq!(answers[0].0, 502, "{answers:?}");
    assert!(
        common::log_contains(&node, "invalid peer certificate", Duration::from_secs(5)).await,
        "{}",
        node.log()
    );
}

async fn insecure_tls_to_http1_backends_works_and_is_warned_about_at_startup() {
    let backends = backends();
    let node = backends.node("{ insecure = true }");
    assert!(
        common::log_contains(&node, "not verified", Duration::from_secs(5)).await,
        "{}",
        node.log()
    );
    let answers = get_all(&node, &["/r"; 6]);
    assert!(answers.iter().all(|(status, _)| *status == 200), "{answers:?}");
    assert_eq!(
        answers
            .iter()
            .map(|(_, b)| vm_of(b))
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "{answers:?}"
    );
}

async fn a_tls_session_the_backend_closed_while_idle_is_not_reused() {
    let backends = backends();
    let node = backends.node(&backends.verified(&backends.ca));
    // Each backend answers and then closes its session without a word, as an idle timeout does.
    let first = get_all(&node, &["/close"; 3]);
    assert!(first.iter().all(|(status, _)| *status == 200), "{first:?}");
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            backends.connections().values().all(|&n| n == 1)
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The next requests get new sessions and every one of them is answered.
    let next = get_all(&node, &["/r"; 6]);
    assert!(next.iter().all(|(status, _)| *status == 200), "{next:?}");
    assert!(next.iter().all(|(_, body)| body.contains("conn=2 ")), "{next:?}");
}

async fn a_draining_vm_gets_no_new_request_over_tls() {
    let backends = backends();
    let node = backends.node(&backends.verified(&backends.ca));
    let before = get_all(&node, &["/r"; 6]);
    assert!(before.iter().any(|(_, b)| vm_of(b) == "vm-a"), "{before:?}");
    let (status, reply) = node
        .notice(
            "vm-a",
            serde_json::json!({"phase": "prepare", "wait_drained": true, "timeout_ms": 5000}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["drain"]["drained"], true, "{reply}");
    // The same client connection's next requests, and a new client's, go elsewhere.
    let during = get_all(&node, &["/r"; 12]);
    assert!(during.iter().all(|(status, _)| *status == 200), "{during:?}");
    let vms: std::collections::BTreeSet<_> = during.iter().map(|(_, b)| vm_of(b)).collect();
    assert_eq!(
        vms.into_iter().collect::<Vec<_>>(),
        ["vm-b", "vm-c"],
        "{during:?}"
    );
}

async fn a_websocket_upgrade_runs_over_a_tls_backend_connection() {
    let backends = backends();
    let node = backends.node(&backends.verified(&backends.ca));
    let mut client = tokio::net::TcpStream::connect(node.listener("web"))
        .await
        .unwrap();
    client
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut byte))
            .await
            .expect("the 101 in time")
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    // A masked text frame goes up, and the backend's echo of it comes down, through TLS.
    let frame = [
        0x81u8,
        0x85,
        1,
        2,
        3,
        4,
        b'h' ^ 1,
        b'e' ^ 2,
        b'l' ^ 3,
        b'l' ^ 4,
        b'o' ^ 1,
    ];
    for _ in 0..3 {
        client.write_all(&frame).await.unwrap();
        let mut echo = [0u8; 11];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut echo))
            .await
            .expect("the echo in time")
            .unwrap();
        assert_eq!(echo, frame);
    }
    // The tunnel counts as the VM's connection while it is open.
    let active = common::active_by_vm(&node).await;
    assert_eq!(active.values().sum::<u64>(), 1, "{active:?}");
}
