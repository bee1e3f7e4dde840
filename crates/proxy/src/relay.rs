//! Bidirectional byte relay for L4 connections, with half-close: when one side stops sending, the
//! other side's write half is shut down and the opposite direction keeps flowing until it ends too.
//! An optional idle timeout ends a connection that carried nothing in either direction for that long.
//!
//! A direction holds a buffer only while bytes move: it waits for readiness without one, takes a
//! recycled buffer, reads and writes until the socket is drained, and gives the buffer back. An
//! idle connection costs its task and two sockets, nothing more.

use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::Instant;

use crate::buffer::{Buffer, CAPACITY};

/// Bytes relayed in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Client to backend.
    pub upstream: u64,
    /// Backend to client.
    pub downstream: u64,
}

/// What both directions share.
struct Shared {
    /// When something last moved, in milliseconds since `start` (kept only with an idle timeout).
    last_activity: Option<AtomicU64>,
    start: Instant,
    /// One direction has ended; the other one ending closes both sockets, so it need not shut
    /// its peer's write half first.
    one_ended: AtomicBool,
}

impl Shared {
    fn touch(&self) {
        if let Some(last) = &self.last_activity {
            last.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }
}

/// Relays between a client and a backend until both directions end, an error occurs, or nothing
/// moves for `idle_timeout`.
pub async fn relay(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    idle_timeout: Option<Duration>,
) -> io::Result<Relayed> {
    let shared = Shared {
        last_activity: idle_timeout.map(|_| AtomicU64::new(0)),
        start: Instant::now(),
        one_ended: AtomicBool::new(false),
    };
    let (client_read, client_write) = client.split();
    let (backend_read, backend_write) = backend.split();
    let both = async {
        tokio::try_join!(
            copy_half(client_read, backend_write, &shared),
            copy_half(backend_read, client_write, &shared),
        )
    };
    let (upstream, downstream) = match idle_timeout {
        None => both.await?,
        Some(limit) => {
            tokio::pin!(both);
            let last = || {
                let ms = shared
                    .last_activity
                    .as_ref()
                    .map_or(0, |last| last.load(Ordering::Relaxed));
                shared.start + Duration::from_millis(ms)
            };
            loop {
                let idle_since = last();
                tokio::select! {
                    result = &mut both => break result?,
                    _ = tokio::time::sleep_until(idle_since + limit) => {
                        if last() + limit <= Instant::now() {
                            return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                        }
                    }
                }
            }
        }
    };
    Ok(Relayed { upstream, downstream })
}

/// One direction: reader to writer until the reader ends.
async fn copy_half(reader: ReadHalf<'_>, mut writer: WriteHalf<'_>, shared: &Shared) -> io::Result<u64> {
    let mut reader = reader;
    let mut total = 0u64;
    loop {
        // No buffer while nothing arrives (readiness can be stale: a fresh socket is assumed
        // readable, so a read that finds nothing gives the buffer back and waits again).
        poll_fn(|cx| reader.as_ref().poll_read_ready(cx)).await?;
        let mut buffer = Buffer::take();
        while let Some(read) = buffer.read_now(&mut reader) {
            let n = read?;
            if n == 0 {
                // Half-close: tell the other side we are done sending, unless the other direction
                // is over too and both sockets are about to close.
                if !shared.one_ended.swap(true, Ordering::Relaxed) {
                    writer.shutdown().await?;
                }
                return Ok(total);
            }
            writer.write_all(buffer.filled()).await?;
            buffer.clear();
            total += n as u64;
            shared.touch();
            if n < CAPACITY {
                // Drained: give the buffer back before waiting again.
                break;
            }
        }
    }
}
