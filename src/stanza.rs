//! XML stanzas in Prosody's own model, as plain Rust data.
//!
//! Prosody (`util.stanza`) represents an element as a table with `name`, an `attr`
//! table, its children in order (elements and text) and a `tags` list of the child
//! elements. Namespaces are not resolved prefixes but an `xmlns` attribute: an element
//! whose `xmlns` is absent inherits its parent's. Attributes in a foreign namespace
//! are keyed `"<namespace>\u{1}<name>"`, except the `xml:` ones, which keep the key
//! `xml:lang`. We keep exactly that model so a stanza crosses the Lua boundary and
//! back without loss, and the XML we store is the XML Prosody itself would write.

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
