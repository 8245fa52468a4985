//! Any bytes: `parse_xml` returns a stanza or an error, and a parsed stanza
//! serialises to XML that parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mam_native::stanza::{parse_xml, to_xml};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(first) = parse_xml(s) {
        let written = to_xml(&first);
        let second = parse_xml(&written).expect("our own output parses");
        assert_eq!(second, first);
        assert_eq!(to_xml(&second), written);
    }
});
