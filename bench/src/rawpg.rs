//! The physical limit on PostgreSQL: the same inserts and page reads done straight
//! from Rust with the `postgres` crate against the run's private cluster (same
//! server, same settings, the schema the module created), with no Prosody, no XML and
//! no Lua in the way. The counterpart of `rawsqlite.rs`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use postgres::types::ToSql;
use postgres::{Client, Statement};

use crate::pg::PgCluster;
use crate::phases::SHAPES;
use crate::populate::{self, Dataset};
use crate::rawsqlite::{RawPage, RawResult};
use crate::stats::summarize_us;
use crate::xmpp::DOMAIN;

/// The scratch database of this phase (dropped at the end).
const RAW_DB: &str = "mam_raw";

/// One message per statement in autocommit: one durable commit per message, the
/// counter kept in the same statement.
const INSERT_ONE: &str = "WITH ins AS (INSERT INTO mam_archive \
     (host, username, id, when_us, with_bare, with_resource, stanza) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING 1) \
     INSERT INTO mam_archive_counts (host, username, messages) \
     SELECT $1, $2, count(*) FROM ins \
     ON CONFLICT (host, username) DO UPDATE \
     SET messages = mam_archive_counts.messages + EXCLUDED.messages";

/// A batch as the module's writer sends a group commit: parallel arrays unpacked in
/// order, then the counter.
const INSERT_MANY: &str = "INSERT INTO mam_archive \
     (host, username, id, when_us, with_bare, with_resource, stanza) \
     SELECT h, u, i, w, wb, wr, s FROM unnest($1::text[], $2::text[], $3::text[], \
     $4::int8[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY \
     AS t(h, u, i, w, wb, wr, s, n) ORDER BY n";

const COUNT_ADD: &str = "INSERT INTO mam_archive_counts (host, username, messages) \
     VALUES ($1, $2, $3) ON CONFLICT (host, username) DO UPDATE \
     SET messages = mam_archive_counts.messages + EXCLUDED.messages";

/// Inserts every message of `ds`, `batch` rows per transaction; returns the rows.
fn insert_batches(c: &mut Client, ds: &Dataset, batch: u64) -> Result<u64> {
    let mut i = 0;
    while i < ds.n {
        let end = (i + batch).min(ds.n);
        let msgs: Vec<populate::Msg> = (i..end).map(|j| ds.msg(j)).collect();
        let k = msgs.len();
        let hosts = vec![DOMAIN; k];
        let users = vec![ds.owner.as_str(); k];
        let ids: Vec<&str> = msgs.iter().map(|m| m.key.as_str()).collect();
        let whens: Vec<i64> = msgs.iter().map(|m| m.when_us).collect();
        let withs: Vec<&str> = msgs.iter().map(|m| m.with.as_str()).collect();
        let res: Vec<Option<&str>> = msgs.iter().map(|m| m.with_resource).collect();
        let xml: Vec<String> = msgs.iter().map(|m| m.xml()).collect();
        let mut tx = c.transaction()?;
        tx.execute(
            INSERT_MANY,
            &[&hosts, &users, &ids, &whens, &withs, &res, &xml],
        )?;
        tx.execute(COUNT_ADD, &[&DOMAIN, &ds.owner, &(k as i64)])?;
        tx.commit()?;
        i = end;
    }
    Ok(ds.n)
}

/// Statements prepared once per connection, by their text.
type Cache = HashMap<String, Statement>;

/// The statement a page of each shape needs (LIMIT 51: a page of 50 plus one), as the
/// module builds it, run in autocommit; returns the rows read.
fn page(c: &mut Client, cache: &mut Cache, shape: &str, ds: &Dataset) -> Result<usize> {
    let owner = ds.owner.as_str();
    let n = ds.n;
    let cols =
        "SELECT id, when_us, with_bare, stanza FROM mam_archive WHERE host = $1 AND username = $2";
    let mut run = |sql: String, extra: &[&(dyn ToSql + Sync)]| -> Result<usize> {
        let st = match cache.get(&sql) {
            Some(st) => st.clone(),
            None => {
                let st = c.prepare(&sql)?;
                cache.insert(sql, st.clone());
                st
            }
        };
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![&DOMAIN, &owner];
        p.extend_from_slice(extra);
        let rows = c.query(&st, &p)?;
        Ok(rows
            .iter()
            .filter(|r| !r.get::<_, &str>(3).is_empty())
            .count())
    };
    match shape {
        "newest" => run(
            format!("{cols} ORDER BY when_us DESC, seq DESC LIMIT 51"),
            &[],
        ),
        "first" => run(format!("{cols} ORDER BY when_us, seq LIMIT 51"), &[]),
        "with-frequent" | "with-rare" => {
            let with = if shape == "with-rare" {
                populate::RARE
            } else {
                populate::FREQUENT
            };
            run(
                format!("{cols} AND with_bare = $3 ORDER BY when_us DESC, seq DESC LIMIT 51"),
                &[&with],
            )
        }
        "window" => {
            let t = ds.when_us(n * 3 / 4) / 1_000_000 * 1_000_000;
            let end = t + 3_600_000_000;
            run(
                format!(
                    "{cols} AND when_us >= $3 AND when_us <= $4 ORDER BY when_us, seq LIMIT 51"
                ),
                &[&t, &end],
            )
        }
        "deep-after" => {
            let id = Dataset::key(n / 2);
            run(
                format!(
                    "{cols} AND (when_us, seq) > (SELECT when_us, seq FROM mam_archive \
                     WHERE host = $1 AND username = $2 AND id = $3) ORDER BY when_us, seq LIMIT 51"
                ),
                &[&id],
            )
        }
        "ids" => {
            let ids: Vec<String> = (0..10).map(|k| Dataset::key(k * n / 10 + 7)).collect();
            run(
                format!("{cols} AND id = ANY($3::text[]) ORDER BY when_us, seq LIMIT 51"),
                &[&ids],
            )
        }
        "count" => {
            let v: i64 = c
                .query_one(
                    "SELECT messages FROM mam_archive_counts WHERE host = $1 AND username = $2",
                    &[&DOMAIN, &owner],
                )?
                .get(0);
            Ok(usize::from(v >= 0))
        }
        _ => unreachable!("unknown shape {shape}"),
    }
}

/// Runs the whole PostgreSQL physical-limit phase in a scratch database whose schema
/// is copied from `schema_db` (the database the module created in this run).
pub fn run(
    pg: &PgCluster,
    schema_db: &str,
    datasets: &[Dataset],
    single_tx_for: Duration,
    iters: usize,
) -> Result<RawResult> {
    let schema = pg.dump_schema(schema_db)?;
    if !schema.contains("mam_archive") {
        anyhow::bail!("database {schema_db} has no mam_archive table to copy");
    }
    pg.create_database(RAW_DB)?;
    let r = measure(pg, &schema, datasets, single_tx_for, iters);
    let _ = pg.drop_database(RAW_DB);
    r.map(|mut r| {
        r.schema_from = format!("copied with pg_dump from database {schema_db}");
        r
    })
}

fn measure(
    pg: &PgCluster,
    schema: &str,
    datasets: &[Dataset],
    single_tx_for: Duration,
    iters: usize,
) -> Result<RawResult> {
    // pg_dump's preamble empties search_path for its session: apply it on a
    // connection of its own.
    pg.client(RAW_DB)?
        .batch_execute(schema)
        .context("applying the copied schema")?;
    let mut c = pg.client(RAW_DB)?;

    // Single-message commits, as many as fit in the time given.
    let probe = Dataset::new("probe", 1_000_000);
    let st = c.prepare(INSERT_ONE)?;
    let t = Instant::now();
    let mut k = 0u64;
    while t.elapsed() < single_tx_for {
        let m = probe.msg(k);
        let xml = m.xml();
        c.execute(
            &st,
            &[
                &DOMAIN,
                &probe.owner,
                &m.key,
                &m.when_us,
                &m.with,
                &m.with_resource,
                &xml,
            ],
        )?;
        k += 1;
    }
    let single = k as f64 / t.elapsed().as_secs_f64();
    c.batch_execute("TRUNCATE mam_archive, mam_archive_counts")?;

    // Batches of 1000, as group commits.
    let t = Instant::now();
    let mut rows = 0u64;
    for ds in datasets {
        rows += insert_batches(&mut c, ds, 1000)?;
    }
    let batch = rows as f64 / t.elapsed().as_secs_f64();
    c.batch_execute("ANALYZE mam_archive; ANALYZE mam_archive_counts")?;

    let mut pages = Vec::new();
    let mut cache = Cache::new();
    for ds in datasets {
        for shape in SHAPES {
            let mut lat = Vec::new();
            let mut got = 0;
            page(&mut c, &mut cache, shape, ds)?; // warm
            for _ in 0..iters {
                let t = Instant::now();
                got = page(&mut c, &mut cache, shape, ds)?;
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

    // Expiry: one DELETE of everything older than the cut-off, and the counters.
    let cutoff_us = (populate::now_s() - 86400) * 1_000_000;
    let t = Instant::now();
    let mut tx = c.transaction()?;
    let deleted = tx.execute(
        "DELETE FROM mam_archive WHERE host = $1 AND when_us < $2",
        &[&DOMAIN, &cutoff_us],
    )?;
    tx.execute("DELETE FROM mam_archive_counts WHERE host = $1", &[&DOMAIN])?;
    tx.commit()?;
    let expiry = t.elapsed().as_secs_f64();
    Ok(RawResult {
        schema_from: String::new(),
        single_row_tx_per_s: single,
        batch_rows_per_s: batch,
        pages,
        expiry_delete_s: Some(expiry),
        expiry_deleted: deleted,
    })
}
