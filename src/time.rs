//! Time: XEP-0082 date-times and an injectable clock.
//!
//! Archive timestamps are integer microseconds since the Unix epoch, so sub-second
//! order survives storage and `<delay stamp>` keeps sub-second precision.

use chrono::{DateTime, SecondsFormat, Utc};

/// Microseconds since 1970-01-01T00:00:00Z.
pub type Micros = i64;

/// Where "now" comes from; tests inject a fixed or stepping clock.
pub trait Clock: Send + Sync {
    fn now_micros(&self) -> Micros;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> Micros {
        Utc::now().timestamp_micros()
    }
}

/// Parses an XEP-0082 DateTime (`CCYY-MM-DDThh:mm:ss[.sss]TZD`) to microseconds.
/// Returns `None` for anything else, including a date without a time zone.
pub fn parse_datetime(s: &str) -> Option<Micros> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|dt| dt.with_timezone(&Utc).timestamp_micros())
}

/// Formats microseconds as an XEP-0082 DateTime in UTC. Whole seconds print without
/// a fraction (`2010-07-10T23:08:25Z`, as stock Prosody writes); anything finer
/// prints with six digits.
pub fn format_datetime(t: Micros) -> String {
    let secs = t.div_euclid(1_000_000);
    let micros = t.rem_euclid(1_000_000);
    let Some(dt) = DateTime::<Utc>::from_timestamp(secs, (micros as u32) * 1000) else {
        return "1970-01-01T00:00:00Z".to_owned();
    };
    if micros == 0 {
        dt.to_rfc3339_opts(SecondsFormat::Secs, true)
    } else {
        dt.to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xep_0082_examples() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_datetime("2010-06-07T00:00:00Z"),
            Some(1_275_868_800_000_000)
        );
        assert_eq!(
            parse_datetime("1969-07-21T02:56:15.123Z"),
            Some(-14_159_024_877_000)
        );
        assert_eq!(
            parse_datetime("2010-06-07T02:00:00+02:00"),
            Some(1_275_868_800_000_000)
        );
    }

    #[test]
    fn rejects_dates_without_time_or_zone() {
        assert_eq!(parse_datetime("2010-06-07"), None);
        assert_eq!(parse_datetime("2010-06-07T00:00:00"), None);
        assert_eq!(parse_datetime("yesterday"), None);
        assert_eq!(parse_datetime(""), None);
    }

    #[test]
    fn formats_whole_seconds_like_stock_and_keeps_microseconds() {
        assert_eq!(
            format_datetime(1_275_868_800_000_000),
            "2010-06-07T00:00:00Z"
        );
        assert_eq!(
            format_datetime(1_275_868_800_123_456),
            "2010-06-07T00:00:00.123456Z"
        );
        assert_eq!(format_datetime(-1), "1969-12-31T23:59:59.999999Z");
    }
}
