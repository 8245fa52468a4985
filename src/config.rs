//! Prosody options, parsed and validated once at module load.
//!
//! The shim hands us the raw values from `module:get_option(name)`; we accept the same
//! names, defaults and formats as stock `mod_mam` 0.12 and refuse anything else with a
//! message that names the option and the forms it accepts, so a typo fails loudly at
//! load instead of silently archiving forever (stock reads `"1h"` as one second).

use std::path::PathBuf;

use crate::error::{MamError, Result};
use crate::policy::DefaultPolicy;

/// A raw option value as it comes out of Prosody's config.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Bool(bool),
    Number(f64),
    String(String),
    /// A Lua array (or set) of strings.
    List(Vec<String>),
}

const DAY: u64 = 86_400;

/// The longest retention we represent (about 292,000 years): archive timestamps are
/// `i64` microseconds, so a longer `archive_expires_after` could not be subtracted
/// from "now"; anything longer means the same as this, "keep everything".
pub const MAX_EXPIRY_SECONDS: u64 = (i64::MAX / 1_000_000) as u64;

/// Default `archive_cleanup_interval`: four hours, as Prosody documents it.
pub const DEFAULT_CLEANUP_INTERVAL: u64 = 4 * 60 * 60;
/// Default RSM page size when the client sends no `<max>` (stock: 20).
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Default `max_archive_query_results` (stock: 50).
pub const DEFAULT_MAX_RESULTS: usize = 50;

/// The module's validated configuration for one virtual host.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The virtual host this instance serves.
    pub host: String,
    /// `archive_expires_after` in seconds; `None` for `"never"`.
    pub expires_after: Option<u64>,
    /// `archive_cleanup_interval`, seconds between expiry runs.
    pub cleanup_interval: u64,
    /// `max_archive_query_results`: the largest page a client may ask for.
    pub max_results: usize,
    /// Page size when the client does not say (never more than `max_results`).
    pub default_page: usize,
    /// `default_archive_policy`.
    pub default_policy: DefaultPolicy,
    /// `dont_archive_namespaces`: child elements in these namespaces are not stored.
    pub dont_archive_namespaces: Vec<String>,
    /// `mam_smart_enable`: archive nothing for a user until a MAM client shows up.
    pub smart_enable: bool,
    /// `mam_include_total`: send `<count>` in every `<fin>`.
    pub include_total: bool,
    /// `archive_store`: the store name (kept in the default database file name).
    pub archive_store: String,
    /// `storage_archive_item_limit`: per-user message quota, `None` for none.
    pub item_limit: Option<u64>,
    /// `mam_database`: the SQLite file.
    pub database_path: PathBuf,
    /// `mam_max_db_pages`: the most pages the database may grow to (SQLite's
    /// `max_page_count` on the writer's connection); `None` for SQLite's own limit.
    /// Beyond it writes fail as on a full disk.
    pub max_db_pages: Option<u64>,
}

/// Looks up raw option values by name (`None` when the admin did not set it).
pub trait OptionSource {
    fn get(&self, name: &str) -> Option<RawValue>;
}

impl<F: Fn(&str) -> Option<RawValue>> OptionSource for F {
    fn get(&self, name: &str) -> Option<RawValue> {
        self(name)
    }
}

fn invalid(option: &str, got: &RawValue, accepted: &str) -> MamError {
    let shown = match got {
        RawValue::Bool(b) => b.to_string(),
        RawValue::Number(n) => n.to_string(),
        RawValue::String(s) => format!("{s:?}"),
        RawValue::List(l) => format!("{l:?}"),
    };
    MamError::Config(format!(
        "invalid value {shown} for option '{option}': expected {accepted}"
    ))
}

/// Parses `archive_expires_after`: `"never"`, a number of seconds, or a count with a
/// unit `d`, `w`, `m` (months of 31 days, as stock), `y` (365.2425 days), and — beyond
/// stock, which silently misreads it as seconds — `h` for hours.
pub fn parse_expiry(value: &RawValue) -> Result<Option<u64>> {
    const ACCEPTED: &str =
        "\"never\", a number of seconds, or a number with a unit: \"12h\", \"1d\", \"1w\", \"2m\" (months), \"1y\"";
    match value {
        RawValue::Number(n) if n.is_finite() && *n >= 1.0 => {
            Ok(Some((*n as u64).min(MAX_EXPIRY_SECONDS)))
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
                Some(secs) if secs > 0 => Ok(Some(secs.min(MAX_EXPIRY_SECONDS))),
                _ => Err(invalid("archive_expires_after", value, ACCEPTED)),
            }
        }
        _ => Err(invalid("archive_expires_after", value, ACCEPTED)),
    }
}

/// Parses `default_archive_policy`: `true`/`"always"`, `false`/`"never"`, `"roster"`.
pub fn parse_default_policy(value: &RawValue) -> Result<DefaultPolicy> {
    const ACCEPTED: &str = "true, false, \"roster\", \"always\" or \"never\"";
    match value {
        RawValue::Bool(true) => Ok(DefaultPolicy::Always),
        RawValue::Bool(false) => Ok(DefaultPolicy::Never),
        RawValue::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "always" | "true" => Ok(DefaultPolicy::Always),
            "never" | "false" => Ok(DefaultPolicy::Never),
            "roster" => Ok(DefaultPolicy::Roster),
            _ => Err(invalid("default_archive_policy", value, ACCEPTED)),
        },
        _ => Err(invalid("default_archive_policy", value, ACCEPTED)),
    }
}

fn parse_bool(option: &str, value: &RawValue) -> Result<bool> {
    match value {
        RawValue::Bool(b) => Ok(*b),
        RawValue::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => Ok(true),
            "false" | "no" | "off" => Ok(false),
            _ => Err(invalid(option, value, "true or false")),
        },
        _ => Err(invalid(option, value, "true or false")),
    }
}

fn parse_count(option: &str, value: &RawValue, min: u64) -> Result<u64> {
    let accepted = format!("a whole number of at least {min}");
    let n = match value {
        RawValue::Number(n) => *n,
        RawValue::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| invalid(option, value, &accepted))?,
        _ => return Err(invalid(option, value, &accepted)),
    };
    if !n.is_finite() || n.fract() != 0.0 || n < min as f64 || n > u32::MAX as f64 {
        return Err(invalid(option, value, &accepted));
    }
    Ok(n as u64)
}

fn parse_string(option: &str, value: &RawValue) -> Result<String> {
    match value {
        RawValue::String(s) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(invalid(option, value, "a non-empty string")),
    }
}

fn parse_list(option: &str, value: &RawValue) -> Result<Vec<String>> {
    match value {
        RawValue::List(l) => Ok(l.clone()),
        RawValue::String(s) => Ok(vec![s.clone()]),
        _ => Err(invalid(option, value, "a list of namespace strings")),
    }
}

impl Config {
    /// Reads every option for `host`; `data_path` is Prosody's data directory.
    pub fn from_options(host: &str, data_path: &str, opts: &dyn OptionSource) -> Result<Config> {
        let expires_after = match opts.get("archive_expires_after") {
            Some(v) => parse_expiry(&v)?,
            None => Some(7 * DAY),
        };
        let cleanup_interval = match opts.get("archive_cleanup_interval") {
            Some(v) => parse_count("archive_cleanup_interval", &v, 1)?,
            None => DEFAULT_CLEANUP_INTERVAL,
        };
        let max_results = match opts.get("max_archive_query_results") {
            Some(v) => parse_count("max_archive_query_results", &v, 1)? as usize,
            None => DEFAULT_MAX_RESULTS,
        };
        let default_policy = match opts.get("default_archive_policy") {
            Some(v) => parse_default_policy(&v)?,
            None => DefaultPolicy::Always,
        };
        let dont_archive_namespaces = match opts.get("dont_archive_namespaces") {
            Some(v) => parse_list("dont_archive_namespaces", &v)?,
            None => vec![crate::ns::CHATSTATES.to_owned()],
        };
        let smart_enable = match opts.get("mam_smart_enable") {
            Some(v) => parse_bool("mam_smart_enable", &v)?,
            None => false,
        };
        // Stock: counting an archive that never expires can get slow, so the default
        // flips to false with "never".
        let include_total = match opts.get("mam_include_total") {
            Some(v) => parse_bool("mam_include_total", &v)?,
            None => expires_after.is_some(),
        };
        let archive_store = match opts.get("archive_store") {
            Some(v) => parse_string("archive_store", &v)?,
            None => "archive".to_owned(),
        };
        let item_limit = match opts.get("storage_archive_item_limit") {
            Some(v) => Some(parse_count("storage_archive_item_limit", &v, 1)?),
            None => None,
        };
        let database_path = match opts.get("mam_database") {
            Some(v) => {
                let p = PathBuf::from(parse_string("mam_database", &v)?);
                if p.is_absolute() {
                    p
                } else {
                    PathBuf::from(data_path).join(p)
                }
            }
            None => PathBuf::from(data_path).join(format!("mam_{archive_store}.sqlite")),
        };
        let max_db_pages = match opts.get("mam_max_db_pages") {
            Some(v) => Some(parse_count("mam_max_db_pages", &v, 1)?),
            None => None,
        };
        Ok(Config {
            host: host.to_owned(),
            expires_after,
            cleanup_interval,
            max_results,
            default_page: DEFAULT_PAGE_SIZE.min(max_results),
            default_policy,
            dont_archive_namespaces,
            smart_enable,
            include_total,
            archive_store,
            item_limit,
            database_path,
            max_db_pages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config_with(pairs: &[(&str, RawValue)]) -> Result<Config> {
        let map: HashMap<String, RawValue> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let source = move |name: &str| map.get(name).cloned();
        Config::from_options("example.com", "/var/lib/prosody", &source)
    }

    fn s(v: &str) -> RawValue {
        RawValue::String(v.to_owned())
    }

    #[test]
    fn defaults_match_stock_mod_mam() {
        let c = config_with(&[]).unwrap();
        assert_eq!(c.expires_after, Some(7 * DAY));
        assert_eq!(c.cleanup_interval, 4 * 3600);
        assert_eq!(c.max_results, 50);
        assert_eq!(c.default_page, 20);
        assert_eq!(c.default_policy, DefaultPolicy::Always);
        assert_eq!(c.dont_archive_namespaces, vec![crate::ns::CHATSTATES]);
        assert!(!c.smart_enable);
        assert!(c.include_total);
        assert_eq!(c.archive_store, "archive");
        assert_eq!(c.item_limit, None);
        assert_eq!(c.max_db_pages, None);
        assert_eq!(
            c.database_path,
            PathBuf::from("/var/lib/prosody/mam_archive.sqlite")
        );
    }

    #[test]
    fn expiry_accepts_stock_units() {
        assert_eq!(parse_expiry(&s("1d")).unwrap(), Some(DAY));
        assert_eq!(parse_expiry(&s("1w")).unwrap(), Some(7 * DAY));
        assert_eq!(parse_expiry(&s("2m")).unwrap(), Some(62 * DAY));
        assert_eq!(parse_expiry(&s("1y")).unwrap(), Some(31_556_952));
        assert_eq!(parse_expiry(&s("3600")).unwrap(), Some(3600));
        assert_eq!(parse_expiry(&s("2 W")).unwrap(), Some(14 * DAY));
        assert_eq!(parse_expiry(&RawValue::Number(90.0)).unwrap(), Some(90));
        assert_eq!(parse_expiry(&s("never")).unwrap(), None);
        assert_eq!(parse_expiry(&s("12h")).unwrap(), Some(12 * 3600));
    }

    #[test]
    fn expiry_rejects_garbage_naming_the_option_and_forms() {
        for bad in ["soon", "", "1 fortnight", "-1d", "0", "d"] {
            let err = parse_expiry(&s(bad)).unwrap_err().to_string();
            assert!(err.contains("'archive_expires_after'"), "{err}");
            assert!(err.contains("\"never\""), "{err}");
        }
        assert!(parse_expiry(&RawValue::Bool(true)).is_err());
    }

    #[test]
    fn never_expiring_archives_default_to_no_total() {
        let c = config_with(&[("archive_expires_after", s("never"))]).unwrap();
        assert_eq!(c.expires_after, None);
        assert!(!c.include_total);
        let c = config_with(&[
            ("archive_expires_after", s("never")),
            ("mam_include_total", RawValue::Bool(true)),
        ])
        .unwrap();
        assert!(c.include_total);
    }

    #[test]
    fn default_policy_accepts_booleans_and_names() {
        assert_eq!(
            parse_default_policy(&RawValue::Bool(false)).unwrap(),
            DefaultPolicy::Never
        );
        assert_eq!(
            parse_default_policy(&s("roster")).unwrap(),
            DefaultPolicy::Roster
        );
        assert_eq!(
            parse_default_policy(&s("always")).unwrap(),
            DefaultPolicy::Always
        );
        let err = parse_default_policy(&s("sometimes"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("default_archive_policy") && err.contains("\"roster\""));
    }

    #[test]
    fn small_max_results_caps_the_default_page() {
        let c = config_with(&[("max_archive_query_results", RawValue::Number(5.0))]).unwrap();
        assert_eq!(c.max_results, 5);
        assert_eq!(c.default_page, 5);
    }

    #[test]
    fn counts_must_be_positive_whole_numbers() {
        for bad in [RawValue::Number(0.0), RawValue::Number(2.5), s("many")] {
            let err = config_with(&[("max_archive_query_results", bad)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("max_archive_query_results"), "{err}");
        }
        let c = config_with(&[("storage_archive_item_limit", RawValue::Number(1000.0))]).unwrap();
        assert_eq!(c.item_limit, Some(1000));
    }

    #[test]
    fn database_path_is_relative_to_the_data_directory() {
        let c = config_with(&[("mam_database", s("mam.db"))]).unwrap();
        assert_eq!(c.database_path, PathBuf::from("/var/lib/prosody/mam.db"));
        let c = config_with(&[("mam_database", s("/srv/mam.db"))]).unwrap();
        assert_eq!(c.database_path, PathBuf::from("/srv/mam.db"));
        let c = config_with(&[("archive_store", s("archive2"))]).unwrap();
        assert_eq!(
            c.database_path,
            PathBuf::from("/var/lib/prosody/mam_archive2.sqlite")
        );
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
            let secs = parse_expiry(&v).unwrap().unwrap();
            assert!(secs <= MAX_EXPIRY_SECONDS, "{v:?} -> {secs}");
            assert!(secs >= MAX_EXPIRY_SECONDS / 2, "{v:?} -> {secs}");
        }
    }
}
