//! PostgreSQL schema and its append-only migrations.
//!
//! The same concepts as the SQLite schema ([`crate::store::schema`]), in PostgreSQL's
//! own types. Table names carry a `mam_` prefix so the archive can live in the same
//! database as Prosody's own `prosody`/`prosodyarchive` tables.
//!
//! `mam_schema.version` says how many entries of [`MIGRATIONS`] the database has seen.
//! Migrating runs in one transaction (PostgreSQL's DDL is transactional) under an
//! advisory lock, so several Prosody processes starting at once against one database
//! migrate it exactly once and a crash mid-upgrade leaves the old schema intact.
//!
//! Rules for this file: never edit, reorder or remove a step that has shipped; fix a
//! mistake with a new step. Every key and index leads with the owner
//! `(host, username)`, so the archive shards by owner (e.g. Citus, distributing on
//! `username`) and no query scans beyond one owner's rows.
//!
//! No partitioning by time: a partitioned table's unique indexes must contain the
//! partition key, so per-owner unique archive ids (`(host, username, id)`) could no
//! longer be enforced; expiry instead deletes in short, index-served batches per owner,
//! which never holds locks for long (see `expire_batch`).

use postgres::Client;

use crate::error::{MamError, Result};

/// The migrations, in order. Step `i` (0-based) moves the schema to version `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1. The archive, its per-owner counter and the archiving preferences.
    //    `seq` is insertion order and breaks ties between equal timestamps. Text that
    //    is compared or sorted uses the "C" collation: byte order, the same on every
    //    server whatever its locale, and the fastest.
    //    The primary key is the owner's archive id (ids are unique per owner and
    //    looked up per owner for RSM after/before, `ids` and deletes); archive order
    //    per owner serves pages, bounds, quotas and expiry; archive order per (owner,
    //    contact) serves `with` queries.
    //    `mam_archive_counts` holds an exact message count per owner (kept by this
    //    module in the same transaction as every insert and delete), so quota checks
    //    and an unfiltered `<count>` are one key lookup. A row exists only while the
    //    owner has messages, which is what expiry walks.
    "CREATE TABLE mam_archive (
        host TEXT COLLATE \"C\" NOT NULL,
        username TEXT COLLATE \"C\" NOT NULL,
        id TEXT COLLATE \"C\" NOT NULL,
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        when_us BIGINT NOT NULL,
        with_bare TEXT COLLATE \"C\" NOT NULL,
        with_resource TEXT COLLATE \"C\",
        stanza TEXT NOT NULL,
        PRIMARY KEY (host, username, id)
    );
    CREATE INDEX mam_archive_owner_when ON mam_archive (host, username, when_us, seq);
    CREATE INDEX mam_archive_owner_with_when
        ON mam_archive (host, username, with_bare, when_us, seq);
    CREATE TABLE mam_archive_counts (
        host TEXT COLLATE \"C\" NOT NULL,
        username TEXT COLLATE \"C\" NOT NULL,
        messages BIGINT NOT NULL,
        PRIMARY KEY (host, username)
    );
    CREATE TABLE mam_prefs (
        host TEXT COLLATE \"C\" NOT NULL,
        username TEXT COLLATE \"C\" NOT NULL,
        default_policy TEXT NOT NULL CHECK (default_policy IN ('always', 'never', 'roster')),
        PRIMARY KEY (host, username)
    );
    CREATE TABLE mam_prefs_jid (
        host TEXT COLLATE \"C\" NOT NULL,
        username TEXT COLLATE \"C\" NOT NULL,
        jid TEXT COLLATE \"C\" NOT NULL,
        rule TEXT NOT NULL CHECK (rule IN ('always', 'never')),
        PRIMARY KEY (host, username, jid)
    );",
    // 2. Compression (issue 18, `archive_compression`): a compressed stanza goes into
    //    `stanza_z` (`store::codec`'s format) and `stanza` is NULL; a row has exactly
    //    one of the two (checked for new rows; `NOT VALID` spares the existing ones a
    //    full scan under the table lock, and they all have `stanza`). Adding a nullable
    //    column and dropping NOT NULL change only the catalogue. `stanza_z` is already
    //    compressed, so TOAST must not try pglz on it again (STORAGE EXTERNAL).
    //    `mam_dictionaries`: the zstd dictionaries rows name, from 1, never changed.
    "ALTER TABLE mam_archive ADD COLUMN stanza_z BYTEA, ALTER COLUMN stanza DROP NOT NULL;
    ALTER TABLE mam_archive ALTER COLUMN stanza_z SET STORAGE EXTERNAL;
    ALTER TABLE mam_archive ADD CONSTRAINT mam_archive_one_stanza
        CHECK ((stanza IS NULL) <> (stanza_z IS NULL)) NOT VALID;
    CREATE TABLE mam_dictionaries (
        version INTEGER PRIMARY KEY,
        trained_us BIGINT NOT NULL,
        samples INTEGER NOT NULL,
        dictionary BYTEA NOT NULL
    );",
];

/// An arbitrary constant naming this module's advisory lock (ASCII "mam_schm").
const MIGRATION_LOCK: i64 = 0x6d61_6d5f_7363_686d;

/// The schema version this code writes and reads.
pub fn current_version() -> i32 {
    MIGRATIONS.len() as i32
}

/// Brings the database up to [`current_version`], applying only the missing steps.
///
/// Fails with [`MamError::Corrupt`] when the database was migrated by a newer version
/// of this module (we must not guess at a layout we do not know).
pub fn migrate(client: &mut Client) -> Result<()> {
    let mut tx = client
        .transaction()
        .map_err(MamError::postgres("migrate: begin"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(MamError::postgres("migrate: take the migration lock"))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS mam_schema (version INTEGER NOT NULL)")
        .map_err(MamError::postgres("migrate: create mam_schema"))?;
    let row = tx
        .query_opt("SELECT version FROM mam_schema", &[])
        .map_err(MamError::postgres("migrate: read version"))?;
    let version: i32 = match row {
        Some(row) => row
            .try_get(0)
            .map_err(MamError::postgres("migrate: read version"))?,
        None => {
            tx.execute("INSERT INTO mam_schema (version) VALUES (0)", &[])
                .map_err(MamError::postgres("migrate: start version"))?;
            0
        }
    };
    let known = current_version();
    if version > known {
        return Err(MamError::Corrupt(format!(
            "archive database schema version {version} is newer than this module's ({known})"
        )));
    }
    let applied = usize::try_from(version).unwrap_or(0);
    if applied == MIGRATIONS.len() {
        return tx.commit().map_err(MamError::postgres("migrate: end"));
    }
    for sql in MIGRATIONS.iter().skip(applied) {
        tx.batch_execute(sql)
            .map_err(MamError::postgres("migrate: apply step"))?;
    }
    tx.execute("UPDATE mam_schema SET version = $1", &[&known])
        .map_err(MamError::postgres("migrate: write version"))?;
    tx.commit().map_err(MamError::postgres("migrate: commit"))
}
