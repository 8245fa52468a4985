//! Native engine for Prosody's XEP-0313 Message Archive Management module.
//!
//! # Layout
//! - [`lua_api`]: the only mlua code: the module table, the archive handle, stanza
//!   conversion between Lua tables and [`stanza::Element`].
//! - [`archive`]: the engine one handle drives: archiving, queries, prefs, expiry;
//!   decisions from memory, I/O handed to threads.
//! - [`writer`]: the writer thread (group commit); [`reader`]: the query threads;
//!   [`mailbox`]: results handed back to Prosody's event loop.
//! - [`config`]: Prosody's options, parsed and validated once at load.
//! - [`policy`]: what to archive and why; archiving preferences.
//! - [`query`]: XEP-0313 queries (form, RSM) and their answers.
//! - [`stanza`]: XML in Prosody's stanza model; parse and serialise.
//! - [`store`]: the backend boundary (`ArchiveStore`), the SQLite backend (the
//!   embedded default), the PostgreSQL backend (`store::postgres`: schema, TLS), and
//!   the behavioural contract both run in their tests (`store::contract`).
//! - [`import`]: importing stock mod_mam archives under their own ids, with progress
//!   and a per-user verification.
//! - [`archive_copy`]: copying one of this module's archives into another (SQLite to
//!   PostgreSQL and back), page by page, verified like an import.
//! - [`admin`]: `prosodyctl mod_mam` commands: argument parsing, expiry now, targeted
//!   deletes, export (XML or JSON lines), statistics.
//! - [`id`], [`time`], [`ns`], [`error`]: archive ids, date-times, namespaces, errors.

pub mod admin;
pub mod archive;
pub mod config;
pub mod error;
pub mod expiry;
pub mod id;
pub mod jid;
pub mod lua_api;
pub mod mailbox;
pub mod ns;
pub mod policy;
pub mod query;
pub mod reader;
pub mod stanza;
pub mod store;
pub mod time;
pub mod writer;

/// The entry point Prosody's `package.loadlib(path, "luaopen_mam_native")` calls.
#[cfg(feature = "module")]
#[mlua::lua_module(name = "mam_native")]
fn mam_native(lua: &mlua::Lua) -> mlua::Result<mlua::Table> {
    lua_api::exports(lua)
}
