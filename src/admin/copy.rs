//! Copying one of this module's archives into another: the engine of
//! `prosodyctl mod_mam import --from mam-sqlite|mam-postgres`, which moves an archive
//! from SQLite to PostgreSQL and back (or between two files, or two databases).
//!
//! Everything goes through [`ArchiveStore`], not SQL, so any backend can be either end:
//! the source is read with `find`, one owner at a time, [`COPY_PAGE`] messages per page
//! (each page its own short read transaction: a Prosody still writing the source is
//! never held up, and memory holds one page); the destination is written with
//! `import_batch` under the source's ids and in archive order, so equal timestamps keep
//! their order and a second run adds nothing. The [`Importer`] tallies each owner,
//! reports progress with a rate and an ETA, and verifies the counts at the end, exactly
//! as for an import from stock mod_mam. Preferences are copied unless the owner already
//! has some in the destination.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use thiserror::Error;

use super::import::Importer;
use crate::config::{self, DatabaseKey, PgSettings, SslMode, Storage};
use crate::error::MamError;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{self, ArchiveStore, ArchivedMessage, FindRequest, ImportedMessage, Owner};
use crate::time::{Clock, Micros};

/// How many messages one read of the source returns and one destination transaction
/// writes: short enough that a running Prosody waits little for either database.
pub const COPY_PAGE: usize = 500;

/// At most one progress line this often (microseconds).
const PROGRESS_EVERY: Micros = 2_000_000;

/// Which of this module's archives to read.
#[derive(Debug, Clone, PartialEq)]
pub enum CopySource {
    /// An SQLite archive file (`mam_<archive_store>.sqlite` by default), and its
    /// SQLCipher key if it is encrypted (`MAM_SOURCE_KEY`, docs/encryption.md).
    Sqlite(PathBuf, DatabaseKey),
    /// A PostgreSQL database holding this module's `mam_*` tables.
    Postgres(PgSettings),
}

/// Why a copy did not run or did not finish.
#[derive(Debug, Error)]
pub enum CopyError {
    /// `--source` for `mam-postgres` is not a connection string we can use; says why
    /// without repeating the string (it may hold a password).
    #[error("invalid PostgreSQL connection string for --source: {0}")]
    BadConnInfo(String),
    /// The source is the very archive the host is configured to use: there is nothing
    /// to copy, and reading and writing one archive would only report every message as
    /// already there.
    #[error(
        "the source {from} is the archive this host is configured to use ({into}); \
         configure the new archive first (e.g. mam_sql), then name the old one with --source"
    )]
    SameDatabase { from: String, into: String },
    /// The source could not be opened or read.
    #[error("source {from}: {cause}")]
    Source { from: String, cause: MamError },
    /// The destination (the configured archive) could not be opened or written.
    #[error("destination {into}: {cause}")]
    Destination { into: String, cause: MamError },
}

impl CopyError {
    /// `prosodyctl`'s exit code: 2 for a command line that cannot work, 1 for a
    /// failure while running.
    pub fn exit_code(&self) -> i32 {
        match self {
            CopyError::BadConnInfo(_) | CopyError::SameDatabase { .. } => 2,
            CopyError::Source { .. } | CopyError::Destination { .. } => 1,
        }
    }
}

impl CopySource {
    /// An SQLite source: `given` (absolute, or relative to the data directory), or the
    /// file this module uses by default for `archive_store`.
    /// `key`: the source file's own key (none for a plain file); the destination's
    /// comes from the host's configuration, so a copy can encrypt, decrypt or change
    /// the key of an archive.
    pub fn sqlite(
        given: Option<&str>,
        data_path: &str,
        archive_store: &str,
        key: DatabaseKey,
    ) -> CopySource {
        let path = match given {
            Some(path) => config::data_file(data_path, path),
            None => config::default_sqlite_file(data_path, archive_store),
        };
        CopySource::Sqlite(path, key)
    }

    /// A PostgreSQL source from a libpq connection string (`key=value …` or a
    /// `postgresql://` URL). `env_password` (`PGPASSWORD`) is used when the string
    /// names none. Missing parts take libpq's defaults: the Unix socket directory, port
    /// 5432, the operating-system user, a database named after the user.
    pub fn postgres(conninfo: &str, env_password: Option<String>) -> Result<CopySource, CopyError> {
        let parsed = postgres::Config::from_str(conninfo)
            .map_err(|e| CopyError::BadConnInfo(conninfo_problem(&e)))?;
        let host = match (parsed.get_hosts(), parsed.get_hostaddrs()) {
            ([], []) => config::DEFAULT_PG_SOCKET_DIR.to_owned(),
            ([], [addr]) => addr.to_string(),
            ([postgres::config::Host::Tcp(name)], _) => name.clone(),
            #[cfg(unix)]
            ([postgres::config::Host::Unix(dir)], _) => dir.display().to_string(),
            _ => return Err(CopyError::BadConnInfo("name one host, not several".into())),
        };
        let port = match parsed.get_ports() {
            [] => config::DEFAULT_PG_PORT,
            [port] => *port,
            _ => return Err(CopyError::BadConnInfo("name one port, not several".into())),
        };
        let username = match parsed.get_user() {
            Some(user) => user.to_owned(),
            None => std::env::var("USER").unwrap_or_else(|_| "prosody".to_owned()),
        };
        let password = match parsed.get_password() {
            Some(bytes) => Some(
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| CopyError::BadConnInfo("the password is not UTF-8".into()))?,
            ),
            None => env_password.filter(|p| !p.is_empty()),
        };
        let sslmode = match parsed.get_ssl_mode() {
            postgres::config::SslMode::Disable => SslMode::Disable,
            postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        Ok(CopySource::Postgres(PgSettings {
            database: parsed
                .get_dbname()
                .map_or_else(|| username.clone(), str::to_owned),
            host,
            port,
            username,
            password,
            sslmode,
            sslrootcert: None,
        }))
    }

    /// Where the source is, for output: a path, or `postgresql://user@host:port/db`
    /// (never the password).
    pub fn describe(&self) -> String {
        match self {
            CopySource::Sqlite(path, _) => path.display().to_string(),
            CopySource::Postgres(settings) => settings.describe(),
        }
    }

    fn failed(&self) -> impl FnOnce(MamError) -> CopyError + '_ {
        move |cause| CopyError::Source {
            from: self.describe(),
            cause,
        }
    }

    /// Opens the source without ever creating it or adding our schema to a database
    /// that does not have it.
    fn open(&self) -> Result<Box<dyn ArchiveStore>, CopyError> {
        Ok(match self {
            CopySource::Sqlite(path, key) => {
                Box::new(SqliteStore::open_existing_keyed(path, key).map_err(self.failed())?)
            }
            CopySource::Postgres(settings) => {
                Box::new(PgStore::connect_existing(settings).map_err(self.failed())?)
            }
        })
    }
}

/// What is wrong with a connection string, from the parser's error and its causes
/// ("invalid connection string: invalid value for option `port`"), cut before the
/// one place the parser quotes the input (a character that could be the password's).
fn conninfo_problem(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let detail = c.to_string();
        let detail = match detail.split_once(": expected `") {
            Some((before, _)) => before.to_owned(),
            None => detail,
        };
        text.push_str(": ");
        text.push_str(&detail);
        cause = c.source();
    }
    text
}

fn destination_failed(into: &Storage) -> impl FnOnce(MamError) -> CopyError + '_ {
    move |cause| CopyError::Destination {
        into: into.describe(),
        cause,
    }
}

/// Whether two paths name one file (through links, `..`, another spelling). A path
/// that does not exist is no other file.
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
    }
}

/// Both ends of a copy, open.
struct OpenEnds {
    source: Box<dyn ArchiveStore>,
    destination: Box<dyn ArchiveStore>,
}

/// Opens the source and the destination, refusing when they are one database.
fn open_ends(from: &CopySource, into: &Storage) -> Result<OpenEnds, CopyError> {
    let same = || CopyError::SameDatabase {
        from: from.describe(),
        into: into.describe(),
    };
    match (from, into) {
        (
            CopySource::Sqlite(path, _),
            Storage::Sqlite {
                path: into_path, ..
            },
        ) if same_file(path, into_path) => Err(same()),
        (CopySource::Postgres(settings), Storage::Postgres(into_settings)) => {
            // Host names, addresses and poolers can spell one server many ways: ask
            // each end which database it is.
            let mut source = PgStore::connect_existing(settings).map_err(from.failed())?;
            let mut destination =
                PgStore::connect(into_settings).map_err(destination_failed(into))?;
            let source_id = source.database_identity().map_err(from.failed())?;
            let destination_id = destination
                .database_identity()
                .map_err(destination_failed(into))?;
            if source_id == destination_id {
                return Err(same());
            }
            Ok(OpenEnds {
                source: Box::new(source),
                destination: Box::new(destination),
            })
        }
        _ => Ok(OpenEnds {
            source: from.open()?,
            destination: store::open(into, true).map_err(destination_failed(into))?,
        }),
    }
}

/// Copies every archive and preference on `host` from `from` into the archive `into`
/// (the host's configured one), saying what it does line by line. Returns whether the
/// verification passed: every source message is in the destination under its id.
pub fn copy(
    from: &CopySource,
    into: &Storage,
    host: &str,
    clock: Arc<dyn Clock>,
    say: &mut dyn FnMut(&str),
) -> Result<bool, CopyError> {
    let OpenEnds {
        mut source,
        destination,
    } = open_ends(from, into)?;
    let mut importer = Importer::new(host, destination, clock.clone());
    let ends = Ends {
        from: from.describe(),
        into: into.describe(),
    };
    copy_between(
        source.as_mut(),
        &mut importer,
        host,
        &ends,
        clock.as_ref(),
        say,
    )
}

/// The two archives of a copy, as output and errors name them.
struct Ends {
    from: String,
    into: String,
}

impl Ends {
    fn source_failed(&self) -> impl FnOnce(MamError) -> CopyError + '_ {
        move |cause| CopyError::Source {
            from: self.from.clone(),
            cause,
        }
    }

    fn destination_failed(&self) -> impl FnOnce(MamError) -> CopyError + '_ {
        move |cause| CopyError::Destination {
            into: self.into.clone(),
            cause,
        }
    }
}

/// The copy itself, on open stores (so tests can run it on any pair).
fn copy_between(
    source: &mut dyn ArchiveStore,
    importer: &mut Importer,
    host: &str,
    ends: &Ends,
    clock: &dyn Clock,
    say: &mut dyn FnMut(&str),
) -> Result<bool, CopyError> {
    // The owners with messages and their counts (for the ETA) in one read. On SQLite
    // this also sums stanza lengths, an extra pass over the file that a one-off move
    // can afford; a cheaper listing would be a new ArchiveStore method.
    let owners = source.owner_stats(host).map_err(ends.source_failed())?;
    let prefs: BTreeMap<String, _> = source
        .all_prefs(host)
        .map_err(ends.source_failed())?
        .into_iter()
        .collect();
    let expected: u64 = owners.iter().map(|o| o.messages).sum();
    let users: BTreeSet<String> = owners
        .into_iter()
        .map(|o| o.user)
        .chain(prefs.keys().cloned())
        .collect();
    say(&format!(
        "Importing {expected} messages of {} users on {host} from {} into {}",
        users.len(),
        ends.from,
        ends.into
    ));
    importer.expect(expected);

    let mut last_progress = clock.now_micros();
    let mut prefs_imported = 0;
    for user in &users {
        importer.saw_user(user);
        let mut pages = OwnerPages::new(Owner::new(host, user));
        loop {
            let (batch, more) = pages.next(source).map_err(ends.source_failed())?;
            if !batch.is_empty() {
                importer
                    .store_batch(user, &batch)
                    .map_err(ends.destination_failed())?;
                let now = clock.now_micros();
                if now - last_progress >= PROGRESS_EVERY {
                    last_progress = now;
                    say(&format!("  {}", importer.progress_line()));
                }
            }
            if !more {
                break;
            }
        }
        if let Some(p) = prefs.get(user) {
            if importer.prefs(user, p).map_err(ends.destination_failed())? {
                prefs_imported += 1;
            }
        }
    }
    say(&format!("  {}", importer.progress_line()));
    say(&format!(
        "Preferences: {prefs_imported} imported (users who already had preferences here keep them)"
    ));
    let (lines, all_ok) = importer.verify().map_err(ends.destination_failed())?;
    say(&format!("Verification for {host}:"));
    for line in lines {
        say(&format!("  {line}"));
    }
    Ok(all_ok)
}

/// One owner's archive read in archive order, a page at a time, each page starting
/// after the last message read.
struct OwnerPages {
    owner: Owner,
    /// The last message read (id, timestamp): where the next page starts.
    last: Option<(String, Micros)>,
    /// The ids read so far that carry the last message's timestamp: if that message
    /// disappears (expiry, a delete) before the next page, the page starts at its
    /// timestamp instead, and these are not copied twice.
    read_at_last_time: HashSet<String>,
}

impl OwnerPages {
    fn new(owner: Owner) -> Self {
        OwnerPages {
            owner,
            last: None,
            read_at_last_time: HashSet::new(),
        }
    }

    /// The next page as messages to import, and whether there may be more.
    fn next(
        &mut self,
        source: &mut dyn ArchiveStore,
    ) -> crate::error::Result<(Vec<ImportedMessage>, bool)> {
        let after_last = FindRequest {
            after: self.last.iter().map(|(id, _)| id.clone()).collect(),
            limit: COPY_PAGE,
            ..FindRequest::default()
        };
        let items = match source.find(&self.owner, &after_last) {
            Ok(page) => page.items,
            Err(MamError::ItemNotFound(_)) => {
                let Some((_, when)) = &self.last else {
                    // A find that names no id cannot miss one: the backend is broken.
                    return Err(MamError::Corrupt(format!(
                        "the archive of {} reported an unknown id for a find naming none",
                        self.owner.user
                    )));
                };
                let from_last_time = FindRequest {
                    start: Some(*when),
                    limit: COPY_PAGE,
                    ..FindRequest::default()
                };
                source.find(&self.owner, &from_last_time)?.items
            }
            Err(e) => return Err(e),
        };
        let more = items.len() == COPY_PAGE;
        let mut batch = Vec::with_capacity(items.len());
        for m in items {
            let last_time = self.last.as_ref().map(|(_, when)| *when);
            if last_time == Some(m.when) {
                if self.read_at_last_time.contains(&m.id) {
                    continue;
                }
            } else {
                self.read_at_last_time.clear();
            }
            self.read_at_last_time.insert(m.id.clone());
            self.last = Some((m.id.clone(), m.when));
            batch.push(ImportedMessage {
                user: self.owner.user.clone(),
                msg: ArchivedMessage {
                    id: m.id,
                    when: m.when,
                    with_bare: m.with_bare,
                    with_resource: m.with_resource,
                    xml: m.xml,
                },
            });
        }
        Ok((batch, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{DefaultPolicy, Prefs};
    use crate::store::postgres::testdb::TestDb;
    use crate::store::{ArchivedMessage, DeleteFilter, WithFilter};
    use std::sync::atomic::{AtomicI64, Ordering};

    const HOST: &str = "capulet.lit";
    const T0: Micros = 1_275_868_800_000_000; // 2010-06-07T00:00:00Z
    const SECRET: &str = "s3cret-XYZZY";

    /// A clock that moves three seconds every time it is read, so every batch is
    /// followed by a progress line.
    struct SteppingClock(AtomicI64);
    impl Clock for SteppingClock {
        fn now_micros(&self) -> Micros {
            self.0.fetch_add(3_000_000, Ordering::SeqCst)
        }
    }

    fn clock() -> Arc<dyn Clock> {
        Arc::new(SteppingClock(AtomicI64::new(0)))
    }

    fn message(id: &str, when: Micros, with: &str) -> ArchivedMessage {
        let filter = crate::store::WithFilter::from_jid(with);
        ArchivedMessage {
            id: id.to_owned(),
            when,
            with_bare: filter.bare,
            with_resource: filter.resource,
            xml: format!(
                "<message xmlns='jabber:client' to='{with}' type='chat'>\
                 <body>{id} &lt;ü&gt; &amp; '\"</body></message>"
            ),
        }
    }

    fn juliet() -> Owner {
        Owner::new(HOST, "juliet")
    }

    /// Juliet's i-th message: four per microsecond (so only archive order tells them
    /// apart), ids running against time order, romeo at two resources and bare.
    fn juliets(i: usize) -> ArchivedMessage {
        let with = match i % 3 {
            0 => "romeo@montague.lit/orchard",
            1 => "romeo@montague.lit/balcony",
            _ => "romeo@montague.lit",
        };
        message(&format!("j{:04}", 1203 - i), T0 + (i / 4) as i64, with)
    }

    /// juliet: 1203 messages (more than two pages); nurse: 3 older ones; prefs for
    /// juliet and for tybalt, who has no messages; a user of another host, who must
    /// stay behind.
    fn fill(store: &mut dyn ArchiveStore) {
        let items: Vec<(Owner, ArchivedMessage)> =
            (0..1203).map(|i| (juliet(), juliets(i))).collect();
        store.append_many(&items, None).expect("juliet");
        for i in 0..3 {
            let m = message(&format!("n{i}"), T0 - 1_000 + i, "juliet@capulet.lit/x");
            store
                .append(&Owner::new(HOST, "nurse"), &m, None)
                .expect("nurse");
        }
        let elsewhere = message("r0", T0, "juliet@capulet.lit");
        store
            .append(&Owner::new("montague.lit", "romeo"), &elsewhere, None)
            .expect("romeo");
        let mut prefs = Prefs::with_default(DefaultPolicy::Roster);
        prefs.always.insert("romeo@montague.lit".into());
        prefs.never.insert("tybalt@capulet.lit".into());
        store.set_prefs(&juliet(), &prefs).expect("prefs");
        let never = Prefs::with_default(DefaultPolicy::Never);
        store
            .set_prefs(&Owner::new(HOST, "tybalt"), &never)
            .expect("prefs");
    }

    /// Everything a find shows of an owner's archive, in archive order.
    fn everything(store: &mut dyn ArchiveStore, user: &str) -> Vec<ArchivedMessage> {
        let all = FindRequest {
            limit: 100_000,
            ..FindRequest::default()
        };
        store
            .find(&Owner::new(HOST, user), &all)
            .expect("find")
            .items
    }

    /// What clients could ever see of the host: every owner's messages and prefs.
    type HostView = (Vec<Vec<ArchivedMessage>>, Vec<(String, Prefs)>);

    fn host_view(store: &mut dyn ArchiveStore) -> HostView {
        let archives = ["juliet", "nurse", "tybalt"]
            .iter()
            .map(|u| everything(store, u))
            .collect();
        (archives, store.all_prefs(HOST).expect("prefs"))
    }

    /// Runs a copy between two open stores; returns (verified, lines said).
    fn run_copy(
        source: &mut dyn ArchiveStore,
        destination: Box<dyn ArchiveStore>,
    ) -> (bool, Vec<String>) {
        let clock = clock();
        let mut importer = Importer::new(HOST, destination, clock.clone());
        let ends = Ends {
            from: "old.sqlite".into(),
            into: "new.sqlite".into(),
        };
        let mut lines = Vec::new();
        let mut say = |l: &str| lines.push(l.to_owned());
        let ok = copy_between(source, &mut importer, HOST, &ends, clock.as_ref(), &mut say)
            .expect("copy");
        (ok, lines)
    }

    fn sqlite(path: &Path) -> Storage {
        Storage::Sqlite {
            path: path.to_owned(),
            max_pages: None,
            key: crate::config::DatabaseKey::default(),
        }
    }

    /// Runs `copy` (opening both ends); returns (verified, lines said).
    fn run_full_copy(from: &CopySource, into: &Storage) -> Result<(bool, Vec<String>), CopyError> {
        let mut lines = Vec::new();
        let ok = copy(from, into, HOST, clock(), &mut |l| lines.push(l.to_owned()))?;
        Ok((ok, lines))
    }

    #[test]
    fn a_copy_keeps_ids_times_partners_resources_order_content_and_prefs() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut source = SqliteStore::open(&dir.path().join("old.sqlite")).expect("open");
        fill(&mut source);
        let destination = SqliteStore::open(&dir.path().join("new.sqlite")).expect("open");
        let (ok, lines) = run_copy(&mut source, Box::new(destination));
        assert!(ok, "{lines:#?}");
        assert_eq!(
            lines[0],
            "Importing 1206 messages of 3 users on capulet.lit from old.sqlite into new.sqlite"
        );
        for progress in [
            "  500/1206 messages (41%), ",
            "  1000/1206 messages (82%), ",
            "  1206/1206 messages (100%), ",
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(progress)),
                "{progress}: {lines:#?}"
            );
        }
        assert_eq!(
            lines[lines.len() - 5..],
            [
                "Preferences: 2 imported (users who already had preferences here keep them)",
                "Verification for capulet.lit:",
                "  juliet: source 1203, archive 1203 (1203 new, 0 already there) ok",
                "  nurse: source 3, archive 3 (3 new, 0 already there) ok",
                "  tybalt: source 0, archive 0 (0 new, 0 already there) ok",
            ]
        );
        let mut copied = SqliteStore::open(&dir.path().join("new.sqlite")).expect("reopen");
        let view = host_view(&mut copied);
        assert_eq!(view, host_view(&mut source));
        // Archive order, not id order: ids run against time here.
        assert_eq!(view.0[0][0].id, "j1203");
        assert_eq!(view.0[0][1202].id, "j0001");
        // Another host's archive stays where it was.
        let romeo = Owner::new("montague.lit", "romeo");
        assert_eq!(copied.message_count(&romeo).expect("count"), 0);
        // A full-JID query still tells the resources apart.
        let balcony = FindRequest {
            with: Some(WithFilter {
                bare: "romeo@montague.lit".into(),
                resource: Some("balcony".into()),
            }),
            total: true,
            ..FindRequest::default()
        };
        assert_eq!(
            copied.find(&juliet(), &balcony).expect("find").total,
            Some(401)
        );
    }

    #[test]
    fn a_second_copy_adds_nothing_and_keeps_prefs_changed_since() {
        let mut source = SqliteStore::open_in_memory().expect("open");
        fill(&mut source);
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("new.sqlite");
        let (ok, _) = run_copy(
            &mut source,
            Box::new(SqliteStore::open(&path).expect("open")),
        );
        assert!(ok);
        // Juliet changes her mind on the new server; the old archive gains a message.
        let mut destination = SqliteStore::open(&path).expect("open");
        let changed = Prefs::with_default(DefaultPolicy::Always);
        destination.set_prefs(&juliet(), &changed).expect("prefs");
        source
            .append(
                &juliet(),
                &message("late", T0 + 1_000_000, "romeo@montague.lit"),
                None,
            )
            .expect("append");
        let (ok, lines) = run_copy(&mut source, Box::new(destination));
        assert!(ok, "{lines:#?}");
        assert!(lines.contains(
            &"Preferences: 0 imported (users who already had preferences here keep them)"
                .to_owned()
        ));
        assert!(
            lines.contains(
                &"  juliet: source 1204, archive 1204 (1 new, 1203 already there) ok".to_owned()
            ),
            "{lines:#?}"
        );
        let mut destination = SqliteStore::open(&path).expect("open");
        assert_eq!(
            destination.get_prefs(&juliet()).expect("prefs"),
            Some(changed)
        );
        assert_eq!(
            everything(&mut destination, "juliet"),
            everything(&mut source, "juliet")
        );
    }

    #[test]
    fn an_id_taken_by_another_message_is_a_reported_conflict_not_an_overwrite() {
        let mut source = SqliteStore::open_in_memory().expect("open");
        fill(&mut source);
        let mut destination = SqliteStore::open_in_memory().expect("open");
        let mine = message("j0001", T0 - 5, "mercutio@verona.lit");
        destination.append(&juliet(), &mine, None).expect("append");
        let (ok, lines) = run_copy(&mut source, Box::new(destination));
        assert!(!ok);
        assert!(
            lines.contains(&"  juliet: source 1203, archive 1203 (1202 new, 0 already there, 1 id conflicts) MISMATCH".to_owned()),
            "{lines:#?}"
        );
        assert!(lines.contains(
            &"  conflict: juliet already has a different message with id j0001".to_owned()
        ));
    }

    #[test]
    fn a_message_removed_under_the_reader_neither_stops_the_copy_nor_is_copied_twice() {
        // Prosody may still run on the source: expiry or a delete can remove the very
        // message the next page was to start after.
        let mut source = SqliteStore::open_in_memory().expect("open");
        fill(&mut source);
        let mut pages = OwnerPages::new(juliet());
        let (first, more) = pages.next(&mut source).expect("first page");
        assert_eq!((first.len(), more), (COPY_PAGE, true));
        let last = first.last().expect("last").msg.clone();
        assert_eq!(last.with_resource.as_deref(), Some("balcony"));
        // Removes the last message read and other balcony messages before it, but not
        // the messages that share its timestamp at other resources.
        let filter = DeleteFilter {
            with: Some(WithFilter {
                bare: "romeo@montague.lit".into(),
                resource: Some("balcony".into()),
            }),
            before: Some(last.when + 1),
        };
        source
            .delete_batch(&juliet(), &filter, 10_000)
            .expect("delete");
        let mut rest = Vec::new();
        loop {
            let (batch, more) = pages.next(&mut source).expect("next page");
            rest.extend(batch);
            if !more {
                break;
            }
        }
        let ids: Vec<String> = first
            .iter()
            .chain(&rest)
            .map(|m| m.msg.id.clone())
            .collect();
        let expected: Vec<String> = (0..1203).map(|i| juliets(i).id).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn the_configured_file_is_refused_as_a_source_however_it_is_spelled() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("mam_archive.sqlite");
        SqliteStore::open(&path).expect("create");
        let link = dir.path().join("link.sqlite");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        let data = dir.path().to_str().expect("utf-8 path");
        for source in [
            CopySource::sqlite(None, data, "archive", DatabaseKey::default()),
            CopySource::sqlite(
                Some("./sub/../mam_archive.sqlite"),
                data,
                "archive",
                DatabaseKey::default(),
            ),
            CopySource::sqlite(Some("link.sqlite"), data, "archive", DatabaseKey::default()),
        ] {
            std::fs::create_dir_all(dir.path().join("sub")).expect("mkdir");
            let err = run_full_copy(&source, &sqlite(&path)).expect_err("same file");
            assert!(matches!(err, CopyError::SameDatabase { .. }), "{err}");
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn a_missing_or_foreign_source_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().expect("tmp");
        let into = sqlite(&dir.path().join("new.sqlite"));
        let missing = dir.path().join("missing.sqlite");
        let err = run_full_copy(
            &CopySource::Sqlite(missing.clone(), DatabaseKey::default()),
            &into,
        )
        .expect_err("missing");
        assert_eq!(
            err.to_string(),
            format!(
                "source {0}: cannot open the archive database {0}: no such file",
                missing.display()
            )
        );
        assert_eq!(err.exit_code(), 1);
        assert!(!missing.exists());
        // Prosody's own mod_storage_sql file, say.
        let foreign = dir.path().join("prosody.sqlite");
        let conn = rusqlite::Connection::open(&foreign).expect("create");
        conn.execute_batch("CREATE TABLE prosody (host TEXT, user TEXT, store TEXT)")
            .expect("table");
        let err = run_full_copy(
            &CopySource::Sqlite(foreign.clone(), DatabaseKey::default()),
            &into,
        )
        .expect_err("foreign");
        assert!(
            err.to_string()
                .ends_with("not an archive of this module (no mam_native schema)"),
            "{err}"
        );
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(tables, 1);
    }

    #[test]
    fn connection_strings_become_settings_and_never_show_the_password() {
        let keywords = format!("host=db.example.net port=5433 user=prosody password={SECRET} dbname=xmpp sslmode=require");
        let url = format!("postgresql://prosody:{SECRET}@db.example.net:5433/xmpp?sslmode=require");
        for text in [keywords, url] {
            let source = CopySource::postgres(&text, None).expect("parse");
            let CopySource::Postgres(pg) = &source else {
                panic!("not PostgreSQL: {source:?}");
            };
            assert_eq!(
                (
                    pg.host.as_str(),
                    pg.port,
                    pg.username.as_str(),
                    pg.database.as_str()
                ),
                ("db.example.net", 5433, "prosody", "xmpp")
            );
            assert_eq!(pg.password.as_deref(), Some(SECRET));
            assert_eq!(pg.sslmode, SslMode::Require);
            assert_eq!(
                source.describe(),
                "postgresql://prosody@db.example.net:5433/xmpp"
            );
            assert!(!format!("{source:?}").contains(SECRET));
        }
        // PGPASSWORD when the string has none; libpq's defaults for the rest.
        let source = CopySource::postgres("user=mam", Some(SECRET.into())).expect("parse");
        let CopySource::Postgres(pg) = source else {
            panic!("not PostgreSQL");
        };
        assert_eq!(pg.password.as_deref(), Some(SECRET));
        assert_eq!(
            (pg.host.as_str(), pg.port, pg.database.as_str(), pg.sslmode),
            ("/var/run/postgresql", 5432, "mam", SslMode::Prefer)
        );
        let socket = CopySource::postgres("host=/run/postgresql dbname=x", None).expect("parse");
        assert_eq!(
            socket.describe().split('@').nth(1),
            Some("/run/postgresql:5432/x")
        );
        // Errors say what is wrong without repeating the string.
        for bad in [
            format!("password={SECRET} port=notaport"),
            format!("postgresql://u:{SECRET}@h:notaport/db"),
            format!("password={SECRET} frobnicate=1"),
            format!("password={SECRET} host=a,b"),
            format!("password={SECRET} sslmode=verify-full"),
            format!("password {SECRET}"),
        ] {
            let err = CopySource::postgres(&bad, None).expect_err(&bad);
            assert!(matches!(err, CopyError::BadConnInfo(_)), "{err}");
            assert_eq!(err.exit_code(), 2);
            assert!(!err.to_string().contains(SECRET), "{err}");
        }
    }

    #[test]
    fn sqlite_to_postgresql_and_back_answers_every_find_the_same() {
        let Some(db) = TestDb::create() else { return };
        let dir = tempfile::tempdir().expect("tmp");
        let old = dir.path().join("old.sqlite");
        let mut original = SqliteStore::open(&old).expect("open");
        fill(&mut original);
        let expected = host_view(&mut original);

        let pg = Storage::Postgres(db.settings.clone());
        let (ok, lines) = run_full_copy(
            &CopySource::Sqlite(old.clone(), DatabaseKey::default()),
            &pg,
        )
        .expect("to pg");
        assert!(ok, "{lines:#?}");
        assert_eq!(
            lines[0],
            format!(
                "Importing 1206 messages of 3 users on capulet.lit from {} into {}",
                old.display(),
                db.settings.describe()
            )
        );
        let mut in_pg = PgStore::connect(&db.settings).expect("connect");
        assert_eq!(host_view(&mut in_pg), expected);

        let back = dir.path().join("back.sqlite");
        let from_pg = CopySource::Postgres(db.settings.clone());
        let (ok, lines) = run_full_copy(&from_pg, &sqlite(&back)).expect("back");
        assert!(ok, "{lines:#?}");
        let mut round_trip = SqliteStore::open(&back).expect("open");
        assert_eq!(host_view(&mut round_trip), expected);

        // Once more into PostgreSQL: nothing new.
        let (ok, lines) =
            run_full_copy(&CopySource::Sqlite(back, DatabaseKey::default()), &pg).expect("again");
        assert!(ok);
        assert!(
            lines.contains(
                &"  juliet: source 1203, archive 1203 (0 new, 1203 already there) ok".to_owned()
            ),
            "{lines:#?}"
        );
    }

    #[test]
    fn the_configured_postgresql_database_is_refused_as_a_source_under_another_name() {
        let Some(db) = TestDb::create() else { return };
        PgStore::connect(&db.settings).expect("create the schema");
        let mut other_spelling = db.settings.clone();
        other_spelling.host = match other_spelling.host.as_str() {
            "127.0.0.1" => "localhost".into(),
            _ => other_spelling.host.clone(),
        };
        let err = run_full_copy(
            &CopySource::Postgres(other_spelling),
            &Storage::Postgres(db.settings.clone()),
        )
        .expect_err("same database");
        assert!(matches!(err, CopyError::SameDatabase { .. }), "{err}");
        assert_eq!(err.exit_code(), 2);
        assert!(!err
            .to_string()
            .contains(db.settings.password.as_deref().unwrap_or("\u{0}")));
    }

    #[test]
    fn a_postgresql_database_without_the_archive_is_refused_and_left_as_it_was() {
        let Some(db) = TestDb::create() else { return };
        let err = run_full_copy(
            &CopySource::Postgres(db.settings.clone()),
            &Storage::Sqlite {
                path: tempfile::tempdir().expect("tmp").path().join("x.sqlite"),
                max_pages: None,
                key: crate::config::DatabaseKey::default(),
            },
        )
        .expect_err("no archive");
        assert!(err.to_string().contains("no mam_schema table"), "{err}");
        let tables: i64 = db
            .client()
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'mam_%'",
                &[],
            )
            .expect("count")
            .get(0);
        assert_eq!(tables, 0);
    }
}
