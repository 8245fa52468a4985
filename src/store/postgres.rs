//! The PostgreSQL backend.
//!
//! One [`postgres::Client`] per store, used only from the thread that owns the store
//! (the writer or one reader), never from Prosody's event loop. Every public operation
//! is one transaction: reads run `REPEATABLE READ, READ ONLY` so a page and its
//! `<count>` describe the same archive; writes batch a whole group commit into one
//! multi-row `INSERT … SELECT FROM unnest(…)`, so a batch costs a few round trips
//! whatever its size and the network round trip stops mattering.
//!
//! A lost connection is not fatal: the operation fails (the writer retries it with
//! backoff, a query answers `internal-server-error`) and the next operation connects
//! again. Statements are prepared once per connection and cached by their text; the
//! only SQL assembled at run time is the `find` query, from constant fragments chosen
//! by which filters are present, with every value bound as a parameter.
//!
//! Archive order is `(when_us, seq)`. Every statement names the owner `(host,
//! username)` first, so it runs on an index that leads with it (see [`schema`]).
//! The per-owner counter table is kept in the same transaction as every insert and
//! delete, here rather than in triggers, so the schema also runs on PostgreSQL-
//! compatible engines without trigger support.

mod provider;
pub mod schema;
#[cfg(test)]
pub mod testdb;
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::{Client, IsolationLevel, NoTls, Row, Statement, Transaction};

use super::codec::{split_header, Codec, Stored};
use super::{
    ArchiveBounds, ArchiveEnd, ArchiveStore, ArchivedMessage, DeleteFilter, Dictionary,
    FindRequest, ImportReport, ImportedMessage, Owner, OwnerStats, Page, Quota, RewriteStep,
};
use crate::config::{PgSettings, SslMode};
use crate::error::{MamError, Result};
use crate::policy::{DefaultPolicy, Prefs};
use crate::time::Micros;

/// How long a connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long unacknowledged data may sit on a dead connection before the kernel gives
/// up on it: a server that vanished without a reset fails the operation instead of
/// blocking a reader or the writer for the kernel's default of many minutes.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// Server-side cap on any one statement: every statement here is a bounded, indexed
/// operation on one owner (or a bounded batch), so one that runs this long is stuck.
const STATEMENT_TIMEOUT_MS: u32 = 30_000;

/// How many owners expiry reads at a time while walking a host's owners.
const OWNER_CHUNK: i64 = 256;

/// The whole group commit as one statement: parallel arrays, unpacked in order (their
/// order is the insertion order, so `seq` follows it). A row whose id the owner already
/// has is skipped and not returned: after a commit whose outcome was lost with the
/// connection, the writer's retry must neither fail nor count the message twice
/// (see [`append_in`] for telling that apart from a real duplicate).
const INSERT_MESSAGES: &str = "INSERT INTO mam_archive \
     (host, username, id, when_us, with_bare, with_resource, stanza, stanza_z) \
     SELECT h, u, i, w, wb, wr, s, z FROM unnest($1::text[], $2::text[], $3::text[], \
     $4::int8[], $5::text[], $6::text[], $7::text[], $8::bytea[]) WITH ORDINALITY \
     AS t(h, u, i, w, wb, wr, s, z, n) ORDER BY n \
     ON CONFLICT (host, username, id) DO NOTHING RETURNING host, username, id";

/// What is stored under an id, to tell a retried message from a different one.
const STORED_UNDER_ID: &str = "SELECT when_us, stanza, stanza_z FROM mam_archive \
     WHERE host = $1 AND username = $2 AND id = $3";

/// Adds to per-owner counters (arrays sorted by owner, so concurrent writers lock the
/// counter rows in the same order and cannot deadlock); returns the new counts.
const COUNT_ADD: &str = "INSERT INTO mam_archive_counts (host, username, messages) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::int8[]) \
     ON CONFLICT (host, username) DO UPDATE \
     SET messages = mam_archive_counts.messages + EXCLUDED.messages \
     RETURNING host, username, messages";

const COUNT_SUBTRACT: &str = "UPDATE mam_archive_counts SET messages = messages - $3 \
     WHERE host = $1 AND username = $2";

/// A counter row lives only while the owner has messages (expiry walks the table).
const COUNT_DROP_EMPTY: &str =
    "DELETE FROM mam_archive_counts WHERE host = $1 AND username = $2 AND messages <= 0";

const OWNER_COUNT: &str =
    "SELECT messages FROM mam_archive_counts WHERE host = $1 AND username = $2";

/// Removes an owner's expired messages (before `$4`) except `$3` (the one just
/// stored): the first step at a quota hit.
const TRIM_EXPIRED: &str = "DELETE FROM mam_archive WHERE host = $1 AND username = $2 \
     AND when_us < $4 AND id <> $3";

/// Removes an owner's oldest messages except `$3` (the one just stored).
const TRIM_OLDEST: &str = "DELETE FROM mam_archive WHERE host = $1 AND username = $2 \
     AND id IN (SELECT id FROM mam_archive WHERE host = $1 AND username = $2 AND id <> $3 \
     ORDER BY when_us, seq LIMIT $4)";

const POSITION_OF_ID: &str =
    "SELECT when_us, seq FROM mam_archive WHERE host = $1 AND username = $2 AND id = $3";

const FIRST_MESSAGE: &str = "SELECT id, when_us FROM mam_archive \
     WHERE host = $1 AND username = $2 ORDER BY when_us ASC, seq ASC LIMIT 1";

const LAST_MESSAGE: &str = "SELECT id, when_us FROM mam_archive \
     WHERE host = $1 AND username = $2 ORDER BY when_us DESC, seq DESC LIMIT 1";

const GET_DEFAULT_POLICY: &str =
    "SELECT default_policy FROM mam_prefs WHERE host = $1 AND username = $2";

const ALL_DEFAULT_POLICIES: &str =
    "SELECT username, default_policy FROM mam_prefs WHERE host = $1 ORDER BY username";

const ALL_JID_RULES: &str =
    "SELECT username, jid, rule FROM mam_prefs_jid WHERE host = $1 ORDER BY username, jid";

const GET_JID_RULES: &str =
    "SELECT jid, rule FROM mam_prefs_jid WHERE host = $1 AND username = $2 ORDER BY jid";

const SET_DEFAULT_POLICY: &str = "INSERT INTO mam_prefs (host, username, default_policy) \
     VALUES ($1, $2, $3) ON CONFLICT (host, username) DO UPDATE \
     SET default_policy = EXCLUDED.default_policy";

const ADD_DEFAULT_POLICY_IF_ABSENT: &str = "INSERT INTO mam_prefs \
     (host, username, default_policy) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";

const CLEAR_JID_RULES: &str = "DELETE FROM mam_prefs_jid WHERE host = $1 AND username = $2";

const ADD_JID_RULES: &str = "INSERT INTO mam_prefs_jid (host, username, jid, rule) \
     SELECT $1, $2, j, r FROM unnest($3::text[], $4::text[]) AS t(j, r)";

const DELETE_OWNER_ARCHIVE: &str = "DELETE FROM mam_archive WHERE host = $1 AND username = $2";
const DELETE_OWNER_COUNT: &str = "DELETE FROM mam_archive_counts WHERE host = $1 AND username = $2";
const DELETE_OWNER_PREFS: &str = "DELETE FROM mam_prefs WHERE host = $1 AND username = $2";

const OWNERS_FIRST: &str = "SELECT username FROM mam_archive_counts WHERE host = $1 \
     ORDER BY username LIMIT $2";

const OWNERS_AFTER: &str = "SELECT username FROM mam_archive_counts \
     WHERE host = $1 AND username > $2 ORDER BY username LIMIT $3";

const EXPIRE_OWNER: &str = "DELETE FROM mam_archive WHERE host = $1 AND username = $2 \
     AND id IN (SELECT id FROM mam_archive WHERE host = $1 AND username = $2 \
     AND when_us < $3 ORDER BY when_us, seq LIMIT $4)";

const IMPORT_MESSAGE: &str = "INSERT INTO mam_archive \
     (host, username, id, when_us, with_bare, with_resource, stanza) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (host, username, id) DO NOTHING";

const EXISTING_MESSAGE: &str = "SELECT when_us, with_bare FROM mam_archive \
     WHERE host = $1 AND username = $2 AND id = $3";

const HOST_OWNERS: &str = "SELECT username, messages FROM mam_archive_counts \
     WHERE host = $1 ORDER BY username";

const OWNER_SUMMARY: &str = "SELECT min(when_us), max(when_us), \
     coalesce(sum(coalesce(octet_length(stanza), octet_length(stanza_z))), 0)::int8 \
     FROM mam_archive \
     WHERE host = $1 AND username = $2";

const DELETE_MATCHING: &str = "DELETE FROM mam_archive WHERE host = $1 AND username = $2 \
     AND id IN (SELECT id FROM mam_archive WHERE host = $1 AND username = $2 \
     AND ($3::text IS NULL OR with_bare = $3) \
     AND ($4::text IS NULL OR with_resource = $4) \
     AND ($5::int8 IS NULL OR when_us < $5) \
     ORDER BY when_us, seq LIMIT $6)";

/// Bytes used by this module's tables and their indexes (not the rest of a database
/// Prosody may share with us).
const TABLE_BYTES: &str = "SELECT coalesce(sum(pg_total_relation_size(c)), 0)::int8 \
     FROM unnest(ARRAY['mam_archive', 'mam_archive_counts', 'mam_prefs', \
     'mam_prefs_jid', 'mam_dictionaries']::regclass[]) AS c";

/// Dictionaries this connection has not loaded yet (they are only ever added).
const NEWER_DICTIONARIES: &str = "SELECT version, dictionary FROM mam_dictionaries \
     WHERE version > $1 ORDER BY version";

const NEWEST_DICTIONARY: &str = "SELECT version, trained_us, dictionary \
     FROM mam_dictionaries ORDER BY version DESC LIMIT 1";

/// Serialised by the table lock: two compactors (two Prosody processes on one
/// database) cannot both take the same next version.
const ADD_DICTIONARY: &str = "INSERT INTO mam_dictionaries \
     (version, trained_us, samples, dictionary) \
     SELECT coalesce(max(version), 0) + 1, $1, $2, $3 FROM mam_dictionaries \
     RETURNING version";

/// The newest rows: a top-N sort over the table (no index on `seq` alone); it runs
/// when a dictionary is trained, once a day at most.
const RECENT_STANZAS: &str = "SELECT stanza, stanza_z FROM mam_archive \
     ORDER BY seq DESC LIMIT $1";

/// The table's size in pages, where the rewrite's walk ends.
const TABLE_PAGES: &str = "SELECT (pg_relation_size('mam_archive') \
     / current_setting('block_size')::int8)::int8";

/// The rows of pages `$1` to `$2` (excluded) that are text or compressed without a
/// dictionary, locked against a concurrent change: a TID range scan (PostgreSQL 14
/// and later), so a batch reads its slice of the table and nothing else.
const REWRITE_CANDIDATES: &str = "SELECT host, username, id, stanza, stanza_z \
     FROM mam_archive WHERE ctid >= format('(%s,0)', $1::int8)::tid \
     AND ctid < format('(%s,0)', $2::int8)::tid \
     AND (stanza IS NOT NULL OR substring(stanza_z FROM 1 FOR 2) = '\\x0100'::bytea) \
     FOR UPDATE";

/// Taken for the length of one rewrite transaction (ASCII "mam_zstd"): several
/// hosts' modules share one database, and each starts a compaction thread; while one
/// of them rewrites, the others' batches end at once instead of walking the same
/// table behind its row locks.
const REWRITE_LOCK: i64 = 0x6d61_6d5f_7a73_7464;

const REWRITE_ROW: &str = "UPDATE mam_archive SET stanza = NULL, stanza_z = $4 \
     WHERE host = $1 AND username = $2 AND id = $3";

/// Whether this database holds our schema (without creating it).
const HAS_SCHEMA: &str = "SELECT to_regclass('mam_schema') IS NOT NULL";

/// See [`PgStore::database_identity`]. Every function here is open to any role.
const DATABASE_IDENTITY: &str = "SELECT pg_postmaster_start_time()::text || ' ' || \
     d.oid::text || ' ' || d.datname FROM pg_database d WHERE d.datname = current_database()";

/// A live connection and the statements prepared on it.
struct Connection {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// A message archive in a PostgreSQL database.
pub struct PgStore {
    settings: PgSettings,
    /// `None` after a failure closed the connection; the next operation reconnects.
    conn: Option<Connection>,
    /// Where the next expiry batch starts (see [`super::expire_round_robin`]).
    expire_resume: Option<(String, String)>,
    /// Compresses what this connection writes (when on) and decodes what it reads.
    /// Readers load dictionaries when a row names one they lack; the writer looks
    /// for a newer one every [`DICTIONARY_CHECK`] (a round trip per commit would
    /// cost more than the rows a few seconds late to a new dictionary).
    codec: Codec,
    /// When the writer last looked for a newer dictionary.
    dictionaries_checked: Option<Instant>,
}

/// How often a compressing connection looks for a newer dictionary.
const DICTIONARY_CHECK: Duration = Duration::from_secs(10);

/// A message's place in archive order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    when_us: i64,
    seq: i64,
}

/// A transaction with the connection's statement cache.
struct Tx<'a> {
    tx: Transaction<'a>,
    statements: &'a mut HashMap<String, Statement>,
}

type Params<'p> = [&'p (dyn ToSql + Sync)];

/// The prepared statement for `sql` from `cache`, preparing it (with `prepare`) the
/// first time: a connection prepares each statement text once.
fn cached_statement(
    cache: &mut HashMap<String, Statement>,
    sql: &str,
    prepare: impl FnOnce(&str) -> std::result::Result<Statement, postgres::Error>,
) -> std::result::Result<Statement, postgres::Error> {
    if let Some(s) = cache.get(sql) {
        return Ok(s.clone());
    }
    let s = prepare(sql)?;
    cache.insert(sql.to_owned(), s.clone());
    Ok(s)
}

impl Tx<'_> {
    fn statement(&mut self, sql: &str) -> std::result::Result<Statement, postgres::Error> {
        let tx = &mut self.tx;
        cached_statement(self.statements, sql, |sql| tx.prepare(sql))
    }

    fn query(&mut self, context: &'static str, sql: &str, params: &Params) -> Result<Vec<Row>> {
        let stmt = self.statement(sql).map_err(MamError::postgres(context))?;
        self.tx
            .query(&stmt, params)
            .map_err(MamError::postgres(context))
    }

    fn query_opt(
        &mut self,
        context: &'static str,
        sql: &str,
        params: &Params,
    ) -> Result<Option<Row>> {
        let stmt = self.statement(sql).map_err(MamError::postgres(context))?;
        self.tx
            .query_opt(&stmt, params)
            .map_err(MamError::postgres(context))
    }

    fn execute(&mut self, context: &'static str, sql: &str, params: &Params) -> Result<u64> {
        let stmt = self.statement(sql).map_err(MamError::postgres(context))?;
        self.tx
            .execute(&stmt, params)
            .map_err(MamError::postgres(context))
    }

    fn commit(self, context: &'static str) -> Result<()> {
        self.tx.commit().map_err(MamError::postgres(context))
    }

    /// Takes `n` messages off an owner's counter, dropping the row at zero.
    fn uncount(&mut self, host: &str, user: &str, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let n = to_sql_int(n);
        self.execute("update message count", COUNT_SUBTRACT, &[&host, &user, &n])?;
        self.execute("update message count", COUNT_DROP_EMPTY, &[&host, &user])?;
        Ok(())
    }

    fn owner_count(&mut self, owner: &Owner) -> Result<u64> {
        let row = self.query_opt(
            "read message count",
            OWNER_COUNT,
            &[&owner.host, &owner.user],
        )?;
        Ok(match row {
            Some(row) => to_count(get(&row, 0, "read message count")?),
            None => 0,
        })
    }
}

/// A column of a row, with a type mismatch (a schema we do not know) as an error
/// rather than a panic.
fn get<'r, T: postgres::types::FromSql<'r>>(
    row: &'r Row,
    index: usize,
    context: &'static str,
) -> Result<T> {
    row.try_get(index).map_err(MamError::postgres(context))
}

/// Converts a count or limit from the API to PostgreSQL's `int8`, saturating.
fn to_sql_int<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// A row count back to the API's unsigned count (negative would be a broken counter,
/// reported as zero).
fn to_count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl PgStore {
    /// Connects and brings the schema up to date.
    pub fn connect(settings: &PgSettings) -> Result<PgStore> {
        let mut store = PgStore {
            settings: settings.clone(),
            conn: None,
            expire_resume: None,
            codec: Codec::new(),
            dictionaries_checked: None,
        };
        let conn = store.connection()?;
        schema::migrate(&mut conn.client)?;
        Ok(store)
    }

    /// Connects to a database that already holds this module's archive, for reading
    /// it as the source of a copy (`import --from mam-postgres`): unlike
    /// [`PgStore::connect`] it refuses a database without our schema (a mistyped
    /// database name) instead of creating our tables there.
    pub fn connect_existing(settings: &PgSettings) -> Result<PgStore> {
        let mut store = PgStore {
            settings: settings.clone(),
            conn: None,
            expire_resume: None,
            codec: Codec::new(),
            dictionaries_checked: None,
        };
        let conn = store.connection()?;
        let row = conn
            .client
            .query_one(HAS_SCHEMA, &[])
            .map_err(MamError::postgres("look for the archive schema"))?;
        let present: bool = get(&row, 0, "look for the archive schema")?;
        if !present {
            return Err(MamError::Open {
                path: settings.describe(),
                cause: "no archive of this module in this database (no mam_schema table)"
                    .to_owned(),
            });
        }
        schema::migrate(&mut conn.client)?;
        Ok(store)
    }

    /// What tells this database apart from every other one: the server's start time,
    /// the database's oid and its name. Two connections that answer the same are to
    /// the same database, however differently they spell the host (a copy must not
    /// read and write one archive).
    pub fn database_identity(&mut self) -> Result<String> {
        self.transaction(true, "identify the database", |tx| {
            let row = tx.query_opt("identify the database", DATABASE_IDENTITY, &[])?;
            match row {
                Some(row) => get(&row, 0, "identify the database"),
                None => Err(MamError::Corrupt(
                    "the server does not list its own database".into(),
                )),
            }
        })
    }

    /// The live connection, connecting first if there is none (or the last one died).
    fn connection(&mut self) -> Result<&mut Connection> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let s = &self.settings;
            let mut config = postgres::Config::new();
            config
                .host(&s.host)
                .port(s.port)
                .user(&s.username)
                .dbname(&s.database)
                .application_name("prosody-mam-native")
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_user_timeout(TCP_USER_TIMEOUT)
                .keepalives(true)
                .keepalives_idle(Duration::from_secs(30))
                .options(&format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
            if let Some(password) = &s.password {
                config.password(password);
            }
            config.ssl_mode(match s.sslmode {
                SslMode::Disable => postgres::config::SslMode::Disable,
                SslMode::Prefer => postgres::config::SslMode::Prefer,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                    postgres::config::SslMode::Require
                }
            });
            let client = match tls::connector(s)? {
                Some(tls) => config.connect(tls),
                None => config.connect(NoTls),
            }
            .map_err(MamError::postgres("connect to PostgreSQL"))?;
            self.conn = Some(Connection {
                client,
                statements: HashMap::new(),
            });
        }
        self.conn
            .as_mut()
            .ok_or_else(|| MamError::Corrupt("no PostgreSQL connection".into()))
    }

    /// Runs `f` in a transaction of the given kind and commits it. Any failure rolls
    /// back (the transaction is dropped); a failure that closed the connection makes
    /// the next call reconnect.
    fn transaction<T>(
        &mut self,
        read_only: bool,
        context: &'static str,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        let result = self.transaction_on_connection(read_only, context, f);
        self.forget_lost_connection(result)
    }

    fn transaction_on_connection<T>(
        &mut self,
        read_only: bool,
        context: &'static str,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        let conn = self.connection()?;
        let mut builder = conn.client.build_transaction();
        if read_only {
            builder = builder
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true);
        }
        let tx = builder.start().map_err(MamError::postgres(context))?;
        let mut tx = Tx {
            tx,
            statements: &mut conn.statements,
        };
        let value = f(&mut tx)?;
        tx.commit(context)?;
        Ok(value)
    }
}

impl PgStore {
    /// A write transaction with this connection's codec, which first loads a newer
    /// dictionary when compressing and [`DICTIONARY_CHECK`] has passed.
    fn writing<T>(
        &mut self,
        context: &'static str,
        f: impl FnOnce(&mut Tx<'_>, &mut Codec) -> Result<T>,
    ) -> Result<T> {
        let mut codec = std::mem::take(&mut self.codec);
        let check = codec.compresses()
            && self
                .dictionaries_checked
                .is_none_or(|t| t.elapsed() >= DICTIONARY_CHECK);
        let result = self.transaction(false, context, |tx| {
            if check {
                load_dictionaries(tx, &mut codec)?;
            }
            f(tx, &mut codec)
        });
        if check && result.is_ok() {
            self.dictionaries_checked = Some(Instant::now());
        }
        self.codec = codec;
        result
    }

    fn find_in_one_statement(&mut self, owner: &Owner, req: &FindRequest) -> Result<Page> {
        const CONTEXT: &str = "find";
        let (sql, with_total, with_items) = match (req.total, req.limit > 0) {
            (true, true) => (page_and_count_sql(owner, req), true, true),
            (true, false) => (count_sql(owner, req), true, false),
            (false, true) => (page_sql(owner, req, None, None), false, true),
            (false, false) => return Ok(Page::default()),
        };
        let result = (|| {
            let conn = self.connection()?;
            let client = &mut conn.client;
            let stmt = cached_statement(&mut conn.statements, &sql.text, |sql| client.prepare(sql))
                .map_err(MamError::postgres(CONTEXT))?;
            conn.client
                .query(&stmt, &sql.params())
                .map_err(MamError::postgres(CONTEXT))
        })();
        let rows = self.forget_lost_connection(result)?;
        let mut page = Page::default();
        if with_total {
            page.total = Some(match rows.first() {
                Some(row) => to_count(get(row, 0, "find: count matches")?),
                None => 0,
            });
        }
        if with_items {
            let first = usize::from(with_total);
            let mut codec = std::mem::take(&mut self.codec);
            let loaded = match lacks_dictionary(&codec, &rows, first + 4) {
                true => self.transaction(true, "find: load dictionaries", |tx| {
                    load_dictionaries(tx, &mut codec)
                }),
                false => Ok(()),
            };
            let items = loaded.and_then(|()| {
                rows.iter()
                    .filter_map(|row| page_row(&mut codec, row, first).transpose())
                    .collect::<Result<Vec<_>>>()
            });
            self.codec = codec;
            page.items = items?;
        }
        Ok(page)
    }

    /// Drops the connection after an error that means it is gone (see
    /// [`connection_lost`]), so the next operation reconnects.
    fn forget_lost_connection<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(MamError::Postgres { source, .. }) = &result {
            if connection_lost(source) {
                // The client may notice a dead socket only later; start afresh now.
                self.conn = None;
            }
        }
        result
    }
}

/// Whether an error means the connection is gone or unusable (I/O failure, server
/// shutting down or terminating us, a fatal error), as opposed to one statement
/// failing on a healthy connection.
fn connection_lost(e: &postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => {
            let class = db.code().code().get(..2).unwrap_or("");
            matches!(class, "08" | "57") || matches!(db.severity(), "FATAL" | "PANIC")
        }
    }
}

/// Inserts a run of messages and counts them; with a quota, trims each owner that is
/// over it ([`Quota`]: expired messages first), keeping the owner's last message of
/// the run whatever its timestamp.
fn append_in(
    tx: &mut Tx<'_>,
    codec: &mut Codec,
    items: &[(&Owner, &ArchivedMessage)],
    quota: Option<Quota>,
) -> Result<u64> {
    let n = items.len();
    let mut hosts = Vec::with_capacity(n);
    let mut users = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut whens = Vec::with_capacity(n);
    let mut withs = Vec::with_capacity(n);
    let mut resources = Vec::with_capacity(n);
    let mut stanzas: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut packed: Vec<Option<Vec<u8>>> = Vec::with_capacity(n);
    // Per owner: how many this run adds, and the id of the last one.
    let mut per_owner: BTreeMap<(&str, &str), (i64, &str)> = BTreeMap::new();
    for (owner, msg) in items {
        hosts.push(owner.host.as_str());
        users.push(owner.user.as_str());
        ids.push(msg.id.as_str());
        whens.push(msg.when);
        withs.push(msg.with_bare.as_str());
        resources.push(msg.with_resource.as_deref());
        match codec.encode(&msg.xml)? {
            Stored::Text(text) => {
                stanzas.push(Some(text));
                packed.push(None);
            }
            Stored::Packed(bytes) => {
                stanzas.push(None);
                packed.push(Some(bytes));
            }
        }
        let entry = per_owner
            .entry((owner.host.as_str(), owner.user.as_str()))
            .or_insert((0, ""));
        entry.0 += 1;
        entry.1 = msg.id.as_str();
    }
    let inserted = tx.query(
        "append: insert messages",
        INSERT_MESSAGES,
        &[
            &hosts, &users, &ids, &whens, &withs, &resources, &stanzas, &packed,
        ],
    )?;
    if inserted.len() < n {
        let mut stored: std::collections::HashSet<(String, String, String)> =
            std::collections::HashSet::with_capacity(inserted.len());
        for row in &inserted {
            stored.insert((
                get(row, 0, "append: insert messages")?,
                get(row, 1, "append: insert messages")?,
                get(row, 2, "append: insert messages")?,
            ));
        }
        for (owner, msg) in items {
            let key = (owner.host.clone(), owner.user.clone(), msg.id.clone());
            if stored.contains(&key) {
                continue;
            }
            // Skipped: the same message from an earlier attempt is fine (and was
            // counted then); anything else under its id is a real duplicate.
            entry_already_counted(&mut per_owner, owner);
            let row = tx.query_opt(
                "append: look up a skipped id",
                STORED_UNDER_ID,
                &[&owner.host, &owner.user, &msg.id],
            )?;
            let same = match row {
                Some(row) => {
                    get::<i64>(&row, 0, "append: look up a skipped id")? == msg.when
                        && decode_stanza(codec, &row, 1, "append: look up a skipped id")? == msg.xml
                }
                None => false,
            };
            if !same {
                return Err(MamError::Duplicate(format!(
                    "archive id {} is already used by another message of {}",
                    msg.id, owner.user
                )));
            }
        }
    }
    let count_hosts: Vec<&str> = per_owner.keys().map(|(h, _)| *h).collect();
    let count_users: Vec<&str> = per_owner.keys().map(|(_, u)| *u).collect();
    let added: Vec<i64> = per_owner.values().map(|(n, _)| *n).collect();
    let counts = tx.query(
        "append: count messages",
        COUNT_ADD,
        &[&count_hosts, &count_users, &added],
    )?;
    let Some(quota) = quota else {
        return Ok(0);
    };
    let keep = to_sql_int(quota.limit.max(1));
    let mut removed = 0;
    for row in counts {
        let host: String = get(&row, 0, "append: read message count")?;
        let user: String = get(&row, 1, "append: read message count")?;
        let mut count: i64 = get(&row, 2, "append: read message count")?;
        if count <= keep {
            continue;
        }
        let Some((_, last_id)) = per_owner.get(&(host.as_str(), user.as_str())) else {
            continue;
        };
        if let Some(before) = quota.expired_before {
            let n = tx.execute(
                "append: remove expired at quota",
                TRIM_EXPIRED,
                &[&host, &user, last_id, &before],
            )?;
            tx.uncount(&host, &user, n)?;
            removed += n;
            count -= to_sql_int(n);
            if count <= keep {
                continue;
            }
        }
        let over = count - keep;
        let n = tx.execute(
            "append: trim to quota",
            TRIM_OLDEST,
            &[&host, &user, last_id, &over],
        )?;
        tx.uncount(&host, &user, n)?;
        removed += n;
    }
    Ok(removed)
}

/// One message of the run was already stored (by an earlier attempt of the same
/// write): it does not add to the owner's counter again.
fn entry_already_counted<'a>(
    per_owner: &mut BTreeMap<(&'a str, &'a str), (i64, &'a str)>,
    owner: &'a Owner,
) {
    if let Some(entry) = per_owner.get_mut(&(owner.host.as_str(), owner.user.as_str())) {
        entry.0 -= 1;
    }
}

/// A statement's text and its parameters, assembled from constant fragments; each
/// value becomes the next `$n`.
struct Sql {
    text: String,
    params: Vec<Box<dyn ToSql + Sync>>,
}

impl Sql {
    fn new(head: &'static str) -> Self {
        Sql {
            text: head.to_owned(),
            params: Vec::new(),
        }
    }

    /// Appends a constant fragment.
    fn push(&mut self, fragment: &'static str) {
        self.text.push_str(fragment);
    }

    /// Appends `before`, a placeholder for `value`, then `after`.
    fn bind(
        &mut self,
        before: &'static str,
        value: impl ToSql + Sync + 'static,
        after: &'static str,
    ) {
        self.params.push(Box::new(value));
        self.text.push_str(before);
        self.text.push('$');
        self.text.push_str(&self.params.len().to_string());
        self.text.push_str(after);
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params.iter().map(|p| p.as_ref() as _).collect()
    }
}

fn is_unfiltered(req: &FindRequest) -> bool {
    req.with.is_none() && req.start.is_none() && req.end.is_none() && req.ids.is_none()
}

/// The WHERE clause shared by a page and its total: owner first, then `with`, `start`,
/// `end` and `ids`.
fn push_filters(sql: &mut Sql, owner: &Owner, req: &FindRequest) {
    sql.bind(" FROM mam_archive WHERE host = ", owner.host.clone(), "");
    sql.bind(" AND username = ", owner.user.clone(), "");
    if let Some(with) = &req.with {
        sql.bind(" AND with_bare = ", with.bare.clone(), "");
        if let Some(resource) = &with.resource {
            sql.bind(" AND with_resource = ", resource.clone(), "");
        }
    }
    if let Some(start) = req.start {
        sql.bind(" AND when_us >= ", start, "");
    }
    if let Some(end) = req.end {
        sql.bind(" AND when_us <= ", end, "");
    }
    if let Some(ids) = &req.ids {
        sql.bind(" AND id = ANY(", ids.clone(), "::text[])");
    }
}

fn page_sql(
    owner: &Owner,
    req: &FindRequest,
    after: Option<Position>,
    before: Option<Position>,
) -> Sql {
    let mut sql = Sql::new("");
    push_page(&mut sql, owner, req, after, before);
    sql
}

/// The page query: the filters, strictly after `after` and before `before`, in archive
/// order (or reversed), at most `req.limit` rows of (id, when, with, resource, stanza,
/// seq).
fn push_page(
    sql: &mut Sql,
    owner: &Owner,
    req: &FindRequest,
    after: Option<Position>,
    before: Option<Position>,
) {
    sql.push("SELECT id, when_us, with_bare, with_resource, stanza, stanza_z, seq");
    push_filters(sql, owner, req);
    if let Some(p) = after {
        sql.bind(" AND (when_us, seq) > (", p.when_us, "");
        sql.bind(", ", p.seq, ")");
    }
    if let Some(p) = before {
        sql.bind(" AND (when_us, seq) < (", p.when_us, "");
        sql.bind(", ", p.seq, ")");
    }
    let order = if req.reverse {
        " ORDER BY when_us DESC, seq DESC LIMIT "
    } else {
        " ORDER BY when_us ASC, seq ASC LIMIT "
    };
    sql.bind(order, to_sql_int(req.limit), "");
}

fn count_sql(owner: &Owner, req: &FindRequest) -> Sql {
    let mut sql = Sql::new("");
    push_count(&mut sql, owner, req);
    sql
}

/// The query counting the match set (RSM `<count>`): from the owner's counter when
/// the set is the whole archive, else over the filters.
fn push_count(sql: &mut Sql, owner: &Owner, req: &FindRequest) {
    if is_unfiltered(req) {
        sql.bind(
            "SELECT coalesce((SELECT messages FROM mam_archive_counts WHERE host = ",
            owner.host.clone(),
            "",
        );
        sql.bind(" AND username = ", owner.user.clone(), "), 0)");
    } else {
        sql.push("SELECT count(*)");
        push_filters(sql, owner, req);
    }
}

/// A page and its count in one statement (one snapshot, one round trip, no explicit
/// transaction): the count as a column of every row, the page joined laterally to a
/// single row so an empty page still brings the count (with NULL message columns).
fn page_and_count_sql(owner: &Owner, req: &FindRequest) -> Sql {
    let mut sql = Sql::new("SELECT (");
    push_count(&mut sql, owner, req);
    sql.push(
        ") AS total, p.id, p.when_us, p.with_bare, p.with_resource, p.stanza, p.stanza_z \
         FROM (SELECT 1) AS one LEFT JOIN LATERAL (",
    );
    push_page(&mut sql, owner, req, None, None);
    sql.push(if req.reverse {
        ") AS p ON true ORDER BY p.when_us DESC, p.seq DESC"
    } else {
        ") AS p ON true ORDER BY p.when_us ASC, p.seq ASC"
    });
    sql
}

/// A stored stanza as text: `stanza` at column `index`, or else the compressed
/// `stanza_z` right after it.
fn decode_stanza(
    codec: &mut Codec,
    row: &Row,
    index: usize,
    context: &'static str,
) -> Result<String> {
    if let Some(text) = get::<Option<String>>(row, index, context)? {
        return Ok(text);
    }
    match get::<Option<&[u8]>>(row, index + 1, context)? {
        Some(packed) => codec.unpack(packed),
        None => Err(MamError::Corrupt("a stored message has no stanza".into())),
    }
}

/// Whether a compressed stanza among `rows` (column `index` + 1) names a dictionary
/// `codec` has not loaded.
fn lacks_dictionary(codec: &Codec, rows: &[Row], index: usize) -> bool {
    rows.iter().any(|row| {
        matches!(
            row.try_get::<_, Option<&[u8]>>(index + 1),
            Ok(Some(packed)) if split_header(packed).is_ok_and(|(v, _)| v > codec.newest())
        )
    })
}

/// Loads the dictionaries `codec` has not seen, in the caller's transaction.
fn load_dictionaries(tx: &mut Tx<'_>, codec: &mut Codec) -> Result<()> {
    const CONTEXT: &str = "load compression dictionaries";
    let newest = i32::try_from(codec.newest()).unwrap_or(i32::MAX);
    for row in tx.query(CONTEXT, NEWER_DICTIONARIES, &[&newest])? {
        let version: i32 = get(&row, 0, CONTEXT)?;
        let version = u32::try_from(version)
            .map_err(|_| MamError::Corrupt(format!("dictionary version {version}")))?;
        codec.add_dictionary(version, get(&row, 1, CONTEXT)?);
    }
    Ok(())
}

/// A page row (columns from `first`: id, when, with, resource, stanza, stanza_z);
/// `None` for the NULL row of an empty page in [`page_and_count_sql`].
fn page_row(codec: &mut Codec, row: &Row, first: usize) -> Result<Option<ArchivedMessage>> {
    const CONTEXT: &str = "find: read page";
    let Some(id) = get::<Option<String>>(row, first, CONTEXT)? else {
        return Ok(None);
    };
    Ok(Some(ArchivedMessage {
        id,
        when: get(row, first + 1, CONTEXT)?,
        with_bare: get(row, first + 2, CONTEXT)?,
        with_resource: get(row, first + 3, CONTEXT)?,
        xml: decode_stanza(codec, row, first + 4, CONTEXT)?,
    }))
}

/// Resolves ids to the tightest bound (latest for `after`, earliest for `before`);
/// an id this owner does not have is item-not-found.
fn resolve_bound(
    tx: &mut Tx<'_>,
    owner: &Owner,
    ids: &[String],
    latest: bool,
) -> Result<Option<Position>> {
    let mut bound: Option<Position> = None;
    for id in ids {
        let row = tx.query_opt(
            "find: look up id",
            POSITION_OF_ID,
            &[&owner.host, &owner.user, id],
        )?;
        let Some(row) = row else {
            return Err(MamError::ItemNotFound(format!(
                "No message with id '{id}' in this archive"
            )));
        };
        let p = Position {
            when_us: get(&row, 0, "find: look up id")?,
            seq: get(&row, 1, "find: look up id")?,
        };
        bound = Some(match bound {
            None => p,
            Some(b) if latest => b.max(p),
            Some(b) => b.min(p),
        });
    }
    Ok(bound)
}

fn read_prefs(tx: &mut Tx<'_>, owner: &Owner) -> Result<Option<Prefs>> {
    let row = tx.query_opt(
        "get_prefs: read default",
        GET_DEFAULT_POLICY,
        &[&owner.host, &owner.user],
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    let mut prefs = Prefs::with_default(parse_policy(&get::<String>(
        &row,
        0,
        "get_prefs: read default",
    )?)?);
    let rows = tx.query(
        "get_prefs: read jid rules",
        GET_JID_RULES,
        &[&owner.host, &owner.user],
    )?;
    for row in rows {
        let jid: String = get(&row, 0, "get_prefs: read jid rules")?;
        let rule: String = get(&row, 1, "get_prefs: read jid rules")?;
        add_rule(&mut prefs, jid, &rule)?;
    }
    Ok(Some(prefs))
}

fn parse_policy(value: &str) -> Result<DefaultPolicy> {
    DefaultPolicy::parse(value)
        .ok_or_else(|| MamError::Corrupt(format!("unknown default policy '{value}'")))
}

fn add_rule(prefs: &mut Prefs, jid: String, rule: &str) -> Result<()> {
    match rule {
        "always" => prefs.always.insert(jid),
        "never" => prefs.never.insert(jid),
        _ => return Err(MamError::Corrupt(format!("unknown prefs rule '{rule}'"))),
    };
    Ok(())
}

/// Writes the always/never lists (a JID on both is stored as `never`, which wins).
fn write_rules(tx: &mut Tx<'_>, owner: &Owner, prefs: &Prefs) -> Result<()> {
    let (jids, rules): (Vec<&str>, Vec<&str>) = prefs.stored_rules().unzip();
    if !jids.is_empty() {
        tx.execute(
            "set_prefs: write jid rules",
            ADD_JID_RULES,
            &[&owner.host, &owner.user, &jids, &rules],
        )?;
    }
    Ok(())
}

/// Expiry's per-owner steps inside one PostgreSQL transaction.
struct PgExpiry<'t, 'a> {
    tx: &'t mut Tx<'a>,
    host: &'t str,
    cutoff: Micros,
}

impl super::ExpirySteps for PgExpiry<'_, '_> {
    fn owners_after(&mut self, after: Option<&str>) -> Result<Vec<String>> {
        let rows = match after {
            None => self.tx.query(
                "expire: list owners",
                OWNERS_FIRST,
                &[&self.host, &OWNER_CHUNK],
            )?,
            Some(user) => self.tx.query(
                "expire: list owners",
                OWNERS_AFTER,
                &[&self.host, &user, &OWNER_CHUNK],
            )?,
        };
        rows.iter()
            .map(|r| get(r, 0, "expire: list owners"))
            .collect()
    }

    fn expire_owner(&mut self, user: &str, max: i64) -> Result<i64> {
        let n = self.tx.execute(
            "expire: delete old messages",
            EXPIRE_OWNER,
            &[&self.host, &user, &self.cutoff, &max],
        )?;
        self.tx.uncount(self.host, user, n)?;
        Ok(to_sql_int(n))
    }
}

impl ArchiveStore for PgStore {
    fn set_compression(&mut self, on: bool) {
        self.codec.set_compress(on);
        self.dictionaries_checked = None;
    }

    fn newest_dictionary(&mut self) -> Result<Option<Dictionary>> {
        const CONTEXT: &str = "read the newest dictionary";
        self.transaction(true, CONTEXT, |tx| {
            let Some(row) = tx.query_opt(CONTEXT, NEWEST_DICTIONARY, &[])? else {
                return Ok(None);
            };
            let version: i32 = get(&row, 0, CONTEXT)?;
            Ok(Some(Dictionary {
                version: u32::try_from(version)
                    .map_err(|_| MamError::Corrupt(format!("dictionary version {version}")))?,
                trained_us: get(&row, 1, CONTEXT)?,
                bytes: get(&row, 2, CONTEXT)?,
            }))
        })
    }

    fn recent_stanzas(&mut self, n: usize) -> Result<Vec<String>> {
        const CONTEXT: &str = "recent stanzas";
        let mut codec = std::mem::take(&mut self.codec);
        let out = self.transaction(true, CONTEXT, |tx| {
            let rows = tx.query(CONTEXT, RECENT_STANZAS, &[&to_sql_int(n)])?;
            if lacks_dictionary(&codec, &rows, 0) {
                load_dictionaries(tx, &mut codec)?;
            }
            rows.iter()
                .map(|row| decode_stanza(&mut codec, row, 0, CONTEXT))
                .collect()
        });
        self.codec = codec;
        out
    }

    fn add_dictionary(
        &mut self,
        dictionary: &[u8],
        trained_us: Micros,
        samples: usize,
    ) -> Result<u32> {
        const CONTEXT: &str = "store a dictionary";
        let samples = i32::try_from(samples).unwrap_or(i32::MAX);
        self.transaction(false, CONTEXT, |tx| {
            tx.execute(
                "lock the dictionaries",
                "LOCK TABLE mam_dictionaries IN EXCLUSIVE MODE",
                &[],
            )?;
            let row = tx.query_opt(
                CONTEXT,
                ADD_DICTIONARY,
                &[&trained_us, &samples, &dictionary],
            )?;
            let version: i32 = match row {
                Some(row) => get(&row, 0, CONTEXT)?,
                None => return Err(MamError::Corrupt("no dictionary version returned".into())),
            };
            u32::try_from(version)
                .map_err(|_| MamError::Corrupt(format!("dictionary version {version}")))
        })
    }

    /// `after` and the returned cursor are page numbers here (a TID range: see
    /// [`REWRITE_CANDIDATES`]); `scan` rows are taken as `scan / 8` pages, about as
    /// many rows at this table's row sizes. A row an update moves to a later page
    /// is compressed already, so passing it again costs nothing.
    fn rewrite_batch(&mut self, after: i64, scan: usize) -> Result<RewriteStep> {
        const CONTEXT: &str = "rewrite";
        let mut codec = std::mem::take(&mut self.codec);
        let step = self.transaction(false, CONTEXT, |tx| {
            let locked = match tx.query_opt(
                CONTEXT,
                "SELECT pg_try_advisory_xact_lock($1)",
                &[&REWRITE_LOCK],
            )? {
                Some(row) => get::<bool>(&row, 0, CONTEXT)?,
                None => false,
            };
            if !locked {
                // Another connection is rewriting this database: this pass is over.
                return Ok(RewriteStep {
                    cursor: after,
                    rewritten: 0,
                    done: true,
                });
            }
            load_dictionaries(tx, &mut codec)?;
            let pages: i64 = match tx.query_opt(CONTEXT, TABLE_PAGES, &[])? {
                Some(row) => get(&row, 0, CONTEXT)?,
                None => 0,
            };
            let end = after.saturating_add(to_sql_int(scan / 8).max(1)).min(pages);
            let rows = tx.query(CONTEXT, REWRITE_CANDIDATES, &[&after, &end])?;
            let mut rewritten = 0;
            for row in &rows {
                let text = get::<Option<&str>>(row, 3, CONTEXT)?.is_some();
                if !text && codec.newest() == 0 {
                    continue;
                }
                let xml = decode_stanza(&mut codec, row, 3, CONTEXT)?;
                let Some(packed) = codec.pack(&xml)? else {
                    continue;
                };
                let host: &str = get(row, 0, CONTEXT)?;
                let user: &str = get(row, 1, CONTEXT)?;
                let id: &str = get(row, 2, CONTEXT)?;
                tx.execute(CONTEXT, REWRITE_ROW, &[&host, &user, &id, &packed])?;
                rewritten += 1;
            }
            Ok(RewriteStep {
                cursor: end.max(after),
                rewritten,
                done: end >= pages,
            })
        });
        self.codec = codec;
        step
    }

    fn append(
        &mut self,
        owner: &Owner,
        msg: &ArchivedMessage,
        quota: Option<Quota>,
    ) -> Result<u64> {
        self.writing("append", |tx, codec| {
            append_in(tx, codec, &[(owner, msg)], quota)
        })
    }

    fn append_many(
        &mut self,
        items: &[(Owner, ArchivedMessage)],
        quota: Option<Quota>,
    ) -> Result<u64> {
        if items.is_empty() {
            return Ok(0);
        }
        let refs: Vec<(&Owner, &ArchivedMessage)> = items.iter().map(|(o, m)| (o, m)).collect();
        self.writing("append_many", |tx, codec| {
            append_in(tx, codec, &refs, quota)
        })
    }

    /// Two statements for the whole host, not two per user: at module load this is
    /// what stands between Prosody and serving.
    fn all_prefs(&mut self, host: &str) -> Result<Vec<(String, Prefs)>> {
        self.transaction(true, "all_prefs", |tx| {
            let mut out: BTreeMap<String, Prefs> = BTreeMap::new();
            for row in tx.query("all_prefs: read defaults", ALL_DEFAULT_POLICIES, &[&host])? {
                let user: String = get(&row, 0, "all_prefs: read defaults")?;
                let policy: String = get(&row, 1, "all_prefs: read defaults")?;
                out.insert(user, Prefs::with_default(parse_policy(&policy)?));
            }
            for row in tx.query("all_prefs: read jid rules", ALL_JID_RULES, &[&host])? {
                let user: String = get(&row, 0, "all_prefs: read jid rules")?;
                let jid: String = get(&row, 1, "all_prefs: read jid rules")?;
                let rule: String = get(&row, 2, "all_prefs: read jid rules")?;
                // Rules without a default row (never written by us) are ignored, as
                // reading one owner's prefs would.
                if let Some(prefs) = out.get_mut(&user) {
                    add_rule(prefs, jid, &rule)?;
                }
            }
            Ok(out.into_iter().collect())
        })
    }

    /// Without RSM ids to resolve, a find is one statement (page, count, or both
    /// joined), which is one round trip and one snapshot without an explicit
    /// transaction. With ids, a read-only repeatable-read transaction resolves them
    /// and reads page and count from the same snapshot.
    fn find(&mut self, owner: &Owner, req: &FindRequest) -> Result<Page> {
        if req.after.is_empty() && req.before.is_empty() {
            return self.find_in_one_statement(owner, req);
        }
        let mut codec = std::mem::take(&mut self.codec);
        let page = self.transaction(true, "find", |tx| {
            let after = resolve_bound(tx, owner, &req.after, true)?;
            let before = resolve_bound(tx, owner, &req.before, false)?;
            let total = if req.total {
                let sql = count_sql(owner, req);
                let row = tx.query_opt("find: count matches", &sql.text, &sql.params())?;
                Some(match row {
                    Some(row) => to_count(get(&row, 0, "find: count matches")?),
                    None => 0,
                })
            } else {
                None
            };
            let items = if req.limit == 0 {
                Vec::new()
            } else {
                let sql = page_sql(owner, req, after, before);
                let rows = tx.query("find: read page", &sql.text, &sql.params())?;
                if lacks_dictionary(&codec, &rows, 4) {
                    load_dictionaries(tx, &mut codec)?;
                }
                rows.iter()
                    .filter_map(|row| page_row(&mut codec, row, 0).transpose())
                    .collect::<Result<Vec<_>>>()?
            };
            Ok(Page { items, total })
        });
        self.codec = codec;
        page
    }

    fn bounds(&mut self, owner: &Owner) -> Result<Option<ArchiveBounds>> {
        self.transaction(true, "bounds", |tx| {
            let mut end = |sql: &str| -> Result<Option<ArchiveEnd>> {
                let row = tx.query_opt("bounds: read", sql, &[&owner.host, &owner.user])?;
                row.map(|row| {
                    Ok(ArchiveEnd {
                        id: get(&row, 0, "bounds: read")?,
                        when: get(&row, 1, "bounds: read")?,
                    })
                })
                .transpose()
            };
            let first = end(FIRST_MESSAGE)?;
            let last = end(LAST_MESSAGE)?;
            Ok(match (first, last) {
                (Some(first), Some(last)) => Some(ArchiveBounds { first, last }),
                _ => None,
            })
        })
    }

    fn get_prefs(&mut self, owner: &Owner) -> Result<Option<Prefs>> {
        self.transaction(true, "get_prefs", |tx| read_prefs(tx, owner))
    }

    fn set_prefs(&mut self, owner: &Owner, prefs: &Prefs) -> Result<()> {
        self.transaction(false, "set_prefs", |tx| {
            tx.execute(
                "set_prefs: write default",
                SET_DEFAULT_POLICY,
                &[&owner.host, &owner.user, &prefs.default.as_str()],
            )?;
            tx.execute(
                "set_prefs: clear jid rules",
                CLEAR_JID_RULES,
                &[&owner.host, &owner.user],
            )?;
            write_rules(tx, owner, prefs)
        })
    }

    fn delete_user(&mut self, owner: &Owner) -> Result<u64> {
        self.transaction(false, "delete_user", |tx| {
            let removed = tx.execute(
                "delete_user: delete archive",
                DELETE_OWNER_ARCHIVE,
                &[&owner.host, &owner.user],
            )?;
            for (sql, context) in [
                (DELETE_OWNER_COUNT, "delete_user: delete count"),
                (DELETE_OWNER_PREFS, "delete_user: delete prefs"),
                (CLEAR_JID_RULES, "delete_user: delete jid rules"),
            ] {
                tx.execute(context, sql, &[&owner.host, &owner.user])?;
            }
            Ok(removed)
        })
    }

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
        let (removed, filled_at) = self.transaction(false, "expire", |tx| {
            let mut steps = PgExpiry { tx, host, cutoff };
            super::expire_round_robin(&mut steps, resume, want, OWNER_CHUNK as usize)
        })?;
        self.expire_resume = filled_at.map(|user| (host.to_owned(), user));
        Ok(to_count(removed))
    }

    fn import_batch(&mut self, host: &str, batch: &[ImportedMessage]) -> Result<ImportReport> {
        self.transaction(false, "import", |tx| {
            let mut report = ImportReport::default();
            let mut added: BTreeMap<&str, i64> = BTreeMap::new();
            for item in batch {
                let m = &item.msg;
                let inserted = tx.execute(
                    "import: insert message",
                    IMPORT_MESSAGE,
                    &[
                        &host,
                        &item.user,
                        &m.id,
                        &m.when,
                        &m.with_bare,
                        &m.with_resource,
                        &m.xml,
                    ],
                )?;
                if inserted > 0 {
                    report.inserted += 1;
                    *added.entry(item.user.as_str()).or_insert(0) += 1;
                    continue;
                }
                let row = tx.query_opt(
                    "import: look up existing id",
                    EXISTING_MESSAGE,
                    &[&host, &item.user, &m.id],
                )?;
                let same = match row {
                    Some(row) => {
                        let when: i64 = get(&row, 0, "import: look up existing id")?;
                        let with: String = get(&row, 1, "import: look up existing id")?;
                        when == m.when && with == m.with_bare
                    }
                    None => false,
                };
                if same {
                    report.already_present += 1;
                } else {
                    report.conflicts.push((item.user.clone(), m.id.clone()));
                }
            }
            if !added.is_empty() {
                let hosts: Vec<&str> = added.keys().map(|_| host).collect();
                let users: Vec<&str> = added.keys().copied().collect();
                let counts: Vec<i64> = added.values().copied().collect();
                tx.query(
                    "import: count messages",
                    COUNT_ADD,
                    &[&hosts, &users, &counts],
                )?;
            }
            Ok(report)
        })
    }

    fn set_prefs_if_absent(&mut self, owner: &Owner, prefs: &Prefs) -> Result<bool> {
        self.transaction(false, "import prefs", |tx| {
            let stored = tx.execute(
                "import prefs: write default",
                ADD_DEFAULT_POLICY_IF_ABSENT,
                &[&owner.host, &owner.user, &prefs.default.as_str()],
            )?;
            if stored == 0 {
                return Ok(false);
            }
            write_rules(tx, owner, prefs)?;
            Ok(true)
        })
    }

    fn owner_stats(&mut self, host: &str) -> Result<Vec<OwnerStats>> {
        self.transaction(true, "stats", |tx| {
            let owners = tx.query("stats: list owners", HOST_OWNERS, &[&host])?;
            let mut out = Vec::with_capacity(owners.len());
            for row in owners {
                let user: String = get(&row, 0, "stats: list owners")?;
                let messages: i64 = get(&row, 1, "stats: list owners")?;
                let summary =
                    tx.query_opt("stats: summarise owner", OWNER_SUMMARY, &[&host, &user])?;
                let (oldest, newest, bytes) = match summary {
                    Some(r) => (
                        get::<Option<i64>>(&r, 0, "stats: summarise owner")?,
                        get::<Option<i64>>(&r, 1, "stats: summarise owner")?,
                        get::<i64>(&r, 2, "stats: summarise owner")?,
                    ),
                    None => (None, None, 0),
                };
                out.push(OwnerStats {
                    user,
                    messages: to_count(messages),
                    bytes: to_count(bytes),
                    oldest: oldest.unwrap_or(0),
                    newest: newest.unwrap_or(0),
                });
            }
            Ok(out)
        })
    }

    fn message_count(&mut self, owner: &Owner) -> Result<u64> {
        self.transaction(true, "count", |tx| tx.owner_count(owner))
    }

    fn delete_batch(&mut self, owner: &Owner, filter: &DeleteFilter, batch: usize) -> Result<u64> {
        let with_bare = filter.with.as_ref().map(|w| w.bare.as_str());
        let with_resource = filter.with.as_ref().and_then(|w| w.resource.as_deref());
        let limit = to_sql_int(batch);
        self.transaction(false, "delete", |tx| {
            let n = tx.execute(
                "delete: delete messages",
                DELETE_MATCHING,
                &[
                    &owner.host,
                    &owner.user,
                    &with_bare,
                    &with_resource,
                    &filter.before,
                    &limit,
                ],
            )?;
            tx.uncount(&owner.host, &owner.user, n)?;
            Ok(n)
        })
    }

    fn database_bytes(&mut self) -> Result<Option<u64>> {
        self.transaction(true, "database size", |tx| {
            let row = tx.query_opt("database size", TABLE_BYTES, &[])?;
            Ok(match row {
                Some(row) => Some(to_count(get(&row, 0, "database size")?)),
                None => None,
            })
        })
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
}

#[cfg(test)]
mod tests {
    use super::testdb::TestDb;
    use super::*;
    use crate::store::contract::{store_contract_tests, ContractDb};

    impl ContractDb for TestDb {
        fn open(&self) -> Box<dyn ArchiveStore> {
            Box::new(PgStore::connect(&self.settings).expect("connect"))
        }
    }

    store_contract_tests!(TestDb::create);
    use crate::store::WithFilter;

    const T0: Micros = 1_275_868_800_000_000;

    fn juliet() -> Owner {
        Owner::new("capulet.lit", "juliet")
    }

    fn msg(id: &str, when: Micros, with: &str) -> ArchivedMessage {
        ArchivedMessage {
            id: id.to_owned(),
            when,
            with_bare: with.to_owned(),
            with_resource: None,
            xml: format!("<message xmlns='jabber:client'><body>{id}</body></message>"),
        }
    }

    fn ids(page: &Page) -> Vec<&str> {
        page.items.iter().map(|m| m.id.as_str()).collect()
    }

    fn all(limit: usize) -> FindRequest {
        FindRequest {
            limit,
            total: true,
            ..FindRequest::default()
        }
    }

    #[test]
    fn a_batch_comes_back_in_archive_order_with_counts() {
        let Some(db) = TestDb::create() else { return };
        let mut store = PgStore::connect(&db.settings).expect("connect");
        let items: Vec<(Owner, ArchivedMessage)> = (0..5)
            .map(|i| {
                (
                    juliet(),
                    msg(&format!("m{i}"), T0 + (i % 2), "romeo@montague.lit"),
                )
            })
            .collect();
        store.append_many(&items, None).expect("append");
        let page = store.find(&juliet(), &all(10)).expect("find");
        // Equal timestamps keep insertion order.
        assert_eq!(ids(&page), ["m0", "m2", "m4", "m1", "m3"]);
        assert_eq!(page.total, Some(5));
        let with = FindRequest {
            with: Some(WithFilter {
                bare: "nurse@capulet.lit".into(),
                resource: None,
            }),
            ..all(10)
        };
        assert_eq!(store.find(&juliet(), &with).expect("find").total, Some(0));
    }

    #[test]
    fn while_one_connection_rewrites_another_ones_rewrite_ends_at_once() {
        let Some(db) = TestDb::create() else { return };
        let mut store = PgStore::connect(&db.settings).expect("connect");
        // Long enough to compress even without a dictionary.
        let items: Vec<(Owner, ArchivedMessage)> = (0..50)
            .map(|i| {
                let mut m = msg(&format!("m{i}"), T0 + i, "romeo@montague.lit");
                m.xml = format!(
                    "<message><body>{i} {}</body></message>",
                    "wherefore ".repeat(30)
                );
                (juliet(), m)
            })
            .collect();
        store.append_many(&items, None).expect("append");
        store.set_compression(true);
        let mut other = db.client();
        let mut busy = other.transaction().expect("begin");
        busy.execute("SELECT pg_advisory_xact_lock($1)", &[&REWRITE_LOCK])
            .expect("lock");
        let step = store.rewrite_batch(0, 1000).expect("rewrite");
        assert_eq!((step.rewritten, step.done), (0, true));
        busy.commit().expect("end");
        let step = store.rewrite_batch(0, 1000).expect("rewrite");
        assert_eq!((step.rewritten, step.done), (50, true));
        let want: Vec<ArchivedMessage> = items.into_iter().map(|(_, m)| m).collect();
        assert_eq!(store.find(&juliet(), &all(100)).expect("find").items, want);
    }

    /// A commit whose answer was lost with the connection is retried by the writer:
    /// the same batch again must neither fail nor count anything twice, while one new
    /// message in it is stored and counted.
    #[test]
    fn retrying_a_batch_that_was_committed_stores_and_counts_it_once() {
        let Some(db) = TestDb::create() else { return };
        let mut store = PgStore::connect(&db.settings).expect("connect");
        let mut items: Vec<(Owner, ArchivedMessage)> = (0..5)
            .map(|i| {
                (
                    juliet(),
                    msg(&format!("m{i}"), T0 + i, "romeo@montague.lit"),
                )
            })
            .collect();
        store.append_many(&items, None).expect("first attempt");
        items.push((juliet(), msg("m5", T0 + 5, "romeo@montague.lit")));
        store
            .append_many(&items, Some(Quota::of(100)))
            .expect("the retry");
        let page = store.find(&juliet(), &all(10)).expect("find");
        assert_eq!(ids(&page), ["m0", "m1", "m2", "m3", "m4", "m5"]);
        assert_eq!(page.total, Some(6));
        assert_eq!(store.message_count(&juliet()).expect("count"), 6);
        // The same id for a different message is still refused, and changes nothing.
        let other = vec![(juliet(), msg("m2", T0 + 99, "nurse@capulet.lit"))];
        let err = store
            .append_many(&other, None)
            .expect_err("a real duplicate");
        assert!(err.is_constraint(), "{err}");
        assert_eq!(store.message_count(&juliet()).expect("count"), 6);
    }

    #[test]
    fn migrating_twice_and_from_two_connections_at_once_is_harmless() {
        let Some(db) = TestDb::create() else { return };
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let settings = db.settings.clone();
                std::thread::spawn(move || PgStore::connect(&settings).map(|_| ()))
            })
            .collect();
        for t in threads {
            t.join().expect("thread").expect("connect and migrate");
        }
        let mut client = db.client();
        let version: i32 = client
            .query_one("SELECT version FROM mam_schema", &[])
            .expect("version")
            .get(0);
        assert_eq!(version, schema::current_version());
        let rows: i64 = client
            .query_one("SELECT count(*) FROM mam_schema", &[])
            .expect("rows")
            .get(0);
        assert_eq!(rows, 1);
    }

    #[test]
    fn a_newer_schema_is_refused_not_guessed_at() {
        let Some(db) = TestDb::create() else { return };
        PgStore::connect(&db.settings).expect("connect");
        db.client()
            .execute("UPDATE mam_schema SET version = 999", &[])
            .expect("bump");
        let err = PgStore::connect(&db.settings).err().expect("refused");
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[test]
    fn a_killed_connection_fails_one_operation_and_the_next_reconnects() {
        let Some(db) = TestDb::create() else { return };
        let mut store = PgStore::connect(&db.settings).expect("connect");
        store
            .append(&juliet(), &msg("a", T0, "romeo@montague.lit"), None)
            .expect("append");
        db.client()
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .expect("terminate");
        // The store learns of the loss on its next operation, which fails...
        let mut failures = 0;
        let mut page = None;
        for _ in 0..3 {
            match store.find(&juliet(), &all(10)) {
                Ok(p) => {
                    page = Some(p);
                    break;
                }
                Err(e) => {
                    assert!(matches!(e, MamError::Postgres { .. }), "{e}");
                    failures += 1;
                }
            }
        }
        // ...and the one after that works on a new connection.
        assert!(failures <= 1, "{failures} failures");
        assert_eq!(ids(&page.expect("a page after reconnecting")), ["a"]);
    }

    #[test]
    fn a_wrong_password_fails_without_showing_it() {
        let Some(db) = TestDb::create() else { return };
        let mut settings = db.settings.clone();
        settings.password = Some("not-the-password-XYZZY".into());
        let err = PgStore::connect(&settings).err().expect("refused");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("XYZZY"), "{text}");
    }

    #[test]
    fn quota_trims_the_oldest_and_keeps_the_newest_of_a_batch() {
        let Some(db) = TestDb::create() else { return };
        let mut store = PgStore::connect(&db.settings).expect("connect");
        let items: Vec<(Owner, ArchivedMessage)> = (0..6)
            .map(|i| {
                (
                    juliet(),
                    msg(&format!("m{i}"), T0 + i, "romeo@montague.lit"),
                )
            })
            .collect();
        let removed = store
            .append_many(&items, Some(Quota::of(4)))
            .expect("append");
        assert_eq!(removed, 2);
        let page = store.find(&juliet(), &all(10)).expect("find");
        assert_eq!(ids(&page), ["m2", "m3", "m4", "m5"]);
        assert_eq!(page.total, Some(4));
        // A message stamped older than the rest still survives its own quota check.
        store
            .append(
                &juliet(),
                &msg("old", T0 - 10, "romeo@montague.lit"),
                Some(Quota::of(4)),
            )
            .expect("append");
        let page = store.find(&juliet(), &all(10)).expect("find");
        assert_eq!(ids(&page), ["old", "m3", "m4", "m5"]);
    }

    #[test]
    fn counters_follow_every_delete_and_vanish_at_zero() {
        let Some(db) = TestDb::create() else { return };
        let mut store = PgStore::connect(&db.settings).expect("connect");
        for (i, user) in ["a", "b"].iter().enumerate() {
            let owner = Owner::new("capulet.lit", user);
            let items: Vec<(Owner, ArchivedMessage)> = (0..3)
                .map(|j| {
                    (
                        owner.clone(),
                        msg(&format!("{user}{j}"), T0 + j + i as i64, "x@y"),
                    )
                })
                .collect();
            store.append_many(&items, None).expect("append");
        }
        assert_eq!(
            store
                .expire_batch("capulet.lit", T0 + 2, 100)
                .expect("expire"),
            3
        );
        let a = Owner::new("capulet.lit", "a");
        assert_eq!(store.message_count(&a).expect("count"), 1);
        let filter = DeleteFilter::default();
        assert_eq!(store.delete_batch(&a, &filter, 10).expect("delete"), 1);
        let counters: i64 = db
            .client()
            .query_one(
                "SELECT count(*) FROM mam_archive_counts WHERE username = 'a'",
                &[],
            )
            .expect("count rows")
            .get(0);
        assert_eq!(counters, 0);
        let b = Owner::new("capulet.lit", "b");
        assert_eq!(store.delete_user(&b).expect("delete user"), 2);
        assert!(store.owner_stats("capulet.lit").expect("stats").is_empty());
        assert!(store.database_bytes().expect("size").unwrap_or(0) > 0);
    }

    /// Whether the store's own connection is encrypted, as the server sees it.
    fn encrypted(store: &mut PgStore) -> bool {
        let conn = store.connection().expect("connect");
        conn.client
            .query_one(
                "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                &[],
            )
            .expect("pg_stat_ssl")
            .get(0)
    }

    /// The test server's certificate when it speaks TLS (`MAM_TEST_PG_SSLROOTCERT`,
    /// set by `scripts/pg-cluster.sh`); TLS tests say why and pass without it.
    fn server_certificate() -> Option<std::path::PathBuf> {
        match std::env::var("MAM_TEST_PG_SSLROOTCERT") {
            Ok(path) if !path.is_empty() => Some(path.into()),
            _ => {
                eprintln!("MAM_TEST_PG_SSLROOTCERT not set: skipping a TLS test");
                None
            }
        }
    }

    #[test]
    fn each_sslmode_encrypts_or_not_as_libpq_would() {
        let Some(db) = TestDb::create() else { return };
        let Some(cert) = server_certificate() else {
            return;
        };
        for (mode, expected) in [
            (SslMode::Disable, false),
            (SslMode::Prefer, true),
            (SslMode::Require, true),
            (SslMode::VerifyCa, true),
            (SslMode::VerifyFull, true),
        ] {
            let mut settings = db.settings.clone();
            settings.sslmode = mode;
            settings.sslrootcert = Some(cert.clone());
            let mut store = PgStore::connect(&settings).expect("connect");
            assert_eq!(encrypted(&mut store), expected, "{mode:?}");
            store
                .append(&juliet(), &msg(&format!("{mode:?}"), T0, "x@y"), None)
                .expect("append over the connection");
        }
    }

    #[test]
    fn verification_refuses_a_certificate_from_untrusted_roots_or_another_name() {
        let Some(db) = TestDb::create() else { return };
        let Some(cert) = server_certificate() else {
            return;
        };
        // The test server's self-signed certificate is in no system store.
        let mut settings = db.settings.clone();
        settings.sslmode = SslMode::VerifyFull;
        settings.sslrootcert = None;
        let err = PgStore::connect(&settings).err().expect("untrusted");
        assert!(matches!(err, MamError::Postgres { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("certificate") || text.contains("Certificate"),
            "{text}"
        );
        if let Some(password) = &settings.password {
            assert!(!text.contains(password.as_str()), "{text}");
        }
        // A name the certificate does not carry: verify-full refuses, verify-ca does not.
        settings.sslrootcert = Some(cert);
        settings.host = "127.0.0.2".into();
        if std::net::TcpStream::connect(("127.0.0.2", settings.port)).is_err() {
            eprintln!("server not reachable on 127.0.0.2: name check not exercised");
            return;
        }
        assert!(
            PgStore::connect(&settings).is_err(),
            "verify-full, wrong name"
        );
        settings.sslmode = SslMode::VerifyCa;
        PgStore::connect(&settings).expect("verify-ca ignores the name");
    }

    #[test]
    fn a_missing_root_file_is_a_clear_configuration_error() {
        let Some(db) = TestDb::create() else { return };
        let mut settings = db.settings.clone();
        settings.sslmode = SslMode::VerifyFull;
        settings.sslrootcert = Some("/nonexistent/root.crt".into());
        let err = PgStore::connect(&settings).err().expect("refused");
        assert!(matches!(err, MamError::Config(_)), "{err}");
        assert!(err.to_string().contains("/nonexistent/root.crt"), "{err}");
    }

    /// The plan PostgreSQL picks for `sql`, as text.
    fn plan(client: &mut Client, sql: &str, params: &Params) -> String {
        client
            .query(&format!("EXPLAIN {sql}"), params)
            .expect("explain")
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every query shape runs on an index that leads with the owner, on an archive
    /// big enough (100 owners, 200,000 messages, analysed) that the planner would
    /// rather scan the table if no such index fitted. `MAM_PG_PLAN_ROWS` sets another
    /// size (a one-off check at 10,000,000 is quoted in the README).
    #[test]
    fn every_query_shape_is_served_by_an_owner_leading_index() {
        let Some(db) = TestDb::create() else { return };
        PgStore::connect(&db.settings).expect("connect");
        let mut client = db.client();
        let rows: u64 = std::env::var("MAM_PG_PLAN_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200_000);
        client
            .batch_execute(&format!(
                "INSERT INTO mam_archive (host, username, id, when_us, with_bare, with_resource, stanza)
                 SELECT 'capulet.lit', 'user' || (i % 100), 'id' || i, 1000000::int8 * i,
                        'contact' || (i % 37) || '@montague.lit', 'res' || (i % 3),
                        '<message xmlns=''jabber:client''><body>' || i || '</body></message>'
                 FROM generate_series(1, {rows}) AS i;
                 INSERT INTO mam_archive_counts (host, username, messages)
                 SELECT host, username, count(*) FROM mam_archive GROUP BY host, username;
                 -- Owners on other hosts, so the counter table is too big to scan.
                 INSERT INTO mam_archive_counts (host, username, messages)
                 SELECT 'host' || (i % 50) || '.lit', 'user' || i, 1
                 FROM generate_series(1, 50000) AS i;"
            ))
            .expect("populate");
        // One statement each: VACUUM refuses to run inside a multi-statement batch.
        for sql in ["VACUUM ANALYZE mam_archive", "ANALYZE mam_archive_counts"] {
            client.batch_execute(sql).expect(sql);
        }
        let owner = Owner::new("capulet.lit", "user7");
        let at = Some(Position {
            when_us: 1_000_000 * 50_007,
            seq: 50_007,
        });
        let newest = FindRequest {
            reverse: true,
            limit: 50,
            ..FindRequest::default()
        };
        let with = |resource: Option<&str>| WithFilter {
            bare: "contact7@montague.lit".into(),
            resource: resource.map(str::to_owned),
        };
        let with_newest = FindRequest {
            with: Some(with(None)),
            ..newest.clone()
        };
        let with_resource = FindRequest {
            with: Some(with(Some("res1"))),
            ..newest.clone()
        };
        let window = FindRequest {
            start: Some(1_000_000 * 10_000),
            end: Some(1_000_000 * 20_000),
            limit: 50,
            ..FindRequest::default()
        };
        let by_ids = FindRequest {
            ids: Some(vec!["id7".into(), "id107".into(), "id207".into()]),
            limit: 50,
            ..FindRequest::default()
        };
        const WHEN: &str = "mam_archive_owner_when";
        const WITH: &str = "mam_archive_owner_with_when";
        const KEY: &str = "mam_archive_pkey";
        let shapes = [
            ("newest page", page_sql(&owner, &newest, None, None), WHEN),
            ("oldest page", page_sql(&owner, &all(50), None, None), WHEN),
            (
                "with + newest",
                page_sql(&owner, &with_newest, None, None),
                WITH,
            ),
            (
                "full jid + newest",
                page_sql(&owner, &with_resource, None, None),
                WITH,
            ),
            ("after id", page_sql(&owner, &all(50), at, None), WHEN),
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
            ("ids", page_sql(&owner, &by_ids, None, None), KEY),
            ("count with", count_sql(&owner, &with_newest), WITH),
            ("count window", count_sql(&owner, &window), WHEN),
            ("count ids", count_sql(&owner, &by_ids), KEY),
            (
                "with + newest, with count",
                page_and_count_sql(&owner, &with_newest),
                WITH,
            ),
            (
                "newest, with count",
                page_and_count_sql(&owner, &newest),
                WHEN,
            ),
        ];
        for (name, sql, index) in &shapes {
            let text = plan(&mut client, &sql.text, &sql.params());
            assert!(text.contains(index), "{name}: expected {index}:\n{text}");
            assert!(!text.contains("Seq Scan"), "{name}:\n{text}");
        }
        let user = owner.user.as_str();
        let host = owner.host.as_str();
        let id = "id7";
        let cutoff: i64 = 1_000_000 * 100_000;
        let limit: i64 = 500;
        let fixed: [(&str, &str, Vec<&(dyn ToSql + Sync)>, &str); 8] = [
            ("id position", POSITION_OF_ID, vec![&host, &user, &id], KEY),
            ("first", FIRST_MESSAGE, vec![&host, &user], WHEN),
            ("last", LAST_MESSAGE, vec![&host, &user], WHEN),
            (
                "count",
                OWNER_COUNT,
                vec![&host, &user],
                "mam_archive_counts_pkey",
            ),
            (
                "expire owner",
                EXPIRE_OWNER,
                vec![&host, &user, &cutoff, &limit],
                WHEN,
            ),
            ("trim", TRIM_OLDEST, vec![&host, &user, &id, &limit], WHEN),
            (
                "delete user",
                DELETE_OWNER_ARCHIVE,
                vec![&host, &user],
                "mam_archive_",
            ),
            (
                "owners",
                OWNERS_FIRST,
                vec![&host, &limit],
                "mam_archive_counts_pkey",
            ),
        ];
        for (name, sql, params, index) in &fixed {
            let text = plan(&mut client, sql, params);
            assert!(text.contains(index), "{name}: expected {index}:\n{text}");
            assert!(
                !text.contains("Seq Scan on mam_archive "),
                "{name}:\n{text}"
            );
        }
    }
}
