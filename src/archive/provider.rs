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
//!   room's messages. Any other `with` is taken as an occupant JID
//!   (`room@service/nick`): that sender's messages. Stock's presences
//!   (`muc_log_presences`: `with` `presence` for a join, `presence<unavailable` for a
//!   leave) are kept in an archive of their own beside the room's
//!   ([`config::room_presences_user`]), so no message query steps over them; a find
//!   with one of those `with`s reads it, and a find without `with` (a web log
//!   viewer's day page) reads both, merged in time order (a message before a
//!   presence of the same microsecond). Anything else is `unsupported-datatype`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Archive;
use crate::config::{self, Owners, PRESENCE_JOINED_WITH, PRESENCE_LEFT_WITH};
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
pub enum WithModel {
    Accounts,
    Rooms,
}

/// Which rows a store call reaches, from its `with` ([`WithModel::select`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The owner's own rows (an account's messages, a room's messages), all of them
    /// or one partner's.
    Own(Option<WithFilter>),
    /// A room's joins or its leaves (`muc_log_presences`).
    Presences(WithFilter),
    /// A room's messages and presences (stock's `with` = nil), in one time order.
    Both,
}

/// The archive beside a room's that holds its presences.
fn presences_of(room: &Owner) -> Owner {
    Owner::new(&room.host, &config::room_presences_user(&room.user))
}

fn is_presences(owner: &Owner) -> bool {
    config::room_of_presences_user(&owner.user).is_some()
}

impl WithModel {
    fn of(owners: Owners) -> WithModel {
        match owners {
            Owners::Accounts => WithModel::Accounts,
            Owners::Rooms => WithModel::Rooms,
        }
    }

    /// The rows a query's `with` reaches.
    fn select(self, with: Option<&str>) -> Selection {
        match (self, with) {
            (WithModel::Accounts, None) | (WithModel::Rooms, Some(ROOM_MESSAGE_WITH)) => {
                Selection::Own(None)
            }
            (WithModel::Rooms, None) => Selection::Both,
            (WithModel::Rooms, Some(kind @ (PRESENCE_JOINED_WITH | PRESENCE_LEFT_WITH))) => {
                Selection::Presences(WithFilter {
                    bare: kind.to_owned(),
                    resource: None,
                })
            }
            (_, Some(jid)) => Selection::Own(Some(WithFilter::from_jid(jid))),
        }
    }

    /// The archives a selection of `owner`'s rows lies in, each with its `with`
    /// filter: a room's messages first, then its presences (the order ties in time
    /// are broken by when both are read together).
    fn parts(owner: &Owner, selection: &Selection) -> Vec<(Owner, Option<WithFilter>)> {
        match selection {
            Selection::Own(filter) => vec![(owner.clone(), filter.clone())],
            Selection::Presences(filter) => vec![(presences_of(owner), Some(filter.clone()))],
            Selection::Both => vec![(owner.clone(), None), (presences_of(owner), None)],
        }
    }

    /// Whether a wildcard call (every owner of the host) with this selection reaches
    /// the archive of `owner`.
    fn reaches(self, selection: &Selection, owner: &Owner) -> bool {
        match (self, selection) {
            (WithModel::Accounts, _) | (WithModel::Rooms, Selection::Both) => true,
            (WithModel::Rooms, Selection::Own(_)) => !is_presences(owner),
            (WithModel::Rooms, Selection::Presences(_)) => is_presences(owner),
        }
    }

    /// An item's `with` as stock would have stored it.
    fn stock_with(self, owner: &Owner, msg: &ArchivedMessage) -> String {
        match self {
            WithModel::Rooms if is_presences(owner) => msg.with_bare.clone(),
            WithModel::Rooms if msg.with_bare == room_jid(owner) => ROOM_MESSAGE_WITH.to_owned(),
            WithModel::Rooms => WithFilter {
                bare: msg.with_bare.clone(),
                resource: msg.with_resource.clone(),
            }
            .jid(),
            WithModel::Accounts => msg.with_bare.clone(),
        }
    }

    /// Where an item appended (or set) with stock's `with` is kept, the row partner
    /// and the stanza as it is stored; a refusal for what this store does not keep.
    fn stored(
        self,
        owner: &Owner,
        with: Option<&str>,
        mut stanza: Element,
    ) -> std::result::Result<StoredItem, Refusal> {
        let (owner, with_bare, with_resource) = match self {
            WithModel::Accounts => {
                let (bare, resource) = split_resource(with.unwrap_or(""));
                (owner.clone(), bare.to_owned(), resource.map(str::to_owned))
            }
            WithModel::Rooms => {
                // As our mod_muc_mam stores a room's items: from the occupant, to
                // nobody (stock keeps `to` = the room and removes it on the way out).
                stanza.remove_attr("to");
                let nick = stanza
                    .attr("from")
                    .and_then(|f| split_resource(f).1)
                    .map(str::to_owned);
                match (stanza.name.as_str(), with) {
                    ("message", None | Some(ROOM_MESSAGE_WITH)) => {
                        (owner.clone(), room_jid(owner), nick)
                    }
                    ("presence", _) => {
                        // Stock's `with` for a presence is its kind: `presence`, or
                        // `presence<` and its type.
                        let kind = match with {
                            Some(kind @ (PRESENCE_JOINED_WITH | PRESENCE_LEFT_WITH)) => kind,
                            Some(_) => return Err(Refusal::UnsupportedDatatype),
                            None => config::presence_with(stanza.attr("type"))
                                .ok_or(Refusal::UnsupportedDatatype)?,
                        };
                        (presences_of(owner), kind.to_owned(), nick)
                    }
                    _ => return Err(Refusal::UnsupportedDatatype),
                }
            }
        };
        // Read back, every element then carries its namespace, so Lua's get_child()
        // finds children (the engine's own appends do the same).
        if stanza.xmlns().is_none() {
            stanza.set_attr("xmlns", ns::JABBER_CLIENT);
        }
        Ok(StoredItem {
            owner,
            with_bare,
            with_resource,
            stanza,
        })
    }
}

/// An item as it is stored ([`WithModel::stored`]).
struct StoredItem {
    owner: Owner,
    with_bare: String,
    with_resource: Option<String>,
    stanza: Element,
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
    Users { host: String, model: WithModel },
}

/// A find as the store runs it: one request per archive it reads
/// ([`WithModel::parts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindJob {
    model: WithModel,
    parts: Vec<(Owner, FindRequest)>,
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
        /// Where the item may be, tried in this order (a room's messages, then its
        /// presences, when the change does not say which).
        owners: Vec<Owner>,
        id: String,
        change: ItemChange,
    },
    Delete {
        host: String,
        /// `None`: every owner of the host (stock's `username == true`).
        user: Option<String>,
        model: WithModel,
        selection: Selection,
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

    /// The request of a query, without its `with` (which selects archives and rows,
    /// [`WithModel::parts`]).
    fn find_request(&self, query: &StoreQuery) -> FindRequest {
        let ids = match (&query.ids, &query.key) {
            (Some(ids), Some(key)) => Some(ids.iter().filter(|i| *i == key).cloned().collect()),
            (Some(ids), None) => Some(ids.clone()),
            (None, Some(key)) => Some(vec![key.clone()]),
            (None, None) => None,
        };
        FindRequest {
            with: None,
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
        let model = self.model();
        let req = self.find_request(query);
        let selection = model.select(query.with.as_deref());
        FindJob {
            model,
            parts: with_filters(&self.store_owner(user), &selection, &req),
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
        self.submit_read(self.store_owner(user), StoreRead::Find(find))
    }

    /// Queues `summary(user, query)`; answers [`StoreAnswer::Summary`].
    pub fn store_summary(&mut self, user: Option<&str>, query: &StoreQuery) -> Result<JobId> {
        let find = self.find_job(user, query);
        self.submit_read(self.store_owner(user), StoreRead::Summary(find))
    }

    /// Queues `users()`; answers [`StoreAnswer::Users`].
    pub fn store_users(&mut self) -> Result<JobId> {
        let host = self.config.host.clone();
        let model = self.model();
        self.submit_read(Owner::new(&host, ""), StoreRead::Users { host, model })
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
        let item = match self.model().stored(&self.store_owner(user), with, stanza) {
            Ok(item) => item,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let when = when.unwrap_or_else(|| self.clock.now_micros());
        let replace = key.is_some();
        let msg = ArchivedMessage {
            id: key.unwrap_or_else(|| new_archive_id(when)),
            when,
            with_bare: item.with_bare,
            with_resource: item.with_resource,
            xml: to_xml(&item.stanza),
        };
        let limit = self.config.item_limit;
        self.submit_write(StoreWrite::Append {
            owner: item.owner,
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
        let model = self.model();
        let mut change = ItemChange {
            when,
            ..ItemChange::default()
        };
        let owners = match stanza {
            Some(stanza) => {
                // A new stanza without a new `with` keeps the partner the row has; the
                // room model still checks what the stanza is, which says where it is.
                let item = match model.stored(&owner, with, stanza) {
                    Ok(item) => item,
                    Err(refusal) => return Ok(Err(refusal)),
                };
                change.xml = Some(to_xml(&item.stanza));
                if with.is_some() {
                    change.with = Some((item.with_bare, item.with_resource));
                }
                vec![item.owner]
            }
            None => match (model, with) {
                (WithModel::Accounts, Some(with)) => {
                    let (bare, resource) = split_resource(with);
                    change.with = Some((bare.to_owned(), resource.map(str::to_owned)));
                    vec![owner]
                }
                (WithModel::Accounts, None) => vec![owner],
                (WithModel::Rooms, with) => match model.select(with) {
                    Selection::Both => {
                        let presences = presences_of(&owner);
                        vec![owner, presences]
                    }
                    Selection::Own(None) => vec![owner],
                    Selection::Presences(_) => vec![presences_of(&owner)],
                    Selection::Own(Some(_)) => return Ok(Err(Refusal::UnsupportedDatatype)),
                },
            },
        };
        self.submit_write(StoreWrite::Set {
            owners,
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
        let model = self.model();
        self.submit_write(StoreWrite::Delete {
            host: self.config.host.clone(),
            user: user.map(str::to_owned),
            model,
            selection: model.select(query.with.as_deref()),
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

/// One request per archive of `selection`, each with its own `with` filter.
fn with_filters(
    owner: &Owner,
    selection: &Selection,
    req: &FindRequest,
) -> Vec<(Owner, FindRequest)> {
    WithModel::parts(owner, selection)
        .into_iter()
        .map(|(owner, with)| {
            let req = FindRequest {
                with,
                ..req.clone()
            };
            (owner, req)
        })
        .collect()
}

/// Runs a provider read on a reader thread.
pub fn run_read(store: &mut dyn ArchiveStore, read: &StoreRead) -> Result<StoreAnswer> {
    match read {
        StoreRead::Find(find) => {
            if let Some(refusal) = missing_ids(store, find)? {
                return Ok(StoreAnswer::Refused(refusal));
            }
            let (found, total) = match find_parts(store, &find.parts) {
                Err(MamError::ItemNotFound(_)) => {
                    return Ok(StoreAnswer::Refused(Refusal::ItemNotFound))
                }
                other => other?,
            };
            let items = found
                .iter()
                .map(|(part, m)| store_item(find.model, &find.parts[*part].0, m))
                .collect::<Result<_>>()?;
            Ok(StoreAnswer::Items { items, total })
        }
        StoreRead::Summary(find) => summary(store, find),
        StoreRead::Users { host, model } => {
            let mut users: Vec<String> = store
                .owners(host)?
                .into_iter()
                .map(|user| match model {
                    WithModel::Rooms => config::room_of_presences_user(&user)
                        .map(str::to_owned)
                        .unwrap_or(user),
                    WithModel::Accounts => user,
                })
                .collect();
            users.sort();
            users.dedup();
            Ok(StoreAnswer::Users(users))
        }
    }
}

/// An item read by [`find_parts`], with the index of the part it came from.
type PartItem = (usize, ArchivedMessage);

/// A find over one or two archives (a room's messages and presences): each read
/// with the same bounds, then merged in time order, a room's message before its
/// presence at the same microsecond. An archive with nothing in it is not read.
/// The items come with the index of their part.
fn find_parts(
    store: &mut dyn ArchiveStore,
    parts: &[(Owner, FindRequest)],
) -> Result<(Vec<PartItem>, Option<u64>)> {
    let mut live = Vec::with_capacity(parts.len());
    if parts.len() > 1 {
        for (i, (owner, _)) in parts.iter().enumerate() {
            if store.message_count(owner)? > 0 {
                live.push(i);
            }
        }
    }
    if live.len() <= 1 {
        // One archive to read (the first when all are empty: it answers an unknown
        // `before` or `after` as the store does).
        let i = live.first().copied().unwrap_or(0);
        let Some((owner, req)) = parts.get(i) else {
            return Ok((Vec::new(), None));
        };
        let page = store.find(owner, req)?;
        return Ok((page.items.into_iter().map(|m| (i, m)).collect(), page.total));
    }
    let positioned = positioned(store, parts)?;
    let mut merged = Vec::new();
    let mut total = None;
    for &i in &live {
        let (owner, req) = &positioned[i];
        let page = store.find(
            owner,
            &FindRequest {
                total: false,
                ..req.clone()
            },
        )?;
        merged.extend(page.items.into_iter().map(|m| (i, m)));
        if req.total {
            // Counted as the store counts: ignoring `before`, `after` and `limit`.
            let (owner, unpositioned) = &parts[i];
            let count = FindRequest {
                after: Vec::new(),
                before: Vec::new(),
                limit: 0,
                ..unpositioned.clone()
            };
            let n = store.find(owner, &count)?.total.unwrap_or(0);
            total = Some(total.unwrap_or(0) + n);
        }
    }
    let reverse = parts[0].1.reverse;
    merged.sort_by(|(pa, a), (pb, b)| {
        let order = (a.when, pa).cmp(&(b.when, pb));
        if reverse {
            order.reverse()
        } else {
            order
        }
    });
    merged.truncate(parts[0].1.limit);
    Ok((merged, total))
}

/// The requests of several archives read as one, with every `before` and `after` id
/// (which is in one of them) made a bound of the others: an item of archive `i` at
/// time `t` comes before an item of archive `j` at `t'` when `(t, i) < (t', j)`.
/// An id in none of them is `item-not-found`.
fn positioned(
    store: &mut dyn ArchiveStore,
    parts: &[(Owner, FindRequest)],
) -> Result<Vec<(Owner, FindRequest)>> {
    let mut out: Vec<(Owner, FindRequest)> = parts
        .iter()
        .map(|(owner, req)| {
            let req = FindRequest {
                after: Vec::new(),
                before: Vec::new(),
                ..req.clone()
            };
            (owner.clone(), req)
        })
        .collect();
    let Some((_, first)) = parts.first() else {
        return Ok(out);
    };
    for (id, after) in first
        .after
        .iter()
        .map(|id| (id, true))
        .chain(first.before.iter().map(|id| (id, false)))
    {
        let (home, when) = locate(store, parts, id)?;
        for (i, (_, req)) in out.iter_mut().enumerate() {
            match (i == home, after) {
                (true, true) => req.after.push(id.clone()),
                (true, false) => req.before.push(id.clone()),
                (false, true) => {
                    let start = if i > home {
                        when
                    } else {
                        when.saturating_add(1)
                    };
                    req.start = Some(req.start.map_or(start, |s| s.max(start)));
                }
                (false, false) => {
                    let end = if i < home {
                        when
                    } else {
                        when.saturating_sub(1)
                    };
                    req.end = Some(req.end.map_or(end, |e| e.min(end)));
                }
            }
        }
    }
    Ok(out)
}

/// Which of `parts` holds item `id`, and its time.
fn locate(
    store: &mut dyn ArchiveStore,
    parts: &[(Owner, FindRequest)],
    id: &str,
) -> Result<(usize, Micros)> {
    let by_id = FindRequest {
        ids: Some(vec![id.to_owned()]),
        limit: 1,
        ..FindRequest::default()
    };
    for (i, (owner, _)) in parts.iter().enumerate() {
        if let Some(item) = store.find(owner, &by_id)?.items.first() {
            return Ok((i, item.when));
        }
    }
    Err(MamError::ItemNotFound(id.to_owned()))
}

/// `item-not-found` when one of the query's `ids` is in none of its archives.
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
    let mut found = 0;
    for (owner, _) in &find.parts {
        found += store.find(owner, &req)?.items.len();
    }
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

/// [`positioned`] when there are several parts; the parts as they are otherwise.
fn positioned_parts(
    store: &mut dyn ArchiveStore,
    parts: &[(Owner, FindRequest)],
) -> Result<Vec<(Owner, FindRequest)>> {
    match parts.len() {
        0 | 1 => Ok(parts.to_vec()),
        _ => positioned(store, parts),
    }
}

fn summary(store: &mut dyn ArchiveStore, find: &FindJob) -> Result<StoreAnswer> {
    if let Some(refusal) = missing_ids(store, find)? {
        return Ok(StoreAnswer::Refused(refusal));
    }
    let mut by_with: BTreeMap<String, SummaryEntry> = BTreeMap::new();
    let walked = positioned_parts(store, &find.parts).and_then(|parts| {
        for (owner, req) in &parts {
            walk(store, owner, req, |m| {
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
            })?;
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
        StoreWrite::Set { owners, id, change } => {
            for owner in owners {
                if store.update(owner, id, change)? {
                    return Ok(StoreAnswer::Changed);
                }
            }
            Ok(StoreAnswer::Refused(Refusal::ItemNotFound))
        }
        StoreWrite::Delete {
            host,
            user,
            model,
            selection,
            req,
            truncate,
        } => {
            let parts = match user {
                // One owner: its archives, read as one (ids of either bound both).
                Some(user) => {
                    let parts = with_filters(&Owner::new(host, user), selection, req);
                    match positioned_parts(store, &parts) {
                        Err(MamError::ItemNotFound(_)) => {
                            return Ok(StoreAnswer::Refused(Refusal::ItemNotFound))
                        }
                        other => other?,
                    }
                }
                None => {
                    let filter = match selection {
                        Selection::Own(f) => f.clone(),
                        Selection::Presences(f) => Some(f.clone()),
                        Selection::Both => None,
                    };
                    let mut parts = Vec::new();
                    for user in store.owners(host)? {
                        let owner = Owner::new(host, &user);
                        if model.reaches(selection, &owner) {
                            let req = FindRequest {
                                with: filter.clone(),
                                ..req.clone()
                            };
                            parts.push((owner, req));
                        }
                    }
                    parts
                }
            };
            let mut deleted = 0;
            for (owner, req) in &parts {
                match delete_matching(store, owner, req, *truncate) {
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
        let probe = parse_xml("<presence type='probe' from='hall@rooms.lit/romeo'/>").unwrap();
        assert_eq!(
            a.store_append(Some("hall"), None, probe, None, None)
                .unwrap(),
            Err(Refusal::UnsupportedDatatype)
        );
        let iq = parse_xml("<iq type='get' id='q'/>").unwrap();
        assert_eq!(
            a.store_append(Some("hall"), None, iq, None, None).unwrap(),
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

    fn presence(nick: &str, left: bool) -> Element {
        let kind = if left { " type='unavailable'" } else { "" };
        parse_xml(&format!("<presence from='hall@rooms.lit/{nick}'{kind}/>")).unwrap()
    }

    fn keys(answer: StoreAnswer) -> Vec<String> {
        match answer {
            StoreAnswer::Items { items, .. } => items.into_iter().map(|i| i.key).collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_rooms_presences_stay_out_of_its_messages_and_merge_with_them_without_a_with() {
        let (mut a, _dir) = archive(Owners::Rooms, None);
        let m1 = append(&mut a, groupchat("romeo", "one"), 10, None);
        let join = append(&mut a, presence("romeo", false), 10, None);
        let m2 = append(&mut a, groupchat("romeo", "two"), 20, None);
        let leave = append(&mut a, presence("romeo", true), 30, None);
        let m3 = append(&mut a, groupchat("juliet", "three"), 30, None);
        let messages = StoreQuery {
            with: Some(ROOM_MESSAGE_WITH.into()),
            ..StoreQuery::default()
        };
        assert_eq!(
            keys(find(&mut a, messages)),
            [m1.clone(), m2.clone(), m3.clone()]
        );
        let joins = StoreQuery {
            with: Some("presence".into()),
            ..StoreQuery::default()
        };
        match find(&mut a, joins) {
            StoreAnswer::Items { items, .. } => {
                assert_eq!(items.len(), 1);
                assert_eq!(items[0].key, join);
                assert_eq!(items[0].with, "presence");
                assert_eq!(items[0].stanza.attr("from"), Some("hall@rooms.lit/romeo"));
            }
            other => panic!("unexpected {other:?}"),
        }
        // Without a with: both, a message before a presence of the same time.
        let order = [m1, join.clone(), m2.clone(), m3.clone(), leave.clone()];
        assert_eq!(keys(find(&mut a, StoreQuery::default())), order);
        let newest = StoreQuery {
            reverse: true,
            limit: Some(3),
            total: true,
            ..StoreQuery::default()
        };
        match find(&mut a, newest) {
            StoreAnswer::Items { items, total } => {
                let got: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
                assert_eq!(got, [leave.as_str(), m3.as_str(), m2.as_str()]);
                assert_eq!(total, Some(5));
            }
            other => panic!("unexpected {other:?}"),
        }
        // An id of either archive bounds the other.
        for (i, id) in order.iter().enumerate() {
            let after = StoreQuery {
                after: Some(id.clone()),
                ..StoreQuery::default()
            };
            assert_eq!(keys(find(&mut a, after)), order[i + 1..], "after {i}");
            let before = StoreQuery {
                before: Some(id.clone()),
                ..StoreQuery::default()
            };
            assert_eq!(keys(find(&mut a, before)), order[..i], "before {i}");
        }
        let unknown = StoreQuery {
            after: Some("absent".into()),
            ..StoreQuery::default()
        };
        assert_eq!(
            find(&mut a, unknown),
            StoreAnswer::Refused(Refusal::ItemNotFound)
        );
        // users: the room once; a set without a with finds a presence too.
        let job = a.store_users().unwrap();
        match answer(&a, job) {
            StoreAnswer::Users(users) => assert_eq!(users, ["hall"]),
            other => panic!("unexpected {other:?}"),
        }
        let job = a
            .store_set(Some("hall"), &leave, None, Some(40), None)
            .unwrap()
            .unwrap();
        assert_eq!(answer(&a, job), StoreAnswer::Changed);
        // Deleting the room's joins leaves the rest; deleting the room, everything.
        let job = a.store_delete(
            Some("hall"),
            &StoreQuery {
                with: Some("presence".into()),
                ..StoreQuery::default()
            },
        );
        assert_eq!(answer(&a, job.unwrap()), StoreAnswer::Deleted(1));
        let job = a
            .store_delete(Some("hall"), &StoreQuery::default())
            .unwrap();
        assert_eq!(answer(&a, job), StoreAnswer::Deleted(4));
    }

    #[test]
    fn the_engines_own_joins_and_leaves_go_beside_the_room_and_with_it() {
        let (mut a, _dir) = archive(Owners::Rooms, None);
        append(&mut a, groupchat("romeo", "one"), 10, None);
        a.append_presence("hall", "hall@rooms.lit/romeo", false)
            .unwrap();
        a.append_presence("hall", "hall@rooms.lit/romeo", true)
            .unwrap();
        assert!(a.flush(WAIT));
        match find(&mut a, StoreQuery::default()) {
            StoreAnswer::Items { items, .. } => {
                let withs: Vec<&str> = items.iter().map(|i| i.with.as_str()).collect();
                assert_eq!(
                    withs,
                    [ROOM_MESSAGE_WITH, "presence", "presence<unavailable"]
                );
                let join = &items[1].stanza;
                assert!(join.get_child("x", Some(ns::MUC)).is_some());
                assert_eq!(items[2].stanza.attr("type"), Some("unavailable"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let job = a.start_delete_user("hall").unwrap();
        match a.wait_for(job, WAIT).expect("answered").outcome {
            Outcome::Removed(Ok(n)) => assert_eq!(n, 3),
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
