//! Responses the proxy writes itself: a bad request, no backend to take it, a backend that could not
//! be reached or did not answer in time. Plain text that says why, with its length, and whether
//! the connection stays open.

use crate::buffer::Buffer;

/// Reason phrase of the statuses the proxy generates.
fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Writes a whole response to `out` (replacing what it held). The message is cut to fit one
/// buffer.
pub fn write(out: &mut Buffer, status: u16, message: &str, keep_alive: bool) {
    out.clear();
    let body = message.as_bytes();
    let body = &body[..body.len().min(out.room() / 2)];
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{}\r\n",
        reason(status),
        body.len() + 1,
        if keep_alive { "" } else { "Connection: close\r\n" },
    );
    out.extend(head.as_bytes());
    out.extend(body);
    out.extend(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_response_has_its_length_and_says_when_it_closes() {
        let mut out = Buffer::take();
        write(&mut out, 503, "no backend can take it", false);
        let text = String::from_utf8(out.filled().to_vec()).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 23\r\nConnection: close\r\n\r\nno backend can take it\n"
        );
        write(&mut out, 504, "late", true);
        assert!(!String::from_utf8_lossy(out.filled()).contains("Connection"));
    }
}
