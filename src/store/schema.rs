//! SQLite schema and its append-only migrations.
//!
//! The database's `PRAGMA user_version` says how many entries of [`MIGRATIONS`] it has
//! seen. Opening a database applies the rest, all in one exclusive transaction, so a
//! crash mid-upgrade leaves the old schema intact and two processes opening the same
//! file cannot both migrate it.
//!
//! Rules for this file: never edit, reorder or remove a step that has shipped; fix a
//! mistake with a new step. Every index leads with the owner (`(host, user)`, and
//! from step 6 on the owner's number in `archive_owners`): the archive must shard by
//! owner later, and no query may scan beyond one owner's rows.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{MamError, Result};

/// The triggers that take the rewrite mark away when text lands at or before it
/// (step 5; step 6 makes them again on its new table). The text is step 5's as it
/// shipped.
macro_rules! rewrite_mark_triggers {
    () => {
        "    CREATE TRIGGER archive_text_insert_clears_rewrite_mark AFTER INSERT ON archive
        WHEN typeof(NEW.stanza) = 'text'
            AND NEW.seq <= (SELECT upto FROM archive_rewrite_mark)
        BEGIN DELETE FROM archive_rewrite_mark; END;
    CREATE TRIGGER archive_text_update_clears_rewrite_mark AFTER UPDATE OF stanza ON archive
        WHEN typeof(NEW.stanza) = 'text'
            AND NEW.seq <= (SELECT upto FROM archive_rewrite_mark)
        BEGIN DELETE FROM archive_rewrite_mark; END;"
    };
}

/// The migrations, in order. Step `i` (0-based) moves the schema to version `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1. The archive itself. `seq` (the rowid) is the insertion order and breaks ties
    //    between messages with equal timestamps. No AUTOINCREMENT: its extra table
    //    write per insert buys nothing, since clients page by archive id (resolved to
    //    a position at query time), never by seq, and archive ids are never reused.
    //    `stanza` is the serialised message, opaque to SQL.
    //    Indexes: ids are unique per owner (and looked up per owner for RSM
    //    after/before and `ids`); archive order per owner serves pages, bounds, quota
    //    trims and expiry; archive order per (owner, contact) serves `with` queries
    //    without walking the owner's other conversations.
    "CREATE TABLE archive (
        seq INTEGER PRIMARY KEY,
        host TEXT NOT NULL,
        user TEXT NOT NULL,
        id TEXT NOT NULL,
        when_us INTEGER NOT NULL,
        with_bare TEXT NOT NULL,
        with_resource TEXT,
        stanza TEXT NOT NULL
    );
    CREATE UNIQUE INDEX archive_owner_id ON archive (host, user, id);
    CREATE INDEX archive_owner_when ON archive (host, user, when_us, seq);
    CREATE INDEX archive_owner_with_when ON archive (host, user, with_bare, when_us, seq);",
    // 2. An exact per-owner message count, so quota checks and an unfiltered RSM
    //    <count> are one primary-key lookup instead of a count over the whole archive.
    //    Triggers keep it exact whatever deletes rows (quota, expiry, account removal).
    //    A row is removed when it reaches zero so the table lists exactly the owners
    //    with messages, which is what expiry iterates. The INSERT … SELECT counts any
    //    rows a version-1 database already holds, so the counter starts exact.
    "CREATE TABLE archive_counts (
        host TEXT NOT NULL,
        user TEXT NOT NULL,
        messages INTEGER NOT NULL,
        PRIMARY KEY (host, user)
    ) WITHOUT ROWID;
    INSERT INTO archive_counts (host, user, messages)
        SELECT host, user, count(*) FROM archive GROUP BY host, user;
    CREATE TRIGGER archive_count_insert AFTER INSERT ON archive BEGIN
        INSERT INTO archive_counts (host, user, messages) VALUES (NEW.host, NEW.user, 1)
            ON CONFLICT (host, user) DO UPDATE SET messages = messages + 1;
    END;
    CREATE TRIGGER archive_count_delete AFTER DELETE ON archive BEGIN
        UPDATE archive_counts SET messages = messages - 1
            WHERE host = OLD.host AND user = OLD.user;
        DELETE FROM archive_counts
            WHERE host = OLD.host AND user = OLD.user AND messages <= 0;
    END;",
    // 3. XEP-0313 archiving preferences: the default policy per owner, and the
    //    always/never JID lists. One row per (owner, jid) so a JID is on at most one
    //    list; the CHECKs keep values to the ones the code knows how to read back.
    "CREATE TABLE archive_prefs (
        host TEXT NOT NULL,
        user TEXT NOT NULL,
        default_policy TEXT NOT NULL CHECK (default_policy IN ('always', 'never', 'roster')),
        PRIMARY KEY (host, user)
    ) WITHOUT ROWID;
    CREATE TABLE archive_prefs_jid (
        host TEXT NOT NULL,
        user TEXT NOT NULL,
        jid TEXT NOT NULL,
        rule TEXT NOT NULL CHECK (rule IN ('always', 'never')),
        PRIMARY KEY (host, user, jid)
    ) WITHOUT ROWID;",
    // 4. Compression dictionaries (issue 18, `archive_compression`): zstd dictionaries
    //    trained on this database's own messages, numbered from 1. A compressed
    //    stanza is a BLOB in `archive.stanza` (TEXT affinity keeps a BLOB as it is, so
    //    text rows and compressed rows live in one column, told apart by `typeof`) and
    //    names the dictionary it needs (`store::codec`). A dictionary is never changed
    //    or removed while this schema lasts, so every connection may cache it.
    "CREATE TABLE archive_dictionaries (
        version INTEGER PRIMARY KEY,
        trained_us INTEGER NOT NULL,
        samples INTEGER NOT NULL,
        dictionary BLOB NOT NULL
    );",
    // 5. Where the background rewrite's last complete pass ended (`compactor`): no row
    //    up to `upto` was a candidate (text, or compressed without a dictionary) once
    //    it had passed, under dictionary `dictionary`, so the next pass (after a
    //    restart too) starts there instead of walking the whole table again. Text
    //    written after the mark (compression off, an import) is walked by that next
    //    pass anyway; text written at or before it (a rowid SQLite reuses after the
    //    newest rows were deleted, an old row's stanza replaced) takes the mark away,
    //    and the next pass walks everything: the mark can only be missing, never
    //    wrong. One row at most.
    concat!(
        "CREATE TABLE archive_rewrite_mark (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        dictionary INTEGER NOT NULL,
        upto INTEGER NOT NULL
    );
",
        rewrite_mark_triggers!()
    ),
    // 6. Smaller keys (issue 18): once stanzas were compressed, the owner and contact
    //    JIDs repeated as text in every row and in three indexes, and the 26-character
    //    ids, were most of what a message took on disk. Now:
    //    - `archive_owners` names each owner once (`owner`, a small integer) and keeps
    //      its exact message count (what `archive_counts` kept);
    //    - `archive_contacts` names each of an owner's contacts once, per owner, so a
    //      contact's JID is kept only while that owner has a message with them (the
    //      delete trigger removes it with the last one) and never crosses owners;
    //    - `archive.id` holds the id packed as bytes when it has a form servers write
    //      (`mam_id`, `store::sqlite::stored_id`), else its text;
    //    - the indexes lead with `owner` and end with the rowid SQLite appends anyway.
    //    The whole table is copied once, in this step's transaction, in seq order.
    //    `mam_id` is registered on every connection before it migrates.
    concat!(
        "CREATE TABLE archive_owners (
        owner INTEGER PRIMARY KEY,
        host TEXT NOT NULL,
        user TEXT NOT NULL,
        messages INTEGER NOT NULL DEFAULT 0,
        UNIQUE (host, user)
    );
    INSERT INTO archive_owners (host, user, messages)
        SELECT host, user, messages FROM archive_counts ORDER BY host, user;
    CREATE TABLE archive_contacts (
        contact INTEGER PRIMARY KEY,
        owner INTEGER NOT NULL,
        jid TEXT NOT NULL,
        UNIQUE (owner, jid)
    );
    INSERT INTO archive_contacts (owner, jid)
        SELECT DISTINCT o.owner, a.with_bare FROM archive AS a
        JOIN archive_owners AS o ON o.host = a.host AND o.user = a.user;
    CREATE TABLE archive_by_owner (
        seq INTEGER PRIMARY KEY,
        owner INTEGER NOT NULL,
        id NOT NULL,
        when_us INTEGER NOT NULL,
        contact INTEGER NOT NULL,
        with_resource TEXT,
        stanza TEXT NOT NULL
    );
    INSERT INTO archive_by_owner (seq, owner, id, when_us, contact, with_resource, stanza)
        SELECT a.seq, o.owner, mam_id(a.id), a.when_us, c.contact, a.with_resource, a.stanza
        FROM archive AS a
        JOIN archive_owners AS o ON o.host = a.host AND o.user = a.user
        JOIN archive_contacts AS c ON c.owner = o.owner AND c.jid = a.with_bare
        ORDER BY a.seq;
    DROP TABLE archive;
    DROP TABLE archive_counts;
    ALTER TABLE archive_by_owner RENAME TO archive;
    CREATE UNIQUE INDEX archive_owner_id ON archive (owner, id);
    CREATE INDEX archive_owner_when ON archive (owner, when_us);
    CREATE INDEX archive_owner_with_when ON archive (owner, contact, when_us);
    CREATE TRIGGER archive_count_insert AFTER INSERT ON archive BEGIN
        UPDATE archive_owners SET messages = messages + 1 WHERE owner = NEW.owner;
    END;
    CREATE TRIGGER archive_count_delete AFTER DELETE ON archive BEGIN
        UPDATE archive_owners SET messages = messages - 1 WHERE owner = OLD.owner;
        DELETE FROM archive_contacts WHERE contact = OLD.contact AND NOT EXISTS
            (SELECT 1 FROM archive WHERE owner = OLD.owner AND contact = OLD.contact);
        DELETE FROM archive_owners WHERE owner = OLD.owner AND messages <= 0;
    END;
    CREATE TRIGGER archive_contact_update AFTER UPDATE OF contact ON archive
        WHEN NEW.contact <> OLD.contact BEGIN
        DELETE FROM archive_contacts WHERE contact = OLD.contact AND NOT EXISTS
            (SELECT 1 FROM archive WHERE owner = OLD.owner AND contact = OLD.contact);
    END;
    CREATE TRIGGER archive_owner_delete AFTER DELETE ON archive_owners BEGIN
        DELETE FROM archive_contacts WHERE owner = OLD.owner;
    END;
",
        rewrite_mark_triggers!()
    ),
];

/// The schema version this code writes and reads.
pub fn current_version() -> u32 {
    MIGRATIONS.len() as u32
}

/// Brings the database up to [`current_version`], applying only the missing steps.
///
/// Fails with [`MamError::Corrupt`] when the file was written by a newer version of
/// this module (it has steps we do not know, so we must not guess at its layout).
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Exclusive)
        .map_err(MamError::storage("migrate: begin"))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(MamError::storage("migrate: read user_version"))?;
    let known = i64::from(current_version());
    if version > known {
        return Err(MamError::Corrupt(format!(
            "archive database schema version {version} is newer than this module's ({known})"
        )));
    }
    // `version` is within 0..=MIGRATIONS.len() here, so the conversion cannot fail.
    let applied = usize::try_from(version).unwrap_or(0);
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.execute_batch(sql)
            .map_err(MamError::storage("migrate: apply step"))?;
        // PRAGMA takes no bound parameters; the value is a counter from this loop.
        tx.pragma_update(None, "user_version", (step + 1) as i64)
            .map_err(MamError::storage("migrate: write user_version"))?;
    }
    tx.commit().map_err(MamError::storage("migrate: commit"))
}
