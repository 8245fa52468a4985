//! The fast path: big archives are written straight into each backend's storage while
//! its Prosody is stopped, in exactly the layout that backend writes itself. See
//! `bench/README.md` ("Pre-population") for the format of each.
//!
//! The data set is deterministic: message `i` of an archive of `n` messages has a fixed
//! id, contact, direction and timestamp, so queries can name ids and time windows
//! without reading anything back.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rusqlite::{params, Connection};

use mam_native::store::codec::{self, Codec};
use mam_native::store::sqlite::SqliteStore;
use mam_native::store::{ArchiveStore, ArchivedMessage, Owner};

use crate::corpus::lua_str;
use crate::xmpp::{DOMAIN, MUC_DOMAIN};

/// The frequent contact: one message in three.
pub const FREQUENT: &str = "friend@localhost";
/// The rare contact: exactly [`RARE_COUNT`] messages, spread over the archive.
pub const RARE: &str = "rare@localhost";
pub const RARE_COUNT: u64 = 5;
/// Messages are spread evenly over this span, ending `AGE_END` ago, so that all of
/// them are older than the expiry phase's cut-off (1 day).
pub const SPAN_S: i64 = 30 * 86400;
pub const AGE_END_S: i64 = 2 * 86400;
pub const BODY_LEN: usize = 100;

/// One archive to pre-populate: its owner and size, and the clock it is laid out from.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub owner: String,
    pub n: u64,
    /// Unix time (seconds) of the oldest message.
    pub base_s: i64,
}

/// One archived message, backend-neutral.
pub struct Msg {
    pub key: String,
    pub when_us: i64,
    /// Bare JID of the other party.
    pub with: String,
    /// Resource of the other party, if the stanza names one.
    pub with_resource: Option<&'static str>,
    pub from: String,
    pub to: String,
    pub stanza_id: String,
    pub body: String,
}

impl Msg {
    pub fn when_s(&self) -> i64 {
        self.when_us.div_euclid(1_000_000)
    }

    /// The stanza as Prosody serialises it (`tostring(stanza)`).
    pub fn xml(&self) -> String {
        format!(
            "<message id='{}' xml:lang='en' type='chat' to='{}' from='{}'><body>{}</body></message>",
            self.stanza_id, self.to, self.from, self.body
        )
    }
}

pub fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Dataset {
    pub fn new(owner: &str, n: u64) -> Dataset {
        Dataset {
            owner: owner.to_string(),
            n,
            base_s: now_s() - AGE_END_S - SPAN_S,
        }
    }

    pub fn owner_jid(&self) -> String {
        format!("{}@{DOMAIN}", self.owner)
    }

    /// The archive id of message `i` (unique per owner, not time-ordered on purpose).
    pub fn key(i: u64) -> String {
        format!("b{:015}", i)
    }

    pub fn when_us(&self, i: u64) -> i64 {
        self.base_s * 1_000_000
            + (i as i128 * (SPAN_S as i128 * 1_000_000) / self.n.max(1) as i128) as i64
    }

    fn is_rare(&self, i: u64) -> bool {
        // Positions n*(k+1)/(RARE_COUNT+1) for k in 0..RARE_COUNT.
        let step = self.n / (RARE_COUNT + 1);
        step > 0 && i.is_multiple_of(step) && i / step >= 1 && i / step <= RARE_COUNT
    }

    pub fn contact(&self, i: u64) -> String {
        if self.is_rare(i) {
            RARE.to_string()
        } else if i.is_multiple_of(3) {
            FREQUENT.to_string()
        } else {
            format!("c{}@{DOMAIN}", i % 200)
        }
    }

    /// Number of messages with [`FREQUENT`] (for checking query results).
    pub fn msg(&self, i: u64) -> Msg {
        let with = self.contact(i);
        let me = format!("{}/r", self.owner_jid());
        let outgoing = i.is_multiple_of(2);
        let (from, to, res) = if outgoing {
            (me, with.clone(), None)
        } else {
            (format!("{with}/x"), me, Some("x"))
        };
        let mut body = format!("archived message {i} ");
        while body.len() < BODY_LEN {
            body.push('x');
        }
        Msg {
            key: Self::key(i),
            when_us: self.when_us(i),
            with,
            with_resource: res,
            from,
            to,
            stanza_id: format!("p{i}"),
            body,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (what `util.datetime.datetime` returns).
pub fn iso8601(t: i64) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `YYYY-MM-DD` for a Unix time (`util.datetime.date`).
pub fn date(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86400));
    format!("{y:04}-{m:02}-{d:02}")
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// One `item({...});` record of a `.list` file, as `util.datamanager.list_append` writes
/// a preserialised stanza plus `when`, `key` and `with`.
pub fn internal_record(m: &Msg) -> String {
    let when = m.when_s();
    format!(
        "item({{\n\t{{\n\t\t{body};\n\t\t[\"name\"] = \"body\";\n\t\t[\"attr\"] = {{}};\n\t}};\n\
         \t[\"name\"] = \"message\";\n\t[\"when\"] = {when};\n\t[\"key\"] = {key};\n\
         \t[\"attr\"] = {{\n\t\t[\"id\"] = {id};\n\t\t[\"xml:lang\"] = \"en\";\n\t\t[\"type\"] = \"chat\";\n\
         \t\t[\"to\"] = {to};\n\t\t[\"from\"] = {from};\n\t\t[\"stamp\"] = {stamp};\n\t}};\n\
         \t[\"with\"] = {with};\n}});\n",
        body = lua_str(&m.body),
        key = lua_str(&m.key),
        id = lua_str(&m.stanza_id),
        to = lua_str(&m.to),
        from = lua_str(&m.from),
        stamp = lua_str(&iso8601(when)),
        with = lua_str(&m.with),
    )
}

/// Stock + internal: `<data_path>/<host>/archive/<user>.list`.
pub fn populate_internal(data_path: &Path, ds: &Dataset) -> Result<f64> {
    let t = Instant::now();
    let dir = data_path.join(datamanager_encode(DOMAIN)).join("archive");
    fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.list", datamanager_encode(&ds.owner)));
    let mut w = BufWriter::with_capacity(
        1 << 20,
        fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    for i in 0..ds.n {
        w.write_all(internal_record(&ds.msg(i)).as_bytes())?;
    }
    w.flush()?;
    Ok(t.elapsed().as_secs_f64())
}

/// `util.datamanager`'s path encoding: every non-alphanumeric byte becomes `%xx`.
pub fn datamanager_encode(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02x}"));
        }
    }
    o
}

/// Stock + sql: rows in `prosodyarchive`, which Prosody must have created (the harness
/// starts it once and runs a query first).
pub fn populate_sql(db: &Path, ds: &Dataset) -> Result<f64> {
    let t = Instant::now();
    let mut conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let batch = 10_000u64;
    let mut i = 0;
    while i < ds.n {
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO \"prosodyarchive\" (\"host\", \"user\", \"store\", \"when\", \"with\", \"key\", \"type\", \"value\") \
                 VALUES (?1, ?2, 'archive', ?3, ?4, ?5, 'xml', ?6)",
            )?;
            for j in i..(i + batch).min(ds.n) {
                let m = ds.msg(j);
                st.execute(params![
                    DOMAIN,
                    ds.owner,
                    m.when_s(),
                    m.with,
                    m.key,
                    m.xml()
                ])?;
            }
        }
        tx.commit()?;
        i += batch;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// How the fast path stores stanzas in the native schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeRows {
    /// Text, as `archive_compression = false` stores them (and as every row was
    /// stored before compression).
    Text,
    /// Compressed with the database's dictionary (trained here on the first data
    /// set's messages when the file has none), as a server with compression on holds
    /// its rows once the background rewrite is done: the module finds nothing to
    /// rewrite, so the phases measure that steady state rather than the rewrite.
    Compressed,
}

/// Messages a fast-path dictionary is trained on, as the module trains its first.
const DICTIONARY_SAMPLES: u64 = codec::TRAINING_SAMPLES as u64;

/// The codec the fast path writes with: none for [`NativeRows::Text`]; for
/// [`NativeRows::Compressed`] one holding the file's dictionaries, the first trained
/// on `samples` and stored as version 1 if there is none yet.
fn fast_path_codec(
    conn: &Connection,
    rows: NativeRows,
    samples: impl FnOnce() -> Vec<String>,
) -> Result<Option<Codec>> {
    if rows == NativeRows::Text {
        return Ok(None);
    }
    let load = |conn: &Connection| -> Result<Vec<(u32, Vec<u8>)>> {
        let mut st =
            conn.prepare("SELECT version, dictionary FROM archive_dictionaries ORDER BY version")?;
        let found = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(found.collect::<rusqlite::Result<_>>()?)
    };
    let mut dictionaries = load(conn)?;
    if dictionaries.is_empty() {
        let samples = samples();
        let dictionary = codec::train(&samples).context("training the fast path's dictionary")?;
        let now_us = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as i64;
        conn.execute(
            "INSERT INTO archive_dictionaries (version, trained_us, samples, dictionary) \
             VALUES (1, ?1, ?2, ?3)",
            params![now_us, samples.len() as i64, dictionary],
        )?;
        dictionaries = load(conn)?;
    }
    let mut c = Codec::new();
    for (version, bytes) in dictionaries {
        c.add_dictionary(version, bytes);
    }
    c.set_compress(true);
    Ok(Some(c))
}

/// After a compressed fast path: the module's rewrite mark at the end of the table,
/// as its background pass leaves it once it has walked rows that need nothing, so
/// the module does not walk them again at its next start (an older module without
/// the mark table is left as it is).
fn mark_rewrite_done(conn: &Connection) -> Result<()> {
    let has_mark: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'archive_rewrite_mark'",
        [],
        |r| r.get::<_, i64>(0),
    )? > 0;
    if has_mark {
        conn.execute(
            "INSERT OR REPLACE INTO archive_rewrite_mark (singleton, dictionary, upto) \
             SELECT 1, (SELECT max(version) FROM archive_dictionaries), \
             (SELECT coalesce(max(seq), 0) FROM archive)",
            [],
        )?;
    }
    Ok(())
}

/// Native: rows in `archive` of `mam_archive.sqlite` (created by the module on its
/// first start), written through the module's own SQLite store.
pub fn populate_native(
    db: &Path,
    ds: &Dataset,
    synchronous_off: bool,
    rows: NativeRows,
) -> Result<f64> {
    let owner = Owner::new(DOMAIN, &ds.owner);
    populate_native_owner(
        db,
        &owner,
        ds.n,
        synchronous_off,
        rows,
        || {
            (0..DICTIONARY_SAMPLES.min(ds.n))
                .map(|i| ds.msg(i).xml())
                .collect()
        },
        |j| {
            let m = ds.msg(j);
            ArchivedMessage {
                id: m.key.clone(),
                when: m.when_us,
                with_bare: m.with.clone(),
                with_resource: m.with_resource.map(str::to_owned),
                xml: m.xml(),
            }
        },
    )
}

/// The native fast path for one owner: the dictionary first (for
/// [`NativeRows::Compressed`]), then `n` messages (`message(j)` for `j` in `0..n`)
/// through the module's own store ([`SqliteStore::append_many`], 10,000 per
/// transaction), so the rows, the owner's and contacts' numbers and the counter are
/// exactly what the module writes. The store opens the file as the module does;
/// `synchronous_off` then trades durability for speed (the server is stopped).
fn populate_native_owner(
    db: &Path,
    owner: &Owner,
    n: u64,
    synchronous_off: bool,
    rows: NativeRows,
    samples: impl FnOnce() -> Vec<String>,
    message: impl Fn(u64) -> ArchivedMessage,
) -> Result<f64> {
    let t = Instant::now();
    let compressed = {
        let conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
        fast_path_codec(&conn, rows, samples)?.is_some()
    };
    let mut store = SqliteStore::open(db).with_context(|| format!("opening {}", db.display()))?;
    if synchronous_off {
        store.set_synchronous_off()?;
    }
    store.set_compression(compressed);
    let batch = 10_000u64;
    let mut i = 0;
    while i < n {
        let items: Vec<(Owner, ArchivedMessage)> = (i..(i + batch).min(n))
            .map(|j| (owner.clone(), message(j)))
            .collect();
        store.append_many(&items, None)?;
        i += batch;
    }
    drop(store);
    if compressed {
        let conn = Connection::open(db)?;
        mark_rewrite_done(&conn)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The columns the PostgreSQL fast path writes into `mam_archive` (`seq` is an
/// identity column PostgreSQL fills in COPY order, which is archive order here).
pub const PG_COLUMNS: [&str; 7] = [
    "host",
    "username",
    "id",
    "when_us",
    "with_bare",
    "with_resource",
    "stanza",
];

/// One value in COPY's text format: `\N` for NULL, and backslash, tab, newline and
/// carriage return escaped.
fn copy_field(out: &mut String, v: Option<&str>) {
    let Some(v) = v else {
        out.push_str("\\N");
        return;
    };
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// Native on PostgreSQL: rows in `mam_archive` of the configuration's database
/// (whose schema the module created on its first start) through one `COPY` per
/// archive, the owner's exact count added to `mam_archive_counts` in the same
/// transaction (the module keeps that counter itself, not by trigger), then `ANALYZE`
/// so the planner knows the tables' new sizes. The columns are checked against the
/// live table first, so a schema change fails loudly instead of writing garbage.
pub fn populate_native_pg(client: &mut postgres::Client, ds: &Dataset) -> Result<f64> {
    let t = Instant::now();
    let cols: Vec<String> = client
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = 'mam_archive'",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for c in PG_COLUMNS {
        if !cols.iter().any(|x| x == c) {
            anyhow::bail!("native PostgreSQL schema changed: mam_archive has no column {c} (has {cols:?}); update PG_COLUMNS");
        }
    }
    let triggers: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'mam_archive'::regclass AND NOT tgisinternal",
            &[],
        )?
        .get(0);
    if triggers > 0 {
        anyhow::bail!("mam_archive now has triggers; check whether they keep mam_archive_counts and update populate_native_pg");
    }
    let mut tx = client.transaction()?;
    {
        let mut w = BufWriter::with_capacity(
            1 << 20,
            tx.copy_in(&format!(
                "COPY mam_archive ({}) FROM STDIN",
                PG_COLUMNS.join(", ")
            ))?,
        );
        let mut line = String::with_capacity(512);
        for i in 0..ds.n {
            let m = ds.msg(i);
            line.clear();
            let when = m.when_us.to_string();
            let xml = m.xml();
            let fields = [
                Some(DOMAIN),
                Some(ds.owner.as_str()),
                Some(m.key.as_str()),
                Some(when.as_str()),
                Some(m.with.as_str()),
                m.with_resource,
                Some(xml.as_str()),
            ];
            for (k, f) in fields.into_iter().enumerate() {
                if k > 0 {
                    line.push('\t');
                }
                copy_field(&mut line, f);
            }
            line.push('\n');
            w.write_all(line.as_bytes())?;
        }
        w.into_inner()
            .map_err(|e| anyhow::anyhow!("COPY into mam_archive: {}", e.error()))?
            .finish()
            .context("COPY into mam_archive")?;
    }
    tx.execute(
        "INSERT INTO mam_archive_counts (host, username, messages) VALUES ($1, $2, $3) \
         ON CONFLICT (host, username) DO UPDATE \
         SET messages = mam_archive_counts.messages + EXCLUDED.messages",
        &[&DOMAIN, &ds.owner, &(ds.n as i64)],
    )?;
    tx.commit()?;
    client.batch_execute("ANALYZE mam_archive; ANALYZE mam_archive_counts")?;
    Ok(t.elapsed().as_secs_f64())
}

/// Makes stock mod_mam's daily expiry task due now: `mod_cron` keeps each task's last
/// run in the internal `cron` map (`<data>/<host>/cron.dat`); a last run at time 0
/// makes the first timer tick (1 s after start) run it. For stores without
/// wildcard delete (internal), expiry only visits users listed under an old date in
/// the `archive_cleanup` map, which the fast path bypassed, so list them there too.
pub fn arm_stock_expiry(data_path: &Path, owners: &[String]) -> Result<()> {
    let host_dir = data_path.join(datamanager_encode(DOMAIN));
    fs::create_dir_all(&host_dir)?;
    fs::write(
        host_dir.join("cron.dat"),
        "return {\n\t[\"mam/remove_expired_messages\"] = 0;\n};\n",
    )?;
    let dir = host_dir.join("archive_cleanup");
    fs::create_dir_all(&dir)?;
    let mut s = String::from("return {\n");
    for o in owners {
        s.push_str(&format!("\t[{}] = true;\n", lua_str(o)));
    }
    s.push_str("};\n");
    let day = date(now_s() - AGE_END_S - 86400);
    fs::write(dir.join(format!("{}.dat", datamanager_encode(&day))), s)?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// Room archives (issue 17): one archive per room on the MUC component, owned by the
// room's node, every item a groupchat message as the room broadcast it.

/// Distinct senders (nicks) in a pre-populated room.
pub const ROOM_TALKERS: u64 = 50;
/// What stock mod_muc_mam stores in an item's `with` for a groupchat message.
pub const GROUPCHAT_WITH: &str = "message<groupchat";

/// One room archive to pre-populate: the room's node and size. Ids and timestamps are
/// laid out as a personal [`Dataset`]'s (`b%015d`, evenly over 30 days ending 2 days
/// ago), so the expiry phase's 1-day cut-off covers every message.
#[derive(Debug, Clone)]
pub struct RoomDataset {
    /// `owner` is the room's node (`room1000` of `room1000@rooms.localhost`).
    pub ds: Dataset,
}

impl RoomDataset {
    pub fn new(room: &str, n: u64) -> RoomDataset {
        RoomDataset {
            ds: Dataset::new(room, n),
        }
    }

    pub fn room(&self) -> &str {
        &self.ds.owner
    }

    pub fn n(&self) -> u64 {
        self.ds.n
    }

    /// The room's bare JID, `room@rooms.localhost`.
    pub fn jid(&self) -> String {
        format!("{}@{MUC_DOMAIN}", self.ds.owner)
    }

    pub fn nick(i: u64) -> String {
        format!("nick{}", i % ROOM_TALKERS)
    }

    /// An `<occupant-id/>` value per nick, 44 characters like the base64 of the
    /// 32-byte hash Prosody puts there.
    fn occupant_id(i: u64) -> String {
        format!("occ{:040}=", i % ROOM_TALKERS)
    }

    fn body(i: u64) -> String {
        let mut body = format!("room message {i} ");
        while body.len() < BODY_LEN {
            body.push('x');
        }
        body
    }

    /// The message as stock mod_muc_mam stores it (`tostring` of the live stanza, as
    /// Prosody 0.12.3 wrote it to `prosodyarchive`): `to` is still the room, and the
    /// room's `<occupant-id/>` is in it.
    pub fn stock_xml(&self, i: u64) -> String {
        let jid = self.jid();
        format!(
            "<message type='groupchat' xml:lang='en' from='{jid}/{nick}' to='{jid}' id='p{i}'><body>{body}</body>\
             <occupant-id xmlns='urn:xmpp:occupant-id:0' id='{occ}'/></message>",
            nick = Self::nick(i),
            body = Self::body(i),
            occ = Self::occupant_id(i),
        )
    }

    /// The message as ours stores a room's: no `to`, the namespace explicit.
    pub fn native_xml(&self, i: u64) -> String {
        let jid = self.jid();
        format!(
            "<message xmlns='jabber:client' type='groupchat' xml:lang='en' from='{jid}/{nick}' id='p{i}'><body>{body}</body>\
             <occupant-id xmlns='urn:xmpp:occupant-id:0' id='{occ}'/></message>",
            nick = Self::nick(i),
            body = Self::body(i),
            occ = Self::occupant_id(i),
        )
    }

    /// One `item({...});` record of the room's `.list` file, as
    /// `util.datamanager.list_append` writes what stock mod_muc_mam appends (checked
    /// against a file Prosody 0.12.3 wrote; key order is Lua's and does not matter).
    pub fn internal_record(&self, i: u64) -> String {
        let when = self.ds.when_us(i).div_euclid(1_000_000);
        let jid = self.jid();
        format!(
            "item({{\n\t{{\n\t\t{body};\n\t\t[\"name\"] = \"body\";\n\t\t[\"attr\"] = {{}};\n\t}};\n\
             \t{{\n\t\t[\"attr\"] = {{\n\t\t\t[\"xmlns\"] = \"urn:xmpp:occupant-id:0\";\n\t\t\t[\"id\"] = {occ};\n\t\t}};\n\
             \t\t[\"name\"] = \"occupant-id\";\n\t}};\n\
             \t[\"name\"] = \"message\";\n\t[\"attr\"] = {{\n\t\t[\"from\"] = {from};\n\t\t[\"id\"] = {id};\n\
             \t\t[\"stamp\"] = {stamp};\n\t\t[\"type\"] = \"groupchat\";\n\t\t[\"xml:lang\"] = \"en\";\n\
             \t\t[\"to\"] = {to};\n\t}};\n\t[\"with\"] = {with};\n\t[\"key\"] = {key};\n\t[\"when\"] = {when};\n}});\n",
            body = lua_str(&Self::body(i)),
            occ = lua_str(&Self::occupant_id(i)),
            from = lua_str(&format!("{jid}/{}", Self::nick(i))),
            id = lua_str(&format!("p{i}")),
            stamp = lua_str(&iso8601(when)),
            to = lua_str(&jid),
            with = lua_str(GROUPCHAT_WITH),
            key = lua_str(&Dataset::key(i)),
        )
    }
}

/// Stock + internal: `<data_path>/rooms%2elocalhost/muc_log/<room>.list`.
pub fn populate_room_internal(data_path: &Path, rds: &RoomDataset) -> Result<f64> {
    let t = Instant::now();
    let dir = data_path
        .join(datamanager_encode(MUC_DOMAIN))
        .join("muc_log");
    fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.list", datamanager_encode(rds.room())));
    let mut w = BufWriter::with_capacity(
        1 << 20,
        fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    for i in 0..rds.n() {
        w.write_all(rds.internal_record(i).as_bytes())?;
    }
    w.flush()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Stock + sql: rows in `prosodyarchive` with `store = 'muc_log'`, `host` the
/// component, `user` the room's node, `with = 'message<groupchat'`.
pub fn populate_room_sql(db: &Path, rds: &RoomDataset) -> Result<f64> {
    let t = Instant::now();
    let mut conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let batch = 10_000u64;
    let mut i = 0;
    while i < rds.n() {
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO \"prosodyarchive\" (\"host\", \"user\", \"store\", \"when\", \"with\", \"key\", \"type\", \"value\") \
                 VALUES (?1, ?2, 'muc_log', ?3, ?4, ?5, 'xml', ?6)",
            )?;
            for j in i..(i + batch).min(rds.n()) {
                st.execute(params![
                    MUC_DOMAIN,
                    rds.room(),
                    rds.ds.when_us(j).div_euclid(1_000_000),
                    GROUPCHAT_WITH,
                    Dataset::key(j),
                    rds.stock_xml(j)
                ])?;
            }
        }
        tx.commit()?;
        i += batch;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Native: rows in `archive` of `mam_muc_log.sqlite` (the rooms' file, same schema as
/// the accounts' one): `host` the component, `user` the room's node, `with_bare` the
/// room's JID, `with_resource` the sender's nick, the stanza without `to`.
pub fn populate_room_native(db: &Path, rds: &RoomDataset, rows: NativeRows) -> Result<f64> {
    let jid = rds.jid();
    populate_native_owner(
        db,
        &Owner::new(MUC_DOMAIN, rds.room()),
        rds.n(),
        true,
        rows,
        || {
            (0..DICTIONARY_SAMPLES.min(rds.n()))
                .map(|i| rds.native_xml(i))
                .collect()
        },
        |j| ArchivedMessage {
            id: Dataset::key(j),
            when: rds.ds.when_us(j),
            with_bare: jid.clone(),
            with_resource: Some(RoomDataset::nick(j)),
            xml: rds.native_xml(j),
        },
    )
}

/// Makes stock mod_muc_mam's daily expiry task due at once on the MUC component:
/// its last run as 0 in the component's `cron` map (`<data>/rooms%2elocalhost/cron.dat`,
/// task `muc_mam/remove_expired_messages`), so `mod_cron`'s first tick (1 s after
/// start) runs it on 0.12 as on 13. Without wildcard delete (the file store) the task
/// only visits rooms listed under a date before the cut-off in the `muc_log_cleanup`
/// map, which the fast path bypassed, so list the rooms there too.
pub fn arm_stock_room_expiry(data_path: &Path, rooms: &[String]) -> Result<()> {
    let host_dir = data_path.join(datamanager_encode(MUC_DOMAIN));
    fs::create_dir_all(&host_dir)?;
    fs::write(
        host_dir.join("cron.dat"),
        "return {\n\t[\"muc_mam/remove_expired_messages\"] = 0;\n};\n",
    )?;
    let dir = host_dir.join("muc_log_cleanup");
    fs::create_dir_all(&dir)?;
    let mut s = String::from("return {\n");
    for r in rooms {
        s.push_str(&format!("\t[{}] = true;\n", lua_str(r)));
    }
    s.push_str("};\n");
    let day = date(now_s() - AGE_END_S - 86400);
    fs::write(dir.join(format!("{}.dat", datamanager_encode(&day))), s)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_matches_prosody_for_a_known_instant() {
        // From a record Prosody 0.12.3 wrote: when = 1795321636, stamp 2026-11-22T04:27:16Z.
        assert_eq!(iso8601(1_795_321_636), "2026-11-22T04:27:16Z");
        assert_eq!(date(0), "1970-01-01");
    }

    #[test]
    fn a_dataset_has_exactly_five_rare_messages() {
        for n in [1000u64, 10_000, 12_345] {
            let ds = Dataset::new("a", n);
            let rare = (0..n).filter(|&i| ds.contact(i) == RARE).count() as u64;
            assert_eq!(rare, RARE_COUNT, "n = {n}");
        }
    }

    #[test]
    fn copy_text_format_escapes_its_delimiters() {
        let mut s = String::new();
        copy_field(&mut s, Some("a\tb\\c\nd\re"));
        s.push('|');
        copy_field(&mut s, None);
        assert_eq!(s, "a\\tb\\\\c\\nd\\re|\\N");
    }

    #[test]
    fn a_room_message_is_stored_with_and_without_to() {
        let r = RoomDataset::new("room1000", 1000);
        let stock = r.stock_xml(7);
        assert!(stock.starts_with(
            "<message type='groupchat' xml:lang='en' from='room1000@rooms.localhost/nick7' to='room1000@rooms.localhost' id='p7'><body>room message 7 x"
        ));
        let native = r.native_xml(7);
        assert!(native.starts_with(
            "<message xmlns='jabber:client' type='groupchat' xml:lang='en' from='room1000@rooms.localhost/nick7' id='p7'>"
        ));
        assert!(!native.contains(" to="));
        let rec = r.internal_record(7);
        assert!(rec.starts_with("item({\n") && rec.ends_with("});\n"));
        assert!(rec.contains("\t[\"with\"] = \"message<groupchat\";\n"));
    }

    #[test]
    fn datamanager_encoding_escapes_dots() {
        assert_eq!(datamanager_encode("a.b-c"), "a%2eb%2dc");
    }
}
