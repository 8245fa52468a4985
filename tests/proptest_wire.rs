//! Property tests of the direct path from a stored message to the wire
//! (`stanza::append_canonical_message_wire`, `query::wire_result`): whatever this
//! module stores goes out unparsed, and what goes out that way reads, for a client,
//! exactly as the parse-and-write path's output; anything the direct path is not
//! sure of takes the parse path.
//!
//! Run longer: `PROPTEST_CASES=100000 cargo test --release --no-default-features
//! --features vendored --test proptest_wire`.

mod common;

use common::{cases, concat_of, element_tree, xml_string};
use mam_native::ns;
use mam_native::query::{result_message, wire_result};
use mam_native::stanza::{
    append_canonical_message_wire, parse_xml, to_wire_xml, to_xml, Element, Node,
};
use mam_native::store::ArchivedMessage;
use proptest::prelude::*;

fn stored(xml: String) -> ArchivedMessage {
    ArchivedMessage {
        id: "01J0000000000000000000000A".into(),
        when: 1_700_000_000_123_456,
        with_bare: "romeo@montague.lit".into(),
        with_resource: None,
        xml,
    }
}

/// The parse path's output for a stored message (what `wire_result` falls back to).
fn slow(msg: &ArchivedMessage) -> Option<String> {
    let wrapper = result_message(Some("q'1"), msg, Some("juliet@capulet.lit/balcony"), None);
    Some(to_wire_xml(&wrapper.ok()?))
}

/// An element with its attributes sorted, recursively: attribute order carries no
/// meaning, and the two paths may order the root's differently.
fn sorted(el: &Element) -> Element {
    let mut out = Element::new(&el.name);
    out.attrs = el.attrs.clone();
    out.attrs.sort();
    for child in &el.children {
        match child {
            Node::Element(c) => out.push(sorted(c)),
            Node::Text(t) => out.push_text(t),
        }
    }
    out
}

/// Both outputs read the same for a client.
fn same_reading(fast: &str, slow: &str) -> Result<(), TestCaseError> {
    let f = parse_xml(fast).map_err(|e| TestCaseError::fail(format!("{fast:?}: {e}")))?;
    let s = parse_xml(slow).map_err(|e| TestCaseError::fail(format!("{slow:?}: {e}")))?;
    prop_assert_eq!(sorted(&f), sorted(&s), "fast {:?} slow {:?}", fast, slow);
    Ok(())
}

/// A message as `Archive::append` stores it: the root named `message` in
/// `jabber:client`.
fn as_stored(mut el: Element) -> String {
    el.name = "message".into();
    el.set_attr("xmlns", ns::JABBER_CLIENT);
    to_xml(&el)
}

/// A message as other tools may have written it: no `xmlns` on the root.
fn without_root_ns(mut el: Element) -> String {
    el.name = "message".into();
    el.remove_attr("xmlns");
    to_xml(&el)
}

/// XML-ish fragments around a message root, for inputs the direct path must refuse
/// or pass on faithfully.
fn message_like() -> impl Strategy<Value = String> {
    concat_of(
        vec![
            "<message xmlns='jabber:client'>",
            "<message xmlns='jabber:client' type='chat'>",
            "<message xmlns='jabber:server'>",
            "<message>",
            "</message>",
            "<body>",
            "</body>",
            "<x xmlns='urn:x'/>",
            "<p:x xmlns:p='urn:p'/>",
            "<y xmlns:ns1='urn:a' ns1:k='v'/>",
            "<y ns1:k='v'/>",
            "<y xml:lang='en'/>",
            "<y a='&amp;&#13;&#9;&#10;'/>",
            "<y a='1'b='2'/>",
            "<y a='&#65;'/>",
            "&amp;",
            "&lt;",
            "&#13;",
            "&#65;",
            "&foo;",
            "<![CDATA[x]]>",
            "]]>",
            "<!-- c -->",
            "<?pi?>",
            "text",
            " ",
            "\r",
            "\t",
            "\n",
            "é",
        ],
        10,
    )
}

proptest! {
    #![proptest_config(cases(256))]

    /// Everything this module stores goes out without a parse, and reads as the
    /// parse path's output.
    #[test]
    fn stored_messages_take_the_direct_path_and_read_the_same(el in element_tree(4)) {
        let msg = stored(as_stored(el));
        let mut direct = String::new();
        prop_assert!(append_canonical_message_wire(&msg.xml, &mut direct), "refused {:?}", msg.xml);
        let fast = wire_result(Some("q'1"), &msg, Some("juliet@capulet.lit/balcony"), None).unwrap();
        prop_assert!(fast.contains(&direct));
        same_reading(&fast, &slow(&msg).unwrap())?;
    }

    /// A root without a namespace is read as the parse path reads it: in
    /// jabber:client, with its unqualified children.
    #[test]
    fn a_root_without_xmlns_reads_the_same(el in element_tree(4)) {
        let msg = stored(without_root_ns(el));
        prop_assert!(append_canonical_message_wire(&msg.xml, &mut String::new()), "refused {:?}", msg.xml);
        let fast = wire_result(Some("q'1"), &msg, Some("juliet@capulet.lit/balcony"), None).unwrap();
        same_reading(&fast, &slow(&msg).unwrap())?;
    }

    /// Text with every awkward character survives the direct path.
    #[test]
    fn any_text_reads_the_same(text in xml_string(40), value in xml_string(12)) {
        let el = Element::new("message")
            .with_attr("note", &value)
            .with_child(Element::new("body").with_text(&text));
        let msg = stored(as_stored(el));
        let fast = wire_result(Some("q'1"), &msg, Some("juliet@capulet.lit/balcony"), None).unwrap();
        same_reading(&fast, &slow(&msg).unwrap())?;
    }

    /// Whatever a damaged or foreign row holds: the direct path takes it only if the
    /// parse path can, and then both read the same; otherwise wire_result gives the
    /// parse path's answer (an error for what does not parse).
    #[test]
    fn anything_else_takes_the_parse_path(xml in message_like()) {
        let msg = stored(xml);
        let mut direct = String::new();
        let taken = append_canonical_message_wire(&msg.xml, &mut direct);
        let fast = wire_result(Some("q'1"), &msg, Some("juliet@capulet.lit/balcony"), None);
        match slow(&msg) {
            Some(slow) => same_reading(&fast.unwrap(), &slow)?,
            None => {
                prop_assert!(!taken, "direct path took what does not parse: {:?}", msg.xml);
                prop_assert!(fast.is_err());
            }
        }
        if !taken {
            prop_assert!(direct.is_empty(), "a refusal appended {:?}", direct);
        }
    }
}

#[test]
fn what_the_direct_path_refuses() {
    for xml in [
        "<message xmlns='jabber:server'><body>x</body></message>",
        "<cli:message xmlns:cli='jabber:client'/>",
        "<message xmlns='jabber:client'><![CDATA[x]]></message>",
        "<message xmlns='jabber:client'><!-- c --></message>",
        "<message xmlns='jabber:client'>&#65;</message>",
        "<message xmlns='jabber:client'>a\rb</message>",
        "<message xmlns='jabber:client'><y p:k='v'/></message>",
        "<message xmlns='jabber:client'/><message xmlns='jabber:client'/>",
        "<?xml version='1.0'?><message xmlns='jabber:client'/>",
        "<iq xmlns='jabber:client'/>",
        "<message xmlns='jabber:client'>",
    ] {
        let mut out = String::from("kept");
        assert!(
            !append_canonical_message_wire(xml, &mut out),
            "took {xml:?}"
        );
        assert_eq!(out, "kept");
    }
    // No xmlns on the root: declared on the way out, as the parse path would.
    let mut out = String::new();
    assert!(append_canonical_message_wire(
        "<message id='a'><body>x</body></message>",
        &mut out
    ));
    assert_eq!(
        out,
        "<message xmlns='jabber:client' id='a'><body>x</body></message>"
    );
    let mut out = String::new();
    assert!(append_canonical_message_wire(
        "<message type='chat' xmlns='jabber:client'><body>a&#13;b &amp; c</body>\
         <y xmlns:ns1='urn:a' ns1:k='t&#9;u&#10;v'/></message>",
        &mut out
    ));
    assert_eq!(
        out,
        "<message type='chat' xmlns='jabber:client'><body>a\rb &amp; c</body>\
         <y xmlns:ns1='urn:a' ns1:k='t\tu\nv'/></message>"
    );
}
