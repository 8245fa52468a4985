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

#[cfg(all(test, feature = "vendored"))]
mod tests {
    use super::*;
    use crate::stanza::{parse_xml, to_xml};

    /// A stand-in for `util.stanza`'s `stanza_mt`: a named metatable indexing itself,
    /// with a `get_child_text` so Lua code can use the stanzas we build.
    fn lua_with_stanza_mt() -> (Lua, Table) {
        let lua = Lua::new();
        let mt: Table = lua
            .load(
                r#"
                local mt = { __name = "stanza" }
                mt.__index = mt
                function mt:get_child_text(name, xmlns)
                    xmlns = xmlns or self.attr.xmlns
                    for _, tag in ipairs(self.tags) do
                        if tag.name == name and (tag.attr.xmlns or self.attr.xmlns) == xmlns then
                            return table.concat(tag, "")
                        end
                    end
                end
                return mt
            "#,
            )
            .eval()
            .unwrap();
        lua.globals().set("stanza_mt", &mt).unwrap();
        (lua, mt)
    }

    fn xep_result() -> Element {
        parse_xml(
            "<message id='aeb213' to='juliet@capulet.lit/chamber'>\
               <result xmlns='urn:xmpp:mam:2' queryid='f27' id='28482-98726-73623'>\
                 <forwarded xmlns='urn:xmpp:forward:0'>\
                   <delay xmlns='urn:xmpp:delay' stamp='2010-07-10T23:08:25Z'/>\
                   <message xmlns='jabber:client' to='juliet@capulet.lit/balcony' \
                     from='romeo@montague.lit/orchard' type='chat' xml:lang='en' \
                     xmlns:e='urn:example' e:hint='yes'>\
                     <body>Call me but love, and I'll be married ere the morning light.</body>\
                     <thread>  spaced  </thread>mixed text 😀\
                   </message>\
                 </forwarded>\
               </result>\
             </message>",
        )
        .unwrap()
    }

    #[test]
    fn an_element_survives_the_trip_to_lua_and_back() {
        let (lua, mt) = lua_with_stanza_mt();
        let el = xep_result();
        let t = element_to_lua(&lua, &el, &mt).unwrap();
        let back = element_from_lua(&t).unwrap();
        // Lua's `attr` tables have no order: ours comes back `xmlns` first, then sorted.
        let mut expected = el.clone();
        sort_like_element_from_lua(&mut expected);
        assert_eq!(back, expected);
        assert_eq!(to_xml(&back), to_xml(&expected));
    }

    fn sort_like_element_from_lua(el: &mut Element) {
        el.attrs
            .sort_by(|(a, _), (b, _)| (a != "xmlns", a).cmp(&(b != "xmlns", b)));
        for c in &mut el.children {
            if let Node::Element(e) = c {
                sort_like_element_from_lua(e);
            }
        }
    }

    #[test]
    fn the_lua_table_has_prosodys_shape_with_tags_sharing_identity_with_children() {
        let (lua, mt) = lua_with_stanza_mt();
        let t = element_to_lua(&lua, &xep_result(), &mt).unwrap();
        lua.globals().set("s", t).unwrap();
        lua.load(
            r#"
            local function check(el)
                assert(getmetatable(el) == stanza_mt, "metatable on <" .. el.name .. ">")
                assert(type(el.attr) == "table" and type(el.tags) == "table")
                local ntags = 0
                for i = 1, #el do
                    local child = el[i]
                    if type(child) == "table" then
                        ntags = ntags + 1
                        assert(rawequal(el.tags[ntags], child), "tags[" .. ntags .. "] is child " .. i)
                        check(child)
                    else
                        assert(type(child) == "string")
                    end
                end
                assert(#el.tags == ntags)
            end
            check(s)
            assert(s.name == "message" and s.attr.id == "aeb213" and s.attr.xmlns == nil)
            local result = s.tags[1]
            assert(result.name == "result" and result.attr.xmlns == "urn:xmpp:mam:2")
            local inner = result.tags[1].tags[2]
            assert(inner.name == "message" and inner.attr.type == "chat")
            assert(inner.attr["xml:lang"] == "en")
            assert(inner.attr["urn:example\1hint"] == "yes")
            assert(inner:get_child_text("body") ==
                "Call me but love, and I'll be married ere the morning light.")
            assert(inner:get_child_text("thread") == "  spaced  ")
            assert(inner[#inner] == "mixed text 😀")
            assert(#s.tags[1].tags[1].tags[1] == 0, "<delay/> has no children")
        "#,
        )
        .exec()
        .unwrap();
    }

    #[test]
    fn a_stanza_built_in_lua_is_read_with_its_text_and_namespaced_attributes() {
        let (lua, _mt) = lua_with_stanza_mt();
        let t: Table = lua
            .load(
                r#"
                local body = setmetatable({ name = "body", attr = {}, tags = {}, "a < b", " & c" }, stanza_mt)
                local hint = setmetatable({ name = "store", attr = { xmlns = "urn:xmpp:hints" }, tags = {} }, stanza_mt)
                return setmetatable({
                    name = "message",
                    attr = { type = "chat", xmlns = "jabber:client", ["urn:x\1y"] = "z", [1] = "ignored", odd = 42 },
                    tags = { body, hint },
                    body, hint,
                }, stanza_mt)
            "#,
            )
            .eval()
            .unwrap();
        let el = element_from_lua(&t).unwrap();
        assert_eq!(
            el.attrs,
            vec![
                ("xmlns".to_owned(), "jabber:client".to_owned()),
                ("type".to_owned(), "chat".to_owned()),
                ("urn:x\u{1}y".to_owned(), "z".to_owned()),
            ]
        );
        assert_eq!(
            to_xml(&el),
            "<message xmlns='jabber:client' type='chat' xmlns:ns1='urn:x' ns1:y='z'><body>a &lt; b &amp; c</body><store xmlns='urn:xmpp:hints'/></message>"
        );
    }

    #[test]
    fn a_child_that_is_neither_element_nor_text_is_an_error_naming_it() {
        let (lua, _mt) = lua_with_stanza_mt();
        let t: Table = lua
            .load(r#"return { name = "body", attr = {}, tags = {}, "x", 42 }"#)
            .eval()
            .unwrap();
        let e = element_from_lua(&t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "runtime error: stanza <body>: child 2 is a integer, not an element or text"
        );
    }

    #[test]
    fn a_table_without_a_name_is_an_error() {
        let (lua, _mt) = lua_with_stanza_mt();
        let t: Table = lua.load(r#"return { attr = {} }"#).eval().unwrap();
        assert_eq!(
            element_from_lua(&t).unwrap_err().to_string(),
            "runtime error: stanza element has no string name (found nil)"
        );
    }

    #[test]
    fn text_that_is_not_utf8_is_an_error() {
        let (lua, _mt) = lua_with_stanza_mt();
        let t: Table = lua
            .load(r#"return { name = "body", attr = {}, tags = {}, "\xff\xfe" }"#)
            .eval()
            .unwrap();
        assert_eq!(
            element_from_lua(&t).unwrap_err().to_string(),
            "runtime error: text of <body> is not valid UTF-8"
        );
    }

    #[test]
    fn a_stanza_that_contains_itself_is_stopped_by_the_depth_limit() {
        let (lua, _mt) = lua_with_stanza_mt();
        let t: Table = lua
            .load(r#"local s = { name = "loop", attr = {}, tags = {} }; s[1] = s; s.tags[1] = s; return s"#)
            .eval()
            .unwrap();
        assert_eq!(
            element_from_lua(&t).unwrap_err().to_string(),
            format!("runtime error: stanza nested deeper than {MAX_DEPTH} levels")
        );
    }

    #[test]
    fn nesting_up_to_the_limit_crosses_both_ways() {
        let (lua, mt) = lua_with_stanza_mt();
        let mut el = Element::new("a");
        for _ in 1..MAX_DEPTH {
            el = Element::new("a").with_child(el);
        }
        let t = element_to_lua(&lua, &el, &mt).unwrap();
        assert_eq!(element_from_lua(&t).unwrap(), el);
        let deeper = Element::new("a").with_child(el);
        assert!(element_to_lua(&lua, &deeper, &mt).is_err());
    }
}
