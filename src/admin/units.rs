//! Sizes and durations on the command line: `--retention-bytes 10MB`, `--retention-ms 7d`.

/// A limit that may be lifted: `none` (also `forever`, `unlimited`) is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

fn no_limit(s: &str) -> bool {
    matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "none" | "forever" | "unlimited"
    )
}

/// Splits `10MB` into `10` and `mb`.
fn split_unit(s: &str) -> (&str, String) {
    let s = s.trim();
    let at = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..at], s[at..].trim().to_ascii_lowercase())
}

fn scaled(number: &str, factor: u64, what: &str, input: &str) -> Result<u64, String> {
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{input:?} is not a {what}"))?;
    let v = n * factor as f64;
    if !v.is_finite() || v < 1.0 || v > u64::MAX as f64 {
        return Err(format!(
            "{input:?}: a {what} must be at least 1 and fit 64 bits"
        ));
    }
    Ok(v as u64)
}

/// Bytes: a number with an optional unit, `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000) or
/// `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let (number, unit) = split_unit(s);
    let factor: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{s:?}: unknown size unit {unit:?}; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ))
        }
    };
    scaled(number, factor, "size in bytes", s)
}

/// Milliseconds: a number with an optional unit, `ms` (the default), `s`, `m`, `h`, `d`.
pub fn parse_ms(s: &str) -> Result<u64, String> {
    let (number, unit) = split_unit(s);
    let factor: u64 = match unit.as_str() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{s:?}: unknown time unit {unit:?}; use ms, s, m, h or d (a bare number is ms)"
            ))
        }
    };
    scaled(number, factor, "duration", s)
}

/// `--retention-bytes`: a size, or `none`.
pub fn bytes_limit(s: &str) -> Result<Limit, String> {
    if no_limit(s) {
        return Ok(Limit(None));
    }
    parse_bytes(s).map(|b| Limit(Some(b)))
}

/// `--retention-ms`: a duration, or `none`.
pub fn ms_limit(s: &str) -> Result<Limit, String> {
    if no_limit(s) {
        return Ok(Limit(None));
    }
    parse_ms(s).map(|b| Limit(Some(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert_eq!(parse_bytes("10 mib"), Ok(10 << 20));
        assert_eq!(parse_bytes("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("10XB")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("-3MB").is_err());
        assert!(parse_bytes("MB").is_err());
        assert_eq!(parse_ms("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_ms("90s"), Ok(90_000));
        assert_eq!(parse_ms("250"), Ok(250));
        assert!(parse_ms("3 weeks").is_err());
        assert_eq!(bytes_limit("none"), Ok(Limit(None)));
        assert_eq!(ms_limit("Forever"), Ok(Limit(None)));
        assert_eq!(ms_limit("1h"), Ok(Limit(Some(3_600_000))));
    }
}
