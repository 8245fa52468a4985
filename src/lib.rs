//! Native engine for Prosody's XEP-0313 Message Archive Management modules: personal
//! archives (`mod_mam`) and room archives (`mod_muc_mam`).
//!
//! # Layout
//!
//! Imports run one way, from the top of this list down; `tests/layering.rs` fails
//! when a lower layer imports a higher one. Your room is the layer your change is
//! about; you may use anything below it, nothing above.
//!
//! 1. **Prosody wiring** (`lua/`, not Rust). `lua/mod_muc_mam/mod_muc_mam.lua` is
//!    the room archives' hooks (a MUC component's host is the archive's host, a
//!    room's node its user: [`config::Owners::Rooms`]), on the same engine files,
//!    which `make plugin` installs beside it. In `lua/mod_mam/`: `mod_mam.lua` holds
//!    the hooks and nothing else; `mamengine.lib.lua` loads this library, opens the
//!    archive (and retries in the background), hands finished jobs back to the hooks,
//!    holds output until commits (the barrier), sends query pages and schedules
//!    expiry, for both modules; `mammetrics.lib.lua` the metrics;
//!    `mamcommands.lib.lua` the `prosodyctl mod_mam` / `mod_muc_mam` commands (which
//!    hosts, their options, stock stores opened through Prosody's drivers).
//!    `lua/mod_storage_mam_native/` reuses the engine library too: the engine as
//!    Prosody's storage driver for archive stores (`docs/storage-provider.md`).
//! 2. **The Lua boundary**, [`lua_api`]: the only mlua code. Converts values (Prosody
//!    stanzas to and from [`stanza::Element`] in [`lua_api::stanza_lua`]) and answers
//!    every expected failure in one shape ([`lua_api::failure`]). It reaches data
//!    only through the running archive and the operations, never the store.
//! 3. **The running archive** and, beside it, **the operations**:
//!    - [`archive`]: one host's archive as the live module drives it: decisions from
//!      memory, ids and timestamps on the spot, work handed to threads:
//!      [`writer`] (group commit; tells the loop how far it committed, for the
//!      shim's commit-before-delivery barrier), [`checkpoint`] (SQLite's log written
//!      back off the commits), [`reader`] (queries), [`expiry`] (retention, at idle
//!      priority), [`compactor`] (compression's dictionary and the rewrite of older
//!      rows, at idle priority), with results handed back to Prosody's loop by [`mailbox`];
//!      [`archive::provider`] answers Prosody's archive store API over the same
//!      threads (the boundary's side is [`lua_api::provider`]).
//!    - [`admin`]: `prosodyctl mod_mam` import, expire, delete, export, stats, behind
//!      one entry point ([`admin::Operations`]) that owns store opening, credentials
//!      and filters.
//! 4. **The query model**, [`query`]: a client's `<query>` validated into a typed
//!    query, its plan (a store request), and the answer's wire form, including the
//!    one writer of the forwarded form ([`query::open_forwarded`]).
//! 5. **The store**, [`store`]: one contract ([`store::ArchiveStore`]) and two
//!    backends, embedded SQLite and PostgreSQL, with the behavioural contract both
//!    run in their tests (`store::contract`). It knows neither the query model's
//!    types nor Lua's. Both backends write and read stanzas through
//!    `store::codec` (compression with the database's dictionaries); SQLite files are
//!    opened through `store::sqlite::key` (the SQLCipher key, checked before anything
//!    is written, and its derivation done once per file and process) and store ids
//!    through `store::sqlite::stored_id` (the packed forms of the usual ids).
//! 6. **Core**, used by everything above: [`config`] (options, parsed once at load;
//!    where a room's joins and leaves are kept, [`config::room_presences_user`]),
//!    [`policy`] (what to archive and why; preferences), [`stanza`] (XML in
//!    Prosody's model), [`jid`], [`id`] (archive ids), [`time`], [`ns`], [`error`],
//!    and [`expiry::period`] (the retention period and its cut-off).
//!
//! Tests: unit tests at the bottom of each file; `tests/` holds property tests, the
//! SQL-injection and layering checks, `tests/lua/load_test.lua` (the built library
//! loaded by a real `lua5.4` as Prosody loads it) and `tests/e2e/` (real Prosody,
//! real XMPP client, both backends); `bench/` is `make bench`.
//!
//! Packaging: `make package` (`scripts/package.sh`, templates in `packaging/`) builds
//! the Debian package and the rock into `dist/`; `tests/e2e/test_package.py` installs,
//! upgrades and removes them (`docs/packaging.md`). The version everywhere is this
//! crate's (`Cargo.toml`), exported to Lua as `version`; `CHANGELOG.md` says what
//! changed.

pub mod admin;
pub mod archive;
pub mod checkpoint;
pub mod compactor;
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
