//! Bidirectional byte relay for L4 connections, with half-close: when one side stops sending, the
//! other side's write half is shut down and the opposite direction keeps flowing until it ends too.
//! An optional idle timeout ends a connection that carried nothing in either direction for that long.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes read at most per read; the buffer is allocated once per direction, not zeroed.
const BUFFER: usize = 16 * 1024;

/// Bytes relayed in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Client to backend.
    pub upstream: u64,
    /// Backend to client.
    pub downstream: u64,
}

/// Relays between a client and a backend until both directions end, an error occurs, or nothing
/// moves for `idle_timeout`.
pub async fn relay(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    idle_timeout: Option<Duration>,
) -> io::Result<Relayed> {
    let start = Instant::now();
    let last_activity = AtomicU64::new(0);
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    let both = async {
        tokio::try_join!(
            copy_half(&mut client_read, &mut backend_write, &last_activity, start),
            copy_half(&mut backend_read, &mut client_write, &last_activity, start),
        )
    };
    let (upstream, downstream) = match idle_timeout {
        None => both.await?,
        Some(limit) => {
            tokio::pin!(both);
            loop {
                let idle_since = start + Duration::from_millis(last_activity.load(Ordering::Relaxed));
                tokio::select! {
                    result = &mut both => break result?,
                    _ = tokio::time::sleep_until(idle_since + limit) => {
                        let moved = start + Duration::from_millis(last_activity.load(Ordering::Relaxed));
                        if moved + limit <= Instant::now() {
                            return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                        }
                    }
                }
            }
        }
    };
    Ok(Relayed { upstream, downstream })
}

async fn copy_half<R, W>(
    reader: &mut R,
    writer: &mut W,
    last_activity: &AtomicU64,
    start: Instant,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer: Vec<u8> = Vec::with_capacity(BUFFER);
    let mut total = 0u64;
    loop {
        buffer.clear();
        let n = reader.read_buf(&mut buffer).await?;
        if n == 0 {
            // Half-close: tell the other side we are done sending; keep the other direction open.
            writer.shutdown().await?;
            return Ok(total);
        }
        writer.write_all(&buffer).await?;
        total += n as u64;
        last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}
