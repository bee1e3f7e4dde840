//! Finding the end of a chunked message body (RFC 9112 §7.1) while its bytes pass through
//! unchanged. The proxy never decodes chunks; it only has to know where the body stops, and to
//! refuse framing another parser could read differently (the root of request smuggling): a chunk
//! size that is not plain hex, a line that does not end in CRLF, a size that overflows.

/// Longest chunk-size line accepted, extensions included.
const MAX_SIZE_LINE: usize = 4096;

/// Longest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The size is not hexadecimal, or too large.
    #[error("invalid chunk size")]
    Size,
    /// A chunk-size line is longer than 4 KiB.
    #[error("chunk-size line too long")]
    SizeLineTooLong,
    /// A line ends in something other than CRLF, or a chunk's data is not followed by CRLF.
    #[error("chunk framing is not CRLF-terminated")]
    LineEnding,
    /// A control character inside a chunk extension.
    #[error("invalid chunk extension")]
    Extension,
    /// The trailer section is longer than 16 KiB.
    #[error("trailer section too long")]
    TrailersTooLong,
}

/// What [`ChunkedScanner::decode`] hands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Content of a chunk.
    Data(&'a [u8]),
    /// One byte of the trailer section.
    Trailer(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (`digits` so far).
    Size { digits: u8 },
    /// Whitespace after the size, before `;` or CR.
    SizeSpace,
    /// Inside a chunk extension, until CR.
    Extension,
    /// CR of the size line seen; LF must follow.
    SizeLf,
    /// Chunk data; this many bytes left.
    Data(u64),
    /// After the data: CR expected.
    DataCr,
    /// After the data's CR: LF expected.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line, until CR.
    Trailer,
    /// CR of a trailer line seen; LF must follow.
    TrailerLf,
    /// CR of the final empty line seen; LF must follow.
    EndLf,
    /// The body is complete.
    Done,
}

/// Tracks where a chunked body ends.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    /// Size of the chunk being read, while its digits arrive.
    size: u64,
    /// Bytes of the current size line (limit).
    line: usize,
    /// Bytes of the trailer section (limit).
    trailers: usize,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedScanner {
    /// At the start of a body.
    pub fn new() -> Self {
        Self {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
            trailers: 0,
        }
    }

    /// Whether the whole body (last chunk and trailers) has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes bytes that follow what was already scanned; returns how many belong to the body.
    /// Fewer than `bytes.len()` means the body ended inside `bytes` (the rest is the next
    /// message's).
    pub fn advance(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Data(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    let left = left - take;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                    continue;
                }
                _ => {}
            }
            self.step(bytes[i])?;
            i += 1;
        }
        Ok(i)
    }

    /// Like [`ChunkedScanner::advance`], and also hands the body's content to `sink`: the data of
    /// each chunk as it passes, and the bytes of the trailer section (field lines with their
    /// CRLFs, without the final empty line). For a proxy that must re-frame a body (HTTP/2).
    pub fn decode(&mut self, bytes: &[u8], mut sink: impl FnMut(Piece<'_>)) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Data(left) => {
                    let take = left.min((bytes.len() - i) as u64) as usize;
                    sink(Piece::Data(&bytes[i..i + take]));
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                    continue;
                }
                State::TrailerStart if bytes[i] != b'\r' => sink(Piece::Trailer(bytes[i])),
                State::Trailer | State::TrailerLf => sink(Piece::Trailer(bytes[i])),
                _ => {}
            }
            self.step(bytes[i])?;
            i += 1;
        }
        Ok(i)
    }

    fn step(&mut self, byte: u8) -> Result<(), ChunkError> {
        self.state = match self.state {
            State::Size { digits } => {
                self.count_line()?;
                match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (byte as char).to_digit(16).unwrap_or(0) as u64;
                        // 15 hex digits is far beyond any body; more cannot be a real size.
                        if digits >= 15 {
                            return Err(ChunkError::Size);
                        }
                        self.size = self.size * 16 + digit;
                        State::Size { digits: digits + 1 }
                    }
                    _ if digits == 0 => return Err(ChunkError::Size),
                    b' ' | b'\t' => State::SizeSpace,
                    b';' => State::Extension,
                    b'\r' => State::SizeLf,
                    _ => return Err(ChunkError::Size),
                }
            }
            State::SizeSpace => {
                self.count_line()?;
                match byte {
                    b' ' | b'\t' => State::SizeSpace,
                    b';' => State::Extension,
                    b'\r' => State::SizeLf,
                    _ => return Err(ChunkError::Size),
                }
            }
            State::Extension => {
                self.count_line()?;
                match byte {
                    b'\r' => State::SizeLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => State::Extension,
                    _ => return Err(ChunkError::Extension),
                }
            }
            State::SizeLf => {
                if byte != b'\n' {
                    return Err(ChunkError::LineEnding);
                }
                self.line = 0;
                let size = std::mem::take(&mut self.size);
                if size == 0 {
                    State::TrailerStart
                } else {
                    State::Data(size)
                }
            }
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return Err(ChunkError::LineEnding),
            },
            State::DataLf => match byte {
                b'\n' => State::Size { digits: 0 },
                _ => return Err(ChunkError::LineEnding),
            },
            State::TrailerStart => {
                self.count_trailers()?;
                match byte {
                    b'\r' => State::EndLf,
                    b'\n' => return Err(ChunkError::LineEnding),
                    _ => State::Trailer,
                }
            }
            State::Trailer => {
                self.count_trailers()?;
                match byte {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(ChunkError::LineEnding),
                    _ => State::Trailer,
                }
            }
            State::TrailerLf => {
                self.count_trailers()?;
                match byte {
                    b'\n' => State::TrailerStart,
                    _ => return Err(ChunkError::LineEnding),
                }
            }
            State::EndLf => match byte {
                b'\n' => State::Done,
                _ => return Err(ChunkError::LineEnding),
            },
            State::Data(_) | State::Done => unreachable!("handled by advance"),
        };
        Ok(())
    }

    fn count_line(&mut self) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > MAX_SIZE_LINE {
            return Err(ChunkError::SizeLineTooLong);
        }
        Ok(())
    }

    fn count_trailers(&mut self) -> Result<(), ChunkError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkError::TrailersTooLong);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `body` fed in pieces of `step` bytes; returns the body length found.
    fn scan_in_pieces(body: &[u8], step: usize) -> Result<Option<usize>, ChunkError> {
        let mut scanner = ChunkedScanner::new();
        let mut total = 0;
        for piece in body.chunks(step) {
            let used = scanner.advance(piece)?;
            total += used;
            if scanner.is_done() {
                return Ok(Some(total));
            }
        }
        Ok(None)
    }

    #[test]
    fn decoding_hands_on_the_data_and_the_trailers_in_any_pieces() {
        let body = b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nGrpc-Status: 0\r\nX-A: b\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, body.len()] {
            let mut scanner = ChunkedScanner::new();
            let (mut data, mut trailers, mut used) = (Vec::new(), Vec::new(), 0);
            for piece in body.chunks(step) {
                used += scanner
                    .decode(piece, |p| match p {
                        Piece::Data(d) => data.extend_from_slice(d),
                        Piece::Trailer(b) => trailers.push(b),
                    })
                    .unwrap();
                if scanner.is_done() {
                    break;
                }
            }
            assert_eq!(data, b"hello world", "step {step}");
            assert_eq!(trailers, b"Grpc-Status: 0\r\nX-A: b\r\n", "step {step}");
            assert_eq!(used, body.len() - 4, "step {step}");
        }
    }

    #[test]
    fn the_end_is_found_whatever_the_pieces() {
        let body = b"4\r\nWiki\r\n5;name=value\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\nGET /next";
        let end = body.len() - "GET /next".len();
        for step in 1..=body.len() {
            assert_eq!(scan_in_pieces(body, step), Ok(Some(end)), "step {step}");
        }
    }

    #[test]
    fn trailers_belong_to_the_body() {
        let body = b"3\r\nabc\r\n0\r\nExpires: never\r\nX-Sum: 1\r\n\r\nnext";
        assert_eq!(scan_in_pieces(body, 7), Ok(Some(body.len() - 4)));
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        assert_eq!(scan_in_pieces(b"10\r\n0123456789", 3), Ok(None));
        assert_eq!(scan_in_pieces(b"0\r\n", 1), Ok(None));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let cases: [(&[u8], ChunkError); 8] = [
            (b"0x10\r\n", ChunkError::Size),
            (b" 5\r\nhello\r\n", ChunkError::Size),
            (b"-1\r\n", ChunkError::Size),
            (b"5\nhello\r\n", ChunkError::Size),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::LineEnding),
            (b"5\r\nhelloXX", ChunkError::LineEnding),
            (b"5;a=\x01\r\n", ChunkError::Extension),
            (b"fffffffffffffffff\r\n", ChunkError::Size),
        ];
        for (body, error) in cases {
            assert_eq!(
                scan_in_pieces(body, 1),
                Err(error),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            scan_in_pieces(b"0\r\nX: 1\n\r\n", 1),
            Err(ChunkError::LineEnding),
            "a bare LF in the trailers"
        );
    }

    #[test]
    fn endless_size_lines_and_trailers_are_cut_off() {
        let mut line = b"1;".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_SIZE_LINE));
        assert_eq!(scan_in_pieces(&line, 100), Err(ChunkError::SizeLineTooLong));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..2000 {
            trailers.extend_from_slice(b"X-Long: 12345678\r\n");
        }
        assert_eq!(scan_in_pieces(&trailers, 100), Err(ChunkError::TrailersTooLong));
    }

    #[test]
    fn whitespace_before_an_extension_is_accepted() {
        assert_eq!(scan_in_pieces(b"2 ;x\r\nab\r\n0\r\n\r\n", 4), Ok(Some(15)));
    }
}
