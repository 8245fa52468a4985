//! Generators shared by the property tests (`tests/proptest_*.rs`).
//!
//! Case counts: each property runs `PROPTEST_CASES` cases (proptest's own variable),
//! or the default its file sets, chosen so the whole set runs in a few seconds. A longer
//! run: `PROPTEST_CASES=100000 cargo test --release --no-default-features --features
//! vendored --test 'proptest_*'`.

#![allow(dead_code)]

use mam_native::stanza::{Element, Node};
use proptest::prelude::*;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
pub fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        // Shrinking a hostile input rarely needs more; bounds the time of a failure.
        max_shrink_iters: 2_000,
        // A failure prints its minimal input; the fixed example then goes into a
        // named test, not into a regressions file.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Characters a client can put in XML text and attribute values (XML 1.0 `Char`),
/// weighted towards the awkward ones: the five specials, line ends, tabs, RTL marks,
/// combining marks, astral planes, noncharacters that are still legal.
pub fn xml_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range(' ', '~'),
        2 => prop::sample::select(vec![
            '<', '>', '&', '\'', '"', '\t', '\n', '\r', ']', ';', '#', '\u{1}' /* replaced */,
        ])
        .prop_map(|c| if c == '\u{1}' { ' ' } else { c }),
        1 => prop::sample::select(vec![
            'é', '\u{301}', '\u{202E}', '\u{200F}', 'ש', 'م', '名', '\u{FEFF}', '\u{FFFD}',
            '😀', '𝄞', '\u{10FFFF}', '\u{E000}', '\u{D7FF}', '\u{85}', '\u{2028}',
        ]),
        1 => any::<char>().prop_filter("XML Char", |&c| is_xml_char(c)),
    ]
}

pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

pub fn xml_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(xml_char(), 0..max).prop_map(|v| v.into_iter().collect())
}

/// An XML NCName: ASCII mostly, sometimes with non-ASCII name characters.
pub fn ncname() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-zA-Z_][a-zA-Z0-9_.-]{0,8}",
        1 => "[a-zé名][a-z0-9é名\u{B7}\u{300}-]{0,4}",
    ]
    // Names starting with "xml" are reserved; "xmlns" would be a declaration.
    .prop_filter("not reserved", |n| {
        !n.to_ascii_lowercase().starts_with("xml")
    })
}

/// Namespace names, including ones that need escaping when written.
pub fn namespace() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "jabber:client",
            "urn:xmpp:mam:2",
            "jabber:x:data",
            "http://jabber.org/protocol/rsm",
            "urn:x:'quoted'&\"<>",
            "urn:ünïcode:名",
        ])
        .prop_map(str::to_owned),
        "urn:[a-z]{1,6}",
    ]
}

/// One generated element, before normalisation (see [`normalise`]).
fn leaf() -> impl Strategy<Value = Element> {
    (
        ncname(),
        prop::option::weighted(0.5, namespace()),
        prop::collection::vec(
            (
                prop::option::weighted(0.2, namespace()),
                ncname(),
                xml_string(12),
            ),
            0..4,
        ),
        prop::option::weighted(0.5, xml_string(24)),
    )
        .prop_map(|(name, ns, attrs, text)| {
            let mut el = Element::new(&name);
            if let Some(ns) = ns {
                el.set_attr("xmlns", &ns);
            }
            for (ans, local, value) in attrs {
                let key = match ans {
                    Some(ans) => format!("{ans}\u{1}{local}"),
                    None => local,
                };
                if el.attr(&key).is_none() {
                    el.attrs.push((key, value));
                }
            }
            if let Some(t) = text {
                el.push_text(&t);
            }
            el
        })
}

/// Arbitrary well-formed element trees (up to `depth` levels, a few children each),
/// with text and element children mixed.
pub fn element_tree(depth: u32) -> impl Strategy<Value = Element> {
    leaf().prop_recursive(depth, 48, 4, |inner| {
        (
            leaf(),
            prop::collection::vec(
                prop_oneof![
                    3 => inner.prop_map(Node::Element),
                    1 => xml_string(8).prop_map(Node::Text),
                ],
                0..4,
            ),
        )
            .prop_map(|(mut el, children)| {
                el.children.extend(children);
                el
            })
    })
}

/// What parsing the serialisation of `el` must give: each element carries the
/// namespace it is in (its own `xmlns`, or inherited), adjacent text is merged and
/// empty text dropped. `inherited` is the namespace of the parent.
pub fn normalise(el: &Element, inherited: Option<&str>) -> Element {
    let mut out = Element::new(&el.name);
    let ns = el.xmlns().or(inherited).filter(|ns| !ns.is_empty());
    if let Some(ns) = ns {
        out.set_attr("xmlns", ns);
    }
    for (k, v) in &el.attrs {
        if k != "xmlns" {
            out.attrs.push((k.clone(), v.clone()));
        }
    }
    for child in &el.children {
        match child {
            Node::Element(c) => out.push(normalise(c, ns)),
            Node::Text(t) if t.is_empty() => {}
            Node::Text(t) => match out.children.last_mut() {
                Some(Node::Text(prev)) => prev.push_str(t),
                _ => out.push_text(t),
            },
        }
    }
    out
}

/// The depth of an element tree (a leaf is 1).
pub fn depth(el: &Element) -> usize {
    1 + el.tags().map(depth).max().unwrap_or(0)
}

/// Strings made by concatenating up to `max` of `parts` (repeats allowed): inputs that
/// reach into an XML reader's corners far more often than arbitrary strings do.
pub fn concat_of(parts: Vec<&'static str>, max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(parts), 0..max).prop_map(|parts| parts.concat())
}
