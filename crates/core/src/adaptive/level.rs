//! The adaptive controller's output: a level in `[0, 1]`, the fraction of each pool's drain target
//! that a VM keeps (1 = the target, 0 = a full drain).
//!
//! It is kept in fixed point (1/10,000) so that a [`crate::phase::PhaseCommand`] carrying it stays
//! `Eq` and compares exactly after a round trip through JSON or the state file.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Steps per unit.
const SCALE: u16 = 10_000;

/// A fraction of the drain target, in `[0, 1]`, to 1/10,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Level(u16);

impl Level {
    /// The drain target itself.
    pub const FULL: Level = Level(SCALE);
    /// A full drain.
    pub const ZERO: Level = Level(0);

    /// The nearest level to `value`, clamped into `[0, 1]` (NaN is 0: when in doubt, drain).
    pub fn new(value: f64) -> Self {
        if value.is_nan() {
            return Self::ZERO;
        }
        Self((value.clamp(0.0, 1.0) * f64::from(SCALE)).round() as u16)
    }

    /// A level from its wire value, or why it is not one.
    pub fn parse(value: f64) -> Result<Self, String> {
        if value.is_finite() && (0.0..=1.0).contains(&value) {
            Ok(Self::new(value))
        } else {
            Err(format!("level {value} is out of range; expected 0.0 to 1.0"))
        }
    }

    /// The level as a fraction.
    pub fn get(self) -> f64 {
        f64::from(self.0) / f64::from(SCALE)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}", self.get())
    }
}

/// A level in the OpenAPI document: a number from 0 to 1 (written by hand: on the wire it is the
/// fraction, not the integer kept inside).
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Level {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Number)
            .description(Some(
                "The adaptive drain's level: the fraction of each pool's drain target the VM keeps.",
            ))
            .minimum(Some(0.0))
            .maximum(Some(1.0))
            .examples([serde_json::json!(0.4)])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Level {}

impl Serialize for Level {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.get())
    }
}

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        Level::parse(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_clamped_and_round_trip_through_json() {
        assert_eq!(Level::new(1.5), Level::FULL);
        assert_eq!(Level::new(-0.5), Level::ZERO);
        assert_eq!(Level::new(f64::NAN), Level::ZERO);
        let level = Level::new(0.3333);
        let json = serde_json::to_string(&level).unwrap();
        assert_eq!(json, "0.3333");
        assert_eq!(serde_json::from_str::<Level>(&json).unwrap(), level);
    }

    #[test]
    fn a_level_outside_zero_to_one_is_refused_on_the_wire() {
        assert!(serde_json::from_str::<Level>("1.01").is_err());
        assert!(serde_json::from_str::<Level>("-0.1").is_err());
        assert!(
            serde_json::from_str::<Level>("2")
                .unwrap_err()
                .to_string()
                .contains("out of range")
        );
    }
}
