//! Importing stock `mod_mam` archives: `prosodyctl mod_mam import`.
//!
//! The stock archive is read through Prosody's own storage drivers
//! (`mod_storage_internal`, `mod_storage_sql`), which only Lua can call: the Lua
//! boundary hands them over as a [`StockArchive`]. [`import_stock`] runs the import:
//! users, counts for the ETA, messages in batches stored under their source ids (so a
//! second run adds nothing and a client's saved ids stay valid) by an [`Importer`],
//! which keeps a tally per user and reports progress with a rate and an ETA from an
//! injected clock, then preferences, then a verification of every user's count.
//!
//! Room archives (`prosodyctl mod_muc_mam import`, stock mod_muc_mam's `muc_log`
//! store) go through the same run, one room in place of one user; [`room_item`] says
//! what becomes of each stored item (see there).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{owner_nouns, AdminError};
use crate::config::{self, Config, Owners};
use crate::error::{MamError, Result};
use crate::jid::split_resource;
use crate::ns;
use crate::policy::{DefaultPolicy, Prefs};
use crate::stanza::{to_xml, Element, Node};
use crate::store;
use crate::store::{ArchiveStore, ArchivedMessage, ImportedMessage, Owner};
use crate::time::{Clock, Micros};

/// One message as a stock archive store returns it: `archive:find()` yields
/// `id, stanza, when, with`.
#[derive(Debug, Clone)]
pub struct SourceMessage {
    pub id: String,
    /// Seconds since the epoch; stock stamps whole seconds, other writers may not.
    pub when_secs: f64,
    /// The other party as stock stored it (a bare JID), possibly with a resource.
    pub with: String,
    pub stanza: Element,
}

/// Converts a source message to what the store keeps. The stanza is stored the way
/// our own archiving stores it: with an explicit `jabber:client` namespace.
pub fn to_imported(user: &str, src: &SourceMessage) -> Result<ImportedMessage> {
    let when = source_stamp(user, src)?;
    let (bare, resource) = split_resource(&src.with);
    let mut stanza = src.stanza.clone();
    if stanza.xmlns().is_none() {
        stanza.set_attr("xmlns", ns::JABBER_CLIENT);
    }
    Ok(ImportedMessage {
        user: user.to_owned(),
        msg: ArchivedMessage {
            id: src.id.clone(),
            when,
            with_bare: bare.to_owned(),
            with_resource: resource.map(str::to_owned),
            xml: to_xml(&stanza),
        },
    })
}

/// A source message's stamp in microseconds, after checking it has an id.
fn source_stamp(user: &str, src: &SourceMessage) -> Result<Micros> {
    if src.id.is_empty() {
        return Err(MamError::Corrupt(format!(
            "a message of {} has an empty id",
            user
        )));
    }
    if !src.when_secs.is_finite() || src.when_secs.abs() > 9.0e12 {
        return Err(MamError::Corrupt(format!(
            "message {} of {} has an invalid timestamp {}",
            src.id, user, src.when_secs
        )));
    }
    // Whole seconds, then the fraction's microseconds cut (not rounded) as Prosody 13
    // writes a sub-second `when` out (util.datetime): the stamp clients saw from the
    // stock module is the stamp they see from ours.
    let whole = src.when_secs.floor();
    let fraction = ((src.when_secs - whole) * 1_000_000.0).floor();
    Ok(whole as Micros * 1_000_000 + fraction as Micros)
}

/// An item of a stock room archive that is not imported, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RoomSkip {
    /// Neither a `<message>` nor a join or leave `<presence>` (stock writes none).
    NotAMessage,
}

impl RoomSkip {
    /// The plural the summary counts them under.
    pub fn plural(self) -> &'static str {
        match self {
            RoomSkip::NotAMessage => "other stanzas",
        }
    }
}

/// What becomes of one item of a stock room archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomItem {
    Message(ImportedMessage),
    /// A join or leave stock stored with `muc_log_presences`, for the room's
    /// presences archive ([`config::room_presences_user`]).
    Presence(ImportedMessage),
    Skipped(RoomSkip),
}

/// Converts an item of stock mod_muc_mam's `muc_log` store for `room` (its node) on
/// the MUC component `host` to a row of the room's archive.
///
/// Stock stores `with` = the stanza's kind (`message<groupchat`, `presence`,
/// `presence<unavailable`); only messages are imported. The row's contact is the room
/// (`with_bare` = its bare JID) and the sender's nick (`with_resource` = the resource
/// of the stored `from`, `room@host/nick`). The stanza loses `to`, which stock keeps
/// (the room's JID) in semi-anonymous rooms only.
///
/// The real JID: in non-anonymous rooms stock stores a copy without `to` and appends
/// exactly one `<x xmlns='http://jabber.org/protocol/muc#user'>` with `<item jid=…
/// affiliation role/>` as its last child. Every other muc#user `<x>` is the sender's
/// own (stock never filters groupchat), i.e. forged, and is dropped: an `<x>` is kept
/// only when it is the last child element, has an `<item>` with a `jid`, and the
/// stored stanza has no `to` (with a `to`, the room was semi-anonymous and stock added
/// no `<x>` at all).
pub fn room_item(host: &str, room: &str, src: &SourceMessage) -> Result<RoomItem> {
    let presence = match src.stanza.name.as_str() {
        "message" => None,
        "presence" => match config::presence_with(src.stanza.attr("type")) {
            Some(kind) => Some(kind),
            None => return Ok(RoomItem::Skipped(RoomSkip::NotAMessage)),
        },
        _ => return Ok(RoomItem::Skipped(RoomSkip::NotAMessage)),
    };
    let when = source_stamp(room, src)?;
    let room_jid = format!("{room}@{host}");
    let mut stanza = src.stanza.clone();
    let nick = match stanza.attr("from").map(split_resource) {
        Some((bare, Some(nick))) if bare.eq_ignore_ascii_case(&room_jid) => Some(nick.to_owned()),
        _ => None,
    };
    let semi_anonymous = stanza.attr("to").is_some();
    stanza.remove_attr("to");
    if stanza.xmlns().is_none() {
        stanza.set_attr("xmlns", ns::JABBER_CLIENT);
    }
    if let Some(kind) = presence {
        // As our mod_muc_mam archives a join or leave: beside the room's messages,
        // its kind (stock's `with`) as the contact, the nick as the resource.
        return Ok(RoomItem::Presence(ImportedMessage {
            user: config::room_presences_user(room),
            msg: ArchivedMessage {
                id: src.id.clone(),
                when,
                with_bare: kind.to_owned(),
                with_resource: nick,
                xml: to_xml(&stanza),
            },
        }));
    }
    drop_forged_muc_user(&mut stanza, semi_anonymous);
    Ok(RoomItem::Message(ImportedMessage {
        user: room.to_owned(),
        msg: ArchivedMessage {
            id: src.id.clone(),
            when,
            with_bare: room_jid,
            with_resource: nick,
            xml: to_xml(&stanza),
        },
    }))
}

/// Removes every muc#user `<x>` child but the one stock appended (see [`room_item`]).
fn drop_forged_muc_user(stanza: &mut Element, semi_anonymous: bool) {
    let is_muc_user_x = |e: &Element| e.name == "x" && e.xmlns() == Some(ns::MUC_USER);
    let last_element = stanza
        .children
        .iter()
        .rposition(|n| matches!(n, Node::Element(_)));
    let stock_x = match last_element.map(|i| (i, &stanza.children[i])) {
        Some((i, Node::Element(x)))
            if !semi_anonymous
                && is_muc_user_x(x)
                && x.get_child("item", None)
                    .is_some_and(|item| item.attr("jid").is_some()) =>
        {
            Some(i)
        }
        _ => None,
    };
    let mut index = 0;
    stanza.children.retain(|n| {
        let keep = match n {
            Node::Element(e) => !is_muc_user_x(e) || Some(index) == stock_x,
            Node::Text(_) => true,
        };
        index += 1;
        keep
    });
}

/// Stock's stored default (`prefs[false]`): `true`, `false` or `"roster"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockDefault {
    Always,
    Never,
    Roster,
}

/// Stock's prefs table `{ [false] = default, ["jid"] = true|false }` as ours. A table
/// without a default gets the server's `default_archive_policy` (what stock applies).
pub fn prefs_from_stock(
    default: Option<StockDefault>,
    rules: &[(String, bool)],
    server_default: DefaultPolicy,
) -> Prefs {
    let mut prefs = Prefs::with_default(match default {
        Some(StockDefault::Always) => DefaultPolicy::Always,
        Some(StockDefault::Never) => DefaultPolicy::Never,
        Some(StockDefault::Roster) => DefaultPolicy::Roster,
        None => server_default,
    });
    for (jid, always) in rules {
        if *always {
            prefs.always.insert(jid.clone());
        } else {
            prefs.never.insert(jid.clone());
        }
    }
    prefs
}

/// Per-user counts of one import run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserTally {
    /// Messages read from the source.
    pub source: u64,
    pub inserted: u64,
    pub already_present: u64,
    pub conflicts: u64,
    /// Items of the source deliberately not imported (a room's unknown stanzas).
    pub skipped: u64,
}

/// The end-of-run check for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserVerification {
    pub user: String,
    pub tally: UserTally,
    /// Messages in our archive now (may exceed the source: messages archived by this
    /// module since the switch).
    pub archived: u64,
}

impl UserVerification {
    /// Every source message is in our archive, under its own id, unchanged.
    pub fn ok(&self) -> bool {
        let t = &self.tally;
        t.conflicts == 0
            && t.inserted + t.already_present + t.skipped == t.source
            && self.archived >= t.source - t.skipped
    }

    /// One summary line, e.g. `juliet: source 12, archive 12 (12 new, 0 already there) ok`.
    pub fn line(&self) -> String {
        let t = &self.tally;
        let mut s = format!(
            "{}: source {}, archive {} ({} new, {} already there",
            self.user, t.source, self.archived, t.inserted, t.already_present
        );
        if t.skipped > 0 {
            s.push_str(&format!(", {} skipped", t.skipped));
        }
        if t.conflicts > 0 {
            s.push_str(&format!(", {} id conflicts", t.conflicts));
        }
        s.push_str(if self.ok() { ") ok" } else { ") MISMATCH" });
        s
    }
}

/// One import run for one host.
pub struct Importer {
    host: String,
    store: Box<dyn ArchiveStore>,
    clock: Arc<dyn Clock>,
    started: Micros,
    /// Messages the source holds in all, when the shim counted them first (for ETA).
    expected: Option<u64>,
    done: u64,
    tallies: BTreeMap<String, UserTally>,
    /// Up to this many conflicting ids are kept for the summary.
    conflict_samples: Vec<(String, String)>,
    /// Items not imported, by why (rooms only), for the summary.
    skipped: BTreeMap<RoomSkip, u64>,
}

const CONFLICT_SAMPLES: usize = 10;

impl Importer {
    pub fn new(host: &str, store: Box<dyn ArchiveStore>, clock: Arc<dyn Clock>) -> Importer {
        let started = clock.now_micros();
        Importer {
            host: host.to_owned(),
            store,
            clock,
            started,
            expected: None,
            done: 0,
            tallies: BTreeMap::new(),
            conflict_samples: Vec::new(),
            skipped: BTreeMap::new(),
        }
    }

    /// How many messages the source holds, for the ETA.
    pub fn expect(&mut self, total: u64) {
        self.expected = Some(total);
    }

    /// Stores one batch of one user's stock messages (one transaction) and tallies it.
    pub fn batch(&mut self, user: &str, batch: &[SourceMessage]) -> Result<()> {
        let items = batch
            .iter()
            .map(|m| to_imported(user, m))
            .collect::<Result<Vec<_>>>()?;
        self.store_batch(user, &items)
    }

    /// Stores one batch of one room's stock items (its messages, one transaction; its
    /// joins and leaves, another) and tallies it, the items skipped included
    /// ([`room_item`]). The presences are tallied as their own archive's
    /// (`room<presences`), so the verification checks them too.
    pub fn room_batch(&mut self, room: &str, batch: &[SourceMessage]) -> Result<()> {
        let mut items = Vec::with_capacity(batch.len());
        let mut presences = Vec::new();
        let mut skipped = 0;
        for src in batch {
            match room_item(&self.host, room, src)? {
                RoomItem::Message(m) => items.push(m),
                RoomItem::Presence(p) => presences.push(p),
                RoomItem::Skipped(why) => {
                    *self.skipped.entry(why).or_default() += 1;
                    skipped += 1;
                }
            }
        }
        if !presences.is_empty() {
            self.store_batch(&config::room_presences_user(room), &presences)?;
        }
        self.store_batch(room, &items)?;
        let t = self.tallies.entry(room.to_owned()).or_default();
        t.source += skipped;
        t.skipped += skipped;
        self.done += skipped;
        Ok(())
    }

    /// `Skipped: 4 presences (…)`, when anything was.
    pub fn skipped_line(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let counts: Vec<_> = self
            .skipped
            .iter()
            .map(|(why, n)| format!("{n} {}", why.plural()))
            .collect();
        Some(format!(
            "Skipped: {} (stock's mod_muc_mam stores messages, joins and leaves only)",
            counts.join(", ")
        ))
    }

    /// Stores one batch of one user's messages already in this module's form (read
    /// from another of its archives, see [`super::copy`]) and tallies it.
    pub fn store_batch(&mut self, user: &str, items: &[ImportedMessage]) -> Result<()> {
        let report = self.store.import_batch(&self.host, items)?;
        let t = self.tallies.entry(user.to_owned()).or_default();
        t.source += items.len() as u64;
        t.inserted += report.inserted;
        t.already_present += report.already_present;
        t.conflicts += report.conflicts.len() as u64;
        for conflict in report.conflicts {
            if self.conflict_samples.len() < CONFLICT_SAMPLES {
                self.conflict_samples.push(conflict);
            }
        }
        self.done += items.len() as u64;
        Ok(())
    }

    /// Records a user whose source archive is empty (so the summary lists them).
    pub fn saw_user(&mut self, user: &str) {
        self.tallies.entry(user.to_owned()).or_default();
    }

    /// Messages handled so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// `12000/50000 messages (24%), 4000 msg/s, ETA 9s` (no total: no % or ETA).
    pub fn progress_line(&self) -> String {
        let elapsed = (self.clock.now_micros() - self.started).max(1) as f64 / 1e6;
        let rate = self.done as f64 / elapsed;
        match self.expected {
            Some(total) if total > 0 => {
                let left = total.saturating_sub(self.done) as f64;
                let eta = if rate > 0.0 { left / rate } else { 0.0 };
                format!(
                    "{}/{} messages ({}%), {:.0} msg/s, ETA {}",
                    self.done,
                    total,
                    self.done.saturating_mul(100) / total,
                    rate,
                    human_duration(eta)
                )
            }
            _ => format!("{} messages, {:.0} msg/s", self.done, rate),
        }
    }

    /// Compares each user's source count with our archive. `Ok((lines, all_ok))`.
    pub fn verify(&mut self) -> Result<(Vec<String>, bool)> {
        let mut lines = Vec::new();
        let mut all_ok = true;
        let tallies = std::mem::take(&mut self.tallies);
        for (user, tally) in &tallies {
            let archived = self.store.message_count(&Owner::new(&self.host, user))?;
            let v = UserVerification {
                user: user.clone(),
                tally: tally.clone(),
                archived,
            };
            all_ok &= v.ok();
            lines.push(v.line());
        }
        self.tallies = tallies;
        for (user, id) in &self.conflict_samples {
            lines.push(format!(
                "conflict: {user} already has a different message with id {id}"
            ));
        }
        Ok((lines, all_ok))
    }

    pub fn prefs(&mut self, user: &str, prefs: &Prefs) -> Result<bool> {
        self.store
            .set_prefs_if_absent(&Owner::new(&self.host, user), prefs)
    }
}

/// A stock archive, as Prosody's storage driver for it reads it. Errors are the
/// driver's own words.
pub trait StockArchive {
    /// What the progress line calls it, e.g. `internal store 'archive'`.
    fn describe(&self) -> String;
    /// Every user with messages or preferences there, in any order.
    fn users(&mut self) -> std::result::Result<Vec<String>, String>;
    /// How many messages `user` has there.
    fn count(&mut self, user: &str) -> std::result::Result<u64, String>;
    /// Reads `user`'s messages in archive order, handing each to `each` until it
    /// returns `false`.
    fn messages(
        &mut self,
        user: &str,
        each: &mut dyn FnMut(SourceMessage) -> bool,
    ) -> std::result::Result<(), String>;
    /// `user`'s stored preferences, if any.
    fn prefs(&mut self, user: &str) -> std::result::Result<Option<StockPrefs>, String>;
}

/// Stock's prefs table `{ [false] = default, ["jid"] = true|false }`, read out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockPrefs {
    pub default: Option<StockDefault>,
    /// `(jid, always)`.
    pub rules: Vec<(String, bool)>,
}

/// Messages stored per import transaction.
pub const IMPORT_BATCH: usize = 500;
/// Seconds between progress lines.
const PROGRESS_EVERY_SECS: i64 = 2;

/// Imports `source` into the archive `config` names, saying what it does line by
/// line (stdout); a failure or a verification mismatch is the error (stderr). For a
/// MUC component (`config.owners` is rooms) the source's users are rooms, their items
/// are converted by [`room_item`], and there are no preferences.
pub fn import_stock(
    config: &Config,
    source: &mut dyn StockArchive,
    clock: Arc<dyn Clock>,
    say: &mut dyn FnMut(&str),
) -> std::result::Result<(), AdminError> {
    let host = config.host.as_str();
    let rooms = config.owners == Owners::Rooms;
    let (one, many) = owner_nouns(config.owners);
    let failed = |what: String| AdminError::Failed(format!("{host}: {what}"));
    let mut users = source
        .users()
        .map_err(|e| failed(format!("could not list {many}: {e}")))?;
    users.sort();
    users.dedup();
    if rooms {
        // Stock stores what the service's own JID archives under an empty name; that
        // is no room (clients cannot query it), so it stays behind.
        if let Some(i) = users.iter().position(String::is_empty) {
            users.remove(i);
            say("Skipping the archive stored under no room name (the service's own)");
        }
    }
    // Count first, for the ETA.
    let mut expected = 0;
    for user in &users {
        expected += source
            .count(user)
            .map_err(|e| failed(format!("could not count the archive of {one} {user}: {e}")))?;
    }
    let what = if rooms { "items" } else { "messages" };
    say(&format!(
        "Importing {expected} {what} of {} {many} on {host} from {} into {}",
        users.len(),
        source.describe(),
        config.storage.describe()
    ));
    let destination = store::open(&config.storage, true).map_err(|e| failed(e.to_string()))?;
    let mut importer = Importer::new(host, destination, clock.clone());
    importer.expect(expected);
    let mut last_progress = clock.now_micros();
    let mut prefs_imported = 0;
    for user in &users {
        importer.saw_user(user);
        let mut batch = Vec::with_capacity(IMPORT_BATCH);
        let mut stored: std::result::Result<(), AdminError> = Ok(());
        let mut flush = |importer: &mut Importer, batch: &mut Vec<SourceMessage>| {
            let done = if rooms {
                importer.room_batch(user, batch)
            } else {
                importer.batch(user, batch)
            };
            done.map_err(|e| failed(format!("{user}: {e}")))?;
            batch.clear();
            let now = clock.now_micros();
            if now - last_progress >= PROGRESS_EVERY_SECS * 1_000_000 {
                last_progress = now;
                say(&format!("  {}", importer.progress_line()));
            }
            Ok::<(), AdminError>(())
        };
        let read = source.messages(user, &mut |m| {
            batch.push(m);
            if batch.len() >= IMPORT_BATCH {
                stored = flush(&mut importer, &mut batch);
            }
            stored.is_ok()
        });
        stored?;
        read.map_err(|e| failed(format!("could not read the archive of {one} {user}: {e}")))?;
        if !batch.is_empty() {
            flush(&mut importer, &mut batch)?;
        }
        if rooms {
            continue;
        }
        let prefs = source
            .prefs(user)
            .map_err(|e| failed(format!("could not read the preferences of {user}: {e}")))?;
        if let Some(p) = prefs {
            let ours = prefs_from_stock(p.default, &p.rules, config.default_policy);
            if importer
                .prefs(user, &ours)
                .map_err(|e| failed(format!("{user}: {e}")))?
            {
                prefs_imported += 1;
            }
        }
    }
    say(&format!("  {}", importer.progress_line()));
    if let Some(line) = importer.skipped_line() {
        say(&line);
    }
    if !rooms {
        say(&format!(
            "Preferences: {prefs_imported} imported (users who already had preferences here keep them)"
        ));
    }
    let (lines, all_ok) = importer
        .verify()
        .map_err(|e| failed(format!("verification failed: {e}")))?;
    say(&format!("Verification for {host}:"));
    for line in &lines {
        say(&format!("  {line}"));
    }
    if !all_ok {
        return Err(failed(
            "some messages were not imported (see MISMATCH above)".into(),
        ));
    }
    Ok(())
}

/// `3h05m`, `4m10s`, `12s`.
pub fn human_duration(secs: f64) -> String {
    let s = if secs.is_finite() && secs > 0.0 {
        secs.round() as u64
    } else {
        0
    };
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stanza::parse_xml;
    use crate::store::sqlite::SqliteStore;
    use crate::store::FindRequest;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// The first ten items of `user`'s archive on `host`, oldest first.
    fn first_ten(store: &mut dyn ArchiveStore, host: &str, user: &str) -> Vec<ArchivedMessage> {
        let req = FindRequest {
            limit: 10,
            ..FindRequest::default()
        };
        let owner = Owner::new(host, user);
        store.find(&owner, &req).expect("find").items
    }

    struct ManualClock(AtomicI64);
    impl Clock for ManualClock {
        fn now_micros(&self) -> Micros {
            self.0.load(Ordering::SeqCst)
        }
    }

    const T0: f64 = 1_275_868_800.0;

    fn src(id: &str, when: f64, with: &str) -> SourceMessage {
        SourceMessage {
            id: id.into(),
            when_secs: when,
            with: with.into(),
            stanza: parse_xml(&format!(
                "<message to='{with}' type='chat'><body>{id}</body></message>"
            ))
            .expect("xml"),
        }
    }

    fn importer(clock: Arc<ManualClock>) -> Importer {
        let store = SqliteStore::open_in_memory().expect("open");
        Importer::new("capulet.lit", Box::new(store), clock)
    }

    #[test]
    fn a_source_message_keeps_id_time_partner_and_gains_the_client_namespace() {
        let m = to_imported(
            "juliet",
            &src("abc", T0 + 0.25, "romeo@montague.lit/orchard"),
        )
        .expect("convert");
        assert_eq!(m.msg.id, "abc");
        assert_eq!(m.msg.when, 1_275_868_800_250_000);
        assert_eq!(m.msg.with_bare, "romeo@montague.lit");
        assert_eq!(m.msg.with_resource.as_deref(), Some("orchard"));
        assert_eq!(
            m.msg.xml,
            "<message to='romeo@montague.lit/orchard' type='chat' xmlns='jabber:client'>\
             <body>abc</body></message>"
        );
    }

    #[test]
    fn a_sub_second_stamp_keeps_the_microseconds_prosody_13_shows() {
        // 13 writes `when` as a float and shows floor(fraction * 1e6): .330229 here,
        // where rounding would give .330230 and a stamp the client never saw.
        let m = to_imported("juliet", &src("a", 1_764_786_611.330_23, "r@m")).expect("convert");
        assert_eq!(m.msg.when, 1_764_786_611_330_229);
        let before_1970 = to_imported("juliet", &src("b", -1.25, "r@m")).expect("convert");
        assert_eq!(before_1970.msg.when, -1_250_000);
    }

    #[test]
    fn a_nan_timestamp_or_empty_id_is_refused_with_the_message_named() {
        let err = to_imported("juliet", &src("x", f64::NAN, "r@m")).expect_err("nan");
        assert_eq!(
            err.to_string(),
            "corrupt archive data: message x of juliet has an invalid timestamp NaN"
        );
        let err = to_imported("juliet", &src("", T0, "r@m")).expect_err("empty");
        assert_eq!(
            err.to_string(),
            "corrupt archive data: a message of juliet has an empty id"
        );
    }

    #[test]
    fn stock_prefs_map_to_ours_and_a_missing_default_takes_the_server_default() {
        let p = prefs_from_stock(
            Some(StockDefault::Roster),
            &[
                ("romeo@montague.lit".into(), true),
                ("tybalt@capulet.lit".into(), false),
            ],
            DefaultPolicy::Always,
        );
        assert_eq!(p.default, DefaultPolicy::Roster);
        assert_eq!(p.always.iter().collect::<Vec<_>>(), ["romeo@montague.lit"]);
        assert_eq!(p.never.iter().collect::<Vec<_>>(), ["tybalt@capulet.lit"]);
        let p = prefs_from_stock(None, &[], DefaultPolicy::Never);
        assert_eq!(p, Prefs::with_default(DefaultPolicy::Never));
    }

    #[test]
    fn progress_reports_count_rate_percentage_and_eta() {
        let clock = Arc::new(ManualClock(AtomicI64::new(0)));
        let mut imp = importer(clock.clone());
        imp.expect(400);
        let batch: Vec<_> = (0..100)
            .map(|i| src(&format!("m{i}"), T0 + i as f64, "romeo@montague.lit"))
            .collect();
        imp.batch("juliet", &batch).expect("batch");
        clock.0.store(2_000_000, Ordering::SeqCst);
        assert_eq!(
            imp.progress_line(),
            "100/400 messages (25%), 50 msg/s, ETA 6s"
        );
        assert_eq!(human_duration(3725.0), "1h02m");
        assert_eq!(human_duration(125.0), "2m05s");
    }

    #[test]
    fn a_second_run_adds_nothing_and_verifies_ok() {
        let clock = Arc::new(ManualClock(AtomicI64::new(0)));
        let store_path = tempfile::tempdir().expect("tmp");
        let db = store_path.path().join("mam.sqlite");
        let batch: Vec<_> = (0..3)
            .map(|i| src(&format!("m{i}"), T0, "romeo@montague.lit"))
            .collect();
        for run in 0..2 {
            let store = SqliteStore::open(&db).expect("open");
            let mut imp = Importer::new("capulet.lit", Box::new(store), clock.clone());
            imp.batch("juliet", &batch).expect("batch");
            imp.saw_user("nurse");
            let (lines, ok) = imp.verify().expect("verify");
            assert!(ok, "{lines:?}");
            let expected = if run == 0 {
                "juliet: source 3, archive 3 (3 new, 0 already there) ok"
            } else {
                "juliet: source 3, archive 3 (0 new, 3 already there) ok"
            };
            assert_eq!(
                lines,
                [
                    expected,
                    "nurse: source 0, archive 0 (0 new, 0 already there) ok"
                ]
            );
        }
        // Same order as the source, though all three share one second.
        let mut store = SqliteStore::open(&db).expect("open");
        let items = first_ten(&mut store, "capulet.lit", "juliet");
        let ids: Vec<_> = items.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["m0", "m1", "m2"]);
    }

    fn room_src(id: &str, with: &str, xml: &str) -> SourceMessage {
        SourceMessage {
            id: id.into(),
            when_secs: T0,
            with: with.into(),
            stanza: parse_xml(xml).expect("xml"),
        }
    }

    fn room_message(xml: &str) -> ImportedMessage {
        let src = room_src("r1", "message<groupchat", xml);
        match room_item("chat.capulet.lit", "balcony", &src).expect("convert") {
            RoomItem::Message(m) => m,
            other => panic!("{other:?}"),
        }
    }

    const REAL_X: &str = "<x xmlns='http://jabber.org/protocol/muc#user'>\
                          <item affiliation='member' role='participant' jid='romeo@montague.lit'/></x>";
    const FORGED_X: &str = "<x xmlns='http://jabber.org/protocol/muc#user'>\
                            <item jid='tybalt@capulet.lit' affiliation='owner'/></x>";

    #[test]
    fn a_room_message_has_the_room_as_contact_the_nick_as_resource_and_no_to() {
        // Semi-anonymous: stock stores the live stanza, `to` (the room) included.
        let m = room_message(
            "<message from='balcony@chat.capulet.lit/Romeo' to='balcony@chat.capulet.lit' \
             type='groupchat' id='m1'><body>hi</body></message>",
        );
        assert_eq!(m.user, "balcony");
        assert_eq!(m.msg.id, "r1");
        assert_eq!(m.msg.when, 1_275_868_800_000_000);
        assert_eq!(m.msg.with_bare, "balcony@chat.capulet.lit");
        assert_eq!(m.msg.with_resource.as_deref(), Some("Romeo"));
        assert_eq!(
            m.msg.xml,
            "<message from='balcony@chat.capulet.lit/Romeo' type='groupchat' id='m1' \
             xmlns='jabber:client'><body>hi</body></message>"
        );
    }

    #[test]
    fn a_room_message_from_the_room_itself_or_elsewhere_has_no_nick() {
        for from in ["balcony@chat.capulet.lit", "romeo@montague.lit/orchard"] {
            let m = room_message(&format!(
                "<message from='{from}' type='groupchat'><body>x</body></message>"
            ));
            assert_eq!(m.msg.with_bare, "balcony@chat.capulet.lit");
            assert_eq!(m.msg.with_resource, None, "{from}");
        }
    }

    #[test]
    fn stocks_own_real_jid_x_is_kept_and_a_forged_one_dropped() {
        // Non-anonymous: no `to`, the forged <x> the sender's, stock's appended last.
        let m = room_message(&format!(
            "<message from='balcony@chat.capulet.lit/Romeo' type='groupchat'>\
             <body>hi</body>{FORGED_X}{REAL_X}</message>"
        ));
        assert_eq!(
            m.msg.xml,
            format!(
                "<message from='balcony@chat.capulet.lit/Romeo' type='groupchat' \
                 xmlns='jabber:client'><body>hi</body>{REAL_X}</message>"
            )
        );
    }

    #[test]
    fn a_muc_user_x_that_is_not_last_lacks_a_jid_or_sits_in_a_semi_anonymous_room_is_dropped() {
        let plain = "<message from='balcony@chat.capulet.lit/Romeo' type='groupchat' \
                     xmlns='jabber:client'><body>hi</body></message>";
        let cases = [
            // Not the last child: stock appends its own last.
            format!("<message from='balcony@chat.capulet.lit/Romeo' type='groupchat'>{FORGED_X}<body>hi</body></message>"),
            // Last, but no <item jid>: not stock's.
            "<message from='balcony@chat.capulet.lit/Romeo' type='groupchat'><body>hi</body>\
             <x xmlns='http://jabber.org/protocol/muc#user'><item role='moderator'/></x></message>"
                .to_owned(),
            // Last with a jid, but the stanza kept `to`: a semi-anonymous room, where
            // stock adds no <x> at all.
            format!("<message from='balcony@chat.capulet.lit/Romeo' to='balcony@chat.capulet.lit' type='groupchat'><body>hi</body>{FORGED_X}</message>"),
        ];
        for xml in cases {
            assert_eq!(room_message(&xml).msg.xml, plain, "{xml}");
        }
        // Other <x> namespaces (e.g. a conference invitation) are the message's own.
        let m = room_message(
            "<message from='balcony@chat.capulet.lit/Romeo' type='groupchat'><body>hi</body>\
             <x xmlns='jabber:x:conference' jid='garden@chat.capulet.lit'/></message>",
        );
        assert!(m.msg.xml.contains("jabber:x:conference"), "{}", m.msg.xml);
    }

    #[test]
    fn presences_stock_logged_go_beside_the_room_and_are_verified_there() {
        let clock = Arc::new(ManualClock(AtomicI64::new(0)));
        let mut imp = Importer::new(
            "chat.capulet.lit",
            Box::new(SqliteStore::open_in_memory().expect("open")),
            clock,
        );
        let batch = [
            room_src(
                "p1",
                "presence",
                "<presence from='balcony@chat.capulet.lit/Romeo'><x xmlns='http://jabber.org/protocol/muc'/></presence>",
            ),
            room_src(
                "m1",
                "message<groupchat",
                "<message from='balcony@chat.capulet.lit/Romeo' type='groupchat'><body>hi</body></message>",
            ),
            room_src(
                "p2",
                "presence<unavailable",
                "<presence type='unavailable' from='balcony@chat.capulet.lit/Romeo'/>",
            ),
            room_src("q1", "iq", "<iq type='get' id='x'/>"),
        ];
        imp.room_batch("balcony", &batch).expect("batch");
        assert_eq!(imp.done(), 4);
        assert_eq!(
            imp.skipped_line().as_deref(),
            Some("Skipped: 1 other stanzas (stock's mod_muc_mam stores messages, joins and leaves only)")
        );
        let (lines, ok) = imp.verify().expect("verify");
        assert!(ok, "{lines:?}");
        assert_eq!(
            lines,
            [
                "balcony: source 2, archive 1 (1 new, 0 already there, 1 skipped) ok",
                "balcony<presences: source 2, archive 2 (2 new, 0 already there) ok",
            ]
        );
        let presences = first_ten(&mut *imp.store, "chat.capulet.lit", "balcony<presences");
        let rows: Vec<_> = presences
            .iter()
            .map(|m| {
                (
                    m.id.as_str(),
                    m.with_bare.as_str(),
                    m.with_resource.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("p1", "presence", Some("Romeo")),
                ("p2", "presence<unavailable", Some("Romeo"))
            ]
        );
    }

    #[test]
    fn a_conflicting_id_fails_verification_and_is_named() {
        let clock = Arc::new(ManualClock(AtomicI64::new(0)));
        let mut imp = importer(clock);
        imp.batch("juliet", &[src("x", T0, "romeo@montague.lit")])
            .expect("first");
        imp.batch("juliet", &[src("x", T0 + 60.0, "romeo@montague.lit")])
            .expect("second");
        let (lines, ok) = imp.verify().expect("verify");
        assert!(!ok);
        assert_eq!(
            lines,
            [
                "juliet: source 2, archive 1 (1 new, 0 already there, 1 id conflicts) MISMATCH",
                "conflict: juliet already has a different message with id x"
            ]
        );
    }
}
