//! Any bytes as a `<query>` document: a plan within limits or a client error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mam_native::config::Config;
use mam_native::query::parse_query;
use mam_native::stanza::parse_xml;

fn prep(s: &str) -> Option<String> {
    (!s.is_empty() && !s.contains(' ') && !s.starts_with('@')).then(|| s.to_lowercase())
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(el) = parse_xml(s) else { return };
    match parse_query(&el, &prep) {
        Ok(q) => {
            let cfg = Config::from_options("example.com", "/tmp", &|_: &str| None).unwrap();
            let plan = q.plan(&cfg);
            assert!(plan.page_size <= cfg.max_results);
            assert!(plan.find.limit <= cfg.max_results + 1);
        }
        Err(e) => {
            let c = e.to_xmpp().condition;
            assert!(["bad-request", "feature-not-implemented", "policy-violation"].contains(&c));
        }
    }
});
