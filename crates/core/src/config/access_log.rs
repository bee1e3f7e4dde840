//! A listener's access log (`listeners[].access_log`): where its lines go and what they look like.
//!
//! ```toml
//! access_log = { to = "/var/log/handover/web.log", format = "json" }
//! access_log = { to = "stdout", format = "text", template = "{client} {method} {target} {status} {vm} {phase} {total_ms}" }
//! ```
//!
//! One line per L7 request or L4 connection. JSON lines carry every field; text lines follow the
//! template, whose `{name}` placeholders are [`LogField`]s (`{{` and `}}` are literal braces).
//! Writing the lines is the data plane's job (`proxy::access_log`); this module only reads the
//! setting.

use std::path::PathBuf;

use serde::Serialize;

use super::reader::{Doc, Field, Fields};

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum AccessLogTarget {
    /// Standard output.
    Stdout,
    /// A file, appended to, reopened on SIGUSR1 (for logrotate).
    File(PathBuf),
}

/// One field of an access log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogField {
    /// When the request or connection ended (RFC 3339, UTC, milliseconds).
    Time,
    /// The client's address.
    Client,
    /// The listener's name.
    Listener,
    /// `http` or `tcp`.
    Protocol,
    /// The request method (L7).
    Method,
    /// The request target (L7).
    Target,
    /// The response status (L7; the proxy's own for a refusal).
    Status,
    /// The backend chosen (its address).
    Backend,
    /// The VM behind it.
    Vm,
    /// The VM's phase when the backend was chosen.
    Phase,
    /// Bytes received from the client.
    BytesIn,
    /// Bytes sent to the client.
    BytesOut,
    /// Milliseconds to the first byte of the response (L7) or to the backend connection (L4).
    TtfbMs,
    /// Milliseconds from the request (L7) or connection (L4) to its end.
    TotalMs,
    /// Why it failed, if it did.
    Error,
}

impl LogField {
    /// Every field, by its name in templates and JSON.
    pub const ALL: [(&'static str, LogField); 15] = [
        ("time", LogField::Time),
        ("client", LogField::Client),
        ("listener", LogField::Listener),
        ("protocol", LogField::Protocol),
        ("method", LogField::Method),
        ("target", LogField::Target),
        ("status", LogField::Status),
        ("backend", LogField::Backend),
        ("vm", LogField::Vm),
        ("phase", LogField::Phase),
        ("bytes_in", LogField::BytesIn),
        ("bytes_out", LogField::BytesOut),
        ("ttfb_ms", LogField::TtfbMs),
        ("total_ms", LogField::TotalMs),
        ("error", LogField::Error),
    ];

    /// The field's name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// A piece of a text template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TemplatePart {
    /// Written as is.
    Literal(String),
    /// A field's value (`-` when it has none).
    Field(LogField),
}

/// The default text template.
pub const DEFAULT_TEMPLATE: &str = "{time} {client} {listener} {method} {target} {status} {backend} {vm} {phase} {bytes_in} {bytes_out} {ttfb_ms} {total_ms} {error}";

/// How lines are written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum AccessLogFormat {
    /// One JSON object per line with every field.
    Json,
    /// The template, filled in.
    Text(Vec<TemplatePart>),
}

/// A listener's access log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessLogConfig {
    /// Where lines go.
    pub to: AccessLogTarget,
    /// What they look like.
    pub format: AccessLogFormat,
}

/// Parses a template; `Err` says what is wrong.
pub fn parse_template(text: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                let Some((_, field)) = LogField::ALL.iter().find(|(n, _)| *n == name) else {
                    let known: Vec<&str> = LogField::ALL.iter().map(|(n, _)| *n).collect();
                    return Err(format!(
                        "unknown field {{{name}}}; the fields are {}",
                        known.join(", ")
                    ));
                };
                if !literal.is_empty() {
                    parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
                }
                parts.push(TemplatePart::Field(*field));
            }
            '}' => return Err("a lone } (write }} for a brace)".into()),
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        parts.push(TemplatePart::Literal(literal));
    }
    if !parts.iter().any(|p| matches!(p, TemplatePart::Field(_))) {
        return Err("the template has no {field}".into());
    }
    Ok(parts)
}

/// Reads `listeners[].access_log`; `None` after an error (reported in `doc`).
pub(super) fn read_access_log(
    doc: &mut Doc<'_, '_>,
    field: &Field<'_, '_>,
) -> Option<Option<AccessLogConfig>> {
    let mut t = Fields::of(doc, field)?;
    let to = t.require(doc, "to").and_then(|f| {
        let text = f.non_empty_string(doc)?;
        Some(match text.as_str() {
            "off" => None,
            "stdout" => Some(AccessLogTarget::Stdout),
            path => Some(AccessLogTarget::File(PathBuf::from(path))),
        })
    });
    let format = match t.get("format") {
        Some(f) => f.choice(doc, &[("json", true), ("text", false)]),
        None => Some(false),
    };
    let template = match t.get("template") {
        Some(f) => {
            let text = f.non_empty_string(doc)?;
            match parse_template(&text) {
                Ok(parts) => Some(Some((parts, f))),
                Err(message) => {
                    doc.error(&f.path, f.span(), &message);
                    None
                }
            }
        }
        None => Some(None),
    };
    t.finish(doc);
    let (to, json, template) = (to?, format?, template?);
    let format = match (json, template) {
        (true, Some((_, f))) => {
            doc.error(&f.path, f.span(), "a template is for format = \"text\" only");
            return None;
        }
        (true, None) => AccessLogFormat::Json,
        (false, Some((parts, _))) => AccessLogFormat::Text(parts),
        (false, None) => AccessLogFormat::Text(parse_template(DEFAULT_TEMPLATE).expect("valid default")),
    };
    Some(to.map(|to| AccessLogConfig { to, format }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_known_fields_and_keep_literal_braces() {
        let parts = parse_template("{{ {client} -> {vm}/{phase} }}").unwrap();
        assert_eq!(
            parts,
            vec![
                TemplatePart::Literal("{ ".into()),
                TemplatePart::Field(LogField::Client),
                TemplatePart::Literal(" -> ".into()),
                TemplatePart::Field(LogField::Vm),
                TemplatePart::Literal("/".into()),
                TemplatePart::Field(LogField::Phase),
                TemplatePart::Literal(" }".into()),
            ]
        );
        assert!(
            parse_template("{nope}")
                .unwrap_err()
                .contains("unknown field {nope}")
        );
        assert!(parse_template("just text").is_err());
        assert!(parse_template("{client} }").is_err());
        assert!(parse_template(DEFAULT_TEMPLATE).is_ok());
        for (name, field) in LogField::ALL {
            assert_eq!(field.name(), name);
        }
    }
}
