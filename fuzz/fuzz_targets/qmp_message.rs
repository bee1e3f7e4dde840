//! `qmp_message`: what QEMU's QMP monitor sends, line by line, through the QMP message parser
//! (`handover_sources::qmp::message::parse`) and what the migration watcher reads from the
//! messages (`status_of` and `progress_of` on events' data and on command returns).
//!
//! The input is split into lines as the client's line reader splits them (LF, an optional CR
//! before it removed). No panic; a message is what its JSON says it is (an event's name and data,
//! a return's or error's id, a timestamp that is exactly QEMU's seconds and microseconds); a line
//! that is not a message says why; a status reads back as the same text.

#![no_main]

use handover_sources::qmp::message::{Message, MessageError, parse};
use handover_sources::qmp::{MigrationStatus, progress_of, status_of};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn check_line(line: &[u8]) {
    let json: Option<Value> = serde_json::from_slice(line).ok();
    match parse(line) {
        Err(MessageError::NotJson(reason)) => {
            assert!(json.is_none(), "valid JSON reported as not JSON");
            assert!(!reason.is_empty());
        }
        Err(MessageError::Unrecognised(preview)) => {
            assert!(json.is_some(), "invalid JSON reported as unrecognised");
            assert!(preview.chars().count() <= 201, "the preview is not bounded");
        }
        Ok(message) => {
            let json = json.expect("a message is JSON");
            let object = json.as_object().expect("a message is a JSON object");
            let id = object.get("id").and_then(Value::as_u64);
            match message {
                Message::Greeting(greeting) => assert_eq!(Some(&greeting), object.get("QMP")),
                Message::Event(event) => {
                    assert_eq!(
                        Some(event.name.as_str()),
                        object.get("event").and_then(Value::as_str)
                    );
                    assert_eq!(&event.data, object.get("data").unwrap_or(&Value::Null));
                    let expected = object.get("timestamp").and_then(|t| {
                        let seconds = u128::try_from(t.get("seconds")?.as_i64()?).ok()?;
                        let micros = u128::try_from(t.get("microseconds")?.as_i64()?).ok()?;
                        u64::try_from(seconds * 1_000_000 + micros).ok()
                    });
                    assert_eq!(event.timestamp_us, expected, "timestamp");
                    watch(&event.data);
                }
                Message::Return { id: got, value } => {
                    assert_eq!(got, id);
                    assert_eq!(Some(&value), object.get("return"));
                    watch(&value);
                }
                Message::Error { id: got, .. } => assert_eq!(got, id),
            }
        }
    }
}

/// What the migration watcher makes of an event's data or a `query-migrate` reply.
fn watch(value: &Value) {
    let status = status_of(value);
    let text = status.to_string();
    assert_eq!(
        MigrationStatus::parse(&text),
        status,
        "status {text:?} reads back differently"
    );
    let _ = (status.notice(), status.is_running());
    let progress = progress_of(value);
    assert_eq!(
        progress.status.as_deref(),
        value.get("status").and_then(Value::as_str)
    );
}

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        check_line(line.strip_suffix(b"\r").unwrap_or(line));
    }
});
