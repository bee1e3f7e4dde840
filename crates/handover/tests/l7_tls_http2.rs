//! TLS and HTTP/2 from clients, through the real binary with real clients: curl over HTTPS
//! (HTTP/1.1 and HTTP/2 by ALPN), a certificate per SNI name, a certificate replaced on disk and
//! served without a restart, h2load over TLS, cleartext HTTP/2 by prior knowledge where a listener
//! allows it, and HTTP/2 streams balanced one by one: a draining VM gets no new stream while
//! streams in flight to it finish; an HTTP/2 connection without a stream for the listener's
//! `idle_timeout` gets GOAWAY and is closed. Certificates are made by `openssl` at test time.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::backends::HttpBackend;
use common::harness;
use common::tls::{curl_get, self_signed};
use common::{Node, eventually, notice, pool_toml};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() {
    harness::main(vec![
        harness::test_async(
            "https_speaks_http11_and_http2_by_alpn_with_a_certificate_per_sni_name",
            https_speaks_http11_and_http2_by_alpn_with_a_certificate_per_sni_name,
        )
        .needs(common::tls::openssl_available)
        .needs(common::tls::curl_available),
        harness::test_async(
            "a_certificate_replaced_on_disk_is_served_without_a_restart",
            a_certificate_replaced_on_disk_is_served_without_a_restart,
        )
        .needs(common::tls::openssl_available)
        .needs(common::tls::curl_available),
        harness::test_async(
            "h2load_over_tls_completes_every_request_spread_over_the_pool",
            h2load_over_tls_completes_every_request_spread_over_the_pool,
        )
        .needs(common::tls::openssl_available)
        .needs(common::tls::curl_available)
        .needs(common::tls::h2load_available),
        harness::test_async(
            "cleartext_http2_by_prior_knowledge_only_where_the_listener_allows_it",
            cleartext_http2_by_prior_knowledge_only_where_the_listener_allows_it,
        )
        .needs(common::tls::openssl_available)
        .needs(common::tls::curl_available),
        harness::test_async(
            "http2_streams_avoid_a_draining_vm_while_streams_in_flight_to_it_finish",
            http2_streams_avoid_a_draining_vm_while_streams_in_flight_to_it_finish,
        ),
        harness::test(
            "bad_tls_files_are_named_by_check_and_stop_run",
            bad_tls_files_are_named_by_check_and_stop_run,
        )
        .needs(common::tls::openssl_available),
        harness::test_async(
            "http11_clients_reach_a_pool_that_speaks_http2",
            http11_clients_reach_a_pool_that_speaks_http2,
        )
        .needs(common::tls::openssl_available)
        .needs(common::tls::curl_available),
        harness::test_async(
            "an_http2_connection_without_a_stream_for_idle_timeout_gets_goaway_and_is_closed",
            an_http2_connection_without_a_stream_for_idle_timeout_gets_goaway_and_is_closed,
        ),
    ]);
}

async fn three_backends() -> Vec<HttpBackend> {
    vec![
        HttpBackend::start("vm-a").await,
        HttpBackend::start("vm-b").await,
        HttpBackend::start("vm-c").await,
    ]
}

/// A node with a TLS listener `https` (certificates for a.test and b.test), a cleartext listener
/// `h2c` that takes HTTP/2 by prior knowledge, and a plain listener `plain`.
fn config(dir: &Path, backends: &[SocketAddr]) -> Result<String, String> {
    let (a_cert, a_key) = self_signed(dir, "a.test", "a")?;
    let (b_cert, b_key) = self_signed(dir, "b.test", "b")?;
    Ok(format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"https\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}], reload = \"1s\" }}\n\n\
         [[listeners]]\nname = \"h2c\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nhttp2 = true\n\n\
         [[listeners]]\nname = \"plain\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n{}",
        a_cert.display(),
        a_key.display(),
        b_cert.display(),
        b_key.display(),
        pool_toml("p", "", backends)
    ))
}

/// `https://NAME:PORT/` resolved to the listener, verified against `ca`.
fn https(name: &str, address: SocketAddr, ca: &Path, path: &str, version: &str) -> (String, u16, String) {
    let resolve = format!("{name}:{}:127.0.0.1", address.port());
    let url = format!("https://{name}:{}{path}", address.port());
    curl_get(&[
        version,
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ])
}

async fn https_speaks_http11_and_http2_by_alpn_with_a_certificate_per_sni_name() {
    let dir = tempfile::tempdir().unwrap();
    let backends = three_backends().await;
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let node = Node::start(&config(dir.path(), &addresses).unwrap());
    let address = node.listener("https");
    let a = dir.path().join("a.pem");
    let b = dir.path().join("b.pem");

    let (version, status, body) = https("a.test", address, &a, "/", "--http1.1");
    assert_eq!((version.as_str(), status), ("1.1", 200), "{body}");
    assert!(body.starts_with("vm-"), "{body}");
    let (version, status, _) = https("a.test", address, &a, "/", "--http2");
    assert_eq!((version.as_str(), status), ("2", 200));
    // b.test gets b's certificate (verified against b alone), a.test never does.
    let (version, status, _) = https("b.test", address, &b, "/", "--http2");
    assert_eq!((version.as_str(), status), ("2", 200));
    let (_, status, _) = https("a.test", address, &b, "/", "--http2");
    assert_eq!(status, 0, "a.test must not be served b's certificate");
    // An unknown name gets the first certificate.
    let (_, status, _) = https("c.test", address, &a, "/", "--http1.1");
    assert_eq!(status, 0, "a's certificate does not cover c.test");
    let out = common::tls::curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{ssl_verify_result}",
        "-k",
        "--resolve",
        &format!("c.test:{}:127.0.0.1", address.port()),
        &format!("https://c.test:{}/", address.port()),
    ]);
    assert!(
        out.status.success(),
        "an unknown name is still served (first certificate)"
    );
    // TLS 1.2 is accepted too.
    let (version, status, _) = https("a.test", address, &a, "/", "--tlsv1.2");
    assert!(
        status == 200 && (version == "2" || version == "1.1"),
        "{version} {status}"
    );
    let out = common::tls::curl(&[
        "--tls-max",
        "1.2",
        "--cacert",
        a.to_str().unwrap(),
        "--resolve",
        &format!("a.test:{}:127.0.0.1", address.port()),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("https://a.test:{}/", address.port()),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "TLS 1.2 only");
    // Plain HTTP to the TLS port is not served.
    let (_, status, _) = curl_get(&[&format!("http://127.0.0.1:{}/", address.port())]);
    assert_ne!(status, 200);
}

async fn a_certificate_replaced_on_disk_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let backends = three_backends().await;
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let mut node = Node::start(&config(dir.path(), &addresses).unwrap());
    let address = node.listener("https");
    let old = dir.path().join("a-old.pem");
    std::fs::copy(dir.path().join("a.pem"), &old).unwrap();
    assert_eq!(https("a.test", address, &old, "/", "--http2").1, 200);

    // A new key and certificate for a.test, written over the old files.
    let fresh = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(fresh.path(), "a.test", "a").unwrap();
    std::fs::copy(&key, dir.path().join("a.key")).unwrap();
    std::fs::copy(&cert, dir.path().join("a.pem")).unwrap();
    let served_new = eventually(Duration::from_secs(20), || async {
        https("a.test", address, &cert, "/", "--http2").1 == 200
    })
    .await;
    assert!(served_new, "the new certificate was not served:\n{}", node.log());
    assert_eq!(
        https("a.test", address, &old, "/", "--http2").1,
        0,
        "the old one is gone"
    );
    assert!(node.log().contains("certificates reloaded from disk"));

    // A broken pair on disk does not stop the listener: the last good set keeps serving.
    std::fs::write(dir.path().join("a.key"), "not a key").unwrap();
    assert!(
        common::log_contains(&node, "cannot be loaded", Duration::from_secs(20)).await,
        "{}",
        node.log()
    );
    assert_eq!(https("a.test", address, &cert, "/", "--http2").1, 200);
    assert!(!node.exited_within(Duration::from_millis(10)));
}

async fn h2load_over_tls_completes_every_request_spread_over_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let backends = three_backends().await;
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let node = Node::start(&config(dir.path(), &addresses).unwrap());
    let address = node.listener("https");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("h2load")
            .args(["-n", "3000", "-c", "4", "-m", "16", "-t", "1"])
            .arg(format!("https://127.0.0.1:{}/", address.port()))
            .output()
            .expect("run h2load")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert!(
        text.contains(
            "requests: 3000 total, 3000 started, 3000 done, 3000 succeeded, 0 failed, 0 errored, 0 timeout"
        ),
        "{text}\n{}",
        node.log()
    );
    assert!(text.contains("status codes: 3000 2xx"), "{text}");
    // Four connections, 3000 streams: each stream was balanced on its own.
    for backend in &backends {
        let served = backend.requests.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            (900..=1100).contains(&served),
            "one backend served {served} of 3000"
        );
    }
}

async fn cleartext_http2_by_prior_knowledge_only_where_the_listener_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let backends = three_backends().await;
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let node = Node::start(&config(dir.path(), &addresses).unwrap());
    let h2c = format!("http://{}/", node.listener("h2c"));
    let plain = format!("http://{}/", node.listener("plain"));
    let (version, status, body) = curl_get(&["--http2-prior-knowledge", &h2c]);
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    // The same listener still serves HTTP/1.1.
    let (version, status, _) = curl_get(&["--http1.1", &h2c]);
    assert_eq!((version.as_str(), status), ("1.1", 200));
    // A body of unknown length goes to the HTTP/1.1 backend chunked and arrives whole.
    let (_, status, body) = curl_get(&[
        "--http2-prior-knowledge",
        "-H",
        "content-length:",
        "--data-binary",
        "hello",
        &format!("{h2c}echo-length"),
    ]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.trim_end().ends_with(" 5"),
        "the backend got the 5 bytes: {body}"
    );
    // A plain listener does not speak HTTP/2: the preface is a malformed HTTP/1.1 request.
    let (_, status, _) = curl_get(&["--http2-prior-knowledge", &plain]);
    assert_ne!(status, 200);
    // curl's h2c upgrade is not taken: the request is answered in HTTP/1.1.
    let (version, status, _) = curl_get(&["--http2", &plain]);
    assert_eq!((version.as_str(), status), ("1.1", 200));
}

/// An HTTP/2 client connection (hyper's) to a cleartext listener, by prior knowledge.
async fn h2_client(address: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// GET `path` on the connection: `(status, body)`.
async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (u16, String) {
    let request = hyper::Request::builder()
        .uri(format!("http://proxy.test{path}"))
        .body(Empty::new())
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).trim().to_string())
}

async fn http2_streams_avoid_a_draining_vm_while_streams_in_flight_to_it_finish() {
    let backends = three_backends().await;
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let text = format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"h2c\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nhttp2 = true\n\n{}",
        pool_toml("p", "", &addresses)
    );
    let node = Node::start(&text);
    let sender = h2_client(node.listener("h2c")).await;
    // Six slow streams on one connection: round robin sends two to vm-a.
    let mut slow = Vec::new();
    for _ in 0..6 {
        let mut sender = sender.clone();
        slow.push(tokio::spawn(
            async move { h2_get(&mut sender, "/slow?ms=1500").await },
        ));
    }
    let all_sent = eventually(Duration::from_secs(10), || async {
        common::active_by_vm(&node).await.values().sum::<u64>() == 6
    })
    .await;
    assert!(
        all_sent,
        "six streams in flight: {:?}",
        common::active_by_vm(&node).await
    );
    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["balancers"][0]["backends"][0]["active"], 2, "{reply}");
    let mut served = Vec::new();
    for handle in slow {
        let (status, body) = handle.await.unwrap();
        assert_eq!(status, 200);
        served.push(body);
    }
    assert_eq!(served.iter().filter(|b| *b == "vm-a").count(), 2, "{served:?}");
    // New streams on the same connection avoid vm-a.
    let mut sender = sender;
    let mut after = Vec::new();
    for _ in 0..30 {
        after.push(h2_get(&mut sender, "/").await.1);
    }
    assert!(!after.iter().any(|b| b == "vm-a"), "{after:?}");
    assert!(after.iter().any(|b| b == "vm-b") && after.iter().any(|b| b == "vm-c"));
    let (status, _) = node.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200);
}

fn bad_tls_files_are_named_by_check_and_stop_run() {
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, _) = self_signed(dir.path(), "a.test", "a").unwrap();
    let (_, b_key) = self_signed(dir.path(), "b.test", "b").unwrap();
    let listener = |tls: String| {
        format!(
            "[control]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"https\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\ntls = {tls}\n{}",
            pool_toml("p", "", &["127.0.0.1:9".parse().unwrap()])
        )
    };
    let cases = [
        (
            format!(
                "{{ certificates = [{{ cert = \"{}\", key = \"{}/missing.key\" }}] }}",
                a_cert.display(),
                dir.path().display()
            ),
            "listeners[0].tls.certificates[0].key",
        ),
        (
            format!(
                "{{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}",
                b_key.display(),
                b_key.display()
            ),
            "listeners[0].tls.certificates[0].cert",
        ),
        (
            format!(
                "{{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}",
                a_cert.display(),
                b_key.display()
            ),
            "does not belong to the certificate",
        ),
    ];
    for (tls, expected) in cases {
        let path = dir.path().join("handover.toml");
        std::fs::write(&path, listener(tls)).unwrap();
        let out = Command::new(common::binary())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "expected {expected:?} in {stderr}");
        let run = Command::new(common::binary())
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success());
        assert!(
            stderr.contains(expected),
            "run: expected {expected:?} in {stderr}"
        );
    }
}

/// A backend that speaks only HTTP/2 (prior knowledge): answers `NAME LENGTH-OF-BODY` with a
/// trailer `x-length`.
async fn h2_only_backend(name: &'static str) -> SocketAddr {
    use std::convert::Infallible;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| async move {
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("x-length", body.to_string().parse().unwrap());
                        let frames = vec![
                            Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(format!(
                                "{name} {body}"
                            )))),
                            Ok(hyper::body::Frame::trailers(trailers)),
                        ];
                        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                        Ok::<_, Infallible>(hyper::Response::new(body))
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

async fn http11_clients_reach_a_pool_that_speaks_http2() {
    let backends = vec![h2_only_backend("vm-a").await, h2_only_backend("vm-b").await];
    let text = format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n{}",
        pool_toml("p", "protocol = \"h2\"", &backends)
    );
    let node = Node::start(&text);
    let url = format!("http://{}/x", node.listener("web"));
    let (version, status, body) = curl_get(&["--http1.1", &url]);
    assert_eq!((version.as_str(), status), ("1.1", 200), "{body}");
    assert!(body == "vm-a 0" || body == "vm-b 0", "{body}");
    // A body with a length, and a chunked one, arrive whole.
    let (_, status, body) = curl_get(&["--http1.1", "--data-binary", "hello", &url]);
    assert_eq!(status, 200);
    assert!(body.ends_with(" 5"), "{body}");
    let (_, status, body) = curl_get(&[
        "--http1.1",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "hello world",
        &url,
    ]);
    assert_eq!(status, 200);
    assert!(body.ends_with(" 11"), "{body}");
    // Several requests on one keep-alive connection, balanced one by one; trailers come back
    // chunked (curl shows them with -i? it ignores them: the body is what counts here).
    let out = common::tls::curl(&["--http1.1", "-v", &url, &url, &url, &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("vm-a 0").count() + text.matches("vm-b 0").count(),
        4,
        "{text}"
    );
    assert!(text.contains("vm-a 0") && text.contains("vm-b 0"), "{text}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("Re-using existing connection"),
        "one connection: {log}"
    );
}

/// A node whose listener `h2c` takes HTTP/2 by prior knowledge, with `extra` in its section.
fn h2c_node(addresses: &[SocketAddr], extra: &str) -> Node {
    Node::start(&format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"h2c\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nhttp2 = true\n{extra}\n\n{}",
        pool_toml("p", "", addresses)
    ))
}

async fn an_http2_connection_without_a_stream_for_idle_timeout_gets_goaway_and_is_closed() {
    use common::h2raw::{H2Raw, Outcome, fields};
    let backends = three_backends().await;
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let node = h2c_node(&addresses, "idle_timeout = \"1s\"");
    let get = |path: &str| {
        fields(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "proxy.test"),
            (":path", path),
        ])
    };
    // A stream open for longer than the timeout keeps the connection: it is answered.
    let mut client = H2Raw::connect(node.listener("h2c")).await;
    let id = client.send(&get("/slow?ms=2500"), &[]).await;
    let outcome = client.outcome(id, Duration::from_secs(20)).await;
    assert!(matches!(outcome, Outcome::Answered(_)), "{outcome:?}");
    // Idle from the end of that stream on: GOAWAY and the close come after the timeout, not before.
    let answered = std::time::Instant::now();
    assert_eq!(
        client.closed_within(Duration::from_secs(10)).await,
        Some(true),
        "GOAWAY, then the close"
    );
    let idle = answered.elapsed();
    assert!(idle >= Duration::from_millis(800), "closed after {idle:?}");
    // A connection that never opens a stream is closed the same way.
    let mut silent = H2Raw::connect(node.listener("h2c")).await;
    assert_eq!(silent.closed_within(Duration::from_secs(10)).await, Some(true));
    // Without the setting, an idle connection stays open and takes the next stream.
    let node = h2c_node(&addresses, "");
    let mut client = H2Raw::connect(node.listener("h2c")).await;
    let id = client.send(&get("/"), &[]).await;
    assert!(matches!(
        client.outcome(id, Duration::from_secs(10)).await,
        Outcome::Answered(_)
    ));
    assert_eq!(client.closed_within(Duration::from_millis(2500)).await, None);
    let id = client.send(&get("/"), &[]).await;
    assert!(matches!(
        client.outcome(id, Duration::from_secs(10)).await,
        Outcome::Answered(_)
    ));
}
