//! Reading QMP's newline-delimited messages with a bound: a line longer than the limit is dropped
//! (and reported) instead of growing a buffer without end, and reading goes on with the next line.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest QMP line accepted. `query-migrate` replies are a few kilobytes.
pub const MAX_LINE: usize = 1024 * 1024;

/// What the reader produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its line ending.
    Text(Vec<u8>),
    /// A line longer than the limit was dropped; `bytes` is its length.
    Oversized {
        /// Bytes dropped.
        bytes: usize,
    },
}

/// A bounded line reader.
#[derive(Debug)]
pub struct LineReader<R> {
    reader: R,
    buffer: BytesMut,
    limit: usize,
    /// Bytes of an oversized line dropped so far (`Some` while inside one).
    dropping: Option<usize>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// A reader with the default limit.
    pub fn new(reader: R) -> Self {
        Self::with_limit(reader, MAX_LINE)
    }

    /// A reader with a given limit.
    pub fn with_limit(reader: R, limit: usize) -> Self {
        Self {
            reader,
            buffer: BytesMut::with_capacity(8192),
            limit,
            dropping: None,
        }
    }

    /// The next line; `None` at end of stream.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            if let Some(position) = self.buffer.iter().position(|b| *b == b'\n') {
                let mut line = self.buffer.split_to(position + 1);
                if let Some(dropped) = self.dropping.take() {
                    return Ok(Some(Line::Oversized {
                        bytes: dropped + line.len(),
                    }));
                }
                line.truncate(position);
                if line.last() == Some(&b'\r') {
                    line.truncate(position - 1);
                }
                return Ok(Some(Line::Text(line.to_vec())));
            }
            if self.buffer.len() > self.limit || self.dropping.is_some() {
                let dropped = self.buffer.len();
                self.buffer.advance(dropped);
                *self.dropping.get_or_insert(0) += dropped;
            }
            if self.reader.read_buf(&mut self.buffer).await? == 0 {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_and_crlf_removed() {
        let mut reader = LineReader::new(&b"{\"a\":1}\r\n{\"b\":2}\npartial"[..]);
        assert_eq!(
            reader.next_line().await.unwrap(),
            Some(Line::Text(b"{\"a\":1}".to_vec()))
        );
        assert_eq!(
            reader.next_line().await.unwrap(),
            Some(Line::Text(b"{\"b\":2}".to_vec()))
        );
        assert_eq!(reader.next_line().await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_oversized_line_is_dropped_and_reading_goes_on() {
        let mut input = vec![b'x'; 10_000];
        input.extend_from_slice(b"\nok\n");
        let mut reader = LineReader::with_limit(&input[..], 100);
        assert_eq!(
            reader.next_line().await.unwrap(),
            Some(Line::Oversized { bytes: 10_001 })
        );
        assert_eq!(
            reader.next_line().await.unwrap(),
            Some(Line::Text(b"ok".to_vec()))
        );
    }
}
