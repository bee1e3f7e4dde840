//! Client load, recorded request by request: an open-loop HTTP generator (a new connection per
//! request at a fixed rate, whatever the answers do) and long-lived TCP echo connections that
//! exchange a line at a fixed interval. Times are wall-clock milliseconds, like QMP's events.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::now_ms;

/// One HTTP request as the client saw it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// When it was sent (connect began), ms.
    pub start_ms: f64,
    /// When the answer ended or the request failed, ms.
    pub end_ms: f64,
    /// HTTP status (0 when there was no answer).
    pub status: u16,
    /// The VM that answered (from the body).
    pub vm: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

impl RequestRecord {
    /// Answered with 200.
    pub fn ok(&self) -> bool {
        self.status == 200 && self.error.is_none()
    }

    /// Latency, ms.
    pub fn latency_ms(&self) -> f64 {
        self.end_ms - self.start_ms
    }
}

/// Records shared between the generator's tasks: an append-only list.
#[derive(Debug)]
struct Records<T>(std::sync::Mutex<Vec<T>>);

impl<T> Default for Records<T> {
    fn default() -> Self {
        Self(std::sync::Mutex::new(Vec::new()))
    }
}

impl<T> Records<T> {
    fn push(&self, item: T) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(item);
    }

    fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The open-loop HTTP load.
#[derive(Debug, Clone)]
pub struct HttpLoad {
    /// The balancer.
    pub target: SocketAddr,
    /// Requests per second (none when zero).
    pub rate: f64,
    /// KiB of guest memory each request rewrites.
    pub kib: u32,
    /// A request with no complete answer after this fails.
    pub timeout: Duration,
}

/// A running load; [`Running::stop`] ends it and returns every request.
#[derive(Debug)]
pub struct Running<T> {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    records: Arc<Records<T>>,
}

impl<T> Running<T> {
    /// Stops sending, waits for what is in flight (bounded by its timeout), returns the records.
    pub async fn stop(self) -> Vec<T> {
        self.cancel.cancel();
        let _ = self.task.await;
        self.records.take()
    }
}

impl HttpLoad {
    /// Starts sending.
    pub fn start(&self) -> Running<RequestRecord> {
        let cancel = CancellationToken::new();
        let records: Arc<Records<RequestRecord>> = Arc::default();
        let spec = self.clone();
        let (stop, sink) = (cancel.clone(), records.clone());
        let task = tokio::spawn(async move {
            if spec.rate <= 0.0 {
                return stop.cancelled().await;
            }
            let mut in_flight = JoinSet::new();
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / spec.rate));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ticks.tick() => {
                        let (spec, sink) = (spec.clone(), sink.clone());
                        in_flight.spawn(async move { sink.push(spec.one().await) });
                    }
                    Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                }
            }
            while in_flight.join_next().await.is_some() {}
        });
        Running {
            cancel,
            task,
            records,
        }
    }

    /// One request on a new connection.
    async fn one(&self) -> RequestRecord {
        let start_ms = now_ms();
        let result = tokio::time::timeout(self.timeout, self.exchange()).await;
        let (status, vm, error) = match result {
            Ok(Ok((status, vm))) => (status, vm, None),
            Ok(Err(e)) => (0, None, Some(e)),
            Err(_) => (0, None, Some(format!("no answer within {:?}", self.timeout))),
        };
        RequestRecord {
            start_ms,
            end_ms: now_ms(),
            status,
            vm,
            error,
        }
    }

    async fn exchange(&self) -> Result<(u16, Option<String>), String> {
        let mut stream = TcpStream::connect(self.target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = format!(
            "GET /cgi-bin/dirty?kb={} HTTP/1.1\r\nHost: testbed\r\nConnection: close\r\n\r\n",
            self.kib
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                format!(
                    "not an HTTP answer: {:?}",
                    text.chars().take(80).collect::<String>()
                )
            })?;
        // The guest answers "dirtied N KiB by NAME".
        let vm = text
            .lines()
            .rev()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("dirtied ")
                    .and_then(|r| r.rsplit(" by ").next())
            })
            .map(str::to_string);
        Ok((status, vm))
    }
}

/// One long-lived TCP connection as the client saw it.
#[derive(Debug, Clone, Serialize)]
pub struct EchoRecord {
    /// The VM it reached (the echo service's first line).
    pub vm: Option<String>,
    /// When it opened, ms.
    pub opened_ms: f64,
    /// Lines echoed correctly.
    pub exchanges: u64,
    /// Slowest echo, ms.
    pub max_rtt_ms: f64,
    /// When and why it broke, if it did.
    pub broken: Option<(f64, String)>,
}

/// Long-lived connections through the balancer's TCP listener.
#[derive(Debug, Clone)]
pub struct EchoLoad {
    /// The balancer's TCP listener.
    pub target: SocketAddr,
    /// How many connections.
    pub connections: usize,
    /// Pause between two lines on a connection.
    pub interval: Duration,
    /// An echo slower than this breaks the connection.
    pub timeout: Duration,
}

impl EchoLoad {
    /// Opens the connections (each learns its VM first) and starts exchanging lines; also returns
    /// the VM each connection reached.
    pub async fn start(&self) -> (Running<EchoRecord>, Vec<Option<String>>) {
        let cancel = CancellationToken::new();
        let records: Arc<Records<EchoRecord>> = Arc::default();
        let mut set = JoinSet::new();
        let mut opened = Vec::new();
        for _ in 0..self.connections {
            opened.push(self.open().await);
        }
        let vms = opened
            .iter()
            .map(|c| c.as_ref().ok().and_then(|(_, record)| record.vm.clone()))
            .collect();
        for connection in opened {
            let (spec, stop, sink) = (self.clone(), cancel.clone(), records.clone());
            set.spawn(async move { sink.push(spec.exchange(connection, stop).await) });
        }
        let task = tokio::spawn(async move { while set.join_next().await.is_some() {} });
        (
            Running {
                cancel,
                task,
                records,
            },
            vms,
        )
    }

    async fn open(&self) -> Result<(BufReader<TcpStream>, EchoRecord), EchoRecord> {
        let opened_ms = now_ms();
        let broken = |why: String| EchoRecord {
            vm: None,
            opened_ms,
            exchanges: 0,
            max_rtt_ms: 0.0,
            broken: Some((now_ms(), why)),
        };
        let stream = match tokio::time::timeout(self.timeout, TcpStream::connect(self.target)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(broken(format!("connect: {e}"))),
            Err(_) => return Err(broken("connect timed out".into())),
        };
        let mut reader = BufReader::new(stream);
        let mut name = String::new();
        match tokio::time::timeout(self.timeout, reader.read_line(&mut name)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(broken("no greeting from the echo service".into())),
        }
        Ok((
            reader,
            EchoRecord {
                vm: Some(name.trim().to_string()),
                opened_ms,
                exchanges: 0,
                max_rtt_ms: 0.0,
                broken: None,
            },
        ))
    }

    async fn exchange(
        &self,
        connection: Result<(BufReader<TcpStream>, EchoRecord), EchoRecord>,
        stop: CancellationToken,
    ) -> EchoRecord {
        let (mut stream, mut record) = match connection {
            Ok(c) => c,
            Err(record) => return record,
        };
        let mut line = String::new();
        loop {
            // One more exchange after the stop, so a connection broken at the end is noticed.
            let stopping = stop.is_cancelled();
            let message = format!("line {}\n", record.exchanges);
            let sent = now_ms();
            let result = tokio::time::timeout(self.timeout, async {
                stream.get_mut().write_all(message.as_bytes()).await?;
                line.clear();
                stream.read_line(&mut line).await
            })
            .await;
            match result {
                Ok(Ok(_)) if line == message => {
                    record.exchanges += 1;
                    record.max_rtt_ms = record.max_rtt_ms.max(now_ms() - sent);
                }
                Ok(Ok(0)) => {
                    record.broken = Some((now_ms(), "closed by the other side".into()));
                    break;
                }
                Ok(Ok(_)) => {
                    record.broken = Some((now_ms(), format!("echoed {line:?} for {message:?}")));
                    break;
                }
                Ok(Err(e)) => {
                    record.broken = Some((now_ms(), e.to_string()));
                    break;
                }
                Err(_) => {
                    record.broken = Some((now_ms(), format!("no echo within {:?}", self.timeout)));
                    break;
                }
            }
            if stopping {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        record
    }
}
