//! Reading JSON bodies with errors that name the offending field (`phase: unknown variant ...`).

use serde::de::DeserializeOwned;

use super::ApiError;

/// Parses a JSON body; an error names the field path and the position in the body.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; a JSON object is expected",
            None,
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = (path != ".").then_some(path);
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
