//! The retention period, `archive_expires_after`, and the cut-off it gives. Core:
//! the option parser ([`crate::config`]) reads the period through here, and the
//! deleting side ([`crate::expiry`]) turns it into a cut-off.

use crate::config::{invalid, RawValue};
use crate::error::Result;
use crate::time::Micros;

/// Seconds in a day, the unit of stock's `d`, `w`, `m` and `y`.
pub const DAY: u64 = 86_400;

/// The longest retention we represent (about 292,000 years): archive timestamps are
/// `i64` microseconds, so a longer `archive_expires_after` could not be subtracted
/// from "now"; anything longer means the same as this, "keep everything".
pub const MAX_PERIOD_SECONDS: u64 = (i64::MAX / 1_000_000) as u64;

/// Parses `archive_expires_after`: `"never"`, a number of seconds, or a count with a
/// unit `d`, `w`, `m` (months of 31 days, as stock), `y` (365.2425 days), and — beyond
/// stock, which silently misreads it as seconds — `h` for hours.
pub fn parse_period(value: &RawValue) -> Result<Option<u64>> {
    const ACCEPTED: &str =
        "\"never\", a number of seconds, or a number with a unit: \"12h\", \"1d\", \"1w\", \"2m\" (months), \"1y\"";
    match value {
        RawValue::Number(n) if n.is_finite() && *n >= 1.0 => {
            Ok(Some((*n as u64).min(MAX_PERIOD_SECONDS)))
        }
        RawValue::String(s) => {
            let s = s.trim().to_ascii_lowercase();
            if s == "never" {
                return Ok(None);
            }
            let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (digits, unit) = s.split_at(digits_end);
            let count: u64 = digits
                .parse()
                .map_err(|_| invalid("archive_expires_after", value, ACCEPTED))?;
            let seconds_per = match unit.trim() {
                "" => 1,
                "h" => 3600,
                "d" => DAY,
                "w" => 7 * DAY,
                "m" => 31 * DAY,
                "y" => (365.2425 * DAY as f64) as u64,
                _ => return Err(invalid("archive_expires_after", value, ACCEPTED)),
            };
            match count.checked_mul(seconds_per) {
                Some(secs) if secs > 0 => Ok(Some(secs.min(MAX_PERIOD_SECONDS))),
                _ => Err(invalid("archive_expires_after", value, ACCEPTED)),
            }
        }
        _ => Err(invalid("archive_expires_after", value, ACCEPTED)),
    }
}

/// The oldest timestamp that survives: messages strictly before it are expired.
/// Saturates instead of wrapping, so an enormous period keeps everything.
pub fn cutoff(period_seconds: u64, now: Micros) -> Micros {
    let period = i64::try_from(period_seconds).unwrap_or(i64::MAX);
    now.saturating_sub(period.saturating_mul(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> RawValue {
        RawValue::String(v.to_owned())
    }

    #[test]
    fn expiry_accepts_stock_units() {
        assert_eq!(parse_period(&s("1d")).unwrap(), Some(DAY));
        assert_eq!(parse_period(&s("1w")).unwrap(), Some(7 * DAY));
        assert_eq!(parse_period(&s("2m")).unwrap(), Some(62 * DAY));
        assert_eq!(parse_period(&s("1y")).unwrap(), Some(31_556_952));
        assert_eq!(parse_period(&s("3600")).unwrap(), Some(3600));
        assert_eq!(parse_period(&s("2 W")).unwrap(), Some(14 * DAY));
        assert_eq!(parse_period(&RawValue::Number(90.0)).unwrap(), Some(90));
        assert_eq!(parse_period(&s("never")).unwrap(), None);
        assert_eq!(parse_period(&s("12h")).unwrap(), Some(12 * 3600));
    }

    #[test]
    fn expiry_rejects_garbage_naming_the_option_and_forms() {
        for bad in ["soon", "", "1 fortnight", "-1d", "0", "d"] {
            let err = parse_period(&s(bad)).unwrap_err().to_string();
            assert!(err.contains("'archive_expires_after'"), "{err}");
            assert!(err.contains("\"never\""), "{err}");
        }
        assert!(parse_period(&RawValue::Bool(true)).is_err());
    }

    #[test]
    fn an_enormous_expiry_keeps_everything_instead_of_wrapping_into_the_future() {
        // u64::MAX seconds once became -1 as i64 and put the cut-off one second in
        // the future: every message would have expired at the next cleanup.
        for v in [
            s("18446744073709551615"),
            RawValue::Number(1e300),
            s("200000000000000d"),
        ] {
            let secs = parse_period(&v).unwrap().unwrap();
            assert!(secs <= MAX_PERIOD_SECONDS, "{v:?} -> {secs}");
            assert!(secs >= MAX_PERIOD_SECONDS / 2, "{v:?} -> {secs}");
        }
    }

    #[test]
    fn the_cutoff_is_the_period_before_now_and_never_wraps() {
        assert_eq!(cutoff(2, 10_000_000), 8_000_000);
        assert_eq!(
            cutoff(MAX_PERIOD_SECONDS, 0),
            -(MAX_PERIOD_SECONDS as i64) * 1_000_000
        );
        assert_eq!(cutoff(u64::MAX, i64::MIN + 5), i64::MIN);
    }
}
