//! Prosody's own SQLite store (`mod_storage_sql`'s `prosody.sqlite`), read as it is
//! on disk, for importing a stock archive that Prosody's Lua drivers cannot open: a
//! store encrypted with SQLCipher (`sql = { driver = "SQLite3", password = … }`,
//! Prosody 13), since Debian's LuaDBI is not built with SQLCipher.
//!
//! Only reads, on a read-only connection: stock's tables are never changed. Rows are
//! handed up as stored (`key`, `when`, `with`, `type`, `value`); what they mean
//! (stanzas, preferences) is the import's business ([`crate::admin`]).
//!
//! Stock's schema (Prosody 0.12 and 13): `prosodyarchive (sort_id, host, user, store,
//! key, when, with, type, value)` with archive order `sort_id`, and the key-value
//! table `prosody (host, user, store, key, type, value)`.

use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{key, BUSY_TIMEOUT};
use crate::config::DatabaseKey;
use crate::error::{KeyProblem, MamError, Result};

/// One stored archive item: `prosodyarchive`'s columns as stock wrote them.
#[derive(Debug, Clone, PartialEq)]
pub struct StockItem {
    /// The item id (`key`), the stanza-id stock gave out.
    pub id: String,
    /// `when`: seconds since the epoch (stock stores whole seconds).
    pub when_secs: f64,
    /// `with`: the other party (rooms: the occupant's nick or a marker).
    pub with: String,
    /// `type`: `xml` for a stanza.
    pub kind: String,
    /// `value`: the serialised stanza for `xml`.
    pub value: String,
}

/// One row of the key-value table for a user and store: `(key, type, value)`.
pub type StockKeyValue = (String, String, String);

/// A stock `prosody.sqlite` opened for reading.
pub struct StockSqlite {
    conn: Connection,
}

const ARCHIVE_USERS: &str = "SELECT DISTINCT \"user\" FROM \"prosodyarchive\" \
     WHERE \"host\" = ?1 AND \"store\" = ?2 ORDER BY \"user\"";
const KEYVAL_USERS: &str = "SELECT DISTINCT \"user\" FROM \"prosody\" \
     WHERE \"host\" = ?1 AND \"store\" = ?2 ORDER BY \"user\"";
const ARCHIVE_COUNT: &str = "SELECT count(*) FROM \"prosodyarchive\" \
     WHERE \"host\" = ?1 AND \"user\" = ?2 AND \"store\" = ?3";
const ARCHIVE_ITEMS: &str = "SELECT \"key\", \"when\", \"with\", \"type\", \"value\" \
     FROM \"prosodyarchive\" WHERE \"host\" = ?1 AND \"user\" = ?2 AND \"store\" = ?3 \
     ORDER BY \"sort_id\"";
const KEYVAL_ROWS: &str = "SELECT \"key\", \"type\", \"value\" FROM \"prosody\" \
     WHERE \"host\" = ?1 AND \"user\" = ?2 AND \"store\" = ?3 ORDER BY \"key\"";

impl StockSqlite {
    /// Opens stock's file at `path` read-only with `key` (none for a plain file).
    /// Refuses a file without stock's archive table rather than reading nothing.
    pub fn open(path: &Path, key: &DatabaseKey) -> Result<StockSqlite> {
        let refuse = |cause: String| MamError::Open {
            path: path.display().to_string(),
            cause,
        };
        if !path.is_file() {
            return Err(refuse("no such file".into()));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| refuse(e.to_string()))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(MamError::storage("set busy_timeout"))?;
        let conn = match key::unlock(&conn, path, key) {
            Ok(()) => conn,
            // A password with a plain file: what Prosody writes where its SQLite
            // driver has no SQLCipher (Debian's LuaDBI ignores `PRAGMA key`), and what
            // it reads back there. Read it the same way.
            Err(MamError::Key(KeyProblem::NotEncrypted { .. })) => {
                drop(conn);
                Connection::open_with_flags(path, flags).map_err(|e| refuse(e.to_string()))?
            }
            Err(e) => return Err(refuse(e.to_string())),
        };
        let has_archive: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' \
                 AND name = 'prosodyarchive')",
                [],
                |row| row.get(0),
            )
            .map_err(|e| refuse(e.to_string()))?;
        if !has_archive {
            return Err(refuse(
                "not Prosody's SQL store (no prosodyarchive table)".into(),
            ));
        }
        Ok(StockSqlite { conn })
    }

    /// The users (or rooms) with items in `store` on `host`.
    pub fn archive_users(&self, host: &str, store: &str) -> Result<Vec<String>> {
        self.strings(ARCHIVE_USERS, host, store, "read the stock archive's users")
    }

    /// The users with rows in the key-value `store` on `host` (e.g. `archive_prefs`).
    /// None when Prosody never created its key-value table.
    pub fn keyval_users(&self, host: &str, store: &str) -> Result<Vec<String>> {
        if !self.has_keyval_table()? {
            return Ok(Vec::new());
        }
        self.strings(KEYVAL_USERS, host, store, "read the stock store's users")
    }

    /// How many items `user` has in `store`.
    pub fn count(&self, host: &str, user: &str, store: &str) -> Result<u64> {
        let n: i64 = self
            .conn
            .prepare_cached(ARCHIVE_COUNT)
            .and_then(|mut stmt| stmt.query_row(params![host, user, store], |row| row.get(0)))
            .map_err(MamError::storage("count the stock archive"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// `user`'s items in archive order, each handed to `each` until it returns false.
    pub fn items(
        &self,
        host: &str,
        user: &str,
        store: &str,
        each: &mut dyn FnMut(StockItem) -> bool,
    ) -> Result<()> {
        let read = MamError::storage("read the stock archive");
        let mut stmt = self.conn.prepare_cached(ARCHIVE_ITEMS).map_err(read)?;
        let mut rows = stmt
            .query(params![host, user, store])
            .map_err(MamError::storage("read the stock archive"))?;
        while let Some(row) = rows
            .next()
            .map_err(MamError::storage("read the stock archive"))?
        {
            let item = (|| -> rusqlite::Result<StockItem> {
                Ok(StockItem {
                    id: row.get(0)?,
                    when_secs: seconds(row.get(1)?),
                    with: row.get(2)?,
                    kind: row.get(3)?,
                    value: row.get(4)?,
                })
            })()
            .map_err(MamError::storage("read a stock archive item"))?;
            if !each(item) {
                break;
            }
        }
        Ok(())
    }

    /// `user`'s rows in the key-value `store`.
    pub fn keyval(&self, host: &str, user: &str, store: &str) -> Result<Vec<StockKeyValue>> {
        if !self.has_keyval_table()? {
            return Ok(Vec::new());
        }
        self.conn
            .prepare_cached(KEYVAL_ROWS)
            .and_then(|mut stmt| {
                stmt.query_map(params![host, user, store], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?
                .collect()
            })
            .map_err(MamError::storage("read the stock key-value store"))
    }

    fn has_keyval_table(&self) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'prosody'",
                [],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(MamError::storage("read the stock store's schema"))
    }

    fn strings(
        &self,
        sql: &'static str,
        host: &str,
        store: &str,
        context: &'static str,
    ) -> Result<Vec<String>> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut stmt| {
                stmt.query_map(params![host, store], |row| row.get(0))?
                    .collect()
            })
            .map_err(MamError::storage(context))
    }
}

/// `when` as stored: an integer (stock's whole seconds) or, should a writer have
/// stored a fraction, a real; anything else reads as NaN, which the import refuses as
/// an invalid timestamp naming the item.
fn seconds(v: Value) -> f64 {
    match v {
        Value::Integer(n) => n as f64,
        Value::Real(f) => f,
        Value::Text(t) => t.trim().parse().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Stock's two tables as mod_storage_sql creates them on SQLite.
    pub(crate) const STOCK_SCHEMA: &str = "
        CREATE TABLE prosody (host TEXT NOT NULL, user TEXT NOT NULL, store TEXT NOT NULL,
            key TEXT NOT NULL, type TEXT NOT NULL, value MEDIUMTEXT NOT NULL);
        CREATE UNIQUE INDEX prosody_unique_index ON prosody (host, user, store, key);
        CREATE TABLE prosodyarchive (sort_id INTEGER PRIMARY KEY AUTOINCREMENT,
            host TEXT NOT NULL, user TEXT NOT NULL, store TEXT NOT NULL, key TEXT NOT NULL,
            \"when\" INTEGER NOT NULL, \"with\" TEXT NOT NULL, type TEXT NOT NULL,
            value MEDIUMTEXT NOT NULL);
        CREATE UNIQUE INDEX prosodyarchive_index ON prosodyarchive (host, user, store, key);
    ";

    /// A stock `prosody.sqlite` encrypted as Prosody 13 does (`PRAGMA key` with
    /// `sql.password`), holding two messages of juliet and her preferences.
    pub(crate) fn write_stock_file(path: &Path, password: Option<&str>) {
        let conn = Connection::open(path).expect("create");
        if let Some(p) = password {
            conn.pragma_update(None, "key", p).expect("key");
        }
        conn.execute_batch(STOCK_SCHEMA).expect("schema");
        let add = "INSERT INTO prosodyarchive (host, user, store, key, \"when\", \"with\", type, value) \
                   VALUES ('capulet.lit', 'juliet', 'archive', ?1, ?2, 'romeo@montague.lit', 'xml', ?3)";
        for (id, when, body) in [
            ("s1", 1_600_000_000, "hello"),
            ("s2", 1_600_000_060, "again"),
        ] {
            // Concatenated, not formatted: the store formats no text (tests/sql_injection.rs).
            let xml = String::from(
                "<message to='juliet@capulet.lit' from='romeo@montague.lit/phone' type='chat' \
                 xmlns='jabber:client'><body>",
            ) + body
                + "</body></message>";
            conn.execute(add, params![id, when, xml]).expect("item");
        }
        let pref = "INSERT INTO prosody (host, user, store, key, type, value) \
                    VALUES ('capulet.lit', 'juliet', 'archive_prefs', ?1, ?2, ?3)";
        conn.execute(pref, params!["", "json", "{\"__hash\":[false,\"roster\"]}"])
            .expect("default");
        conn.execute(pref, params!["tybalt@capulet.lit", "boolean", "false"])
            .expect("never");
    }

    #[test]
    fn an_encrypted_stock_store_reads_with_its_password_in_archive_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prosody.sqlite");
        write_stock_file(&path, Some("stock secret"));
        let key = DatabaseKey::given("sql.password", "stock secret".into());
        let stock = StockSqlite::open(&path, &key).expect("open");
        assert_eq!(
            stock
                .archive_users("capulet.lit", "archive")
                .expect("users"),
            ["juliet"]
        );
        assert_eq!(
            stock.count("capulet.lit", "juliet", "archive").expect("n"),
            2
        );
        let mut items = Vec::new();
        stock
            .items("capulet.lit", "juliet", "archive", &mut |i| {
                items.push(i);
                true
            })
            .expect("items");
        assert_eq!(
            items
                .iter()
                .map(|i| (i.id.as_str(), i.when_secs))
                .collect::<Vec<_>>(),
            [("s1", 1_600_000_000.0), ("s2", 1_600_000_060.0)]
        );
        assert_eq!(
            stock
                .keyval("capulet.lit", "juliet", "archive_prefs")
                .expect("prefs")
                .len(),
            2
        );
    }

    #[test]
    fn a_stock_store_without_its_password_is_refused_naming_the_option() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prosody.sqlite");
        write_stock_file(&path, Some("stock secret"));
        let err = StockSqlite::open(&path, &DatabaseKey::none("sql.password"))
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("missing key (set sql.password)"), "{err}");
        let err = StockSqlite::open(&path, &DatabaseKey::given("sql.password", "no".into()))
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("wrong key (sql.password)"), "{err}");
    }

    #[test]
    fn a_password_with_a_plain_stock_file_reads_it_as_prosody_without_sqlcipher_wrote_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prosody.sqlite");
        write_stock_file(&path, None);
        let key = DatabaseKey::given("sql.password", "ignored by LuaDBI".into());
        let stock = StockSqlite::open(&path, &key).expect("open");
        assert_eq!(
            stock.count("capulet.lit", "juliet", "archive").expect("n"),
            2
        );
    }

    #[test]
    fn a_file_without_stock_s_archive_table_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("other.sqlite");
        Connection::open(&path)
            .expect("create")
            .execute_batch("CREATE TABLE t (x)")
            .expect("table");
        let err = StockSqlite::open(&path, &DatabaseKey::none("sql.password"))
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.ends_with("not Prosody's SQL store (no prosodyarchive table)"),
            "{err}"
        );
    }
}
