//! How much of a message body is still to come, whatever its framing: bytes pass through the
//! counter, which says how many of them belong to the body and when it is complete.

use super::chunked::{ChunkError, ChunkedScanner};
use super::head::Framing;

/// The part of a body not yet passed on.
#[derive(Debug, Clone)]
pub enum BodyCounter {
    /// Nothing left.
    Done,
    /// This many bytes left.
    Length(u64),
    /// A chunked body, until its last chunk and trailers.
    Chunked(ChunkedScanner),
    /// Everything until the sender closes.
    UntilClose,
}

impl BodyCounter {
    /// At the start of a body with this framing.
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Self::Done,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked(ChunkedScanner::new()),
            Framing::UntilClose => Self::UntilClose,
        }
    }

    /// Whether the body is complete.
    #[inline]
    pub fn is_done(&self) -> bool {
        match self {
            Self::Done => true,
            Self::Chunked(scanner) => scanner.is_done(),
            _ => false,
        }
    }

    /// Takes the prefix of `bytes` that belongs to the body; returns its length.
    pub fn take(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        match self {
            Self::Done => Ok(0),
            Self::Length(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                if *left == 0 {
                    *self = Self::Done;
                }
                Ok(n as usize)
            }
            Self::Chunked(scanner) => scanner.advance(bytes),
            Self::UntilClose => Ok(bytes.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_takes_exactly_its_bytes() {
        let mut counter = BodyCounter::new(Framing::Length(5));
        assert_eq!(counter.take(b"abc"), Ok(3));
        assert!(!counter.is_done());
        assert_eq!(counter.take(b"defGET"), Ok(2));
        assert!(counter.is_done());
        assert_eq!(counter.take(b"more"), Ok(0));
    }

    #[test]
    fn chunked_and_until_close() {
        let mut counter = BodyCounter::new(Framing::Chunked);
        assert_eq!(counter.take(b"1\r\na\r\n0\r\n\r\nnext"), Ok(11));
        assert!(counter.is_done());
        let mut counter = BodyCounter::new(Framing::UntilClose);
        assert_eq!(counter.take(b"anything"), Ok(8));
        assert!(!counter.is_done());
        assert!(BodyCounter::new(Framing::Empty).is_done());
    }
}
