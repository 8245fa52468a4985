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

/// The forms an error message lists.
const ACCEPTED: &str = "\"never\" (or false), a number of seconds, or a count with a unit: \
    \"30 minutes\", \"12 hours\", \"2 days\", \"1 week\", \"3 months\", \"1 year\" \
    (short forms \"12h\", \"2d\", \"1w\", \"1y\")";

/// A period as read from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// Seconds; `None` for never.
    pub seconds: Option<u64>,
    /// Set when the value was read with a guess, as Prosody 13 reads it (which logs
    /// an error for it): the line the module logs at load.
    pub warning: Option<String>,
}

impl Period {
    fn exact(seconds: Option<u64>) -> Period {
        Period {
            seconds: seconds.map(|s| s.min(MAX_PERIOD_SECONDS)),
            warning: None,
        }
    }
}

/// Reads a period option (`archive_expires_after`) the way Prosody reads periods, so
/// that every value stock accepts keeps its meaning:
///
/// - `"never"`, `false`, or a negative number (13's "infinity"): never.
/// - A number: seconds (0 and fractions below one second are refused: a period that
///   expires every message at once is a typo, not a retention policy).
/// - A string: the first run of digits, then a unit as 13's `parse_duration` reads
///   it (`s`, `min`, `h`/`hours`, `d`/`days`, `w`/`weeks`, `mon`/`months`,
///   `y`/`years`, in any case, spaces allowed), none meaning seconds. 0.12's
///   `d`, `w`, `m`, `y` mean the same there. Two readings differ from 0.12 on
///   purpose, as in 13: `"12h"`/`"12 hours"` are hours (0.12: seconds) and
///   `"30 minutes"` is minutes (0.12: months).
/// - Spellings 13 reads with a guess and logs as an error (`"1m"`, `"1mo"`: months;
///   `"1mi"`: minutes; an unknown unit: seconds) are read the same way, with a
///   warning naming the option and the spelling to use.
/// - No digits at all (`"soon"`, `""`): refused, naming the option and the forms.
pub fn parse_period(option: &str, value: &RawValue) -> Result<Period> {
    let refuse = || invalid(option, value, ACCEPTED);
    match value {
        RawValue::Bool(false) => Ok(Period::exact(None)),
        RawValue::Number(n) if n.is_nan() => Err(refuse()),
        RawValue::Number(n) if *n < 0.0 => Ok(Period::exact(None)),
        RawValue::Number(n) if *n >= 1.0 => Ok(Period::exact(Some(n.min(u64::MAX as f64) as u64))),
        RawValue::String(s) => {
            let lower = s.trim().to_ascii_lowercase();
            if lower == "never" {
                return Ok(Period::exact(None));
            }
            let start = lower
                .find(|c: char| c.is_ascii_digit())
                .ok_or_else(refuse)?;
            let rest = &lower[start..];
            let digits_end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let count: u64 = rest[..digits_end].parse().unwrap_or(u64::MAX);
            let after_count = rest[digits_end..].trim_start();
            let unit = duration_unit(after_count);
            // A bare count is seconds; a word that is no unit (13 reads it as
            // seconds too, with an error line) is a guess.
            let known = match unit {
                "" if !after_count.is_empty() => None,
                _ => unit_seconds(unit),
            };
            let (seconds_per, guessed) = match known {
                Some(per) => (per, None),
                None => {
                    let (per, meaning) = match unit {
                        "m" | "mo" => (31 * DAY, "months"),
                        "mi" => (60, "minutes"),
                        _ => (1, "seconds"),
                    };
                    (per, Some(meaning))
                }
            };
            let seconds = count.saturating_mul(seconds_per);
            if seconds == 0 {
                return Err(refuse());
            }
            let mut period = Period::exact(Some(seconds));
            period.warning = guessed.map(|meaning| {
                format!(
                    "Option '{option}' is set to the ambiguous period {s:?}, read as {count} \
                     {meaning}: write it in full, e.g. \"{count} months\" or \"{count} minutes\""
                )
            });
            Ok(period)
        }
        _ => Err(refuse()),
    }
}

/// The unit letters Prosody 13 takes after the count: one of `smhdwy`, then one of
/// `io`, then `n`, each optional (`"minutes"` gives `min`, `"hours"` gives `ho`).
fn duration_unit(after_count: &str) -> &str {
    let b = after_count.as_bytes();
    let mut end = 0;
    for set in [&b"smhdwy"[..], b"io", b"n"] {
        if b.get(end).is_some_and(|c| set.contains(c)) {
            end += 1;
        }
    }
    &after_count[..end]
}

/// Seconds per unit for the units 13 reads without a guess (and none: seconds).
fn unit_seconds(unit: &str) -> Option<u64> {
    Some(match unit {
        "" | "s" => 1,
        "min" => 60,
        "h" | "ho" => 3600,
        "d" => DAY,
        "w" => 7 * DAY,
        "mon" => 31 * DAY,
        "y" => (365.2425 * DAY as f64) as u64,
        _ => return None,
    })
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

    fn secs(v: RawValue) -> Option<u64> {
        let p = parse_period("archive_expires_after", &v).unwrap();
        assert_eq!(p.warning, None, "{v:?}");
        p.seconds
    }

    #[test]
    fn expiry_accepts_the_units_of_stock_0_12() {
        assert_eq!(secs(s("1d")), Some(DAY));
        assert_eq!(secs(s("1w")), Some(7 * DAY));
        assert_eq!(secs(s("1y")), Some(31_556_952));
        assert_eq!(secs(s("3600")), Some(3600));
        assert_eq!(secs(s("2 W")), Some(14 * DAY));
        assert_eq!(secs(RawValue::Number(90.0)), Some(90));
        assert_eq!(secs(s("never")), None);
    }

    #[test]
    fn expiry_accepts_the_periods_prosody_13_writes_out() {
        assert_eq!(secs(s("1 week")), Some(7 * DAY));
        assert_eq!(secs(s("2 days")), Some(2 * DAY));
        assert_eq!(secs(s("3 months")), Some(93 * DAY));
        assert_eq!(secs(s("1 year")), Some(31_556_952));
        assert_eq!(secs(s("30 minutes")), Some(30 * 60));
        assert_eq!(secs(s("12 hours")), Some(12 * 3600));
        assert_eq!(secs(s("12h")), Some(12 * 3600));
        assert_eq!(secs(s("45 seconds")), Some(45));
        assert_eq!(secs(s("2 Weeks")), Some(14 * DAY));
        assert_eq!(secs(RawValue::Bool(false)), None);
        assert_eq!(
            secs(RawValue::Number(-1.0)),
            None,
            "13: a negative period is never"
        );
    }

    #[test]
    fn an_ambiguous_period_is_read_as_13_reads_it_with_a_warning_naming_the_option() {
        for (v, expected) in [
            ("2m", 62 * DAY),
            ("1mo", 31 * DAY),
            ("5mi", 300),
            ("3 fortnights", 3),
        ] {
            let p = parse_period("archive_expires_after", &s(v)).unwrap();
            assert_eq!(p.seconds, Some(expected), "{v}");
            let warning = p.warning.expect("a warning");
            assert!(warning.contains("'archive_expires_after'"), "{warning}");
            assert!(warning.contains(&format!("{v:?}")), "{warning}");
        }
    }

    #[test]
    fn expiry_rejects_what_has_no_count_naming_the_option_and_forms() {
        for bad in ["soon", "", "d", "0", "0 days"] {
            let err = parse_period("archive_expires_after", &s(bad))
                .unwrap_err()
                .to_string();
            assert!(err.contains("'archive_expires_after'"), "{err}");
            assert!(err.contains("\"never\""), "{err}");
            assert!(err.contains("\"1 week\""), "{err}");
        }
        for bad in [
            RawValue::Bool(true),
            RawValue::Number(0.0),
            RawValue::Number(0.5),
        ] {
            assert!(
                parse_period("archive_expires_after", &bad).is_err(),
                "{bad:?}"
            );
        }
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
            let secs = parse_period("archive_expires_after", &v)
                .unwrap()
                .seconds
                .unwrap();
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
