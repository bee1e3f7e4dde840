//! L7 through the real binary: requests in flight to a draining VM finish, new requests on the
//! same keep-alive client connections go elsewhere; header rules; clear 502/503.

mod common;

use std::time::Duration;

use common::backends::{HttpBackend, HttpClient};
use common::{Node, eventually, notice, pool_toml};

async fn three_backends() -> Vec<HttpBackend> {
    vec![
        HttpBackend::start("vm-a").await,
        HttpBackend::start("vm-b").await,
        HttpBackend::start("vm-c").await,
    ]
}

fn config(addresses: &[std::net::SocketAddr], pool_extra: &str) -> String {
    format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n{}",
        pool_toml("p", pool_extra, addresses)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_requests_finish_and_new_requests_go_elsewhere() {
    let backends = three_backends().await;
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let node = Node::start(&config(&addresses, "drain = { target = 0.0 }"));
    let proxy = node.listener("web");

    // Six keep-alive clients; each starts a slow request, two of which land on vm-a.
    let mut slow = Vec::new();
    for _ in 0..6 {
        slow.push(tokio::spawn(async move {
            let mut client = HttpClient::connect(proxy).await;
            let answer = client.get("/slow?ms=4000").await;
            (client, answer)
        }));
    }
    // Every slow request has reached its backend (the event, not a fixed pause).
    assert!(
        eventually(Duration::from_secs(3), || async {
            common::active_by_vm(&node).await.values().sum::<u64>() == 6
        })
        .await,
        "six requests in flight: {:?}",
        common::active_by_vm(&node).await
    );
    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["balancers"][0]["backends"][0]["active"], 2,
        "two requests in flight to vm-a: {reply}"
    );

    // The in-flight requests complete normally, vm-a's included.
    let mut clients = Vec::new();
    let mut served = Vec::new();
    for handle in slow {
        let (client, answer) = handle.await.unwrap();
        assert_eq!(answer.status, 200);
        served.push(answer.body);
        clients.push(client);
    }
    assert_eq!(served.iter().filter(|b| *b == "vm-a").count(), 2, "{served:?}");

    // New requests on the very same client connections avoid vm-a.
    let mut seen = std::collections::BTreeMap::new();
    for client in &mut clients {
        for _ in 0..60 {
            let answer = client.get("/").await;
            assert_eq!(answer.status, 200);
            *seen.entry(answer.body).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.get("vm-a"), None, "{seen:?}");
    assert_eq!(seen.values().sum::<i32>(), 360);

    let (status, _) = node.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_rewritten_and_errors_are_clear() {
    let backend = HttpBackend::start("vm-a").await;
    // A second backend that listens nowhere: connects to it fail.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let node = Node::start(&config(&[backend.address, dead], "retries = 1"));
    let proxy = node.listener("web");

    let mut client = HttpClient::connect(proxy).await;
    for _ in 0..4 {
        let answer = client
            .get_with(
                "/",
                &[
                    ("x-forwarded-for", "10.9.8.7"),
                    ("connection", "x-hop"),
                    ("x-hop", "1"),
                ],
            )
            .await;
        assert_eq!(
            answer.status, 200,
            "a failed connect is retried on the other backend"
        );
        assert_eq!(answer.body, "vm-a");
        assert_eq!(answer.headers["x-seen-forwarded-for"], "10.9.8.7, 127.0.0.1");
        assert_eq!(
            answer.headers["x-seen-hop"], "no",
            "headers named by Connection are hop-by-hop"
        );
    }

    // With the only live backend drained and the other dead: the draining backend still serves
    // (handover never refuses service because of a migration).
    let (status, _) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200);
    let answer = client.get("/").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, "vm-a");

    // Nothing reachable at all: a clear 502; the log says why.
    let unreachable = Node::start(&config(&[dead], "retries = 0"));
    let mut fresh = HttpClient::connect(unreachable.listener("web")).await;
    let answer = fresh.get("/").await;
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert!(
        answer.body.contains("no backend of pool p could be reached"),
        "{}",
        answer.body
    );
    assert!(
        !answer.body.contains("Connection refused") && !answer.body.contains(&dead.port().to_string()),
        "the client is not told which address failed or why: {}",
        answer.body
    );
    assert!(
        common::log_contains(&unreachable, "Connection refused", Duration::from_secs(5)).await,
        "the log is: {}",
        unreachable.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_stay_on_a_draining_vm_when_the_pool_keeps_sessions() {
    let backends = three_backends().await;
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let node = Node::start(&config(
        &addresses,
        "drain = { target = 0.0, keep = \"sessions\" }\nsticky = { cookie = \"hv\" }",
    ));
    let proxy = node.listener("web");
    let mut client = HttpClient::connect(proxy).await;
    // Find a session cookie for vm-a.
    let mut cookie = None;
    for _ in 0..3 {
        let answer = client.get("/").await;
        if answer.body == "vm-a" {
            let set = answer.headers["set-cookie"].to_str().unwrap().to_string();
            cookie = Some(set.split(';').next().unwrap().to_string());
        }
    }
    let cookie = cookie.expect("one of three requests lands on vm-a");
    node.notice("vm-a", notice("prepare")).await;
    for _ in 0..10 {
        let answer = client.get_with("/", &[("cookie", &cookie)]).await;
        assert_eq!(answer.body, "vm-a", "the sticky session stays on the draining VM");
    }
    for _ in 0..30 {
        assert_ne!(
            client.get("/").await.body,
            "vm-a",
            "new sessions avoid the draining VM"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_across_requests() {
    let backend = HttpBackend::start("vm-a").await;
    let node = Node::start(&config(&[backend.address], ""));
    let mut client = HttpClient::connect(node.listener("web")).await;
    for _ in 0..200 {
        assert_eq!(client.get("/").await.body, "vm-a");
    }
    let opened = backend.connections.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(backend.requests.load(std::sync::atomic::Ordering::Relaxed), 200);
    assert!(
        opened <= 2,
        "200 sequential requests opened {opened} upstream connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways() {
    let backend = HttpBackend::start("vm-a").await;
    let node = Node::start(&config(&[backend.address], ""));
    let proxy = node.listener("web");

    // A 20 MiB chunked response without a length arrives whole.
    let mut client = HttpClient::connect(proxy).await;
    let answer = client.get("/big?bytes=20971520").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), 20 * 1024 * 1024);
    assert!(answer.body.bytes().all(|b| b == b'x'));
    // The connection is still usable afterwards.
    assert_eq!(client.get("/").await.body, "vm-a");

    // A 16 MiB request body streamed in chunks reaches the backend whole.
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let chunks = (0..256).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(vec![7u8; 65536])))
    });
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let request = http::Request::post("/echo-length")
        .header("host", "test")
        .body(body)
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let text = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&text).trim(),
        format!("vm-a {}", 256 * 65536)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_answer_in_time_gives_504() {
    let backend = HttpBackend::start("vm-a").await;
    let text = config(&[backend.address], "")
        .replace("pool = \"p\"\n", "pool = \"p\"\nresponse_timeout = \"300ms\"\n");
    let node = Node::start(&text);
    let mut client = HttpClient::connect(node.listener("web")).await;
    // A request answered in time first: the deadline of the next one is set on a connection
    // whose timer is already running.
    assert_eq!(client.get("/").await.status, 200);
    let started = std::time::Instant::now();
    let answer = client.get("/slow?ms=3000").await;
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert!(
        answer.body.contains("did not answer within 300ms"),
        "{}",
        answer.body
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The client connection stays usable.
    let mut client = HttpClient::connect(node.listener("web")).await;
    assert_eq!(client.get("/").await.status, 200);
}
