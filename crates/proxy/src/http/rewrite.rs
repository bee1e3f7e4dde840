//! Writing a head out for the next hop: kept header lines are copied verbatim from the input,
//! consecutive ones in one copy; lines that are not plain `name: value CRLF` (a bare LF, an empty
//! value) are written afresh, so the next hop never sees a line ending the proxy read leniently.
//! What to keep and what to add is decided by the caller (`head`).

use crate::buffer::Buffer;

/// Appends to a buffer, remembering whether anything did not fit.
pub(super) struct HeadWriter<'a> {
    /// Where the head goes.
    pub out: &'a mut Buffer,
    /// Something did not fit.
    pub overflow: bool,
}

impl HeadWriter<'_> {
    /// Appends `bytes`, or notes that they did not fit.
    #[inline(always)]
    pub fn put(&mut self, bytes: &[u8]) {
        if self.out.room() < bytes.len() {
            self.overflow = true;
        } else {
            self.out.extend(bytes);
        }
    }

    /// Appends a whole field line.
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        self.put(name);
        self.put(b": ");
        self.put(value);
        self.put(b"\r\n");
    }

    /// Appends a decimal number.
    pub fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.put(&digits[at..]);
    }
}

/// Where a header's line lies in `input` (its CRLF included), when it is an ordinary
/// `name: value CRLF` line there. Such lines are copied verbatim, consecutive ones in one copy;
/// anything else (an empty value, a bare LF) is written out afresh.
#[inline]
fn line_span(input: &[u8], header: &httparse::Header<'_>) -> Option<(usize, usize)> {
    let base = input.as_ptr() as usize;
    let start = (header.name.as_ptr() as usize).checked_sub(base)?;
    let value = (header.value.as_ptr() as usize).checked_sub(base)?;
    if header.value.is_empty() || value <= start || value + header.value.len() > input.len() {
        return None;
    }
    let mut end = value + header.value.len();
    while matches!(input.get(end), Some(b' ' | b'\t')) {
        end += 1;
    }
    (input.get(end..end + 2)? == b"\r\n").then_some((start, end + 2))
}

/// Writes the headers `keep` accepts, copying runs of consecutive kept lines from `input` whole.
#[inline]
pub(super) fn emit_headers<'b>(
    w: &mut HeadWriter<'_>,
    input: &[u8],
    headers: &[httparse::Header<'b>],
    mut keep: impl FnMut(usize, &httparse::Header<'b>) -> bool,
) {
    let mut run: Option<(usize, usize)> = None;
    for (index, header) in headers.iter().enumerate() {
        if !keep(index, header) {
            if let Some((start, end)) = run.take() {
                w.put(&input[start..end]);
            }
            continue;
        }
        match (line_span(input, header), run) {
            (Some((start, end)), Some((run_start, run_end))) if run_end == start => {
                run = Some((run_start, end));
            }
            (Some(span), _) => {
                if let Some((start, end)) = run.replace(span) {
                    w.put(&input[start..end]);
                }
            }
            (None, _) => {
                if let Some((start, end)) = run.take() {
                    w.put(&input[start..end]);
                }
                w.header(header.name.as_bytes(), header.value);
            }
        }
    }
    if let Some((start, end)) = run {
        w.put(&input[start..end]);
    }
}
