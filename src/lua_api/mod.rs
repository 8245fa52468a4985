//! The Lua API boundary: the only place that knows about mlua besides the stanza
//! conversion in [`stanza_lua`]. Each export converts its Lua arguments, calls the
//! plain-Rust [`Archive`], and converts the answer back.
//!
//! Conventions (Prosody's): expected failures return `nil, err` where `err` is a table
//! `{ type = …, condition = …, text = …, log = … }` ready for `st.error_reply` (and
//! `log` for the module log, never sent to clients); bugs raise Lua errors.

pub mod admin;
pub mod stanza_lua;

use std::time::Duration;

use mlua::{
    Function, Lua, MultiValue, Result as LuaResult, Table, UserData, UserDataMethods, Value,
};

use crate::archive::{Archive, NotStored, Stats};
use crate::config::{Config, RawValue, OPTION_NAMES};
use crate::error::MamError;
use crate::mailbox::{Completion, Outcome, QueryResults, Reply, ResultStanzas};
use crate::policy::{self, Rule};
use crate::stanza::{parse_xml, to_wire_xml, Element};

use stanza_lua::{
    append_child, copy_without, element_from_lua, element_to_lua, string_array, ChildTag,
};

/// Why a message Prosody accepted cannot be archived: deeper than we represent.
const TOO_DEEP: &str = "too deeply nested to archive";
/// The same, as a short reason (events, the `reason` label of the skipped metric).
const TOO_DEEP_REASON: &str = "too deep";

/// The handle the shim holds: one open archive for one virtual host.
struct ArchiveHandle {
    /// `None` once closed (module unload), so a late call fails cleanly.
    archive: Option<Archive>,
    /// `util.stanza`'s metatable, given to every stanza we build.
    stanza_mt: Table,
    /// `util.jid.prep`, so JIDs are normalised exactly as Prosody does.
    jid_prep: Function,
}

fn closed() -> mlua::Error {
    mlua::Error::runtime("mam_native: archive handle used after close()")
}

impl ArchiveHandle {
    fn archive(&mut self) -> LuaResult<&mut Archive> {
        self.archive.as_mut().ok_or_else(closed)
    }

    fn to_lua(&self, lua: &Lua, el: &Element) -> LuaResult<Table> {
        element_to_lua(lua, el, &self.stanza_mt)
    }
}

/// `nil, err` for an expected failure.
fn failure(lua: &Lua, err: &MamError) -> LuaResult<MultiValue> {
    let x = err.to_xmpp();
    let t = lua.create_table()?;
    t.raw_set("type", x.error_type)?;
    t.raw_set("condition", x.condition)?;
    if let Some(text) = x.text {
        t.raw_set("text", text)?;
    }
    t.raw_set("log", err.to_string())?;
    Ok(MultiValue::from_iter([Value::Nil, Value::Table(t)]))
}

fn values<const N: usize>(items: [Value; N]) -> MultiValue {
    MultiValue::from_iter(items)
}

/// Calls `util.jid.prep` from Rust: `Some(prepped)` or `None` if invalid.
fn prep_with(f: &Function) -> impl Fn(&str) -> Option<String> + '_ {
    move |s: &str| f.call::<Option<String>>(s).ok().flatten()
}

fn raw_value(v: Value) -> Option<RawValue> {
    match v {
        Value::Nil => None,
        Value::Boolean(b) => Some(RawValue::Bool(b)),
        Value::Integer(i) => Some(RawValue::Number(i as f64)),
        Value::Number(n) => Some(RawValue::Number(n)),
        Value::String(s) => Some(RawValue::String(s.to_string_lossy())),
        Value::Table(t) => Some(raw_table(t)),
        _ => Some(RawValue::String(format!("<{}>", v.type_name()))),
    }
}

/// A Lua table as an option value: a list of strings (a Lua array, a set of string
/// keys mapping to true, or a Prosody `util.set`, whose items live in `_items`), or,
/// when any named field holds something other than `true`, a table of named fields
/// (`sql = { driver = "PostgreSQL", … }`).
fn raw_table(t: Table) -> RawValue {
    let source = match t.raw_get::<Value>("_items") {
        Ok(Value::Table(items)) => items,
        _ => t,
    };
    let mut list = Vec::new();
    let mut fields = std::collections::BTreeMap::new();
    for (key, value) in source.pairs::<Value, Value>().flatten() {
        match (key, value) {
            (Value::Integer(_), Value::String(s)) => list.push(s.to_string_lossy()),
            (Value::String(k), Value::Boolean(true)) => list.push(k.to_string_lossy()),
            (Value::String(k), value) => {
                if let Some(v) = raw_value(value) {
                    fields.insert(k.to_string_lossy(), v);
                }
            }
            _ => {}
        }
    }
    if fields.is_empty() {
        list.sort();
        RawValue::List(list)
    } else {
        RawValue::Table(fields)
    }
}

/// The copy of `stanza` to deliver: the same children plus our `<stanza-id>`.
fn delivered_copy(lua: &Lua, stanza: &Table, stanza_id: &Element) -> LuaResult<Table> {
    copy_without(lua, stanza, &|_| false, Some(stanza_id))?
        .ok_or_else(|| mlua::Error::runtime("stanza copy failed"))
}

/// `native.open{ host =, data_path =, options = {…}, stanza_mt =, jid_prep =,
/// background = bool }` -> handle | opening | nil, err
///
/// A bad option fails at once (marked `config`), whatever `background` says. With
/// `background`, connecting to the database and loading preferences happen on a new
/// thread and the caller gets an [`Opening`] to poll: the shim's retries while the
/// database is unreachable must not hold the event loop for a connect timeout.
fn open(lua: &Lua, args: Table) -> LuaResult<MultiValue> {
    let host: String = args.get("host")?;
    let data_path: String = args.get("data_path")?;
    let options: Table = args.get("options")?;
    let stanza_mt: Table = args.get("stanza_mt")?;
    let jid_prep: Function = args.get("jid_prep")?;
    let background: bool = args.get::<Option<bool>>("background")?.unwrap_or(false);
    let source = |name: &str| raw_value(options.get::<Value>(name).unwrap_or(Value::Nil));
    let config = match Config::from_options(&host, &data_path, &source) {
        Ok(c) => c,
        Err(e) => {
            // A bad option will not fix itself: the shim fails the module load.
            let mv = failure(lua, &e)?;
            if let Some(Value::Table(t)) = mv.iter().nth(1) {
                t.raw_set("config", true)?;
            }
            return Ok(mv);
        }
    };
    if background {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("mam-open".into())
            .spawn(move || {
                let _ = done.send(Archive::open(config));
            })
            .map_err(|e| mlua::Error::runtime(format!("cannot start a thread: {e}")))?;
        let opening = Opening {
            result,
            stanza_mt,
            jid_prep,
        };
        return Ok(values([Value::UserData(lua.create_userdata(opening)?)]));
    }
    match Archive::open(config) {
        Ok(archive) => handle_values(lua, archive, stanza_mt, jid_prep),
        Err(e) => failure(lua, &e),
    }
}

fn handle_values(
    lua: &Lua,
    archive: Archive,
    stanza_mt: Table,
    jid_prep: Function,
) -> LuaResult<MultiValue> {
    let handle = ArchiveHandle {
        archive: Some(archive),
        stanza_mt,
        jid_prep,
    };
    Ok(values([Value::UserData(lua.create_userdata(handle)?)]))
}

/// An archive being opened on a background thread.
struct Opening {
    result: std::sync::mpsc::Receiver<crate::error::Result<Archive>>,
    stanza_mt: Table,
    jid_prep: Function,
}

impl UserData for Opening {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // poll() -> false (still opening) | handle | nil, err
        methods.add_method("poll", |lua, this, ()| {
            use std::sync::mpsc::TryRecvError;
            match this.result.try_recv() {
                Err(TryRecvError::Empty) => Ok(values([Value::Boolean(false)])),
                Ok(Ok(archive)) => {
                    handle_values(lua, archive, this.stanza_mt.clone(), this.jid_prep.clone())
                }
                Ok(Err(e)) => failure(lua, &e),
                Err(TryRecvError::Disconnected) => failure(
                    lua,
                    &MamError::Thread("the archive opening thread ended without a result".into()),
                ),
            }
        });
    }
}

/// The validated configuration as a Lua table, for the shim's timers and logs.
fn config_table(lua: &Lua, c: &Config) -> LuaResult<Table> {
    let t = lua.create_table()?;
    if let Some(secs) = c.expires_after {
        t.raw_set("expires_after", secs)?;
    }
    t.raw_set("cleanup_interval", c.cleanup_interval)?;
    t.raw_set("max_results", c.max_results)?;
    t.raw_set("default_policy", c.default_policy.as_str())?;
    t.raw_set("smart_enable", c.smart_enable)?;
    t.raw_set("include_total", c.include_total)?;
    t.raw_set("storage", c.storage.describe())?;
    if let Some(limit) = c.item_limit {
        t.raw_set("item_limit", limit)?;
    }
    Ok(t)
}

/// [`Stats`] as a Lua table (integers).
fn stats_table(lua: &Lua, s: &Stats) -> LuaResult<Table> {
    let t = lua.create_table_with_capacity(0, 4)?;
    t.raw_set("writes_queued", s.writes_queued)?;
    t.raw_set("writes_committed", s.writes_committed)?;
    t.raw_set("queue_depth", s.queue_depth)?;
    t.raw_set("database_bytes", s.database_bytes)?;
    Ok(t)
}

impl UserData for ArchiveHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method_mut("config", |lua, this, ()| {
            let archive = this.archive()?;
            config_table(lua, archive.config())
        });

        // strip_forged_ids(stanza) -> new stanza, or nil if nothing was forged.
        // Decided per direct child on Prosody's table itself: no conversion, and the
        // copy shares the untouched children (most messages have no stanza-id at all).
        methods.add_method_mut("strip_forged_ids", |lua, this, stanza: Table| {
            // Runs three times per message: borrow the host, do not copy it.
            let host = this.archive()?.config().host.as_str();
            let forged = |c: &ChildTag| policy::is_forged_stanza_id(c.name, c.ns, c.by, host);
            match copy_without(lua, &stanza, &forged, None)? {
                Some(copy) => Ok(Value::Table(copy)),
                None => Ok(Value::Nil),
            }
        });

        // should_store(stanza) -> boolean, reason
        methods.add_method("should_store", |lua, _, stanza: Table| {
            // A stanza we cannot represent (nested deeper than MAX_DEPTH, which
            // Prosody's 256 KB stanza limit allows) is not archived; raising here
            // would make Prosody drop the message instead of delivering it.
            let Ok(el) = element_from_lua(lua, &stanza) else {
                return Ok((false, TOO_DEEP_REASON));
            };
            let (store, reason) = policy::should_store(&el);
            Ok((store, reason))
        });

        // rule(user, with_jid) -> "store" | "skip" | "roster"
        methods.add_method_mut(
            "rule",
            |lua, this, (user, with): (String, String)| match this.archive()?.rule(&user, &with) {
                Ok(Rule::Store) => Ok(values([Value::String(lua.create_string("store")?)])),
                Ok(Rule::Skip) => Ok(values([Value::String(lua.create_string("skip")?)])),
                Ok(Rule::IfInRoster) => Ok(values([Value::String(lua.create_string("roster")?)])),
                Err(e) => failure(lua, &e),
            },
        );

        // append(user, with_jid, stanza, want_stored, check, in_place)
        //   -> id, delivered, stored, stanza_id
        //   | nil, { log =, reason = "empty", empty = true } | nil, { log =, reason = }
        //   | nil, err
        // The stored copy is only built when someone listens for archive-message-added;
        // `check` applies stock's selection rules in the same call (one conversion of
        // the stanza) when no other module needs the archive-should-store event. With
        // `in_place` the <stanza-id> is added to `stanza` itself (delivered is stanza,
        // stanza_id the child added); without, delivered is a copy with it.
        methods.add_method_mut(
            "append",
            |lua,
             this,
             (user, with, stanza, want_stored, check, in_place): (
                String,
                String,
                Table,
                Option<bool>,
                Option<bool>,
                Option<bool>,
            )| {
                let Ok(el) = element_from_lua(lua, &stanza) else {
                    // As in should_store: deliver it, do not archive it.
                    let t = lua.create_table()?;
                    t.raw_set("log", TOO_DEEP)?;
                    t.raw_set("reason", TOO_DEEP_REASON)?;
                    return Ok(values([Value::Nil, Value::Table(t)]));
                };
                let archive = this.archive()?;
                let result = if check.unwrap_or(false) {
                    archive.append_if_eligible(&user, &with, el)
                } else {
                    archive.append(&user, &with, el)
                };
                match result {
                    Ok(Ok(appended)) => {
                        let (delivered, sid) = if in_place.unwrap_or(false) {
                            let sid = append_child(lua, &stanza, &appended.stanza_id)?;
                            (stanza, Value::Table(sid))
                        } else {
                            (
                                delivered_copy(lua, &stanza, &appended.stanza_id)?,
                                Value::Nil,
                            )
                        };
                        Ok(values([
                            Value::String(lua.create_string(&appended.id)?),
                            Value::Table(delivered),
                            if want_stored.unwrap_or(false) {
                                Value::Table(this.to_lua(lua, &appended.stored)?)
                            } else {
                                Value::Nil
                            },
                            sid,
                        ]))
                    }
                    Ok(Err(not_stored)) => {
                        let t = lua.create_table()?;
                        match not_stored {
                            NotStored::EmptyWhenStripped => {
                                t.raw_set("log", "empty when stripped")?;
                                t.raw_set("empty", true)?;
                                t.raw_set("reason", "empty")?;
                            }
                            NotStored::Policy(reason) => {
                                t.raw_set("log", reason)?;
                                t.raw_set("reason", reason)?;
                            }
                        }
                        Ok(values([Value::Nil, Value::Table(t)]))
                    }
                    Err(e) => failure(lua, &e),
                }
            },
        );

        // query_form(user) -> <query> with the form
        methods.add_method_mut("query_form", |lua, this, user: String| {
            match this.archive()?.query_form(&user) {
                Ok(el) => Ok(values([Value::Table(this.to_lua(lua, &el)?)])),
                Err(e) => failure(lua, &e),
            }
        });

        // query(user, query_el, reply_to, reply_from, iq_id, serialised) -> job | nil, err
        // Validation errors come back at once; the answer arrives via completions() as
        // { job =, count =, page = Page }, serialised on the reader thread if asked.
        methods.add_method_mut(
            "query",
            |lua,
             this,
             (user, query_el, to, from, iq_id, serialised): (
                String,
                Table,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<bool>,
            )| {
                let el = element_from_lua(lua, &query_el)?;
                let jid_prep = this.jid_prep.clone();
                let prep = prep_with(&jid_prep);
                let reply = Reply {
                    to,
                    from,
                    iq_id,
                    serialised: serialised.unwrap_or(false),
                };
                match this.archive()?.start_query(&user, &el, &prep, reply) {
                    Ok(job) => Ok(values([Value::Integer(job as i64)])),
                    Err(e) => failure(lua, &e),
                }
            },
        );

        // metadata(user) -> job | nil, err
        methods.add_method_mut("metadata", |lua, this, user: String| {
            match this.archive()?.start_metadata(&user) {
                Ok(job) => Ok(values([Value::Integer(job as i64)])),
                Err(e) => failure(lua, &e),
            }
        });

        // prefs(user, prefs_el_or_nil) -> <prefs> | nil, err
        methods.add_method_mut(
            "prefs",
            |lua, this, (user, set): (String, Option<Table>)| {
                let set_el = match set {
                    Some(t) => Some(element_from_lua(lua, &t)?),
                    None => None,
                };
                let jid_prep = this.jid_prep.clone();
                let prep = prep_with(&jid_prep);
                match this.archive()?.prefs_iq(&user, set_el.as_ref(), &prep) {
                    Ok(el) => Ok(values([Value::Table(this.to_lua(lua, &el)?)])),
                    Err(e) => failure(lua, &e),
                }
            },
        );

        // expire_batch(n) -> job | false (expiry off) | nil, err
        methods.add_method_mut("expire_batch", |lua, this, batch: usize| {
            match this.archive()?.start_expire(batch) {
                Ok(Some(job)) => Ok(values([Value::Integer(job as i64)])),
                Ok(None) => Ok(values([Value::Boolean(false)])),
                Err(e) => failure(lua, &e),
            }
        });

        // delete_user(user) -> job | nil, err
        methods.add_method_mut("delete_user", |lua, this, user: String| {
            match this.archive()?.start_delete_user(&user) {
                Ok(job) => Ok(values([Value::Integer(job as i64)])),
                Err(e) => failure(lua, &e),
            }
        });

        // stats() -> { writes_queued =, writes_committed =, queue_depth =,
        //             database_bytes = }: counters and a stat(2), never a wait.
        methods.add_method_mut("stats", |lua, this, ()| {
            let s = this.archive()?.stats();
            stats_table(lua, &s)
        });

        // notify_fd() -> the descriptor to watch with server.watchfd
        methods.add_method_mut("notify_fd", |_, this, ()| {
            Ok(this.archive()?.notify_fd() as i64)
        });

        // answer_now(job) -> a query's or metadata's completion if it is ready within
        // a fraction of a millisecond while the readers are idle, or nil
        methods.add_method_mut("answer_now", |lua, this, job: i64| {
            match this.archive()?.answer_now(job as u64) {
                Some(c) => Ok(Value::Table(this.completion_to_lua(lua, c)?)),
                None => Ok(Value::Nil),
            }
        });

        // completions() -> { { job =, results =, fin = } | { job =, err = } |
        //                    { job =, count = } | { log =, level = } ... }
        methods.add_method_mut("completions", |lua, this, ()| {
            let (done, logs) = this.archive()?.completions();
            let out = lua.create_table_with_capacity(done.len() + logs.len(), 0)?;
            for (level, message) in logs {
                let t = lua.create_table()?;
                t.raw_set("level", level.as_str())?;
                t.raw_set("log", message)?;
                out.raw_push(t)?;
            }
            for c in done {
                out.raw_push(this.completion_to_lua(lua, c)?)?;
            }
            Ok(out)
        });

        // flush(seconds) -> whether everything queued is committed. Blocks: only for
        // shutdown and command-line use, never on a live server's hot path.
        methods.add_method_mut("flush", |_, this, timeout: Option<f64>| {
            let timeout = Duration::from_secs_f64(timeout.unwrap_or(10.0).clamp(0.0, 3600.0));
            Ok(this.archive()?.flush(timeout))
        });

        // close() -> { { log =, level = } ... }: commits every queued write, stops the
        // threads and returns their last log lines (e.g. writes given up on at
        // shutdown while storage fails); later calls raise.
        methods.add_method_mut("close", |lua, this, ()| {
            let out = lua.create_table()?;
            if let Some(archive) = this.archive.take() {
                for (level, message) in archive.close() {
                    let t = lua.create_table()?;
                    t.raw_set("level", level.as_str())?;
                    t.raw_set("log", message)?;
                    out.raw_push(t)?;
                }
            }
            Ok(out)
        });
    }
}

/// A query's answer, taken once, in the form the session needs: the `<message>`
/// results in order, then the `<iq type='result'>` carrying the `<fin>`.
/// `page:xml()` gives them serialised (strings `session.send` writes as they are;
/// `page:xml(true)` all in one string),
/// `page:stanzas()` as Prosody stanza tables, for sessions whose outgoing stanzas
/// pass through filters. The reader thread already produced the form the shim asked
/// for; the other one is still available (converted here, on the loop) because a
/// session's filters can change while its query runs.
struct Page {
    results: Option<QueryResults>,
    stanza_mt: Table,
}

impl Page {
    fn take(&mut self) -> LuaResult<QueryResults> {
        self.results
            .take()
            .ok_or_else(|| mlua::Error::runtime("mam_native: query results already taken"))
    }
}

impl UserData for Page {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // xml(joined) -> { string, … } | string: with `joined`, everything in one
        // string, so the session writes the page with one send (each send costs
        // Prosody a log call, a filter pass and an epoll_ctl).
        methods.add_method_mut("xml", |lua, this, joined: Option<bool>| {
            let results = this.take()?;
            let mut xml = match results.messages {
                ResultStanzas::Xml(xml) => xml,
                ResultStanzas::Elements(elements) => elements.iter().map(to_wire_xml).collect(),
            };
            xml.push(to_wire_xml(&results.reply));
            if joined.unwrap_or(false) {
                Ok(Value::String(lua.create_string(xml.concat())?))
            } else {
                Ok(Value::Table(string_array(lua, &xml)?))
            }
        });
        methods.add_method_mut("stanzas", |lua, this, ()| {
            let results = this.take()?;
            let t = lua.create_table_with_capacity(results.messages.len() + 1, 0)?;
            match &results.messages {
                ResultStanzas::Elements(elements) => {
                    for el in elements {
                        t.raw_push(element_to_lua(lua, el, &this.stanza_mt)?)?;
                    }
                }
                ResultStanzas::Xml(xml) => {
                    for x in xml {
                        // Our own serialisation of a moment ago: it parses.
                        let el = parse_xml(x).map_err(|e| {
                            mlua::Error::runtime(format!("mam_native: result re-parse: {e}"))
                        })?;
                        t.raw_push(element_to_lua(lua, &el, &this.stanza_mt)?)?;
                    }
                }
            }
            t.raw_push(element_to_lua(lua, &results.reply, &this.stanza_mt)?)?;
            Ok(t)
        });
    }
}

impl ArchiveHandle {
    fn completion_to_lua(&self, lua: &Lua, c: Completion) -> LuaResult<Table> {
        let t = lua.create_table()?;
        t.raw_set("job", c.job as i64)?;
        let err = match c.outcome {
            Outcome::Query(Ok(results)) => {
                t.raw_set("count", results.messages.len() as i64)?;
                let page = Page {
                    results: Some(results),
                    stanza_mt: self.stanza_mt.clone(),
                };
                t.raw_set("page", lua.create_userdata(page)?)?;
                None
            }
            Outcome::Metadata(Ok(el)) => {
                t.raw_set("metadata", self.to_lua(lua, &el)?)?;
                None
            }
            Outcome::Removed(Ok(n)) => {
                t.raw_set("count", n as i64)?;
                None
            }
            Outcome::Query(Err(e)) | Outcome::Metadata(Err(e)) | Outcome::Removed(Err(e)) => {
                Some(e)
            }
        };
        if let Some(e) = err {
            let mv = failure(lua, &e)?;
            if let Some(v) = mv.into_iter().nth(1) {
                t.raw_set("err", v)?;
            }
        }
        Ok(t)
    }
}

/// Builds the module table: `require "mam_native"` / `luaopen_mam_native`.
pub fn exports(lua: &Lua) -> LuaResult<Table> {
    let t = lua.create_table()?;
    t.set("open", lua.create_function(open)?)?;
    t.set("admin", admin::exports(lua)?)?;
    t.set("version", env!("CARGO_PKG_VERSION"))?;
    let names = lua.create_table()?;
    for name in OPTION_NAMES {
        names.raw_push(*name)?;
    }
    t.set("option_names", names)?;
    Ok(t)
}
