//! Request targets and authorities (RFC 9112 §3.2, RFC 3986 §3.2): which forms a reverse proxy
//! forwards, and what a `Host` value may hold. A target or host that two parsers could split
//! differently (a fragment, userinfo, a space or a slash in a host) is refused, not repaired.

/// How a request names its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target<'a> {
    /// `/path?query`.
    Origin(&'a str),
    /// `http://authority/path?query`: forwarded in origin form with `Host` set to the authority.
    Absolute {
        /// The authority (`host[:port]`).
        authority: &'a str,
        /// The path and query (`/` when empty).
        path: &'a str,
    },
    /// `*` (OPTIONS only).
    Asterisk,
}

impl<'a> Target<'a> {
    /// Classifies a request target; `Err` says why it cannot be forwarded.
    pub(super) fn parse(method: &str, target: &'a str) -> Result<Self, &'static str> {
        // Raw non-ASCII has to be percent-encoded (RFC 3986); servers disagree on what else it is.
        if !target.is_ascii() {
            return Err("a request target is ASCII (the rest percent-encoded)");
        }
        if target.contains('#') {
            return Err("a request target may not carry a fragment");
        }
        if target.starts_with('/') {
            return Ok(Self::Origin(target));
        }
        if target == "*" {
            return if method == "OPTIONS" {
                Ok(Self::Asterisk)
            } else {
                Err("the asterisk target is for OPTIONS only")
            };
        }
        let Some(rest) = ["http://", "https://"].iter().find_map(|scheme| {
            target
                .as_bytes()
                .get(..scheme.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(scheme.as_bytes()))
                .then(|| &target[scheme.len()..])
        }) else {
            return Err("the request target is not a path or an http URI");
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if !is_authority(authority.as_bytes()) {
            return Err("the request target's authority is not a valid host");
        }
        Ok(Self::Absolute {
            authority,
            path: if path.is_empty() { "/" } else { path },
        })
    }

    /// The target as the backend gets it (origin form; a bare query gets its `/` in front by the
    /// writer).
    pub(super) fn forwarded(&self) -> &'a str {
        match self {
            Self::Origin(path) | Self::Absolute { path, .. } => path,
            Self::Asterisk => "*",
        }
    }
}

/// Bytes of a registered name or IPv4 address: unreserved, `%` (percent-encodings) and
/// sub-delimiters (RFC 3986 §3.2.2).
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

/// Whether `value` is `host[:port]` as an `http` URI's authority allows it: a registered name or
/// IPv4 address (unreserved characters, percent-encodings, sub-delimiters), or an IP literal in
/// brackets, then an optional port of digits. Not empty, no userinfo (RFC 9110 §4.2.1, §4.2.4).
pub(super) fn is_authority(value: &[u8]) -> bool {
    // The common case: a registered name or IPv4 address, maybe a port.
    if value.first() != Some(&b'[') {
        let (host, port) = match value.iter().rposition(|b| *b == b':') {
            Some(at) => (&value[..at], &value[at + 1..]),
            None => (value, &[][..]),
        };
        return !host.is_empty()
            && port.len() <= 5
            && host.iter().all(|b| REG_NAME[*b as usize])
            && port.iter().all(u8::is_ascii_digit);
    }
    // An IP literal: `[hex:digits.and:colons]`, then maybe a port.
    let Some(close) = value.iter().position(|b| *b == b']') else {
        return false;
    };
    let literal = &value[1..close];
    let port_ok = match &value[close + 1..] {
        [] => true,
        [b':', port @ ..] => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    port_ok
        && !literal.is_empty()
        && literal
            .iter()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_a_reverse_proxy_forwards() {
        assert_eq!(Target::parse("GET", "/a?b"), Ok(Target::Origin("/a?b")));
        assert_eq!(
            Target::parse("GET", "HTTP://api.example:8080?q=1"),
            Ok(Target::Absolute {
                authority: "api.example:8080",
                path: "?q=1"
            })
        );
        assert_eq!(
            Target::parse("GET", "http://[::1]:80").map(|t| t.forwarded()),
            Ok("/")
        );
        assert_eq!(Target::parse("OPTIONS", "*"), Ok(Target::Asterisk));
    }

    #[test]
    fn targets_two_parsers_could_read_differently_are_refused() {
        for (method, target) in [
            ("GET", "/a#b"),
            ("GET", "*"),
            ("GET", "a/b"),
            ("GET", "example.com:80"),
            ("GET", "http://user@host/"),
            ("GET", "http:///path"),
            ("GET", "ftp://host/"),
            ("GET", "http://ho st/"),
            ("GET", "/caf\u{e9}"),
            ("GET", "http:/\u{e9}x"),
            ("GET", "https:/\u{e9}"),
        ] {
            assert!(Target::parse(method, target).is_err(), "{method} {target}");
        }
    }

    #[test]
    fn hosts() {
        for good in [
            &b"example.com"[..],
            b"example.com:8080",
            b"10.0.0.1",
            b"[2001:db8::1]:443",
            b"xn--bcher-kva.example",
            b"a_b.local",
        ] {
            assert!(is_authority(good), "{}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b""[..],
            b":80",
            b"a b",
            b"a/b",
            b"user@host",
            b"host:80x",
            b"host:123456",
            b"[::1",
            b"[::1]x",
            b"[]",
            b"a\tb",
            b"host\\x",
        ] {
            assert!(!is_authority(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
