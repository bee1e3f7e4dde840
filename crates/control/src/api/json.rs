//! Reading JSON bodies with errors that name the offending field (`phase: unknown variant ...`).
//!
//! A number with a zero fraction (`502.0`) is an integer: JSON Schema (and so the OpenAPI document)
//! counts it as one, and encoders such as Python's `json` write whole floats that way, while serde
//! refuses it for an integer field. [`parse`] blanks such fractions before reading (`502.0` →
//! `502  `, so that every position in an error message stays right).

use std::fmt::Write as _;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde::de::DeserializeOwned;
use serde_path_to_error::{Path, Segment};

use super::ApiError;

/// The body of a request, or the error that reading it met (413 over axum's limit of 2 MiB) as
/// an [`ApiError`], where axum's own answer would be plain text.
pub fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| ApiError {
        status: rejection.status(),
        body: handover_core::api::ErrorBody {
            error: format!("the request body cannot be read: {}", rejection.body_text()),
            field: None,
            balancers: Vec::new(),
        },
    })
}

/// Parses a JSON body; an error names the field path and the position in the body.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; a JSON object is expected",
            None,
        ));
    }
    // Every body of the API is an object: serde would also read a struct from an array of its
    // fields in order (`[]` for a struct of optional fields), which the contract does not allow.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "invalid JSON body: a JSON object is expected",
            None,
        ));
    }
    let body = whole_numbers(body);
    let mut deserializer = serde_json::Deserializer::from_slice(&body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let inner = e.inner().to_string();
        let field = field_of(e.path(), &inner);
        let message = match &field {
            Some(field) => format!("{field}: {inner}"),
            None => format!("invalid JSON body: {inner}"),
        };
        ApiError::bad_request(message, field.as_deref())
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: trailing characters ({e})"), None))?;
    Ok(value)
}

/// The body with the zero fraction of every number outside strings blanked (`7.00` → `7   `); a
/// number with an exponent or another fraction is left as it is.
fn whole_numbers(body: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !body.contains(&b'.') {
        return std::borrow::Cow::Borrowed(body);
    }
    let mut out = body.to_vec();
    let (mut i, mut in_string) = (0, false);
    while i < out.len() {
        let byte = out[i];
        if in_string {
            match byte {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if byte == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if !byte.is_ascii_digit() {
            i += 1;
            continue;
        }
        // A number: its integer digits, then perhaps `.` and a fraction, then perhaps an exponent.
        while i < out.len() && out[i].is_ascii_digit() {
            i += 1;
        }
        if i < out.len() && out[i] == b'.' {
            let dot = i;
            let mut end = dot + 1;
            while end < out.len() && out[end] == b'0' {
                end += 1;
            }
            let followed_by_number =
                end < out.len() && (out[end].is_ascii_digit() || matches!(out[end], b'e' | b'E'));
            if end > dot + 1 && !followed_by_number {
                out[dot..end].fill(b' ');
            }
            i = end;
            while i < out.len() && (out[i].is_ascii_alphanumeric() || matches!(out[i], b'+' | b'-' | b'.')) {
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The field an error is about: where it happened, and the field it says is missing or repeated
/// (serde reports those at the object that holds them). `None` for the body as a whole.
fn field_of(path: &Path, message: &str) -> Option<String> {
    let mut field = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => {
                let _ = write!(field, "[{index}]");
            }
            Segment::Map { key } | Segment::Enum { variant: key } => push_key(&mut field, key),
            // Inside something not yet known (a key still being read): the path ends here.
            Segment::Unknown => break,
        }
    }
    if let Some(name) = ["missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name)
    {
        push_key(&mut field, name);
    }
    (!field.is_empty()).then_some(field)
}

/// Appends a key to a field path: `a.b` for plain names, `a["127.0.0.1:9001"]` for a key that is
/// empty or holds anything else, so that every key is visible and the path reads one way.
fn push_key(field: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if plain {
        if !field.is_empty() {
            field.push('.');
        }
        field.push_str(key);
    } else {
        let quoted = serde_json::to_string(key).unwrap_or_else(|_| format!("{key:?}"));
        let _ = write!(field, "[{quoted}]");
    }
}

#[cfg(test)]
mod tests {
    use handover_core::api::NoticeRequest;
    use handover_core::migration::MigrationProgress;
    use handover_core::phase::PhaseCommand;

    use super::*;

    fn field_of_error<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> (Option<String>, String) {
        let error = parse::<T>(body.as_bytes()).expect_err("the body is refused");
        (error.body.field, error.body.error)
    }

    /// Found by the `control_api_bodies` fuzz target: `{"":0}` was refused with the field `""`
    /// (and a message starting with ": "), which names nothing.
    #[test]
    fn an_empty_key_is_named_visibly() {
        let (field, error) = field_of_error::<NoticeRequest>(r#"{"":0}"#);
        assert_eq!(field.as_deref(), Some(r#"[""]"#));
        assert!(error.starts_with(r#"[""]: unknown field ``"#), "{error}");
    }

    #[test]
    fn keys_that_are_not_plain_names_are_quoted() {
        let (field, _) = field_of_error::<NoticeRequest>(
            r#"{"phase":"completed","addresses":{"127.0.0.1:9001":"nowhere"}}"#,
        );
        assert_eq!(field.as_deref(), Some(r#"addresses["127.0.0.1:9001"]"#));
        let (field, _) = field_of_error::<NoticeRequest>(r#"{"phase":"teleport"}"#);
        assert_eq!(field.as_deref(), Some("phase"));
    }

    /// Found by the `control_api_bodies` fuzz target: a missing field was reported without a
    /// field, because serde reports it at the object that lacks it.
    #[test]
    fn a_missing_field_is_named() {
        let (field, error) = field_of_error::<NoticeRequest>("{}");
        assert_eq!(field.as_deref(), Some("phase"));
        assert!(error.starts_with("phase: missing field `phase`"), "{error}");
    }

    /// Found by the `control_api_bodies` fuzz target: a field given twice was refused without a
    /// field.
    #[test]
    fn a_repeated_field_is_named() {
        let (field, error) = field_of_error::<NoticeRequest>(r#"{"phase":"prepare","phase":"f"}"#);
        assert_eq!(field.as_deref(), Some("phase"));
        assert!(error.starts_with("phase: duplicate field `phase`"), "{error}");
    }

    /// Found by the `control_api_bodies` fuzz target: a peer's phase command without `action`, or
    /// with a field of the wrong type, was refused without a field.
    #[test]
    fn every_field_of_a_phase_command_is_named() {
        for (body, expected) in [
            (r#"{"elapsed_ms":1}"#, "action"),
            (r#"{"action":"teleport"}"#, "action"),
            (
                r#"{"action":"drain","elapsed_ms":"x","migrating":false,"deadline_in_ms":1}"#,
                "elapsed_ms",
            ),
            (
                r#"{"action":"drain","elapsed_ms":1,"deadline_in_ms":1}"#,
                "migrating",
            ),
            (r#"{"action":"ramp","elapsed_ms":1,"reason":"bored"}"#, "reason"),
            (r#"{"action":"ramp","elapsed_ms":1}"#, "reason"),
        ] {
            let (field, error) = field_of_error::<PhaseCommand>(body);
            assert_eq!(field.as_deref(), Some(expected), "{body}: {error}");
        }
    }

    /// Found by schemathesis: `"setup_time_ms": 502.0` is an integer to JSON Schema (and to the
    /// OpenAPI document) but serde refused it.
    #[test]
    fn a_whole_number_written_with_a_zero_fraction_is_an_integer() {
        let progress: MigrationProgress =
            parse(br#"{"setup_time_ms": 502.0, "passes": 3.000, "mbps": 1.5, "status": "a 1.0 b"}"#).unwrap();
        assert_eq!(progress.setup_time_ms, Some(502));
        assert_eq!(progress.passes, Some(3));
        assert_eq!(progress.mbps, Some(1.5));
        assert_eq!(progress.status.as_deref(), Some("a 1.0 b"));
        let (field, error) = field_of_error::<MigrationProgress>(r#"{"passes": 2.5}"#);
        assert_eq!(field.as_deref(), Some("passes"), "{error}");
        let (field, _) = field_of_error::<MigrationProgress>(r#"{"status": "\"", "passes": 2.05}"#);
        assert_eq!(field.as_deref(), Some("passes"));
        let (field, _) = field_of_error::<MigrationProgress>(r#"{"passes": 1.0e3}"#);
        assert_eq!(field.as_deref(), Some("passes"));
        assert!(parse::<MigrationProgress>(b"{\"passes\": 1.}").is_err());
    }

    #[test]
    fn a_body_that_is_not_an_object_names_no_field() {
        for body in ["true", "5", "{", "nonsense", "[]", " [1, 2]"] {
            let (field, error) = field_of_error::<MigrationProgress>(body);
            assert_eq!(field, None, "{body}");
            assert!(error.starts_with("invalid JSON body: "), "{body}: {error}");
        }
        let (field, error) = field_of_error::<NoticeRequest>(r#"{"phase":"prepare"} x"#);
        assert_eq!(field, None);
        assert!(error.contains("trailing characters"), "{error}");
    }
}
