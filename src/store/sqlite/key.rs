//! Encryption at rest: the SQLCipher key every connection sets before anything else,
//! and what an unreadable file means.
//!
//! SQLCipher (the SQLite this crate is built with, `bundled-sqlcipher`) encrypts
//! every page of the database file and of its write-ahead log with the key set by
//! `PRAGMA key`; without a key it is plain SQLite, so archives written before this
//! existed open as they did. The key must be set before anything reads the file:
//! SQLCipher derives the page key on the first read, and a statement that read the
//! file before it would read it as plain SQLite. Temporary files (sorts, large transactions)
//! stay in memory, so nothing decrypted ever goes to a temporary file.
//!
//! A wrong or missing key shows as `SQLITE_NOTADB` ("file is not a database") on the
//! first read. [`unlock`] turns that into a [`KeyProblem`] saying which it is, before
//! any write, so a start with a wrong key never writes a schema (or a new empty
//! archive) into the file.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, ErrorCode, OpenFlags};
use sha2::{Digest, Sha512};

use crate::config::DatabaseKey;
use crate::error::{KeyProblem, MamError, Result};

/// The first 16 bytes of every plain SQLite file. SQLCipher stores a random salt
/// there instead, so these bytes tell a plain file from an encrypted (or foreign) one.
const PLAIN_SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Before the read-write connection is opened: when a write-ahead log is left from
/// a run that did not close the file (a crash, `kill -9`), checks on a read-only
/// connection that the file reads with `key`. A read-write connection that fails
/// would, on closing, still checkpoint that log into the file and delete it (SQLite
/// copies the log's pages as they are, still encrypted, so nothing would be lost, but
/// the file would change under a key that cannot read it); a read-only one never
/// writes either file. Without a log a failing read-write connection writes nothing,
/// so the check costs a second key derivation only after a crash.
pub(super) fn check_leftover_log(path: &Path, key: &DatabaseKey) -> Result<()> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if !Path::new(&wal).exists() {
        return Ok(());
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let probe = Connection::open_with_flags(path, flags)
        .map_err(MamError::storage("open archive database to check its key"))?;
    unlock(&probe, path, key)
}

/// Sets `key` on a connection just opened on `path` (before anything reads it), keeps
/// temporary files in memory, and reads the schema once to check that the file
/// decrypts with it. The check is a read: nothing is written to a file that fails it.
///
/// A passphrase costs SQLCipher's key derivation (0.1–0.3 s) on every connection, and
/// the module opens four or five when it loads, on Prosody's thread. So once a
/// passphrase has opened a file, its page key is derived here too ([`DerivedKeys`])
/// and the file's later connections in this process are given that raw key instead.
pub(super) fn unlock(conn: &Connection, path: &Path, key: &DatabaseKey) -> Result<()> {
    let mut learn_from = None;
    if let Some(passphrase) = key.passphrase() {
        // SQLCipher's own log writes two lines to stderr for every failed decryption
        // (Prosody's console or journal, each retry every 5 s); the error this returns
        // says it once, in Prosody's log. The setting is process-wide.
        conn.pragma_update(None, "cipher_log_level", "NONE")
            .map_err(MamError::storage("set cipher_log_level=NONE"))?;
        let salt = file_salt(path);
        let known = salt.and_then(|salt| DERIVED.raw_key(&salt, passphrase));
        if known.is_none() && !is_raw_key(passphrase) {
            learn_from = Some(passphrase);
        }
        // pragma_update quotes the value as an SQL string literal: the passphrase is
        // never spliced into the statement, and SQLCipher reads it exactly as Prosody
        // 13's SQLite driver writes `PRAGMA key='…'`, so both open the same files.
        conn.pragma_update(None, "key", known.as_deref().unwrap_or(passphrase))
            .map_err(MamError::storage("set the database key"))?;
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(MamError::storage("set temp_store=MEMORY"))?;
    }
    readable(conn).map_err(|e| match e {
        Unreadable::NotADatabase => diagnose(path, key),
        Unreadable::Other(source) => MamError::Storage {
            context: "read the database schema",
            source,
        },
    })?;
    if let Some(passphrase) = learn_from {
        DERIVED.learn(path, passphrase);
    }
    Ok(())
}

/// Why a keyed connection could not read the schema.
enum Unreadable {
    /// The page did not decrypt: a wrong or missing key (or not a database).
    NotADatabase,
    Other(rusqlite::Error),
}

/// Reads the schema once: the first read, where a key that does not fit shows.
fn readable(conn: &Connection) -> std::result::Result<(), Unreadable> {
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
        row.get::<_, i64>(0)
    }) {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::NotADatabase => {
            Err(Unreadable::NotADatabase)
        }
        Err(e) => Err(Unreadable::Other(e)),
    }
}

/// SQLCipher 4's defaults, with which it turns a passphrase into a file's page key:
/// PBKDF2-HMAC-SHA512 over the passphrase and the file's salt, 256,000 rounds, 32
/// bytes. A file written with other settings simply never gets a derived key (the
/// check in [`DerivedKeys::learn`] fails) and keeps opening with its passphrase.
const KDF_ROUNDS: u32 = 256_000;
const SALT_BYTES: usize = 16;
const PAGE_KEY_BYTES: usize = 32;

/// The random salt SQLCipher keeps in an encrypted file's first 16 bytes; `None` for
/// a new (empty), plain or unreadable file.
fn file_salt(path: &Path) -> Option<[u8; SALT_BYTES]> {
    let mut head = [0u8; SALT_BYTES];
    File::open(path).ok()?.read_exact(&mut head).ok()?;
    (&head != PLAIN_SQLITE_HEADER).then_some(head)
}

/// Whether `key` is already a raw key (`x'…'`), which SQLCipher uses without deriving.
fn is_raw_key(key: &str) -> bool {
    key.len() > 3 && key.starts_with("x'") && key.ends_with('\'')
}

/// Page keys derived in this process from a passphrase, one per file salt, each
/// checked against the file before it is used. Kept in memory for the life of the
/// process, as the passphrase itself is (in the configuration).
struct DerivedKeys(Mutex<Vec<Derived>>);

struct Derived {
    salt: [u8; SALT_BYTES],
    /// SHA-512 of the passphrase it was derived from: a changed passphrase for the
    /// same file finds no entry.
    passphrase: [u8; 64],
    /// `x'<64 hex digits>'`, or `None` when the derived key did not open the file
    /// (not SQLCipher 4's default settings): then not tried again.
    raw: Option<String>,
}

static DERIVED: DerivedKeys = DerivedKeys(Mutex::new(Vec::new()));

impl DerivedKeys {
    /// The raw key for a file with `salt` and `passphrase`, if one was derived and
    /// checked.
    fn raw_key(&self, salt: &[u8; SALT_BYTES], passphrase: &str) -> Option<String> {
        let digest = passphrase_digest(passphrase);
        let known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        known
            .iter()
            .find(|d| &d.salt == salt && d.passphrase == digest)
            .and_then(|d| d.raw.clone())
    }

    /// After `passphrase` opened `path` (a connection on it is still open): derives
    /// the page key and checks it on a connection of its own before keeping it. A
    /// new file has no salt until its first write; the next connection learns then.
    fn learn(&self, path: &Path, passphrase: &str) {
        let Some(salt) = file_salt(path) else {
            return;
        };
        let digest = passphrase_digest(passphrase);
        {
            let known = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if known
                .iter()
                .any(|d| d.salt == salt && d.passphrase == digest)
            {
                return;
            }
        }
        let mut page_key = [0u8; PAGE_KEY_BYTES];
        pbkdf2::pbkdf2_hmac::<Sha512>(passphrase.as_bytes(), &salt, KDF_ROUNDS, &mut page_key);
        // SQLCipher's raw-key form, given to `PRAGMA key` as a quoted value like any key.
        let mut raw = String::from("x'");
        raw.push_str(&hex(&page_key));
        raw.push('\'');
        let raw = opens_with(path, &raw).then_some(raw);
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Derived {
                salt,
                passphrase: digest,
                raw,
            });
    }
}

fn passphrase_digest(passphrase: &str) -> [u8; 64] {
    Sha512::digest(passphrase.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Whether `raw_key` reads `path`'s schema, on a connection of its own that never
/// creates the file. Called while another connection that read the file is open, so
/// closing this one never checkpoints a write-ahead log, and a failed read writes
/// nothing.
fn opens_with(path: &Path, raw_key: &str) -> bool {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(probe) = Connection::open_with_flags(path, flags) else {
        return false;
    };
    probe.pragma_update(None, "key", raw_key).is_ok() && readable(&probe).is_ok()
}

/// Why a file SQLite calls "not a database" cannot be read with `key`.
fn diagnose(path: &Path, key: &DatabaseKey) -> MamError {
    let option = key.option();
    let plain = has_plain_header(path);
    MamError::Key(match (key.passphrase().is_some(), plain) {
        (true, true) => KeyProblem::NotEncrypted { option },
        (true, false) => KeyProblem::Wrong { option },
        // A plain header that still is "not a database" is a damaged file; without a
        // key that is the same answer as for any file SQLite cannot read.
        (false, _) => KeyProblem::Missing { option },
    })
}

/// Whether the file starts like a plain SQLite database. A file that cannot be read
/// counts as not plain (the open that follows reports its own error).
fn has_plain_header(path: &Path) -> bool {
    let mut head = [0u8; 16];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == PLAIN_SQLITE_HEADER)
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use super::*;
    use crate::store::{ArchiveStore, ArchivedMessage, FindRequest, Owner};

    const SECRET_TEXT: &str = "meet me at the old mill at midnight";

    fn key(passphrase: &str) -> DatabaseKey {
        DatabaseKey::given("mam_database_key", passphrase.to_owned())
    }

    fn no_key() -> DatabaseKey {
        DatabaseKey::none("mam_database_key")
    }

    fn message(i: usize) -> ArchivedMessage {
        ArchivedMessage {
            id: format!("id-{i}"),
            when: 1_700_000_000_000_000 + i as i64,
            with_bare: "romeo@montague.lit".into(),
            with_resource: None,
            xml: format!(
                "<message xmlns='jabber:client' type='chat'><body>{SECRET_TEXT} #{i}</body></message>"
            ),
        }
    }

    fn juliet() -> Owner {
        Owner::new("capulet.lit", "juliet")
    }

    fn write(store: &mut SqliteStore, n: usize) {
        let items: Vec<_> = (0..n).map(|i| (juliet(), message(i))).collect();
        store.append_many(&items, None).expect("append");
    }

    fn count(store: &mut SqliteStore) -> usize {
        let req = FindRequest {
            limit: 1000,
            ..FindRequest::default()
        };
        store.find(&juliet(), &req).expect("find").items.len()
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    fn key_problem(result: Result<SqliteStore>) -> KeyProblem {
        match result {
            Err(MamError::Key(problem)) => problem,
            Err(other) => panic!("expected a key problem, got {other}"),
            Ok(_) => panic!("expected a key problem, the archive opened"),
        }
    }

    #[test]
    fn an_archive_written_with_a_key_reads_back_with_that_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mam.sqlite");
        {
            let mut store = SqliteStore::open_keyed(&path, &key("k1")).expect("create");
            write(&mut store, 3);
        }
        let mut store = SqliteStore::open_keyed(&path, &key("k1")).expect("reopen");
        assert_eq!(count(&mut store), 3);
        let head = std::fs::read(&path).expect("read");
        assert_ne!(
            &head[..16],
            PLAIN_SQLITE_HEADER,
            "the file is not plain SQLite"
        );
    }

    #[test]
    fn without_the_key_or_with_a_wrong_one_the_file_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mam.sqlite");
        {
            let mut store = SqliteStore::open_keyed(&path, &key("right")).expect("create");
            write(&mut store, 5);
        }
        let before = std::fs::read(&path).expect("read");
        assert_eq!(
            key_problem(SqliteStore::open_keyed(&path, &no_key())),
            KeyProblem::Missing {
                option: "mam_database_key"
            }
        );
        assert_eq!(
            key_problem(SqliteStore::open(&path)),
            KeyProblem::Missing {
                option: "mam_database_key"
            }
        );
        assert_eq!(
            key_problem(SqliteStore::open_keyed(&path, &key("wrong"))),
            KeyProblem::Wrong {
                option: "mam_database_key"
            }
        );
        assert_eq!(
            std::fs::read(&path).expect("read"),
            before,
            "no new (empty) database was written over the old one"
        );
        let mut store = SqliteStore::open_keyed(&path, &key("right")).expect("reopen");
        assert_eq!(count(&mut store), 5, "every message is still there");
    }

    #[test]
    fn the_error_names_the_option_and_never_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mam.sqlite");
        drop(SqliteStore::open_keyed(&path, &key("right-passphrase")).expect("create"));
        let wrong = DatabaseKey::given("mam_sql.password", "wrong-passphrase".into());
        let err = SqliteStore::open_keyed(&path, &wrong)
            .err()
            .expect("refused")
            .to_string();
        assert_eq!(
            err,
            "wrong key (mam_sql.password), or the file is not a SQLite database"
        );
        let err = SqliteStore::open(&path).err().expect("refused").to_string();
        assert_eq!(
            err,
            "the file is encrypted, or not a SQLite database: missing key (set mam_database_key)"
        );
    }

    #[test]
    fn a_key_for_a_plain_archive_is_refused_and_the_plain_archive_still_opens_without() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mam.sqlite");
        {
            let mut store = SqliteStore::open(&path).expect("create plain");
            write(&mut store, 2);
        }
        let before = std::fs::read(&path).expect("read");
        assert_eq!(
            key_problem(SqliteStore::open_keyed(&path, &key("k"))),
            KeyProblem::NotEncrypted {
                option: "mam_database_key"
            }
        );
        assert_eq!(std::fs::read(&path).expect("read"), before);
        let mut store = SqliteStore::open(&path).expect("plain reopens");
        assert_eq!(count(&mut store), 2);
    }

    #[test]
    fn neither_the_encrypted_file_nor_its_write_ahead_log_holds_message_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A plain archive first, the same way: the search would find the text there,
        // so finding none in the encrypted one means something.
        for (name, k, readable) in [("plain", no_key(), true), ("enc", key("k"), false)] {
            let path = dir.path().join(format!("{name}.sqlite"));
            let wal = dir.path().join(format!("{name}.sqlite-wal"));
            let mut store = SqliteStore::open_keyed(&path, &k).expect("open");
            write(&mut store, 50);
            // The store stays open: the writes are in the log, not yet checkpointed.
            let wal_bytes = std::fs::read(&wal).expect("the log exists while open");
            assert!(!wal_bytes.is_empty());
            assert_eq!(contains(&wal_bytes, SECRET_TEXT), readable, "{name}: -wal");
            assert_eq!(contains(&wal_bytes, "romeo@montague.lit"), readable);
            drop(store); // the last close checkpoints the log into the file
            let file_bytes = std::fs::read(&path).expect("read");
            assert_eq!(contains(&file_bytes, SECRET_TEXT), readable, "{name}: file");
            assert_eq!(
                contains(&file_bytes, "capulet.lit"),
                readable,
                "{name}: file"
            );
        }
    }

    #[test]
    fn a_wrong_key_beside_a_running_writer_neither_breaks_it_nor_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mam.sqlite");
        let mut writer = SqliteStore::open_keyed(&path, &key("right")).expect("create");
        write(&mut writer, 4);
        assert_eq!(
            key_problem(SqliteStore::open_keyed(&path, &key("wrong"))),
            KeyProblem::Wrong {
                option: "mam_database_key"
            }
        );
        assert_eq!(count(&mut writer), 4);
        drop(writer);
        let mut again = SqliteStore::open_keyed(&path, &key("right")).expect("reopen");
        assert_eq!(count(&mut again), 4);
    }

    #[test]
    fn a_wrong_key_leaves_a_crashed_run_s_log_for_the_right_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = dir.path().join("live.sqlite");
        let mut writer = SqliteStore::open_keyed(&live, &key("right")).expect("create");
        write(&mut writer, 6);
        // The file and its log as a crash (kill -9) would leave them: the commits are
        // in the -wal, not yet checkpointed into the file.
        let path = dir.path().join("crashed.sqlite");
        let wal = dir.path().join("crashed.sqlite-wal");
        std::fs::copy(&live, &path).expect("copy file");
        std::fs::copy(dir.path().join("live.sqlite-wal"), &wal).expect("copy log");
        drop(writer);
        let (file_before, wal_before) = (
            std::fs::read(&path).expect("file"),
            std::fs::read(&wal).expect("log"),
        );
        assert!(!wal_before.is_empty());
        for wrong in [key("wrong"), no_key()] {
            assert!(matches!(
                SqliteStore::open_keyed(&path, &wrong),
                Err(MamError::Key(_))
            ));
            let (file_now, wal_now) = (
                std::fs::read(&path).expect("file"),
                std::fs::read(&wal).expect("the log is still there"),
            );
            let first_change = |a: &[u8], b: &[u8]| {
                a.iter()
                    .zip(b)
                    .position(|(x, y)| x != y)
                    .map(|p| (p, a.len(), b.len()))
            };
            assert!(
                file_now == file_before,
                "the file changed: {:?}",
                first_change(&file_before, &file_now)
            );
            assert!(
                wal_now == wal_before,
                "the log changed: {:?}",
                first_change(&wal_before, &wal_now)
            );
        }
        let mut store = SqliteStore::open_keyed(&path, &key("right")).expect("recover");
        assert_eq!(count(&mut store), 6, "the commits in the log are all there");
    }

    /// Not a test of behaviour: what a key costs. Run with
    /// `cargo test --release --no-default-features --features vendored --lib
    /// key::tests::cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn cost_of_a_key_on_writes_reads_and_opening() {
        use std::time::Instant;
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, k) in [("plain", no_key()), ("keyed", key("a passphrase"))] {
            let path = dir.path().join(format!("{name}.sqlite"));
            let started = Instant::now();
            let mut store = SqliteStore::open_keyed(&path, &k).expect("open");
            let open_new = started.elapsed();
            // 20,000 messages in group commits of 50, as the writer does under load.
            let started = Instant::now();
            for batch in 0..400 {
                let items: Vec<_> = (0..50)
                    .map(|i| (juliet(), message(batch * 50 + i)))
                    .collect();
                store.append_many(&items, None).expect("append");
            }
            let writes = started.elapsed();
            drop(store);
            let started = Instant::now();
            let mut store = SqliteStore::open_keyed(&path, &k).expect("reopen");
            let open_existing = started.elapsed();
            // The module's next connections (readers, checkpointer) open beside it.
            let started = Instant::now();
            let beside = SqliteStore::open_beside_writer(&path, &k).expect("beside");
            let open_beside = started.elapsed();
            drop(beside);
            // Cold-ish reads: the newest page, then pages walking back, as clients do.
            let started = Instant::now();
            for _ in 0..500 {
                let req = FindRequest {
                    limit: 50,
                    reverse: true,
                    total: true,
                    ..FindRequest::default()
                };
                assert_eq!(store.find(&juliet(), &req).expect("find").items.len(), 50);
            }
            let reads = started.elapsed();
            println!(
                "{name}: open new {open_new:?}, open existing {open_existing:?}, \
                 another connection beside it {open_beside:?}, 20,000 writes in 400 commits {writes:?}, 500 newest pages of 50 {reads:?}"
            );
        }
    }

    #[test]
    fn once_a_passphrase_opened_a_file_its_later_connections_get_the_derived_page_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mam.sqlite");
        let passphrase = "derive me once";
        {
            // A new file has no salt until its first write: nothing is learnt yet.
            let mut store = SqliteStore::open_keyed(&path, &key(passphrase)).expect("create");
            write(&mut store, 4);
        }
        let salt = file_salt(&path).expect("an encrypted file starts with its salt");
        assert_eq!(DERIVED.raw_key(&salt, passphrase), None);
        let mut first = SqliteStore::open_keyed(&path, &key(passphrase)).expect("reopen");
        let raw = DERIVED
            .raw_key(&salt, passphrase)
            .expect("derived and checked after the passphrase opened the file");
        assert!(is_raw_key(&raw) && raw.len() == 2 + 64 + 1, "x'<64 hex>'");
        // The derived key is SQLCipher's own: it opens the file on its own, ...
        let mut by_raw_key = SqliteStore::open_keyed(&path, &key(&raw)).expect("raw key opens");
        assert_eq!(count(&mut by_raw_key), 4);
        // ... later connections with the passphrase read and write as before, ...
        let mut second = SqliteStore::open_beside_writer(&path, &key(passphrase)).expect("second");
        assert_eq!(count(&mut second), 4);
        let newer: Vec<_> = (10..12).map(|i| (juliet(), message(i))).collect();
        first.append_many(&newer, None).expect("append");
        assert_eq!(count(&mut second), 6);
        // ... and another passphrase for the same file finds nothing and is refused.
        assert_eq!(DERIVED.raw_key(&salt, "another"), None);
        assert_eq!(
            key_problem(SqliteStore::open_beside_writer(&path, &key("another"))),
            KeyProblem::Wrong {
                option: "mam_database_key"
            }
        );
    }

    #[test]
    fn the_check_refuses_a_raw_key_that_does_not_open_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mam.sqlite");
        {
            let mut store = SqliteStore::open_keyed(&path, &key("real")).expect("create");
            write(&mut store, 1);
        }
        assert!(!opens_with(&path, &format!("x'{}'", "00".repeat(32))));
        let _open = SqliteStore::open_keyed(&path, &key("real")).expect("open");
        assert!(opens_with(
            &path,
            &DERIVED
                .raw_key(&file_salt(&path).expect("salt"), "real")
                .expect("learnt")
        ));
    }

    #[test]
    fn every_connection_keeps_temporary_files_in_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mam.sqlite");
        let store = SqliteStore::open_keyed(&path, &key("k")).expect("create");
        let mode: i64 = store
            .conn
            .query_row("PRAGMA temp_store", [], |row| row.get(0))
            .expect("temp_store");
        assert_eq!(mode, 2, "2 = MEMORY");
    }

    #[test]
    fn a_raw_hex_key_works_as_sqlcipher_documents_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mam.sqlite");
        let raw = format!("x'{}'", "2D".repeat(32));
        {
            let mut store = SqliteStore::open_keyed(&path, &key(&raw)).expect("create");
            write(&mut store, 1);
        }
        let mut store = SqliteStore::open_keyed(&path, &key(&raw)).expect("reopen");
        assert_eq!(count(&mut store), 1);
        assert!(matches!(
            SqliteStore::open_keyed(&path, &key(&"2D".repeat(32))),
            Err(MamError::Key(KeyProblem::Wrong { .. }))
        ));
    }
}
