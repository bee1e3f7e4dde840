//! Header fields as the proxy sees them: what each one is (told from its name), and the facts a
//! head's fields add up to — where its body ends, whether its connection persists, which fields
//! `Connection` asks to drop — checked against the rules that keep the proxy and its peers
//! reading the same messages (RFC 9110 §7.6.1, RFC 9112 §6).
//!
//! The one rule a reviewer should find here: `Connection` may drop hop-by-hop fields, never a
//! field the proxy itself frames or routes by (`Content-Length`, `Transfer-Encoding`, `Host`). A
//! message whose `Connection` names one of those is refused (request 400, response 502): its
//! sender broke RFC 9110's "MUST NOT", and honouring it would forward a body whose framing the
//! next hop cannot see, which is how one client's bytes become another client's request.
//!
//! Not here: writing heads out (`rewrite`), request targets and authorities (`target`).

/// Most header fields in one head.
pub const MAX_HEADERS: usize = 100;

/// What a header field is to the proxy, told from its name (by length first: one comparison at
/// most for most names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    /// Passed on unchanged.
    Plain,
    ContentLength,
    TransferEncoding,
    Connection,
    Host,
    Expect,
    Cookie,
    ForwardedFor,
    /// `Upgrade`: hop-by-hop, except on a WebSocket upgrade the listener allows.
    Upgrade,
    /// `Content_Length` or `Transfer_Encoding`: a name some servers read as the framing field
    /// (CGI-style variables turn `-` into `_`). Refused.
    Lookalike,
    /// Never forwarded: `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`,
    /// `Proxy-Authorization`, `TE`, `Trailer`.
    HopByHop,
}

impl Field {
    /// The field a name denotes, whatever its case.
    #[inline(always)]
    pub(super) fn of(name: &[u8]) -> Self {
        let Some(first) = name.first() else {
            return Self::Plain;
        };
        let is = |wanted: &str| name.eq_ignore_ascii_case(wanted.as_bytes());
        // Length and first letter rule out almost every other name before any comparison.
        match (name.len(), first.to_ascii_lowercase()) {
            (2, b't') if is("te") => Self::HopByHop,
            (4, b'h') if is("host") => Self::Host,
            (6, b'e') if is("expect") => Self::Expect,
            (6, b'c') if is("cookie") => Self::Cookie,
            (7, b't') if is("trailer") => Self::HopByHop,
            (7, b'u') if is("upgrade") => Self::Upgrade,
            (10, b'c') if is("connection") => Self::Connection,
            (10, b'k') if is("keep-alive") => Self::HopByHop,
            (14, b'c') if is("content-length") => Self::ContentLength,
            (15, b'x') if is("x-forwarded-for") => Self::ForwardedFor,
            (16, b'p') if is("proxy-connection") => Self::HopByHop,
            (17, b't') if is("transfer-encoding") => Self::TransferEncoding,
            (18, b'p') if is("proxy-authenticate") => Self::HopByHop,
            (19, b'p') if is("proxy-authorization") => Self::HopByHop,
            _ => Self::Plain,
        }
    }

    /// A name some servers would read as a framing field (`Content_Length`): checked apart from
    /// [`Field::of`], on the rare names of those lengths with an underscore, so the common path
    /// stays small.
    fn of_lookalike(name: &[u8]) -> Self {
        let like = |wanted: &str| {
            name.len() == wanted.len()
                && name
                    .iter()
                    .zip(wanted.as_bytes())
                    .all(|(a, b)| a.eq_ignore_ascii_case(b) || (*a == b'_' && *b == b'-'))
        };
        if name.contains(&b'_') && (like("content-length") || like("transfer-encoding")) {
            Self::Lookalike
        } else {
            Self::Plain
        }
    }

    /// Fields the proxy frames or routes a message by: `Connection` may never remove them.
    fn is_protected(self) -> bool {
        matches!(self, Self::ContentLength | Self::TransferEncoding | Self::Host)
    }
}

/// The transfer codings of a message, across all its `Transfer-Encoding` fields.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Codings<'b> {
    /// A `Transfer-Encoding` field is present.
    pub present: bool,
    /// How many times `chunked` is listed.
    pub chunked: u32,
    /// The last coding listed is `chunked`.
    pub last_is_chunked: bool,
    /// The first coding listed that is not `chunked`.
    pub other: Option<&'b [u8]>,
}

/// Header facts gathered before anything is written.
#[derive(Debug)]
pub(super) struct Scan<'b> {
    /// What each header is, by index.
    pub fields: [Field; MAX_HEADERS],
    /// The body length all `Content-Length` fields agree on.
    pub content_length: Option<u64>,
    /// Transfer codings.
    pub codings: Codings<'b>,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Host` fields, and the value of the first.
    pub hosts: usize,
    /// The first `Host` value.
    pub host: Option<&'b [u8]>,
    /// `Expect: 100-continue`.
    pub expects_continue: bool,
    /// `Connection` lists `upgrade`.
    pub connection_upgrade: bool,
    /// `Upgrade` says exactly `websocket` (one field, one protocol).
    pub upgrade_websocket: bool,
    /// Extra names listed in `Connection` (allocates only when there are any).
    connection_names: Vec<&'b [u8]>,
}

/// `bytes` without leading and trailing spaces and tabs.
#[inline]
pub(super) fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The members of a comma-separated list, trimmed, empty ones skipped (RFC 9110 §5.6.1).
fn members(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(trim).filter(|m| !m.is_empty())
}

/// Parses a `Content-Length` value: digits only; a list is accepted when its members agree.
fn content_length(value: &[u8]) -> Option<u64> {
    let mut found: Option<u64> = None;
    for member in value.split(|b| *b == b',') {
        let member = trim(member);
        if member.is_empty() || member.len() > 18 || !member.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = member.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

impl<'b> Scan<'b> {
    /// Gathers framing and connection facts; `Err` names the first problem.
    pub(super) fn of(headers: &[httparse::Header<'b>]) -> Result<Self, String> {
        let mut scan = Scan {
            fields: [Field::Plain; MAX_HEADERS],
            content_length: None,
            codings: Codings::default(),
            close: false,
            keep_alive: false,
            hosts: 0,
            host: None,
            expects_continue: false,
            connection_upgrade: false,
            upgrade_websocket: false,
            connection_names: Vec::new(),
        };
        let mut upgrades = 0;
        for (header, field) in headers.iter().zip(scan.fields.iter_mut()) {
            *field = Field::of(header.name.as_bytes());
            if *field == Field::Plain && matches!(header.name.len(), 14 | 17) {
                *field = Field::of_lookalike(header.name.as_bytes());
            }
            match *field {
                Field::ContentLength => {
                    let n = content_length(header.value).ok_or_else(|| {
                        format!(
                            "invalid Content-Length {:?}",
                            String::from_utf8_lossy(header.value)
                        )
                    })?;
                    if scan.content_length.is_some_and(|c| c != n) {
                        return Err("conflicting Content-Length headers".into());
                    }
                    scan.content_length = Some(n);
                }
                Field::TransferEncoding => {
                    let codings = &mut scan.codings;
                    codings.present = true;
                    for coding in members(header.value) {
                        let chunked = coding.eq_ignore_ascii_case(b"chunked");
                        codings.last_is_chunked = chunked;
                        if chunked {
                            codings.chunked += 1;
                        } else if codings.other.is_none() {
                            codings.other = Some(coding);
                        }
                    }
                }
                Field::Connection => {
                    for token in members(header.value) {
                        if token.eq_ignore_ascii_case(b"close") {
                            scan.close = true;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            scan.keep_alive = true;
                        } else if token.eq_ignore_ascii_case(b"upgrade") {
                            // `Upgrade` is hop-by-hop already: a flag, not a name to look up.
                            scan.connection_upgrade = true;
                        } else if Field::of(token).is_protected() {
                            return Err(format!(
                                "Connection names {}, a field every hop needs",
                                String::from_utf8_lossy(token)
                            ));
                        } else {
                            scan.connection_names.push(token);
                        }
                    }
                }
                Field::Host => {
                    scan.hosts += 1;
                    scan.host.get_or_insert(header.value);
                }
                Field::Lookalike => {
                    return Err(format!("{} looks like a framing field", header.name));
                }
                Field::Expect => {
                    scan.expects_continue = trim(header.value).eq_ignore_ascii_case(b"100-continue");
                }
                Field::Upgrade => {
                    upgrades += 1;
                    scan.upgrade_websocket =
                        upgrades == 1 && trim(header.value).eq_ignore_ascii_case(b"websocket");
                }
                _ => {}
            }
        }
        if upgrades > 1 {
            scan.upgrade_websocket = false;
        }
        Ok(scan)
    }

    /// Whether header `index` is dropped on the way through as hop-by-hop.
    #[inline]
    pub(super) fn hop_by_hop(&self, index: usize, name: &str) -> bool {
        match self.fields[index] {
            Field::HopByHop | Field::Connection | Field::Upgrade => true,
            _ => {
                !self.connection_names.is_empty()
                    && self
                        .connection_names
                        .iter()
                        .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
            }
        }
    }

    /// Whether the sender asks for the connection to stay open after this message.
    pub(super) fn persistent(&self, version: u8) -> bool {
        if version == 0 {
            self.keep_alive && !self.close
        } else {
            !self.close
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_of(lines: &[(&'static str, &'static [u8])]) -> Result<Scan<'static>, String> {
        let headers: Vec<httparse::Header<'static>> = lines
            .iter()
            .map(|(name, value)| httparse::Header { name, value })
            .collect();
        let headers: &'static [httparse::Header<'static>] = Box::leak(headers.into_boxed_slice());
        Scan::of(headers)
    }

    #[test]
    fn fields_are_told_apart_whatever_their_case() {
        for (name, field) in [
            ("Content-Length", Field::ContentLength),
            ("TRANSFER-ENCODING", Field::TransferEncoding),
            ("connection", Field::Connection),
            ("Host", Field::Host),
            ("Expect", Field::Expect),
            ("Cookie", Field::Cookie),
            ("X-Forwarded-For", Field::ForwardedFor),
            ("TE", Field::HopByHop),
            ("Trailer", Field::HopByHop),
            ("Upgrade", Field::Upgrade),
            ("Keep-Alive", Field::HopByHop),
            ("Proxy-Connection", Field::HopByHop),
            ("Proxy-Authenticate", Field::HopByHop),
            ("Proxy-Authorization", Field::HopByHop),
            ("Content-Type", Field::Plain),
            ("Server", Field::Plain),
            ("Hostx", Field::Plain),
            ("Content-Lengt", Field::Plain),
        ] {
            assert_eq!(Field::of(name.as_bytes()), field, "{name}");
        }
        for (name, field) in [
            ("Content_Length", Field::Lookalike),
            ("transfer_encoding", Field::Lookalike),
            ("Transfer-Encodinx", Field::Plain),
            ("X-Some_Header_17c", Field::Plain),
        ] {
            assert_eq!(Field::of_lookalike(name.as_bytes()), field, "{name}");
        }
    }

    #[test]
    fn connection_may_not_name_a_field_the_proxy_frames_or_routes_by() {
        for named in [
            &b"Content-Length"[..],
            b"transfer-encoding",
            b"HOST",
            b"keep-alive, Content-Length",
            b"close,Host",
        ] {
            let error = scan_of(&[("Connection", named)]).unwrap_err();
            assert!(error.starts_with("Connection names "), "{error}");
        }
        let scan = scan_of(&[("Connection", b"Upgrade, X-Private"), ("X-Private", b"1")]).unwrap();
        assert!(scan.hop_by_hop(1, "x-private"));
        assert!(scan.hop_by_hop(0, "Connection"));
    }

    #[test]
    fn codings_are_counted_across_fields_and_empty_members_skipped() {
        let scan = scan_of(&[
            ("Transfer-Encoding", b"gzip, ,"),
            ("Transfer-Encoding", b" Chunked "),
        ])
        .unwrap();
        assert!(scan.codings.present && scan.codings.last_is_chunked);
        assert_eq!(scan.codings.chunked, 1);
        assert_eq!(scan.codings.other, Some(&b"gzip"[..]));
        let twice = scan_of(&[
            ("Transfer-Encoding", b"chunked"),
            ("Transfer-Encoding", b"chunked"),
        ])
        .unwrap();
        assert_eq!(twice.codings.chunked, 2);
        let odd = scan_of(&[("Transfer-Encoding", b"\x0bchunked")]).unwrap();
        assert!(!odd.codings.last_is_chunked, "only exactly chunked is chunked");
    }

    #[test]
    fn lengths_must_agree_and_be_plain_digits() {
        assert_eq!(
            scan_of(&[("Content-Length", b"5"), ("content-length", b" 5 , 5")])
                .unwrap()
                .content_length,
            Some(5)
        );
        for bad in [
            &b"+5"[..],
            b"-1",
            b"0x5",
            b"5 6",
            b"",
            b"1234567890123456789",
            b"5, 6",
        ] {
            assert!(scan_of(&[("Content-Length", bad)]).is_err(), "{bad:?}");
        }
        assert!(scan_of(&[("Content-Length", b"5"), ("Content-Length", b"6")]).is_err());
    }
}
