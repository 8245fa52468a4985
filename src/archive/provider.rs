//! The running archive as a Prosody storage provider: Prosody's archive store API
//! (`append`, `find`, `get`, `set`, `delete`, `summary`, `users`, as 0.12 and 13 call
//! them) over the same rows our `mod_mam` and `mod_muc_mam` write
//! (`lua/mod_storage_mam_native/`, `docs/storage-provider.md`).
//!
//! As everywhere in the running archive, nothing here waits on disk: reads are queued
//! for the reader threads, writes for the writer thread, and the answer comes back as
//! an [`Outcome::Provider`] completion. Only [`Archive::wait_for`] blocks, for callers
//! that must answer synchronously (outside an async runner, or in
//! `prosody-migrator`), and only up to the bound they give.
//!
//! # What stock's `with` means here
//!
//! Stock drivers keep `with` as an opaque string; our rows keep a partner as bare JID
//! and resource. The mapping depends on whose archives the engine holds:
//!
//! - **Accounts** (personal archives): `with` is a JID. Appending splits it at the
//!   first `/`; a find or delete with a bare JID matches every resource, a full JID
//!   only its own (as the engine's own queries do). An item's `with` is the bare JID,
//!   as stock `mod_mam` stores it (our `mod_mam` keeps the resource a message was
//!   addressed to; it stays in the row and in the stanza).
//! - **Rooms** (`muc_log`): stock `mod_muc_mam` stores `"message<groupchat"` for every
//!   message. Our rows keep the room's bare JID and the sender's nick, so every row of
//!   a room is a `"message<groupchat"` item, and a find with that `with` is the whole
//!   room. Any other `with` is taken as an occupant JID (`room@service/nick`). Only
//!   messages are stored: stock's presences (`muc_log_presences`), which stock never
//!   returns either, are refused as `unsupported-datatype`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Archive;
use crate::config::Owners;
use crate::error::{MamError, Result};
use crate::id::new_archive_id;
use crate::jid::split_resource;
use crate::mailbox::{Completion, JobId, Outcome};
use crate::ns;
use crate::reader::{ReadJob, ReadOp};
use crate::stanza::{parse_xml, to_xml, Element};
use crate::store::{
    ArchiveStore, ArchivedMessage, DeleteFilter, FindRequest, ItemChange, Owner, WithFilter,
};
use crate::time::Micros;
use crate::writer::WriteOp;

/// Stock `mod_muc_mam`'s `with` for a room's groupchat messages.
pub const ROOM_MESSAGE_WITH: &str = "message<groupchat";

/// Ids read or deleted per step when a delete or a summary walks an archive.
const WALK_PAGE: usize = 1000;

/// A query as Prosody's archive store API gives it to `find`, `summary` and `delete`,
/// with times already in microseconds (the Lua boundary converts seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreQuery {
    /// Inclusive lower bound on the time.
    pub start: Option<Micros>,
    /// Inclusive upper bound on the time.
    pub end: Option<Micros>,
    /// Stock's `with` string (see the module documentation).
    pub with: Option<String>,
    /// One item by id (stock's `key`; unknown is no match, not an error).
    pub key: Option<String>,
    /// Only these ids; one the archive does not have makes the find `item-not-found`.
    pub ids: Option<Vec<String>>,
    /// Only items strictly before this id; unknown is `item-not-found`.
    pub before: Option<String>,
    /// Only items strictly after this id; unknown is `item-not-found`.
    pub after: Option<String>,
    /// At most this many items; `None` is all of them.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
    /// Also count the matches (ignoring `before`, `after` and `limit`, as stock's SQL
    /// driver counts).
    pub total: bool,
    /// Delete only: keep the newest `n` matches (the oldest with `reverse`).
    pub truncate: Option<u64>,
}

/// An expected refusal, named as stock drivers name it (`nil, "quota-limit"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An id named by `before`, `after`, `ids` (or `set`'s key) is not in the archive.
    ItemNotFound,
    /// The owner has `storage_archive_item_limit` items already.
    QuotaLimit,
    /// Not something this store keeps (a room store keeps groupchat messages only).
    UnsupportedDatatype,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ItemNotFound => "item-not-found",
            Refusal::QuotaLimit => "quota-limit",
            Refusal::UnsupportedDatatype => "unsupported-datatype",
        }
    }
}

/// One item as the store API returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreItem {
    pub key: String,
    pub when: Micros,
    /// Stock's `with` string for this item.
    pub with: String,
    pub stanza: Element,
}

/// One line of `summary`: the items of one `with`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryEntry {
    pub with: String,
    pub count: u64,
    pub earliest: Micros,
    pub latest: Micros,
    /// The newest `<body>` text among them (stock's internal driver gives it).
    pub body: Option<String>,
}

/// What a provider job produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAnswer {
    /// `find`: the items in the order asked for, and the total when asked.
    Items {
        items: Vec<StoreItem>,
        total: Option<u64>,
    },
    Summary(Vec<SummaryEntry>),
    Users(Vec<String>),
    /// `append`: the item's key.
    Stored(String),
    /// `set`: changed.
    Changed,
    /// `delete`: how many items went.
    Deleted(u64),
    Refused(Refusal),
}

/// How stock's `with` maps onto the rows of one owner ([the module doc](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WithModel {
    Accounts,
    Rooms,
}

impl WithModel {
    fn of(owners: Owners) -> WithModel {
        match owners {
            Owners::Accounts => WithModel::Accounts,
            Owners::Rooms => WithModel::Rooms,
        }
    }

    /// The filter a query's `with` becomes; `None` matches every row.
    fn filter(self, with: Option<&str>) -> Option<WithFilter> {
        match (self, with) {
            (_, None) | (WithModel::Rooms, Some(ROOM_MESSAGE_WITH)) => None,
            (_, Some(jid)) => Some(WithFilter::from_jid(jid)),
        }
    }

    /// An item's `with` as stock would have stored it.
    fn stock_with(self, owner: &Owner, msg: &ArchivedMessage) -> String {
        match self {
            WithModel::Rooms if msg.with_bare == room_jid(owner) => ROOM_MESSAGE_WITH.to_owned(),
            WithModel::Rooms => WithFilter {
                bare: msg.with_bare.clone(),
                resource: msg.with_resource.clone(),
            }
            .jid(),
            WithModel::Accounts => msg.with_bare.clone(),
        }
    }

    /// The row partner for an item appended (or set) with stock's `with`, and the
    /// stanza as it is stored; a refusal for what this store does not keep.
    fn stored(
        self,
        owner: &Owner,
        with: Option<&str>,
        mut stanza: Element,
    ) -> std::result::Result<(String, Option<String>, Element), Refusal> {
        let partner = match self {
            WithModel::Accounts => {
                let (bare, resource) = split_resource(with.unwrap_or(""));
                (bare.to_owned(), resource.map(str::to_owned))
            }
            WithModel::Rooms => {
                if stanza.name != "message" || !matches!(with, None | Some(ROOM_MESSAGE_WITH)) {
                    return Err(Refusal::UnsupportedDatatype);
                }
                // As our mod_muc_mam stores a room message: from the occupant, to
                // nobody (stock keeps `to` = the room and removes it on the way out).
                stanza.remove_attr("to");
                let nick = stanza.attr("from").and_then(|f| split_resource(f).1);
                (room_jid(owner), nick.map(str::to_owned))
            }
        };
        // Read back, every element then carries its namespace, so Lua's get_child()
        // finds children (the engine's own appends do the same).
        if stanza.xmlns().is_none() {
            stanza.set_attr("xmlns", ns::JABBER_CLIENT);
        }
        Ok((partner.0, partner.1, stanza))
    }
}

/// A room's bare JID from its owner: `node@service`, or the service itself for the
/// service's own archive (stock's `nil` username).
fn room_jid(owner: &Owner) -> String {
    if owner.user.is_empty() {
        owner.host.clone()
    } else {
        format!("{}@{}", owner.user, owner.host)
    }
}

/// A read for the reader threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreRead {
    Find(FindJob),
    Summary(FindJob),
    Users { host: String },
}

/// A find as the store runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindJob {
    owner: Owner,
    model: WithModel,
    req: FindRequest,
    /// The query's `ids`, each of which must exist.
    must_exist: Vec<String>,
}

/// A write for the writer thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreWrite {
    Append {
        owner: Owner,
        msg: ArchivedMessage,
        /// A key was given: replace the item with that key if there is one.
        replace: bool,
        /// `storage_archive_item_limit`.
        limit: Option<u64>,
    },
    Set {
        owner: Owner,
        id: String,
        change: ItemChange,
    },
    Delete {
        host: String,
        /// `None`: every owner of the host (stock's `username == true`).
        user: Option<String>,
        req: FindRequest,
        truncate: Option<(u64, bool)>,
    },
}

impl Archive {
    /// The owner of a store API call: stock's `nil` username is `""`, as stock's SQL
    /// driver stores it.
    fn store_owner(&self, user: Option<&str>) -> Owner {
        self.owner(user.unwrap_or(""))
    }

    fn model(&self) -> WithModel {
        WithModel::of(self.config.owners)
    }

    fn find_request(&self, query: &StoreQuery) -> FindRequest {
        let ids = match (&query.ids, &query.key) {
            (Some(ids), Some(key)) => Some(ids.iter().filter(|i| *i == key).cloned().collect()),
            (Some(ids), None) => Some(ids.clone()),
            (None, Some(key)) => Some(vec![key.clone()]),
            (None, None) => None,
        };
        FindRequest {
            with: self.model().filter(query.with.as_deref()),
            start: query.start,
            end: query.end,
            after: query.after.iter().cloned().collect(),
            before: query.before.iter().cloned().collect(),
            ids,
            limit: query.limit.unwrap_or(usize::MAX),
            reverse: query.reverse,
            total: query.total,
        }
    }

    fn find_job(&self, user: Option<&str>, query: &StoreQuery) -> FindJob {
        FindJob {
            owner: self.store_owner(user),
            model: self.model(),
            req: self.find_request(query),
            must_exist: query.ids.clone().unwrap_or_default(),
        }
    }

    fn submit_read(&mut self, owner: Owner, read: StoreRead) -> Result<JobId> {
        let job = self.new_job();
        self.readers.submit(ReadJob {
            job,
            after_write: self.writer.queued(),
            owner,
            op: ReadOp::Provider(Box::new(read)),
        })?;
        Ok(job)
    }

    fn submit_write(&mut self, op: StoreWrite) -> Result<JobId> {
        let job = self.new_job();
        self.writer.submit(WriteOp::Provider {
            job,
            op: Box::new(op),
        })?;
        Ok(job)
    }

    /// Queues `find(user, query)`; answers [`StoreAnswer::Items`] or a refusal.
    pub fn store_find(&mut self, user: Option<&str>, query: &StoreQuery) -> Result<JobId> {
        let find = self.find_job(user, query);
        self.submit_read(find.owner.clone(), StoreRead::Find(find))
    }

    /// Queues `summary(user, query)`; answers [`StoreAnswer::Summary`].
    pub fn store_summary(&mut self, user: Option<&str>, query: &StoreQuery) -> Result<JobId> {
        let find = self.find_job(user, query);
        self.submit_read(find.owner.clone(), StoreRead::Summary(find))
    }

    /// Queues `users()`; answers [`StoreAnswer::Users`].
    pub fn store_users(&mut self) -> Result<JobId> {
        let host = self.config.host.clone();
        self.submit_read(Owner::new(&host, ""), StoreRead::Users { host })
    }

    /// Queues `append(user, key, stanza, when, with)`: a new item (a new id when `key`
    /// is `None`) or the replacement of the item `key`. Refused at once when this
    /// store does not keep such an item.
    pub fn store_append(
        &mut self,
        user: Option<&str>,
        key: Option<String>,
        stanza: Element,
        when: Option<Micros>,
        with: Option<&str>,
    ) -> Result<std::result::Result<JobId, Refusal>> {
        let owner = self.store_owner(user);
        let (with_bare, with_resource, stanza) = match self.model().stored(&owner, with, stanza) {
            Ok(stored) => stored,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let when = when.unwrap_or_else(|| self.clock.now_micros());
        let replace = key.is_some();
        let msg = ArchivedMessage {
            id: key.unwrap_or_else(|| new_archive_id(when)),
            when,
            with_bare,
            with_resource,
            xml: to_xml(&stanza),
        };
        let limit = self.config.item_limit;
        self.submit_write(StoreWrite::Append {
            owner,
            msg,
            replace,
            limit,
        })
        .map(Ok)
    }

    /// Queues `set(user, key, stanza, when, with)`: changes what is given of item
    /// `key`; answers [`StoreAnswer::Changed`] or `item-not-found`.
    pub fn store_set(
        &mut self,
        user: Option<&str>,
        key: &str,
        stanza: Option<Element>,
        when: Option<Micros>,
        with: Option<&str>,
    ) -> Result<std::result::Result<JobId, Refusal>> {
        let owner = self.store_owner(user);
        let mut change = ItemChange {
            when,
            ..ItemChange::default()
        };
        match stanza {
            Some(stanza) => {
                // A new stanza without a new `with` keeps the partner the row has; the
                // room model still checks the stanza is a message.
                let (bare, resource, stanza) = match self.model().stored(&owner, with, stanza) {
                    Ok(stored) => stored,
                    Err(refusal) => return Ok(Err(refusal)),
                };
                change.xml = Some(to_xml(&stanza));
                if with.is_some() {
                    change.with = Some((bare, resource));
                }
            }
            None => {
                if let Some(with) = with {
                    if self.model() == WithModel::Rooms && with != ROOM_MESSAGE_WITH {
                        return Ok(Err(Refusal::UnsupportedDatatype));
                    }
                    if self.model() == WithModel::Accounts {
                        let (bare, resource) = split_resource(with);
                        change.with = Some((bare.to_owned(), resource.map(str::to_owned)));
                    }
                }
            }
        }
        self.submit_write(StoreWrite::Set {
            owner,
            id: key.to_owned(),
            change,
        })
        .map(Ok)
    }

    /// Queues `delete(user, query)`; `user == None` is every owner of the host
    /// (stock's `username == true`). Answers [`StoreAnswer::Deleted`] or
    /// `item-not-found` (an unknown `before`/`after`).
    pub fn store_delete(&mut self, user: Option<&str>, query: &StoreQuery) -> Result<JobId> {
        let req = FindRequest {
            limit: usize::MAX,
            total: false,
            ..self.find_request(query)
        };
        self.submit_write(StoreWrite::Delete {
            host: self.config.host.clone(),
            user: user.map(str::to_owned),
            req,
            truncate: query.truncate.map(|n| (n, query.reverse)),
        })
    }

    /// Blocks until job `job` completes, at most `timeout`, and returns its completion
    /// (taken out of the mailbox; other completions stay for the loop). For callers
    /// that must answer synchronously; `None` when it did not complete in time (its
    /// completion then reaches the loop as usual, where nobody waits for it any more).
    pub fn wait_for(&self, job: JobId, timeout: Duration) -> Option<Completion> {
        let deadline = Instant::now() + timeout;
        // A short spin first: a small read is done within it, and sleeping would
        // cost more than the read.
        if let Some(c) = self
            .mailbox
            .claim(job, timeout.min(Duration::from_micros(300)))
        {
            return Some(c);
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            std::thread::sleep((deadline - now).min(Duration::from_micros(200)));
            if let Some(c) = self.mailbox.claim(job, Duration::ZERO) {
                return Some(c);
            }
        }
    }
}

/// Runs a provider read on a reader thread.
pub fn run_read(store: &mut dyn ArchiveStore, read: &StoreRead) -> Result<StoreAnswer> {
    match read {
        StoreRead::Find(find) => {
            if let Some(refusal) = missing_ids(store, find)? {
                return Ok(StoreAnswer::Refused(refusal));
            }
            let page = match store.find(&find.owner, &find.req) {
                Err(MamError::ItemNotFound(_)) => {
                    return Ok(StoreAnswer::Refused(Refusal::ItemNotFound))
                }
                other => other?,
            };
            let items = page
                .items
                .iter()
                .map(|m| store_item(find.model, &find.owner, m))
                .collect::<Result<_>>()?;
            Ok(StoreAnswer::Items {
                items,
                total: page.total,
            })
        }
        StoreRead::Summary(find) => summary(store, find),
        StoreRead::Users { host } => Ok(StoreAnswer::Users(store.owners(host)?)),
    }
}

/// `item-not-found` when one of the query's `ids` is not in the owner's archive.
fn missing_ids(store: &mut dyn ArchiveStore, find: &FindJob) -> Result<Option<Refusal>> {
    if find.must_exist.is_empty() {
        return Ok(None);
    }
    let mut wanted = find.must_exist.clone();
    wanted.sort();
    wanted.dedup();
    let req = FindRequest {
        limit: wanted.len(),
        ids: Some(wanted.clone()),
        ..FindRequest::default()
    };
    let found = store.find(&find.owner, &req)?.items.len();
    Ok((found < wanted.len()).then_some(Refusal::ItemNotFound))
}

fn store_item(model: WithModel, owner: &Owner, msg: &ArchivedMessage) -> Result<StoreItem> {
    let stanza = parse_xml(&msg.xml)
        .map_err(|e| MamError::Corrupt(format!("archived item {}: {e}", msg.id)))?;
    Ok(StoreItem {
        key: msg.id.clone(),
        when: msg.when,
        with: model.stock_with(owner, msg),
        stanza,
    })
}

/// Every match of `find`'s filters, walked a page at a time in archive order.
fn walk(
    store: &mut dyn ArchiveStore,
    owner: &Owner,
    req: &FindRequest,
    mut each: impl FnMut(&ArchivedMessage) -> Result<()>,
) -> Result<()> {
    let mut page_req = FindRequest {
        limit: WALK_PAGE,
        reverse: false,
        total: false,
        ..req.clone()
    };
    loop {
        let page = store.find(owner, &page_req)?;
        for m in &page.items {
            each(m)?;
        }
        match page.items.last() {
            Some(last) if page.items.len() == WALK_PAGE => {
                // Strictly after the last one seen, and still after the query's own.
                page_req.after = req.after.clone();
                page_req.after.push(last.id.clone());
            }
            _ => return Ok(()),
        }
    }
}

fn summary(store: &mut dyn ArchiveStore, find: &FindJob) -> Result<StoreAnswer> {
    if let Some(refusal) = missing_ids(store, find)? {
        return Ok(StoreAnswer::Refused(refusal));
    }
    let mut by_with: BTreeMap<String, SummaryEntry> = BTreeMap::new();
    let owner = &find.owner;
    let walked = walk(store, owner, &find.req, |m| {
        let with = find.model.stock_with(owner, m);
        let body = parse_xml(&m.xml)
            .ok()
            .and_then(|el| el.get_child_text("body", None));
        let entry = by_with.entry(with.clone()).or_insert(SummaryEntry {
            with,
            count: 0,
            earliest: m.when,
            latest: m.when,
            body: None,
        });
        entry.count += 1;
        entry.earliest = entry.earliest.min(m.when);
        entry.latest = entry.latest.max(m.when);
        if body.is_some() {
            entry.body = body;
        }
        Ok(())
    });
    match walked {
        Err(MamError::ItemNotFound(_)) => Ok(StoreAnswer::Refused(Refusal::ItemNotFound)),
        Err(e) => Err(e),
        Ok(()) => Ok(StoreAnswer::Summary(by_with.into_values().collect())),
    }
}

/// Runs a provider write on the writer thread: one answer, never retried (a failure
/// goes back to the caller, as a stock driver's would).
pub fn apply_write(store: &mut dyn ArchiveStore, write: &StoreWrite) -> Result<StoreAnswer> {
    match write {
        StoreWrite::Append {
            owner,
            msg,
            replace,
            limit,
        } => {
            if let Some(limit) = limit {
                if store.message_count(owner)? >= *limit {
                    return Ok(StoreAnswer::Refused(Refusal::QuotaLimit));
                }
            }
            if *replace {
                store.replace(owner, msg)?;
            } else {
                store.append(owner, msg, None)?;
            }
            Ok(StoreAnswer::Stored(msg.id.clone()))
        }
        StoreWrite::Set { owner, id, change } => Ok(match store.update(owner, id, change)? {
            true => StoreAnswer::Changed,
            false => StoreAnswer::Refused(Refusal::ItemNotFound),
        }),
        StoreWrite::Delete {
            host,
            user,
            req,
            truncate,
        } => {
            let owners = match user {
                Some(user) => vec![user.clone()],
                None => store.owners(host)?,
            };
            let mut deleted = 0;
            for user in owners {
                match delete_matching(store, &Owner::new(host, &user), req, *truncate) {
                    Ok(n) => deleted += n,
                    Err(MamError::ItemNotFound(_)) => {
                        return Ok(StoreAnswer::Refused(Refusal::ItemNotFound))
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(StoreAnswer::Deleted(deleted))
        }
    }
}

/// Deletes one owner's matches: by the store's batched delete when only `with` and
/// `end` filter (deleting all, or everything older than a time: stock's expiry and
/// room destruction), else by collecting the matching ids first.
fn delete_matching(
    store: &mut dyn ArchiveStore,
    owner: &Owner,
    req: &FindRequest,
    truncate: Option<(u64, bool)>,
) -> Result<u64> {
    let simple = truncate.is_none()
        && req.start.is_none()
        && req.ids.is_none()
        && req.after.is_empty()
        && req.before.is_empty()
        && req.end.is_none_or(|end| end < Micros::MAX);
    if simple {
        let filter = DeleteFilter {
            with: req.with.clone(),
            // Inclusive end: strictly before the next microsecond.
            before: req.end.map(|end| end + 1),
        };
        let mut deleted = 0;
        loop {
            let n = store.delete_batch(owner, &filter, WALK_PAGE)?;
            deleted += n;
            if n < WALK_PAGE as u64 {
                return Ok(deleted);
            }
        }
    }
    let mut ids = Vec::new();
    walk(store, owner, req, |m| {
        ids.push(m.id.clone());
        Ok(())
    })?;
    if let Some((keep, keep_oldest)) = truncate {
        let keep = usize::try_from(keep).unwrap_or(usize::MAX).min(ids.len());
        if keep_oldest {
            ids.drain(..keep);
        } else {
            ids.truncate(ids.len() - keep);
        }
    }
    let mut deleted = 0;
    for chunk in ids.chunks(WALK_PAGE) {
        deleted += store.delete_ids(owner, chunk)?;
    }
    Ok(deleted)
}

/// The answer of a provider job, as the mailbox carries it.
pub fn outcome(answer: Result<StoreAnswer>) -> Outcome {
    Outcome::Provider(Box::new(answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, RawValue};
    use crate::store::sqlite::SqliteStore;
    use crate::time::SystemClock;
    use std::collections::HashMap;
    use std::sync::Arc;

    const WAIT: Duration = Duration::from_secs(10);

    fn archive(owners: Owners, limit: Option<f64>) -> (Archive, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut map: HashMap<String, RawValue> = HashMap::new();
        if let Some(n) = limit {
            map.insert("storage_archive_item_limit".into(), RawValue::Number(n));
        }
        let data = dir.path().to_string_lossy().into_owned();
        let source = move |n: &str| map.get(n).cloned();
        let config = Config::for_owners(owners, "rooms.lit", &data, &source).unwrap();
        let path = config.storage.sqlite_path().unwrap().to_path_buf();
        let writer = Box::new(SqliteStore::open(&path).unwrap());
        let readers: Vec<Box<dyn ArchiveStore>> = vec![Box::new(SqliteStore::open(&path).unwrap())];
        let a = Archive::with_stores(config, writer, readers, Arc::new(SystemClock)).unwrap();
        (a, dir)
    }

    fn answer(a: &Archive, job: JobId) -> StoreAnswer {
        match a.wait_for(job, WAIT).expect("answered").outcome {
            Outcome::Provider(answer) => answer.expect("no failure"),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn groupchat(nick: &str, body: &str) -> Element {
        parse_xml(&format!(
            "<message type='groupchat' from='hall@rooms.lit/{nick}' to='hall@rooms.lit'><body>{body}</body></message>"
        ))
        .unwrap()
    }

    fn append(a: &mut Archive, el: Element, when: Micros, with: Option<&str>) -> String {
        let job = a
            .store_append(Some("hall"), None, el, Some(when), with)
            .unwrap()
            .unwrap();
        match answer(a, job) {
            StoreAnswer::Stored(key) => key,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn find(a: &mut Archive, query: StoreQuery) -> StoreAnswer {
        let job = a.store_find(Some("hall"), &query).unwrap();
        answer(a, job)
    }

    #[test]
    fn a_room_store_keeps_groupchat_messages_as_our_room_rows_and_answers_in_stocks_terms() {
        let (mut a, _dir) = archive(Owners::Rooms, None);
        let first = append(
            &mut a,
            groupchat("romeo", "one"),
            1,
            Some(ROOM_MESSAGE_WITH),
        );
        let second = append(&mut a, groupchat("juliet", "two"), 2, None);
        let presence = parse_xml("<presence from='hall@rooms.lit/romeo'/>").unwrap();
        assert_eq!(
            a.store_append(Some("hall"), None, presence, None, Some("presence"))
                .unwrap(),
            Err(Refusal::UnsupportedDatatype)
        );
        let everything = StoreQuery {
            with: Some(ROOM_MESSAGE_WITH.into()),
            total: true,
            ..StoreQuery::default()
        };
        match find(&mut a, everything) {
            StoreAnswer::Items { items, total } => {
                assert_eq!(total, Some(2));
                let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
                assert_eq!(keys, [first.as_str(), second.as_str()]);
                assert!(items.iter().all(|i| i.with == ROOM_MESSAGE_WITH));
                assert_eq!(items[0].stanza.attr("to"), None);
                assert_eq!(items[0].stanza.attr("from"), Some("hall@rooms.lit/romeo"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let juliet = StoreQuery {
            with: Some("hall@rooms.lit/juliet".into()),
            ..StoreQuery::default()
        };
        match find(&mut a, juliet) {
            StoreAnswer::Items { items, .. } => assert_eq!(items.len(), 1),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn an_unknown_id_among_ids_is_item_not_found_and_a_full_archive_is_quota_limit() {
        let (mut a, _dir) = archive(Owners::Rooms, Some(2.0));
        let first = append(&mut a, groupchat("romeo", "one"), 1, None);
        append(&mut a, groupchat("romeo", "two"), 2, None);
        let ids = StoreQuery {
            ids: Some(vec![first.clone(), "absent".into()]),
            ..StoreQuery::default()
        };
        assert_eq!(
            find(&mut a, ids),
            StoreAnswer::Refused(Refusal::ItemNotFound)
        );
        let job = a
            .store_append(Some("hall"), None, groupchat("romeo", "three"), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(answer(&a, job), StoreAnswer::Refused(Refusal::QuotaLimit));
        // Replacing is refused at the limit too, as stock's drivers count first.
        let job = a
            .store_append(Some("hall"), Some(first), groupchat("x", "y"), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(answer(&a, job), StoreAnswer::Refused(Refusal::QuotaLimit));
    }

    #[test]
    fn truncate_keeps_the_newest_and_a_wildcard_delete_reaches_every_owner() {
        let (mut a, _dir) = archive(Owners::Rooms, None);
        for i in 0..5 {
            append(&mut a, groupchat("romeo", &i.to_string()), i, None);
        }
        let job = a
            .store_append(Some("lobby"), None, groupchat("x", "y"), Some(1), None)
            .unwrap()
            .unwrap();
        answer(&a, job);
        let truncate = StoreQuery {
            truncate: Some(2),
            ..StoreQuery::default()
        };
        let job = a.store_delete(Some("hall"), &truncate).unwrap();
        assert_eq!(answer(&a, job), StoreAnswer::Deleted(3));
        let old = StoreQuery {
            end: Some(3),
            ..StoreQuery::default()
        };
        let job = a.store_delete(None, &old).unwrap();
        assert_eq!(answer(&a, job), StoreAnswer::Deleted(2));
        match find(&mut a, StoreQuery::default()) {
            StoreAnswer::Items { items, .. } => assert_eq!(items.len(), 1),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn wait_for_gives_up_after_its_bound_and_leaves_other_completions_queued() {
        let (mut a, _dir) = archive(Owners::Rooms, None);
        let job = a.store_users().unwrap();
        let other = a.store_users().unwrap();
        assert!(a.wait_for(job + 100, Duration::from_millis(20)).is_none());
        assert!(a.wait_for(job, WAIT).is_some());
        assert!(a.wait_for(other, WAIT).is_some());
    }
}
