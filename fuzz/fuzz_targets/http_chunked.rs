//! `http_chunked`: where a chunked body ends (`handover_proxy::http::chunked::ChunkedScanner`).
//!
//! The first byte `k` (mod 16) says how many piece lengths follow (one byte each, 0 read as 1);
//! the rest is the body, fed to the scanner in pieces of those lengths, cycling, and again in one
//! piece. Both feedings must give the same result (the end of the body, "not done yet", or the same
//! error), and it must agree with [`reference`], a decoder written here from RFC 9112 §7.1 that
//! reads the whole body at once.

#![no_main]

use handover_proxy::http::chunked::{ChunkError, ChunkedScanner};
use libfuzzer_sys::fuzz_target;

/// Longest chunk-size line, its CR included (the scanner's documented limit).
const MAX_SIZE_LINE: usize = 4096;
/// Longest trailer section, up to and including the CR of its final empty line.
const MAX_TRAILERS: usize = 16 * 1024;
/// Most hex digits of a chunk size.
const MAX_DIGITS: usize = 15;

/// What a scan of a whole input found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The body ends after this many bytes.
    Ends(usize),
    /// The input ends inside the body.
    NotDone,
    /// The body is malformed.
    Invalid(ChunkError),
}

/// Feeds `body` in pieces of the given lengths (cycling; all of it at once when none).
fn scan(body: &[u8], pieces: &[usize]) -> Outcome {
    let mut scanner = ChunkedScanner::new();
    let mut at = 0;
    let mut lengths = pieces.iter().cycle();
    while at < body.len() {
        let n = lengths.next().copied().unwrap_or(body.len());
        let piece = &body[at..(at + n).min(body.len())];
        match scanner.advance(piece) {
            Err(e) => return Outcome::Invalid(e),
            Ok(used) => {
                assert!(used <= piece.len(), "advance used more than it was given");
                at += used;
                if scanner.is_done() {
                    return Outcome::Ends(at);
                }
                assert_eq!(used, piece.len(), "advance stopped early without being done");
            }
        }
    }
    Outcome::NotDone
}

/// A whole-input chunked decoder: line by line, each rule checked where RFC 9112 states it. The
/// first problem by byte position wins, as it does for a scanner that sees one byte at a time.
fn reference(b: &[u8]) -> Outcome {
    let mut p = 0;
    loop {
        // chunk-size [ BWS ] [ ; chunk-ext ] CRLF, at most MAX_SIZE_LINE bytes up to its CR.
        let cr = b[p..].iter().position(|c| *c == b'\r').map(|i| p + i);
        let line = &b[p..cr.unwrap_or(b.len())];
        let (size, bad) = size_line(line);
        // A problem before the limit, else the limit, whichever comes first.
        if let Some((at, error)) = bad
            && at < MAX_SIZE_LINE
        {
            return Outcome::Invalid(error);
        }
        if line.len() + usize::from(cr.is_some()) > MAX_SIZE_LINE {
            return Outcome::Invalid(ChunkError::SizeLineTooLong);
        }
        let Some(cr) = cr else {
            return Outcome::NotDone;
        };
        // A CR where a digit was needed.
        let Some(size) = size else {
            return Outcome::Invalid(ChunkError::Size);
        };
        match b.get(cr + 1) {
            None => return Outcome::NotDone,
            Some(b'\n') => {}
            Some(_) => return Outcome::Invalid(ChunkError::LineEnding),
        }
        p = cr + 2;
        if size == 0 {
            return trailers(b, p);
        }
        // chunk-data CRLF
        let Some(end) = usize::try_from(size).ok().and_then(|s| p.checked_add(s)) else {
            return Outcome::NotDone;
        };
        match b.get(end) {
            None => return Outcome::NotDone,
            Some(b'\r') => {}
            Some(_) => return Outcome::Invalid(ChunkError::LineEnding),
        }
        match b.get(end + 1) {
            None => return Outcome::NotDone,
            Some(b'\n') => {}
            Some(_) => return Outcome::Invalid(ChunkError::LineEnding),
        }
        p = end + 2;
    }
}

/// Checks a chunk-size line (without its CR): the size (`None` without a digit), and the first
/// problem with its offset in the line.
fn size_line(line: &[u8]) -> (Option<u64>, Option<(usize, ChunkError)>) {
    let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    if digits == 0 {
        return (None, line.first().map(|_| (0, ChunkError::Size)));
    }
    if digits > MAX_DIGITS {
        return (None, Some((MAX_DIGITS, ChunkError::Size)));
    }
    let text = std::str::from_utf8(&line[..digits]).expect("hex digits are ASCII");
    let size = u64::from_str_radix(text, 16).expect("at most 15 hex digits fit");
    let mut i = digits;
    while i < line.len() && matches!(line[i], b' ' | b'\t') {
        i += 1;
    }
    if i == line.len() {
        return (Some(size), None);
    }
    if line[i] != b';' {
        return (Some(size), Some((i, ChunkError::Size)));
    }
    // chunk-ext: anything visible, blanks and obs-text up to the CR.
    for (j, c) in line.iter().enumerate().skip(i + 1) {
        if !(*c == b'\t' || (0x20..=0x7e).contains(c) || *c >= 0x80) {
            return (Some(size), Some((j, ChunkError::Extension)));
        }
    }
    (Some(size), None)
}

/// The trailer section from `start`: field lines ending in CRLF, then an empty line. Every byte
/// of it up to the final CR counts towards the limit, and is counted before it is checked.
fn trailers(b: &[u8], start: usize) -> Outcome {
    let too_long = |offset: usize| offset - start >= MAX_TRAILERS;
    let mut p = start;
    loop {
        let Some(&first) = b.get(p) else {
            return Outcome::NotDone;
        };
        if too_long(p) {
            return Outcome::Invalid(ChunkError::TrailersTooLong);
        }
        match first {
            // The final empty line; its LF is not counted.
            b'\r' => {
                return match b.get(p + 1) {
                    None => Outcome::NotDone,
                    Some(b'\n') => Outcome::Ends(p + 2),
                    Some(_) => Outcome::Invalid(ChunkError::LineEnding),
                };
            }
            b'\n' => return Outcome::Invalid(ChunkError::LineEnding),
            _ => {}
        }
        // A field line up to its CR; a bare LF is an error.
        let end = b[p..]
            .iter()
            .position(|c| matches!(c, b'\r' | b'\n'))
            .map(|i| p + i);
        let stop = end.unwrap_or(b.len());
        if too_long(stop - 1) {
            return Outcome::Invalid(ChunkError::TrailersTooLong);
        }
        let Some(end) = end else {
            return Outcome::NotDone;
        };
        if too_long(end) {
            return Outcome::Invalid(ChunkError::TrailersTooLong);
        }
        if b[end] == b'\n' {
            return Outcome::Invalid(ChunkError::LineEnding);
        }
        match b.get(end + 1) {
            None => return Outcome::NotDone,
            Some(_) if too_long(end + 1) => return Outcome::Invalid(ChunkError::TrailersTooLong),
            Some(b'\n') => {}
            Some(_) => return Outcome::Invalid(ChunkError::LineEnding),
        }
        p = end + 2;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = usize::from(k % 16).min(rest.len());
    let (lengths, body) = rest.split_at(k);
    let pieces: Vec<usize> = lengths.iter().map(|n| usize::from(*n).max(1)).collect();

    let whole = scan(body, &[]);
    let split = scan(body, &pieces);
    assert_eq!(split, whole, "pieces {pieces:?} change the result");
    let expected = reference(body);
    assert_eq!(whole, expected, "the scanner and the reference decoder disagree");
    if let Outcome::Ends(end) = whole {
        assert!(end <= body.len());
        assert_eq!(&body[end - 2..end], b"\r\n", "a body ends with CRLF");
    }
});
