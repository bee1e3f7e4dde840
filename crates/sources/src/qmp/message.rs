//! QMP messages as they arrive: a greeting, a command's return or error, or an asynchronous event.
//! Anything else is reported as unrecognised (and ignored by the client), never a panic.

use serde_json::Value;

/// One message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `{"QMP": {...}}`, sent once on connect.
    Greeting(Value),
    /// `{"return": ..., "id": ...}`.
    Return {
        /// Command id, if any.
        id: Option<u64>,
        /// The result.
        value: Value,
    },
    /// `{"error": {"class": ..., "desc": ...}, "id": ...}`.
    Error {
        /// Command id, if any.
        id: Option<u64>,
        /// Error class.
        class: String,
        /// Description.
        desc: String,
    },
    /// `{"event": ..., "data": ..., "timestamp": {...}}`.
    Event(Event),
}

/// An asynchronous event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event name, e.g. `MIGRATION`.
    pub name: String,
    /// Event data (`null` when absent).
    pub data: Value,
    /// QEMU's host wall-clock time of the event, in microseconds since the Unix epoch (absent
    /// when QEMU reports −1).
    pub timestamp_us: Option<u64>,
}

/// Why a line is not a QMP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object of a known QMP shape.
    #[error("unrecognised QMP message: {0}")]
    Unrecognised(String),
}

/// Parses one line.
pub fn parse(line: &[u8]) -> Result<Message, MessageError> {
    let value: Value = serde_json::from_slice(line).map_err(|e| MessageError::NotJson(e.to_string()))?;
    let Value::Object(object) = &value else {
        return Err(MessageError::Unrecognised(preview(&value)));
    };
    let id = object.get("id").and_then(Value::as_u64);
    if let Some(greeting) = object.get("QMP") {
        return Ok(Message::Greeting(greeting.clone()));
    }
    if let Some(name) = object.get("event").and_then(Value::as_str) {
        // Absent when QEMU says -1, and when it does not fit in microseconds since the epoch.
        let timestamp_us = object.get("timestamp").and_then(|t| {
            let seconds = u64::try_from(t.get("seconds")?.as_i64()?).ok()?;
            let micros = u64::try_from(t.get("microseconds")?.as_i64()?).ok()?;
            seconds.checked_mul(1_000_000)?.checked_add(micros)
        });
        return Ok(Message::Event(Event {
            name: name.to_string(),
            data: object.get("data").cloned().unwrap_or(Value::Null),
            timestamp_us,
        }));
    }
    if let Some(value) = object.get("return") {
        return Ok(Message::Return {
            id,
            value: value.clone(),
        });
    }
    if let Some(error) = object.get("error") {
        let text = |key: &str| error.get(key).and_then(Value::as_str).unwrap_or("").to_string();
        return Ok(Message::Error {
            id,
            class: text("class"),
            desc: text("desc"),
        });
    }
    Err(MessageError::Unrecognised(preview(&value)))
}

fn preview(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_is_recognised() {
        assert!(matches!(
            parse(br#"{"QMP": {"version": {}, "capabilities": []}}"#),
            Ok(Message::Greeting(_))
        ));
        assert_eq!(
            parse(br#"{"return": {}, "id": 7}"#),
            Ok(Message::Return {
                id: Some(7),
                value: serde_json::json!({})
            })
        );
        assert_eq!(
            parse(br#"{"error": {"class": "GenericError", "desc": "nope"}, "id": 2}"#),
            Ok(Message::Error {
                id: Some(2),
                class: "GenericError".into(),
                desc: "nope".into()
            })
        );
        let event = parse(br#"{"timestamp": {"seconds": 1432121972, "microseconds": 744001}, "event": "MIGRATION", "data": {"status": "completed"}}"#);
        assert_eq!(
            event,
            Ok(Message::Event(Event {
                name: "MIGRATION".into(),
                data: serde_json::json!({"status": "completed"}),
                timestamp_us: Some(1_432_121_972_744_001),
            }))
        );
    }

    /// Found by the `qmp_message` fuzz target: seconds beyond what microseconds since the epoch
    /// can hold overflowed (a panic with overflow checks, a wrapped timestamp without).
    #[test]
    fn a_timestamp_too_large_for_microseconds_is_absent() {
        for line in [
            br#"{"timestamp":{"seconds":96115296115253,"microseconds":7},"event":""}"#.as_slice(),
            br#"{"timestamp":{"seconds":18446744073709,"microseconds":551616},"event":"STOP"}"#,
        ] {
            let Ok(Message::Event(event)) = parse(line) else {
                panic!("an event: {}", String::from_utf8_lossy(line));
            };
            assert_eq!(event.timestamp_us, None);
        }
        let largest =
            parse(br#"{"timestamp":{"seconds":18446744073709,"microseconds":551615},"event":"STOP"}"#);
        assert!(matches!(
            largest,
            Ok(Message::Event(Event {
                timestamp_us: Some(u64::MAX),
                ..
            }))
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            parse(b"this is not json"),
            Err(MessageError::NotJson(_))
        ));
        assert!(matches!(parse(b"[1,2,3]"), Err(MessageError::Unrecognised(_))));
        assert!(matches!(
            parse(br#"{"hello": 1}"#),
            Err(MessageError::Unrecognised(_))
        ));
        assert!(matches!(
            parse(br#"{"event": 5}"#),
            Err(MessageError::Unrecognised(_))
        ));
        let no_time =
            parse(br#"{"event": "STOP", "timestamp": {"seconds": -1, "microseconds": -1}}"#).unwrap();
        assert!(matches!(
            no_time,
            Message::Event(Event {
                timestamp_us: None,
                ..
            })
        ));
    }
}
