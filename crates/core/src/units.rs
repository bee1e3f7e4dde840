//! Byte quantities for humans: `"64MiB"`, `"1GiB"`, `"100MB"`, `"125000000"` (an optional `/s` is
//! accepted, for rates).

/// Why a byte quantity was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid byte quantity {0:?}: expected a number with an optional unit (B, KB, KiB, MB, MiB, GB, GiB), e.g. \"64MiB\""
)]
pub struct BytesError(pub String);

/// Parses a byte quantity into bytes.
pub fn parse_bytes(text: &str) -> Result<u64, BytesError> {
    let trimmed = text.trim();
    let trimmed = trimmed.strip_suffix("/s").unwrap_or(trimmed).trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number.parse().map_err(|_| BytesError(text.to_string()))?;
    let multiplier: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "KB" | "k" | "kB" => 1e3,
        "KiB" => 1024.0,
        "M" | "MB" => 1e6,
        "MiB" => 1024.0 * 1024.0,
        "G" | "GB" => 1e9,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(BytesError(text.to_string())),
    };
    let bytes = value * multiplier;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(BytesError(text.to_string()));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_bytes("1GiB/s"), Ok(1 << 30));
        assert_eq!(parse_bytes("100MB"), Ok(100_000_000));
        assert_eq!(parse_bytes("125000000"), Ok(125_000_000));
        assert_eq!(parse_bytes("1.5KiB"), Ok(1536));
        assert!(parse_bytes("fast").is_err());
        assert!(parse_bytes("10 parsecs").is_err());
    }
}
