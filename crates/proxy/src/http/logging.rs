//! What an L7 access log line says about one request, gathered while the request is served:
//! when it started, the backend chosen (with its VM's phase at that moment), the status the client
//! got, bytes both ways, the time to the first byte of the answer, and why it failed. Gathered only
//! when the listener has an access log; handed to it when the request ends.

use std::net::SocketAddr;
use std::time::SystemTime;

use tokio::time::Instant;

use crate::access_log::{AccessLog, Entry};
use crate::snapshot::BackendEntry;

/// One request's line, while it is served.
#[derive(Debug)]
pub(super) struct RequestRecord {
    /// `METHOD target`.
    pub request: Option<String>,
    /// When its head was complete.
    pub started: Instant,
    /// Bytes of its head.
    pub head_in: u64,
    /// Bytes of its body taken from the client so far.
    pub body_in: u64,
    /// Bytes sent to the client so far.
    pub bytes_out: u64,
    /// When the first byte of the answer went out.
    pub first_byte: Option<Instant>,
    /// The status the client got.
    pub status: Option<u16>,
    /// The backend chosen last.
    pub backend: Option<BackendEntry>,
    /// Why it failed.
    pub error: Option<String>,
}

impl RequestRecord {
    /// A request whose head (`head_in` bytes, `request` = `METHOD target`) is complete now.
    pub fn new(request: Option<String>, head_in: u64) -> Box<Self> {
        Box::new(Self {
            request,
            started: Instant::now(),
            head_in,
            body_in: 0,
            bytes_out: 0,
            first_byte: None,
            status: None,
            backend: None,
            error: None,
        })
    }

    /// Bytes written to the client.
    pub fn sent(&mut self, bytes: usize) {
        if self.first_byte.is_none() {
            self.first_byte = Some(Instant::now());
        }
        self.bytes_out += bytes as u64;
    }

    /// The answer's status, and why it failed if it did.
    pub fn answered(&mut self, status: u16, error: Option<&str>) {
        self.status = Some(status);
        if let Some(error) = error {
            self.error = Some(error.to_string());
        }
    }

    /// The request failed after its status (or without one).
    pub fn failed(&mut self, error: &str) {
        self.error.get_or_insert_with(|| error.to_string());
    }

    /// Hands the line to the log.
    pub fn finish(self, log: &AccessLog, client: SocketAddr) {
        let Self {
            request,
            started,
            head_in,
            body_in,
            bytes_out,
            first_byte,
            status,
            backend,
            error,
        } = self;
        log.record(Entry {
            time: SystemTime::now(),
            client,
            protocol: "http",
            request,
            status,
            phase: backend.as_ref().map(|b| b.phase),
            backend: backend.map(|b| (b.backend, b.address)),
            bytes_in: head_in + body_in,
            bytes_out,
            ttfb: first_byte.map(|t| t.saturating_duration_since(started)),
            total: started.elapsed(),
            error,
        });
    }
}
