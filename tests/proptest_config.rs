//! Property tests of option parsing: whatever an admin writes in the config, the
//! module loads with a valid configuration or refuses with a message naming the
//! option; it never panics.
//!
//! Run longer: `PROPTEST_CASES=100000 cargo test --release --no-default-features
//! --features vendored --test proptest_config`.

mod common;

use std::collections::HashMap;

use common::{cases, xml_string};
use mam_native::config::OPTION_NAMES;
use mam_native::config::{Config, RawValue};
use mam_native::error::MamError;
use mam_native::expiry::period::{parse_period, MAX_PERIOD_SECONDS};
use proptest::prelude::*;

fn raw_value() -> impl Strategy<Value = RawValue> {
    let text = prop_oneof![
        prop::sample::select(vec![
            "",
            " ",
            "never",
            "NEVER",
            "1w",
            "12h",
            "0",
            "0d",
            "-1",
            "1.5",
            "1e3",
            "inf",
            "nan",
            "true",
            "false",
            "roster",
            "always",
            "yes",
            "off",
            "18446744073709551615",
            "18446744073709551616d",
            "9999999999999y",
            "１w",
            "1 w",
            "w1",
            "archive",
            "/tmp/x",
        ])
        .prop_map(str::to_owned),
        "[0-9]{1,25}[hdwmy ]?",
        xml_string(12),
    ];
    prop_oneof![
        any::<bool>().prop_map(RawValue::Bool),
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0),
            Just(0.5),
            Just(1e300),
            -10.0f64..1e10
        ]
        .prop_map(RawValue::Number),
        text.clone().prop_map(RawValue::String),
        prop::collection::vec(text, 0..4).prop_map(RawValue::List),
    ]
}

proptest! {
    #![proptest_config(cases(2048))]

    #[test]
    fn parse_period_is_some_seconds_never_or_an_error_naming_the_option(v in raw_value()) {
        match parse_period("archive_expires_after", &v).map(|p| p.seconds) {
            Ok(Some(secs)) => prop_assert!(secs > 0 && secs <= MAX_PERIOD_SECONDS),
            Ok(None) => {
                let means_never = match &v {
                    RawValue::String(s) => s.trim().eq_ignore_ascii_case("never"),
                    RawValue::Bool(b) => !b,
                    RawValue::Number(n) => *n < 0.0,
                    _ => false,
                };
                prop_assert!(means_never, "{:?} read as never", v);
            }
            Err(MamError::Config(msg)) => prop_assert!(msg.contains("'archive_expires_after'"), "{}", msg),
            Err(other) => prop_assert!(false, "not a config error: {:?}", other),
        }
    }

    #[test]
    fn a_count_with_a_unit_is_that_many_units(n in 1u32.., unit in prop::sample::select(vec![
        ("", 1u64), ("h", 3600), ("d", 86_400), ("w", 604_800), ("m", 2_678_400),
        (" minutes", 60), (" hours", 3600), (" days", 86_400), (" weeks", 604_800),
        (" months", 2_678_400), (" seconds", 1),
    ])) {
        let period = parse_period("archive_expires_after", &RawValue::String(format!("{n}{}", unit.0)));
        let secs = period.unwrap().seconds;
        prop_assert_eq!(secs, Some((u64::from(n) * unit.1).min(MAX_PERIOD_SECONDS)));
    }

    #[test]
    fn any_one_option_loads_or_is_refused_by_name(
        name in prop::sample::select(OPTION_NAMES.to_vec()),
        v in raw_value(),
    ) {
        let source = |n: &str| (n == name).then(|| v.clone());
        match Config::from_options("example.com", "/var/lib/prosody", &source) {
            Ok(c) => {
                // 0 is stock's bound for the page size (every query then counts only).
                prop_assert!(c.default_page <= c.max_results);
                prop_assert!(c.max_results <= u32::MAX as usize);
                prop_assert!(c.cleanup_interval >= 1);
                prop_assert!(c.expires_after.is_none_or(|s| s <= MAX_PERIOD_SECONDS));
            }
            Err(MamError::Config(msg)) => {
                prop_assert!(msg.contains(&format!("'{name}'")), "{} for {:?}", msg, v);
            }
            Err(other) => prop_assert!(false, "not a config error: {:?}", other),
        }
    }

    #[test]
    fn any_set_of_options_loads_or_names_one_of_them(
        values in prop::collection::vec(raw_value(), OPTION_NAMES.len()),
        present in prop::collection::vec(any::<bool>(), OPTION_NAMES.len()),
    ) {
        let map: HashMap<&str, RawValue> = OPTION_NAMES
            .iter()
            .zip(values)
            .zip(present)
            .filter(|(_, p)| *p)
            .map(|((n, v), _)| (*n, v))
            .collect();
        let source = |n: &str| map.get(n).cloned();
        match Config::from_options("example.com", "/var/lib/prosody", &source) {
            Ok(_) => {}
            Err(MamError::Config(msg)) => prop_assert!(
                map.keys().any(|n| msg.contains(&format!("'{n}'"))), "{}", msg
            ),
            Err(other) => prop_assert!(false, "not a config error: {:?}", other),
        }
    }
}
