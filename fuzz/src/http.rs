//! HTTP/1.1 facts the head targets check the proxy's output against, written from RFC 9110 and
//! RFC 9112 rather than from `handover_proxy::http::head`.

/// A header field as `httparse` read it, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Field name as written.
    pub name: String,
    /// Field value as `httparse` gives it.
    pub value: Vec<u8>,
}

impl Header {
    /// Copies an `httparse` header.
    pub fn of(header: &httparse::Header<'_>) -> Self {
        Self {
            name: header.name.to_string(),
            value: header.value.to_vec(),
        }
    }

    /// Whether the field is `name`, in any case.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// Hop-by-hop fields whatever `Connection` says (RFC 9110 §7.6.1, and the proxy-specific ones).
pub fn is_fixed_hop_by_hop(name: &str) -> bool {
    [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Fields a proxy's own decisions rest on (where a message ends, where it goes): `Connection`
/// naming them must not remove or change them.
pub fn is_framing_or_routing(name: &str) -> bool {
    ["content-length", "transfer-encoding", "host"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// The field names listed in every `Connection` header, lower-cased, without the `close` and
/// `keep-alive` options.
pub fn connection_tokens(headers: &[Header]) -> Vec<String> {
    headers
        .iter()
        .filter(|h| h.is("connection"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(|token| {
            String::from_utf8_lossy(token)
                .trim_matches([' ', '\t'])
                .to_ascii_lowercase()
        })
        .filter(|token| !token.is_empty() && token != "close" && token != "keep-alive")
        .collect()
}

/// An absolute-form `http` or `https` target split into authority and the rest (RFC 9112
/// §3.2.2); `None` for any other form, or an authority that is empty or carries userinfo.
pub fn split_absolute_form(target: &str) -> Option<(&str, &str)> {
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let skip = if lower.starts_with("http://") {
        7
    } else if lower.starts_with("https://") {
        8
    } else {
        return None;
    };
    let rest = &target[skip..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some((authority, path))
}

/// A field value that is a plain decimal number (RFC 9110 §8.6's `1*DIGIT`), as a number.
pub fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}
