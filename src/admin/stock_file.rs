//! A stock archive in Prosody's own SQLite file, read natively: the source of
//! `prosodyctl mod_mam import` when the host's `sql` table names an encrypted SQLite
//! store (`password`, Prosody 13's SQLCipher convention), which Prosody's Lua drivers
//! cannot open on Debian (its LuaDBI has no SQLCipher). The rows come from
//! [`crate::store::sqlite::stock`]; this turns them into what [`super::import`] reads,
//! exactly as Prosody's `mod_storage_sql` would deserialise them.

use std::path::{Path, PathBuf};

use super::import::{SourceMessage, StockArchive, StockDefault, StockPrefs};
use crate::config::{DatabaseKey, Owners};
use crate::error::Result;
use crate::stanza::parse_xml;
use crate::store::sqlite::stock::{StockKeyValue, StockSqlite};

/// Stock's archive `store` (and, for accounts, its `<store>_prefs`) on `host`, in the
/// SQLite file at `path`.
pub struct StockFile {
    file: StockSqlite,
    path: PathBuf,
    host: String,
    store: String,
    /// Accounts have preferences; rooms do not.
    owners: Owners,
}

impl StockFile {
    pub fn open(
        path: &Path,
        key: &DatabaseKey,
        host: &str,
        store: &str,
        owners: Owners,
    ) -> Result<StockFile> {
        Ok(StockFile {
            file: StockSqlite::open(path, key)?,
            path: path.to_owned(),
            host: host.to_owned(),
            store: store.to_owned(),
            owners,
        })
    }

    fn prefs_store(&self) -> String {
        format!("{}_prefs", self.store)
    }
}

impl StockArchive for StockFile {
    fn describe(&self) -> String {
        format!("sql store '{}' in {}", self.store, self.path.display())
    }

    fn users(&mut self) -> std::result::Result<Vec<String>, String> {
        let mut users = self
            .file
            .archive_users(&self.host, &self.store)
            .map_err(|e| e.to_string())?;
        if self.owners == Owners::Accounts {
            users.extend(
                self.file
                    .keyval_users(&self.host, &self.prefs_store())
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(users)
    }

    fn count(&mut self, user: &str) -> std::result::Result<u64, String> {
        self.file
            .count(&self.host, user, &self.store)
            .map_err(|e| e.to_string())
    }

    fn messages(
        &mut self,
        user: &str,
        each: &mut dyn FnMut(SourceMessage) -> bool,
    ) -> std::result::Result<(), String> {
        let mut failed = None;
        self.file
            .items(&self.host, user, &self.store, &mut |item| {
                if item.kind != "xml" {
                    failed = Some(format!(
                        "item {} of {user} is a '{}', not a stanza",
                        item.id, item.kind
                    ));
                    return false;
                }
                match parse_xml(&item.value) {
                    Ok(stanza) => each(SourceMessage {
                        id: item.id,
                        when_secs: item.when_secs,
                        with: item.with,
                        stanza,
                    }),
                    Err(e) => {
                        failed = Some(format!("item {} of {user} is not XML: {e}", item.id));
                        false
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn prefs(&mut self, user: &str) -> std::result::Result<Option<StockPrefs>, String> {
        if self.owners == Owners::Rooms {
            return Ok(None);
        }
        let rows = self
            .file
            .keyval(&self.host, user, &self.prefs_store())
            .map_err(|e| e.to_string())?;
        Ok(prefs_from_rows(&rows))
    }
}

/// Stock's preferences from `mod_storage_sql`'s key-value rows: one `boolean` row per
/// JID (`true` always, `false` never, both kept, unlike the Lua driver, which drops
/// `false` values when reading), and the default under the empty key as `json`
/// (`{"__hash":[false,"roster"]}`: util.json's form for a table with a `false` key).
/// `None` when the user has no rows.
fn prefs_from_rows(rows: &[StockKeyValue]) -> Option<StockPrefs> {
    if rows.is_empty() {
        return None;
    }
    let mut prefs = StockPrefs::default();
    for (key, kind, value) in rows {
        match (key.as_str(), kind.as_str(), value.as_str()) {
            ("", "json", json) => prefs.default = default_from_json(json),
            (jid, "boolean", "true") if !jid.is_empty() => prefs.rules.push((jid.to_owned(), true)),
            (jid, "boolean", "false") if !jid.is_empty() => {
                prefs.rules.push((jid.to_owned(), false))
            }
            // Nothing else is something stock writes there; skipped.
            _ => {}
        }
    }
    Some(prefs)
}

/// The `[false]` entry of util.json's `{"__hash":[k1,v1,…]}`, the only one stock's
/// preferences put there. Anything else: no default (the server's applies, as
/// stock's own reading would give for a value it does not know).
fn default_from_json(json: &str) -> Option<StockDefault> {
    let compact: String = json.chars().filter(|c| !c.is_whitespace()).collect();
    let start = compact.find("\"__hash\":[")? + "\"__hash\":[".len();
    let list = &compact[start..];
    let list = &list[..list.find(']')?];
    let tokens: Vec<&str> = list.split(',').collect();
    tokens
        .chunks(2)
        .find(|pair| pair.first() == Some(&"false"))
        .and_then(|pair| match pair.get(1).copied() {
            Some("true") => Some(StockDefault::Always),
            Some("false") => Some(StockDefault::Never),
            Some("\"roster\"") => Some(StockDefault::Roster),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::stock::tests::write_stock_file;

    #[test]
    fn stock_s_json_default_reads_as_util_json_writes_it() {
        assert_eq!(
            default_from_json("{\"__hash\":[false,\"roster\"]}"),
            Some(StockDefault::Roster)
        );
        assert_eq!(
            default_from_json("{\"__hash\":[false,true]}"),
            Some(StockDefault::Always)
        );
        assert_eq!(
            default_from_json("{ \"__hash\": [ false, false ] }"),
            Some(StockDefault::Never)
        );
        assert_eq!(default_from_json("{\"__hash\":[]}"), None);
        assert_eq!(default_from_json("not json"), None);
    }

    #[test]
    fn an_encrypted_stock_file_reads_as_the_import_expects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prosody.sqlite");
        write_stock_file(&path, Some("pw"));
        let key = DatabaseKey::given("sql.password", "pw".into());
        let mut stock =
            StockFile::open(&path, &key, "capulet.lit", "archive", Owners::Accounts).expect("open");
        assert_eq!(stock.users().expect("users"), ["juliet", "juliet"]);
        let mut got = Vec::new();
        stock
            .messages("juliet", &mut |m| {
                got.push((m.id, m.when_secs, m.with, m.stanza.name.clone()));
                true
            })
            .expect("messages");
        assert_eq!(
            got,
            [
                (
                    "s1".into(),
                    1_600_000_000.0,
                    "romeo@montague.lit".into(),
                    "message".into()
                ),
                (
                    "s2".into(),
                    1_600_000_060.0,
                    "romeo@montague.lit".into(),
                    "message".into()
                ),
            ]
        );
        let prefs = stock.prefs("juliet").expect("prefs").expect("some");
        assert_eq!(prefs.default, Some(StockDefault::Roster));
        assert_eq!(prefs.rules, [("tybalt@capulet.lit".to_owned(), false)]);
        assert_eq!(stock.prefs("romeo").expect("prefs"), None);
    }
}
