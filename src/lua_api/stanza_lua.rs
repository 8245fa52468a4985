//! Prosody stanzas (`util.stanza` tables) to [`Element`] and back.
//!
//! A Prosody stanza is a table `{ name = …, attr = { … }, tags = { … }, [1..n] = … }`
//! with `util.stanza`'s `stanza_mt` as metatable: the array part holds the children in
//! order (element tables and strings), `tags` the same element tables again. We read
//! such tables without invoking metamethods, and build them exactly as `util.stanza`
//! does, so Prosody code cannot tell ours from its own.
//!
//! Both directions run on every archived message and every result of a page, so they
//! speak Lua's C API directly inside one protected call (`Lua::exec_raw`) instead of
//! paying mlua's per-operation protection: measured with callgrind, building a
//! three-element message went from ~87k to a few thousand instructions.

use std::ffi::{c_char, c_int};

use mlua::{ffi, Lua, Table};

use crate::stanza::{Element, Node, MAX_DEPTH};

/// Reads a Prosody stanza table into an [`Element`].
///
/// `name` must be a string; `attr` entries with string keys and string values are
/// kept (others ignored), `xmlns` first and the rest sorted by key, so the same
/// stanza always gives the same XML; the array part gives the children in order (a
/// table is an element, a string is text). Fails, saying where, on a missing name, a
/// child that is neither, a string that is not UTF-8, or nesting deeper than
/// [`MAX_DEPTH`] (which also stops a table that contains itself).
pub fn element_from_lua(lua: &Lua, t: &Table) -> mlua::Result<Element> {
    let mut out: Option<Result<Element, String>> = None;
    // SAFETY: the closure only reads the table passed as argument 1 with raw
    // (metamethod-free, non-allocating) accessors and leaves the stack balanced; the
    // stack is grown with luaL_checkstack before every level.
    unsafe {
        lua.exec_raw::<()>(t, |state| {
            out = Some(read_element(state, 1, 1));
            ffi::lua_settop(state, 0);
        })?;
    }
    match out {
        Some(Ok(el)) => Ok(el),
        Some(Err(msg)) => Err(mlua::Error::runtime(msg)),
        None => Err(mlua::Error::runtime("stanza conversion did not run")),
    }
}

/// The string at `idx`, if it is a string (numbers are not converted).
unsafe fn string_at<'a>(state: *mut ffi::lua_State, idx: c_int) -> Option<&'a [u8]> {
    if ffi::lua_type(state, idx) != ffi::LUA_TSTRING {
        return None;
    }
    let mut len = 0usize;
    let ptr = ffi::lua_tolstring(state, idx, &mut len);
    if ptr.is_null() {
        return None;
    }
    Some(std::slice::from_raw_parts(ptr as *const u8, len))
}

fn utf8(bytes: &[u8], what: impl FnOnce() -> String) -> Result<String, String> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => Err(format!("{} is not valid UTF-8", what())),
    }
}

unsafe fn push_str(state: *mut ffi::lua_State, s: &str) {
    ffi::lua_pushlstring(state, s.as_ptr() as *const c_char, s.len());
}

fn type_name(t: c_int) -> &'static str {
    match t {
        ffi::LUA_TNIL => "nil",
        ffi::LUA_TBOOLEAN => "boolean",
        ffi::LUA_TNUMBER => "number",
        ffi::LUA_TSTRING => "string",
        ffi::LUA_TTABLE => "table",
        ffi::LUA_TFUNCTION => "function",
        ffi::LUA_TUSERDATA | ffi::LUA_TLIGHTUSERDATA => "userdata",
        ffi::LUA_TTHREAD => "thread",
        _ => "value",
    }
}

/// Reads the element table at stack index `idx` (absolute). Leaves the stack as found.
unsafe fn read_element(
    state: *mut ffi::lua_State,
    idx: c_int,
    depth: usize,
) -> Result<Element, String> {
    if depth > MAX_DEPTH {
        return Err(format!("stanza nested deeper than {MAX_DEPTH} levels"));
    }
    if ffi::lua_checkstack(state, 4) == 0 {
        return Err("Lua stack exhausted reading a stanza".to_owned());
    }
    push_str(state, "name");
    let name_type = ffi::lua_rawget(state, idx);
    let name = match string_at(state, -1) {
        Some(b) => utf8(b, || "stanza element name".to_owned()),
        None => Err(format!(
            "stanza element has no string name (found {})",
            type_name(name_type)
        )),
    };
    ffi::lua_pop(state, 1);
    let name = name?;

    let mut attrs = Vec::new();
    push_str(state, "attr");
    match ffi::lua_rawget(state, idx) {
        ffi::LUA_TTABLE => {
            let attr_idx = ffi::lua_absindex(state, -1);
            ffi::lua_pushnil(state);
            while ffi::lua_next(state, attr_idx) != 0 {
                // key at -2, value at -1; never convert the key in place (lua_next).
                if let (Some(k), Some(v)) = (string_at(state, -2), string_at(state, -1)) {
                    let key = match utf8(k, || format!("an attribute name of <{name}>")) {
                        Ok(k) => k,
                        Err(e) => {
                            ffi::lua_pop(state, 3);
                            return Err(e);
                        }
                    };
                    match utf8(v, || format!("attribute '{key}' of <{name}>")) {
                        Ok(value) => attrs.push((key, value)),
                        Err(e) => {
                            ffi::lua_pop(state, 3);
                            return Err(e);
                        }
                    }
                }
                ffi::lua_pop(state, 1);
            }
            ffi::lua_pop(state, 1);
        }
        ffi::LUA_TNIL => ffi::lua_pop(state, 1),
        other => {
            ffi::lua_pop(state, 1);
            return Err(format!(
                "stanza <{name}>: attr is a {}, not a table",
                type_name(other)
            ));
        }
    }
    attrs.sort_unstable_by(|(a, _), (b, _)| (a != "xmlns", a).cmp(&(b != "xmlns", b)));

    let len = ffi::lua_rawlen(state, idx) as usize;
    let mut children = Vec::with_capacity(len);
    for i in 1..=len {
        let child = match ffi::lua_rawgeti(state, idx, i as ffi::lua_Integer) {
            ffi::LUA_TTABLE => {
                let child_idx = ffi::lua_absindex(state, -1);
                read_element(state, child_idx, depth + 1).map(Node::Element)
            }
            ffi::LUA_TSTRING => match string_at(state, -1) {
                Some(b) => utf8(b, || format!("text of <{name}>")).map(Node::Text),
                None => Err(format!("text of <{name}> is unreadable")),
            },
            other => Err(format!(
                "stanza <{name}>: child {i} is a {}, not an element or text",
                type_name(other)
            )),
        };
        ffi::lua_pop(state, 1);
        children.push(child?);
    }
    Ok(Element {
        name,
        attrs,
        children,
    })
}

/// What [`copy_without`] tells its filter about a direct child element.
pub struct ChildTag<'a> {
    pub name: &'a str,
    /// The child's namespace: its own `xmlns`, else the parent's.
    pub ns: Option<&'a str>,
    pub by: Option<&'a str>,
}

/// A new stanza table like `t` but without the direct children `drop` picks and with
/// `extra` appended, sharing every other child table with `t` (children are not
/// changed by anyone who replaces `event.stanza`, so a shallow copy is a faithful
/// one, as `st.clone` would be, at a fraction of the cost). Returns `None` when there
/// is nothing to drop and nothing to add: the caller keeps `t`.
pub fn copy_without(
    lua: &Lua,
    t: &Table,
    drop: &dyn Fn(&ChildTag) -> bool,
    extra: Option<&Element>,
) -> mlua::Result<Option<Table>> {
    // SAFETY: argument 1 is the stanza; raw reads only; the closure either leaves
    // exactly the new table on the stack (returned) or nothing.
    unsafe {
        lua.exec_raw::<Option<Table>>(t, |state| {
            if !copy_filtered(state, drop, extra) {
                ffi::lua_settop(state, 0);
            }
        })
    }
}

/// The work of [`copy_without`]: stanza at index 1; on `true` the copy is the only
/// value left on the stack.
unsafe fn copy_filtered(
    state: *mut ffi::lua_State,
    drop: &dyn Fn(&ChildTag) -> bool,
    extra: Option<&Element>,
) -> bool {
    ffi::luaL_checkstack(state, 10, std::ptr::null());
    // The parent's own namespace (absent for a stanza from a client stream).
    push_str(state, "attr");
    ffi::lua_rawget(state, 1); // 2: attr
    if ffi::lua_type(state, 2) == ffi::LUA_TTABLE {
        push_str(state, "xmlns");
        ffi::lua_rawget(state, 2); // 3: parent xmlns
    } else {
        ffi::lua_pushnil(state);
    }
    let parent_ns = string_at(state, 3).and_then(|b| std::str::from_utf8(b).ok());

    let len = ffi::lua_rawlen(state, 1) as ffi::lua_Integer;
    let mut keep: Vec<bool> = Vec::with_capacity(len as usize);
    for i in 1..=len {
        let mut k = true;
        if ffi::lua_rawgeti(state, 1, i) == ffi::LUA_TTABLE {
            push_str(state, "name");
            ffi::lua_rawget(state, -2);
            push_str(state, "attr");
            ffi::lua_rawget(state, -3);
            // Stack: 4 child, 5 child.name, 6 child.attr[, 7 xmlns, 8 by].
            let (mut ns, mut by) = (None, None);
            if ffi::lua_type(state, 6) == ffi::LUA_TTABLE {
                push_str(state, "xmlns");
                ffi::lua_rawget(state, 6);
                push_str(state, "by");
                ffi::lua_rawget(state, 6);
                ns = string_at(state, 7).and_then(|b| std::str::from_utf8(b).ok());
                by = string_at(state, 8).and_then(|b| std::str::from_utf8(b).ok());
            }
            k = !child_dropped(state, drop, ns.or(parent_ns), by);
        }
        ffi::lua_settop(state, 3);
        keep.push(k);
    }
    if extra.is_none() && keep.iter().all(|k| *k) {
        return false;
    }

    // 4: the copy
    let narr = c_int::try_from(len).unwrap_or(c_int::MAX) + 1;
    ffi::lua_createtable(state, narr, 3);
    let copy = ffi::lua_absindex(state, -1);
    push_str(state, "name");
    push_str(state, "name");
    ffi::lua_rawget(state, 1);
    ffi::lua_rawset(state, copy);
    // attr: a new table with the same entries (callers may change the copy's attrs).
    push_str(state, "attr");
    ffi::lua_createtable(state, 0, 4);
    if ffi::lua_type(state, 2) == ffi::LUA_TTABLE {
        ffi::lua_pushnil(state);
        while ffi::lua_next(state, 2) != 0 {
            ffi::lua_pushvalue(state, -2);
            ffi::lua_insert(state, -2);
            ffi::lua_rawset(state, -4);
        }
    }
    ffi::lua_rawset(state, copy);
    push_str(state, "tags");
    ffi::lua_createtable(state, narr, 0);
    let tags = ffi::lua_absindex(state, -1);
    let (mut n, mut ntags): (ffi::lua_Integer, ffi::lua_Integer) = (0, 0);
    for (i, k) in keep.iter().enumerate() {
        if !*k {
            continue;
        }
        let kind = ffi::lua_rawgeti(state, 1, (i + 1) as ffi::lua_Integer);
        if kind == ffi::LUA_TTABLE {
            ntags += 1;
            ffi::lua_pushvalue(state, -1);
            ffi::lua_rawseti(state, tags, ntags);
        }
        n += 1;
        ffi::lua_rawseti(state, copy, n);
    }
    if let Some(el) = extra {
        // The stanza's metatable, for the new child.
        if ffi::lua_getmetatable(state, 1) == 0 {
            ffi::lua_pushnil(state);
        }
        let mt = ffi::lua_absindex(state, -1);
        push_element(state, el, mt);
        ffi::lua_pushvalue(state, -1);
        ntags += 1;
        ffi::lua_rawseti(state, tags, ntags);
        n += 1;
        ffi::lua_rawseti(state, copy, n);
        ffi::lua_pop(state, 1); // the metatable
    }
    ffi::lua_rawset(state, copy); // copy.tags = tags
    if ffi::lua_getmetatable(state, 1) != 0 {
        ffi::lua_setmetatable(state, copy);
    }
    // Leave only the copy.
    ffi::lua_replace(state, 1);
    ffi::lua_settop(state, 1);
    true
}

/// Reads the child's name from the stack (the child table sits at index 4) and asks
/// the filter.
unsafe fn child_dropped(
    state: *mut ffi::lua_State,
    drop: &dyn Fn(&ChildTag) -> bool,
    ns: Option<&str>,
    by: Option<&str>,
) -> bool {
    // Index 4 is the child, 5 its name.
    match string_at(state, 5).and_then(|b| std::str::from_utf8(b).ok()) {
        Some(name) => drop(&ChildTag { name, ns, by }),
        None => false,
    }
}

/// Builds the Prosody stanza table for `el`, as `util.stanza` builds it.
///
/// Every element table gets `name`, `attr`, `tags` and its children in the array part;
/// `tags` holds the very same child tables as the array part; each element table
/// (nested ones too) gets `stanza_mt`, which the caller passes in from
/// `require "util.stanza".stanza_mt`.
pub fn element_to_lua(lua: &Lua, el: &Element, stanza_mt: &Table) -> mlua::Result<Table> {
    check_depth(el)?;
    // SAFETY: argument 1 is the metatable; the closure pushes exactly one table (the
    // stanza) after removing it. Allocation failures raise a Lua error inside the
    // protected call, which mlua turns into an Err (what was built is garbage).
    unsafe {
        lua.exec_raw::<Table>(stanza_mt, |state| {
            push_element(state, el, 1);
            ffi::lua_remove(state, 1);
        })
    }
}

/// Appends `el` to the stanza table `t` in place, as `t:add_child(el)` would (to the
/// children and to `tags`, with the stanza's own metatable), and returns the new
/// child table. The delivered message gets its `<stanza-id>` this way instead of
/// through a copy: under load Prosody's time goes largely to its garbage collector,
/// and a copy per archived message (two per message on the sender's side, with the
/// strip before routing) was most of the garbage this module made.
pub fn append_child(lua: &Lua, t: &Table, el: &Element) -> mlua::Result<Table> {
    check_depth(el)?;
    // SAFETY: argument 1 is the stanza. Raw gets/sets only; `tags` is created if the
    // table has none (as util.stanza always gives one); exactly the child is left.
    unsafe {
        lua.exec_raw::<Table>(t, |state| {
            ffi::luaL_checkstack(state, 8, std::ptr::null());
            // 2: the metatable for the child (the stanza's own, or none).
            if ffi::lua_getmetatable(state, 1) == 0 {
                ffi::lua_pushnil(state);
            }
            // 3: tags
            push_str(state, "tags");
            if ffi::lua_rawget(state, 1) != ffi::LUA_TTABLE {
                ffi::lua_pop(state, 1);
                ffi::lua_createtable(state, 1, 0);
                push_str(state, "tags");
                ffi::lua_pushvalue(state, -2);
                ffi::lua_rawset(state, 1);
            }
            // 4: the child
            push_element(state, el, 2);
            let n = ffi::lua_rawlen(state, 1) as ffi::lua_Integer;
            ffi::lua_pushvalue(state, 4);
            ffi::lua_rawseti(state, 1, n + 1);
            let ntags = ffi::lua_rawlen(state, 3) as ffi::lua_Integer;
            ffi::lua_pushvalue(state, 4);
            ffi::lua_rawseti(state, 3, ntags + 1);
            ffi::lua_replace(state, 1);
            ffi::lua_settop(state, 1);
        })
    }
}

/// A Lua array of the given strings, built in one protected call: a page's results
/// cross here, and mlua's per-string protection cost more than the copies.
pub fn string_array<S: AsRef<str>>(lua: &Lua, items: &[S]) -> mlua::Result<Table> {
    let narr = c_int::try_from(items.len()).unwrap_or(c_int::MAX);
    // SAFETY: pushes one table, fills its array part with raw sets (no metamethods)
    // and leaves exactly that table on the stack; an allocation failure raises inside
    // the protected call.
    unsafe {
        lua.exec_raw::<Table>((), |state| {
            ffi::luaL_checkstack(state, 3, std::ptr::null());
            ffi::lua_createtable(state, narr, 0);
            for (i, item) in items.iter().enumerate() {
                push_str(state, item.as_ref());
                ffi::lua_rawseti(state, -2, (i + 1) as ffi::lua_Integer);
            }
        })
    }
}

/// Refuses an element nested deeper than [`MAX_DEPTH`] before any Lua table is built
/// (the builder recurses once per level).
fn check_depth(el: &Element) -> mlua::Result<()> {
    if depth_of(el) > MAX_DEPTH {
        return Err(mlua::Error::runtime(format!(
            "stanza nested deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(())
}

/// Nesting depth of `el` (1 for a leaf), counted without recursion.
fn depth_of(el: &Element) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Element, usize)> = vec![(el, 1)];
    while let Some((e, d)) = stack.pop() {
        deepest = deepest.max(d);
        if d > MAX_DEPTH {
            break;
        }
        stack.extend(e.tags().map(|c| (c, d + 1)));
    }
    deepest
}

/// Pushes the stanza table for `el`; `mt_idx` is the absolute index of `stanza_mt`.
unsafe fn push_element(state: *mut ffi::lua_State, el: &Element, mt_idx: c_int) {
    ffi::luaL_checkstack(state, 6, std::ptr::null());
    let narr = c_int::try_from(el.children.len()).unwrap_or(c_int::MAX);
    ffi::lua_createtable(state, narr, 3);
    let t = ffi::lua_absindex(state, -1);

    push_str(state, "name");
    push_str(state, &el.name);
    ffi::lua_rawset(state, t);

    push_str(state, "attr");
    let nattr = c_int::try_from(el.attrs.len()).unwrap_or(c_int::MAX);
    ffi::lua_createtable(state, 0, nattr);
    for (k, v) in &el.attrs {
        push_str(state, k);
        push_str(state, v);
        ffi::lua_rawset(state, -3);
    }
    ffi::lua_rawset(state, t);

    push_str(state, "tags");
    let ntags = c_int::try_from(el.tag_count()).unwrap_or(c_int::MAX);
    ffi::lua_createtable(state, ntags, 0);
    let tags = ffi::lua_absindex(state, -1);
    let mut k: ffi::lua_Integer = 0;
    for (i, child) in el.children.iter().enumerate() {
        match child {
            Node::Element(c) => {
                push_element(state, c, mt_idx);
                k += 1;
                ffi::lua_pushvalue(state, -1);
                ffi::lua_rawseti(state, tags, k);
            }
            Node::Text(s) => push_str(state, s),
        }
        ffi::lua_rawseti(state, t, (i + 1) as ffi::lua_Integer);
    }
    ffi::lua_rawset(state, t);

    ffi::lua_pushvalue(state, mt_idx);
    ffi::lua_setmetatable(state, t);
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
        let back = element_from_lua(&lua, &t).unwrap();
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
        let el = element_from_lua(&lua, &t).unwrap();
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
        let e = element_from_lua(&lua, &t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "runtime error: stanza <body>: child 2 is a number, not an element or text"
        );
    }

    #[test]
    fn a_table_without_a_name_is_an_error() {
        let (lua, _mt) = lua_with_stanza_mt();
        let t: Table = lua.load(r#"return { attr = {} }"#).eval().unwrap();
        assert_eq!(
            element_from_lua(&lua, &t).unwrap_err().to_string(),
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
            element_from_lua(&lua, &t).unwrap_err().to_string(),
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
            element_from_lua(&lua, &t).unwrap_err().to_string(),
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
        assert_eq!(element_from_lua(&lua, &t).unwrap(), el);
        let deeper = Element::new("a").with_child(el);
        assert!(element_to_lua(&lua, &deeper, &mt).is_err());
    }
}
