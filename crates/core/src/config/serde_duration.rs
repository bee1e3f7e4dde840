//! Serde helpers that write durations as human strings (`"10s"`) and read them back.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

use crate::time::{format_duration, parse_duration};

/// Serializes a duration as `"10s"`.
pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*duration))
}

/// Deserializes a duration from `"10s"`.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// The same for `Option<Duration>`.
pub mod option {
    use super::*;

    /// Serializes `Some(d)` as `"10s"` and `None` as null.
    pub fn serialize<S: Serializer>(duration: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match duration {
            Some(d) => serializer.serialize_str(&format_duration(*d)),
            None => serializer.serialize_none(),
        }
    }

    /// Deserializes `"10s"` or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}
