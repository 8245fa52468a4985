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

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{QName, ResolveResult};
use quick_xml::{NsReader, XmlVersion};
use thiserror::Error;

/// The deepest element nesting [`parse_xml`] and the Lua conversion accept.
///
/// Real stanzas nest a handful of levels (a MAM result is message/result/forwarded/
/// message/body: five); the limit only bounds what hostile input can cost.
pub const MAX_DEPTH: usize = 256;

/// The namespace the `xml:` prefix is bound to (Namespaces in XML §3).
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

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
/// Only the attribute order differs: ours is document order, Prosody's is `pairs` order.
pub fn to_xml(el: &Element) -> String {
    let mut out = String::with_capacity(256);
    write_element(el, None, &mut out);
    out
}

fn write_element(el: &Element, parent_ns: Option<&str>, out: &mut String) {
    out.push('<');
    out.push_str(&el.name);
    let mut nsid = 0u32;
    for (key, value) in &el.attrs {
        if let Some((ns, local)) = key.split_once('\u{1}') {
            nsid += 1;
            out.push_str(" xmlns:ns");
            push_u32(out, nsid);
            out.push_str("='");
            escape_into(ns, out);
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
        escape_into(value, out);
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
            Node::Element(c) => write_element(c, own_ns, out),
            Node::Text(t) => escape_into(t, out),
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

/// Prosody's `xml_escape`: the five XML specials, nothing else.
fn escape_into(s: &str, out: &mut String) {
    let mut rest = s;
    while let Some(i) = rest.find(['\'', '"', '<', '>', '&']) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'\'' => "&apos;",
            b'"' => "&quot;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            _ => "&amp;",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
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
            Event::Decl(_) => {
                if position != 0 {
                    return Err(StanzaError::Malformed {
                        position,
                        reason: "XML declaration not at the start of the input".into(),
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
        ResolveResult::Bound(ns) if !ns.0.is_empty() => el.set_attr("xmlns", ns.0),
        ResolveResult::Bound(_) | ResolveResult::Unbound => {}
        ResolveResult::Unknown(prefix) => {
            return Err(StanzaError::UnknownPrefix { position, prefix });
        }
    }

    // quick-xml's own duplicate check is quadratic; ours (below) sorts.
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
        if key.as_namespace_binding().is_some() {
            // A declaration: it shaped the namespaces above, it is not an attribute.
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
            ResolveResult::Bound(ns) => format!("{}\u{1}{local}", ns.0),
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
