//! Any string as any option's value: a configuration or an error naming the option.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mam_native::config::{Config, RawValue};
use mam_native::error::MamError;
use mam_native::config::OPTION_NAMES;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let name = OPTION_NAMES[usize::from(which) % OPTION_NAMES.len()];
    let text = String::from_utf8_lossy(rest).into_owned();
    let number = text.trim().parse::<f64>().ok();
    for value in [Some(RawValue::String(text)), number.map(RawValue::Number)].into_iter().flatten() {
        let source = |n: &str| (n == name).then(|| value.clone());
        match Config::from_options("example.com", "/var/lib/prosody", &source) {
            Ok(_) => {}
            Err(MamError::Config(msg)) => assert!(msg.contains(&format!("'{name}'")), "{msg}"),
            Err(other) => panic!("not a config error: {other:?}"),
        }
    }
});
