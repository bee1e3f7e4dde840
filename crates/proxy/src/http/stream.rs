//! What the HTTP/1.1 engine needs from a client connection, for the two kinds it serves: a plain
//! TCP socket (the hot path: readiness without a buffer, writes without a future) and a TLS
//! session over one (where readiness of the socket says nothing about decrypted bytes, and a
//! write must be flushed through the session).

use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::timer::LazyTimer;

/// A client connection of the HTTP/1.1 engine.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when the client may have sent something: waiting for it holds no buffer. (May be
    /// ready spuriously: the read that follows then waits.)
    fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Sets `TCP_NODELAY` on the socket.
    fn nodelay(&self);

    /// Writes all of `bytes`; a client that takes nothing for `stall` is given up on.
    fn send_all(
        &mut self,
        bytes: &[u8],
        timer: &mut LazyTimer,
        stall: Duration,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

impl ClientStream for TcpStream {
    #[inline]
    fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }

    fn nodelay(&self) {
        let _ = self.set_nodelay(true);
    }

    async fn send_all(&mut self, bytes: &[u8], timer: &mut LazyTimer, stall: Duration) -> io::Result<()> {
        let mut rest = bytes;
        // Set when the client's window is full; moved on by every write that makes progress.
        let mut deadline = None;
        while !rest.is_empty() {
            match self.try_write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    rest = &rest[n..];
                    deadline = None;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let until = *deadline.get_or_insert_with(|| Instant::now() + stall);
                    tokio::select! {
                        biased;
                        ready = self.writable() => ready?,
                        _ = timer.until(until) => return Err(io::ErrorKind::TimedOut.into()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_idle(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The session may hold decrypted bytes the socket no longer shows: go and read.
        Poll::Ready(Ok(()))
    }

    fn nodelay(&self) {
        let _ = self.get_ref().0.set_nodelay(true);
    }

    async fn send_all(&mut self, bytes: &[u8], timer: &mut LazyTimer, stall: Duration) -> io::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let until = Instant::now() + stall;
            tokio::select! {
                biased;
                written = self.write(rest) => match written? {
                    0 => return Err(io::ErrorKind::WriteZero.into()),
                    n => rest = &rest[n..],
                },
                _ = timer.until(until) => return Err(io::ErrorKind::TimedOut.into()),
            }
        }
        let until = Instant::now() + stall;
        tokio::select! {
            biased;
            flushed = self.flush() => flushed,
            _ = timer.until(until) => Err(io::ErrorKind::TimedOut.into()),
        }
    }
}
