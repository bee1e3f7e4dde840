//! One keep-alive connection of the load: sends its requests when they are due, reads each
//! response whole (by `Content-Length` or chunked framing) and records its latency.

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// When a connection's requests are due.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Its first request.
    pub first: Instant,
    /// Between two of its requests.
    pub interval: Duration,
    /// Requests due before this are warm-up, not counted.
    pub measure_from: Instant,
    /// No request is due at or after this.
    pub end: Instant,
    /// Longest wait for one answer; past it the request is an error.
    pub timeout: Duration,
}

/// What a connection measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Latency of each answered request, microseconds.
    pub latencies_us: Vec<u32>,
    /// Failed requests, and answers other than 2xx.
    pub errors: u64,
}

impl Outcome {
    /// Adds another connection's.
    pub fn merge(&mut self, other: Outcome) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
    }
}

/// Runs one connection's share of the load; reconnects after a failure.
pub async fn run(target: SocketAddr, request: Vec<u8>, pace: Pace) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut stream: Option<TcpStream> = None;
    let mut buffer = Vec::with_capacity(16 * 1024);
    let mut due = pace.first;
    let mut free_since = Instant::now();
    while due < pace.end {
        if Instant::now() >= pace.end + pace.timeout {
            // Stuck past the end (a backend that stopped answering): what is still due was never
            // served. Count it and stop, so that a run always ends.
            while due < pace.end {
                outcome.errors += u64::from(due >= pace.measure_from);
                due += pace.interval;
            }
            break;
        }
        tokio::time::sleep_until(due).await;
        let sent = Instant::now();
        // Busy past the due time: the wait counts (the balancer kept the connection). Idle: the
        // request left as soon as the timer let it.
        let from = if free_since > due { due } else { sent };
        let result = tokio::time::timeout(pace.timeout, exchange(&mut stream, target, &request, &mut buffer))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {:?}", pace.timeout)));
        let done = Instant::now();
        free_since = done;
        if due >= pace.measure_from {
            match result {
                Ok(status) if (200..300).contains(&status) => {
                    let micros = done.saturating_duration_since(from).as_micros();
                    outcome
                        .latencies_us
                        .push(u32::try_from(micros).unwrap_or(u32::MAX));
                }
                _ => outcome.errors += 1,
            }
        }
        if result.is_err() {
            stream = None;
        }
        due += pace.interval;
    }
    Ok(outcome)
}

/// Sends the request and reads its response; returns the status.
async fn exchange(
    stream: &mut Option<TcpStream>,
    target: SocketAddr,
    request: &[u8],
    buffer: &mut Vec<u8>,
) -> anyhow::Result<u16> {
    if stream.is_none() {
        let connected = TcpStream::connect(target).await.context("connect")?;
        connected.set_nodelay(true)?;
        *stream = Some(connected);
    }
    let Some(stream) = stream.as_mut() else {
        bail!("no connection");
    };
    stream.write_all(request).await.context("send")?;
    buffer.clear();
    loop {
        if read_more(stream, buffer).await? == 0 {
            bail!("connection closed before a response head");
        }
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 32];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut response, buffer, &mut headers)
            .context("response head")?;
        let httparse::Status::Complete(head) = parsed else {
            continue;
        };
        let status = response.code.unwrap_or(0);
        let mut length = None;
        let mut chunked = false;
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok());
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = header.value.ends_with(b"chunked");
            }
        }
        if chunked {
            while !buffer[head..].ends_with(b"0\r\n\r\n") {
                if read_more(stream, buffer).await? == 0 {
                    bail!("connection closed inside a chunked body");
                }
            }
        } else {
            let total = head + length.context("a response without Content-Length")?;
            while buffer.len() < total {
                if read_more(stream, buffer).await? == 0 {
                    bail!("connection closed inside the body");
                }
            }
        }
        return Ok(status);
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> anyhow::Result<usize> {
    if buffer.capacity() - buffer.len() < 4096 {
        buffer.reserve(16 * 1024);
    }
    stream.read_buf(buffer).await.context("receive")
}
