//! The socket of an upstream HTTP/1.1 connection: plain TCP (the hot path, unchanged but for one
//! branch per call) or a TLS session over TCP where the pool asks for it.
//!
//! Writes go through [`BackendStream::send`], which flushes a TLS session's records to the socket
//! (a plain socket has nothing to flush), so that no caller can leave a request half in rustls'
//! buffer while it waits for the answer. A TLS session is boxed: the plain variant stays small.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp;
use tokio_rustls::client::TlsStream;

use crate::buffer::Buffer;

/// A TLS session with a backend.
type Tls = TlsStream<TcpStream>;

/// A connection to a backend.
#[derive(Debug)]
pub enum BackendStream {
    /// Cleartext.
    Plain(TcpStream),
    /// TLS (the handshake is done).
    Tls(Box<Tls>),
}

impl BackendStream {
    /// Whether this is a TLS session.
    #[inline]
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// Writes all of `bytes` and, for TLS, flushes them to the socket.
    #[inline]
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(tcp) => tcp.write_all(bytes).await,
            Self::Tls(tls) => {
                tls.write_all(bytes).await?;
                tls.flush().await
            }
        }
    }

    /// Ends the writing side (a TLS session sends its `close_notify` first).
    pub async fn close(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(tcp) => tcp.shutdown().await,
            Self::Tls(tls) => tls.shutdown().await,
        }
    }

    /// Whether an idle connection's peer closed it or sent something nobody asked for: checked
    /// from the socket's readiness, without a system call in the common case. A TLS session's
    /// records are only peeked at (reading them would consume them), and what rustls already
    /// holds (decrypted bytes, the peer's `close_notify`) counts too.
    pub fn peer_spoke(&mut self) -> bool {
        let mut context = Context::from_waker(Waker::noop());
        match self {
            Self::Plain(tcp) => match tcp.poll_read_ready(&mut context) {
                Poll::Pending => false,
                Poll::Ready(Err(_)) => true,
                // Readable is also what a fully read response can leave behind: one read tells.
                Poll::Ready(Ok(())) => {
                    !matches!(tcp.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            Self::Tls(tls) => {
                let (tcp, session) = tls.get_mut();
                match session.process_new_packets() {
                    Ok(state) if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() => {
                        return true;
                    }
                    Ok(_) => {}
                    Err(_) => return true,
                }
                let mut byte = [0u8; 1];
                let mut peeked = ReadBuf::new(&mut byte);
                // Pending: nothing waits (and the readiness is cleared); else data or end of file.
                tcp.poll_peek(&mut context, &mut peeked).is_ready()
            }
        }
    }

    /// Read and write halves that can be used at once.
    #[inline]
    pub fn split(&mut self) -> (BackendRead<'_>, BackendWrite<'_>) {
        match self {
            Self::Plain(tcp) => {
                let (read, write) = tcp.split();
                (BackendRead::Plain(read), BackendWrite::Plain(write))
            }
            Self::Tls(tls) => {
                let (read, write) = tokio::io::split(&mut **tls);
                (BackendRead::Tls(read), BackendWrite::Tls(write))
            }
        }
    }
}

impl AsyncRead for BackendStream {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

/// The reading half of a [`BackendStream`].
#[derive(Debug)]
pub enum BackendRead<'a> {
    /// Cleartext.
    Plain(tcp::ReadHalf<'a>),
    /// TLS.
    Tls(tokio::io::ReadHalf<&'a mut Tls>),
}

impl BackendRead<'_> {
    /// Waits until the backend sent something and reads it into `into`: `Ok(None)` when the
    /// socket's readiness was stale (nothing was read; wait again), `Ok(Some(0))` at its end.
    pub async fn arrival(&mut self, into: &mut Buffer) -> io::Result<Option<usize>> {
        match self {
            Self::Plain(read) => {
                read.readable().await?;
                match into.try_read_from(read) {
                    Ok(n) => Ok(Some(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Self::Tls(read) => into.read_from(read).await.map(Some),
        }
    }
}

impl AsyncRead for BackendRead<'_> {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(read) => Pin::new(read).poll_read(cx, buf),
            Self::Tls(read) => Pin::new(read).poll_read(cx, buf),
        }
    }
}

/// The writing half of a [`BackendStream`].
#[derive(Debug)]
pub enum BackendWrite<'a> {
    /// Cleartext.
    Plain(tcp::WriteHalf<'a>),
    /// TLS.
    Tls(tokio::io::WriteHalf<&'a mut Tls>),
}

impl BackendWrite<'_> {
    /// Writes all of `bytes` and, for TLS, flushes them to the socket.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(write) => write.write_all(bytes).await,
            Self::Tls(write) => {
                write.write_all(bytes).await?;
                write.flush().await
            }
        }
    }
}
