//! Bytes on disk per message (issue 18): one realistic mixed corpus (`corpus.rs`)
//! stored by each configuration, and what each takes on disk afterwards.
//!
//! No Prosody runs here: every store is written the way its backend writes itself.
//! - `stock-sql`: `prosodyarchive` created exactly as Prosody 0.12's
//!   `mod_storage_sql` creates it (table and its four indexes), one row per message
//!   (`store = 'archive'`, `type = 'xml'`, `value` = the serialised stanza, `key` a
//!   36-character UUID like stock's ids).
//! - `stock-internal`: one `.list` file per owner, records as `util.datamanager`
//!   writes a preserialised stanza.
//! - ours (`native`): through the engine's own store (`mam_native::store`, the code
//!   the module runs): `uncompressed` with `archive_compression = false`;
//!   `compressed` as a server runs with compression on (the first 2,000 messages
//!   written, the compaction's first pass trains the dictionary and compresses
//!   them, the rest written compressed by the writer's path); `rewritten` the
//!   uncompressed archive compressed afterwards by the background rewrite, with the
//!   space given back (`auto_vacuum = INCREMENTAL`).
//! - PostgreSQL, when the run's private cluster is up: ours uncompressed and
//!   compressed, `pg_total_relation_size` of our tables (table, TOAST, indexes), and
//!   after the rewrite both after a plain `VACUUM` (what autovacuum does: the space
//!   is reused by new rows, the files do not shrink) and after `VACUUM FULL`;
//!   stock's `prosodyarchive` as Prosody creates it on PostgreSQL.
//!
//! SQLite sizes are the database file plus its WAL after a checkpoint
//! (`wal_checkpoint(TRUNCATE)`), i.e. what stays on disk.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use mam_native::config::{PgSettings, SslMode};
use mam_native::store::postgres::PgStore;
use mam_native::store::sqlite::SqliteStore;
use mam_native::store::{ArchiveStore, ArchivedMessage, Owner};
use mam_native::time::SystemClock;
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use crate::corpus::{lua_str, Corpus, CorpusMsg, Shape};
use crate::pg::{PgCluster, PG_PASSWORD, PG_USER};
use crate::populate::{datamanager_encode, iso8601};

const DOMAIN: &str = "example.com";
const OWNERS: usize = 50;
/// 2026-01-01T00:00:00Z: the corpus's first message.
const START_US: i64 = 1_767_225_600_000_000;
/// Messages a server stores before its first dictionary (in `compressed`).
const BEFORE_DICTIONARY: usize = 2000;

/// One configuration's footprint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SizeRow {
    pub config: String,
    pub backend: String,
    pub bytes: u64,
    pub bytes_per_message: f64,
    /// What the number covers and how it was taken.
    pub note: String,
    /// Seconds to load (and compress) the corpus.
    pub seconds: f64,
}

/// The phase's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageSizeResult {
    pub messages: usize,
    /// The corpus by shape: (name, share of messages %, mean stanza bytes).
    pub shapes: Vec<(String, f64, f64)>,
    pub mean_stanza_bytes: f64,
    pub rows: Vec<SizeRow>,
    /// Configurations that could not be measured, with why.
    pub skipped: Vec<String>,
}

fn corpus(n: usize) -> Vec<CorpusMsg> {
    Corpus::new(2026, DOMAIN, OWNERS, START_US).take(n)
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The database file plus its WAL, after a checkpoint that empties the WAL.
fn sqlite_bytes(db: &Path) -> Result<u64> {
    let conn = Connection::open(db)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    Ok(file_len(db) + file_len(Path::new(&wal)))
}

/// What the stanzas themselves take, per message (the rest is keys and indexes).
fn stanza_note(db: &Path, n: usize) -> Result<String> {
    let conn = Connection::open(db)?;
    let bytes: f64 = conn.query_row(
        "SELECT total(length(CAST(stanza AS BLOB))) FROM archive",
        [],
        |r| r.get(0),
    )?;
    Ok(format!(
        "file + WAL after a checkpoint; the stanza column {:.0} B/message of it",
        bytes / n as f64
    ))
}

/// A UUID-shaped stock key for message `i` (stock's ids are `util.uuid` v4).
fn stock_key(i: usize) -> String {
    let a = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let b = a.rotate_left(29) ^ 0x5851_f42d_4c95_7f2d;
    crate::corpus::uuid_v4_text(a, b)
}

/// Prosody 0.12's `prosodyarchive`, as `mod_storage_sql` creates it on SQLite
/// (`util.sql`: AUTOINCREMENT, MEDIUMTEXT as TEXT) or on PostgreSQL (SERIAL).
fn stock_schema(postgres: bool) -> String {
    let id = if postgres {
        "\"sort_id\" SERIAL PRIMARY KEY"
    } else {
        "\"sort_id\" INTEGER PRIMARY KEY AUTOINCREMENT"
    };
    format!(
        "CREATE TABLE \"prosodyarchive\" ({id}, \"host\" TEXT NOT NULL, \"user\" TEXT NOT NULL, \
         \"store\" TEXT NOT NULL, \"key\" TEXT NOT NULL, \"when\" INTEGER NOT NULL, \
         \"with\" TEXT NOT NULL, \"type\" TEXT NOT NULL, \"value\" TEXT NOT NULL);
         CREATE UNIQUE INDEX \"prosodyarchive_index\" ON \"prosodyarchive\" (\"host\", \"user\", \"store\", \"key\");
         CREATE INDEX \"prosodyarchive_with_when\" ON \"prosodyarchive\" (\"host\", \"user\", \"store\", \"with\", \"when\");
         CREATE INDEX \"prosodyarchive_when\" ON \"prosodyarchive\" (\"host\", \"user\", \"store\", \"when\");
         CREATE INDEX \"prosodyarchive_sort\" ON \"prosodyarchive\" (\"host\", \"user\", \"store\", \"sort_id\");"
    )
}

fn stock_sqlite(dir: &Path, msgs: &[CorpusMsg]) -> Result<u64> {
    let db = dir.join("prosody.sqlite");
    let mut conn = Connection::open(&db)?;
    conn.execute_batch(&stock_schema(false))?;
    for (c, chunk) in msgs.chunks(10_000).enumerate() {
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO \"prosodyarchive\" (\"host\", \"user\", \"store\", \"key\", \"when\", \"with\", \"type\", \"value\") \
                 VALUES (?1, ?2, 'archive', ?3, ?4, ?5, 'xml', ?6)",
            )?;
            for (j, m) in chunk.iter().enumerate() {
                st.execute(params![
                    DOMAIN,
                    m.owner,
                    stock_key(c * 10_000 + j),
                    m.when_us / 1_000_000,
                    m.with_bare,
                    m.xml()
                ])?;
            }
        }
        tx.commit()?;
    }
    drop(conn);
    sqlite_bytes(&db)
}

fn stock_internal(dir: &Path, msgs: &[CorpusMsg]) -> Result<u64> {
    let dir = dir.join(datamanager_encode(DOMAIN)).join("archive");
    fs::create_dir_all(&dir)?;
    let mut files: std::collections::BTreeMap<&str, fs::File> = Default::default();
    for (i, m) in msgs.iter().enumerate() {
        let f = match files.get_mut(m.owner.as_str()) {
            Some(f) => f,
            None => {
                let path = dir.join(format!("{}.list", datamanager_encode(&m.owner)));
                let f = fs::File::create(&path).with_context(|| path.display().to_string())?;
                files.entry(m.owner.as_str()).or_insert(f)
            }
        };
        let when = m.when_us / 1_000_000;
        let mut rec = String::from("item(");
        m.stanza.write_lua(
            &mut rec,
            0,
            &[
                ("when", when.to_string()),
                ("key", lua_str(&stock_key(i))),
                ("with", lua_str(&m.with_bare)),
                ("stamp", lua_str(&iso8601(when))),
            ],
        );
        rec.push_str(");\n");
        f.write_all(rec.as_bytes())?;
    }
    drop(files);
    let mut total = 0;
    for e in fs::read_dir(&dir)? {
        total += e?.metadata()?.len();
    }
    Ok(total)
}

fn ours(m: &CorpusMsg) -> (Owner, ArchivedMessage) {
    (
        Owner::new(DOMAIN, &m.owner),
        ArchivedMessage {
            id: m.id.clone(),
            when: m.when_us,
            with_bare: m.with_bare.clone(),
            with_resource: m.with_resource.clone(),
            xml: m.xml(),
        },
    )
}

/// Writes `msgs` as the writer does (group commits), compressing or not.
fn write_ours(store: &mut dyn ArchiveStore, msgs: &[CorpusMsg], compress: bool) -> Result<()> {
    store.set_compression(compress);
    for chunk in msgs.chunks(500) {
        let items: Vec<(Owner, ArchivedMessage)> = chunk.iter().map(ours).collect();
        store.append_many(&items, None)?;
    }
    Ok(())
}

/// Ours with compression on, as a live server gets there.
fn compressed_like_a_server(store: &mut dyn ArchiveStore, msgs: &[CorpusMsg]) -> Result<()> {
    let first = BEFORE_DICTIONARY.min(msgs.len());
    write_ours(store, &msgs[..first], true)?;
    mam_native::compactor::run_to_end(store, &SystemClock)?;
    write_ours(store, &msgs[first..], true)?;
    mam_native::compactor::run_to_end(store, &SystemClock)?;
    Ok(())
}

fn pg_settings(cluster: &PgCluster, database: &str) -> PgSettings {
    PgSettings {
        database: database.to_owned(),
        host: "127.0.0.1".into(),
        port: cluster.port,
        username: PG_USER.into(),
        password: Some(PG_PASSWORD.into()),
        sslmode: SslMode::Disable,
        sslrootcert: None,
    }
}

fn pg_bytes(cluster: &PgCluster, database: &str, tables: &str) -> Result<u64> {
    let mut c = cluster.client(database)?;
    let row = c.query_one(
        &format!(
            "SELECT coalesce(sum(pg_total_relation_size(c)), 0)::int8 \
             FROM unnest(ARRAY[{tables}]::regclass[]) AS c"
        ),
        &[],
    )?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

const OUR_TABLES: &str = "'mam_archive', 'mam_archive_counts', 'mam_dictionaries'";

fn pg_vacuum(cluster: &PgCluster, database: &str, full: bool) -> Result<()> {
    let mut c = cluster.client(database)?;
    c.batch_execute(if full {
        "VACUUM FULL mam_archive"
    } else {
        "VACUUM mam_archive"
    })?;
    Ok(())
}

fn stock_pg(cluster: &PgCluster, msgs: &[CorpusMsg]) -> Result<u64> {
    const DB: &str = "mam_size_stock";
    cluster.create_database(DB)?;
    let mut c = cluster.client(DB)?;
    c.batch_execute(&stock_schema(true))?;
    for (k, chunk) in msgs.chunks(5000).enumerate() {
        let mut tx = c.transaction()?;
        let st = tx.prepare(
            "INSERT INTO \"prosodyarchive\" (\"host\", \"user\", \"store\", \"key\", \"when\", \"with\", \"type\", \"value\") \
             VALUES ($1, $2, 'archive', $3, $4, $5, 'xml', $6)",
        )?;
        for (j, m) in chunk.iter().enumerate() {
            // Stock's `when` is INTEGER, a 4-byte integer on PostgreSQL.
            let when = (m.when_us / 1_000_000) as i32;
            tx.execute(
                &st,
                &[
                    &DOMAIN,
                    &m.owner,
                    &stock_key(k * 5000 + j),
                    &when,
                    &m.with_bare,
                    &m.xml(),
                ],
            )?;
        }
        tx.commit()?;
    }
    c.batch_execute("VACUUM ANALYZE prosodyarchive")?;
    let bytes = pg_bytes(cluster, DB, "'prosodyarchive'")?;
    drop(c);
    cluster.drop_database(DB)?;
    Ok(bytes)
}

/// Runs the phase on `n` messages in `dir` (created; left for the caller to remove).
pub fn run(dir: &Path, n: usize, pg: Option<&PgCluster>) -> Result<StorageSizeResult> {
    fs::create_dir_all(dir)?;
    let msgs = corpus(n);
    let total_raw: usize = msgs.iter().map(|m| m.xml().len()).sum();
    let shapes = Shape::ALL
        .iter()
        .map(|&s| {
            let of: Vec<usize> = msgs
                .iter()
                .filter(|m| m.shape == s)
                .map(|m| m.xml().len())
                .collect();
            let mean = of.iter().sum::<usize>() as f64 / of.len().max(1) as f64;
            (
                s.name().to_owned(),
                of.len() as f64 * 100.0 / n as f64,
                mean,
            )
        })
        .collect();
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut add = |config: &str, backend: &str, bytes: u64, note: &str, t: Instant| {
        crate::log(format!(
            "storage size: {config} ({backend}): {bytes} bytes, {:.0} bytes/message",
            bytes as f64 / n as f64
        ));
        rows.push(SizeRow {
            config: config.into(),
            backend: backend.into(),
            bytes,
            bytes_per_message: bytes as f64 / n as f64,
            note: note.into(),
            seconds: t.elapsed().as_secs_f64(),
        });
    };

    let t = Instant::now();
    let d = dir.join("stock-sql");
    fs::create_dir_all(&d)?;
    add(
        "stock-sql",
        "SQLite",
        stock_sqlite(&d, &msgs)?,
        "database file (rollback journal, none left)",
        t,
    );

    let t = Instant::now();
    let d = dir.join("stock-internal");
    add(
        "stock-internal",
        "files",
        stock_internal(&d, &msgs)?,
        "sum of the .list files",
        t,
    );

    let t = Instant::now();
    let db = dir.join("native-plain.sqlite");
    {
        let mut store = SqliteStore::open(&db)?;
        write_ours(&mut store, &msgs, false)?;
    }
    let note = stanza_note(&db, n)?;
    add(
        "native, uncompressed",
        "SQLite",
        sqlite_bytes(&db)?,
        &note,
        t,
    );

    let t = Instant::now();
    let db = dir.join("native-compressed.sqlite");
    {
        let mut store = SqliteStore::open(&db)?;
        compressed_like_a_server(&mut store, &msgs)?;
    }
    let note = stanza_note(&db, n)?;
    add("native, compressed", "SQLite", sqlite_bytes(&db)?, &note, t);

    let t = Instant::now();
    let db = dir.join("native-plain.sqlite");
    {
        let mut store = SqliteStore::open(&db)?;
        mam_native::compactor::run_to_end(&mut store, &SystemClock)?;
    }
    let note = format!(
        "the uncompressed file after the background rewrite (space given back incrementally); {}",
        stanza_note(&db, n)?
    );
    add("native, rewritten", "SQLite", sqlite_bytes(&db)?, &note, t);

    match pg {
        None => skipped.push("PostgreSQL: no cluster in this run".to_owned()),
        Some(cluster) => {
            let t = Instant::now();
            match stock_pg(cluster, &msgs) {
                Ok(bytes) => add(
                    "stock-sql",
                    "PostgreSQL",
                    bytes,
                    "prosodyarchive: table, TOAST, indexes",
                    t,
                ),
                Err(e) => skipped.push(format!("stock on PostgreSQL: {e:#}")),
            }
            let pg_ours = |db: &str, compress: bool| -> Result<(u64, Instant)> {
                let t = Instant::now();
                cluster.create_database(db)?;
                let mut store = PgStore::connect(&pg_settings(cluster, db))?;
                if compress {
                    compressed_like_a_server(&mut store, &msgs)?;
                } else {
                    write_ours(&mut store, &msgs, false)?;
                }
                drop(store);
                let mut c = cluster.client(db)?;
                c.batch_execute("VACUUM ANALYZE mam_archive")?;
                Ok((pg_bytes(cluster, db, OUR_TABLES)?, t))
            };
            match pg_ours("mam_size_plain", false) {
                Ok((bytes, t)) => add(
                    "native, uncompressed",
                    "PostgreSQL",
                    bytes,
                    "mam_* tables, TOAST, indexes",
                    t,
                ),
                Err(e) => skipped.push(format!("ours on PostgreSQL, uncompressed: {e:#}")),
            }
            match pg_ours("mam_size_compressed", true) {
                Ok((bytes, t)) => add(
                    "native, compressed",
                    "PostgreSQL",
                    bytes,
                    "mam_* tables, TOAST, indexes",
                    t,
                ),
                Err(e) => skipped.push(format!("ours on PostgreSQL, compressed: {e:#}")),
            }
            let rewritten = (|| -> Result<(u64, u64, Instant)> {
                let t = Instant::now();
                let mut store = PgStore::connect(&pg_settings(cluster, "mam_size_plain"))?;
                mam_native::compactor::run_to_end(&mut store, &SystemClock)?;
                drop(store);
                pg_vacuum(cluster, "mam_size_plain", false)?;
                let plain_vacuum = pg_bytes(cluster, "mam_size_plain", OUR_TABLES)?;
                pg_vacuum(cluster, "mam_size_plain", true)?;
                let full = pg_bytes(cluster, "mam_size_plain", OUR_TABLES)?;
                Ok((plain_vacuum, full, t))
            })();
            match rewritten {
                Ok((vacuum, full, t)) => {
                    add(
                        "native, rewritten",
                        "PostgreSQL",
                        vacuum,
                        "after the rewrite and a plain VACUUM (space reusable, files not shrunk)",
                        t,
                    );
                    add(
                        "native, rewritten",
                        "PostgreSQL",
                        full,
                        "after VACUUM FULL (files rewritten)",
                        t,
                    );
                }
                Err(e) => skipped.push(format!("ours on PostgreSQL, rewritten: {e:#}")),
            }
            for db in ["mam_size_plain", "mam_size_compressed"] {
                let _ = cluster.drop_database(db);
            }
        }
    }
    Ok(StorageSizeResult {
        messages: n,
        shapes,
        mean_stanza_bytes: total_raw as f64 / n as f64,
        rows,
        skipped,
    })
}

/// The report's section.
pub fn markdown(m: &mut String, r: &StorageSizeResult) {
    let _ = writeln!(m, "\n## Bytes on disk per message (issue 18)\n");
    let mix: Vec<String> = r
        .shapes
        .iter()
        .map(|(name, share, mean)| format!("{name} {share:.0}% (mean {mean:.0} B)"))
        .collect();
    let _ = writeln!(
        m,
        "{} messages of a generated mixed corpus (`bench/src/corpus.rs`, {OWNERS} owners): {}; \
         mean stanza {:.0} bytes.\n",
        r.messages,
        mix.join(", "),
        r.mean_stanza_bytes
    );
    let _ = writeln!(
        m,
        "| configuration | backend | bytes/message | total MiB | stock SQLite ÷ this | what is counted |"
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|---|");
    let stock = r
        .rows
        .iter()
        .find(|x| x.config == "stock-sql" && x.backend == "SQLite")
        .map(|x| x.bytes_per_message);
    for row in &r.rows {
        let vs = match stock {
            Some(s) if row.bytes_per_message > 0.0 => format!("{:.2}×", s / row.bytes_per_message),
            _ => "-".into(),
        };
        let _ = writeln!(
            m,
            "| {} | {} | {:.0} | {:.1} | {} | {} |",
            row.config,
            row.backend,
            row.bytes_per_message,
            row.bytes as f64 / 1048576.0,
            vs,
            row.note
        );
    }
    for s in &r.skipped {
        let _ = writeln!(m, "\nNot measured: {s}");
    }
}
