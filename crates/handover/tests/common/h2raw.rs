//! A raw HTTP/2 client for the downgrade harness: it writes frames byte by byte, so it can send
//! what a well-behaved HTTP/2 library refuses to (connection-specific fields, `content-length`
//! disagreeing with DATA, CR/LF in values). Header blocks are HPACK literals without indexing or
//! Huffman coding; the server's header blocks are not decoded — what a stream got is told from
//! its DATA (the recorders answer with `<seq> <method> <target>`) and from RST_STREAM/GOAWAY.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

/// How a stream ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response: its DATA, concatenated.
    Answered(Vec<u8>),
    /// The server reset the stream (with this error code).
    Reset(u32),
    /// The server ended the connection (GOAWAY, or closed it) before the stream ended.
    ConnectionEnded,
    /// Nothing within the time limit.
    Silent,
}

/// One frame a case sends after its headers.
#[derive(Debug, Clone)]
pub enum Part {
    /// DATA with these bytes.
    Data(Vec<u8>),
    /// A trailers HEADERS block.
    Trailers(Vec<(Vec<u8>, Vec<u8>)>),
}

/// An HTTP/2 connection.
pub struct H2Raw {
    stream: TcpStream,
    next_id: u32,
    input: Vec<u8>,
    /// The server sent GOAWAY or closed.
    pub ended: bool,
}

fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix.
fn integer(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literals without indexing, new names, no Huffman coding.
pub fn block(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        integer(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        integer(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

impl H2Raw {
    /// Connects and exchanges the prefaces.
    pub async fn connect(address: SocketAddr) -> H2Raw {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        stream.write_all(&hello).await.unwrap();
        H2Raw {
            stream,
            next_id: 1,
            input: Vec::new(),
            ended: false,
        }
    }

    /// Sends a request: `fields` (pseudo-fields included, in order), then `parts`; the last frame
    /// carries END_STREAM. Returns the stream id.
    pub async fn send(&mut self, fields: &[(Vec<u8>, Vec<u8>)], parts: &[Part]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let mut out = Vec::new();
        let flags = END_HEADERS | if parts.is_empty() { END_STREAM } else { 0 };
        out.extend(frame(HEADERS, flags, id, &block(fields)));
        for (i, part) in parts.iter().enumerate() {
            let last = if i + 1 == parts.len() { END_STREAM } else { 0 };
            match part {
                Part::Data(data) => out.extend(frame(DATA, last, id, data)),
                Part::Trailers(fields) => out.extend(frame(HEADERS, END_HEADERS | last, id, &block(fields))),
            }
        }
        if self.stream.write_all(&out).await.is_err() {
            self.ended = true;
        }
        id
    }

    /// Reads frames until stream `id` ends, answering SETTINGS and PING on the way.
    pub async fn outcome(&mut self, id: u32, limit: Duration) -> Outcome {
        let mut data = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            while self.input.len() >= 9 {
                let length = u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]]) as usize;
                if self.input.len() < 9 + length {
                    break;
                }
                let kind = self.input[3];
                let flags = self.input[4];
                let stream = u32::from_be_bytes([self.input[5], self.input[6], self.input[7], self.input[8]])
                    & 0x7fff_ffff;
                let payload: Vec<u8> = self.input[9..9 + length].to_vec();
                self.input.drain(..9 + length);
                match kind {
                    SETTINGS if flags & ACK == 0 => {
                        let _ = self.stream.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                    }
                    PING if flags & ACK == 0 => {
                        let _ = self.stream.write_all(&frame(PING, ACK, 0, &payload)).await;
                    }
                    GOAWAY => {
                        self.ended = true;
                        let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                            & 0x7fff_ffff;
                        if last < id {
                            return Outcome::ConnectionEnded;
                        }
                    }
                    RST_STREAM if stream == id => {
                        return Outcome::Reset(u32::from_be_bytes([
                            payload[0], payload[1], payload[2], payload[3],
                        ]));
                    }
                    DATA if stream == id => {
                        data.extend_from_slice(&payload);
                        if flags & END_STREAM != 0 {
                            return Outcome::Answered(data);
                        }
                    }
                    HEADERS if stream == id && flags & END_STREAM != 0 => return Outcome::Answered(data),
                    _ => {}
                }
            }
            let mut buffer = [0u8; 16384];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.ended = true;
                    return Outcome::ConnectionEnded;
                }
                Ok(Ok(n)) => self.input.extend_from_slice(&buffer[..n]),
                Err(_) => return Outcome::Silent,
            }
        }
    }
}

impl H2Raw {
    /// Reads frames (answering SETTINGS and PING) until the server closes the connection:
    /// `Some(whether a GOAWAY came first)`, or `None` if it is still open after `limit`.
    pub async fn closed_within(&mut self, limit: Duration) -> Option<bool> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut goaway = false;
        loop {
            while self.input.len() >= 9 {
                let length = u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]]) as usize;
                if self.input.len() < 9 + length {
                    break;
                }
                let (kind, flags) = (self.input[3], self.input[4]);
                let payload: Vec<u8> = self.input[9..9 + length].to_vec();
                self.input.drain(..9 + length);
                match kind {
                    SETTINGS if flags & ACK == 0 => {
                        let _ = self.stream.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                    }
                    PING if flags & ACK == 0 => {
                        let _ = self.stream.write_all(&frame(PING, ACK, 0, &payload)).await;
                    }
                    GOAWAY => goaway = true,
                    _ => {}
                }
            }
            let mut buffer = [0u8; 16384];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.ended = true;
                    return Some(goaway);
                }
                Ok(Ok(n)) => self.input.extend_from_slice(&buffer[..n]),
                Err(_) => return None,
            }
        }
    }
}

/// `(name, value)` pairs from text.
pub fn fields(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}
