//! The archive backend boundary.
//!
//! Everything above this module speaks in owners, messages, find requests and pages;
//! nothing above it knows SQL. A backend (SQLite, PostgreSQL) implements
//! [`ArchiveStore`]. Every operation is scoped by [`Owner`] (host, user) and every
//! index a backend builds leads with it, so an archive shards cleanly by owner.

pub mod codec;
/// The behaviour every backend must share, as tests each backend runs on itself.
#[cfg(test)]
pub(crate) mod contract;
pub mod postgres;
pub mod schema;
pub mod sqlite;

use crate::config::Storage;
use crate::error::Result;
use crate::jid::split_resource;
use crate::policy::Prefs;
use crate::time::Micros;

/// Opens the configured backend, migrating its schema. `writer`: this is the one
/// connection that writes (SQLite's page cap, `mam_max_db_pages`, applies to it),
/// opened before any other: on an encrypted SQLite file it alone checks the key
/// against a log left by a crash ([`sqlite::SqliteStore::open_keyed`]).
pub fn open(storage: &Storage, writer: bool) -> Result<Box<dyn ArchiveStore>> {
    match storage {
        Storage::Sqlite {
            path,
            max_pages,
            key,
        } => {
            // Every other connection opens after the writer's, which checked the key.
            let mut store = match writer {
                true => sqlite::SqliteStore::open_keyed(path, key)?,
                false => sqlite::SqliteStore::open_beside_writer(path, key)?,
            };
            if let (true, Some(pages)) = (writer, max_pages) {
                store.set_max_pages(*pages)?;
            }
            Ok(Box::new(store))
        }
        Storage::Postgres(settings) => Ok(Box::new(postgres::PgStore::connect(settings)?)),
    }
}

/// Whose archive: a local account on a virtual host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The virtual host (`module.host`), e.g. `example.com`.
    pub host: String,
    /// The account's node part, e.g. `juliet`.
    pub user: String,
}

impl Owner {
    pub fn new(host: &str, user: &str) -> Self {
        Owner {
            host: host.to_owned(),
            user: user.to_owned(),
        }
    }
}

/// One archived message: what is written (the writer's appends, imports) and what
/// is read back (pages, exports, copies) are the same five fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// The archive id (also the stanza-id), from [`crate::id::new_archive_id`] or,
    /// for imports, the source's own id.
    pub id: String,
    /// When it was archived, in microseconds.
    pub when: Micros,
    /// The bare JID of the other party.
    pub with_bare: String,
    /// The other party's resource, when the message was addressed to or from a full
    /// JID. Kept as stored: copying an archive to another backend must keep it, or
    /// full-JID `with` queries would stop matching afterwards.
    pub with_resource: Option<String>,
    /// The stanza as Prosody serialises it (see [`crate::stanza`]).
    pub xml: String,
}

/// The conversation partner a find is restricted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithFilter {
    /// Bare JID, always present.
    pub bare: String,
    /// When the client gave a full JID: only messages with that exact resource match.
    pub resource: Option<String>,
}

impl WithFilter {
    /// The filter for a (prepped) JID: bare matches every resource, full only its own.
    pub fn from_jid(jid: &str) -> WithFilter {
        let (bare, resource) = split_resource(jid);
        WithFilter {
            bare: bare.to_owned(),
            resource: resource.map(str::to_owned),
        }
    }

    /// The JID the filter was made from.
    pub fn jid(&self) -> String {
        let mut jid = self.bare.clone();
        if let Some(r) = &self.resource {
            jid.push('/');
            jid.push_str(r);
        }
        jid
    }
}

/// What to read from one owner's archive. All present constraints apply together.
///
/// Archive order is (timestamp, insertion order): ties in time keep the order in which
/// the messages were stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FindRequest {
    pub with: Option<WithFilter>,
    /// Inclusive lower bound on the timestamp.
    pub start: Option<Micros>,
    /// Inclusive upper bound on the timestamp.
    pub end: Option<Micros>,
    /// Only messages strictly after each of these ids. An id not in this owner's
    /// archive makes the find fail with [`crate::error::MamError::ItemNotFound`].
    pub after: Vec<String>,
    /// Only messages strictly before each of these ids (same rule for unknown ids).
    pub before: Vec<String>,
    /// Only these ids (XEP-0313 extended `ids`); ids not in the archive are simply
    /// absent from the result.
    pub ids: Option<Vec<String>>,
    /// At most this many items.
    pub limit: usize,
    /// Newest first (then the page is the *last* `limit` matches). Items still come
    /// back newest first; the caller decides the order it sends them in.
    pub reverse: bool,
    /// Also count all matches of `with`/`start`/`end`/`ids`, ignoring `after`,
    /// `before` and `limit` (RSM `<count>`).
    pub total: bool,
}

/// The result of a find.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// In the order the request asked for (oldest first, or newest first if reverse).
    pub items: Vec<ArchivedMessage>,
    /// Present when the request asked for `total`.
    pub total: Option<u64>,
}

/// One end of an archive (XEP-0313 `<metadata>` `start`/`end`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveEnd {
    pub id: String,
    pub when: Micros,
}

/// The first and last message of an owner's archive; `None` when it is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveBounds {
    pub first: ArchiveEnd,
    pub last: ArchiveEnd,
}

/// A message from another archive (stock `mod_mam`'s), imported under its own id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedMessage {
    /// The owner's node part; the host is the import's.
    pub user: String,
    /// The message as it will be stored; `msg.id` is the source archive's id.
    pub msg: ArchivedMessage,
}

/// What one import batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Messages that were not in the archive and now are.
    pub inserted: u64,
    /// Messages already in the archive with the same id, time and partner (an earlier
    /// import): left as they are.
    pub already_present: u64,
    /// Ids already in the archive for a *different* message (other time or partner):
    /// left as they are, reported as (user, id).
    pub conflicts: Vec<(String, String)>,
}

/// One owner's archive at a glance (`prosodyctl mod_mam stats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerStats {
    pub user: String,
    pub messages: u64,
    /// Bytes of stored stanzas as stored (compressed ones count their compressed
    /// size): the bulk of the owner's share of the database.
    pub bytes: u64,
    pub oldest: Micros,
    pub newest: Micros,
}

/// Which of an owner's messages a targeted delete removes; all present constraints
/// apply together, and with none the owner's whole archive goes (prefs stay).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteFilter {
    pub with: Option<WithFilter>,
    /// Only messages strictly older than this.
    pub before: Option<Micros>,
}

/// A change to one stored message (the storage provider's `set`, used e.g. to put a
/// tombstone in place of a retracted message): only the present fields change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemChange {
    /// The new stanza text.
    pub xml: Option<String>,
    /// The new timestamp (the message moves to its new place in archive order).
    pub when: Option<Micros>,
    /// The new partner: bare JID (or stock `with` string) and resource.
    pub with: Option<(String, Option<String>)>,
}

/// A per-owner message quota (`storage_archive_item_limit`), applied as stock
/// applies it: an owner over the limit first loses messages older than
/// `expired_before` (what expiry would delete anyway), then, if still over, the
/// oldest. Never a hole in the middle, and the message just stored always stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Most messages an owner keeps (0 keeps the newest one).
    pub limit: u64,
    /// Messages before this are expired (`None`: the archive never expires).
    pub expired_before: Option<Micros>,
}

impl Quota {
    /// A quota with nothing expired.
    pub fn of(limit: u64) -> Quota {
        Quota {
            limit,
            expired_before: None,
        }
    }
}

/// A compression dictionary as the archive keeps it ([`codec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dictionary {
    /// What compressed rows name; from 1, one more for each new dictionary.
    pub version: u32,
    /// When it was trained (the compactor retrains a stale one).
    pub trained_us: Micros,
    pub bytes: Vec<u8>,
}

/// Where the background rewrite's last complete pass ended
/// ([`ArchiveStore::rewrite_mark`]): no row at or before `upto` needed rewriting with
/// dictionary `dictionary` (0: none yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewriteMark {
    pub dictionary: u32,
    pub upto: i64,
}

/// What one batch of the background rewrite ([`ArchiveStore::rewrite_batch`]) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewriteStep {
    /// Where the next batch starts (pass it back as `after`).
    pub cursor: i64,
    /// Rows compressed (or recompressed with a dictionary) by this batch.
    pub rewritten: u64,
    /// Whether the batch reached the end of the archive as it was when it ran.
    pub done: bool,
}

/// A storage backend for message archives and archiving preferences.
pub trait ArchiveStore: Send {
    /// Stores one message, then applies `quota` to its owner ([`Quota`]). Returns how
    /// many old messages the quota removed.
    fn append(&mut self, owner: &Owner, msg: &ArchivedMessage, quota: Option<Quota>)
        -> Result<u64>;

    /// Stores several messages (any owners) as one unit: all or none. The writer
    /// thread's group commit. Returns how many old messages quotas removed.
    fn append_many(
        &mut self,
        items: &[(Owner, ArchivedMessage)],
        quota: Option<Quota>,
    ) -> Result<u64>;

    /// Every stored preference on `host`, for the in-memory copy the event loop reads.
    fn all_prefs(&mut self, host: &str) -> Result<Vec<(String, Prefs)>>;

    /// Reads a page of an owner's archive.
    fn find(&mut self, owner: &Owner, req: &FindRequest) -> Result<Page>;

    /// The first and last message of an owner's archive.
    fn bounds(&mut self, owner: &Owner) -> Result<Option<ArchiveBounds>>;

    /// An owner's stored preferences; `None` if they never set any.
    fn get_prefs(&mut self, owner: &Owner) -> Result<Option<Prefs>>;

    /// Replaces an owner's preferences.
    fn set_prefs(&mut self, owner: &Owner, prefs: &Prefs) -> Result<()>;

    /// Removes an owner's whole archive and preferences (account deletion).
    /// Returns the number of messages removed.
    fn delete_user(&mut self, owner: &Owner) -> Result<u64>;

    /// Removes at most `batch` messages older than `cutoff` (strictly before), across
    /// all owners on `host`, in one short transaction. Returns how many it removed;
    /// fewer than `batch` means nothing older remains.
    fn expire_batch(&mut self, host: &str, cutoff: Micros, batch: usize) -> Result<u64>;

    /// Imports messages under their source ids, in the order given (which becomes
    /// their insertion order, so equal timestamps keep the source's order), in one
    /// transaction. An id the owner already has is left alone: importing twice adds
    /// nothing. No quota applies.
    fn import_batch(&mut self, host: &str, batch: &[ImportedMessage]) -> Result<ImportReport>;

    /// Stores `prefs` unless the owner already has preferences (set through this
    /// module, or by an earlier import). Returns whether it stored them.
    fn set_prefs_if_absent(&mut self, owner: &Owner, prefs: &Prefs) -> Result<bool>;

    /// Every owner on `host` with messages, in name order.
    fn owner_stats(&mut self, host: &str) -> Result<Vec<OwnerStats>>;

    /// How many messages the owner has.
    fn message_count(&mut self, owner: &Owner) -> Result<u64>;

    /// Removes at most `batch` of the owner's messages matching `filter`, oldest first,
    /// in one short transaction. Fewer than `batch` means none is left.
    fn delete_batch(&mut self, owner: &Owner, filter: &DeleteFilter, batch: usize) -> Result<u64>;

    /// The size of the whole database in bytes (all hosts), when the backend knows.
    fn database_bytes(&mut self) -> Result<Option<u64>>;

    // The storage provider's item operations (Prosody's archive store API:
    // `append` with a key, `set`, `delete` by id, `users`), in `sqlite/provider.rs`
    // and `postgres/provider.rs`.

    /// Every owner on `host` with messages, in name order.
    fn owners(&mut self, host: &str) -> Result<Vec<String>>;

    /// Stores `msg`, replacing the owner's message with the same id if there is one,
    /// in one transaction (the replacement takes a new place in insertion order, as
    /// stock's SQL driver gives it a new row). No quota applies. Returns whether a
    /// message was replaced.
    fn replace(&mut self, owner: &Owner, msg: &ArchivedMessage) -> Result<bool>;

    /// Changes the owner's message `id` in place ([`ItemChange`]); returns whether the
    /// owner has such a message.
    fn update(&mut self, owner: &Owner, id: &str, change: &ItemChange) -> Result<bool>;

    /// Removes the owner's messages with these ids in one transaction; ids the owner
    /// does not have are ignored. Returns how many it removed.
    fn delete_ids(&mut self, owner: &Owner, ids: &[String]) -> Result<u64>;

    // Compression (issue 18): every read decodes both stored forms; these are the
    // write side's switch and the background compactor's steps (`crate::compactor`).

    /// Whether the stanzas this connection writes from now on are compressed
    /// (`archive_compression`). Reads handle both forms whatever the setting.
    fn set_compression(&mut self, on: bool);

    /// The newest compression dictionary, `None` before the first is trained.
    fn newest_dictionary(&mut self) -> Result<Option<Dictionary>>;

    /// The stanzas of up to `n` of the most recently stored messages (all owners, as
    /// text): what a dictionary is trained on.
    fn recent_stanzas(&mut self, n: usize) -> Result<Vec<String>>;

    /// Stores a new dictionary under the next version, which writes use from their
    /// next transaction on (every connection looks for newer ones as it writes).
    fn add_dictionary(
        &mut self,
        dictionary: &[u8],
        trained_us: Micros,
        samples: usize,
    ) -> Result<u32>;

    /// Compresses, in one short transaction, the text rows and the rows compressed
    /// without a dictionary among the at most `scan` rows after position `after` (0:
    /// from the start), with the newest dictionary. Rows with an older dictionary stay
    /// as they are (still readable). Any owner, any host: the whole database.
    fn rewrite_batch(&mut self, after: i64, scan: usize) -> Result<RewriteStep>;

    /// Where the last complete rewrite pass ended, if the backend keeps it and nothing
    /// has taken it away since (a text row written anywhere does). `None`: the next
    /// pass walks from the start. PostgreSQL keeps none: every pass walks the table.
    fn rewrite_mark(&mut self) -> Result<Option<RewriteMark>> {
        Ok(None)
    }

    /// Keeps where a complete rewrite pass ended (see [`ArchiveStore::rewrite_mark`]).
    fn set_rewrite_mark(&mut self, _mark: RewriteMark) -> Result<()> {
        Ok(())
    }

    /// Gives up to `pages` free database pages back to the file system (SQLite with
    /// `auto_vacuum = INCREMENTAL`); returns how many bytes went. 0 where the backend
    /// cannot (a SQLite file created before issue 18: see docs/storage-size.md).
    fn release_space(&mut self, _pages: u64) -> Result<u64> {
        Ok(0)
    }

    /// Stops this connection's commits from running the backend's periodic
    /// maintenance of its write-ahead log themselves (SQLite's automatic checkpoint,
    /// which makes the commit that crosses the threshold copy and fsync the log):
    /// another connection's [`ArchiveStore::checkpoint`] does it instead. Returns
    /// whether the backend has such maintenance (PostgreSQL's server does its own).
    fn hand_off_checkpoints(&mut self) -> Result<bool> {
        Ok(false)
    }

    /// Moves what the write-ahead log holds into the database as far as it can
    /// without waiting for readers or writers (SQLite `wal_checkpoint(PASSIVE)`).
    fn checkpoint(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The two per-owner steps of an expiry batch, on one backend's open transaction;
/// [`expire_round_robin`] decides the order.
pub(crate) trait ExpirySteps {
    /// Up to one chunk of the host's owners that have messages, in name order, after
    /// `after` (from the first when `None`).
    fn owners_after(&mut self, after: Option<&str>) -> Result<Vec<String>>;
    /// Deletes up to `max` of `user`'s messages older than the cut-off, oldest first;
    /// returns how many.
    fn expire_owner(&mut self, user: &str, max: i64) -> Result<i64>;
}

/// One expiry batch of at most `want` deletions, walking the host's owners in name
/// order from `resume` (the owner at which the previous batch filled up) and wrapping
/// round once, so repeated small batches go round every owner instead of re-checking
/// the first ones, and a batch that removes less than `want` really checked everyone.
/// `chunk` is how many owners [`ExpirySteps::owners_after`] returns at most.
/// Returns how many it removed and where the next batch should resume.
pub(crate) fn expire_round_robin(
    steps: &mut dyn ExpirySteps,
    resume: Option<String>,
    want: i64,
    chunk: usize,
) -> Result<(i64, Option<String>)> {
    let mut removed: i64 = 0;
    // The owner the last batch stopped at may still have old messages.
    if let Some(user) = &resume {
        removed += steps.expire_owner(user, want - removed)?;
        if removed >= want {
            return Ok((removed, Some(user.clone())));
        }
    }
    // Then the owners after it, then (wrapping) the owners before it.
    for wrapped in [false, true] {
        if wrapped && resume.is_none() {
            break;
        }
        let mut cursor = if wrapped { None } else { resume.clone() };
        loop {
            let owners = steps.owners_after(cursor.as_deref())?;
            for user in &owners {
                if wrapped && resume.as_deref().is_some_and(|r| user.as_str() >= r) {
                    return Ok((removed, None));
                }
                removed += steps.expire_owner(user, want - removed)?;
                if removed >= want {
                    return Ok((removed, Some(user.clone())));
                }
            }
            if owners.len() < chunk {
                break;
            }
            cursor = owners.last().cloned();
        }
    }
    Ok((removed, None))
}
