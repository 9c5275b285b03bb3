//! Where a consumer starts on a shard its group has no committed offset for: `--from
//! earliest|latest|OFFSET|TIMESTAMP`.

use std::fmt;

/// Where a group with no committed offset on a shard starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// The first record still stored.
    #[default]
    Earliest,
    /// Only records produced after the consumer started.
    Latest,
    /// This offset on every shard (the log start if it is below it, the end if past it).
    Offset(u64),
    /// The first record whose timestamp (the producer's clock, milliseconds since the Unix
    /// epoch) is at or after this one; the shard is read from its log start to find it.
    Timestamp(u64),
}

impl fmt::Display for StartFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartFrom::Earliest => f.write_str("earliest"),
            StartFrom::Latest => f.write_str("latest"),
            StartFrom::Offset(o) => write!(f, "{o}"),
            StartFrom::Timestamp(t) => write!(f, "@{t}"),
        }
    }
}

impl std::str::FromStr for StartFrom {
    type Err = String;

    /// `earliest`, `latest`, an offset (`1200`), a timestamp in milliseconds since the Unix
    /// epoch (`@1790000000000`) or in UTC (`2026-11-28T08:00:00Z`, seconds and `Z` optional).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        match t.to_ascii_lowercase().as_str() {
            "earliest" | "beginning" => return Ok(StartFrom::Earliest),
            "latest" | "end" => return Ok(StartFrom::Latest),
            _ => {}
        }
        if let Ok(o) = t.parse::<u64>() {
            return Ok(StartFrom::Offset(o));
        }
        if let Some(ms) = t.strip_prefix('@') {
            return ms.parse::<u64>().map(StartFrom::Timestamp).map_err(|_| {
                format!("bad timestamp {s:?}: after @ give milliseconds since the Unix epoch")
            });
        }
        parse_utc(t).map(StartFrom::Timestamp).ok_or_else(|| {
            format!(
                "unknown start {s:?}; expected earliest, latest, an offset (1200), \
                 @MILLISECONDS since the Unix epoch, or a UTC time like 2026-11-28T08:00:00Z"
            )
        })
    }
}

/// `YYYY-MM-DDTHH:MM[:SS[.fff]][Z]` (or a space for `T`), read as UTC, in milliseconds since the
/// Unix epoch.
pub fn parse_utc(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-');
    let (y, mo, da): (i64, u32, u32) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':');
    let (h, mi): (u64, u64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let sec: u64 = match t.next() {
        Some(x) => x.parse().ok()?,
        None => 0,
    };
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=days_in_month(y, mo)).contains(&da)
        || h > 23
        || mi > 59
        || sec > 60
        || frac.len() > 9
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let ms_frac: u64 = format!("{frac:0<3}")[..3].parse().ok()?;
    let days = u64::try_from(days_from_civil(y, mo, da)).ok()?;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms_frac)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses_and_nonsense_is_refused() {
        assert_eq!("Latest".parse::<StartFrom>().unwrap(), StartFrom::Latest);
        assert_eq!("earliest".parse::<StartFrom>(), Ok(StartFrom::Earliest));
        assert_eq!("1200".parse::<StartFrom>(), Ok(StartFrom::Offset(1200)));
        assert_eq!(
            "@1790000000000".parse::<StartFrom>(),
            Ok(StartFrom::Timestamp(1_790_000_000_000))
        );
        assert_eq!(
            "1970-01-02T00:00:01.5Z".parse::<StartFrom>(),
            Ok(StartFrom::Timestamp(86_401_500))
        );
        // `date -u -d 2026-11-28T08:00:00Z +%s` = 1795852800.
        assert_eq!(parse_utc("2026-11-28T08:00:00Z"), Some(1_795_852_800_000));
        assert_eq!(parse_utc("2024-02-29 23:59"), Some(1_709_251_140_000));
        for bad in [
            "middle",
            "@x",
            "2026-02-30T00:00Z",
            "2026-11-28",
            "-5",
            "12:00",
        ] {
            assert!(bad.parse::<StartFrom>().is_err(), "{bad} parsed");
        }
    }
}
