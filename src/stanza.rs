//! XML stanzas in Prosody's own model, as plain Rust data.
//!
//! Prosody (`util.stanza`) represents an element as a table with `name`, an `attr`
//! table, its children in order (elements and text) and a `tags` list of the child
//! elements. Namespaces are not resolved prefixes but an `xmlns` attribute: an element
//! whose `xmlns` is absent inherits its parent's. Attributes in a foreign namespace
//! are keyed `"<namespace>\u{1}<name>"`, except the `xml:` ones, which keep the key
//! `xml:lang`. We keep exactly that model so a stanza crosses the Lua boundary and
//! back without loss, and the XML we store is the XML Prosody itself would write.
//!
//! [`to_xml`] writes what Prosody's `tostring(stanza)` writes; [`parse_xml`] reads XML
//! back into this model the way Prosody's `util.xml` does (Expat with namespace
//! processing), refusing anything that is not well-formed or that could make a hostile
//! document expensive (DOCTYPE, entities, unbounded nesting).

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{PrefixDeclaration, QName, ResolveResult};
use quick_xml::{NsReader, XmlVersion};
use thiserror::Error;

/// The deepest element nesting [`parse_xml`] and the Lua conversion accept.
///
/// Real stanzas nest a handful of levels (a MAM result is message/result/forwarded/
/// message/body: five); the limit only bounds what hostile input can cost.
pub const MAX_DEPTH: usize = 256;

/// The namespace the `xml:` prefix is bound to (Namespaces in XML §3).
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
/// The namespace of `xmlns` declarations themselves (Namespaces in XML §3).
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

/// Why a piece of XML could not become a stanza.
///
/// Positions are byte offsets into the input, where the offending construct starts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StanzaError {
    /// The input is not well-formed XML: the XML reader's complaint, or one of our own
    /// checks that the reader does not make (names, `<` in attribute values, `]]>`).
    #[error("malformed XML at byte {position}: {reason}")]
    Malformed { position: u64, reason: String },
    /// A character XML 1.0 does not allow (NUL, most C0 controls, U+FFFE, U+FFFF),
    /// written literally or as a character reference.
    #[error("character U+{code:04X} at byte {position} is not allowed in XML")]
    InvalidChar { position: u64, code: u32 },
    /// A `<!DOCTYPE …>`: refused, as Prosody refuses it, so no entity can be declared
    /// (no "billion laughs").
    #[error("DOCTYPE declarations are not allowed (at byte {position})")]
    Doctype { position: u64 },
    /// A comment: Prosody's `util.xml` refuses them by default, so do we.
    #[error("comments are not allowed (at byte {position})")]
    Comment { position: u64 },
    /// A processing instruction (not the XML declaration): refused, as Prosody does.
    #[error("processing instructions are not allowed (at byte {position})")]
    ProcessingInstruction { position: u64 },
    /// A reference to an entity other than the five XML predefines.
    #[error("unknown entity '&{name};' at byte {position}")]
    UnknownEntity { position: u64, name: String },
    /// An element or attribute prefix with no `xmlns:prefix` declaration in scope.
    #[error("unknown namespace prefix '{prefix}' at byte {position}")]
    UnknownPrefix { position: u64, prefix: String },
    /// The same attribute twice on one element (by name, or by namespace and local
    /// name; a namespaced one is shown as `{namespace}name`).
    #[error("duplicate attribute '{name}' at byte {position}")]
    DuplicateAttribute { position: u64, name: String },
    /// Elements nested deeper than [`MAX_DEPTH`].
    #[error("elements nested deeper than {limit} levels (at byte {position})")]
    TooDeep { position: u64, limit: usize },
    /// A second top-level element; a stanza has exactly one root.
    #[error("more than one root element (the second starts at byte {position})")]
    MultipleRoots { position: u64 },
    /// Non-whitespace text (or a reference, or CDATA) before or after the root element.
    #[error("text outside the root element at byte {position}")]
    TextOutsideRoot { position: u64 },
    /// The input ended inside element `name`.
    #[error("element <{name}> is not closed at the end of the input")]
    Unclosed { name: String },
    /// The input holds no element at all.
    #[error("no root element")]
    NoRoot,
}

/// One node among an element's children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

/// An XML element in Prosody's model (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Local name, never prefixed.
    pub name: String,
    /// Attributes in document order. `xmlns` is an ordinary entry here, as in Prosody.
    pub attrs: Vec<(String, String)>,
    /// Children in document order.
    pub children: Vec<Node>,
}

impl Element {
    /// A new element with no attributes and no children.
    pub fn new(name: &str) -> Self {
        Element {
            name: name.to_owned(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// A new element with its `xmlns` attribute set.
    pub fn with_ns(name: &str, ns: &str) -> Self {
        let mut el = Element::new(name);
        el.set_attr("xmlns", ns);
        el
    }

    /// The value of attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or replaces) attribute `key`.
    pub fn set_attr(&mut self, key: &str, value: &str) {
        match self.attrs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_owned(),
            None => self.attrs.push((key.to_owned(), value.to_owned())),
        }
    }

    /// Builder form of [`Element::set_attr`].
    pub fn with_attr(mut self, key: &str, value: &str) -> Self {
        self.set_attr(key, value);
        self
    }

    /// Removes attribute `key`, if present.
    pub fn remove_attr(&mut self, key: &str) {
        self.attrs.retain(|(k, _)| k != key);
    }

    /// This element's own `xmlns` attribute (not the inherited namespace).
    pub fn xmlns(&self) -> Option<&str> {
        self.attr("xmlns")
    }

    /// Appends a child element.
    pub fn push(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// Builder form of [`Element::push`].
    pub fn with_child(mut self, child: Element) -> Self {
        self.push(child);
        self
    }

    /// Appends text.
    pub fn push_text(&mut self, text: &str) {
        self.children.push(Node::Text(text.to_owned()));
    }

    /// Builder form of [`Element::push_text`].
    pub fn with_text(mut self, text: &str) -> Self {
        self.push_text(text);
        self
    }

    /// Child elements in order.
    pub fn tags(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The namespace a child of this element has, resolved as Prosody's
    /// `get_child` does: the child's own `xmlns`, or else this element's.
    fn child_ns<'a>(&'a self, child: &'a Element) -> Option<&'a str> {
        child.xmlns().or(self.xmlns())
    }

    /// First child element named `name` in namespace `ns` (Prosody's
    /// `get_child(name, xmlns)`; `ns = None` means "this element's namespace").
    pub fn get_child(&self, name: &str, ns: Option<&str>) -> Option<&Element> {
        let want = ns.or(self.xmlns());
        self.tags()
            .find(|c| c.name == name && self.child_ns(c) == want)
    }

    /// First child element in namespace `ns`, whatever its name.
    pub fn get_child_ns(&self, ns: &str) -> Option<&Element> {
        self.tags().find(|c| self.child_ns(c) == Some(ns))
    }

    /// All child elements named `name` in namespace `ns` (as [`Element::get_child`]).
    pub fn children_named<'a>(
        &'a self,
        name: &'a str,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        let want = ns.or(self.xmlns());
        self.tags()
            .filter(move |c| c.name == name && self.child_ns(c) == want)
    }

    /// Concatenated text of the direct text children (Prosody's `get_text` for leaves).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Text of the first child `name` in `ns` (Prosody's `get_child_text`).
    pub fn get_child_text(&self, name: &str, ns: Option<&str>) -> Option<String> {
        self.get_child(name, ns).map(Element::text)
    }

    /// Removes every child element for which `drop` returns true; text is kept.
    pub fn retain_tags(&mut self, mut keep: impl FnMut(&Element) -> bool) {
        self.children.retain(|n| match n {
            Node::Element(e) => keep(e),
            Node::Text(_) => true,
        });
    }

    /// Number of child elements.
    pub fn tag_count(&self) -> usize {
        self.tags().count()
    }
}

// ---------------------------------------------------------------------------
// Serialisation: Prosody's `stanza_mt.__tostring`
// ---------------------------------------------------------------------------

/// The XML Prosody's `tostring(stanza)` writes for `el`, byte for byte.
///
/// As `util/stanza.lua`'s `_dostring`: attributes as `k='v'`; `xmlns` left out when it
/// equals the parent's own `xmlns` attribute; an attribute keyed `"ns\u{1}name"` written
/// as ` xmlns:nsN='ns' nsN:name='v'`, N counting from 1 within each element; `'`, `"`,
/// `<`, `>` and `&` escaped in attribute values and text; a childless element as `/>`.
/// Two differences: attribute order is document order (Prosody's is `pairs` order), and
/// characters an XML parser would normalise away are written as character references
/// (`\r` everywhere, tab and newline in attribute values), so what we store reads back
/// byte for byte (Prosody's `tostring` writes them raw and a re-parse loses them).
pub fn to_xml(el: &Element) -> String {
    let mut out = String::with_capacity(256);
    write_element(el, None, Escaping::Storage, &mut out);
    out
}

/// The XML Prosody's `tostring(stanza)` writes for `el`, for sending to a client:
/// as [`to_xml`] but with `\r`, tab and newline written raw, as Prosody writes them,
/// so a client reads a result exactly as it read the live message (its parser
/// normalises them the same way both times).
pub fn to_wire_xml(el: &Element) -> String {
    let mut out = String::with_capacity(256);
    write_element(el, None, Escaping::Prosody, &mut out);
    out
}

/// Which characters besides the five XML specials are written as references.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Escaping {
    /// Also those a parser would normalise, so stored XML reads back byte for byte.
    Storage,
    /// Only the five, as Prosody's `xml_escape`.
    Prosody,
}

fn write_element(el: &Element, parent_ns: Option<&str>, esc: Escaping, out: &mut String) {
    out.push('<');
    out.push_str(&el.name);
    let mut nsid = 0u32;
    for (key, value) in &el.attrs {
        if let Some((ns, local)) = key.split_once('\u{1}') {
            nsid += 1;
            out.push_str(" xmlns:ns");
            push_u32(out, nsid);
            out.push_str("='");
            escape_into(ns, true, esc, out);
            out.push_str("' ns");
            push_u32(out, nsid);
            out.push(':');
            out.push_str(local);
        } else if key == "xmlns" && Some(value.as_str()) == parent_ns {
            continue;
        } else {
            out.push(' ');
            out.push_str(key);
        }
        out.push_str("='");
        escape_into(value, true, esc, out);
        out.push('\'');
    }
    if el.children.is_empty() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    let own_ns = el.xmlns();
    for child in &el.children {
        match child {
            Node::Element(c) => write_element(c, own_ns, esc, out),
            Node::Text(t) => escape_into(t, false, esc, out),
        }
    }
    out.push_str("</");
    out.push_str(&el.name);
    out.push('>');
}

fn push_u32(out: &mut String, n: u32) {
    use std::fmt::Write;
    // Writing into a String cannot fail.
    let _ = write!(out, "{n}");
}

/// Prosody's `xml_escape` (the five XML specials), plus, for storage, the characters
/// XML parsers normalise: `\r` (line-end normalisation, XML 1.0 §2.11) and, in
/// attribute values (`in_attr`), tab and newline too (attribute-value normalisation,
/// §3.3.3).
fn escape_into(s: &str, in_attr: bool, esc: Escaping, out: &mut String) {
    let mut rest = s;
    let storage = esc == Escaping::Storage;
    let special = |c: char| match c {
        '\'' | '"' | '<' | '>' | '&' => true,
        '\r' => storage,
        '\t' | '\n' => storage && in_attr,
        _ => false,
    };
    while let Some(i) = rest.find(special) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'\'' => "&apos;",
            b'"' => "&quot;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'\r' => "&#13;",
            b'\t' => "&#9;",
            b'\n' => "&#10;",
            _ => "&amp;",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// Appends `value` escaped for an attribute on the wire (Prosody's `xml_escape`).
pub fn push_wire_escaped(value: &str, out: &mut String) {
    escape_into(value, true, Escaping::Prosody, out);
}

// ---------------------------------------------------------------------------
// Stored messages straight to the wire
// ---------------------------------------------------------------------------

/// Writes the wire form ([`to_wire_xml`]) of a stored `<message>` that is in the canonical
/// form [`to_xml`] writes with `xmlns='jabber:client'` (or no `xmlns`) on the root,
/// without building
/// a tree: the text is checked (one non-allocating pass) and returned with the three
/// character references storage adds (`&#13;`, `&#9;`, `&#10;`) turned back into the
/// characters Prosody writes raw. Refused for anything else — a prefixed element,
/// CDATA, a comment, another reference, an undeclared prefix, a raw carriage return —
/// which the caller then parses properly. Sending a page of stored messages this way
/// skips most of a page's work on the reader thread: parsing each one into a tree
/// only to write it out again.
///
/// What passes is well-formed and self-contained (every prefix declared where used,
/// the default namespace declared on the root), so it can sit inside the result
/// wrapper and reads as the parsed-and-written form would.
///
/// Appends to `out` and returns `true`, or returns `false` with `out` untouched.
pub fn append_canonical_message_wire(xml: &str, out: &mut String) -> bool {
    let Some(root_ns) = canonical_message_check(xml) else {
        return false;
    };
    match root_ns {
        RootNamespace::Declared => append_unescaping_storage_refs(xml, out),
        RootNamespace::Absent => {
            // `<message` then the rest: declare the namespace the parse path gives
            // the root (its children, unqualified, are in it either way).
            out.push_str("<message xmlns='jabber:client'");
            append_unescaping_storage_refs(&xml["<message".len()..], out);
        }
    }
    true
}

/// The root of a stored message: `xmlns='jabber:client'` on it, or no `xmlns` at all
/// (rows written by other tools; the parse path puts the root in `jabber:client`).
enum RootNamespace {
    Declared,
    Absent,
}

fn canonical_message_check(xml: &str) -> Option<RootNamespace> {
    if !xml.starts_with("<message") {
        return None;
    }
    if xml.chars().any(|c| c == '\r' || !is_xml_char(c)) {
        return None;
    }
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    let mut root_ns = None;
    loop {
        match reader.read_event().ok()? {
            Event::Start(start) => {
                let ns = canonical_start(&start, depth == 0, root_ns.is_some())?;
                root_ns = root_ns.or(ns);
                depth += 1;
            }
            Event::Empty(start) => {
                let ns = canonical_start(&start, depth == 0, root_ns.is_some())?;
                root_ns = root_ns.or(ns);
            }
            Event::End(_) => depth = depth.checked_sub(1)?,
            Event::Text(text) => {
                if depth == 0 || text.xml10_content().contains("]]>") {
                    return None;
                }
            }
            Event::GeneralRef(reference) => {
                if depth == 0 || !allowed_stored_ref(&reference) {
                    return None;
                }
            }
            Event::Eof => break,
            // CDATA, comments, processing instructions, declarations.
            _ => return None,
        }
    }
    if depth != 0 {
        return None;
    }
    root_ns
}

/// Appends `xml` with `&#13;`, `&#9;` and `&#10;` as the raw characters (the only
/// character references [`canonical_message_check`] lets through).
fn append_unescaping_storage_refs(xml: &str, out: &mut String) {
    out.reserve(xml.len());
    let mut rest = xml;
    while let Some(i) = rest.find("&#") {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (raw, len) = if tail.starts_with("&#13;") {
            ("\r", 5)
        } else if tail.starts_with("&#9;") {
            ("\t", 4)
        } else if tail.starts_with("&#10;") {
            ("\n", 5)
        } else {
            ("&#", 2)
        };
        out.push_str(raw);
        rest = &tail[len..];
    }
    out.push_str(rest);
}

/// The references [`to_xml`] writes: the five predefined entities and the three
/// character references for what a parser would normalise.
fn allowed_stored_ref(name: &str) -> bool {
    matches!(
        name,
        "amp" | "lt" | "gt" | "apos" | "quot" | "#13" | "#9" | "#10"
    )
}

/// Checks one start tag of a stored message for [`append_canonical_message_wire`]: an
/// unprefixed NCName (`message` at the root, in `jabber:client` or with no `xmlns`,
/// and only one root),
/// attributes that are NCNames, `xml:` ones, `xmlns`, `xmlns:nsN` declarations, or
/// `nsN:` ones declared on the same element; values without `<`, raw tab or newline,
/// or references other than [`allowed_stored_ref`].
///
/// For the root, says how its namespace is given; `Some(None)` for any other element.
fn canonical_start(
    start: &BytesStart<'_>,
    at_top: bool,
    seen_root: bool,
) -> Option<Option<RootNamespace>> {
    if at_top && seen_root {
        return None;
    }
    let name = start.name().0;
    if !is_ncname(name) || (at_top && name != "message") {
        return None;
    }
    check_attribute_separation(start.attributes_raw(), 0).ok()?;
    let mut declared: Vec<&str> = Vec::new();
    let mut prefixed: Vec<&str> = Vec::new();
    let mut default_ns: Option<&str> = None;
    let mut attrs = start.attributes();
    attrs.with_checks(true);
    for attr in attrs {
        let attr = attr.ok()?;
        let key: &str = attr.key.0;
        let value: &str = match &attr.value {
            Cow::Borrowed(v) => v,
            Cow::Owned(_) => return None,
        };
        if !canonical_attr_value(value) {
            return None;
        }
        match key.split_once(':') {
            None if key == "xmlns" => default_ns = Some(value),
            None if is_ncname(key) => {}
            Some(("xmlns", prefix))
                if prefix.len() > 2
                    && prefix.starts_with("ns")
                    && prefix[2..].bytes().all(|b| b.is_ascii_digit())
                    && !value.is_empty() =>
            {
                namespace_name(value, 0).ok()?;
                declared.push(prefix);
            }
            Some(("xml", local)) if is_ncname(local) => {}
            Some((prefix, local)) if is_ncname(prefix) && is_ncname(local) => {
                prefixed.push(prefix);
            }
            _ => return None,
        }
    }
    if !prefixed.iter().all(|p| declared.contains(p)) {
        return None;
    }
    if !at_top {
        return Some(None);
    }
    match default_ns {
        None => Some(Some(RootNamespace::Absent)),
        Some(crate::ns::JABBER_CLIENT) => Some(Some(RootNamespace::Declared)),
        Some(_) => None,
    }
}

/// An attribute value as [`to_xml`] writes it.
fn canonical_attr_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' | b'\t' | b'\n' | b'\r' => return false,
            b'&' => {
                let Some(end) = value[i..].find(';') else {
                    return false;
                };
                if !allowed_stored_ref(&value[i + 1..i + end]) {
                    return false;
                }
                i += end + 1;
            }
            _ => i += 1,
        }
    }
    true
}

// ---------------------------------------------------------------------------
// Parsing: Prosody's `util.xml`
// ---------------------------------------------------------------------------

/// Parses one XML document (one root element) into Prosody's model, as `util.xml` does.
///
/// Every element whose namespace is not empty gets it as its `xmlns` attribute (so
/// Prosody's `get_child` works on what we hand to Lua); prefixes are resolved away and
/// `xmlns`/`xmlns:p` declarations are not kept; an attribute `p:name` becomes
/// `"<ns of p>\u{1}name"`, except `xml:lang` and the other `xml:` attributes, which keep
/// their `xml:` key. Text is kept exactly (whitespace included, adjacent pieces merged),
/// with entity and character references decoded. An XML declaration is accepted;
/// DOCTYPE, comments and processing instructions are refused, as Prosody refuses them.
///
/// Cost is linear in the input (plus sorting each element's attributes), and the tree
/// never holds more than the input's text; nesting is limited to [`MAX_DEPTH`].
pub fn parse_xml(xml: &str) -> Result<Element, StanzaError> {
    if let Some((i, c)) = xml.char_indices().find(|&(_, c)| !is_xml_char(c)) {
        return Err(StanzaError::InvalidChar {
            position: i as u64,
            code: c as u32,
        });
    }
    let mut reader = NsReader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let position = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| reader_error(&e, reader.error_position(), &stack))?;
        match event {
            Event::Start(start) => {
                let el = start_element(&reader, &start, position, &stack, root.is_some())?;
                stack.push(el);
            }
            Event::Empty(start) => {
                let el = start_element(&reader, &start, position, &stack, root.is_some())?;
                close_element(el, &mut stack, &mut root);
            }
            Event::End(_) => {
                // quick-xml has checked the end tag matches the open one.
                if let Some(el) = stack.pop() {
                    close_element(el, &mut stack, &mut root);
                }
            }
            Event::Text(text) => {
                let raw = text.xml10_content();
                if raw.contains("]]>") {
                    return Err(StanzaError::Malformed {
                        position,
                        reason: "']]>' is not allowed in text".into(),
                    });
                }
                match stack.last_mut() {
                    Some(el) => append_text(el, &raw),
                    None if raw.chars().all(is_xml_space) => {}
                    None => return Err(StanzaError::TextOutsideRoot { position }),
                }
            }
            Event::CData(cdata) => match stack.last_mut() {
                Some(el) => append_text(el, &cdata.xml10_content()),
                None => return Err(StanzaError::TextOutsideRoot { position }),
            },
            Event::GeneralRef(reference) => {
                let Some(el) = stack.last_mut() else {
                    return Err(StanzaError::TextOutsideRoot { position });
                };
                let mut buf = [0u8; 4];
                let decoded: &str = match reference.resolve_char_ref() {
                    Ok(Some(c)) if is_xml_char(c) => c.encode_utf8(&mut buf),
                    Ok(Some(c)) => {
                        return Err(StanzaError::InvalidChar {
                            position,
                            code: c as u32,
                        })
                    }
                    Ok(None) => match predefined_entity(&reference) {
                        Some(s) => s,
                        None => {
                            return Err(StanzaError::UnknownEntity {
                                position,
                                name: reference.to_string(),
                            })
                        }
                    },
                    Err(e) => {
                        return Err(StanzaError::Malformed {
                            position,
                            reason: e.to_string(),
                        })
                    }
                };
                append_text(el, decoded);
            }
            Event::Decl(decl) => {
                if position != 0 {
                    return Err(StanzaError::Malformed {
                        position,
                        reason: "XML declaration not at the start of the input".into(),
                    });
                }
                if let Err(e) = decl.version() {
                    return Err(StanzaError::Malformed {
                        position,
                        reason: e.to_string(),
                    });
                }
            }
            Event::DocType(_) => return Err(StanzaError::Doctype { position }),
            Event::Comment(_) => return Err(StanzaError::Comment { position }),
            Event::PI(_) => return Err(StanzaError::ProcessingInstruction { position }),
            Event::Eof => {
                if let Some(open) = stack.first() {
                    return Err(StanzaError::Unclosed {
                        name: open.name.clone(),
                    });
                }
                return root.ok_or(StanzaError::NoRoot);
            }
        }
    }
}

/// Maps a quick-xml error to ours, keeping its words.
fn reader_error(e: &quick_xml::Error, position: u64, stack: &[Element]) -> StanzaError {
    use quick_xml::errors::IllFormedError;
    match e {
        quick_xml::Error::IllFormed(IllFormedError::MissingEndTag(_)) if !stack.is_empty() => {
            StanzaError::Unclosed {
                name: stack[0].name.clone(),
            }
        }
        quick_xml::Error::Namespace(quick_xml::name::NamespaceError::UnknownPrefix(prefix)) => {
            StanzaError::UnknownPrefix {
                position,
                prefix: prefix.clone(),
            }
        }
        other => StanzaError::Malformed {
            position,
            reason: other.to_string(),
        },
    }
}

/// Builds the element a start tag opens, resolving its namespaces against the scope
/// the reader keeps (which already includes this tag's own declarations).
fn start_element(
    reader: &NsReader<&[u8]>,
    start: &BytesStart,
    position: u64,
    stack: &[Element],
    have_root: bool,
) -> Result<Element, StanzaError> {
    if stack.is_empty() && have_root {
        return Err(StanzaError::MultipleRoots { position });
    }
    if stack.len() >= MAX_DEPTH {
        return Err(StanzaError::TooDeep {
            position,
            limit: MAX_DEPTH,
        });
    }
    let resolver = reader.resolver();
    let qname = start.name();
    check_qname(qname.0, position)?;
    let (ns, local) = resolver.resolve_element(qname);
    let mut el = Element::new(local.into_inner());
    match ns {
        ResolveResult::Bound(ns) if !ns.0.is_empty() => {
            el.set_attr("xmlns", &namespace_name(ns.0, position)?)
        }
        ResolveResult::Bound(_) | ResolveResult::Unbound => {}
        ResolveResult::Unknown(prefix) => {
            return Err(StanzaError::UnknownPrefix { position, prefix });
        }
    }

    check_attribute_separation(start.attributes_raw(), position)?;
    // Duplicates are checked below, by raw name and again after namespace resolution,
    // so quick-xml's own (raw-name) check would only repeat the first half.
    let mut attributes = start.attributes();
    attributes.with_checks(false);
    let mut raw_names: Vec<&str> = Vec::new();
    for attr in attributes {
        let attr = attr.map_err(|e| StanzaError::Malformed {
            position,
            reason: e.to_string(),
        })?;
        let key: QName = attr.key;
        check_qname(key.0, position)?;
        raw_names.push(key.0);
        if attr.value.contains('<') {
            return Err(StanzaError::Malformed {
                position,
                reason: format!("'<' in the value of attribute '{}'", key.0),
            });
        }
        if let Some(binding) = key.as_namespace_binding() {
            // A declaration: it shaped the namespaces above, it is not an attribute.
            check_binding(binding, &attr.value, position)?;
            namespace_name(&attr.value, position)?;
            continue;
        }
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| attribute_value_error(&e, position))?;
        if let Some(c) = value.chars().find(|&c| !is_xml_char(c)) {
            return Err(StanzaError::InvalidChar {
                position,
                code: c as u32,
            });
        }
        let (ns, local) = resolver.resolve_attribute(key);
        let local = local.into_inner();
        let resolved_key = match ns {
            ResolveResult::Unbound => local.to_owned(),
            ResolveResult::Bound(ns) if ns.0 == XML_NS => format!("xml:{local}"),
            ResolveResult::Bound(ns) => format!("{}\u{1}{local}", namespace_name(ns.0, position)?),
            ResolveResult::Unknown(prefix) => {
                return Err(StanzaError::UnknownPrefix { position, prefix });
            }
        };
        el.attrs.push((resolved_key, value.into_owned()));
    }
    if let Some(dup) = first_duplicate(raw_names.iter().copied()) {
        return Err(StanzaError::DuplicateAttribute {
            position,
            name: dup.to_owned(),
        });
    }
    if let Some(dup) = first_duplicate(el.attrs.iter().map(|(k, _)| k.as_str())) {
        let name = match dup.split_once('\u{1}') {
            Some((ns, local)) => format!("{{{ns}}}{local}"),
            None => dup.to_owned(),
        };
        return Err(StanzaError::DuplicateAttribute { position, name });
    }
    Ok(el)
}

/// A namespace name as its declaration's value means it: quick-xml resolves prefixes to
/// the declaration's raw text, while Expat (and so Prosody) reads `xmlns='a&amp;b'` as
/// `a&b`, with the whitespace normalisation of any attribute value.
fn namespace_name(raw: &str, position: u64) -> Result<Cow<'_, str>, StanzaError> {
    if !raw.contains(['&', '\t', '\n', '\r']) {
        return Ok(Cow::Borrowed(raw));
    }
    let spaced = raw.replace("\r\n", " ").replace(['\t', '\n', '\r'], " ");
    let decoded = quick_xml::escape::unescape(&spaced)
        .map_err(|e| attribute_value_error(&quick_xml::Error::Escape(e), position))?;
    if let Some(c) = decoded.chars().find(|&c| !is_xml_char(c)) {
        return Err(StanzaError::InvalidChar {
            position,
            code: c as u32,
        });
    }
    Ok(Cow::Owned(decoded.into_owned()))
}

/// Refuses attributes not separated by whitespace (`<a b='1'c='2'/>`), which
/// quick-xml lets through and Expat does not.
fn check_attribute_separation(raw: &str, position: u64) -> Result<(), StanzaError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let quote = bytes[i];
        if quote == b'\'' || quote == b'"' {
            // quick-xml has found the syntax otherwise sound, so a quote here opens a
            // value; skip to its end and look at what follows.
            let Some(len) = bytes[i + 1..].iter().position(|&b| b == quote) else {
                return Ok(());
            };
            i += len + 2;
            if let Some(&next) = bytes.get(i) {
                if !matches!(next, b' ' | b'\t' | b'\n' | b'\r') {
                    return Err(StanzaError::Malformed {
                        position,
                        reason: "attributes must be separated by whitespace".into(),
                    });
                }
            }
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Refuses the namespace declarations Namespaces in XML forbids and quick-xml lets
/// through: undeclaring a prefix (`xmlns:p=''`), and binding the default namespace
/// to the reserved `xml` or `xmlns` namespace.
fn check_binding(
    binding: PrefixDeclaration,
    value: &str,
    position: u64,
) -> Result<(), StanzaError> {
    let reason = match binding {
        PrefixDeclaration::Named(prefix) if value.is_empty() => {
            format!("the namespace prefix '{prefix}' cannot be undeclared")
        }
        PrefixDeclaration::Default if value == XML_NS || value == XMLNS_NS => {
            format!("the default namespace cannot be '{value}'")
        }
        _ => return Ok(()),
    };
    Err(StanzaError::Malformed { position, reason })
}

/// Maps a failure to decode an attribute value (an unknown entity, a bad character
/// reference) to our error.
fn attribute_value_error(e: &quick_xml::Error, position: u64) -> StanzaError {
    use quick_xml::escape::EscapeError;
    match e {
        quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(_, name)) => {
            StanzaError::UnknownEntity {
                position,
                name: name.clone(),
            }
        }
        other => StanzaError::Malformed {
            position,
            reason: other.to_string(),
        },
    }
}

/// The first name that occurs twice, if any (sorting, so hostile input with many
/// attributes stays O(n log n)).
fn first_duplicate<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut names: Vec<&str> = names.collect();
    if names.len() < 2 {
        return None;
    }
    names.sort_unstable();
    names.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// Hands a finished element to its parent, or makes it the root.
fn close_element(el: Element, stack: &mut [Element], root: &mut Option<Element>) {
    match stack.last_mut() {
        Some(parent) => parent.push(el),
        None => *root = Some(el),
    }
}

/// Appends text, merging with a preceding text node (Prosody's stream parser, too,
/// hands a stanza each run of character data as one string).
fn append_text(el: &mut Element, text: &str) {
    if text.is_empty() {
        return;
    }
    match el.children.last_mut() {
        Some(Node::Text(t)) => t.push_str(text),
        _ => el.children.push(Node::Text(text.to_owned())),
    }
}

fn predefined_entity(name: &str) -> Option<&'static str> {
    Some(match name {
        "lt" => "<",
        "gt" => ">",
        "amp" => "&",
        "apos" => "'",
        "quot" => "\"",
        _ => return None,
    })
}

/// XML 1.0 `Char`: what a document may contain at all.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// XML 1.0 `S`.
fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// XML 1.0 `NameStartChar`, without `:` (Namespaces in XML `NCName`).
fn is_name_start_char(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 `NameChar`, without `:`.
fn is_name_char(c: char) -> bool {
    is_name_start_char(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(is_name_start_char) && chars.all(is_name_char)
}

/// Checks a tag or attribute name is a `QName` (`NCName` or `NCName:NCName`).
fn check_qname(name: &str, position: u64) -> Result<(), StanzaError> {
    let ok = match name.split_once(':') {
        Some((prefix, local)) => is_ncname(prefix) && is_ncname(local),
        None => is_ncname(name),
    };
    if ok {
        Ok(())
    } else {
        Err(StanzaError::Malformed {
            position,
            reason: format!("'{name}' is not a valid XML name"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_xml_writes_what_prosody_writes_and_storage_keeps_what_parsers_drop() {
        let el = Element::new("message")
            .with_attr("note", "a\tb\nc\r'")
            .with_child(Element::new("body").with_text("x\r\ny\t<&>\""));
        assert_eq!(
            to_wire_xml(&el),
            "<message note='a\tb\nc\r&apos;'><body>x\r\ny\t&lt;&amp;&gt;&quot;</body></message>"
        );
        assert_eq!(
            to_xml(&el),
            "<message note='a&#9;b&#10;c&#13;&apos;'><body>x&#13;\ny\t&lt;&amp;&gt;&quot;</body></message>"
        );
    }

    /// XEP-0313 §4.2 (and RFC 6121's balcony scene): the archived message.
    const XEP_MESSAGE: &str = "<message to='juliet@capulet.lit/balcony' from='romeo@montague.lit/orchard' type='chat'><body>Call me but love, and I'll be married ere the morning light.</body></message>";

    /// XEP-0313 §4.2, Example 5: a result the server sends back, whitespace included.
    const XEP_RESULT: &str = "<message id='aeb213' to='juliet@capulet.lit/chamber'>
  <result xmlns='urn:xmpp:mam:2' queryid='f27' id='28482-98726-73623'>
    <forwarded xmlns='urn:xmpp:forward:0'>
      <delay xmlns='urn:xmpp:delay' stamp='2010-07-10T23:08:25Z'/>
      <message xmlns='jabber:client'
        to='juliet@capulet.lit/balcony'
        from='romeo@montague.lit/orchard'
        type='chat'>
        <body>Call me but love, and I'll be married ere the morning light.</body>
      </message>
    </forwarded>
  </result>
</message>";

    fn err(xml: &str) -> StanzaError {
        match parse_xml(xml) {
            Ok(el) => panic!("expected an error for {xml:?}, parsed {el:?}"),
            Err(e) => e,
        }
    }

    /// Sorts the attributes of every element, to compare modulo attribute order.
    fn sorted(mut el: Element) -> Element {
        el.attrs.sort();
        for c in &mut el.children {
            if let Node::Element(e) = c {
                *e = sorted(std::mem::take(e));
            }
        }
        el
    }

    // --- to_xml ---------------------------------------------------------------

    #[test]
    fn the_xep_message_serialises_as_prosody_writes_it() {
        let el = Element::new("message")
            .with_attr("to", "juliet@capulet.lit/balcony")
            .with_attr("from", "romeo@montague.lit/orchard")
            .with_attr("type", "chat")
            .with_child(
                Element::new("body")
                    .with_text("Call me but love, and I'll be married ere the morning light."),
            );
        assert_eq!(
            to_xml(&el),
            "<message to='juliet@capulet.lit/balcony' from='romeo@montague.lit/orchard' type='chat'><body>Call me but love, and I&apos;ll be married ere the morning light.</body></message>"
        );
    }

    #[test]
    fn a_childless_element_is_self_closed() {
        assert_eq!(to_xml(&Element::new("x")), "<x/>");
        assert_eq!(
            to_xml(&Element::with_ns(
                "active",
                "http://jabber.org/protocol/chatstates"
            )),
            "<active xmlns='http://jabber.org/protocol/chatstates'/>"
        );
    }

    #[test]
    fn an_empty_text_child_still_gives_an_open_and_close_tag() {
        // Prosody counts children, not characters: `#t == 1`.
        assert_eq!(to_xml(&Element::new("body").with_text("")), "<body></body>");
    }

    #[test]
    fn the_five_xml_specials_are_escaped_in_text_and_attribute_values() {
        let el = Element::new("body")
            .with_attr("a", "'\"<>&")
            .with_text("1 < 2 & 3 > 2, \"quoted\" 'single'");
        assert_eq!(
            to_xml(&el),
            "<body a='&apos;&quot;&lt;&gt;&amp;'>1 &lt; 2 &amp; 3 &gt; 2, &quot;quoted&quot; &apos;single&apos;</body>"
        );
    }

    #[test]
    fn xmlns_is_left_out_when_it_equals_the_parents_own_xmlns() {
        let el = Element::with_ns("message", "jabber:client")
            .with_child(Element::with_ns("body", "jabber:client").with_text("hi"))
            .with_child(
                Element::with_ns("x", "urn:x")
                    .with_child(Element::with_ns("y", "urn:x"))
                    .with_child(Element::with_ns("z", "jabber:client")),
            );
        assert_eq!(
            to_xml(&el),
            "<message xmlns='jabber:client'><body>hi</body><x xmlns='urn:x'><y/><z xmlns='jabber:client'/></x></message>"
        );
    }

    #[test]
    fn xmlns_is_compared_with_the_parents_raw_attribute_not_its_inherited_namespace() {
        // <b> has no xmlns of its own, so Prosody passes nil as the parent namespace
        // of <c>, and writes c's xmlns even though it is the namespace <b> inherited.
        let el = Element::with_ns("a", "urn:a")
            .with_child(Element::new("b").with_child(Element::with_ns("c", "urn:a")));
        assert_eq!(
            to_xml(&el),
            "<a xmlns='urn:a'><b><c xmlns='urn:a'/></b></a>"
        );
    }

    #[test]
    fn namespaced_attributes_get_numbered_prefixes_counting_per_element() {
        let el = Element::new("a")
            .with_attr("urn:one\u{1}x", "1")
            .with_attr("plain", "p")
            .with_attr("urn:two\u{1}y", "2&")
            .with_child(Element::new("b").with_attr("urn:three\u{1}z", "3"));
        assert_eq!(
            to_xml(&el),
            "<a xmlns:ns1='urn:one' ns1:x='1' plain='p' xmlns:ns2='urn:two' ns2:y='2&amp;'><b xmlns:ns1='urn:three' ns1:z='3'/></a>"
        );
    }

    #[test]
    fn xml_lang_is_written_with_its_xml_prefix() {
        let el = Element::new("body")
            .with_attr("xml:lang", "en")
            .with_text("hi");
        assert_eq!(to_xml(&el), "<body xml:lang='en'>hi</body>");
    }

    #[test]
    fn text_is_written_as_is_apart_from_the_five_specials_and_carriage_return() {
        let el = Element::new("body").with_text("  tab\tnewline\n emoji 😀 שלום مرحبا\r\n");
        assert_eq!(
            to_xml(&el),
            "<body>  tab\tnewline\n emoji 😀 שלום مرحبا&#13;\n</body>"
        );
    }

    #[test]
    fn references_in_a_namespace_declaration_are_decoded_as_expat_does() {
        let el = parse_xml("<a xmlns='urn:x:&apos;&amp;&#x41;' xmlns:p='urn:&lt;p&gt;' p:b='1'/>")
            .unwrap();
        assert_eq!(el.xmlns(), Some("urn:x:'&A"));
        assert_eq!(el.attrs[1], ("urn:<p>\u{1}b".to_owned(), "1".to_owned()));
        assert_eq!(parse_xml(&to_xml(&el)).unwrap(), el);
        assert!(matches!(
            parse_xml("<a xmlns='urn:&bogus;'/>"),
            Err(StanzaError::UnknownEntity { .. })
        ));
        assert!(parse_xml("<a xmlns:p='urn:&#0;'/>").is_err());
    }

    #[test]
    fn carriage_returns_and_attribute_whitespace_survive_a_round_trip() {
        // A client may send `&#13;` (or `&#10;` in an attribute); Prosody hands us the
        // raw character, and a raw \r or an attribute's raw tab/newline would come
        // back from the parser as \n or a space.
        let el = Element::new("body")
            .with_attr("id", "a\tb\nc\rd")
            .with_text("line\r\nnext\rlast");
        let xml = to_xml(&el);
        assert_eq!(
            xml,
            "<body id='a&#9;b&#10;c&#13;d'>line&#13;\nnext&#13;last</body>"
        );
        assert_eq!(parse_xml(&xml).unwrap(), el);
    }

    // --- parse_xml: the model Prosody builds ----------------------------------

    #[test]
    fn the_xep_message_parses_into_prosodys_model() {
        let el = parse_xml(XEP_MESSAGE).unwrap();
        assert_eq!(el.name, "message");
        assert_eq!(
            el.attrs,
            vec![
                ("to".to_owned(), "juliet@capulet.lit/balcony".to_owned()),
                ("from".to_owned(), "romeo@montague.lit/orchard".to_owned()),
                ("type".to_owned(), "chat".to_owned()),
            ]
        );
        assert_eq!(
            el.get_child_text("body", None).as_deref(),
            Some("Call me but love, and I'll be married ere the morning light.")
        );
        assert_eq!(
            to_xml(&el),
            "<message to='juliet@capulet.lit/balcony' from='romeo@montague.lit/orchard' type='chat'><body>Call me but love, and I&apos;ll be married ere the morning light.</body></message>"
        );
    }

    #[test]
    fn the_xep_result_keeps_its_namespaces_and_whitespace() {
        let el = parse_xml(XEP_RESULT).unwrap();
        assert_eq!(el.xmlns(), None);
        let result = el.get_child("result", Some("urn:xmpp:mam:2")).unwrap();
        assert_eq!(result.attr("queryid"), Some("f27"));
        assert_eq!(result.attr("id"), Some("28482-98726-73623"));
        let forwarded = result
            .get_child("forwarded", Some("urn:xmpp:forward:0"))
            .unwrap();
        let delay = forwarded
            .get_child("delay", Some("urn:xmpp:delay"))
            .unwrap();
        assert_eq!(delay.attr("stamp"), Some("2010-07-10T23:08:25Z"));
        let message = forwarded
            .get_child("message", Some("jabber:client"))
            .unwrap();
        assert_eq!(message.attr("type"), Some("chat"));
        // <body> inherited jabber:client and, as in Prosody, carries it itself.
        let body = message.get_child("body", None).unwrap();
        assert_eq!(body.xmlns(), Some("jabber:client"));
        assert_eq!(
            body.text(),
            "Call me but love, and I'll be married ere the morning light."
        );
        assert_eq!(el.children[0], Node::Text("\n  ".into()));
        assert_eq!(
            to_xml(&el),
            "<message id='aeb213' to='juliet@capulet.lit/chamber'>
  <result xmlns='urn:xmpp:mam:2' queryid='f27' id='28482-98726-73623'>
    <forwarded xmlns='urn:xmpp:forward:0'>
      <delay xmlns='urn:xmpp:delay' stamp='2010-07-10T23:08:25Z'/>
      <message xmlns='jabber:client' to='juliet@capulet.lit/balcony' from='romeo@montague.lit/orchard' type='chat'>
        <body>Call me but love, and I&apos;ll be married ere the morning light.</body>
      </message>
    </forwarded>
  </result>
</message>"
        );
    }

    #[test]
    fn parse_then_serialise_then_parse_gives_the_same_stanza() {
        for xml in [
            XEP_MESSAGE,
            XEP_RESULT,
            "<a xmlns='urn:a' xmlns:p='urn:p' p:x='1' xml:lang='fr'><p:b c='&lt;&amp;&gt;'>t&#233;xt &#x1F600;</p:b><![CDATA[<raw>&]]></a>",
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field></x>",
        ] {
            let first = parse_xml(xml).unwrap();
            let again = parse_xml(&to_xml(&first)).unwrap();
            assert_eq!(sorted(again), sorted(first), "round trip of {xml}");
        }
    }

    #[test]
    fn every_element_in_a_namespace_carries_it_as_xmlns() {
        let el =
            parse_xml("<iq xmlns='jabber:client'><query xmlns='urn:xmpp:mam:2'><x/></query></iq>")
                .unwrap();
        assert_eq!(el.xmlns(), Some("jabber:client"));
        let query = el.get_child("query", Some("urn:xmpp:mam:2")).unwrap();
        assert_eq!(query.tags().next().unwrap().xmlns(), Some("urn:xmpp:mam:2"));
        assert_eq!(
            to_xml(&el),
            "<iq xmlns='jabber:client'><query xmlns='urn:xmpp:mam:2'><x/></query></iq>"
        );
    }

    #[test]
    fn prefixed_elements_become_a_local_name_and_an_xmlns() {
        let el = parse_xml(
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><stream:x/><y/></stream:features>",
        )
        .unwrap();
        assert_eq!(el.name, "features");
        assert_eq!(
            el.attrs,
            vec![(
                "xmlns".to_owned(),
                "http://etherx.jabber.org/streams".to_owned()
            )]
        );
        let children: Vec<_> = el.tags().map(|t| (t.name.as_str(), t.xmlns())).collect();
        assert_eq!(
            children,
            vec![("x", Some("http://etherx.jabber.org/streams")), ("y", None)]
        );
    }

    #[test]
    fn namespace_declarations_are_not_kept_as_attributes() {
        let el = parse_xml("<a xmlns='urn:a' xmlns:p='urn:p' b='1'/>").unwrap();
        assert_eq!(
            el.attrs,
            vec![
                ("xmlns".to_owned(), "urn:a".to_owned()),
                ("b".to_owned(), "1".to_owned())
            ]
        );
    }

    #[test]
    fn an_element_outside_any_namespace_has_no_xmlns() {
        let el = parse_xml("<a xmlns='urn:a'><b xmlns=''/></a>").unwrap();
        assert_eq!(el.tags().next().unwrap().attrs, vec![]);
    }

    #[test]
    fn foreign_namespace_attributes_are_keyed_namespace_then_soh_then_name() {
        let el = parse_xml("<message xmlns:e='urn:example' e:hint='yes' to='a@b'/>").unwrap();
        assert_eq!(
            el.attrs,
            vec![
                ("urn:example\u{1}hint".to_owned(), "yes".to_owned()),
                ("to".to_owned(), "a@b".to_owned())
            ]
        );
        assert_eq!(
            to_xml(&el),
            "<message xmlns:ns1='urn:example' ns1:hint='yes' to='a@b'/>"
        );
    }

    #[test]
    fn xml_lang_keeps_its_xml_colon_key() {
        let el = parse_xml("<body xml:lang='de' xml:space='preserve'>Hallo</body>").unwrap();
        assert_eq!(el.attr("xml:lang"), Some("de"));
        assert_eq!(el.attr("xml:space"), Some("preserve"));
        assert_eq!(
            to_xml(&el),
            "<body xml:lang='de' xml:space='preserve'>Hallo</body>"
        );
    }

    #[test]
    fn entity_and_character_references_are_decoded_in_text_and_attributes() {
        let el = parse_xml(
            "<body a='&lt;&gt;&amp;&apos;&quot;&#65;&#x42;'>&lt;&gt;&amp;&apos;&quot; &#233;&#xE9; &#x1F600;</body>",
        )
        .unwrap();
        assert_eq!(el.attr("a"), Some("<>&'\"AB"));
        assert_eq!(el.children, vec![Node::Text("<>&'\" éé 😀".into())]);
    }

    #[test]
    fn cdata_is_text() {
        let el = parse_xml("<body>a<![CDATA[<b>&amp;]]>c</body>").unwrap();
        assert_eq!(el.children, vec![Node::Text("a<b>&amp;c".into())]);
    }

    #[test]
    fn whitespace_in_text_is_kept_exactly() {
        let el = parse_xml("<body>  two  spaces\n\tand a tab  </body>").unwrap();
        assert_eq!(el.text(), "  two  spaces\n\tand a tab  ");
        let el = parse_xml("<a> <b/> </a>").unwrap();
        assert_eq!(
            el.children,
            vec![
                Node::Text(" ".into()),
                Node::Element(Element::new("b")),
                Node::Text(" ".into())
            ]
        );
    }

    #[test]
    fn line_ends_are_normalised_to_newline_as_every_xml_parser_does() {
        let el = parse_xml("<body>a\r\nb\rc</body>").unwrap();
        assert_eq!(el.text(), "a\nb\nc");
    }

    #[test]
    fn whitespace_in_attribute_values_is_normalised_to_spaces_as_expat_does() {
        let el = parse_xml("<a v='x\ty\nz' w='&#10;'/>").unwrap();
        assert_eq!(el.attr("v"), Some("x y z"));
        assert_eq!(el.attr("w"), Some("\n"));
    }

    #[test]
    fn unicode_text_survives_emoji_right_to_left_and_combining_marks() {
        let text = "😀👩‍👩‍👧 שלום עולם مرحبا e\u{301} \u{202E}rtl\u{202C} 𝄞";
        let xml = format!("<body xml:lang='he'>{text}</body>");
        let el = parse_xml(&xml).unwrap();
        assert_eq!(el.text(), text);
        assert_eq!(to_xml(&el), xml);
    }

    #[test]
    fn unicode_names_are_accepted() {
        let el = parse_xml("<café xmlns='urn:ü' ñ='1'/>").unwrap();
        assert_eq!(el.name, "café");
        assert_eq!(el.attr("ñ"), Some("1"));
    }

    #[test]
    fn an_xml_declaration_and_surrounding_whitespace_are_accepted() {
        let el = parse_xml("<?xml version='1.0' encoding='UTF-8'?>\n<a/>\n").unwrap();
        assert_eq!(el, Element::new("a"));
    }

    #[test]
    fn a_leading_byte_order_mark_is_accepted_as_expat_accepts_it() {
        assert_eq!(parse_xml("\u{FEFF}<a/>").unwrap(), Element::new("a"));
        assert_eq!(
            parse_xml("\u{FEFF}<?xml version='1.0'?><a/>").unwrap(),
            Element::new("a")
        );
    }

    // --- parse_xml: what it refuses --------------------------------------------

    #[test]
    fn a_literal_nul_is_not_xml() {
        assert_eq!(
            err("<body>a\0b</body>"),
            StanzaError::InvalidChar {
                position: 7,
                code: 0
            }
        );
        assert_eq!(
            err("<body>a\0b</body>").to_string(),
            "character U+0000 at byte 7 is not allowed in XML"
        );
    }

    #[test]
    fn character_references_to_characters_xml_forbids_are_refused() {
        assert!(matches!(
            err("<body>&#0;</body>"),
            StanzaError::Malformed { position: 6, .. }
        ));
        assert_eq!(
            err("<body>&#1;</body>"),
            StanzaError::InvalidChar {
                position: 6,
                code: 1
            }
        );
        assert_eq!(
            err("<body>&#xFFFE;</body>"),
            StanzaError::InvalidChar {
                position: 6,
                code: 0xFFFE
            }
        );
        assert_eq!(
            err("<a v='&#27;'/>"),
            StanzaError::InvalidChar {
                position: 0,
                code: 27
            }
        );
    }

    #[test]
    fn literal_control_characters_and_non_characters_are_refused() {
        assert_eq!(
            err("<a>\u{1b}</a>"),
            StanzaError::InvalidChar {
                position: 3,
                code: 0x1b
            }
        );
        assert_eq!(
            err("<a v='\u{1}'/>"),
            StanzaError::InvalidChar {
                position: 6,
                code: 1
            }
        );
        assert_eq!(
            err("<a>\u{FFFF}</a>"),
            StanzaError::InvalidChar {
                position: 3,
                code: 0xFFFF
            }
        );
    }

    #[test]
    fn a_doctype_is_refused_so_no_entity_can_be_declared() {
        let billion_laughs = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;'>]><lolz>&lol2;</lolz>";
        assert_eq!(err(billion_laughs), StanzaError::Doctype { position: 21 });
        assert_eq!(
            err(billion_laughs).to_string(),
            "DOCTYPE declarations are not allowed (at byte 21)"
        );
    }

    #[test]
    fn comments_and_processing_instructions_are_refused_as_prosody_refuses_them() {
        assert_eq!(
            err("<a><!-- hi --></a>"),
            StanzaError::Comment { position: 3 }
        );
        assert_eq!(err("<!-- hi --><a/>"), StanzaError::Comment { position: 0 });
        assert_eq!(
            err("<a><?php echo 1; ?></a>"),
            StanzaError::ProcessingInstruction { position: 3 }
        );
    }

    #[test]
    fn unknown_entities_are_refused() {
        assert_eq!(
            err("<body>&nbsp;</body>"),
            StanzaError::UnknownEntity {
                position: 6,
                name: "nbsp".into()
            }
        );
        assert_eq!(
            err("<body>&nbsp;</body>").to_string(),
            "unknown entity '&nbsp;' at byte 6"
        );
        assert_eq!(
            err("<a v='&nbsp;'/>"),
            StanzaError::UnknownEntity {
                position: 0,
                name: "nbsp".into()
            }
        );
    }

    #[test]
    fn a_bare_ampersand_is_refused() {
        assert!(matches!(
            err("<body>fish & chips</body>"),
            StanzaError::Malformed { .. }
        ));
        assert!(matches!(err("<a v='a&b'/>"), StanzaError::Malformed { .. }));
    }

    #[test]
    fn unknown_prefixes_are_refused() {
        assert_eq!(
            err("<p:a/>"),
            StanzaError::UnknownPrefix {
                position: 0,
                prefix: "p".into()
            }
        );
        assert_eq!(
            err("<a q:x='1'/>"),
            StanzaError::UnknownPrefix {
                position: 0,
                prefix: "q".into()
            }
        );
        assert_eq!(
            err("<a xmlns:p='urn:p'/><!-- out of scope -->").to_string(),
            "comments are not allowed (at byte 20)"
        );
        assert_eq!(
            err("<a><b xmlns:p='urn:p'/><p:c/></a>"),
            StanzaError::UnknownPrefix {
                position: 23,
                prefix: "p".into()
            }
        );
    }

    #[test]
    fn duplicate_attributes_are_refused_by_name_and_by_namespace() {
        assert_eq!(
            err("<a x='1' x='2'/>"),
            StanzaError::DuplicateAttribute {
                position: 0,
                name: "x".into()
            }
        );
        assert_eq!(
            err("<a xmlns:p='urn:n' xmlns:q='urn:n' p:x='1' q:x='2'/>"),
            StanzaError::DuplicateAttribute {
                position: 0,
                name: "{urn:n}x".into()
            }
        );
        assert_eq!(
            err("<a xmlns:p='urn:n' xmlns:q='urn:n' p:x='1' q:x='2'/>").to_string(),
            "duplicate attribute '{urn:n}x' at byte 0"
        );
    }

    #[test]
    fn an_unclosed_element_is_refused() {
        assert_eq!(
            err("<message><body>hi</body>"),
            StanzaError::Unclosed {
                name: "message".into()
            }
        );
        assert_eq!(
            err("<message><body>hi</body>").to_string(),
            "element <message> is not closed at the end of the input"
        );
    }

    #[test]
    fn a_mismatched_end_tag_is_refused() {
        let e = err("<message><body>hi</message>");
        assert!(matches!(e, StanzaError::Malformed { .. }), "{e:?}");
    }

    #[test]
    fn a_stray_end_tag_is_refused() {
        let e = err("<a/></b>");
        assert!(matches!(e, StanzaError::Malformed { .. }), "{e:?}");
    }

    #[test]
    fn a_second_root_element_is_refused() {
        assert_eq!(err("<a/><b/>"), StanzaError::MultipleRoots { position: 4 });
        assert_eq!(
            err("<a></a> <b>x</b>"),
            StanzaError::MultipleRoots { position: 8 }
        );
    }

    #[test]
    fn text_outside_the_root_is_refused() {
        assert_eq!(err("hi<a/>"), StanzaError::TextOutsideRoot { position: 0 });
        assert_eq!(err("<a/>hi"), StanzaError::TextOutsideRoot { position: 4 });
        assert_eq!(
            err("<a/>&amp;"),
            StanzaError::TextOutsideRoot { position: 4 }
        );
    }

    #[test]
    fn input_without_an_element_is_refused() {
        assert_eq!(err(""), StanzaError::NoRoot);
        assert_eq!(err("  \n"), StanzaError::NoRoot);
        assert_eq!(err("<?xml version='1.0'?>"), StanzaError::NoRoot);
    }

    #[test]
    fn invalid_names_are_refused() {
        for xml in [
            "<1a/>",
            "<a 1b='x'/>",
            "<a:b:c xmlns:a='u'/>",
            "<a\"b/>",
            "<-a/>",
        ] {
            let e = err(xml);
            assert!(matches!(e, StanzaError::Malformed { .. }), "{xml}: {e:?}");
        }
        assert_eq!(
            err("<1a/>").to_string(),
            "malformed XML at byte 0: '1a' is not a valid XML name"
        );
    }

    #[test]
    fn a_less_than_sign_in_an_attribute_value_is_refused() {
        assert_eq!(
            err("<a v='<'/>").to_string(),
            "malformed XML at byte 0: '<' in the value of attribute 'v'"
        );
    }

    #[test]
    fn a_cdata_end_marker_in_text_is_refused() {
        assert_eq!(
            err("<a>x]]>y</a>").to_string(),
            "malformed XML at byte 3: ']]>' is not allowed in text"
        );
    }

    #[test]
    fn truncated_markup_is_refused() {
        for xml in [
            "<a",
            "<a b='1",
            "<a><![CDATA[x</a>",
            "<a><!-- x</a>",
            "<",
            "<a></a",
        ] {
            let e = err(xml);
            assert!(
                matches!(
                    e,
                    StanzaError::Malformed { .. }
                        | StanzaError::Comment { .. }
                        | StanzaError::Unclosed { .. }
                ),
                "{xml}: {e:?}"
            );
        }
    }

    #[test]
    fn nesting_up_to_the_limit_parses() {
        let xml = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        let mut el = &parse_xml(&xml).unwrap();
        let mut depth = 1;
        while let Some(child) = el.tags().next() {
            el = child;
            depth += 1;
        }
        assert_eq!(depth, MAX_DEPTH);
    }

    #[test]
    fn nesting_beyond_the_limit_is_refused() {
        let xml = format!(
            "{}{}",
            "<a>".repeat(MAX_DEPTH + 1),
            "</a>".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(
            err(&xml),
            StanzaError::TooDeep {
                position: 3 * MAX_DEPTH as u64,
                limit: MAX_DEPTH
            }
        );
    }

    #[test]
    fn hostile_depth_fails_fast_without_exhausting_the_stack() {
        let xml = "<a>".repeat(1_000_000);
        assert!(matches!(err(&xml), StanzaError::TooDeep { .. }));
    }

    #[test]
    fn many_attributes_on_one_element_are_handled_in_reasonable_time() {
        let mut xml = String::from("<a");
        for i in 0..100_000 {
            xml.push_str(&format!(" a{i}='v'"));
        }
        xml.push_str(" a5='dup'/>");
        assert_eq!(
            err(&xml),
            StanzaError::DuplicateAttribute {
                position: 0,
                name: "a5".into()
            }
        );
    }

    #[test]
    fn attributes_not_separated_by_whitespace_are_refused() {
        assert_eq!(
            err("<a b='1'c='2'/>").to_string(),
            "malformed XML at byte 0: attributes must be separated by whitespace"
        );
    }

    #[test]
    fn forbidden_namespace_declarations_are_refused() {
        assert_eq!(
            err("<a xmlns:p=''/>").to_string(),
            "malformed XML at byte 0: the namespace prefix 'p' cannot be undeclared"
        );
        assert_eq!(
            err("<a xmlns='http://www.w3.org/XML/1998/namespace'/>").to_string(),
            "malformed XML at byte 0: the default namespace cannot be 'http://www.w3.org/XML/1998/namespace'"
        );
        assert!(matches!(
            err("<a xmlns:p='http://www.w3.org/XML/1998/namespace'/>"),
            StanzaError::Malformed { .. }
        ));
    }

    #[test]
    fn an_xml_declaration_must_come_first_and_name_a_version() {
        assert_eq!(
            err(" <?xml version='1.0'?><a/>").to_string(),
            "malformed XML at byte 1: XML declaration not at the start of the input"
        );
        assert!(matches!(
            err("<?xml encoding='UTF-8'?><a/>"),
            StanzaError::Malformed { position: 0, .. }
        ));
    }

    // --- against the real thing ----------------------------------------------

    /// `tostring()` of stanzas built with Prosody's own `util.stanza`, compared with
    /// `to_xml` of the same stanzas (one attribute per element, since Prosody writes
    /// attributes in `pairs` order).
    #[test]
    fn to_xml_writes_what_prosodys_tostring_writes() {
        use std::path::Path;
        use std::process::Command;

        if !Path::new("/usr/lib/prosody/util/stanza.lua").exists() {
            println!("skipped: Prosody is not installed in /usr/lib/prosody");
            return;
        }
        let script = r#"
package.path = "/usr/lib/prosody/?.lua;" .. package.path
package.cpath = "/usr/lib/prosody/?.so;" .. package.cpath
local st = require "util.stanza"
local out = {}
out[#out+1] = st.message({ to = "juliet@capulet.lit/balcony" })
    :tag("body"):text("Call me but love, and I'll be married ere the morning light."):up()
    :tag("active", { xmlns = "http://jabber.org/protocol/chatstates" })
out[#out+1] = st.stanza("result", { xmlns = "urn:xmpp:mam:2" })
    :tag("forwarded", { xmlns = "urn:xmpp:forward:0" })
        :tag("delay", { xmlns = "urn:xmpp:delay" }):up()
        :tag("message", { xmlns = "jabber:client" })
            :tag("body"):text("hi"):up()
            :tag("x", { xmlns = "jabber:client" }):up()
            :tag("y", { xmlns = "urn:y" }):tag("z", { xmlns = "urn:y" })
out[#out+1] = st.stanza("a", { ["urn:example\1hint"] = "v&<>'\"" })
    :tag("b", { ["xml:lang"] = "en" }):text("<&>\"' \t\n😀 שלום"):up()
    :tag("c", { ["urn:other\1x"] = "1" })
out[#out+1] = st.stanza("empty")
for _, s in ipairs(out) do io.write(tostring(s), "\0") end
"#;
        let output = match Command::new("lua5.4").arg("-e").arg(script).output() {
            Ok(o) => o,
            Err(e) => {
                println!("skipped: cannot run lua5.4: {e}");
                return;
            }
        };
        assert!(
            output.status.success(),
            "lua5.4 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let prosody: Vec<&str> = stdout.split_terminator('\0').collect();

        let ours = [
            Element::new("message")
                .with_attr("to", "juliet@capulet.lit/balcony")
                .with_child(
                    Element::new("body")
                        .with_text("Call me but love, and I'll be married ere the morning light."),
                )
                .with_child(Element::with_ns(
                    "active",
                    "http://jabber.org/protocol/chatstates",
                )),
            Element::with_ns("result", "urn:xmpp:mam:2").with_child(
                Element::with_ns("forwarded", "urn:xmpp:forward:0")
                    .with_child(Element::with_ns("delay", "urn:xmpp:delay"))
                    .with_child(
                        Element::with_ns("message", "jabber:client")
                            .with_child(Element::new("body").with_text("hi"))
                            .with_child(Element::with_ns("x", "jabber:client"))
                            .with_child(
                                Element::with_ns("y", "urn:y")
                                    .with_child(Element::with_ns("z", "urn:y")),
                            ),
                    ),
            ),
            Element::new("a")
                .with_attr("urn:example\u{1}hint", "v&<>'\"")
                .with_child(
                    Element::new("b")
                        .with_attr("xml:lang", "en")
                        .with_text("<&>\"' \t\n😀 שלום"),
                )
                .with_child(Element::new("c").with_attr("urn:other\u{1}x", "1")),
            Element::new("empty"),
        ];
        assert_eq!(prosody.len(), ours.len(), "Prosody wrote {prosody:?}");
        for (theirs, el) in prosody.iter().zip(&ours) {
            assert_eq!(&to_xml(el), theirs);
        }
    }

    /// Prosody's `util.xml.parse` (Expat) and `parse_xml` accept and refuse the same
    /// inputs, and what both accept serialises the same (one attribute per element, as
    /// Prosody writes attributes in `pairs` order).
    #[test]
    fn parse_xml_accepts_and_refuses_what_prosodys_util_xml_does() {
        use std::io::Write;
        use std::path::Path;
        use std::process::{Command, Stdio};

        if !Path::new("/usr/lib/prosody/util/xml.lua").exists() {
            println!("skipped: Prosody is not installed in /usr/lib/prosody");
            return;
        }
        let inputs = [
            "<message to='juliet@capulet.lit/balcony'><body>Call me but love, and I'll be married ere the morning light.</body></message>",
            "<message xmlns='jabber:client'><body xml:lang='en'>a &amp; b &lt; c &#x1F600; &#233;</body></message>",
            "<a xmlns:p='urn:p'><p:b/><c p:x='1'/><d xmlns='urn:d'><e/></d></a>",
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><x/></stream:features>",
            "<a>  spaced \t text\n</a>",
            "<a><![CDATA[<b>]]></a>",
            "<?xml version='1.0'?><a/>",
            "<a v='x\ty'/>",
            "<a v='&#x9;&#xA;'/>",
            "<a xmlns=''/>",
            "<xml:a/>",
            "<a xml:lang='en'/>",
            "<a xmlns:a='urn:a' a:xmlns='1'/>",
            "<a></a >",
            "<a>></a>",
            // Refused by both:
            "<a b='1'c='2'/>",
            "<a b/>",
            "<a b=1/>",
            "<a></ a>",
            "< a/>",
            "<a xmlns:p=''/>",
            "<a xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
            "<a xmlns='http://www.w3.org/XML/1998/namespace'/>",
            "<a>]]></a>",
            "<a>&#x;</a>",
            "<a>&#1;</a>",
            "<a>&#1114112;</a>",
            "<a>&lt</a>",
            "<a>&nbsp;</a>",
            " <?xml version='1.0'?><a/>",
            "<?xml encoding='utf-8'?><a/>",
            "<a/><?xml version='1.0'?>",
            "<![CDATA[x]]><a/>",
            "<a/><b/>",
            "<a/>x",
            "<a>",
            "<a><b></a></b>",
            "<!DOCTYPE a><a/>",
            "<a><!-- c --></a>",
            "<a><?pi x?></a>",
            "<p:a/>",
            "<a x='1' x='2'/>",
            "",
        ];
        let script = r#"
package.path = "/usr/lib/prosody/?.lua;" .. package.path
package.cpath = "/usr/lib/prosody/?.so;" .. package.cpath
local xml = require "util.xml"
for input in io.read("a"):gmatch("([^\0]*)\0") do
    local ok, stanza = pcall(xml.parse, input)
    io.write(ok and stanza and ("OK " .. tostring(stanza)) or "ERR", "\0")
end
"#;
        let mut child = match Command::new("lua5.4")
            .arg("-e")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                println!("skipped: cannot run lua5.4: {e}");
                return;
            }
        };
        let mut stdin = child.stdin.take().unwrap();
        for input in inputs {
            stdin.write_all(input.as_bytes()).unwrap();
            stdin.write_all(b"\0").unwrap();
        }
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "lua5.4 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let prosody: Vec<&str> = stdout.split_terminator('\0').collect();
        assert_eq!(prosody.len(), inputs.len(), "Prosody wrote {prosody:?}");
        for (input, theirs) in inputs.iter().zip(prosody) {
            let ours = match parse_xml(input) {
                // Prosody's tostring writes these three raw (see `to_xml`).
                Ok(el) => format!("OK {}", to_xml(&el))
                    .replace("&#9;", "\t")
                    .replace("&#10;", "\n")
                    .replace("&#13;", "\r"),
                Err(_) => "ERR".to_owned(),
            };
            assert_eq!(ours, theirs, "for input {input:?}");
        }
    }
}
