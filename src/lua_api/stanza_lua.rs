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
//!
//! # Lua errors never skip a Rust destructor
//!
//! A Lua error raised by a C API call (out of memory, a stack that cannot grow) does
//! not return: it `longjmp`s (Lua built as C, as Debian's and mlua's vendored one are)
//! to the `lua_pcall` that `exec_raw` wraps around our closure, skipping every frame in
//! between without running its destructors. So the rule in this file is: **no owned
//! Rust value is alive across a call that can raise.**
//! The frames between that `lua_pcall` and a raising call are mlua's `do_call` (holding
//! only our closure, which captures nothing but references and `Copy` values), the
//! closure, and the helpers below; of these:
//!
//! - the reader ([`element_from_lua`] → `read_element`) owns the `String`s and `Vec`s it
//!   builds, so it calls nothing that can raise. The keys it looks up are pushed once
//!   beforehand (`Keys::push`), in a frame that owns nothing, and then copied with
//!   `lua_pushvalue`. The calls it makes are those the Lua 5.4 manual marks `-`
//!   (`lua_checkstack`, which reports failure instead of raising, `lua_pushvalue`,
//!   `lua_pushnil`, `lua_rawget`, `lua_rawgeti`, `lua_rawlen`, `lua_type`,
//!   `lua_absindex`), plus three whose mark does not apply: `lua_tolstring` (`m`, for
//!   converting a number; we call it on strings only), `lua_next` (`v`, for a key that
//!   is not in the table; nothing changes the table mid-walk, since the walk allocates
//!   nothing and so runs no collector and no finalizer) and `lua_settop`/`lua_pop`
//!   (`e`, for closing to-be-closed slots; we never mark one);
//! - the builders ([`element_to_lua`], [`append_child`], [`copy_without`],
//!   [`string_array`] and `push_element`) raise at every allocation
//!   (`lua_pushlstring`, `lua_createtable`, `lua_rawset`, `lua_rawseti`: `m`) and may
//!   raise growing the stack (`luaL_checkstack`: `v`), so they own nothing: they read
//!   the [`Element`] and the strings through borrows, and [`copy_without`]'s verdicts
//!   per child go to a `Vec` its caller frame owns, outside the protected call.
//!
//! (The marks are the Lua 5.4 manual's `[-o, +p, x]` annotations, checked against
//! `lapi.c`: `lua_next` raises only from `findindex`, `lua_settop` only in `luaF_close`.)
//! A raised error thus reaches `lua_pcall` with nothing to clean up on the Rust side
//! and comes back as the function's `Err` ([`mlua::Error::MemoryError`] for out of
//! memory); the half-built tables are garbage for Lua's collector. The other direction
//! is guarded too: a panic in [`copy_without`]'s filter must not unwind through
//! `lua_pcall`, so it is caught, carried out of the protected call and resumed there.

use std::any::Any;
use std::ffi::{c_char, c_int};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use mlua::{ffi, Lua, Table};

use crate::stanza::{Element, Node, MAX_DEPTH};

/// The most children reserved for before they are read. `lua_rawlen` is only a border
/// of the table (`t[n] ~= nil and t[n+1] == nil`), and a table with a few dozen entries
/// can have one near 2^40: reserving that much would abort the process where reading
/// fails cleanly at the first missing child.
const RESERVE_LIMIT: usize = 64;

/// Stack slots holding the keys every stanza table has, pushed once per protected call
/// so that the per-element work copies them (`lua_pushvalue`, which cannot raise)
/// instead of interning them again (`lua_pushlstring`, which can, and costs a hash).
#[derive(Clone, Copy)]
struct Keys {
    name: c_int,
    attr: c_int,
    tags: c_int,
}

impl Keys {
    /// Pushes `"name"`, `"attr"` and `"tags"`. Can raise (`luaL_checkstack`: `v`,
    /// `lua_pushlstring`: `m`): call it only where no owned Rust value is alive.
    unsafe fn push(state: *mut ffi::lua_State) -> Keys {
        ffi::luaL_checkstack(state, 3, std::ptr::null());
        push_str(state, "name");
        push_str(state, "attr");
        push_str(state, "tags");
        let tags = ffi::lua_gettop(state);
        Keys {
            name: tags - 2,
            attr: tags - 1,
            tags,
        }
    }
}

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
    // SAFETY: `exec_raw` runs the closure inside `lua_pcall`, the stanza at index 1; the
    // closure captures only `&mut out`. No owned Rust value is alive across a call that
    // can raise: `Keys::push` (which can) runs before anything is owned, and
    // `read_element`, whose frames own the strings and vectors being built, calls
    // nothing that can raise (module doc); its result moves at once into `out`, which
    // this frame owns outside the protected call. Reads are raw (no metamethod runs),
    // the stack is grown with `lua_checkstack` before every level, and the closure
    // leaves the stack empty.
    unsafe {
        lua.exec_raw::<()>(t, |state| {
            let keys = Keys::push(state);
            out = Some(read_element(state, 1, keys, 1));
            ffi::lua_settop(state, 0);
        })?;
    }
    match out {
        Some(Ok(el)) => Ok(el),
        Some(Err(msg)) => Err(mlua::Error::runtime(msg)),
        None => Err(mlua::Error::runtime("stanza conversion did not run")),
    }
}

/// The string at `idx`, if it is a string (numbers are not converted, so
/// `lua_tolstring` neither allocates nor raises).
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

/// Pushes `s` as a Lua string. Can raise (`m`).
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
///
/// Calls nothing that can raise (see the module doc): its frames own what they build.
unsafe fn read_element(
    state: *mut ffi::lua_State,
    idx: c_int,
    keys: Keys,
    depth: usize,
) -> Result<Element, String> {
    if depth > MAX_DEPTH {
        return Err(format!("stanza nested deeper than {MAX_DEPTH} levels"));
    }
    if ffi::lua_checkstack(state, 4) == 0 {
        return Err("Lua stack exhausted reading a stanza".to_owned());
    }
    ffi::lua_pushvalue(state, keys.name);
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
    ffi::lua_pushvalue(state, keys.attr);
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
    let mut children = Vec::with_capacity(len.min(RESERVE_LIMIT));
    for i in 1..=len {
        let child = match ffi::lua_rawgeti(state, idx, i as ffi::lua_Integer) {
            ffi::LUA_TTABLE => {
                let child_idx = ffi::lua_absindex(state, -1);
                read_element(state, child_idx, keys, depth + 1).map(Node::Element)
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

/// A panic's payload, carried out of a protected call to be resumed outside it.
type PanicPayload = Box<dyn Any + Send + 'static>;

/// A new stanza table like `t` but without the direct children `drop` picks, sharing
/// every other child table with `t` (children are not changed by anyone who replaces
/// `event.stanza`, so a shallow copy is a faithful one, as `st.clone` would be, at a
/// fraction of the cost). Returns `None` when there is nothing to drop: the caller
/// keeps `t`.
pub fn copy_without(
    lua: &Lua,
    t: &Table,
    drop: &dyn Fn(&ChildTag) -> bool,
) -> mlua::Result<Option<Table>> {
    // Owned here, outside the protected call, so that an error raised while the copy is
    // built cannot skip their destructors: the closure only borrows them.
    let mut keep: Vec<bool> = Vec::new();
    let mut filter_panic: Option<PanicPayload> = None;
    // SAFETY: `exec_raw` runs the closure inside `lua_pcall`, the stanza at index 1; the
    // closure captures only references. No owned Rust value is alive across a call that
    // can raise: `copy_filtered` and `push_element` own nothing (the verdicts go to
    // `keep`, a panic of the filter to `filter_panic`, both owned by this frame), and
    // the filter, which may own what it likes, returns before the next Lua call. Raw
    // gets and sets only; the closure leaves exactly the new table on the stack
    // (returned) or nothing.
    let copy = unsafe {
        lua.exec_raw::<Option<Table>>(t, |state| {
            if !copy_filtered(state, drop, &mut keep, &mut filter_panic) {
                ffi::lua_settop(state, 0);
            }
        })
    };
    if let Some(payload) = filter_panic {
        resume_unwind(payload);
    }
    copy
}

/// The work of [`copy_without`]: stanza at index 1; on `true` the copy is the only
/// value left on the stack. Owns nothing, as any Lua call here can raise: the verdicts
/// go to `keep`, and a panic of the filter (which must not unwind through `lua_pcall`)
/// to `filter_panic`, ending the work with `false`.
unsafe fn copy_filtered(
    state: *mut ffi::lua_State,
    drop: &dyn Fn(&ChildTag) -> bool,
    keep: &mut Vec<bool>,
    filter_panic: &mut Option<PanicPayload>,
) -> bool {
    // Stack: 1 stanza, 2-4 keys, 5 "xmlns", 6 "by", 7 attr, 8 parent xmlns, then
    // 9 child, 10 child.name, 11 child.attr[, 12 its xmlns, 13 its by] per child, or
    // 9 the copy once the children are judged.
    const XMLNS: c_int = 5;
    const BY: c_int = 6;
    const ATTR: c_int = 7;
    const PARENT_NS: c_int = 8;
    const CHILD: c_int = 9;
    const COPY: c_int = 9;
    ffi::luaL_checkstack(state, 14, std::ptr::null());
    let keys = Keys::push(state);
    push_str(state, "xmlns");
    push_str(state, "by");
    // The parent's own namespace (absent for a stanza from a client stream).
    ffi::lua_pushvalue(state, keys.attr);
    ffi::lua_rawget(state, 1);
    if ffi::lua_type(state, ATTR) == ffi::LUA_TTABLE {
        ffi::lua_pushvalue(state, XMLNS);
        ffi::lua_rawget(state, ATTR);
    } else {
        ffi::lua_pushnil(state);
    }
    let parent_ns = string_at(state, PARENT_NS).and_then(|b| std::str::from_utf8(b).ok());

    let len = ffi::lua_rawlen(state, 1) as ffi::lua_Integer;
    keep.reserve((len as usize).min(RESERVE_LIMIT));
    for i in 1..=len {
        let mut k = true;
        if ffi::lua_rawgeti(state, 1, i) == ffi::LUA_TTABLE {
            ffi::lua_pushvalue(state, keys.name);
            ffi::lua_rawget(state, CHILD);
            ffi::lua_pushvalue(state, keys.attr);
            ffi::lua_rawget(state, CHILD);
            let (mut ns, mut by) = (None, None);
            if ffi::lua_type(state, CHILD + 2) == ffi::LUA_TTABLE {
                ffi::lua_pushvalue(state, XMLNS);
                ffi::lua_rawget(state, CHILD + 2);
                ffi::lua_pushvalue(state, BY);
                ffi::lua_rawget(state, CHILD + 2);
                ns = string_at(state, CHILD + 3).and_then(|b| std::str::from_utf8(b).ok());
                by = string_at(state, CHILD + 4).and_then(|b| std::str::from_utf8(b).ok());
            }
            if let Some(name) =
                string_at(state, CHILD + 1).and_then(|b| std::str::from_utf8(b).ok())
            {
                let tag = ChildTag {
                    name,
                    ns: ns.or(parent_ns),
                    by,
                };
                match catch_unwind(AssertUnwindSafe(|| drop(&tag))) {
                    Ok(dropped) => k = !dropped,
                    Err(payload) => {
                        *filter_panic = Some(payload);
                        return false;
                    }
                }
            }
        }
        ffi::lua_settop(state, PARENT_NS);
        keep.push(k);
    }
    if keep.iter().all(|k| *k) {
        return false;
    }

    let narr = c_int::try_from(len).unwrap_or(c_int::MAX).saturating_add(1);
    ffi::lua_createtable(state, narr, 3);
    ffi::lua_pushvalue(state, keys.name);
    ffi::lua_pushvalue(state, keys.name);
    ffi::lua_rawget(state, 1);
    ffi::lua_rawset(state, COPY);
    // attr: a new table with the same entries (callers may change the copy's attrs).
    ffi::lua_pushvalue(state, keys.attr);
    ffi::lua_createtable(state, 0, 4);
    if ffi::lua_type(state, ATTR) == ffi::LUA_TTABLE {
        ffi::lua_pushnil(state);
        while ffi::lua_next(state, ATTR) != 0 {
            ffi::lua_pushvalue(state, -2);
            ffi::lua_insert(state, -2);
            ffi::lua_rawset(state, -4);
        }
    }
    ffi::lua_rawset(state, COPY);
    ffi::lua_pushvalue(state, keys.tags);
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
        ffi::lua_rawseti(state, COPY, n);
    }
    ffi::lua_rawset(state, COPY); // copy.tags = tags
    if ffi::lua_getmetatable(state, 1) != 0 {
        ffi::lua_setmetatable(state, COPY);
    }
    // Leave only the copy.
    ffi::lua_replace(state, 1);
    ffi::lua_settop(state, 1);
    true
}

/// Builds the Prosody stanza table for `el`, as `util.stanza` builds it.
///
/// Every element table gets `name`, `attr`, `tags` and its children in the array part;
/// `tags` holds the very same child tables as the array part; each element table
/// (nested ones too) gets `stanza_mt`, which the caller passes in from
/// `require "util.stanza".stanza_mt`.
pub fn element_to_lua(lua: &Lua, el: &Element, stanza_mt: &Table) -> mlua::Result<Table> {
    check_depth(el)?;
    // SAFETY: `exec_raw` runs the closure inside `lua_pcall`, the metatable at index 1;
    // the closure captures only `el`, a reference. No owned Rust value is alive across a
    // call that can raise: `Keys::push` and `push_element` own nothing and read `el`
    // through borrows. An allocation failure raises inside the protected call and comes
    // back as an Err (what was built is garbage). The closure leaves exactly one table,
    // the stanza, on the stack.
    unsafe {
        lua.exec_raw::<Table>(stanza_mt, |state| {
            let keys = Keys::push(state);
            push_element(state, el, 1, keys);
            ffi::lua_replace(state, 1);
            ffi::lua_settop(state, 1);
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
    // SAFETY: `exec_raw` runs the closure inside `lua_pcall`, the stanza at index 1; the
    // closure captures only `el`, a reference. No owned Rust value is alive across a
    // call that can raise: the closure, `Keys::push` and `push_element` own nothing. Raw
    // gets/sets only; `tags` is created if the table has none (as util.stanza always
    // gives one); exactly the child is left. An error raised between linking the child
    // into the array part and into `tags` leaves it in the first only.
    unsafe {
        lua.exec_raw::<Table>(t, |state| {
            ffi::luaL_checkstack(state, 8, std::ptr::null());
            // 2: the metatable for the child (the stanza's own, or none).
            if ffi::lua_getmetatable(state, 1) == 0 {
                ffi::lua_pushnil(state);
            }
            // 3-5: the keys
            let keys = Keys::push(state);
            // 6: tags
            ffi::lua_pushvalue(state, keys.tags);
            if ffi::lua_rawget(state, 1) != ffi::LUA_TTABLE {
                ffi::lua_pop(state, 1);
                ffi::lua_createtable(state, 1, 0);
                ffi::lua_pushvalue(state, keys.tags);
                ffi::lua_pushvalue(state, -2);
                ffi::lua_rawset(state, 1);
            }
            // 7: the child
            push_element(state, el, 2, keys);
            let n = ffi::lua_rawlen(state, 1) as ffi::lua_Integer;
            ffi::lua_pushvalue(state, 7);
            ffi::lua_rawseti(state, 1, n + 1);
            let ntags = ffi::lua_rawlen(state, 6) as ffi::lua_Integer;
            ffi::lua_pushvalue(state, 7);
            ffi::lua_rawseti(state, 6, ntags + 1);
            ffi::lua_replace(state, 1);
            ffi::lua_settop(state, 1);
        })
    }
}

/// A Lua array of the given strings, built in one protected call: a page's results
/// cross here, and mlua's per-string protection cost more than the copies.
pub fn string_array<S: AsRef<str>>(lua: &Lua, items: &[S]) -> mlua::Result<Table> {
    let narr = c_int::try_from(items.len()).unwrap_or(c_int::MAX);
    // SAFETY: `exec_raw` runs the closure inside `lua_pcall`; the closure captures only
    // `items`, a reference, and `narr`, a number. No owned Rust value is alive across a
    // call that can raise: the strings are read through borrows. It pushes one table,
    // fills its array part with raw sets (no metamethods) and leaves exactly that table
    // on the stack; an allocation failure raises inside the protected call and comes
    // back as an Err.
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
///
/// Raises on any allocation failure, so it owns nothing: `el` is borrowed, and the
/// iterators over its attributes and children are borrows too.
unsafe fn push_element(state: *mut ffi::lua_State, el: &Element, mt_idx: c_int, keys: Keys) {
    ffi::luaL_checkstack(state, 6, std::ptr::null());
    let narr = c_int::try_from(el.children.len()).unwrap_or(c_int::MAX);
    ffi::lua_createtable(state, narr, 3);
    let t = ffi::lua_absindex(state, -1);

    ffi::lua_pushvalue(state, keys.name);
    push_str(state, &el.name);
    ffi::lua_rawset(state, t);

    ffi::lua_pushvalue(state, keys.attr);
    let nattr = c_int::try_from(el.attrs.len()).unwrap_or(c_int::MAX);
    ffi::lua_createtable(state, 0, nattr);
    for (k, v) in &el.attrs {
        push_str(state, k);
        push_str(state, v);
        ffi::lua_rawset(state, -3);
    }
    ffi::lua_rawset(state, t);

    ffi::lua_pushvalue(state, keys.tags);
    let ntags = c_int::try_from(el.tag_count()).unwrap_or(c_int::MAX);
    ffi::lua_createtable(state, ntags, 0);
    let tags = ffi::lua_absindex(state, -1);
    let mut k: ffi::lua_Integer = 0;
    for (i, child) in el.children.iter().enumerate() {
        match child {
            Node::Element(c) => {
                push_element(state, c, mt_idx, keys);
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

    // ---- Lua errors inside the raw calls -----------------------------------------

    /// Counts, per thread, the bytes allocated and not yet freed, so that a test can see
    /// whether a failed call left Rust allocations behind. Lua's own memory goes through
    /// the same allocator (mlua's allocator calls Rust's), and mlua counts it apart
    /// (`Lua::used_memory`), so the difference is what Rust holds.
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static LIVE: Cell<isize> = const { Cell::new(0) };
        }

        fn add(n: isize) {
            // `try_with`: allocations while the thread is torn down go uncounted.
            let _ = LIVE.try_with(|live| live.set(live.get() + n));
        }

        /// Bytes this thread has allocated and not freed.
        pub fn live_bytes() -> isize {
            LIVE.with(Cell::get)
        }

        pub struct Counting;

        // SAFETY: every call is forwarded to `System` unchanged; only the sizes of the
        // ones that succeed are added up.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let p = System.alloc(layout);
                if !p.is_null() {
                    add(layout.size() as isize);
                }
                p
            }

            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                let p = System.alloc_zeroed(layout);
                if !p.is_null() {
                    add(layout.size() as isize);
                }
                p
            }

            unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
                System.dealloc(p, layout);
                add(-(layout.size() as isize));
            }

            unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                let q = System.realloc(p, layout, new_size);
                if !q.is_null() {
                    add(new_size as isize - layout.size() as isize);
                }
                q
            }
        }

        #[global_allocator]
        static COUNTING: Counting = Counting;
    }

    /// Bytes this thread holds outside Lua, after a full collection.
    fn rust_bytes(lua: &Lua) -> isize {
        lua.gc_collect().unwrap();
        lua.gc_collect().unwrap();
        counting::live_bytes() - lua.used_memory() as isize
    }

    /// Runs `op` under a memory limit that starts at what Lua uses now and grows by
    /// `step` bytes a time until `op` succeeds; returns how many times it failed. Every
    /// failure must be Lua's out-of-memory error, or the stack that could not grow
    /// for want of memory (`luaL_checkstack`'s "stack overflow").
    fn fail_until_enough_memory(
        lua: &Lua,
        step: usize,
        mut op: impl FnMut() -> mlua::Result<()>,
    ) -> usize {
        let mut failures = 0;
        for round in 0.. {
            lua.gc_collect().unwrap();
            lua.set_memory_limit(lua.used_memory() + round * step)
                .unwrap();
            let result = op();
            lua.set_memory_limit(0).unwrap();
            match result {
                Ok(()) => return failures,
                Err(mlua::Error::MemoryError(_)) => failures += 1,
                Err(e) if e.to_string().contains("stack overflow") => failures += 1,
                Err(e) => panic!("round {round}: not a memory error: {e}"),
            }
        }
        unreachable!()
    }

    /// A message with `n` children, each with attributes and text, and a chain of
    /// nested elements 100 deep: big enough that building it takes many allocations.
    fn big_message(n: usize) -> Element {
        let mut msg = Element::with_ns("message", "jabber:client")
            .with_attr("type", "chat")
            .with_attr("to", "juliet@capulet.lit/balcony");
        for i in 0..n {
            msg.push(
                Element::with_ns("x", "urn:example")
                    .with_attr("n", &i.to_string())
                    .with_text("Wherefore art thou"),
            );
        }
        let mut deep = Element::new("d");
        for _ in 1..100 {
            deep = Element::new("d").with_child(deep);
        }
        msg.with_child(deep)
    }

    #[test]
    fn building_a_stanza_past_the_memory_limit_is_a_memory_error_and_lua_carries_on() {
        let (lua, mt) = lua_with_stanza_mt();
        let el = big_message(2000);
        lua.gc_collect().unwrap();
        lua.set_memory_limit(lua.used_memory() + 64 * 1024).unwrap();
        let e = element_to_lua(&lua, &el, &mt).unwrap_err();
        assert!(matches!(e, mlua::Error::MemoryError(_)), "{e}");
        lua.set_memory_limit(0).unwrap();
        let t = element_to_lua(&lua, &el, &mt).unwrap();
        let mut expected = el.clone();
        sort_like_element_from_lua(&mut expected);
        assert_eq!(element_from_lua(&lua, &t).unwrap(), expected);
    }

    #[test]
    fn no_rust_allocation_outlives_a_build_that_ran_out_of_memory() {
        let (lua, mt) = lua_with_stanza_mt();
        let el = big_message(1000);
        let ids: Vec<String> = (0..3000).map(|i| format!("id-{i:06}")).collect();
        let stanza = element_to_lua(&lua, &el, &mt).unwrap();
        let target = element_to_lua(&lua, &Element::new("message"), &mt).unwrap();
        let drop_x = |c: &ChildTag| c.name == "x" && c.ns == Some("urn:example");

        type Op<'a> = Box<dyn FnMut() -> mlua::Result<()> + 'a>;
        let ops: Vec<(&str, Op)> = vec![
            (
                "element_to_lua",
                Box::new(|| element_to_lua(&lua, &el, &mt).map(|_| ())),
            ),
            (
                "append_child",
                Box::new(|| append_child(&lua, &target, &el).map(|_| ())),
            ),
            (
                "copy_without",
                Box::new(|| copy_without(&lua, &stanza, &drop_x).map(|_| ())),
            ),
            (
                "string_array",
                Box::new(|| string_array(&lua, &ids).map(|_| ())),
            ),
        ];
        for (name, mut op) in ops {
            op().unwrap(); // warm up: what Lua and mlua keep for good is allocated now
            let before = rust_bytes(&lua);
            let failures = fail_until_enough_memory(&lua, 1024, &mut op);
            let after = rust_bytes(&lua);
            assert!(failures >= 10, "{name}: only {failures} failures");
            // A few hundred bytes of slack for mlua's bookkeeping; a leaked vector per
            // failure would be hundreds of kilobytes.
            assert!(
                (after - before).abs() < 512,
                "{name}: {} bytes still held after {failures} failures",
                after - before
            );
        }
    }

    #[test]
    fn reading_a_flat_stanza_needs_no_lua_memory_and_a_deep_one_without_stack_fails_cleanly() {
        let (lua, mt) = lua_with_stanza_mt();
        let flat = xep_result().tags().next().unwrap().clone(); // <result>, 4 deep
        let deep = big_message(500); // the same, and a chain 100 deep
        let (flat_t, deep_t) = (
            element_to_lua(&lua, &Element::new("message").with_child(flat.clone()), &mt).unwrap(),
            element_to_lua(&lua, &deep, &mt).unwrap(),
        );
        lua.gc_collect().unwrap(); // also shrinks the Lua stack to what is in use
        lua.set_memory_limit(lua.used_memory()).unwrap();
        let flat_read = element_from_lua(&lua, &flat_t);
        // 100 levels need more stack than the collector left: growing it needs memory,
        // and `lua_checkstack` says no instead of raising.
        let deep_read = element_from_lua(&lua, &deep_t);
        lua.set_memory_limit(0).unwrap();
        let mut expected = Element::new("message").with_child(flat);
        sort_like_element_from_lua(&mut expected);
        assert_eq!(flat_read.unwrap(), expected);
        assert_eq!(
            deep_read.unwrap_err().to_string(),
            "runtime error: Lua stack exhausted reading a stanza"
        );
        let mut expected = deep;
        sort_like_element_from_lua(&mut expected);
        assert_eq!(element_from_lua(&lua, &deep_t).unwrap(), expected);
    }

    #[test]
    fn a_table_whose_length_lua_reports_as_2_to_the_40_is_an_error_not_an_abort() {
        let (lua, _mt) = lua_with_stanza_mt();
        // All keys in the constructor go to the hash part, where `#t` doubles its probe
        // while t[2^k] is present: 41 entries give a border at 2^40.
        let keys: Vec<String> = (0..=40).map(|k| format!("[{}] = 'x'", 1u64 << k)).collect();
        let t: Table = lua
            .load(format!(
                "return {{ name = 'body', attr = {{}}, tags = {{}}, {} }}",
                keys.join(", ")
            ))
            .eval()
            .unwrap();
        assert_eq!(t.raw_len(), 1 << 40);
        assert_eq!(
            element_from_lua(&lua, &t).unwrap_err().to_string(),
            "runtime error: stanza <body>: child 3 is a nil, not an element or text"
        );
    }

    #[test]
    fn a_wide_stanza_of_100000_children_crosses_both_ways() {
        let (lua, mt) = lua_with_stanza_mt();
        let mut el = Element::new("message");
        for i in 0..100_000 {
            if i % 2 == 0 {
                el.push(Element::new("x"));
            } else {
                el.push_text("y");
            }
        }
        let t = element_to_lua(&lua, &el, &mt).unwrap();
        assert_eq!(t.raw_len(), 100_000);
        assert_eq!(element_from_lua(&lua, &t).unwrap(), el);
        let drop_x = |c: &ChildTag| c.name == "x";
        let copy = copy_without(&lua, &t, &drop_x).unwrap().unwrap();
        assert_eq!(
            element_from_lua(&lua, &copy).unwrap().children.len(),
            50_000
        );
    }

    #[test]
    fn a_panic_in_the_copy_filter_reaches_the_caller_and_lua_carries_on() {
        let (lua, mt) = lua_with_stanza_mt();
        let el = xep_result();
        let t = element_to_lua(&lua, &el, &mt).unwrap();
        let boom = |_: &ChildTag| -> bool { panic!("filter failed") };
        // Unwinding through `lua_pcall` would skip its bookkeeping (the C-call count,
        // the error jump buffer) each time: 300 times is past Lua's limit of 200.
        for _ in 0..300 {
            let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let _ = copy_without(&lua, &t, &boom);
            }))
            .unwrap_err();
            assert_eq!(caught.downcast_ref::<&str>(), Some(&"filter failed"));
        }
        let e = lua.load("error('raised')").exec().unwrap_err();
        assert!(e.to_string().contains("raised"), "{e}");
        let keep_all = |_: &ChildTag| false;
        assert!(copy_without(&lua, &t, &keep_all).unwrap().is_none());
        assert_eq!(lua.load("return 1 + 1").eval::<i32>().unwrap(), 2);
        let mut expected = el;
        sort_like_element_from_lua(&mut expected);
        assert_eq!(element_from_lua(&lua, &t).unwrap(), expected);
    }
}

/// Conversion speed, for comparing before and after a change to this file:
/// `cargo test --release --no-default-features --features vendored --lib
/// stanza_lua::bench -- --ignored --nocapture --test-threads=1`. Wall time on a shared
/// machine is noisy; one test per operation lets `valgrind --tool=callgrind` count the
/// instructions of each (`<test binary> --ignored --exact <name>`).
#[cfg(all(test, feature = "vendored"))]
mod bench {
    use super::*;
    use crate::stanza::parse_xml;
    use std::time::Instant;

    const ROUNDS: u32 = 100_000;

    struct Setup {
        lua: Lua,
        mt: Table,
        /// A typical chat message, as an element and as a table.
        el: Element,
        t: Table,
    }

    fn setup() -> Setup {
        let lua = Lua::new();
        let mt: Table = lua.load("return { __name = 'stanza' }").eval().unwrap();
        let el = parse_xml(
            "<message xmlns='jabber:client' from='romeo@montague.lit/orchard' \
               to='juliet@capulet.lit/balcony' type='chat' id='a1b2c3d4' xml:lang='en'>\
               <body>Art thou not Romeo, and a Montague?</body>\
               <active xmlns='http://jabber.org/protocol/chatstates'/>\
               <origin-id xmlns='urn:xmpp:sid:0' id='de305d54-75b4-431b-adb2-eb6b9e546014'/>\
               <stanza-id xmlns='urn:xmpp:sid:0' by='capulet.lit' id='forged'/>\
             </message>",
        )
        .unwrap();
        let t = element_to_lua(&lua, &el, &mt).unwrap();
        Setup { lua, mt, el, t }
    }

    fn measure<R>(what: &str, mut op: impl FnMut() -> R) {
        let start = Instant::now();
        for _ in 0..ROUNDS {
            std::hint::black_box(op());
        }
        let ns = start.elapsed().as_nanos() / u128::from(ROUNDS);
        println!("{what}: {ns} ns per call ({ROUNDS} calls)");
    }

    #[test]
    #[ignore = "a measurement, not a test: run it in release mode"]
    fn speed_element_to_lua() {
        let s = setup();
        measure("element_to_lua", || {
            element_to_lua(&s.lua, &s.el, &s.mt).unwrap()
        });
    }

    #[test]
    #[ignore = "a measurement, not a test: run it in release mode"]
    fn speed_element_from_lua() {
        let s = setup();
        measure("element_from_lua", || {
            element_from_lua(&s.lua, &s.t).unwrap()
        });
    }

    #[test]
    #[ignore = "a measurement, not a test: run it in release mode"]
    fn speed_copy_without() {
        let s = setup();
        let forged = |c: &ChildTag| c.name == "stanza-id" && c.by == Some("capulet.lit");
        measure("copy_without", || {
            copy_without(&s.lua, &s.t, &forged).unwrap()
        });
    }

    #[test]
    #[ignore = "a measurement, not a test: run it in release mode"]
    fn speed_append_child() {
        let s = setup();
        let sid = parse_xml("<stanza-id xmlns='urn:xmpp:sid:0' by='juliet@capulet.lit' id='x'/>")
            .unwrap();
        measure("append_child", || {
            let t = s.lua.create_table().unwrap();
            append_child(&s.lua, &t, &sid).unwrap()
        });
    }

    #[test]
    #[ignore = "a measurement, not a test: run it in release mode"]
    fn speed_string_array() {
        let s = setup();
        let ids: Vec<String> = (0..20).map(|i| format!("id-{i:04}")).collect();
        measure("string_array (20)", || string_array(&s.lua, &ids).unwrap());
    }
}
