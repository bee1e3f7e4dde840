//! WebSocket: an upgrade the listener allows (`head` decides which: a GET in HTTP/1.1 with
//! `Connection: upgrade` and `Upgrade: websocket`, never `h2c`) goes to the backend the pool
//! chose for the request; once the backend answers 101, the client connection and the backend
//! connection are joined and bytes flow both ways until either side closes.
//!
//! A tunnel counts as an active connection of its backend's VM (drain status lists it, kind
//! `websocket`). A drain leaves it open, as it leaves every open connection — unless the pool asks
//! for `drain.long_lived.close_after`: then, that long after the drain began, the tunnel is closed
//! the way WebSocket closes a connection, with a close frame (1001, going away) to each side at a
//! frame boundary, so both ends see an orderly close and clients reconnect — to another VM. A side
//! that does not answer its close frame within [`CLOSE_WAIT`] is cut off.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::debug;

use super::Connection;
use super::stream::ClientStream;
use super::upstream::Upstream;
use crate::backend::{RequestLine, Traffic};
use crate::buffer::Buffer;
use crate::random;
use crate::snapshot::BackendEntry;

/// How long a side may take to answer the proxy's close frame (and how long the proxy waits for
/// a frame in progress to end before it closes anyway).
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Status 1001, "going away" (RFC 6455 §7.4.1).
const GOING_AWAY: [u8; 2] = [0x03, 0xE9];

/// Where a direction of a WebSocket connection is in its frames, so that a close frame is only
/// ever put between two frames.
#[derive(Debug, Default, Clone)]
pub struct Frames {
    /// The header of the frame being read, as far as it arrived.
    header: [u8; 14],
    /// Header bytes arrived.
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: u64,
}

impl Frames {
    /// Between two frames.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Length of the header once its first two bytes are known.
    fn header_len(&self) -> usize {
        let len7 = self.header[1] & 0x7f;
        let extended = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        }
    }

    /// Follows `bytes` through the frames; returns how many were taken. With `stop` it stops at
    /// the first boundary (0 when already at one); without, it takes them all.
    pub fn advance(&mut self, bytes: &[u8], stop: bool) -> usize {
        let mut i = 0;
        loop {
            if stop && self.at_boundary() {
                return i;
            }
            if i == bytes.len() {
                return i;
            }
            if self.left > 0 {
                let take = self.left.min((bytes.len() - i) as u64);
                self.left -= take;
                i += take as usize;
                continue;
            }
            self.header[self.have] = bytes[i];
            self.have += 1;
            i += 1;
            if self.have >= 2 && self.have == self.header_len() {
                self.left = self.payload_len();
                self.have = 0;
            }
        }
    }
}

/// A close frame with status 1001, masked (client to server frames must be, RFC 6455 §5.3).
fn masked_close() -> [u8; 8] {
    let mask = (random::next_u64() as u32).to_be_bytes();
    [
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        GOING_AWAY[0] ^ mask[0],
        GOING_AWAY[1] ^ mask[1],
    ]
}

/// The same, unmasked (server to client).
const CLOSE: [u8; 4] = [0x88, 0x02, GOING_AWAY[0], GOING_AWAY[1]];

/// Joins the client and the backend after a 101: `head` is the 101 as the client gets it,
/// `from_backend` whatever the backend sent after it. The connection is counted as the backend's
/// until it ends. Returns when both sides closed, one failed, or the pool's long-lived policy
/// closed it.
pub(super) async fn tunnel<S: ClientStream>(
    conn: &mut Connection<S>,
    entry: &BackendEntry,
    line: RequestLine,
    mut upstream: Upstream,
    head: Buffer,
    mut to_client: Buffer,
) {
    let _guard = entry
        .backend
        .track(conn.peer, entry.address, Traffic::WebSocket(line), Instant::now());
    if conn.send(head.filled()).await.is_err() {
        return;
    }
    drop(head);
    let closing = entry.backend.long_lived_closed();
    tokio::pin!(closing);
    let mut to_backend = conn.input.take().unwrap_or_else(Buffer::take);
    let (mut up, mut down) = (Frames::default(), Frames::default());
    let (mut client_done, mut backend_done) = (false, false);
    let mut close_by: Option<Instant> = None;
    let (mut closed_client, mut closed_backend) = (false, false);
    loop {
        // What arrived goes on (only up to a frame boundary once the proxy is closing).
        if !to_client.is_empty() && !closed_client {
            let n = down.advance(to_client.filled(), close_by.is_some());
            if n > 0 && conn.send(&to_client.filled()[..n]).await.is_err() {
                return;
            }
            to_client.clear();
        }
        to_client.clear();
        if !to_backend.is_empty() && !closed_backend {
            let n = up.advance(to_backend.filled(), close_by.is_some());
            if n > 0 && upstream.stream.send(&to_backend.filled()[..n]).await.is_err() {
                return;
            }
        }
        to_backend.clear();
        if let Some(deadline) = close_by {
            if !closed_client && down.at_boundary() {
                closed_client = true;
                let _ = conn.send(&CLOSE).await;
            }
            if !closed_backend && up.at_boundary() {
                closed_backend = true;
                let _ = upstream.stream.send(&masked_close()).await;
            }
            if (closed_client || client_done) && (closed_backend || backend_done) {
                // Both were told: wait (bounded) for their answers, then close.
                let _ = tokio::time::timeout_at(deadline, async {
                    while !(client_done && backend_done) {
                        tokio::select! {
                            read = to_backend.read_from(&mut conn.stream), if !client_done => {
                                client_done = !matches!(read, Ok(n) if n > 0);
                            }
                            read = to_client.read_from(&mut upstream.stream), if !backend_done => {
                                backend_done = !matches!(read, Ok(n) if n > 0);
                            }
                        }
                        to_backend.clear();
                        to_client.clear();
                    }
                })
                .await;
                return;
            }
        }
        if client_done && backend_done {
            return;
        }
        let limit = close_by.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        tokio::select! {
            biased;
            _ = &mut closing, if close_by.is_none() => {
                debug!(backend = %entry.address, "closing a WebSocket tunnel: its VM drains and the pool closes long-lived work");
                close_by = Some(Instant::now() + CLOSE_WAIT);
            }
            _ = tokio::time::sleep_until(limit), if close_by.is_some() => return,
            read = to_backend.read_from(&mut conn.stream), if !client_done => {
                if !matches!(read, Ok(n) if n > 0) {
                    client_done = true;
                    let _ = upstream.stream.close().await;
                }
            }
            read = to_client.read_from(&mut upstream.stream), if !backend_done => {
                if !matches!(read, Ok(n) if n > 0) {
                    backend_done = true;
                    let _ = conn.stream.shutdown().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame: FIN + opcode, then the payload length in its shortest form, masked or not.
    fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n < 65536 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn frames_are_followed_whatever_the_pieces() {
        let mut stream = frame(1, b"hello", true);
        stream.extend(frame(2, &vec![7; 300], false));
        stream.extend(frame(2, &vec![9; 70_000], true));
        stream.extend(frame(9, b"", false));
        for step in [1, 3, 100, stream.len()] {
            let mut frames = Frames::default();
            let mut boundaries = 0;
            let mut at = 0;
            for piece in stream.chunks(step) {
                let mut rest = piece;
                while !rest.is_empty() {
                    let n = frames.advance(rest, true);
                    if n == 0 {
                        // At a boundary: step over it.
                        let m = frames.advance(&rest[..1], false);
                        rest = &rest[m..];
                        at += m;
                        continue;
                    }
                    rest = &rest[n..];
                    at += n;
                    if frames.at_boundary() {
                        boundaries += 1;
                    }
                }
            }
            assert_eq!(at, stream.len());
            assert!(frames.at_boundary(), "step {step}");
            assert_eq!(boundaries, 4, "step {step}");
        }
    }

    #[test]
    fn a_frame_in_progress_is_not_a_boundary() {
        let mut frames = Frames::default();
        let data = frame(1, b"0123456789", false);
        assert_eq!(frames.advance(&data, true), 0, "already at a boundary");
        assert_eq!(frames.advance(&data[..5], false), 5);
        assert!(!frames.at_boundary());
        assert_eq!(frames.advance(&data[5..], true), data.len() - 5);
        assert!(frames.at_boundary());
        assert_eq!(
            frames.advance(b"\x81\x00", true),
            0,
            "stops before the next frame"
        );
    }

    #[test]
    fn close_frames_say_going_away() {
        assert_eq!(CLOSE, [0x88, 0x02, 0x03, 0xE9]);
        let masked = masked_close();
        assert_eq!(masked[..2], [0x88, 0x82]);
        assert_eq!([masked[6] ^ masked[2], masked[7] ^ masked[3]], GOING_AWAY);
    }
}
