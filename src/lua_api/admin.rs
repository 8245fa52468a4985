//! Lua bindings for `prosodyctl mod_mam <command>`: `native.admin.parse` and
//! `native.admin.open`. The shim (`mamcommands.lib.lua`) does the Prosody-side work:
//! which hosts, their options, reading stock stores; the logic is in
//! [`crate::admin`], [`crate::import`] and [`crate::archive_copy`].
//!
//! Conventions: expected failures return `nil, message` (and `code` for usage errors
//! from `parse`); bugs raise Lua errors.

use std::io::{BufWriter, Write};
use std::sync::Arc;

use mlua::{
    Function, Lua, MultiValue, Result as LuaResult, Table, UserData, UserDataMethods, Value,
};

use super::stanza_lua::element_from_lua;
use crate::admin::{self, AdminError, Command, ExportFormat};
use crate::archive_copy::{self, CopySource};
use crate::config::Config;
use crate::import::{prefs_from_stock, Importer, SourceMessage, StockDefault};
use crate::store::{self, ArchiveStore};
use crate::store::{DeleteFilter, Owner};
use crate::time::SystemClock;

use super::{prep_with, raw_value};

fn fail(lua: &Lua, message: &str) -> LuaResult<MultiValue> {
    Ok(MultiValue::from_iter([
        Value::Nil,
        Value::String(lua.create_string(message)?),
    ]))
}

/// `nil, message, exit code`: a failure whose exit code the command must use.
fn fail_with_code(lua: &Lua, message: &str, code: i32) -> LuaResult<MultiValue> {
    Ok(MultiValue::from_iter([
        Value::Nil,
        Value::String(lua.create_string(message)?),
        Value::Integer(code.into()),
    ]))
}

fn ok_values<const N: usize>(items: [Value; N]) -> MultiValue {
    MultiValue::from_iter(items)
}

/// `admin.parse(argv, jid_prep)` -> command table | nil, message, exit code
fn parse(lua: &Lua, (argv, jid_prep): (Table, Function)) -> LuaResult<MultiValue> {
    let args: Vec<String> = argv
        .sequence_values::<mlua::LuaString>()
        .map(|s| s.map(|s| s.to_string_lossy()))
        .collect::<LuaResult<_>>()?;
    let prep = prep_with(&jid_prep);
    let command = match admin::parse(&args, &prep) {
        Ok(c) => c,
        Err(e) => {
            return Ok(MultiValue::from_iter([
                Value::Nil,
                Value::String(lua.create_string(e.message())?),
                Value::Integer(e.exit_code().into()),
            ]))
        }
    };
    let t = lua.create_table()?;
    let owner = |t: &Table, o: &Owner| -> LuaResult<()> {
        t.raw_set("host", o.host.as_str())?;
        t.raw_set("user", o.user.as_str())
    };
    match command {
        Command::Help(text) => {
            t.raw_set("command", "help")?;
            t.raw_set("text", text)?;
        }
        Command::Import {
            host,
            from,
            store,
            source,
        } => {
            t.raw_set("command", "import")?;
            t.raw_set("host", host)?;
            t.raw_set("from", from.map(|f| f.name()))?;
            t.raw_set("ours", from.is_some_and(|f| f.is_ours()))?;
            t.raw_set("store", store)?;
            t.raw_set("source", source)?;
        }
        Command::Expire { host } => {
            t.raw_set("command", "expire")?;
            t.raw_set("host", host)?;
        }
        Command::Stats { host } => {
            t.raw_set("command", "stats")?;
            t.raw_set("host", host)?;
        }
        Command::Delete { owner: o, filter } => {
            t.raw_set("command", "delete")?;
            owner(&t, &o)?;
            if let Some(w) = filter.with {
                t.raw_set("with", w.jid())?;
            }
            t.raw_set("before", filter.before)?;
        }
        Command::Export { owner: o, format } => {
            t.raw_set("command", "export")?;
            owner(&t, &o)?;
            t.raw_set(
                "format",
                match format {
                    ExportFormat::Xml => "xml",
                    ExportFormat::Jsonl => "jsonl",
                },
            )?;
        }
    }
    Ok(ok_values([Value::Table(t)]))
}

/// One host's archive, opened for a command.
struct AdminHandle {
    config: Config,
    /// Prosody's data directory: where a relative `--source` file is.
    data_path: String,
    store: Box<dyn ArchiveStore>,
    /// The import run in progress (its own connection), between `import_begin` and
    /// the end of the command.
    importer: Option<Importer>,
}

impl AdminHandle {
    fn importer(&mut self) -> LuaResult<&mut Importer> {
        self.importer
            .as_mut()
            .ok_or_else(|| mlua::Error::runtime("mam_native: import_begin() not called"))
    }
}

/// `admin.open{ host =, data_path =, options = {…} }` -> handle | nil, message
fn open(lua: &Lua, args: Table) -> LuaResult<MultiValue> {
    let host: String = args.get("host")?;
    let data_path: String = args.get("data_path")?;
    let options: Table = args.get("options")?;
    let source = |name: &str| raw_value(options.get::<Value>(name).unwrap_or(Value::Nil));
    let config = match Config::from_options(&host, &data_path, &source) {
        Ok(c) => c,
        Err(e) => return fail(lua, &format!("{host}: {e}")),
    };
    let store = match store::open(&config.storage, true) {
        Ok(s) => s,
        Err(e) => {
            return fail(
                lua,
                &format!("{host}: {} ({})", e, config.storage.describe()),
            )
        }
    };
    let handle = AdminHandle {
        config,
        data_path,
        store,
        importer: None,
    };
    Ok(ok_values([Value::UserData(lua.create_userdata(handle)?)]))
}

/// Writes to a Lua function (`io.write`), so Lua's and our output share one buffer.
struct LuaSink(Function);

impl Write for LuaSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .call::<Value>(mlua::LuaString::wrap(buf))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn admin_result(lua: &Lua, r: Result<u64, AdminError>) -> LuaResult<MultiValue> {
    match r {
        Ok(n) => Ok(ok_values([Value::Integer(n as i64)])),
        Err(e) => fail(lua, e.message()),
    }
}

/// A stock prefs table read out: its default (`prefs[false]`) and its JID rules.
type StockPrefs = (Option<StockDefault>, Vec<(String, bool)>);

/// Stock's prefs table `{ [false] = default, ["jid"] = true|false }`.
fn stock_prefs(t: &Table) -> LuaResult<StockPrefs> {
    let mut default = None;
    let mut rules = Vec::new();
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair?;
        match (k, v) {
            (Value::Boolean(false), Value::Boolean(true)) => default = Some(StockDefault::Always),
            (Value::Boolean(false), Value::Boolean(false)) => default = Some(StockDefault::Never),
            (Value::Boolean(false), Value::String(s)) if s.as_bytes().as_ref() == b"roster" => {
                default = Some(StockDefault::Roster)
            }
            (Value::String(jid), Value::Boolean(b)) => rules.push((jid.to_string_lossy(), b)),
            // Anything else is not something stock writes; skipped.
            _ => {}
        }
    }
    Ok((default, rules))
}

impl UserData for AdminHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // config() -> { storage =, expires_after =, archive_store = }
        methods.add_method("config", |lua, this, ()| {
            let t = lua.create_table()?;
            t.raw_set("storage", this.config.storage.describe())?;
            t.raw_set("expires_after", this.config.expires_after)?;
            t.raw_set("archive_store", this.config.archive_store.as_str())?;
            Ok(t)
        });

        // import_begin(expected_total_or_nil) -> true | nil, message
        methods.add_method_mut("import_begin", |lua, this, expected: Option<u64>| {
            let store = match store::open(&this.config.storage, true) {
                Ok(s) => s,
                Err(e) => return fail(lua, &e.to_string()),
            };
            let mut importer = Importer::new(&this.config.host, store, Arc::new(SystemClock));
            if let Some(n) = expected {
                importer.expect(n);
            }
            this.importer = Some(importer);
            Ok(ok_values([Value::Boolean(true)]))
        });

        // import_batch(user, { { id =, when =, with =, stanza = }, … }) -> done | nil, message
        methods.add_method_mut(
            "import_batch",
            |lua, this, (user, records): (String, Table)| {
                let mut batch = Vec::with_capacity(records.raw_len());
                for rec in records.sequence_values::<Table>() {
                    let rec = rec?;
                    let stanza: Table = rec.get("stanza")?;
                    batch.push(SourceMessage {
                        id: rec.get("id")?,
                        when_secs: rec.get("when")?,
                        with: rec.get::<Option<String>>("with")?.unwrap_or_default(),
                        stanza: element_from_lua(lua, &stanza)?,
                    });
                }
                let importer = this.importer()?;
                match importer.batch(&user, &batch) {
                    Ok(()) => Ok(ok_values([Value::Integer(importer.done() as i64)])),
                    Err(e) => fail(lua, &format!("{user}: {e}")),
                }
            },
        );

        // import_user(user): lists a user even if their source archive is empty.
        methods.add_method_mut("import_user", |_, this, user: String| {
            this.importer()?.saw_user(&user);
            Ok(())
        });

        // import_prefs(user, stock_prefs) -> stored | nil, message
        methods.add_method_mut(
            "import_prefs",
            |lua, this, (user, prefs): (String, Table)| {
                let (default, rules) = stock_prefs(&prefs)?;
                let server_default = this.config.default_policy;
                let ours = prefs_from_stock(default, &rules, server_default);
                match this.importer()?.prefs(&user, &ours) {
                    Ok(stored) => Ok(ok_values([Value::Boolean(stored)])),
                    Err(e) => fail(lua, &format!("{user}: {e}")),
                }
            },
        );

        // import_progress() -> "1200/5000 messages (24%), …"
        methods.add_method_mut("import_progress", |_, this, ()| {
            Ok(this.importer()?.progress_line())
        });

        // import_verify() -> { lines }, all_ok | nil, message
        methods.add_method_mut("import_verify", |lua, this, ()| {
            match this.importer()?.verify() {
                Ok((lines, ok)) => Ok(ok_values([
                    Value::Table(lua.create_sequence_from(lines)?),
                    Value::Boolean(ok),
                ])),
                Err(e) => fail(lua, &e.to_string()),
            }
        });

        // copy_from("mam-sqlite"|"mam-postgres", source_or_nil, say)
        //   -> verified | nil, message, exit code
        // Copies another archive of this module into this host's configured one,
        // calling say(line) for each line of output (progress, verification).
        methods.add_method(
            "copy_from",
            |lua, this, (from, source, say): (String, Option<String>, Function)| {
                let copy_source = match (from.as_str(), source.as_deref()) {
                    ("mam-sqlite", path) => {
                        CopySource::sqlite(path, &this.data_path, &this.config.archive_store)
                    }
                    ("mam-postgres", Some(conninfo)) => {
                        match CopySource::postgres(conninfo, std::env::var("PGPASSWORD").ok()) {
                            Ok(s) => s,
                            Err(e) => return fail_with_code(lua, &e.to_string(), e.exit_code()),
                        }
                    }
                    _ => {
                        return Err(mlua::Error::runtime(format!(
                            "mam_native: copy_from({from:?}) without a usable source"
                        )))
                    }
                };
                // The first error printing a line (a bug in the shim) is raised once
                // the copy has stopped, not lost.
                let mut say_failed: Option<mlua::Error> = None;
                let mut say_line = |line: &str| {
                    if say_failed.is_none() {
                        if let Err(e) = say.call::<()>(line) {
                            say_failed = Some(e);
                        }
                    }
                };
                let result = archive_copy::copy(
                    &copy_source,
                    &this.config.storage,
                    &this.config.host,
                    Arc::new(SystemClock),
                    &mut say_line,
                );
                if let Some(e) = say_failed {
                    return Err(e);
                }
                match result {
                    Ok(verified) => Ok(ok_values([Value::Boolean(verified)])),
                    Err(e) => fail_with_code(lua, &e.to_string(), e.exit_code()),
                }
            },
        );

        // expire() -> deleted | nil, message
        methods.add_method_mut("expire", |lua, this, ()| {
            let r = admin::expire_now(
                &mut *this.store,
                &this.config.host,
                this.config.expires_after,
                &SystemClock,
            );
            admin_result(lua, r)
        });

        // delete(user, with_jid_or_nil, before_micros_or_nil) -> deleted | nil, message
        methods.add_method_mut(
            "delete",
            |lua, this, (user, with, before): (String, Option<String>, Option<i64>)| {
                let owner = Owner::new(&this.config.host, &user);
                let with = with.map(|w| crate::store::WithFilter::from_jid(&w));
                let r = admin::delete(&mut *this.store, &owner, &DeleteFilter { with, before });
                admin_result(lua, r)
            },
        );

        // export(user, "xml"|"jsonl", write) -> count | nil, message
        methods.add_method_mut(
            "export",
            |lua, this, (user, format, write): (String, String, Function)| {
                let format = if format == "jsonl" {
                    ExportFormat::Jsonl
                } else {
                    ExportFormat::Xml
                };
                let owner = Owner::new(&this.config.host, &user);
                let mut out = BufWriter::with_capacity(64 * 1024, LuaSink(write));
                let r = admin::export(&mut *this.store, &owner, format, &mut out);
                admin_result(lua, r)
            },
        );

        // stats() -> report text | nil, message
        methods.add_method_mut("stats", |lua, this, ()| {
            let db = this.config.storage.describe();
            match admin::stats_report(&mut *this.store, &this.config.host, &db) {
                Ok(text) => Ok(ok_values([Value::String(lua.create_string(&text)?)])),
                Err(e) => fail(lua, e.message()),
            }
        });
    }
}

/// The `native.admin` table.
pub fn exports(lua: &Lua) -> LuaResult<Table> {
    let t = lua.create_table()?;
    t.set("parse", lua.create_function(parse)?)?;
    t.set("open", lua.create_function(open)?)?;
    Ok(t)
}
