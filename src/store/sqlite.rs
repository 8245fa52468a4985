//! The SQLite backend.
//!
//! One [`rusqlite::Connection`] per store. Every public operation is one transaction:
//! reads see one snapshot (so a page and its `<count>` agree), writes take the write
//! lock up front (`BEGIN IMMEDIATE`) so two Prosody processes never deadlock upgrading
//! a read lock. Every statement goes through `prepare_cached` with bound parameters;
//! the only SQL assembled at run time is the `find` query, and its fragments are
//! constants chosen by which filters are present, never text from a client.
//!
//! Archive order is `(when_us, seq)`: the timestamp, then insertion order. Every query
//! names the owner first (its number in `archive_owners`, found by `(host, user)`) so it runs on an index that leads with it (see
//! [`super::schema`]); the `query_plans_use_owner_leading_indexes` test holds us to it.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{Value, ValueRef};
use rusqlite::{
    params, params_from_iter, Connection, OpenFlags, OptionalExtension, TransactionBehavior,
};

mod admin;
mod key;
mod provider;
pub mod stock;
pub mod stored_id;

use super::codec::Codec;
use super::{
    schema, ArchiveBounds, ArchiveEnd, ArchiveStore, ArchivedMessage, DeleteFilter, Dictionary,
    FindRequest, ImportReport, ImportedMessage, Owner, OwnerStats, Page, Quota, RewriteMark,
    RewriteStep,
};
use crate::config::DatabaseKey;
use crate::error::{MamError, Result};
use crate::policy::{DefaultPolicy, Prefs};
use crate::time::Micros;

/// How long a statement waits for another process's write lock before failing.
/// Prosody writes are short; a few seconds covers an expiry batch or a checkpoint.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Room for every `find` shape (they differ by which filters are present: 216 texts,
/// see `find_sql_is_built_from_a_closed_set_of_fragments…`) plus the fixed
/// statements, so the cache does not evict in steady state.
const STATEMENT_CACHE: usize = 256;

/// How many owners expiry reads at a time while walking a host's owners.
const OWNER_CHUNK: i64 = 256;

/// `owner = ` the owner named by `?1` (host) and `?2` (user): one probe of
/// `archive_owners`' unique index, done once per statement. An owner with no row
/// matches nothing, as an empty archive should.
macro_rules! owner_is {
    () => {
        "owner = (SELECT owner FROM archive_owners WHERE host = ?1 AND user = ?2)"
    };
}
pub(super) use owner_is;

/// A row's contact JID (`archive_contacts`, by its rowid).
macro_rules! contact_jid {
    () => {
        "(SELECT jid FROM archive_contacts WHERE contact = archive.contact)"
    };
}
pub(super) use contact_jid;

/// One message: `?1` its seq (NULL for the next), `?2` the owner's and `?4` the
/// contact's numbers ([`owner_ref`], [`contact_ref`]), `?3` the id in its stored form.
const INSERT_MESSAGE: &str = "INSERT INTO archive (seq, owner, id, when_us, contact, \
     with_resource, stanza) VALUES (?1, ?2, mam_id(?3), ?5, ?4, ?6, ?7)";

const OWNER_NUMBER: &str = "SELECT owner FROM archive_owners WHERE host = ?1 AND user = ?2";
const ADD_OWNER: &str = "INSERT INTO archive_owners (host, user) VALUES (?1, ?2) RETURNING owner";
const CONTACT_NUMBER: &str = "SELECT contact FROM archive_contacts WHERE owner = ?1 AND jid = ?2";
const ADD_CONTACT: &str =
    "INSERT INTO archive_contacts (owner, jid) VALUES (?1, ?2) RETURNING contact";

/// Takes away a contact no message of its owner names any more (a contact added for
/// an insert or change that then did not happen).
pub(super) const FORGET_UNUSED_CONTACT: &str = "DELETE FROM archive_contacts \
     WHERE contact = ?1 AND NOT EXISTS (SELECT 1 FROM archive WHERE owner = \
     (SELECT owner FROM archive_contacts WHERE contact = ?1) AND contact = ?1)";

const OWNER_COUNT: &str = "SELECT messages FROM archive_owners WHERE host = ?1 AND user = ?2";

/// [`OWNER_COUNT`] by the owner's number, where the caller has it (a quota check).
const OWNER_COUNT_OF_NUMBER: &str = "SELECT messages FROM archive_owners WHERE owner = ?1";

/// Removes an owner's expired messages (before `?3`) except the one just stored: the
/// first step at a quota hit.
const TRIM_EXPIRED: &str = "DELETE FROM archive WHERE owner = ?1 \
     AND when_us < ?3 AND seq <> ?2";

/// Removes an owner's oldest messages except the one just stored (`seq <> ?2`), so a
/// message stamped older than the rest still survives its own quota check.
const TRIM_OLDEST: &str = "DELETE FROM archive WHERE seq IN (SELECT seq FROM archive \
     WHERE owner = ?1 AND seq <> ?2 ORDER BY when_us, seq LIMIT ?3)";

/// Where an archive id sits in archive order, for RSM `after`/`before`.
const POSITION_OF_ID: &str = concat!(
    "SELECT when_us, seq FROM archive WHERE ",
    owner_is!(),
    " AND id = mam_id(?3)"
);

const FIRST_MESSAGE: &str = concat!(
    "SELECT mam_id_text(id), when_us FROM archive WHERE ",
    owner_is!(),
    " ORDER BY when_us ASC, seq ASC LIMIT 1"
);

const LAST_MESSAGE: &str = concat!(
    "SELECT mam_id_text(id), when_us FROM archive WHERE ",
    owner_is!(),
    " ORDER BY when_us DESC, seq DESC LIMIT 1"
);

const GET_DEFAULT_POLICY: &str =
    "SELECT default_policy FROM archive_prefs WHERE host = ?1 AND user = ?2";

/// Served by the primary key (host, user): a host prefix scan.
const LIST_PREFS_USERS: &str = "SELECT user FROM archive_prefs WHERE host = ?1 ORDER BY user";

const GET_JID_RULES: &str =
    "SELECT jid, rule FROM archive_prefs_jid WHERE host = ?1 AND user = ?2 ORDER BY jid";

const SET_DEFAULT_POLICY: &str = "INSERT INTO archive_prefs (host, user, default_policy) \
     VALUES (?1, ?2, ?3) ON CONFLICT (host, user) DO UPDATE SET \
     default_policy = excluded.default_policy";

const CLEAR_JID_RULES: &str = "DELETE FROM archive_prefs_jid WHERE host = ?1 AND user = ?2";

const ADD_JID_RULE: &str =
    "INSERT INTO archive_prefs_jid (host, user, jid, rule) VALUES (?1, ?2, ?3, ?4)";

const DELETE_OWNER_ARCHIVE: &str = concat!("DELETE FROM archive WHERE ", owner_is!());
const DELETE_OWNER_COUNT: &str = "DELETE FROM archive_owners WHERE host = ?1 AND user = ?2";
const DELETE_OWNER_PREFS: &str = "DELETE FROM archive_prefs WHERE host = ?1 AND user = ?2";

/// The owners on a host that have messages, in name order, from the start.
const OWNERS_FIRST: &str = "SELECT user FROM archive_owners WHERE host = ?1 AND messages > 0 \
     ORDER BY user LIMIT ?2";

/// The owners on a host that have messages, in name order, after a given one.
const OWNERS_AFTER: &str =
    "SELECT user FROM archive_owners WHERE host = ?1 AND user > ?2 AND messages > 0 \
     ORDER BY user LIMIT ?3";

/// One owner's oldest messages before the cut-off, at most `?4` of them.
const EXPIRE_OWNER: &str = concat!(
    "DELETE FROM archive WHERE seq IN (SELECT seq FROM archive WHERE ",
    owner_is!(),
    " AND when_us < ?3 ORDER BY when_us, seq LIMIT ?4)"
);

/// Dictionaries this connection has not loaded yet (they are only ever added).
const NEWER_DICTIONARIES: &str = "SELECT version, dictionary FROM archive_dictionaries \
     WHERE version > ?1 ORDER BY version";

const NEWEST_DICTIONARY: &str = "SELECT version, trained_us, dictionary \
     FROM archive_dictionaries ORDER BY version DESC LIMIT 1";

const ADD_DICTIONARY: &str = "INSERT INTO archive_dictionaries \
     (version, trained_us, samples, dictionary) \
     SELECT coalesce(max(version), 0) + 1, ?1, ?2, ?3 FROM archive_dictionaries \
     RETURNING version";

/// The newest rows in insertion order (the rowid: no index needed).
const RECENT_STANZAS: &str = "SELECT stanza FROM archive ORDER BY seq DESC LIMIT ?1";

/// The rows of one rewrite window that are text or compressed without a dictionary
/// (`x'0100'`: format 1, dictionary 0), by rowid range: each batch reads one slice of
/// the table, whatever it holds.
const REWRITE_CANDIDATES: &str = "SELECT a.seq, a.stanza, o.host, o.user, mam_id_text(a.id), \
     a.when_us, c.jid, a.with_resource FROM archive AS a \
     JOIN archive_owners AS o ON o.owner = a.owner \
     JOIN archive_contacts AS c ON c.contact = a.contact \
     WHERE a.seq > ?1 AND a.seq <= ?2 \
     AND (typeof(a.stanza) = 'text' OR substr(a.stanza, 1, 2) = x'0100') ORDER BY a.seq";

/// Whether one rewrite window holds any candidate: asked outside any write
/// transaction, so a window with nothing to rewrite never takes the write lock.
const REWRITE_ANY_CANDIDATE: &str = "SELECT EXISTS (SELECT 1 FROM archive \
     WHERE seq > ?1 AND seq <= ?2 \
     AND (typeof(stanza) = 'text' OR substr(stanza, 1, 2) = x'0100'))";

/// A rewritten row goes out and comes back under its own `seq` (so its place in
/// archive order is kept), not through an UPDATE: SQLite rebalances B-tree pages
/// after a delete but not after an update that shrinks a row, so updated pages would
/// stay mostly empty and the file would never shrink. (The counter triggers take one
/// off and add it back in the same transaction; a row that was its owner's or its
/// contact's last takes their rows along, and [`insert_message`] adds them back.)
const REWRITE_DELETE: &str = "DELETE FROM archive WHERE seq = ?1";

/// One row as the rewrite reads it.
struct RewriteRow {
    seq: i64,
    text: bool,
    owner: Owner,
    msg: ArchivedMessage,
}

/// A message archive in one SQLite database file.
pub struct SqliteStore {
    /// The only connection. Every operation takes `&mut self`, so access is already
    /// serialised and needs no lock; other processes are kept out by SQLite's locks.
    conn: Connection,
    /// Where the next expiry batch starts: the (host, user) at which the previous batch
    /// filled up. Without it, repeated small batches would re-check the same first
    /// owners every time; with it, expiry goes round a host's owners.
    expire_resume: Option<(String, String)>,
    /// Compresses what this connection writes (when on) and decodes what it reads,
    /// with the database's dictionaries loaded as they appear.
    codec: Codec,
}

/// A message's place in archive order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    when_us: i64,
    seq: i64,
}

impl SqliteStore {
    /// Opens (creating if needed) the archive database at `path` and brings its schema
    /// up to date. The parent directory must exist.
    ///
    /// WAL lets readers (MAM queries) run while a message is being written;
    /// `synchronous = NORMAL` is durable across process crashes in WAL mode and only
    /// risks the last commits on power loss, the usual trade for a chat archive.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        Self::open_keyed(path, &DatabaseKey::default())
    }

    /// [`SqliteStore::open`] with the file's SQLCipher key, set first on the
    /// connection ([`key::unlock`]): a file that does not read with it (wrong or
    /// missing key, or a key for a plain file) is a [`MamError::Key`], before
    /// anything is written to it.
    pub fn open_keyed(path: &Path, key: &DatabaseKey) -> Result<SqliteStore> {
        key::check_leftover_log(path, key)?;
        Self::open_unchecked(path, key)
    }

    /// Another connection to a file this process's writer connection has already
    /// opened with `key` ([`SqliteStore::open_keyed`]): the readers', the
    /// checkpointer's and expiry's. The key is known to fit, so the read-only check of
    /// a leftover log is skipped (the writer's log is always there while it runs, and
    /// each check would cost another key derivation, about 0.1 s).
    pub fn open_beside_writer(path: &Path, key: &DatabaseKey) -> Result<SqliteStore> {
        Self::open_unchecked(path, key)
    }

    fn open_unchecked(path: &Path, key: &DatabaseKey) -> Result<SqliteStore> {
        let conn = Connection::open(path).map_err(MamError::storage("open archive database"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(MamError::storage("set busy_timeout"))?;
        // The key first: an encrypted file reads as garbage until it is given.
        key::unlock(&conn, path, key)?;
        // Before WAL: switching to WAL writes the file's first page, after which
        // SQLite no longer takes an auto_vacuum mode or a page size. SQLCipher keeps
        // its own page size for an encrypted file.
        if key.passphrase().is_none() {
            large_pages_if_new(&conn)?;
        }
        incremental_vacuum_if_new(&conn)?;
        // The pragma answers with the mode it ended up in; a file system without WAL
        // support leaves the default rollback journal, which is slower but correct.
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
            .map_err(MamError::storage("set journal_mode=WAL"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(MamError::storage("set synchronous=NORMAL"))?;
        Self::with_connection(conn)
    }

    /// Opens an archive file this module wrote, for reading it as the source of a copy
    /// (`import --from mam-sqlite`): unlike [`SqliteStore::open`] it never creates a
    /// file, and it refuses a database without this module's schema (Prosody's own
    /// `prosody.sqlite`, a mistyped path) instead of adding our tables to it.
    pub fn open_existing(path: &Path) -> Result<SqliteStore> {
        Self::open_existing_keyed(path, &DatabaseKey::default())
    }

    /// [`SqliteStore::open_existing`] for a file that may be encrypted with `key`.
    pub fn open_existing_keyed(path: &Path, key: &DatabaseKey) -> Result<SqliteStore> {
        let refuse = |cause: &str| MamError::Open {
            path: path.display().to_string(),
            cause: cause.to_owned(),
        };
        if !path.is_file() {
            return Err(refuse("no such file"));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        key::check_leftover_log(path, key)?;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| refuse(&e.to_string()))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(MamError::storage("set busy_timeout"))?;
        key::unlock(&conn, path, key)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| refuse(&e.to_string()))?;
        let has_archive: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'archive')",
                [],
                |row| row.get(0),
            )
            .map_err(|e| refuse(&e.to_string()))?;
        if version < 1 || !has_archive {
            return Err(refuse(
                "not an archive of this module (no mam_native schema)",
            ));
        }
        Self::with_connection(conn)
    }

    /// Caps the database at `pages` pages (`PRAGMA max_page_count`, this connection
    /// only): beyond it writes fail with `SQLITE_FULL`, as on a full disk.
    pub fn set_max_pages(&mut self, pages: u64) -> Result<()> {
        self.conn
            .pragma_update(
                None,
                "max_page_count",
                i64::try_from(pages).unwrap_or(i64::MAX),
            )
            .map_err(MamError::storage("set max_page_count"))
    }

    /// `PRAGMA synchronous = OFF` on this connection: commits no longer wait for the
    /// disk. Only for filling a file while no server uses it (the benchmark's
    /// pre-population); a crash of the machine can then lose or damage the file.
    pub fn set_synchronous_off(&mut self) -> Result<()> {
        self.conn
            .pragma_update(None, "synchronous", "OFF")
            .map_err(MamError::storage("set synchronous=OFF"))
    }

    /// A private, empty archive in memory (for tests and tools).
    pub fn open_in_memory() -> Result<SqliteStore> {
        let conn =
            Connection::open_in_memory().map_err(MamError::storage("open in-memory database"))?;
        Self::with_connection(conn)
    }

    fn with_connection(mut conn: Connection) -> Result<SqliteStore> {
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // Before the migrations, which pack ids with it.
        stored_id::register(&conn).map_err(MamError::storage("register mam_id"))?;
        incremental_vacuum_if_new(&conn)?;
        schema::migrate(&mut conn)?;
        Ok(SqliteStore {
            conn,
            expire_resume: None,
            codec: Codec::new(),
        })
    }
}

/// The page size of a new, still empty file: 8 KiB instead of SQLite's 4 KiB.
/// A compressed message is a row of about 400 bytes; a page holds whole rows only,
/// so a 4 KiB page wastes about 10% at its end, an 8 KiB page about 5%. Larger pages
/// waste less still (16 KiB: 460 bytes per message against 8 KiB's 470 on the
/// bench corpus) but every commit writes each page it touched to the log in full,
/// and a commit that waits for a delivery carries a message or two: with 16 KiB
/// pages the writer thread saturated at 2,000 msgs/s on the bench machine and
/// deliveries queued 30 ms behind it, against 13 ms with 8 KiB pages and 4 ms with
/// 4 KiB (docs/storage-size.md). An existing file keeps its page size.
const PAGE_SIZE: i64 = 8192;

fn large_pages_if_new(conn: &Connection) -> Result<()> {
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(MamError::storage("read page_count"))?;
    if pages == 0 {
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(MamError::storage("set page_size"))?;
    }
    Ok(())
}

/// Makes a new, still empty database give pages freed by deletes and by compressing
/// old rows back to the file system in steps ([`ArchiveStore::release_space`]).
/// SQLite takes this mode only while the file has no page yet; an older file keeps
/// its free pages for reuse until one `VACUUM` (docs/storage-size.md).
fn incremental_vacuum_if_new(conn: &Connection) -> Result<()> {
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(MamError::storage("read page_count"))?;
    if pages == 0 {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(MamError::storage("set auto_vacuum=INCREMENTAL"))?;
    }
    Ok(())
}

/// Converts a count or limit from the API to SQLite's integer, saturating: a limit
/// beyond `i64::MAX` means "no limit" anyway.
fn to_sql_int<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// Converts a row count from SQLite back to the API's unsigned count (never negative
/// in practice; a negative value would be a broken trigger, reported as zero).
fn to_count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Loads the dictionaries `codec` has not seen yet, inside the caller's transaction
/// (one indexed probe that normally returns nothing).
pub(super) fn load_dictionaries(conn: &Connection, codec: &mut Codec) -> Result<()> {
    let newer: Vec<(i64, Vec<u8>)> = conn
        .prepare_cached(NEWER_DICTIONARIES)
        .and_then(|mut stmt| {
            stmt.query_map(params![codec.newest()], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(MamError::storage("load compression dictionaries"))?;
    for (version, bytes) in newer {
        let version = u32::try_from(version)
            .map_err(|_| MamError::Corrupt(format!("dictionary version {version}")))?;
        codec.add_dictionary(version, bytes);
    }
    Ok(())
}

/// A stored stanza as text, whichever form it was stored in.
pub(super) fn decode_stanza(codec: &mut Codec, value: ValueRef<'_>) -> Result<String> {
    match value {
        ValueRef::Text(t) => String::from_utf8(t.to_vec())
            .map_err(|_| MamError::Corrupt("a stored stanza is not UTF-8".into())),
        ValueRef::Blob(b) => codec.unpack(b),
        other => Err(MamError::Corrupt(format!(
            "a stored stanza is {:?}, not text",
            other.data_type()
        ))),
    }
}

/// [`decode_stanza`] inside a row mapping, where errors must be rusqlite's.
pub(super) fn decode_column(
    codec: &mut Codec,
    row: &rusqlite::Row<'_>,
    index: usize,
) -> rusqlite::Result<String> {
    decode_stanza(codec, row.get_ref(index)?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Blob, Box::new(e))
    })
}

/// `ids` as one JSON array of strings, bound as a single parameter and unpacked in SQL
/// by `json_each`. This takes any number of ids (SQLite allows at most 32766 bound
/// variables per statement) and keeps client text out of the SQL.
fn json_string_array(ids: &[String]) -> String {
    let mut out = String::with_capacity(ids.iter().map(|id| id.len() + 3).sum::<usize>() + 2);
    out.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in id.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push(']');
    out
}

/// A statement's text and its parameters, assembled from constant fragments.
#[derive(Debug)]
struct Sql {
    text: String,
    params: Vec<Value>,
}

impl Sql {
    fn new(head: &'static str) -> Self {
        Sql {
            text: head.to_owned(),
            params: Vec::new(),
        }
    }

    /// Appends a constant fragment and the values for its `?`s.
    fn push(&mut self, fragment: &'static str, values: impl IntoIterator<Item = Value>) {
        self.text.push_str(fragment);
        self.params.extend(values);
    }
}

/// Whether the request's match set is the owner's whole archive (then the exact count
/// in `archive_owners` answers `<count>` without touching the archive).
fn is_unfiltered(req: &FindRequest) -> bool {
    req.with.is_none() && req.start.is_none() && req.end.is_none() && req.ids.is_none()
}

/// The WHERE clause shared by a page and its total: owner first, then `with`, `start`,
/// `end` and `ids`.
fn push_filters(sql: &mut Sql, owner: &Owner, req: &FindRequest) {
    let host = || Value::Text(owner.host.clone());
    let user = || Value::Text(owner.user.clone());
    sql.push(
        " WHERE owner = (SELECT owner FROM archive_owners WHERE host = ? AND user = ?)",
        [host(), user()],
    );
    if let Some(with) = &req.with {
        sql.push(
            " AND contact = (SELECT contact FROM archive_contacts WHERE jid = ? AND owner = \
             (SELECT owner FROM archive_owners WHERE host = ? AND user = ?))",
            [Value::Text(with.bare.clone()), host(), user()],
        );
        if let Some(resource) = &with.resource {
            sql.push(" AND with_resource = ?", [Value::Text(resource.clone())]);
        }
    }
    if let Some(start) = req.start {
        sql.push(" AND when_us >= ?", [Value::Integer(start)]);
    }
    if let Some(end) = req.end {
        sql.push(" AND when_us <= ?", [Value::Integer(end)]);
    }
    if let Some(ids) = &req.ids {
        sql.push(
            " AND id IN (SELECT mam_id(value) FROM json_each(?))",
            [Value::Text(json_string_array(ids))],
        );
    }
}

/// `FROM archive`, pinned to the per-owner id index when the request names `ids`:
/// those few rows are then found by id and sorted, instead of SQLite's own choice of
/// walking the owner's whole archive in time order to skip the sort.
///
/// With `with` (and no `ids`), pinned to the per-contact index: the contact is named
/// by a subquery, whose selectivity SQLite cannot see, so with a time window it
/// would otherwise walk the owner's whole window instead of one conversation's.
fn from_archive(req: &FindRequest) -> &'static str {
    if req.ids.is_some() {
        " FROM archive INDEXED BY archive_owner_id"
    } else if req.with.is_some() {
        " FROM archive INDEXED BY archive_owner_with_when"
    } else {
        " FROM archive"
    }
}

/// The query for one page: the filters, strictly after `after` and before `before`, in
/// archive order (or reversed), at most `req.limit` rows.
fn page_sql(
    owner: &Owner,
    req: &FindRequest,
    after: Option<Position>,
    before: Option<Position>,
) -> Sql {
    let mut sql = Sql::new(concat!(
        "SELECT mam_id_text(id), when_us, ",
        contact_jid!(),
        ", with_resource, stanza"
    ));
    sql.push(from_archive(req), []);
    push_filters(&mut sql, owner, req);
    if let Some(p) = after {
        sql.push(
            " AND (when_us, seq) > (?, ?)",
            [Value::Integer(p.when_us), Value::Integer(p.seq)],
        );
    }
    if let Some(p) = before {
        sql.push(
            " AND (when_us, seq) < (?, ?)",
            [Value::Integer(p.when_us), Value::Integer(p.seq)],
        );
    }
    let order = if req.reverse {
        " ORDER BY when_us DESC, seq DESC LIMIT ?"
    } else {
        " ORDER BY when_us ASC, seq ASC LIMIT ?"
    };
    sql.push(order, [Value::Integer(to_sql_int(req.limit))]);
    sql
}

/// The query counting a filtered match set (RSM `<count>`); `after`, `before` and
/// `limit` do not apply.
fn count_sql(owner: &Owner, req: &FindRequest) -> Sql {
    let mut sql = Sql::new("SELECT count(*)");
    sql.push(from_archive(req), []);
    push_filters(&mut sql, owner, req);
    sql
}

/// Resolves each id to its position in this owner's archive and returns the tightest
/// bound: the latest for `after` (`latest = true`), the earliest for `before`.
/// An id this owner does not have, including another owner's id, is item-not-found.
fn resolve_bound(
    conn: &Connection,
    owner: &Owner,
    ids: &[String],
    latest: bool,
) -> Result<Option<Position>> {
    let mut stmt = conn
        .prepare_cached(POSITION_OF_ID)
        .map_err(MamError::storage("find: prepare id lookup"))?;
    let mut bound: Option<Position> = None;
    for id in ids {
        let found = stmt
            .query_row(params![owner.host, owner.user, id], |row| {
                Ok(Position {
                    when_us: row.get(0)?,
                    seq: row.get(1)?,
                })
            })
            .optional()
            .map_err(MamError::storage("find: look up id"))?;
        let Some(p) = found else {
            return Err(MamError::ItemNotFound(format!(
                "No message with id '{id}' in this archive"
            )));
        };
        bound = Some(match bound {
            None => p,
            Some(b) if latest => b.max(p),
            Some(b) => b.min(p),
        });
    }
    Ok(bound)
}

/// Expiry's per-owner steps inside one SQLite transaction.
struct SqliteExpiry<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    host: &'a str,
    cutoff: Micros,
}

impl super::ExpirySteps for SqliteExpiry<'_> {
    fn owners_after(&mut self, after: Option<&str>) -> Result<Vec<String>> {
        let rows = match after {
            None => self.tx.prepare_cached(OWNERS_FIRST).and_then(|mut stmt| {
                stmt.query_map(params![self.host, OWNER_CHUNK], |row| row.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            }),
            Some(user) => self.tx.prepare_cached(OWNERS_AFTER).and_then(|mut stmt| {
                stmt.query_map(params![self.host, user, OWNER_CHUNK], |row| row.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            }),
        };
        rows.map_err(MamError::storage("expire: list owners"))
    }

    fn expire_owner(&mut self, user: &str, max: i64) -> Result<i64> {
        let n = self
            .tx
            .prepare_cached(EXPIRE_OWNER)
            .and_then(|mut stmt| stmt.execute(params![self.host, user, self.cutoff, max]))
            .map_err(MamError::storage("expire: delete old messages"))?;
        Ok(to_sql_int(n))
    }
}

/// Inserts one message inside `tx`, then trims the owner to the quota from the exact
/// counter (no count over the archive). With a quota of `n` the owner keeps the new
/// message plus the newest `max(n, 1) - 1` others: a quota of 0 still keeps the
/// message just stored, as the trait promises, rather than archiving it and deleting
/// it at once. Expired messages go first ([`Quota`]).
fn append_in(
    tx: &rusqlite::Transaction<'_>,
    codec: &mut Codec,
    owner: &Owner,
    msg: &ArchivedMessage,
    quota: Option<Quota>,
) -> Result<u64> {
    let stanza = codec.encode(&msg.xml)?;
    let (owner_number, seq) = insert_message(tx, None, owner, msg, &stanza)?;
    let mut removed = 0;
    if let Some(quota) = quota {
        let keep = to_sql_int(quota.limit.max(1));
        let mut count: i64 = tx
            .prepare_cached(OWNER_COUNT_OF_NUMBER)
            .and_then(|mut stmt| stmt.query_row(params![owner_number], |r| r.get(0)))
            .map_err(MamError::storage("append: read message count"))?;
        if let (true, Some(before)) = (count > keep, quota.expired_before) {
            let expired = tx
                .prepare_cached(TRIM_EXPIRED)
                .and_then(|mut stmt| stmt.execute(params![owner_number, seq, before]))
                .map_err(MamError::storage("append: remove expired at quota"))?;
            removed += expired;
            count -= to_sql_int(expired as u64);
        }
        if count > keep {
            removed += tx
                .prepare_cached(TRIM_OLDEST)
                .and_then(|mut stmt| stmt.execute(params![owner_number, seq, count - keep]))
                .map_err(MamError::storage("append: trim to quota"))?;
        }
    }
    Ok(to_count(to_sql_int(removed)))
}

/// The number `archive_owners` gives `owner`, which it gets on its first message.
pub(super) fn owner_ref(tx: &rusqlite::Transaction<'_>, owner: &Owner) -> Result<i64> {
    if let Some(number) = owner_number(tx, owner)? {
        return Ok(number);
    }
    tx.prepare_cached(ADD_OWNER)
        .and_then(|mut stmt| stmt.query_row(params![owner.host, owner.user], |r| r.get(0)))
        .map_err(MamError::storage("add an owner"))
}

/// The number of an owner that has a row in `archive_owners`, if it has.
pub(super) fn owner_number(conn: &Connection, owner: &Owner) -> Result<Option<i64>> {
    conn.prepare_cached(OWNER_NUMBER)
        .and_then(|mut stmt| {
            stmt.query_row(params![owner.host, owner.user], |r| r.get(0))
                .optional()
        })
        .map_err(MamError::storage("look up an owner"))
}

/// The number `archive_contacts` gives `jid` among `owner`'s contacts, which it gets
/// on the owner's first message with them.
pub(super) fn contact_ref(tx: &rusqlite::Transaction<'_>, owner: i64, jid: &str) -> Result<i64> {
    let found: Option<i64> = tx
        .prepare_cached(CONTACT_NUMBER)
        .and_then(|mut stmt| stmt.query_row(params![owner, jid], |r| r.get(0)).optional())
        .map_err(MamError::storage("look up a contact"))?;
    match found {
        Some(number) => Ok(number),
        None => tx
            .prepare_cached(ADD_CONTACT)
            .and_then(|mut stmt| stmt.query_row(params![owner, jid], |r| r.get(0)))
            .map_err(MamError::storage("add a contact")),
    }
}

/// Inserts one row under `seq` (the next one when `None`) with its owner and contact
/// numbers, and returns the owner's number and the row's seq.
fn insert_message(
    tx: &rusqlite::Transaction<'_>,
    seq: Option<i64>,
    owner: &Owner,
    msg: &ArchivedMessage,
    stanza: &dyn rusqlite::ToSql,
) -> Result<(i64, i64)> {
    let owner_number = owner_ref(tx, owner)?;
    let contact = contact_ref(tx, owner_number, &msg.with_bare)?;
    tx.prepare_cached(INSERT_MESSAGE)
        .and_then(|mut stmt| {
            stmt.execute(params![
                seq,
                owner_number,
                msg.id,
                contact,
                msg.when,
                msg.with_resource,
                stanza,
            ])
        })
        .map_err(MamError::storage("append: insert message"))?;
    Ok((owner_number, tx.last_insert_rowid()))
}

/// Writes an owner's default and JID rules ([`Prefs::stored_rules`]) in the caller's
/// transaction, over no existing rules (the caller cleared them or found none).
pub(super) fn write_prefs(
    tx: &rusqlite::Transaction<'_>,
    owner: &Owner,
    prefs: &Prefs,
) -> Result<()> {
    tx.prepare_cached(SET_DEFAULT_POLICY)
        .and_then(|mut stmt| stmt.execute(params![owner.host, owner.user, prefs.default.as_str()]))
        .map_err(MamError::storage("write prefs: default"))?;
    let mut add = tx
        .prepare_cached(ADD_JID_RULE)
        .map_err(MamError::storage("write prefs: prepare jid rule"))?;
    for (jid, rule) in prefs.stored_rules() {
        add.execute(params![owner.host, owner.user, jid, rule])
            .map_err(MamError::storage("write prefs: jid rule"))?;
    }
    Ok(())
}

impl ArchiveStore for SqliteStore {
    fn append(
        &mut self,
        owner: &Owner,
        msg: &ArchivedMessage,
        quota: Option<Quota>,
    ) -> Result<u64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(MamError::storage("append: begin"))?;
        if self.codec.compresses() {
            load_dictionaries(&tx, &mut self.codec)?;
        }
        let removed = append_in(&tx, &mut self.codec, owner, msg, quota)?;
        tx.commit().map_err(MamError::storage("append: commit"))?;
        Ok(removed)
    }

    /// Group commit: every message in one transaction, one fsync for the lot.
    fn append_many(
        &mut self,
        items: &[(Owner, ArchivedMessage)],
        quota: Option<Quota>,
    ) -> Result<u64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(MamError::storage("append_many: begin"))?;
        if self.codec.compresses() {
            load_dictionaries(&tx, &mut self.codec)?;
        }
        let mut removed = 0;
        for (owner, msg) in items {
            removed += append_in(&tx, &mut self.codec, owner, msg, quota)?;
        }
        tx.commit()
            .map_err(MamError::storage("append_many: commit"))?;
        Ok(removed)
    }

    fn all_prefs(&mut self, host: &str) -> Result<Vec<(String, Prefs)>> {
        let users: Vec<String> = self
            .conn
            .prepare_cached(LIST_PREFS_USERS)
            .and_then(|mut stmt| stmt.query_map(params![host], |r| r.get(0))?.collect())
            .map_err(MamError::storage("all_prefs: list users"))?;
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            if let Some(p) = self.get_prefs(&Owner::new(host, &user))? {
                out.push((user, p));
            }
        }
        Ok(out)
    }

    /// Resolves `after`/`before` ids, counts (if asked) and reads the page in one read
    /// transaction, so the page and `<count>` describe the same archive.
    fn find(&mut self, owner: &Owner, req: &FindRequest) -> Result<Page> {
        let tx = self
            .conn
            .transaction()
            .map_err(MamError::storage("find: begin"))?;
        let after = resolve_bound(&tx, owner, &req.after, true)?;
        let before = resolve_bound(&tx, owner, &req.before, false)?;

        let total = if !req.total {
            None
        } else if is_unfiltered(req) {
            let count: Option<i64> = tx
                .prepare_cached(OWNER_COUNT)
                .and_then(|mut stmt| {
                    stmt.query_row(params![owner.host, owner.user], |r| r.get(0))
                        .optional()
                })
                .map_err(MamError::storage("find: read message count"))?;
            Some(to_count(count.unwrap_or(0)))
        } else {
            let sql = count_sql(owner, req);
            let count: i64 = tx
                .prepare_cached(&sql.text)
                .and_then(|mut stmt| stmt.query_row(params_from_iter(&sql.params), |r| r.get(0)))
                .map_err(MamError::storage("find: count matches"))?;
            Some(to_count(count))
        };

        let items = if req.limit == 0 {
            Vec::new()
        } else {
            load_dictionaries(&tx, &mut self.codec)?;
            let codec = &mut self.codec;
            let sql = page_sql(owner, req, after, before);
            tx.prepare_cached(&sql.text)
                .and_then(|mut stmt| {
                    stmt.query_map(params_from_iter(&sql.params), |row| {
                        Ok(ArchivedMessage {
                            id: row.get(0)?,
                            when: row.get(1)?,
                            with_bare: row.get(2)?,
                            with_resource: row.get(3)?,
                            xml: decode_column(codec, row, 4)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(MamError::storage("find: read page"))?
        };
        tx.commit().map_err(MamError::storage("find: end"))?;
        Ok(Page { items, total })
    }

    /// Two one-row index probes, one from each end of the owner's archive order.
    fn bounds(&mut self, owner: &Owner) -> Result<Option<ArchiveBounds>> {
        let tx = self
            .conn
            .transaction()
            .map_err(MamError::storage("bounds: begin"))?;
        let end = |sql: &str| -> Result<Option<ArchiveEnd>> {
            tx.prepare_cached(sql)
                .and_then(|mut stmt| {
                    stmt.query_row(params![owner.host, owner.user], |row| {
                        Ok(ArchiveEnd {
                            id: row.get(0)?,
                            when: row.get(1)?,
                        })
                    })
                    .optional()
                })
                .map_err(MamError::storage("bounds: read"))
        };
        let first = end(FIRST_MESSAGE)?;
        let last = end(LAST_MESSAGE)?;
        tx.commit().map_err(MamError::storage("bounds: end"))?;
        Ok(match (first, last) {
            (Some(first), Some(last)) => Some(ArchiveBounds { first, last }),
            _ => None,
        })
    }

    /// A stored value the code cannot read back (a policy or rule outside the CHECK
    /// constraints' sets) is reported as corrupt rather than guessed at.
    fn get_prefs(&mut self, owner: &Owner) -> Result<Option<Prefs>> {
        let tx = self
            .conn
            .transaction()
            .map_err(MamError::storage("get_prefs: begin"))?;
        let default: Option<String> = tx
            .prepare_cached(GET_DEFAULT_POLICY)
            .and_then(|mut stmt| {
                stmt.query_row(params![owner.host, owner.user], |r| r.get(0))
                    .optional()
            })
            .map_err(MamError::storage("get_prefs: read default"))?;
        let Some(default) = default else {
            return Ok(None);
        };
        let default = DefaultPolicy::parse(&default)
            .ok_or_else(|| MamError::Corrupt(format!("unknown default policy '{default}'")))?;
        let rules: Vec<(String, String)> = tx
            .prepare_cached(GET_JID_RULES)
            .and_then(|mut stmt| {
                stmt.query_map(params![owner.host, owner.user], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect()
            })
            .map_err(MamError::storage("get_prefs: read jid rules"))?;
        tx.commit().map_err(MamError::storage("get_prefs: end"))?;
        let mut prefs = Prefs::with_default(default);
        for (jid, rule) in rules {
            match rule.as_str() {
                "always" => prefs.always.insert(jid),
                "never" => prefs.never.insert(jid),
                _ => return Err(MamError::Corrupt(format!("unknown prefs rule '{rule}'"))),
            };
        }
        Ok(Some(prefs))
    }

    /// Replaces default and lists in one transaction. A JID on both lists is stored as
    /// `never` only, since `never` wins (see [`Prefs::never`]); reading back gives the
    /// same decisions.
    fn set_prefs(&mut self, owner: &Owner, prefs: &Prefs) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(MamError::storage("set_prefs: begin"))?;
        tx.prepare_cached(CLEAR_JID_RULES)
            .and_then(|mut stmt| stmt.execute(params![owner.host, owner.user]))
            .map_err(MamError::storage("set_prefs: clear jid rules"))?;
        write_prefs(&tx, owner, prefs)?;
        tx.commit().map_err(MamError::storage("set_prefs: commit"))
    }

    fn delete_user(&mut self, owner: &Owner) -> Result<u64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(MamError::storage("delete_user: begin"))?;
        let removed = tx
            .prepare_cached(DELETE_OWNER_ARCHIVE)
            .and_then(|mut stmt| stmt.execute(params![owner.host, owner.user]))
            .map_err(MamError::storage("delete_user: delete archive"))?;
        // The delete trigger already removed the counter row; this makes sure of it.
        for (sql, context) in [
            (DELETE_OWNER_COUNT, "delete_user: delete count"),
            (DELETE_OWNER_PREFS, "delete_user: delete prefs"),
            (CLEAR_JID_RULES, "delete_user: delete jid rules"),
        ] {
            tx.prepare_cached(sql)
                .and_then(|mut stmt| stmt.execute(params![owner.host, owner.user]))
                .map_err(MamError::storage(context))?;
        }
        tx.commit()
            .map_err(MamError::storage("delete_user: commit"))?;
        Ok(to_count(to_sql_int(removed)))
    }

    /// Walks the host's owners that have messages (from `archive_owners`' counts) and
    /// deletes per owner through the owner index, so no statement
    /// touches rows of an owner it does not name; see `store::expire_round_robin`.
    fn expire_batch(&mut self, host: &str, cutoff: Micros, batch: usize) -> Result<u64> {
        let want = to_sql_int(batch);
        if want == 0 {
            return Ok(0);
        }
        let resume = self
            .expire_resume
            .take()
            .filter(|(h, _)| h == host)
            .map(|(_, user)| user);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(MamError::storage("expire: begin"))?;
        let mut steps = SqliteExpiry {
            tx: &tx,
            host,
            cutoff,
        };
        let (removed, filled_at) =
            super::expire_round_robin(&mut steps, resume, want, OWNER_CHUNK as usize)?;
        tx.commit().map_err(MamError::storage("expire: commit"))?;
        self.expire_resume = filled_at.map(|user| (host.to_owned(), user));
        Ok(to_count(removed))
    }

    // The operator's tools live in `admin.rs`, away from the hot path.

    fn import_batch(&mut self, host: &str, batch: &[ImportedMessage]) -> Result<ImportReport> {
        self.import_batch_impl(host, batch)
    }

    fn set_prefs_if_absent(&mut self, owner: &Owner, prefs: &Prefs) -> Result<bool> {
        self.set_prefs_if_absent_impl(owner, prefs)
    }

    fn owner_stats(&mut self, host: &str) -> Result<Vec<OwnerStats>> {
        self.owner_stats_impl(host)
    }

    fn message_count(&mut self, owner: &Owner) -> Result<u64> {
        self.message_count_impl(owner)
    }

    fn delete_batch(&mut self, owner: &Owner, filter: &DeleteFilter, batch: usize) -> Result<u64> {
        self.delete_batch_impl(owner, filter, batch)
    }

    fn database_bytes(&mut self) -> Result<Option<u64>> {
        self.database_bytes_impl()
    }

    fn owners(&mut self, host: &str) -> Result<Vec<String>> {
        self.owners_impl(host)
    }

    fn replace(&mut self, owner: &Owner, msg: &ArchivedMessage) -> Result<bool> {
        self.replace_impl(owner, msg)
    }

    fn update(&mut self, owner: &Owner, id: &str, change: &super::ItemChange) -> Result<bool> {
        self.update_impl(owner, id, change)
    }

    fn delete_ids(&mut self, owner: &Owner, ids: &[String]) -> Result<u64> {
        self.delete_ids_impl(owner, ids)
    }

    fn set_compression(&mut self, on: bool) {
        self.codec.set_compress(on);
    }

    fn newest_dictionary(&mut self) -> Result<Option<Dictionary>> {
        let row: Option<(i64, i64, Vec<u8>)> = self
            .conn
            .prepare_cached(NEWEST_DICTIONARY)
            .and_then(|mut stmt| {
                stmt.query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(MamError::storage("read the newest dictionary"))?;
        row.map(|(version, trained_us, bytes)| {
            Ok(Dictionary {
                version: u32::try_from(version)
                    .map_err(|_| MamError::Corrupt(format!("dictionary version {version}")))?,
                trained_us,
                bytes,
            })
        })
        .transpose()
    }

    fn recent_stanzas(&mut self, n: usize) -> Result<Vec<String>> {
        let tx = self
            .conn
            .transaction()
            .map_err(MamError::storage("recent stanzas: begin"))?;
        load_dictionaries(&tx, &mut self.codec)?;
        let codec = &mut self.codec;
        let out = tx
            .prepare_cached(RECENT_STANZAS)
            .and_then(|mut stmt| {
                stmt.query_map(params![to_sql_int(n)], |row| decode_column(codec, row, 0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .map_err(MamError::storage("recent stanzas: read"))?;
        tx.commit()
            .map_err(MamError::storage("recent stanzas: end"))?;
        Ok(out)
    }

    fn add_dictionary(
        &mut self,
        dictionary: &[u8],
        trained_us: Micros,
        samples: usize,
    ) -> Result<u32> {
        let version: i64 = self
            .conn
            .prepare_cached(ADD_DICTIONARY)
            .and_then(|mut stmt| {
                stmt.query_row(params![trained_us, to_sql_int(samples), dictionary], |r| {
                    r.get(0)
                })
            })
            .map_err(MamError::storage("store a dictionary"))?;
        u32::try_from(version)
            .map_err(|_| MamError::Corrupt(format!("dictionary version {version}")))
    }

    /// The window is a rowid range, so a batch costs the same wherever it is and
    /// never re-reads what earlier batches passed; rows of an older dictionary are
    /// not candidates, so a new dictionary does not rewrite the whole archive.
    fn rewrite_batch(&mut self, after: i64, scan: usize) -> Result<RewriteStep> {
        // An archive written with compression on holds nothing to rewrite in almost
        // every window. Finding that out under a read snapshot keeps the pass from
        // taking the write lock a thousand times per million rows for nothing: each
        // time, the writer (and every delivery waiting on its commit) would wait.
        let last: i64 = self
            .conn
            .query_row("SELECT coalesce(max(seq), 0) FROM archive", [], |r| {
                r.get(0)
            })
            .map_err(MamError::storage("rewrite: read the last position"))?;
        let end = after.saturating_add(to_sql_int(scan.max(1))).min(last);
        let any: bool = self
            .conn
            .prepare_cached(REWRITE_ANY_CANDIDATE)
            .and_then(|mut stmt| stmt.query_row(params![after, end], |r| r.get(0)))
            .map_err(MamError::storage("rewrite: look for rows to rewrite"))?;
        if !any {
            return Ok(RewriteStep {
                cursor: end.max(after),
                rewritten: 0,
                done: end >= last,
            });
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(MamError::storage("rewrite: begin"))?;
        load_dictionaries(&tx, &mut self.codec)?;
        let last: i64 = tx
            .query_row("SELECT coalesce(max(seq), 0) FROM archive", [], |r| {
                r.get(0)
            })
            .map_err(MamError::storage("rewrite: read the last position"))?;
        let end = after.saturating_add(to_sql_int(scan.max(1))).min(last);
        let codec = &mut self.codec;
        let rows: Vec<RewriteRow> = tx
            .prepare_cached(REWRITE_CANDIDATES)
            .and_then(|mut stmt| {
                stmt.query_map(params![after, end], |row| {
                    Ok(RewriteRow {
                        seq: row.get(0)?,
                        text: matches!(row.get_ref(1)?, ValueRef::Text(_)),
                        owner: Owner::new(&row.get::<_, String>(2)?, &row.get::<_, String>(3)?),
                        msg: ArchivedMessage {
                            id: row.get(4)?,
                            when: row.get(5)?,
                            with_bare: row.get(6)?,
                            with_resource: row.get(7)?,
                            xml: decode_column(codec, row, 1)?,
                        },
                    })
                })?
                .collect()
            })
            .map_err(MamError::storage("rewrite: read rows"))?;
        let mut rewritten = 0;
        {
            let mut delete = tx
                .prepare_cached(REWRITE_DELETE)
                .map_err(MamError::storage("rewrite: prepare"))?;
            // All of the window's rows out first, then back in seq order: the rows
            // come back several times smaller, and taking each out and putting it
            // back at once would leave every page holding as many (now small) rows
            // as before, half empty for good.
            let mut packed_rows = Vec::with_capacity(rows.len());
            for r in rows {
                // Compressed without a dictionary and still none: nothing to gain.
                if !r.text && codec.newest() == 0 {
                    continue;
                }
                if let Some(packed) = codec.pack(&r.msg.xml)? {
                    packed_rows.push((r, packed));
                }
            }
            for (r, _) in &packed_rows {
                delete
                    .execute(params![r.seq])
                    .map_err(MamError::storage("rewrite: take a row out"))?;
            }
            for (r, packed) in &packed_rows {
                insert_message(&tx, Some(r.seq), &r.owner, &r.msg, packed)?;
                rewritten += 1;
            }
        }
        tx.commit().map_err(MamError::storage("rewrite: commit"))?;
        Ok(RewriteStep {
            cursor: end.max(after),
            rewritten,
            done: end >= last,
        })
    }

    fn rewrite_mark(&mut self) -> Result<Option<RewriteMark>> {
        let row: Option<(i64, i64)> = self
            .conn
            .query_row(
                "SELECT dictionary, upto FROM archive_rewrite_mark",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(MamError::storage("read the rewrite mark"))?;
        Ok(row.and_then(|(dictionary, upto)| {
            Some(RewriteMark {
                dictionary: u32::try_from(dictionary).ok()?,
                upto,
            })
        }))
    }

    fn set_rewrite_mark(&mut self, mark: RewriteMark) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO archive_rewrite_mark (singleton, dictionary, upto) \
                 VALUES (1, ?1, ?2)",
                params![i64::from(mark.dictionary), mark.upto],
            )
            .map_err(MamError::storage("keep the rewrite mark"))?;
        Ok(())
    }

    fn release_space(&mut self, pages: u64) -> Result<u64> {
        let mode: i64 = self
            .conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .map_err(MamError::storage("read auto_vacuum"))?;
        // 2: INCREMENTAL. A file in mode 0 keeps its free pages until a VACUUM.
        if mode != 2 {
            return Ok(0);
        }
        let page_size: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(MamError::storage("read page_size"))?;
        let before: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .map_err(MamError::storage("read freelist_count"))?;
        if before == 0 {
            return Ok(0);
        }
        // PRAGMA takes no bound parameters; rusqlite writes the number in.
        self.conn
            .pragma_update(None, "incremental_vacuum", to_sql_int(pages))
            .map_err(MamError::storage("incremental_vacuum"))?;
        let after: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .map_err(MamError::storage("read freelist_count"))?;
        Ok(to_count((before - after) * page_size))
    }

    fn hand_off_checkpoints(&mut self) -> Result<bool> {
        self.conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(MamError::storage("set wal_autocheckpoint=0"))?;
        Ok(true)
    }

    fn checkpoint(&mut self) -> Result<()> {
        // PASSIVE never waits for a lock: it copies what no reader still needs and
        // leaves the rest for the next time.
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(MamError::storage("checkpoint the write-ahead log"))
    }
}

#[cfg(test)]
mod tests {
    //! What only SQLite has: its counter table and triggers, schema migrations, WAL,
    //! the JSON array that carries `ids`, statement shapes and query plans. Everything
    //! a backend must do through [`ArchiveStore`] is in the shared contract
    //! ([`crate::store::contract`]), run here against a database file per test.

    use super::*;
    use crate::store::contract::{
        add_ten_messages, ids, juliet, msg, nurse, req, romeo, store_contract_tests, with,
        ContractDb, MANY_OWNERS, T0,
    };
    use crate::store::WithFilter;

    /// A fresh database file in its own temporary directory; each `open` is another
    /// connection to it, as Prosody's writer and readers each have their own.
    struct SqliteTestDb {
        dir: tempfile::TempDir,
    }

    impl SqliteTestDb {
        fn new() -> Self {
            SqliteTestDb {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }
    }

    impl ContractDb for SqliteTestDb {
        fn open(&self) -> Box<dyn ArchiveStore> {
            let path = self.dir.path().join("archive.sqlite");
            Box::new(SqliteStore::open(&path).expect("open"))
        }
    }

    store_contract_tests!(|| Some(SqliteTestDb::new()));

    /// A private in-memory store after [`add_ten_messages`].
    fn ten_messages() -> SqliteStore {
        let mut store = SqliteStore::open_in_memory().expect("open");
        add_ten_messages(&mut store);
        store
    }

    fn owner_count(store: &SqliteStore, owner: &Owner) -> Option<i64> {
        store
            .conn
            .query_row(OWNER_COUNT, params![owner.host, owner.user], |r| r.get(0))
            .optional()
            .expect("count")
    }

    fn real_count(store: &SqliteStore, owner: &Owner) -> i64 {
        store
            .conn
            .query_row(
                concat!("SELECT count(*) FROM archive WHERE ", owner_is!()),
                params![owner.host, owner.user],
                |r| r.get(0),
            )
            .expect("count")
    }

    #[test]
    fn the_message_counter_stays_exact_through_every_delete() {
        let mut store = ten_messages();
        store
            .append(&romeo(), &msg("r1", T0, "juliet@capulet.lit"), None)
            .expect("append");
        store
            .append(
                &juliet(),
                &msg("m10", T0 + 10_000_000, "romeo@montague.lit"),
                Some(Quota::of(8)),
            )
            .expect("quota");
        assert_eq!(
            owner_count(&store, &juliet()),
            Some(real_count(&store, &juliet()))
        );
        store
            .expire_batch("capulet.lit", T0 + 5_000_000, 2)
            .expect("expire");
        assert_eq!(
            owner_count(&store, &juliet()),
            Some(real_count(&store, &juliet()))
        );
        store.delete_user(&juliet()).expect("delete");
        assert_eq!(owner_count(&store, &juliet()), None);
        assert_eq!(owner_count(&store, &romeo()), Some(1));
    }

    #[test]
    fn delete_user_leaves_no_row_of_the_owner_in_any_table() {
        let mut store = ten_messages();
        let mut prefs = Prefs::with_default(DefaultPolicy::Always);
        prefs.never.insert("romeo@montague.lit".into());
        prefs.always.insert("nurse@capulet.lit".into());
        store.set_prefs(&juliet(), &prefs).expect("set");
        store
            .append(&nurse(), &msg("n1", T0, "juliet@capulet.lit"), None)
            .expect("append");
        let juliet_number = owner_number(&store.conn, &juliet())
            .expect("look up")
            .expect("juliet has messages");
        store.delete_user(&juliet()).expect("delete");
        for (table, column) in [("archive", "owner"), ("archive_contacts", "owner")] {
            let rows: i64 = store
                .conn
                .query_row(
                    &format!("SELECT count(*) FROM {table} WHERE {column} = ?1"),
                    params![juliet_number],
                    |r| r.get(0),
                )
                .expect("count");
            assert_eq!(rows, 0, "{table}");
        }
        for table in ["archive_owners", "archive_prefs", "archive_prefs_jid"] {
            let rows: i64 = store
                .conn
                .query_row(
                    &format!("SELECT count(*) FROM {table} WHERE host = ?1 AND user = ?2"),
                    params!["capulet.lit", "juliet"],
                    |r| r.get(0),
                )
                .expect("count");
            assert_eq!(rows, 0, "{table}");
        }
        assert_eq!(owner_count(&store, &nurse()), Some(1));
    }

    #[test]
    fn a_duplicate_id_fails_the_insert_as_a_constraint_violation() {
        // The writer's group commit falls back to one-by-one appends on exactly this
        // error, so a duplicate must surface as SQLite's constraint code.
        let mut store = ten_messages();
        let err = store
            .append(&juliet(), &msg("m1", T0, "romeo@montague.lit"), None)
            .expect_err("duplicate");
        assert!(matches!(
            err,
            MamError::Storage {
                context: "append: insert message",
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error {
                        code: rusqlite::ErrorCode::ConstraintViolation,
                        ..
                    },
                    _
                ),
            }
        ));
        assert_eq!(owner_count(&store, &juliet()), Some(10));
    }

    #[test]
    fn the_ids_json_array_round_trips_through_json_each() {
        let store = SqliteStore::open_in_memory().expect("open");
        let odd: Vec<String> = [
            "a\"b",
            "c\\d",
            "e\nf\u{1}\u{1f}",
            "ünï'çødé",
            "\\\"",
            "[\"x\"]",
            "😀",
            "\u{7f}",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let back: Vec<String> = store
            .conn
            .prepare("SELECT value FROM json_each(?1) ORDER BY key")
            .expect("prepare")
            .query_map([json_string_array(&odd)], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(back, odd);
        assert_eq!(json_string_array(&[]), "[]");
        assert_eq!(
            json_string_array(&["\"".into(), "\n".into()]),
            "[\"\\\"\",\"\\u000a\"]"
        );
    }

    #[test]
    fn the_contract_walks_more_owners_than_two_expiry_chunks() {
        // `expire_batch_walks_many_owners` must cross a chunk boundary twice here.
        assert!(MANY_OWNERS > 2 * OWNER_CHUNK as usize);
    }

    #[test]
    fn database_bytes_is_always_known_and_positive() {
        let mut store = SqliteStore::open_in_memory().expect("open");
        assert!(store.database_bytes().expect("size").unwrap_or(0) > 0);
        add_ten_messages(&mut store);
        assert!(store.database_bytes().expect("size").unwrap_or(0) > 0);
    }

    #[test]
    fn a_new_file_gives_the_space_compression_frees_back_to_the_file_system() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("archive.sqlite");
        let mut store = SqliteStore::open(&path).expect("open");
        let mode: i64 = store
            .conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, 2, "INCREMENTAL");
        let body = "words of the balcony scene, again and again. ".repeat(20);
        let items: Vec<(Owner, ArchivedMessage)> = (0..3000)
            .map(|i| {
                let mut m = msg(&format!("m{i:05}"), T0 + i, "romeo@montague.lit");
                m.xml = format!("<message xmlns='jabber:client'><body>{i} {body}</body></message>");
                (juliet(), m)
            })
            .collect();
        store.append_many(&items, None).expect("append");
        let pages = |s: &SqliteStore| -> i64 {
            s.conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .expect("pages")
        };
        let before = pages(&store);
        store.set_compression(true);
        let samples = store.recent_stanzas(2000).expect("samples");
        let dict = crate::store::codec::train(&samples).expect("train");
        store.add_dictionary(&dict, T0, samples.len()).expect("add");
        let mut cursor = 0;
        loop {
            let step = store.rewrite_batch(cursor, 500).expect("rewrite");
            cursor = step.cursor;
            if step.done {
                break;
            }
        }
        let mut released = 0;
        loop {
            let bytes = store.release_space(100).expect("release");
            if bytes == 0 {
                break;
            }
            released += bytes;
        }
        assert!(released > 0);
        assert!(
            pages(&store) * 3 < before,
            "{} pages of {before}",
            pages(&store)
        );
    }

    #[test]
    fn a_rewrite_window_with_nothing_to_rewrite_does_not_take_the_write_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("archive.sqlite");
        let mut store = SqliteStore::open(&path).expect("open");
        store.set_compression(true);
        let body = "the same few words, compressed on the way in. ".repeat(4);
        let items: Vec<(Owner, ArchivedMessage)> = (0..50)
            .map(|i| {
                let mut m = msg(&format!("c{i:03}"), T0 + i, "romeo@montague.lit");
                m.xml = format!("<message xmlns='jabber:client'><body>{i} {body}</body></message>");
                (juliet(), m)
            })
            .collect();
        store.append_many(&items, None).expect("append");
        let samples = store.recent_stanzas(2000).expect("samples");
        let dict = crate::store::codec::train(&samples).expect("train");
        store.add_dictionary(&dict, T0, samples.len()).expect("add");
        // Everything compressed with the newest dictionary: no candidates.
        loop {
            if store.rewrite_batch(0, 1000).expect("rewrite").done {
                break;
            }
        }
        let mut other = Connection::open(&path).expect("other connection");
        let held = other
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("another writer holds the write lock");
        // Not willing to wait at all: asking for the lock would fail at once.
        store
            .conn
            .busy_timeout(Duration::ZERO)
            .expect("no busy wait");
        let step = store
            .rewrite_batch(0, 1000)
            .expect("a window of nothing to do needs no lock");
        assert_eq!((step.rewritten, step.done), (0, true));
        drop(held);
    }

    #[test]
    fn migrations_are_idempotent_on_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("archive.sqlite");
        for _ in 0..3 {
            let store = SqliteStore::open(&path).expect("open");
            let version: i64 = store
                .conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .expect("version");
            assert_eq!(version, i64::from(schema::current_version()));
        }
        let mut conn = Connection::open(&path).expect("open");
        schema::migrate(&mut conn).expect("migrate again");
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name LIKE 'archive%'",
                [],
                |r| r.get(0),
            )
            .expect("tables");
        // archive, archive_owners, archive_contacts, archive_prefs(_jid),
        // archive_dictionaries, archive_rewrite_mark.
        assert_eq!(tables, 7);
    }

    #[test]
    fn a_step_five_archive_is_rebuilt_with_numbered_keys_and_packed_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("archive.sqlite");
        let ours = crate::id::new_archive_id(T0);
        let uuid = "5f0d6a34-9c1e-4b7a-8e21-0c2f9d1e7a55";
        let rows = [
            ("juliet", ours.as_str(), T0, "romeo@montague.lit"),
            ("juliet", uuid, T0 + 1, "nurse@capulet.lit"),
            (
                "juliet",
                "647484e96ff806a816e1d543bb",
                T0 + 2,
                "romeo@montague.lit",
            ),
            ("juliet", "stock-1", T0 + 3, "romeo@montague.lit"),
            ("romeo", "stock-1", T0 + 4, "juliet@capulet.lit"),
        ];
        {
            // A database as steps 1 to 5 left it, one stanza compressed (no dictionary).
            let conn = Connection::open(&path).expect("open");
            for step in &schema::MIGRATIONS[..5] {
                conn.execute_batch(step).expect("old step");
            }
            conn.pragma_update(None, "user_version", 5)
                .expect("version");
            let mut codec = Codec::new();
            let packed = codec
                .pack(&"<message><body>long enough to compress, </body></message>".repeat(8))
                .expect("pack")
                .expect("smaller");
            for (i, (user, id, when, with)) in rows.iter().enumerate() {
                let stanza = if i == 1 {
                    Value::Blob(packed.clone())
                } else {
                    Value::Text(format!("<message id='{id}'/>"))
                };
                let host = if *user == "romeo" {
                    "montague.lit"
                } else {
                    "capulet.lit"
                };
                conn.execute(
                    "INSERT INTO archive (host, user, id, when_us, with_bare, with_resource, stanza) \
                     VALUES (?1, ?2, ?3, ?4, ?5, 'r', ?6)",
                    params![host, user, id, when, with, stanza],
                )
                .expect("insert");
            }
        }
        let mut store = SqliteStore::open(&path).expect("upgrade");
        let page = store.find(&juliet(), &req(10)).expect("find");
        assert_eq!(
            ids(&page),
            [ours.as_str(), uuid, "647484e96ff806a816e1d543bb", "stock-1"]
        );
        assert_eq!(page.items[1].with_bare, "nurse@capulet.lit");
        assert!(page.items[1].xml.starts_with("<message><body>long"));
        assert_eq!(page.items[0].with_resource.as_deref(), Some("r"));
        let id_forms: Vec<String> = store
            .conn
            .prepare("SELECT typeof(id) FROM archive ORDER BY seq")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(id_forms, ["blob", "blob", "blob", "text", "text"]);
        // Every id resolves, in each owner's own archive only.
        let mut after = req(10);
        after.after = vec![uuid.to_owned()];
        assert_eq!(
            ids(&store.find(&juliet(), &after).expect("after")),
            ["647484e96ff806a816e1d543bb", "stock-1"]
        );
        let mut by_with = req(10);
        by_with.with = with("romeo@montague.lit", None);
        assert_eq!(
            ids(&store.find(&juliet(), &by_with).expect("with")),
            [ours.as_str(), "647484e96ff806a816e1d543bb", "stock-1"]
        );
        assert_eq!(
            ids(&store.find(&romeo(), &req(10)).expect("romeo")),
            ["stock-1"]
        );
        assert_eq!(owner_count(&store, &juliet()), Some(4));
        // Taking the last message with the nurse takes her JID along.
        assert_eq!(
            store
                .delete_ids(&juliet(), &[uuid.to_owned()])
                .expect("delete"),
            1
        );
        let nurse_rows: i64 = store
            .conn
            .query_row(
                "SELECT count(*) FROM archive_contacts WHERE jid = 'nurse@capulet.lit'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(nurse_rows, 0);
        // New messages land beside the old ones.
        store
            .append(&juliet(), &msg("m-new", T0 + 9, "romeo@montague.lit"), None)
            .expect("append");
        assert_eq!(owner_count(&store, &juliet()), Some(4));
    }

    #[test]
    fn an_older_schema_is_upgraded_in_place_with_an_exact_counter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("archive.sqlite");
        {
            // A database as the first migration step left it, with messages in it.
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(schema::MIGRATIONS[0]).expect("step 1");
            conn.pragma_update(None, "user_version", 1)
                .expect("version");
            for (user, id) in [("juliet", "a"), ("juliet", "b"), ("nurse", "c")] {
                conn.execute(
                    "INSERT INTO archive (host, user, id, when_us, with_bare, stanza) \
                     VALUES ('capulet.lit', ?1, ?2, 0, 'x@y', '<message/>')",
                    params![user, id],
                )
                .expect("insert");
            }
        }
        let mut store = SqliteStore::open(&path).expect("upgrade");
        assert_eq!(owner_count(&store, &juliet()), Some(2));
        assert_eq!(
            owner_count(&store, &Owner::new("capulet.lit", "nurse")),
            Some(1)
        );
        let removed = store
            .append(&juliet(), &msg("d", 1, "x@y"), Some(Quota::of(2)))
            .expect("append");
        assert_eq!(removed, 1);
        assert_eq!(
            ids(&store.find(&juliet(), &req(10)).expect("find")),
            ["b", "d"]
        );
    }

    #[test]
    fn a_database_from_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("archive.sqlite");
        drop(SqliteStore::open(&path).expect("open"));
        let conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", 99).expect("bump");
        drop(conn);
        match SqliteStore::open(&path) {
            Err(MamError::Corrupt(text)) => assert_eq!(
                text,
                format!(
                    "archive database schema version 99 is newer than this module's ({})",
                    schema::current_version()
                )
            ),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn data_survives_reopen_of_a_file_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("archive.sqlite");
        {
            let mut store = SqliteStore::open(&path).expect("open");
            let mode: String = store
                .conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .expect("mode");
            assert_eq!(mode, "wal");
            store
                .append(
                    &juliet(),
                    &msg("m0", T0, "romeo@montague.lit/orchard"),
                    None,
                )
                .expect("append");
            store
                .set_prefs(&juliet(), &Prefs::with_default(DefaultPolicy::Roster))
                .expect("set");
        }
        let mut store = SqliteStore::open(&path).expect("reopen");
        let page = store
            .find(
                &juliet(),
                &FindRequest {
                    total: true,
                    with: with("romeo@montague.lit", Some("orchard")),
                    ..req(10)
                },
            )
            .expect("find");
        assert_eq!(ids(&page), ["m0"]);
        assert_eq!(page.total, Some(1));
        assert_eq!(
            store.get_prefs(&juliet()).expect("get"),
            Some(Prefs::with_default(DefaultPolicy::Roster))
        );
    }

    #[test]
    fn opening_a_file_in_a_missing_directory_is_a_storage_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no/such/dir/archive.sqlite");
        assert!(matches!(
            SqliteStore::open(&path),
            Err(MamError::Storage {
                context: "open archive database",
                ..
            })
        ));
    }

    /// The `EXPLAIN QUERY PLAN` details of a statement.
    fn plan(store: &SqliteStore, sql: &str, params: &[Value]) -> Vec<String> {
        let mut stmt = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        stmt.query_map(params_from_iter(params), |r| r.get::<_, String>(3))
            .expect("plan")
            .collect::<rusqlite::Result<Vec<_>>>()
            .expect("rows")
    }

    /// Asserts the plan never scans `archive` and reaches it only through an index whose
    /// leading column is the owner, constrained by it.
    fn assert_owner_indexed(store: &SqliteStore, what: &str, sql: &str, params: &[Value]) {
        let details = plan(store, sql, params);
        let on_archive: Vec<&String> = details
            .iter()
            .filter(|d| d.starts_with("SCAN archive ") || d.starts_with("SEARCH archive "))
            .collect();
        assert!(
            !on_archive.is_empty(),
            "{what}: no archive access in {details:?}"
        );
        let mut owner_indexed = false;
        for detail in on_archive {
            assert!(!detail.starts_with("SCAN archive"), "{what}: {detail}");
            // Point lookups by seq of rows an owner-indexed subquery picked (the
            // `DELETE … WHERE seq IN (SELECT seq …)` shapes) are not a scan.
            if detail.ends_with("USING INTEGER PRIMARY KEY (rowid=?)") {
                continue;
            }
            let index = detail
                .split_once(" INDEX ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("{what}: no index in {detail}"));
            let columns: Vec<String> = store
                .conn
                .prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                .expect("index_info")
                .query_map([index], |r| r.get(0))
                .expect("columns")
                .collect::<rusqlite::Result<_>>()
                .expect("rows");
            assert_eq!(columns[0], "owner", "{what}: {detail}");
            assert!(detail.contains("(owner=?"), "{what}: {detail}");
            owner_indexed = true;
        }
        assert!(owner_indexed, "{what}: no owner index in {details:?}");
        println!("{what}: {details:?}");
    }

    #[test]
    fn find_sql_is_built_from_a_closed_set_of_fragments_and_binds_every_client_string() {
        // Every shape a find can take, with a marker in every client-controlled field:
        // the marker never appears in statement text, every `?` has its value, and
        // the distinct statement texts fit in the statement cache.
        const MARK: &str = "'MARK\"; --";
        let owner = Owner::new(MARK, MARK);
        let mut texts = std::collections::BTreeSet::new();
        for shape in 0u32..256 {
            let bit = |n: u32| shape & (1 << n) != 0;
            let req = FindRequest {
                with: bit(0).then(|| WithFilter {
                    bare: MARK.into(),
                    resource: bit(1).then(|| MARK.into()),
                }),
                start: bit(2).then_some(1),
                end: bit(3).then_some(2),
                ids: bit(4).then(|| vec![MARK.to_owned(), "x".into()]),
                reverse: bit(5),
                limit: 10,
                ..FindRequest::default()
            };
            let pos = Position { when_us: 1, seq: 2 };
            let after = bit(6).then_some(pos);
            let before = bit(7).then_some(Position { when_us: 3, seq: 4 });
            for sql in [
                page_sql(&owner, &req, after, before),
                count_sql(&owner, &req),
            ] {
                assert!(!sql.text.contains("MARK"), "{}", sql.text);
                assert_eq!(
                    sql.text.matches('?').count(),
                    sql.params.len(),
                    "{}",
                    sql.text
                );
                texts.insert(sql.text);
            }
        }
        // Plus the fixed statements (about twenty).
        assert!(
            texts.len() + 32 <= STATEMENT_CACHE,
            "{} find statements",
            texts.len()
        );
    }

    #[test]
    fn query_plans_use_owner_leading_indexes() {
        let store = ten_messages();
        let owner = juliet();
        let at = Some(Position {
            when_us: T0,
            seq: 3,
        });
        let newest = FindRequest {
            reverse: true,
            ..req(50)
        };
        let with_newest = FindRequest {
            with: with("romeo@montague.lit", None),
            ..newest.clone()
        };
        let with_resource = FindRequest {
            with: with("romeo@montague.lit", Some("orchard")),
            ..newest.clone()
        };
        let window = FindRequest {
            start: Some(T0),
            end: Some(T0 + 5_000_000),
            ..req(50)
        };
        let with_window = FindRequest {
            with: with("romeo@montague.lit", None),
            ..window.clone()
        };
        let by_ids = FindRequest {
            ids: Some(vec!["m1".into(), "m2".into()]),
            ..req(50)
        };
        const WHEN: &str = "archive_owner_when (owner=?";
        const WITH: &str = "archive_owner_with_when (owner=? AND contact=?";
        const ID: &str = "archive_owner_id (owner=? AND id=?)";
        let pages = [
            ("newest page", page_sql(&owner, &newest, None, None), WHEN),
            ("oldest page", page_sql(&owner, &req(50), None, None), WHEN),
            (
                "with + newest page",
                page_sql(&owner, &with_newest, None, None),
                WITH,
            ),
            (
                "full jid + newest",
                page_sql(&owner, &with_resource, None, None),
                WITH,
            ),
            ("after id", page_sql(&owner, &req(50), at, None), WHEN),
            (
                "before id, reversed",
                page_sql(&owner, &newest, None, at),
                WHEN,
            ),
            (
                "with + after id",
                page_sql(&owner, &with_newest, at, None),
                WITH,
            ),
            ("time window", page_sql(&owner, &window, None, None), WHEN),
            (
                "with + time window",
                page_sql(&owner, &with_window, None, None),
                WITH,
            ),
            ("ids", page_sql(&owner, &by_ids, None, None), ID),
            ("count with", count_sql(&owner, &with_newest), WITH),
            ("count window", count_sql(&owner, &window), WHEN),
            ("count with + window", count_sql(&owner, &with_window), WITH),
            ("count ids", count_sql(&owner, &by_ids), ID),
        ];
        for (what, sql, index) in &pages {
            assert_owner_indexed(&store, what, &sql.text, &sql.params);
            let details = plan(&store, &sql.text, &sql.params);
            assert!(
                details.iter().any(|d| d.contains(index)),
                "{what}: expected {index} in {details:?}"
            );
        }
        let owner_params = [
            Value::Text(owner.host.clone()),
            Value::Text(owner.user.clone()),
        ];
        let with_id = |id: &str| {
            let mut p = owner_params.to_vec();
            p.push(Value::Text(id.into()));
            p
        };
        let int = |n: i64| Value::Integer(n);
        let owner_number_of_store = owner_number(&store.conn, &owner)
            .expect("look up")
            .expect("the owner has messages");
        let fixed: [(&str, &str, Vec<Value>); 6] = [
            ("first", FIRST_MESSAGE, owner_params.to_vec()),
            ("last", LAST_MESSAGE, owner_params.to_vec()),
            ("id position", POSITION_OF_ID, with_id("m1")),
            (
                "quota trim",
                TRIM_OLDEST,
                vec![int(owner_number_of_store), int(1), int(2)],
            ),
            (
                "expire",
                EXPIRE_OWNER,
                [owner_params.to_vec(), vec![int(T0), int(2)]].concat(),
            ),
            ("delete user", DELETE_OWNER_ARCHIVE, owner_params.to_vec()),
        ];
        for (what, sql, params) in &fixed {
            assert_owner_indexed(&store, what, sql, params);
        }
        // The plans above must not need a sort for the ordered page shapes either.
        for (what, sql, _) in &pages[..9] {
            let details = plan(&store, &sql.text, &sql.params);
            assert!(
                !details.iter().any(|d| d.contains("TEMP B-TREE")),
                "{what}: sorts: {details:?}"
            );
        }
    }

    /// How long the first start after the upgrade spends on schema step 6 (the copy
    /// of the whole table). Run with `cargo test --release --no-default-features
    /// --features vendored -- --ignored --nocapture step_six_speed` (`MAM_ROWS`,
    /// default 1,000,000). Prints, does not assert.
    #[test]
    #[ignore]
    fn step_six_speed() {
        use std::time::Instant;
        let rows: i64 = std::env::var("MAM_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.sqlite");
        {
            let mut conn = Connection::open(&path).expect("open");
            conn.pragma_update(None, "journal_mode", "WAL")
                .expect("wal");
            for step in &schema::MIGRATIONS[..5] {
                conn.execute_batch(step).expect("old step");
            }
            conn.pragma_update(None, "user_version", 5)
                .expect("version");
            let tx = conn.transaction().expect("tx");
            {
                let mut insert = tx
                    .prepare(
                        "INSERT INTO archive (host, user, id, when_us, with_bare, with_resource, \
                         stanza) VALUES ('example.com', ?1, ?2, ?3, ?4, 'phone', randomblob(370))",
                    )
                    .expect("prepare");
                for i in 0..rows {
                    insert
                        .execute(params![
                            format!("user{}", i % 50),
                            crate::id::new_archive_id(T0 + i * 1000),
                            T0 + i * 1000,
                            format!("contact{}@example.net", (i * 7) % 300)
                        ])
                        .expect("insert");
                }
            }
            tx.commit().expect("commit");
        }
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let started = Instant::now();
        let store = SqliteStore::open(&path).expect("upgrade");
        println!(
            "step 6 over {rows} rows ({} MB): {:?}",
            bytes / 1_000_000,
            started.elapsed()
        );
        drop(store);
    }

    /// Run with `cargo test --release --no-default-features --features vendored --
    /// --ignored --nocapture store_speed`. Prints, does not assert.
    #[test]
    #[ignore]
    fn store_speed() {
        use std::time::Instant;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = SqliteStore::open(&dir.path().join("speed.sqlite")).expect("open");
        let owner = juliet();
        let rows = 200_000i64;
        let started = Instant::now();
        {
            let tx = store.conn.transaction().expect("tx");
            for i in 0..rows {
                // 50 regular contacts; "rare" gets three messages spread over the archive.
                let with = if i % (rows / 3) == 7 {
                    "rare@example.com".to_owned()
                } else {
                    format!("contact{}@example.com", i % 50)
                };
                let message = ArchivedMessage {
                    id: crate::id::new_archive_id(T0 + i * 1000),
                    when: T0 + i * 1000,
                    with_bare: with,
                    with_resource: Some("res".into()),
                    xml: "<message xmlns='jabber:client' type='chat'><body>Hello there, \
                          this is a message of ordinary length.</body></message>"
                        .into(),
                };
                insert_message(&tx, None, &owner, &message, &message.xml).expect("insert");
            }
            tx.commit().expect("commit");
        }
        println!(
            "insert {rows} rows in one transaction: {:?}",
            started.elapsed()
        );

        let started = Instant::now();
        for i in 0..1000 {
            store
                .append(
                    &owner,
                    &msg(
                        &format!("live{i}"),
                        T0 + rows * 1000 + i,
                        "romeo@montague.lit",
                    ),
                    Some(Quota::of(1_000_000)),
                )
                .expect("append");
        }
        println!(
            "append with quota check, one transaction each: {:?}/message",
            started.elapsed() / 1000
        );

        fn time(store: &mut SqliteStore, owner: &Owner, what: &str, request: FindRequest) {
            let runs = 200;
            let mut page = Page::default();
            let started = Instant::now();
            for _ in 0..runs {
                page = store.find(owner, &request).expect("find");
            }
            println!(
                "{what}: {:?}/page ({} items, total {:?})",
                started.elapsed() / runs,
                page.items.len(),
                page.total
            );
        }
        let newest = FindRequest {
            reverse: true,
            ..req(50)
        };
        time(&mut store, &owner, "newest page of 50", newest.clone());
        time(
            &mut store,
            &owner,
            "newest page of 50 + total",
            FindRequest {
                total: true,
                ..newest.clone()
            },
        );
        time(
            &mut store,
            &owner,
            "with rare contact, newest page",
            FindRequest {
                with: with("rare@example.com", None),
                total: true,
                ..newest.clone()
            },
        );
        time(
            &mut store,
            &owner,
            "with busy contact, newest page + total",
            FindRequest {
                with: with("contact3@example.com", None),
                total: true,
                ..newest.clone()
            },
        );
        time(
            &mut store,
            &owner,
            "one-hour window in the middle",
            FindRequest {
                start: Some(T0 + 100_000_000),
                end: Some(T0 + 100_000_000 + 3_600_000_000),
                ..req(50)
            },
        );
        let bounds = store.bounds(&owner).expect("bounds").expect("some");
        let mid = store
            .find(
                &owner,
                &FindRequest {
                    start: Some(T0 + 100_000_000),
                    ..req(1)
                },
            )
            .expect("find")
            .items
            .remove(0)
            .id;
        time(
            &mut store,
            &owner,
            "after an id in the middle",
            FindRequest {
                after: vec![mid],
                ..req(50)
            },
        );
        let started = Instant::now();
        for _ in 0..1000 {
            store.bounds(&owner).expect("bounds");
        }
        println!(
            "bounds: {:?} ({} .. {})",
            started.elapsed() / 1000,
            bounds.first.id,
            bounds.last.id
        );
        let started = Instant::now();
        let n = store
            .expire_batch("capulet.lit", T0 + 10_000_000, 1000)
            .expect("expire");
        println!("expire batch of {n}: {:?}", started.elapsed());
        // 1000 ids spread over the archive, plus 1000 unknown ones.
        let some_ids: Vec<String> = store
            .find(&owner, &req(200_000))
            .expect("find")
            .items
            .into_iter()
            .step_by(200)
            .map(|m| m.id)
            .chain((0..1000).map(|i| format!("unknown{i}")))
            .collect();
        time(
            &mut store,
            &owner,
            "ids: 2000 asked (1000 known), page of 50 + total",
            FindRequest {
                ids: Some(some_ids),
                total: true,
                ..req(50)
            },
        );
        let started = Instant::now();
        let n = store.delete_user(&owner).expect("delete");
        println!("delete_user of {n} messages: {:?}", started.elapsed());
    }
}
