//! Parsing of sizes (`64MiB`, `512k`, `1048576`) and durations (`2s`, `500ms`) on the command
//! line.

/// Parse a byte size: a number with an optional unit (`B`, `KiB`/`K`/`KB`, `MiB`/`M`/`MB`,
/// `GiB`/`G`/`GB`; all binary multiples, case-insensitive).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let number: u64 =
        digits.parse().map_err(|_| format!("{text:?} is not a size; write e.g. 64MiB, 512KiB or 1048576"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {text:?}; use B, KiB, MiB or GiB")),
    };
    number.checked_mul(multiplier).ok_or_else(|| format!("{text:?} is too large"))
}

/// Parse a duration such as `2s`, `500ms` or `1m 30s` into milliseconds.
pub(crate) fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 2s or 500ms"))?;
    u64::try_from(duration.as_millis()).map_err(|_| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("2s"), Ok(2000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("1m 30s"), Ok(90_000));
        assert!(parse_duration_ms("soon").is_err());
    }
}
