//! Real backends on loopback for the tests.
//!
//! - [`TcpBackend`]: on accept it sends its name and a newline, then answers every line `x` with
//!   `<name> x`, so a test knows which VM each connection reached and that it still carries data.
//! - [`HttpBackend`]: answers with its name; `/slow?ms=N` waits N ms first.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A line-echo TCP backend that names itself.
pub struct TcpBackend {
    /// Its address.
    pub address: SocketAddr,
    /// Connections accepted.
    pub accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpBackend {
    /// Starts a backend named `name` on an ephemeral loopback port.
    pub async fn start(name: &'static str) -> Self {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts a backend named `name` on `address` (to come back where a stopped one was).
    pub async fn start_on(name: &'static str, address: SocketAddr) -> Self {
        let listener = TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    if write.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                        return;
                    }
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if write
                            .write_all(format!("{name} {line}\n").as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            address,
            accepted,
            task,
        }
    }

    /// Stops accepting (open connections keep going); returns once the listener is closed, so a
    /// connect made after it is refused (the abort alone takes effect later, on a worker thread).
    pub async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client connection through an L4 listener to a [`TcpBackend`].
pub struct TcpClient {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: tokio::net::tcp::OwnedWriteHalf,
    /// The VM that answered.
    pub vm: String,
    /// The client's own address (as the proxy sees it).
    pub local: SocketAddr,
}

impl TcpClient {
    /// Connects and reads the backend's name.
    pub async fn connect(address: SocketAddr) -> Self {
        let stream = TcpStream::connect(address).await.expect("connect to the proxy");
        let local = stream.local_addr().unwrap();
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let vm = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("backend greeting in time")
            .expect("read greeting")
            .expect("greeting line");
        Self {
            lines,
            write,
            vm,
            local,
        }
    }

    /// Sends a line and returns the answer.
    pub async fn echo(&mut self, text: &str) -> Option<String> {
        self.write.write_all(format!("{text}\n").as_bytes()).await.ok()?;
        tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .ok()?
            .ok()?
    }
}

/// Connects `n` times (with up to `concurrency` at once) and counts which VM answered each.
pub async fn vm_counts(
    address: SocketAddr,
    n: usize,
    concurrency: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    let mut done = 0;
    while done < n {
        let batch = concurrency.min(n - done);
        let handles: Vec<_> = (0..batch)
            .map(|_| tokio::spawn(async move { TcpClient::connect(address).await.vm }))
            .collect();
        for h in handles {
            *counts.entry(h.await.unwrap()).or_insert(0) += 1;
        }
        done += batch;
    }
    counts
}

/// An HTTP backend that names itself.
pub struct HttpBackend {
    /// Its address.
    pub address: SocketAddr,
    /// Requests answered.
    pub requests: Arc<AtomicU64>,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
    /// Connections open now.
    pub open: Arc<AtomicU64>,
    /// Status `/health` answers with.
    pub health_status: Arc<std::sync::atomic::AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpBackend {
    /// Starts a backend named `name`.
    pub async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let health_status = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let status_source = health_status.clone();
        let counter = requests.clone();
        let accepted = connections.clone();
        let open = Arc::new(AtomicU64::new(0));
        let open_now = open.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                open_now.fetch_add(1, Ordering::Relaxed);
                let open_now = open_now.clone();
                let counter = counter.clone();
                let status_source = status_source.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let counter = counter.clone();
                        let status_source = status_source.clone();
                        async move {
                            if request.uri().path() == "/health" {
                                let mut response =
                                    Response::new(Full::new(Bytes::from_static(b"health\n")).boxed());
                                *response.status_mut() =
                                    hyper::StatusCode::from_u16(status_source.load(Ordering::Relaxed))
                                        .unwrap();
                                return Ok::<_, Infallible>(response);
                            }
                            let wait = request
                                .uri()
                                .query()
                                .and_then(|q| q.strip_prefix("ms="))
                                .and_then(|ms| ms.parse::<u64>().ok())
                                .filter(|_| request.uri().path() == "/slow");
                            if let Some(ms) = wait {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            if request.uri().path() == "/echo-length" {
                                // Streams the request body in, answers with its length.
                                let mut body = request.into_body();
                                let mut length = 0usize;
                                while let Some(frame) = body.frame().await {
                                    if let Ok(data) = frame.map(|f| f.into_data()) {
                                        length += data.map(|d| d.len()).unwrap_or(0);
                                    } else {
                                        break;
                                    }
                                }
                                counter.fetch_add(1, Ordering::Relaxed);
                                return Ok::<_, Infallible>(Response::new(
                                    Full::new(Bytes::from(format!("{name} {length}\n"))).boxed(),
                                ));
                            }
                            if let Some(bytes) = request
                                .uri()
                                .query()
                                .and_then(|q| q.strip_prefix("bytes="))
                                .and_then(|b| b.parse::<usize>().ok())
                                .filter(|_| request.uri().path() == "/big")
                            {
                                // A large response streamed in 64 KiB chunks, without a length.
                                counter.fetch_add(1, Ordering::Relaxed);
                                let chunks = (0..bytes.div_ceil(65536)).map(move |i| {
                                    let size = 65536.min(bytes - i * 65536);
                                    Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(vec![
                                        b'x';
                                        size
                                    ])))
                                });
                                let stream =
                                    http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
                                return Ok(Response::new(stream.boxed()));
                            }
                            let forwarded = request
                                .headers()
                                .get("x-forwarded-for")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let hop = request.headers().contains_key("x-hop");
                            counter.fetch_add(1, Ordering::Relaxed);
                            let mut response =
                                Response::new(Full::new(Bytes::from(format!("{name}\n"))).boxed());
                            response
                                .headers_mut()
                                .insert("x-seen-forwarded-for", forwarded.parse().unwrap());
                            response
                                .headers_mut()
                                .insert("x-seen-hop", if hop { "yes" } else { "no" }.parse().unwrap());
                            Ok(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    open_now.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        Self {
            address,
            requests,
            connections,
            open,
            health_status,
            task,
        }
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A keep-alive HTTP/1.1 client connection.
pub struct HttpClient {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

/// A response, reduced to what the tests look at.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body, trimmed.
    pub body: String,
    /// Headers.
    pub headers: http::HeaderMap,
}

impl HttpClient {
    /// Opens a connection.
    pub async fn connect(address: SocketAddr) -> Self {
        let stream = TcpStream::connect(address).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Self { sender }
    }

    /// Sends `GET path` on this connection.
    pub async fn get(&mut self, path: &str) -> Answer {
        self.get_with(path, &[]).await
    }

    /// Sends `GET path` with extra headers.
    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.sender.ready().await.expect("connection ready");
        let mut request = Request::get(path).header("host", "test");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = self
            .sender
            .send_request(request.body(Empty::new()).unwrap())
            .await
            .expect("response");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            body: String::from_utf8_lossy(&body).trim().to_string(),
            headers,
        }
    }
}
