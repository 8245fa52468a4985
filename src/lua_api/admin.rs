//! Lua bindings for `prosodyctl mod_mam <command>` and `prosodyctl mod_muc_mam
//! <command>`: `native.admin.parse` and `native.admin.open`, which returns the host's
//! [`Operations`] (a VirtualHost's accounts or a MUC component's rooms). This file only
//! converts values; the operations are in [`crate::admin`]. The shim
//! (`mamcommands.lib.lua`) does the Prosody-side work: which hosts, their options,
//! opening stock stores through Prosody's drivers (handed in as a [`StockArchive`]).
//!
//! Failures come back in the module's one shape ([`super::failure::Failure`]), with the exit
//! code in `err.code`.

use std::io::{BufWriter, Write};

use mlua::{
    FromLua, Function, Lua, MultiValue, Result as LuaResult, Table, UserData, UserDataMethods,
    Value,
};

use super::failure::{failure, returned};
use super::stanza_lua::element_from_lua;
use super::{prep_with, raw_value};
use crate::admin::import::{SourceMessage, StockArchive, StockDefault, StockPrefs};
use crate::admin::{self, AdminError, Command, ExportFormat, Operations, Scope, Source};

/// `admin.parse(argv, jid_prep[, { owners = "accounts" | "rooms", only_host = }])`
/// -> command table | nil, err. `only_host`: for rooms, the configuration's only MUC
/// component, where a room named without its host is.
fn parse(
    lua: &Lua,
    (argv, jid_prep, scope): (Table, Function, Option<Table>),
) -> LuaResult<MultiValue> {
    let args: Vec<String> = argv
        .sequence_values::<mlua::LuaString>()
        .map(|s| s.map(|s| s.to_string_lossy()))
        .collect::<LuaResult<_>>()?;
    let prep = prep_with(&jid_prep);
    let scope = match scope {
        None => Scope::accounts(),
        Some(t) => Scope {
            owners: super::owners_arg(&t)?,
            only_host: t.get("only_host")?,
        },
    };
    let command = match admin::parse(&args, &prep, &scope) {
        Ok(c) => c,
        Err(e) => return failure(lua, e),
    };
    let t = lua.create_table()?;
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
            t.raw_set("from", from.map(Source::name))?;
            t.raw_set("ours", from.is_some_and(Source::is_ours))?;
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
        Command::Version => {
            t.raw_set("command", "version")?;
        }
        Command::Delete { owner, filter } => {
            t.raw_set("command", "delete")?;
            t.raw_set("host", owner.host)?;
            t.raw_set("user", owner.user)?;
            t.raw_set("with", filter.with.map(|w| w.jid()))?;
            t.raw_set("before", filter.before)?;
        }
        Command::Export { owner, format } => {
            t.raw_set("command", "export")?;
            t.raw_set("host", owner.host)?;
            t.raw_set("user", owner.user)?;
            t.raw_set(
                "format",
                match format {
                    ExportFormat::Xml => "xml",
                    ExportFormat::Jsonl => "jsonl",
                },
            )?;
        }
    }
    Ok(MultiValue::from_iter([Value::Table(t)]))
}

/// `admin.open{ host =, data_path =, options = {…}, owners = "accounts" | "rooms" }`
/// -> operations | nil, err
fn open(lua: &Lua, args: Table) -> LuaResult<MultiValue> {
    let host: String = args.get("host")?;
    let data_path: String = args.get("data_path")?;
    let options: Table = args.get("options")?;
    let owners = super::owners_arg(&args)?;
    let source = |name: &str| raw_value(options.get::<Value>(name).unwrap_or(Value::Nil));
    returned(
        lua,
        Operations::open(owners, &host, &data_path, &source).map(OperationsHandle),
    )
}

/// The host's operations, as Lua holds them.
struct OperationsHandle(Operations);

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

/// Calls a Lua `say(line)` for each line of output; the first error printing a line
/// (a bug in the shim) is raised once the operation has stopped, not lost.
struct Say {
    say: Function,
    failed: Option<mlua::Error>,
}

impl Say {
    fn new(say: Function) -> Say {
        Say { say, failed: None }
    }

    fn line(&mut self, line: &str) {
        if self.failed.is_none() {
            if let Err(e) = self.say.call::<()>(line) {
                self.failed = Some(e);
            }
        }
    }

    fn finish<T>(self, lua: &Lua, result: Result<T, AdminError>) -> LuaResult<MultiValue>
    where
        T: mlua::IntoLuaMulti,
    {
        match self.failed {
            Some(e) => Err(e),
            None => returned(lua, result),
        }
    }
}

/// A stock archive store as Prosody's storage driver reads it, through the functions
/// of the shim's source table: `users() -> { user, … }`, `count(user) -> n`,
/// `find(user) -> iterator of id, stanza, when, with`, `prefs(user) -> table | nil`
/// (each `nil, err` on failure), and `describe`, a string.
struct LuaStock<'a> {
    lua: &'a Lua,
    source: Table,
    /// A Lua error (a bug in the shim, not a storage failure): raised afterwards.
    raised: Option<mlua::Error>,
}

impl LuaStock<'_> {
    /// Calls `source[name](args)`: its first value, or the driver's error text.
    fn call<A: mlua::IntoLuaMulti, R: mlua::FromLua>(
        &mut self,
        name: &str,
        args: A,
    ) -> Result<R, String> {
        let outcome = self
            .source
            .get::<Function>(name)
            .and_then(|f| f.call::<(Value, Value)>(args));
        let (value, err) = match outcome {
            Ok(values) => values,
            Err(e) => return Err(self.raise(e)),
        };
        if value.is_nil() {
            return Err(lua_text(&err));
        }
        R::from_lua(value, self.lua).map_err(|e| self.raise(e))
    }

    fn raise(&mut self, e: mlua::Error) -> String {
        let text = e.to_string();
        self.raised.get_or_insert(e);
        text
    }
}

fn lua_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string_lossy(),
        Value::Nil => "unknown error".into(),
        other => format!("{other:?}"),
    }
}

impl StockArchive for LuaStock<'_> {
    fn describe(&self) -> String {
        self.source
            .get::<String>("describe")
            .unwrap_or_else(|_| "the stock archive".into())
    }

    fn users(&mut self) -> Result<Vec<String>, String> {
        self.call("users", ())
    }

    fn count(&mut self, user: &str) -> Result<u64, String> {
        self.call("count", user)
    }

    fn messages(
        &mut self,
        user: &str,
        each: &mut dyn FnMut(SourceMessage) -> bool,
    ) -> Result<(), String> {
        let iter: Function = self.call("find", user)?;
        loop {
            let (id, stanza, when, with) = match iter.call::<(Value, Value, Value, Value)>(()) {
                Ok(values) => values,
                Err(e) => return Err(self.raise(e)),
            };
            if id.is_nil() {
                return Ok(());
            }
            let message = (|| -> LuaResult<SourceMessage> {
                let stanza = Table::from_lua(stanza, self.lua)?;
                Ok(SourceMessage {
                    id: String::from_lua(id, self.lua)?,
                    when_secs: f64::from_lua(when, self.lua)?,
                    with: Option::<String>::from_lua(with, self.lua)?.unwrap_or_default(),
                    stanza: element_from_lua(self.lua, &stanza)?,
                })
            })();
            match message {
                Ok(m) => {
                    if !each(m) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(self.raise(e)),
            }
        }
    }

    fn prefs(&mut self, user: &str) -> Result<Option<StockPrefs>, String> {
        let f: Function = self.source.get("prefs").map_err(|e| self.raise(e))?;
        match f.call::<Value>(user) {
            Ok(Value::Table(t)) => stock_prefs(&t).map(Some).map_err(|e| self.raise(e)),
            Ok(_) => Ok(None),
            Err(e) => Err(self.raise(e)),
        }
    }
}

/// Stock's prefs table `{ [false] = default, ["jid"] = true|false }`.
fn stock_prefs(t: &Table) -> LuaResult<StockPrefs> {
    let mut prefs = StockPrefs::default();
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair?;
        match (k, v) {
            (Value::Boolean(false), Value::Boolean(true)) => {
                prefs.default = Some(StockDefault::Always)
            }
            (Value::Boolean(false), Value::Boolean(false)) => {
                prefs.default = Some(StockDefault::Never)
            }
            (Value::Boolean(false), Value::String(s)) if s.as_bytes().as_ref() == b"roster" => {
                prefs.default = Some(StockDefault::Roster)
            }
            (Value::String(jid), Value::Boolean(b)) => prefs.rules.push((jid.to_string_lossy(), b)),
            // Anything else is not something stock writes; skipped.
            _ => {}
        }
    }
    Ok(prefs)
}

impl UserData for OperationsHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // config() -> { storage =, expires_after =, expires_option =, archive_store = }
        // expires_option: the option's name (archive_expires_after or
        // muc_log_expires_after), for messages.
        methods.add_method("config", |lua, this, ()| {
            let config = this.0.config();
            let t = lua.create_table()?;
            t.raw_set("storage", config.storage.describe())?;
            t.raw_set("expires_after", config.expires_after)?;
            t.raw_set("expires_option", config.owners.expires_after_option())?;
            t.raw_set("archive_store", config.archive_store.as_str())?;
            Ok(t)
        });

        // import_stock(source, say) -> true | nil, err: see LuaStock for `source`.
        methods.add_method_mut(
            "import_stock",
            |lua, this, (source, say): (Table, Function)| {
                let mut say = Say::new(say);
                let mut stock = LuaStock {
                    lua,
                    source,
                    raised: None,
                };
                let result = this.0.import_stock(&mut stock, &mut |l| say.line(l));
                if let Some(e) = stock.raised {
                    return Err(e);
                }
                say.finish(lua, result.map(|()| true))
            },
        );

        // import_stock_sqlite{ database =, password =, store =, say = } -> true | nil, err
        // Stock's archive read natively from Prosody's SQLite file (an encrypted
        // `sql` store, which Prosody's own driver cannot open without SQLCipher).
        methods.add_method_mut("import_stock_sqlite", |lua, this, args: Table| {
            let database: String = args.get("database")?;
            let password: Option<String> = args.get("password")?;
            let store: String = args.get("store")?;
            let mut say = Say::new(args.get::<Function>("say")?);
            let result = this
                .0
                .import_stock_sqlite(&database, password, &store, &mut |l| say.line(l));
            say.finish(lua, result.map(|()| true))
        });

        // copy_from{ from = "mam-sqlite"|"mam-postgres", source =, say = }
        //   -> verified | nil, err
        // Copies another archive of this module into this host's configured one.
        methods.add_method_mut("copy_from", |lua, this, args: Table| {
            let from = match args.get::<String>("from")?.as_str() {
                "mam-sqlite" => Source::MamSqlite,
                "mam-postgres" => Source::MamPostgres,
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "mam_native: copy_from({other:?}): not one of this module's archives"
                    )))
                }
            };
            let source: Option<String> = args.get("source")?;
            let mut say = Say::new(args.get("say")?);
            let result = this
                .0
                .copy_from(from, source.as_deref(), &mut |l| say.line(l));
            say.finish(lua, result)
        });

        // expire() -> deleted | nil, err
        methods.add_method_mut("expire", |lua, this, ()| returned(lua, this.0.expire()));

        // delete{ user =, with =, before = } -> deleted | nil, err
        // with: a JID (bare: every resource); before: microseconds since the epoch.
        methods.add_method_mut("delete", |lua, this, args: Table| {
            let user: String = args.get("user")?;
            let with: Option<String> = args.get("with")?;
            let before: Option<i64> = args.get("before")?;
            returned(lua, this.0.delete(&user, with.as_deref(), before))
        });

        // export{ user =, format = "xml"|"jsonl", write = } -> count | nil, err
        methods.add_method_mut("export", |lua, this, args: Table| {
            let user: String = args.get("user")?;
            let format = match args.get::<String>("format")?.as_str() {
                "jsonl" => ExportFormat::Jsonl,
                _ => ExportFormat::Xml,
            };
            let mut out = BufWriter::with_capacity(64 * 1024, LuaSink(args.get("write")?));
            returned(lua, this.0.export(&user, format, &mut out))
        });

        // stats() -> report text | nil, err
        methods.add_method_mut("stats", |lua, this, ()| returned(lua, this.0.stats()));
    }
}

/// The `native.admin` table.
pub fn exports(lua: &Lua) -> LuaResult<Table> {
    let t = lua.create_table()?;
    t.set("parse", lua.create_function(parse)?)?;
    t.set("open", lua.create_function(open)?)?;
    Ok(t)
}
