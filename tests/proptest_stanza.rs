//! Property tests of `stanza::parse_xml` / `stanza::to_xml`: whatever a client (or a
//! damaged database) hands the parser, it returns a stanza or an error, never panics,
//! and what we write reads back as exactly what we wrote.
//!
//! Run longer: `PROPTEST_CASES=100000 cargo test --release --no-default-features
//! --features vendored --test proptest_stanza`.

mod common;

use common::{cases, concat_of, element_tree, normalise, xml_string};
use mam_native::stanza::{parse_xml, to_xml, StanzaError, MAX_DEPTH};
use proptest::prelude::*;

/// Parse → serialise → parse is the identity once a document has been parsed once,
/// and serialising is then a fixed point.
fn check_round_trip(xml: &str) -> Result<(), TestCaseError> {
    let Ok(first) = parse_xml(xml) else {
        return Ok(());
    };
    let written = to_xml(&first);
    let second = parse_xml(&written)
        .map_err(|e| TestCaseError::fail(format!("{written:?} does not parse back: {e}")))?;
    prop_assert_eq!(
        &second,
        &first,
        "parse(to_xml(parse(x))) != parse(x) for {:?}",
        xml
    );
    prop_assert_eq!(to_xml(&second), written);
    Ok(())
}

/// Inputs made of XML's own punctuation and a few names: they reach deep into the
/// parser (tags, attributes, references, CDATA, declarations) far more often than
/// arbitrary strings do.
fn xmlish() -> impl Strategy<Value = String> {
    concat_of(
        vec![
            "<",
            ">",
            "</",
            "/>",
            "<a",
            "<b",
            "</a>",
            "</b>",
            "<a>",
            "<b>",
            " x='1'",
            " x=\"2\"",
            " y='<'",
            " xmlns='urn:a'",
            " xmlns:p='urn:p'",
            " p:z='3'",
            "<p:c",
            " xmlns:p=''",
            " xml:lang='en'",
            "&amp;",
            "&lt;",
            "&#13;",
            "&#10;",
            "&#x1F600;",
            "&#0;",
            "&foo;",
            "&",
            ";",
            "<![CDATA[",
            "]]>",
            "<!--",
            "-->",
            "<?xml version='1.0'?>",
            "<?pi?>",
            "<!DOCTYPE a>",
            "text",
            " ",
            "\r\n",
            "\t",
            "é",
            "😀",
            "'",
            "\"",
            "=",
            ":",
        ],
        24,
    )
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn arbitrary_strings_never_panic_and_round_trip(s in "\\PC{0,64}") {
        check_round_trip(&s)?;
    }

    #[test]
    fn xml_like_strings_never_panic_and_round_trip(s in xmlish()) {
        check_round_trip(&s)?;
    }

    #[test]
    fn any_generated_tree_reads_back_exactly(el in element_tree(6)) {
        let xml = to_xml(&el);
        let parsed = parse_xml(&xml)
            .map_err(|e| TestCaseError::fail(format!("{xml:?}: {e}")))?;
        prop_assert_eq!(parsed, normalise(&el, None), "{}", xml);
    }

    #[test]
    fn damaged_serialisations_never_panic(
        el in element_tree(4),
        cut in any::<prop::sample::Index>(),
        insert in xml_string(6),
        at in any::<prop::sample::Index>(),
    ) {
        // Truncate and splice at char boundaries: what a torn write or a hostile
        // client could leave behind.
        let xml = to_xml(&el);
        let chars: Vec<char> = xml.chars().collect();
        let cut = cut.index(chars.len() + 1);
        let mut damaged: Vec<char> = chars[..cut].to_vec();
        let at = at.index(damaged.len() + 1);
        damaged.splice(at..at, insert.chars());
        let damaged: String = damaged.into_iter().collect();
        check_round_trip(&damaged)?;
    }

    #[test]
    fn text_of_any_xml_characters_survives_byte_for_byte(text in xml_string(64)) {
        let el = mam_native::stanza::Element::new("body").with_text(&text);
        let back = parse_xml(&to_xml(&el)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back.text(), text);
    }

    #[test]
    fn nesting_is_accepted_up_to_the_limit_and_refused_beyond(depth in 1usize..(MAX_DEPTH + 40)) {
        let xml = format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth));
        match parse_xml(&xml) {
            Ok(el) => prop_assert!(depth <= MAX_DEPTH && common::depth(&el) == depth),
            Err(StanzaError::TooDeep { limit, .. }) => {
                prop_assert!(depth > MAX_DEPTH);
                prop_assert_eq!(limit, MAX_DEPTH);
            }
            Err(e) => prop_assert!(false, "depth {}: {}", depth, e),
        }
    }
}

#[test]
fn a_million_open_tags_are_refused_without_exhausting_the_stack() {
    let xml = "<a>".repeat(1_000_000);
    let started = std::time::Instant::now();
    assert!(matches!(parse_xml(&xml), Err(StanzaError::TooDeep { .. })));
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn many_attributes_and_siblings_parse_in_linear_time() {
    // Hostile breadth: 20,000 attributes on one element, 100,000 siblings.
    let attrs: String = (0..20_000).map(|i| format!(" a{i}='{i}'")).collect();
    let siblings = "<b/>".repeat(100_000);
    let xml = format!("<a{attrs}>{siblings}</a>");
    let started = std::time::Instant::now();
    let el = parse_xml(&xml).unwrap();
    assert_eq!(el.attrs.len(), 20_000);
    assert_eq!(el.tag_count(), 100_000);
    assert_eq!(to_xml(&el), xml);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn an_attribute_repeated_twenty_thousand_times_is_one_error() {
    let attrs = " a='1'".repeat(20_000);
    let err = parse_xml(&format!("<x{attrs}/>")).unwrap_err();
    assert!(matches!(err, StanzaError::DuplicateAttribute { ref name, .. } if name == "a"));
}
