//! Prosody stanzas (`util.stanza` tables) to [`Element`] and back.
//!
//! A Prosody stanza is a table `{ name = …, attr = { … }, tags = { … }, [1..n] = … }`
//! with `util.stanza`'s `stanza_mt` as metatable: the array part holds the children in
//! order (element tables and strings), `tags` the same element tables again. We read
//! such tables without invoking metamethods, and build them exactly as `util.stanza`
//! does, so Prosody code cannot tell ours from its own.

use mlua::{Lua, Table, Value};

use crate::stanza::{Element, Node, MAX_DEPTH};

/// Reads a Prosody stanza table into an [`Element`].
///
/// `name` must be a string; `attr` entries with string keys and string values are
/// kept (others ignored), `xmlns` first and the rest sorted by key, so the same
/// stanza always gives the same XML; the array part gives the children in order (a
/// table is an element, a string is text). Fails, saying where, on a missing name, a
/// child that is neither, a string that is not UTF-8, or nesting deeper than
/// [`MAX_DEPTH`] (which also stops a table that contains itself).
pub fn element_from_lua(t: &Table) -> mlua::Result<Element> {
    read_element(t, 1)
}

fn read_element(t: &Table, depth: usize) -> mlua::Result<Element> {
    if depth > MAX_DEPTH {
        return Err(mlua::Error::runtime(format!(
            "stanza nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let name = match t.raw_get::<Value>("name")? {
        Value::String(s) => utf8(&s, || "stanza element name".to_owned())?,
        other => {
            return Err(mlua::Error::runtime(format!(
                "stanza element has no string name (found {})",
                other.type_name()
            )))
        }
    };

    let mut attrs = Vec::new();
    match t.raw_get::<Value>("attr")? {
        Value::Table(attr) => {
            for pair in attr.pairs::<Value, Value>() {
                if let (Value::String(k), Value::String(v)) = pair? {
                    let key = utf8(&k, || format!("an attribute name of <{name}>"))?;
                    let value = utf8(&v, || format!("attribute '{key}' of <{name}>"))?;
                    attrs.push((key, value));
                }
            }
        }
        Value::Nil => {}
        other => {
            return Err(mlua::Error::runtime(format!(
                "stanza <{name}>: attr is a {}, not a table",
                other.type_name()
            )))
        }
    }
    attrs.sort_unstable_by(|(a, _), (b, _)| (a != "xmlns", a).cmp(&(b != "xmlns", b)));

    let len = t.raw_len();
    let mut children = Vec::with_capacity(len);
    for i in 1..=len {
        match t.raw_get::<Value>(i)? {
            Value::Table(child) => children.push(Node::Element(read_element(&child, depth + 1)?)),
            Value::String(s) => {
                children.push(Node::Text(utf8(&s, || format!("text of <{name}>"))?));
            }
            other => {
                return Err(mlua::Error::runtime(format!(
                    "stanza <{name}>: child {i} is a {}, not an element or text",
                    other.type_name()
                )))
            }
        }
    }
    Ok(Element {
        name,
        attrs,
        children,
    })
}

/// A Lua string as a Rust `String`, or an error naming `what` is not UTF-8.
fn utf8(s: &mlua::LuaString, what: impl FnOnce() -> String) -> mlua::Result<String> {
    match s.to_str() {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => Err(mlua::Error::runtime(format!(
            "{} is not valid UTF-8",
            what()
        ))),
    }
}

/// Builds the Prosody stanza table for `el`, as `util.stanza` builds it.
///
/// Every element table gets `name`, `attr`, `tags` and its children in the array part;
/// `tags` holds the very same child tables as the array part; each element table
/// (nested ones too) gets `stanza_mt`, which the caller passes in from
/// `require "util.stanza".stanza_mt`. Tables are preallocated and filled with raw sets:
/// this runs for every message of every archive page.
pub fn element_to_lua(lua: &Lua, el: &Element, stanza_mt: &Table) -> mlua::Result<Table> {
    build_element(lua, el, stanza_mt, 1)
}

fn build_element(lua: &Lua, el: &Element, stanza_mt: &Table, depth: usize) -> mlua::Result<Table> {
    if depth > MAX_DEPTH {
        return Err(mlua::Error::runtime(format!(
            "stanza nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let t = lua.create_table_with_capacity(el.children.len(), 3)?;
    t.raw_set("name", el.name.as_str())?;

    let attr = lua.create_table_with_capacity(0, el.attrs.len())?;
    for (k, v) in &el.attrs {
        attr.raw_set(k.as_str(), v.as_str())?;
    }
    t.raw_set("attr", attr)?;

    let tags = lua.create_table_with_capacity(el.tag_count(), 0)?;
    let mut ntags = 0;
    for (i, child) in el.children.iter().enumerate() {
        match child {
            Node::Element(c) => {
                let ct = build_element(lua, c, stanza_mt, depth + 1)?;
                ntags += 1;
                tags.raw_set(ntags, &ct)?;
                t.raw_set(i + 1, ct)?;
            }
            Node::Text(s) => t.raw_set(i + 1, s.as_str())?,
        }
    }
    t.raw_set("tags", tags)?;
    t.set_metatable(Some(stanza_mt.clone()))?;
    Ok(t)
}
