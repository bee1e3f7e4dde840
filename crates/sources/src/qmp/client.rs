//! A QMP client: connects over a unix socket or TCP, negotiates capabilities, runs commands and
//! delivers events. A reader task owns the socket's read half; a malformed, unrecognised or
//! oversized message is logged and skipped, and the connection goes on.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use handover_core::model::Endpoint;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::{debug, warn};

use super::lines::{Line, LineReader};
use super::message::{self, Event, Message};

/// Why a QMP operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QmpError {
    /// Could not connect or the connection broke.
    #[error("{0}")]
    Io(String),
    /// No answer in time.
    #[error("QMP did not answer {0} within {1:?}")]
    Timeout(String, Duration),
    /// The connection is closed.
    #[error("QMP connection closed")]
    Closed,
    /// QEMU refused the command.
    #[error("{command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// The peer does not speak QMP.
    #[error("not a QMP monitor: {0}")]
    Protocol(String),
}

/// Commands waiting for their answer, by id; `None` once the connection closed. A std mutex: it is
/// never held across an await.
type Pending = Arc<std::sync::Mutex<Option<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>>>;

/// A connected, negotiated QMP client.
pub struct QmpClient {
    writer: Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    pending: Pending,
    next_id: AtomicU64,
    timeout: Duration,
    address: Endpoint,
}

impl fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QmpClient")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Events of one connection; ends (`recv` gives `None`) when the connection closes.
pub type Events = mpsc::Receiver<Event>;

impl QmpClient {
    /// Connects, reads the greeting and negotiates capabilities; every step bounded by `timeout`.
    pub async fn connect(address: &Endpoint, timeout: Duration) -> Result<(Self, Events), QmpError> {
        let connect = async {
            let (reader, writer): (
                Box<dyn AsyncRead + Send + Unpin>,
                Box<dyn AsyncWrite + Send + Unpin>,
            ) = match address {
                Endpoint::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|e| QmpError::Io(format!("cannot connect to {address}: {e}")))?;
                    let (r, w) = stream.into_split();
                    (Box::new(r), Box::new(w))
                }
                Endpoint::Tcp(target) => {
                    let stream = tokio::net::TcpStream::connect(target)
                        .await
                        .map_err(|e| QmpError::Io(format!("cannot connect to {address}: {e}")))?;
                    let (r, w) = stream.into_split();
                    (Box::new(r), Box::new(w))
                }
            };
            let mut lines = LineReader::new(reader);
            // The first message must be the greeting.
            loop {
                match lines.next_line().await.map_err(|e| QmpError::Io(e.to_string()))? {
                    None => return Err(QmpError::Protocol("closed before the greeting".into())),
                    Some(Line::Oversized { bytes }) => {
                        warn!(%address, bytes, "oversized QMP line before the greeting dropped")
                    }
                    Some(Line::Text(text)) => match message::parse(&text) {
                        Ok(Message::Greeting(_)) => break,
                        Ok(other) => {
                            return Err(QmpError::Protocol(format!("expected a greeting, got {other:?}")));
                        }
                        Err(e) => return Err(QmpError::Protocol(e.to_string())),
                    },
                }
            }
            Ok((lines, writer))
        };
        let (lines, writer) = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| QmpError::Timeout("the greeting".into(), timeout))??;

        let pending: Pending = Arc::new(std::sync::Mutex::new(Some(HashMap::new())));
        let (events_tx, events_rx) = mpsc::channel(256);
        tokio::spawn(read_loop(lines, pending.clone(), events_tx, address.clone()));
        let client = Self {
            writer: Mutex::new(writer),
            pending,
            next_id: AtomicU64::new(1),
            timeout,
            address: address.clone(),
        };
        client.execute("qmp_capabilities", None).await?;
        Ok((client, events_rx))
    }

    /// The address.
    pub fn address(&self) -> &Endpoint {
        &self.address
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().expect("pending map lock");
            match pending.as_mut() {
                Some(map) => {
                    map.insert(id, tx);
                }
                None => return Err(QmpError::Closed),
            }
        }
        let mut request = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string().into_bytes();
        line.push(b'\n');
        let send = async {
            let mut writer = self.writer.lock().await;
            writer
                .write_all(&line)
                .await
                .map_err(|e| QmpError::Io(format!("writing {command}: {e}")))?;
            writer
                .flush()
                .await
                .map_err(|e| QmpError::Io(format!("writing {command}: {e}")))
        };
        let outcome = tokio::time::timeout(self.timeout, async {
            send.await?;
            rx.await.unwrap_or(Err(QmpError::Closed))
        })
        .await;
        match outcome {
            Ok(result) => result.map_err(|e| match e {
                QmpError::Command { class, desc, .. } => QmpError::Command {
                    command: command.to_string(),
                    class,
                    desc,
                },
                other => other,
            }),
            Err(_) => {
                if let Some(map) = self.pending.lock().expect("pending map lock").as_mut() {
                    map.remove(&id);
                }
                Err(QmpError::Timeout(command.to_string(), self.timeout))
            }
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut lines: LineReader<R>,
    pending: Pending,
    events: mpsc::Sender<Event>,
    address: Endpoint,
) {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                debug!(%address, error = %e, "QMP read failed");
                break;
            }
        };
        let text = match line {
            Line::Text(text) => text,
            Line::Oversized { bytes } => {
                warn!(%address, bytes, "oversized QMP line dropped");
                continue;
            }
        };
        match message::parse(&text) {
            Ok(Message::Event(event)) => {
                if events.try_send(event).is_err() {
                    warn!(%address, "QMP event dropped: the consumer is not keeping up");
                }
            }
            Ok(Message::Return { id, value }) => answer(&pending, id, Ok(value), &address),
            Ok(Message::Error { id, class, desc }) => answer(
                &pending,
                id,
                Err(QmpError::Command {
                    command: String::new(),
                    class,
                    desc,
                }),
                &address,
            ),
            Ok(Message::Greeting(_)) => warn!(%address, "unexpected second QMP greeting ignored"),
            Err(e) => warn!(%address, error = %e, "malformed QMP message ignored"),
        }
    }
    // Fail every waiting command; later commands see a closed connection.
    if let Some(map) = pending.lock().expect("pending map lock").take() {
        for (_, waiter) in map {
            let _ = waiter.send(Err(QmpError::Closed));
        }
    }
}

fn answer(pending: &Pending, id: Option<u64>, result: Result<Value, QmpError>, address: &Endpoint) {
    let waiter = id.and_then(|id| {
        pending
            .lock()
            .expect("pending map lock")
            .as_mut()
            .and_then(|m| m.remove(&id))
    });
    match waiter {
        Some(waiter) => {
            let _ = waiter.send(result);
        }
        None => warn!(%address, ?id, "QMP answer to no pending command ignored"),
    }
}
