//! The Lua API boundary: the only place that knows about mlua besides the stanza
//! conversion in [`stanza_lua`]. Each export converts its Lua arguments, calls the
//! plain-Rust [`Archive`], and converts the answer back.
//!
//! Conventions (Prosody's): expected failures return `nil, err` in the one shape
//! [`failure::failure`] builds (`{ type =, condition =, text =, log = }`, ready for
//! `st.error_reply`); bugs raise Lua errors. Options are named fields of a table,
//! never positional booleans, so the shim says what each value is.

pub mod admin;
pub mod failure;
pub mod provider;
pub mod stanza_lua;

use std::time::Duration;

use mlua::{
    Function, IntoLuaMulti, Lua, MultiValue, Result as LuaResult, Table, UserData, UserDataMethods,
    Value,
};

use crate::archive::{Archive, NotStored, Stats};
use crate::config::{Config, Owners, RawValue, OPTION_NAMES};
use crate::error::MamError;
use crate::mailbox::{Completion, JobId, Level, Outcome, QueryResults, Reply, ResultStanzas};
use crate::policy::{self, Rule};
use crate::stanza::{parse_xml, to_wire_xml, Element};
use crate::writer::Delivery;

use failure::{failure, returned, Failure};
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

    /// The element as a Prosody stanza, or `nil, err`.
    fn element_returned(
        &self,
        lua: &Lua,
        result: crate::error::Result<Element>,
    ) -> LuaResult<MultiValue> {
        match result {
            Ok(el) => self.to_lua(lua, &el)?.into_lua_multi(lua),
            Err(e) => failure(lua, e),
        }
    }
}

/// The `owners` field of an open call: `"accounts"` (the default) or `"rooms"`.
pub(crate) fn owners_arg(args: &Table) -> LuaResult<Owners> {
    match args.get::<Option<String>>("owners")? {
        None => Ok(Owners::Accounts),
        Some(name) => Owners::parse(&name)
            .ok_or_else(|| mlua::Error::runtime(format!("mam_native: unknown owners '{name}'"))),
    }
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

/// `native.open{ host =, data_path =, options = {…}, stanza_mt =, jid_prep =,
/// background = bool, owners = "accounts" | "rooms" }` -> handle | opening | nil, err
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
    let owners = owners_arg(&args)?;
    let source = |name: &str| raw_value(options.get::<Value>(name).unwrap_or(Value::Nil));
    let config = match Config::for_owners(owners, &host, &data_path, &source) {
        Ok(c) => c,
        // A bad option will not fix itself: `config` tells the shim to fail the load.
        Err(e) => return failure(lua, e),
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
        return lua.create_userdata(opening)?.into_lua_multi(lua);
    }
    returned(
        lua,
        Archive::open(config).map(|a| handle(a, stanza_mt, jid_prep)),
    )
}

fn handle(archive: Archive, stanza_mt: Table, jid_prep: Function) -> ArchiveHandle {
    ArchiveHandle {
        archive: Some(archive),
        stanza_mt,
        jid_prep,
    }
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
            let opened = match this.result.try_recv() {
                Err(TryRecvError::Empty) => return false.into_lua_multi(lua),
                Ok(opened) => opened,
                Err(TryRecvError::Disconnected) => Err(MamError::Thread(
                    "the archive opening thread ended without a result".into(),
                )),
            };
            let (mt, prep) = (this.stanza_mt.clone(), this.jid_prep.clone());
            returned(lua, opened.map(|a| handle(a, mt, prep)))
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
    t.raw_set("archive_store", c.archive_store.as_str())?;
    t.raw_set("owners", c.owners.as_str())?;
    t.raw_set("commit_before_delivery", c.commit_before_delivery)?;
    t.raw_set("commit_wait_limit", c.commit_wait_limit.as_secs_f64())?;
    if let Some(limit) = c.item_limit {
        t.raw_set("item_limit", limit)?;
    }
    t.raw_set(
        "warnings",
        lua.create_sequence_from(c.warnings.iter().map(String::as_str))?,
    )?;
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
            copy_without(lua, &stanza, &forged)
        });

        // should_store(stanza) -> boolean, reason
        methods.add_method("should_store", |lua, _, stanza: Table| {
            // A stanza we cannot represent (nested deeper than MAX_DEPTH, which
            // Prosody's 256 KB stanza limit allows) is not archived; raising here
            // would make Prosody drop the message instead of delivering it.
            let Ok(el) = element_from_lua(lua, &stanza) else {
                return Ok((false, TOO_DEEP_REASON));
            };
            Ok(policy::should_store(&el))
        });

        // rule(user, with_jid) -> "store" | "skip" | "roster" | nil, err
        methods.add_method_mut("rule", |lua, this, (user, with): (String, String)| {
            let rule = this.archive()?.rule(&user, &with).map(|r| match r {
                Rule::Store => "store",
                Rule::Skip => "skip",
                Rule::IfInRoster => "roster",
            });
            returned(lua, rule)
        });

        // append(user, with, stanza, { announce =, check =, wait = })
        //   -> id, stanza_id, stored, seq, committed | nil, err (err.reason: not
        //   archived on purpose); `committed`: every write up to it is committed now
        // `with` is the other party as addressed. Our <stanza-id> (returned as
        // stanza_id) is added to `stanza` itself: copies were most of the garbage
        // this module made. `stored`, the copy as archived, only with `announce`
        // (someone listens for archive-message-added). `check` applies stock's
        // selection rules in the same call (one conversion of the stanza) when no
        // other module needs the archive-should-store event. The options table is
        // one of a few the shim builds once: one call per message allocates nothing.
        // `wait`: the shim holds what it sends next until a completion
        // { committed = n } with n >= seq arrives, so the writer commits without
        // lingering.
        methods.add_method_mut(
            "append",
            |lua, this, (user, with, stanza, options): (String, String, Table, Option<Table>)| {
                let flag = |name: &str| -> LuaResult<bool> {
                    match &options {
                        Some(t) => Ok(t.raw_get::<Option<bool>>(name)?.unwrap_or(false)),
                        None => Ok(false),
                    }
                };
                let (announce, check) = (flag("announce")?, flag("check")?);
                let delivery = match flag("wait")? {
                    true => Delivery::AfterCommit,
                    false => Delivery::AtOnce,
                };
                let Ok(el) = element_from_lua(lua, &stanza) else {
                    // As in should_store: deliver it, do not archive it.
                    return failure(lua, Failure::not_stored(TOO_DEEP_REASON, TOO_DEEP));
                };
                let archive = this.archive()?;
                let result = if check {
                    archive.append_if_eligible(&user, &with, el, delivery)
                } else {
                    archive.append(&user, &with, el, delivery)
                };
                let committed = archive.writes_committed();
                let appended = match result {
                    Ok(Ok(appended)) => appended,
                    Ok(Err(NotStored::EmptyWhenStripped)) => {
                        return failure(lua, Failure::not_stored("empty", "empty when stripped"))
                    }
                    Ok(Err(NotStored::Policy(reason))) => {
                        return failure(lua, Failure::not_stored(reason, reason))
                    }
                    Err(e) => return failure(lua, e),
                };
                let stanza_id = append_child(lua, &stanza, &appended.stanza_id)?;
                let stored = match announce {
                    true => Some(this.to_lua(lua, &appended.stored)?),
                    false => None,
                };
                (appended.id, stanza_id, stored, appended.seq, committed).into_lua_multi(lua)
            },
        );

        // append_presence(room, occupant, left) -> true | nil, err: a join or leave
        // archived with muc_log_presences (nobody waits for it).
        methods.add_method_mut(
            "append_presence",
            |lua, this, (room, occupant, left): (String, String, bool)| match this
                .archive()?
                .append_presence(&room, &occupant, left)
            {
                Ok(()) => true.into_lua_multi(lua),
                Err(e) => failure(lua, e),
            },
        );

        // query_form(user) -> <query> with the form | nil, err
        methods.add_method_mut("query_form", |lua, this, user: String| {
            let form = this.archive()?.query_form(&user);
            this.element_returned(lua, form)
        });

        // query{ user =, query =, to =, from =, iq_id =, serialised =, hide_real_jids = }
        //   -> job | nil, err
        // Validation errors come back at once; the answer arrives as a completion
        // { job =, count =, page = Page }, serialised on the reader thread if asked.
        // to/from/iq_id address the reply (st.reply's), `query` is the <query> element.
        methods.add_method_mut("query", |lua, this, args: Table| {
            let user: String = args.raw_get("user")?;
            let query_el: Table = args.raw_get("query")?;
            let el = element_from_lua(lua, &query_el)?;
            let reply = Reply {
                to: args.raw_get("to")?,
                from: args.raw_get("from")?,
                iq_id: args.raw_get("iq_id")?,
                serialised: args.raw_get::<Option<bool>>("serialised")?.unwrap_or(false),
            };
            let hide_real_jids = args
                .raw_get::<Option<bool>>("hide_real_jids")?
                .unwrap_or(false);
            let jid_prep = this.jid_prep.clone();
            let prep = prep_with(&jid_prep);
            returned(
                lua,
                this.archive()?
                    .start_query(&user, &el, &prep, reply, hide_real_jids),
            )
        });

        // history(room, { limit =, since = seconds or nil }) -> job | nil, err; the
        // completion is { job =, items = { { id =, when = seconds, stanza = }, … } },
        // newest first (a room's join history, XEP-0045 §7.2.15).
        methods.add_method_mut("history", |lua, this, (room, args): (String, Table)| {
            let limit: usize = args.raw_get("limit")?;
            let since = args
                .raw_get::<Option<f64>>("since")?
                .map(|secs| (secs * 1_000_000.0) as crate::time::Micros);
            returned(lua, this.archive()?.start_history(&room, limit, since))
        });

        // metadata(user) -> job | nil, err
        methods.add_method_mut("metadata", |lua, this, user: String| {
            returned(lua, this.archive()?.start_metadata(&user))
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
                let prefs = this.archive()?.prefs_iq(&user, set_el.as_ref(), &prep);
                this.element_returned(lua, prefs)
            },
        );

        // expire_step() -> job | false (the archive never expires) | nil, err; the
        // completion is { job =, deleted =, more = } (more: ask for another step).
        methods.add_method_mut("expire_step", |lua, this, ()| {
            let step = this.archive()?.expire_step();
            returned(
                lua,
                step.map(|job| job.map_or(Value::Boolean(false), job_value)),
            )
        });

        // delete_user(user) -> job | nil, err; the completion is { job =, count = }
        methods.add_method_mut("delete_user", |lua, this, user: String| {
            returned(lua, this.archive()?.start_delete_user(&user))
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
        methods.add_method_mut("answer_now", |lua, this, job: JobId| {
            match this.archive()?.answer_now(job) {
                Some(c) => Ok(Value::Table(this.completion_to_lua(lua, c)?)),
                None => Ok(Value::Nil),
            }
        });

        // completions() -> { { job =, … } | { committed = seq } | { log =, level = } ... }
        methods.add_method_mut("completions", |lua, this, ()| {
            let (done, logs) = this.archive()?.completions();
            let out = lua.create_table_with_capacity(done.len() + logs.len(), 0)?;
            push_log_lines(lua, &out, logs)?;
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
                push_log_lines(lua, &out, archive.close())?;
            }
            Ok(out)
        });
    }
}

/// A job id as Lua sees it.
fn job_value(job: JobId) -> Value {
    Value::Integer(job as i64)
}

/// Appends `{ level =, log = }` for each line from the engine's threads.
fn push_log_lines(lua: &Lua, out: &Table, lines: Vec<(Level, String)>) -> LuaResult<()> {
    for (level, message) in lines {
        let t = lua.create_table_with_capacity(0, 2)?;
        t.raw_set("level", level.as_str())?;
        t.raw_set("log", message)?;
        out.raw_push(t)?;
    }
    Ok(())
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
            Outcome::Expired(Ok(step)) => {
                t.raw_set("deleted", step.deleted as i64)?;
                t.raw_set("more", step.more)?;
                None
            }
            Outcome::History(Ok(items)) => {
                let list = lua.create_table_with_capacity(items.len(), 0)?;
                for item in items {
                    let entry = lua.create_table_with_capacity(0, 3)?;
                    entry.raw_set("id", item.id)?;
                    entry.raw_set("when", item.when as f64 / 1_000_000.0)?;
                    entry.raw_set("stanza", self.to_lua(lua, &item.stanza)?)?;
                    list.raw_push(entry)?;
                }
                t.raw_set("items", list)?;
                None
            }
            Outcome::Committed(seq) => {
                t.raw_set("committed", seq)?;
                None
            }
            Outcome::Provider(answer) => {
                provider::answer_fields(lua, &t, *answer, &self.stanza_mt)?
            }
            Outcome::Query(Err(e))
            | Outcome::Metadata(Err(e))
            | Outcome::Removed(Err(e))
            | Outcome::Expired(Err(e))
            | Outcome::History(Err(e)) => Some(e),
        };
        if let Some(e) = err {
            t.raw_set("err", Failure::from(&e).to_lua(lua)?)?;
        }
        Ok(t)
    }
}

/// Builds the module table: `require "mam_native"` / `luaopen_mam_native`.
pub fn exports(lua: &Lua) -> LuaResult<Table> {
    let t = lua.create_table()?;
    t.set("open", lua.create_function(open)?)?;
    t.set("admin", admin::exports(lua)?)?;
    t.set("store", provider::exports(lua)?)?;
    t.set("version", env!("CARGO_PKG_VERSION"))?;
    let names = lua.create_table()?;
    for name in OPTION_NAMES {
        names.raw_push(*name)?;
    }
    t.set("option_names", names)?;
    Ok(t)
}
