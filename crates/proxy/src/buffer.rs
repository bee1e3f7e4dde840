//! I/O buffers for the data plane, recycled per worker thread: a connection takes one when bytes
//! are about to move and gives it back as soon as it is empty again, so an idle connection holds
//! no buffer and a busy worker allocates none in its steady state.
//!
//! A [`Buffer`] is a fixed-capacity byte queue: bytes are appended at the end (reads from a socket
//! go straight into its spare capacity, uninitialised memory is never zeroed) and consumed from the
//! front; consumed space is reclaimed by moving the rest down when room is needed.

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Capacity of every buffer: enough for a request or response head and a whole small body.
pub const CAPACITY: usize = 16 * 1024;

/// Most free buffers a worker keeps for reuse.
const KEPT_PER_THREAD: usize = 256;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A byte queue of [`CAPACITY`] bytes, returned to its thread's free list when dropped.
#[derive(Debug)]
pub struct Buffer {
    /// Bytes `start..` are unconsumed; capacity is fixed at [`CAPACITY`].
    data: Vec<u8>,
    /// Bytes before this were consumed.
    start: usize,
}

impl Buffer {
    /// A buffer from this thread's free list, or a new one.
    pub fn take() -> Self {
        let data = FREE
            .with(|free| free.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(CAPACITY));
        Self { data, start: 0 }
    }

    /// The unconsumed bytes.
    #[inline]
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..]
    }

    /// Number of unconsumed bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.data.len() - self.start
    }

    /// Whether every byte was consumed.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether no more bytes fit, even after reclaiming consumed space.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len() >= CAPACITY
    }

    /// Marks `n` bytes at the front as consumed.
    #[inline]
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.data.len());
        if self.start == self.data.len() {
            self.clear();
        }
    }

    /// Drops every byte.
    #[inline]
    pub fn clear(&mut self) {
        self.data.clear();
        self.start = 0;
    }

    /// Appends bytes; the caller makes sure they fit (`extend` never grows past the capacity it
    /// was given in debug builds).
    #[inline]
    pub fn extend(&mut self, bytes: &[u8]) {
        self.reclaim_for(bytes.len());
        self.data.extend_from_slice(bytes);
    }

    /// Keeps only the first `len` unconsumed bytes.
    #[inline]
    pub fn truncate_to(&mut self, len: usize) {
        self.data.truncate(self.start + len);
    }

    /// Room left at the end, after reclaiming consumed space.
    #[inline]
    pub fn room(&self) -> usize {
        CAPACITY - self.len()
    }

    /// Moves the unconsumed bytes to the front when `wanted` more would not fit behind them.
    fn reclaim_for(&mut self, wanted: usize) {
        if self.start > 0 && self.data.len() + wanted > CAPACITY {
            self.data.drain(..self.start);
            self.start = 0;
        }
    }

    /// Reads once from `reader` into the free space; returns the count, 0 at end of stream. The
    /// buffer must not be full. A read that does not fill the space tells tokio the socket is
    /// drained, so the next read waits for readiness instead of trying (and failing) first.
    pub async fn read_from<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> std::io::Result<usize> {
        self.reclaim_for(CAPACITY);
        let room = CAPACITY - self.data.len();
        debug_assert!(room > 0, "read into a full buffer");
        let mut window = bytes::BufMut::limit(&mut self.data, room);
        reader.read_buf(&mut window).await
    }

    /// Reads what `reader` has now, without waiting: `None` when nothing is there. Unlike a
    /// `try_read`, a read that does not fill the space still tells tokio the socket is drained.
    /// (A socket fresh from `accept` is assumed readable by tokio: this is how to find out
    /// without keeping a buffer while waiting.)
    pub fn read_now<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> Option<std::io::Result<usize>> {
        let mut context = Context::from_waker(Waker::noop());
        match pin!(self.read_from(reader)).poll(&mut context) {
            Poll::Ready(result) => Some(result),
            Poll::Pending => None,
        }
    }

    /// Reads what a socket has now, without waiting: `WouldBlock` when nothing (which also clears
    /// a stale readiness). The buffer must not be full.
    pub fn try_read_from(&mut self, socket: &tokio::net::tcp::ReadHalf<'_>) -> std::io::Result<usize> {
        self.reclaim_for(CAPACITY);
        let room = CAPACITY - self.data.len();
        debug_assert!(room > 0, "read into a full buffer");
        let mut window = bytes::BufMut::limit(&mut self.data, room);
        socket.try_read_buf(&mut window)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut data = std::mem::take(&mut self.data);
        if data.capacity() != CAPACITY {
            return;
        }
        data.clear();
        // A thread being torn down has no free list any more: the buffer is simply freed.
        let _ = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEPT_PER_THREAD {
                free.push(data);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumed_space_is_reclaimed_and_buffers_are_recycled() {
        let mut buffer = Buffer::take();
        buffer.extend(&[1; 10_000]);
        buffer.consume(9_000);
        assert_eq!(buffer.len(), 1_000);
        buffer.extend(&[2; 10_000]);
        assert_eq!(buffer.len(), 11_000);
        assert_eq!(buffer.filled()[999], 1);
        assert_eq!(buffer.filled()[1_000], 2);
        let address = buffer.data.as_ptr();
        drop(buffer);
        let again = Buffer::take();
        assert!(again.is_empty());
        assert_eq!(again.data.as_ptr(), address, "the same allocation comes back");
    }

    #[tokio::test]
    async fn reads_never_grow_the_buffer_past_its_capacity() {
        let data = vec![7u8; CAPACITY + 100];
        let mut reader = &data[..];
        let mut buffer = Buffer::take();
        buffer.extend(&[0; 10]);
        let mut total = 0;
        while !buffer.is_full() {
            total += buffer.read_from(&mut reader).await.unwrap();
        }
        assert_eq!(total, CAPACITY - 10);
        assert_eq!(buffer.data.capacity(), CAPACITY);
    }
}
