//! The physical limit: the same inserts and page reads done straight against SQLite
//! from Rust (WAL, `synchronous = NORMAL`, as the native module opens its database),
//! with no server, no XML and no Lua in the way.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use rusqlite::{params, params_from_iter, Connection};
use serde::{Deserialize, Serialize};

use crate::phases::SHAPES;
use crate::populate::{self, Dataset};
use crate::stats::{summarize_us, Summary};
use crate::xmpp::DOMAIN;

/// The plain layout this phase measures: the native module's schema before its step 6
/// (owners, contacts and ids as text in every row and index), the straightforward
/// design a limit should be measured on.
const RAW_SCHEMA: &str = "
CREATE TABLE archive (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL, user TEXT NOT NULL, id TEXT NOT NULL,
    when_us INTEGER NOT NULL, with_bare TEXT NOT NULL, with_resource TEXT, stanza TEXT NOT NULL);
CREATE UNIQUE INDEX archive_owner_id ON archive (host, user, id);
CREATE INDEX archive_owner_when ON archive (host, user, when_us, seq);
CREATE INDEX archive_owner_with_when ON archive (host, user, with_bare, when_us, seq);
CREATE TABLE archive_counts (host TEXT NOT NULL, user TEXT NOT NULL, messages INTEGER NOT NULL,
    PRIMARY KEY (host, user)) WITHOUT ROWID;
CREATE TRIGGER archive_count_insert AFTER INSERT ON archive BEGIN
    INSERT INTO archive_counts (host, user, messages) VALUES (NEW.host, NEW.user, 1)
        ON CONFLICT (host, user) DO UPDATE SET messages = messages + 1;
END;
CREATE TRIGGER archive_count_delete AFTER DELETE ON archive BEGIN
    UPDATE archive_counts SET messages = messages - 1 WHERE host = OLD.host AND user = OLD.user;
    DELETE FROM archive_counts WHERE host = OLD.host AND user = OLD.user AND messages <= 0;
END;";

/// How a row goes into [`RAW_SCHEMA`].
const RAW_INSERT: &str =
    "INSERT INTO archive (host, user, id, when_us, with_bare, with_resource, stanza) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// Inserts message `j` of `ds` with `st` (prepared from [`RAW_INSERT`]).
fn insert_one(st: &mut rusqlite::CachedStatement<'_>, ds: &Dataset, j: u64) -> Result<()> {
    let m = ds.msg(j);
    st.execute(params![
        DOMAIN,
        ds.owner,
        m.key,
        m.when_us,
        m.with,
        m.with_resource,
        m.xml()
    ])?;
    Ok(())
}

/// Inserts every message of `ds`, `batch` rows per transaction.
fn insert_batches(conn: &mut Connection, ds: &Dataset, batch: u64) -> Result<u64> {
    let mut i = 0;
    while i < ds.n {
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(RAW_INSERT)?;
            for j in i..(i + batch).min(ds.n) {
                insert_one(&mut st, ds, j)?;
            }
        }
        tx.commit()?;
        i += batch;
    }
    Ok(ds.n)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawResult {
    pub schema_from: String,
    /// One message per transaction, as a server archiving each message on arrival does.
    pub single_row_tx_per_s: f64,
    /// Batches of 1000 rows per transaction.
    pub batch_rows_per_s: f64,
    pub pages: Vec<RawPage>,
    pub expiry_delete_s: Option<f64>,
    pub expiry_deleted: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawPage {
    pub size: u64,
    pub shape: String,
    pub latency: Summary,
    pub rows: usize,
}

fn open(path: &Path) -> Result<Connection> {
    let c = Connection::open(path)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(c)
}

/// The SQL a straightforward implementation runs for each shape (LIMIT 51: a page of
/// 50 plus one to know whether it is complete).
fn page(c: &Connection, shape: &str, ds: &Dataset) -> Result<usize> {
    let owner = &ds.owner;
    let cols = "id, when_us, with_bare, stanza";
    let rows = |sql: &str, extra: Vec<rusqlite::types::Value>| -> Result<usize> {
        let mut st = c.prepare_cached(sql)?;
        let mut p: Vec<rusqlite::types::Value> =
            vec![DOMAIN.to_string().into(), owner.clone().into()];
        p.extend(extra);
        let mut r = st.query(params_from_iter(p))?;
        let mut n = 0;
        while let Some(row) = r.next()? {
            let s: String = row.get(3)?;
            n += usize::from(!s.is_empty());
        }
        Ok(n)
    };
    let n = ds.n;
    match shape {
        "newest" => rows(&format!("SELECT {cols} FROM archive WHERE host=?1 AND user=?2 ORDER BY when_us DESC, seq DESC LIMIT 51"), vec![]),
        "first" => rows(&format!("SELECT {cols} FROM archive WHERE host=?1 AND user=?2 ORDER BY when_us, seq LIMIT 51"), vec![]),
        "with-frequent" | "with-rare" => {
            let with = if shape == "with-rare" { populate::RARE } else { populate::FREQUENT };
            rows(
                &format!("SELECT {cols} FROM archive WHERE host=?1 AND user=?2 AND with_bare=?3 ORDER BY when_us DESC, seq DESC LIMIT 51"),
                vec![with.to_string().into()],
            )
        }
        "window" => {
            let t = ds.when_us(n * 3 / 4) / 1_000_000 * 1_000_000;
            rows(
                &format!("SELECT {cols} FROM archive WHERE host=?1 AND user=?2 AND when_us >= ?3 AND when_us <= ?4 ORDER BY when_us, seq LIMIT 51"),
                vec![t.into(), (t + 3_600_000_000).into()],
            )
        }
        "deep-after" => rows(
            &format!(
                "SELECT {cols} FROM archive WHERE host=?1 AND user=?2 AND (when_us, seq) > \
                 (SELECT when_us, seq FROM archive WHERE host=?1 AND user=?2 AND id=?3) ORDER BY when_us, seq LIMIT 51"
            ),
            vec![Dataset::key(n / 2).into()],
        ),
        "ids" => {
            let ids: Vec<rusqlite::types::Value> = (0..10).map(|k| Dataset::key(k * n / 10 + 7).into()).collect();
            let marks: Vec<String> = (0..ids.len()).map(|k| format!("?{}", k + 3)).collect();
            rows(
                // No ORDER BY: at most 10 rows, and an ORDER BY tempts the planner into
                // walking the time index instead of looking the ids up.
                &format!("SELECT {cols} FROM archive WHERE host=?1 AND user=?2 AND id IN ({})", marks.join(",")),
                ids,
            )
        }
        "count" => {
            let v: i64 = c
                .query_row("SELECT messages FROM archive_counts WHERE host=?1 AND user=?2", params![DOMAIN, owner], |r| r.get(0))
                .or_else(|_| c.query_row("SELECT count(*) FROM archive WHERE host=?1 AND user=?2", params![DOMAIN, owner], |r| r.get(0)))?;
            Ok(usize::from(v >= 0))
        }
        _ => unreachable!(),
    }
}

/// Runs the whole physical-limit phase in `dir`.
pub fn run(
    dir: &Path,
    datasets: &[Dataset],
    single_tx_for: Duration,
    iters: usize,
) -> Result<RawResult> {
    let path = dir.join("raw.sqlite");
    let _ = std::fs::remove_file(&path);
    let schema_from = "built-in: the native schema before step 6 (text keys)".to_owned();
    let mut c = open(&path)?;
    c.execute_batch(RAW_SCHEMA)?;

    // Single-row transactions, as many as fit in the time given.
    let probe = Dataset::new("probe", 1_000_000);
    let t = Instant::now();
    let mut k = 0u64;
    {
        let mut st = c.prepare_cached(RAW_INSERT)?;
        while t.elapsed() < single_tx_for {
            insert_one(&mut st, &probe, k)?;
            k += 1;
        }
    }
    let single = k as f64 / t.elapsed().as_secs_f64();
    c.execute(
        "DELETE FROM archive WHERE host=?1 AND user=?2",
        params![DOMAIN, probe.owner],
    )?;

    // Batches of 1000.
    let t = Instant::now();
    let mut rows = 0u64;
    for ds in datasets {
        rows += insert_batches(&mut c, ds, 1000)?;
    }
    let batch = rows as f64 / t.elapsed().as_secs_f64();

    let mut pages = Vec::new();
    for ds in datasets {
        for shape in SHAPES {
            let mut lat = Vec::new();
            let mut got = 0;
            page(&c, shape, ds)?; // warm
            for _ in 0..iters {
                let t = Instant::now();
                got = page(&c, shape, ds)?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            pages.push(RawPage {
                size: ds.n,
                shape: shape.to_string(),
                latency: summarize_us(&lat),
                rows: got,
            });
        }
    }

    // Expiry: one DELETE of everything older than the cut-off.
    let cutoff_us = (populate::now_s() - 86400) * 1_000_000;
    let t = Instant::now();
    let deleted = c.execute(
        "DELETE FROM archive WHERE host=?1 AND when_us < ?2",
        params![DOMAIN, cutoff_us],
    )? as u64;
    let expiry = t.elapsed().as_secs_f64();
    drop(c);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(dir.join("raw.sqlite-wal"));
    let _ = std::fs::remove_file(dir.join("raw.sqlite-shm"));
    Ok(RawResult {
        schema_from,
        single_row_tx_per_s: single,
        batch_rows_per_s: batch,
        pages,
        expiry_delete_s: Some(expiry),
        expiry_deleted: deleted,
    })
}
