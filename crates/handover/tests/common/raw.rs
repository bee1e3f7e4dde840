//! HTTP/1.1 at the byte level, for tests of the proxy's protocol handling: a backend whose answers
//! are scripted per request, and a client that sends exact bytes and reads responses by their
//! framing. Both keep what they saw so a test can assert on the exact bytes that crossed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the backend received it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The head, request line to the empty line included.
    pub head: String,
    /// The body bytes exactly as framed on the wire (chunk sizes included).
    pub body: Vec<u8>,
}

impl Seen {
    /// A header's value (first of that name, case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        header_of(&self.head, name)
    }
}

/// A header's value in a head (first of that name, case-insensitive).
pub fn header_of(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// What the backend does with one request.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Written as soon as the head is read, before the body (a `100 Continue`, or an early answer).
    pub before_body: Vec<u8>,
    /// Read the body before answering.
    pub read_body: bool,
    /// Written after the body.
    pub reply: Vec<u8>,
    /// Close the connection after the reply.
    pub close: bool,
    /// Wait this long before the reply.
    pub delay: Duration,
}

impl Plan {
    /// Reads the body, then answers `reply` and keeps the connection.
    pub fn answer(reply: impl Into<Vec<u8>>) -> Self {
        Self {
            read_body: true,
            reply: reply.into(),
            ..Self::default()
        }
    }
}

/// A plain 200 with a body.
pub fn ok(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// A backend that answers each request as `script` plans it.
pub struct RawBackend {
    /// Its address.
    pub address: SocketAddr,
    /// Every request received, in order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

type Script = Arc<dyn Fn(&Seen) -> Plan + Send + Sync>;

impl RawBackend {
    /// Starts on an ephemeral loopback port.
    pub async fn start(script: impl Fn(&Seen) -> Plan + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let script: Script = Arc::new(script);
        let (seen2, connections2) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                connections2.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(stream, script.clone(), seen2.clone()));
            }
        });
        Self {
            address,
            seen,
            connections,
            task,
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, script: Script, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut reader = Reader::default();
    loop {
        let Some(head) = reader.head(&mut stream).await else {
            return;
        };
        let mut request = Seen {
            head,
            body: Vec::new(),
        };
        let plan = script(&request);
        if !plan.before_body.is_empty() && stream.write_all(&plan.before_body).await.is_err() {
            return;
        }
        if plan.read_body {
            let Some(body) = reader.body(&mut stream, &request.head, false).await else {
                return;
            };
            request.body = body;
        }
        seen.lock().unwrap().push(request);
        tokio::time::sleep(plan.delay).await;
        if stream.write_all(&plan.reply).await.is_err() || plan.close {
            return;
        }
    }
}

/// Reads heads and bodies from a stream, keeping what came after them.
#[derive(Default)]
pub struct Reader {
    buffered: Vec<u8>,
}

impl Reader {
    async fn fill(&mut self, stream: &mut TcpStream) -> Option<()> {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        self.buffered.extend_from_slice(&chunk[..n]);
        Some(())
    }

    /// The next head, or `None` when the stream ends first.
    pub async fn head(&mut self, stream: &mut TcpStream) -> Option<String> {
        loop {
            if let Some(end) = find(&self.buffered, b"\r\n\r\n") {
                let head: Vec<u8> = self.buffered.drain(..end + 4).collect();
                return Some(String::from_utf8_lossy(&head).into_owned());
            }
            self.fill(stream).await?;
        }
    }

    /// The body a head announces, exactly as framed; `until_close` reads to the end of stream
    /// when the head has no framing (responses).
    pub async fn body(&mut self, stream: &mut TcpStream, head: &str, until_close: bool) -> Option<Vec<u8>> {
        if header_of(head, "transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().ends_with("chunked"))
        {
            let mut body = Vec::new();
            loop {
                let line = self.line(stream).await?;
                body.extend_from_slice(&line);
                let size_text = String::from_utf8_lossy(&line);
                let size_text = size_text.trim_end().split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_text, 16).ok()?;
                if size == 0 {
                    loop {
                        let trailer = self.line(stream).await?;
                        body.extend_from_slice(&trailer);
                        if trailer == b"\r\n" {
                            return Some(body);
                        }
                    }
                }
                body.extend_from_slice(&self.exactly(stream, size + 2).await?);
            }
        }
        if let Some(length) = header_of(head, "content-length") {
            return self.exactly(stream, length.parse().ok()?).await;
        }
        if until_close {
            while self.fill(stream).await.is_some() {}
            return Some(std::mem::take(&mut self.buffered));
        }
        Some(Vec::new())
    }

    async fn line(&mut self, stream: &mut TcpStream) -> Option<Vec<u8>> {
        loop {
            if let Some(end) = find(&self.buffered, b"\r\n") {
                return Some(self.buffered.drain(..end + 2).collect());
            }
            self.fill(stream).await?;
        }
    }

    async fn exactly(&mut self, stream: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
        while self.buffered.len() < n {
            self.fill(stream).await?;
        }
        Some(self.buffered.drain(..n).collect())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response as the client received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Status code.
    pub status: u16,
    /// The head.
    pub head: String,
    /// The body bytes as framed.
    pub body: Vec<u8>,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        header_of(&self.head, name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that sends exact bytes.
pub struct RawClient {
    /// The socket.
    pub stream: TcpStream,
    reader: Reader,
}

impl RawClient {
    /// Connects.
    pub async fn connect(address: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(address).await.unwrap(),
            reader: Reader::default(),
        }
    }

    /// Sends bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Sends bytes; the proxy may close before taking them all.
    pub async fn send_some(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads one response (to a request that was not `HEAD`).
    pub async fn response(&mut self) -> Option<Received> {
        self.response_to(false).await
    }

    /// Reads one response; `head_request` says it has no body.
    pub async fn response_to(&mut self, head_request: bool) -> Option<Received> {
        let head = self.reader.head(&mut self.stream).await?;
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        let bodiless = head_request || status == 204 || status == 304 || (100..200).contains(&status);
        let body = if bodiless {
            Vec::new()
        } else {
            self.reader.body(&mut self.stream, &head, true).await?
        };
        Some(Received { status, head, body })
    }

    /// Whether the proxy closed the connection (waits up to `within`).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        if !self.reader.buffered.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(within, self.stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}
