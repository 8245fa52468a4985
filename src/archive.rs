//! The archive engine: every decision and operation the Prosody shim asks for, on
//! plain Rust data. The Lua boundary ([`crate::lua_api`]) only converts arguments and
//! results; everything here is testable without Lua.
//!
//! Nothing here waits on disk. Decisions the event loop needs at once (what to
//! archive, preferences, ids) are made from memory; writes go to the
//! [`crate::writer`] thread and reads to the [`crate::reader`] threads, whose results
//! come back through the [`Mailbox`] as completed jobs.

pub mod provider;

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::Checkpointer;
use crate::compactor::Compactor;
use crate::config::{self, Config};
use crate::error::Result;
use crate::expiry::Expirer;
use crate::id::new_archive_id;
use crate::jid::split_resource;
use crate::mailbox::{Completion, JobId, Level, Mailbox, Reply};
use crate::ns;
use crate::policy::{self, DefaultPolicy, Prefs, Rule};
use crate::query::{self, JidPrep};
use crate::reader::{ReadJob, ReadOp, Readers};
use crate::stanza::{to_xml, Element};
use crate::store::{self, ArchiveStore, ArchivedMessage, Owner};
use crate::time::{Clock, SystemClock};
use crate::writer::{Delivery, QuotaPolicy, WriteOp, Writer};

/// Reader threads per archive: queries from two users run side by side, and a
/// third waits, without ever holding up the event loop.
const READER_THREADS: usize = 2;

/// A message that was archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The archive id, also the XEP-0359 stanza-id.
    pub id: String,
    /// The copy that was stored (namespaces in `dont_archive_namespaces` removed).
    pub stored: Element,
    /// Our `<stanza-id>` (XEP-0359), to add to the copy that is delivered.
    pub stanza_id: Element,
    /// The write's sequence number: with [`Delivery::AfterCommit`], delivery waits
    /// for an [`crate::mailbox::Outcome::Committed`] at or past it.
    pub seq: u64,
}

/// Why an eligible message was nevertheless not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Stock's selection rules say no ([`policy::should_store`]), with the reason.
    Policy(policy::Reason),
    /// Nothing but stripped namespaces (e.g. a bare chat state).
    EmptyWhenStripped,
}

/// What the engine knows about its own state, for Prosody's metrics. Cheap to take:
/// two counters and a `stat` of the database files, never a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Writes (messages, preference changes, account deletions) queued since
    /// the archive opened.
    pub writes_queued: u64,
    /// Of those, how many the writer has committed.
    pub writes_committed: u64,
    /// Queued and not yet committed: what a crash now would lose.
    pub queue_depth: u64,
    /// Bytes on disk: the database file plus its write-ahead log.
    pub database_bytes: u64,
}

/// One virtual host's archive.
pub struct Archive {
    config: Config,
    clock: Arc<dyn Clock>,
    /// Every user's stored preferences, loaded at open and kept in step with every
    /// change, so the per-message decision never reads the database.
    prefs: HashMap<String, Prefs>,
    mailbox: Arc<Mailbox>,
    writer: Writer,
    readers: Readers,
    /// Retention: the deleting thread, at idle priority, on its own connection.
    expirer: Expirer,
    /// SQLite: the write-ahead log's checkpoints, off the writer's commits.
    checkpointer: Option<Checkpointer>,
    /// `archive_compression`: the dictionary and the older rows' rewrite, at idle
    /// priority, on its own connection.
    compactor: Option<Compactor>,
    next_job: JobId,
}

impl Archive {
    /// Opens the archive the configuration names (SQLite file or PostgreSQL): one
    /// connection for the writer, one per reader.
    pub fn open(config: Config) -> Result<Archive> {
        let named = |e: crate::error::MamError| crate::error::MamError::Open {
            path: config.storage.describe(),
            cause: e.to_string(),
        };
        let mut writer_store = store::open(&config.storage, true).map_err(named)?;
        let checkpoint_store = match writer_store.hand_off_checkpoints().map_err(named)? {
            true => Some(store::open(&config.storage, false).map_err(named)?),
            false => None,
        };
        let mut readers: Vec<Box<dyn ArchiveStore>> = Vec::new();
        for _ in 0..READER_THREADS {
            readers.push(store::open(&config.storage, false).map_err(named)?);
        }
        let mut archive =
            Archive::with_stores(config, writer_store, readers, Arc::new(SystemClock))?;
        if archive.config.compression {
            archive.compactor = Some(Compactor::start(
                archive.config.storage.clone(),
                Arc::new(SystemClock),
                archive.mailbox.clone(),
            )?);
        }
        if let Some(store) = checkpoint_store {
            archive.checkpointer = Some(Checkpointer::start(
                store,
                archive.writer.progress(),
                archive.mailbox.clone(),
            )?);
        }
        Ok(archive)
    }

    /// An archive over any backend and clock (tests inject both). `writer_store` must
    /// see what the reader stores see (the same database).
    pub fn with_stores(
        config: Config,
        mut writer_store: Box<dyn ArchiveStore>,
        reader_stores: Vec<Box<dyn ArchiveStore>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Archive> {
        let prefs = writer_store.all_prefs(&config.host)?.into_iter().collect();
        let mailbox = Arc::new(Mailbox::new().map_err(|e| {
            crate::error::MamError::Thread(format!("cannot open the wake-up socket: {e}"))
        })?);
        let quota = config.item_limit.map(|limit| QuotaPolicy {
            limit,
            period: config.expires_after,
        });
        writer_store.set_compression(config.compression);
        let writer = Writer::start(writer_store, quota, mailbox.clone())?;
        let readers = Readers::start(reader_stores, writer.progress(), mailbox.clone())?;
        let expirer = Expirer::new(
            config.expires_after,
            &config.host,
            config.storage.clone(),
            mailbox.clone(),
        );
        Ok(Archive {
            config,
            clock,
            prefs,
            mailbox,
            writer,
            readers,
            expirer,
            checkpointer: None,
            compactor: None,
            next_job: 0,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The descriptor the event loop watches: readable when [`Archive::completions`]
    /// has something.
    pub fn notify_fd(&self) -> RawFd {
        self.mailbox.fd()
    }

    /// Read `job`'s completion, if the readers were otherwise idle and it finishes
    /// within `mam_inline_read_wait` (0.3 ms by default); `None` otherwise, and then
    /// it arrives through [`Archive::completions`] as usual.
    ///
    /// Handing a result back through the watched socket costs the event loop a
    /// wake-up from idle, ~0.1 ms on a virtual machine: most of a small query's time,
    /// and what made a count-only query slower than stock's answer from memory. When
    /// no other read is queued, the loop waits for the answer instead, never longer
    /// than the budget (stock holds the loop ~7 ms for every page). With other reads
    /// queued, ours would wait behind them, so the loop goes back to work at once.
    pub fn answer_now(&self, job: JobId) -> Option<Completion> {
        self.answer_within(job, self.config.inline_read_wait)
    }

    fn answer_within(&self, job: JobId, budget: Duration) -> Option<Completion> {
        // `job` itself is one of the reads in flight.
        if budget.is_zero() || self.readers.in_flight() > 1 {
            return None;
        }
        self.mailbox.claim(job, budget)
    }

    /// Finished jobs and log lines from the threads.
    pub fn completions(&self) -> (Vec<Completion>, Vec<(Level, String)>) {
        self.mailbox.take()
    }

    fn owner(&self, user: &str) -> Owner {
        Owner::new(&self.config.host, user)
    }

    fn new_job(&mut self) -> JobId {
        self.next_job += 1;
        self.next_job
    }

    /// A user's effective preferences, as stock's `get_prefs(user, explicit)`:
    /// `explicit` means a MAM client is involved right now; with `mam_smart_enable`
    /// that first contact stores the server default, and until then nothing is
    /// archived for the user.
    pub fn prefs(&mut self, user: &str, explicit: bool) -> Result<Prefs> {
        if let Some(p) = self.prefs.get(user) {
            return Ok(p.clone());
        }
        let server_default = Prefs::with_default(self.config.default_policy);
        if !self.config.smart_enable {
            return Ok(server_default);
        }
        if explicit {
            self.set_prefs(user, server_default.clone())?;
            return Ok(server_default);
        }
        Ok(Prefs::with_default(DefaultPolicy::Never))
    }

    fn set_prefs(&mut self, user: &str, prefs: Prefs) -> Result<()> {
        self.writer.submit(WriteOp::SetPrefs {
            owner: self.owner(user),
            prefs: prefs.clone(),
        })?;
        self.prefs.insert(user.to_owned(), prefs);
        Ok(())
    }

    /// Whether a message between `user` and `with_jid` may be archived by preference.
    pub fn rule(&mut self, user: &str, with_jid: &str) -> Result<Rule> {
        let (bare, _) = split_resource(with_jid);
        let prefs = self.prefs(user, false)?;
        Ok(policy::rule_for(&prefs, bare))
    }

    /// Archives `stanza` in `user`'s archive; `with_jid` is the other party as
    /// addressed (bare or full). The caller has already decided the message is
    /// eligible ([`policy::should_store`], preferences). The id is assigned here and
    /// the write queued: the event loop never waits for the disk, and `delivery` says
    /// whether the shim holds what it sends next until the commit (its output
    /// barrier), so the writer commits at once and reports it.
    pub fn append(
        &mut self,
        user: &str,
        with_jid: &str,
        stanza: Element,
        delivery: Delivery,
    ) -> Result<std::result::Result<Appended, NotStored>> {
        // The delivered copy is built from Prosody's own table, so this Element is only
        // the stored copy: no clone.
        let mut stored = stanza;
        if !policy::strip_namespaces(&mut stored, &self.config.dont_archive_namespaces) {
            return Ok(Err(NotStored::EmptyWhenStripped));
        }
        let when = self.clock.now_micros();
        let id = new_archive_id(when);
        let (bare, resource) = split_resource(with_jid);
        // Stored with an explicit jabber:client namespace so that, read back, every
        // element carries its namespace and Lua's get_child() finds children.
        let had_xmlns = stored.xmlns().map(str::to_owned);
        stored.set_attr("xmlns", ns::JABBER_CLIENT);
        let xml = to_xml(&stored);
        match had_xmlns {
            Some(original) => stored.set_attr("xmlns", &original),
            None => stored.remove_attr("xmlns"),
        }
        let msg = ArchivedMessage {
            id: id.clone(),
            when,
            with_bare: bare.to_owned(),
            with_resource: resource.map(str::to_owned),
            xml,
        };
        let seq = self.writer.submit(WriteOp::Append {
            owner: self.owner(user),
            msg,
            delivery,
        })?;
        let stanza_id = Element::with_ns("stanza-id", ns::STANZA_ID)
            .with_attr("by", &format!("{user}@{}", self.config.host))
            .with_attr("id", &id);
        Ok(Ok(Appended {
            id,
            stored,
            stanza_id,
            seq,
        }))
    }

    /// Archives an occupant's join (or, `left`, leave) of the room `room` as stock
    /// `mod_muc_mam` does with `muc_log_presences`: a presence from `occupant` (the
    /// occupant's in-room JID), without the occupant's real JID, in the room's
    /// presences archive ([`config::room_presences_user`]). Nobody waits for it: it
    /// is committed within the linger, and no client ever gets its id.
    pub fn append_presence(&mut self, room: &str, occupant: &str, left: bool) -> Result<()> {
        let when = self.clock.now_micros();
        let mut stanza =
            Element::with_ns("presence", ns::JABBER_CLIENT).with_attr("from", occupant);
        let with = if left {
            stanza.set_attr("type", "unavailable");
            config::PRESENCE_LEFT_WITH
        } else {
            stanza.push(Element::with_ns("x", ns::MUC));
            config::PRESENCE_JOINED_WITH
        };
        let msg = ArchivedMessage {
            id: new_archive_id(when),
            when,
            with_bare: with.to_owned(),
            with_resource: split_resource(occupant).1.map(str::to_owned),
            xml: to_xml(&stanza),
        };
        self.writer.submit(WriteOp::Append {
            owner: self.owner(&config::room_presences_user(room)),
            msg,
            delivery: Delivery::AtOnce,
        })?;
        Ok(())
    }

    /// [`policy::should_store`] and [`Archive::append`] on one conversion of the
    /// stanza: the shim's fast path when no other module hooks `archive-should-store`.
    pub fn append_if_eligible(
        &mut self,
        user: &str,
        with_jid: &str,
        stanza: Element,
        delivery: Delivery,
    ) -> Result<std::result::Result<Appended, NotStored>> {
        let (eligible, reason) = policy::should_store(&stanza);
        if !eligible {
            return Ok(Err(NotStored::Policy(reason)));
        }
        self.append(user, with_jid, stanza, delivery)
    }

    /// The query form (iq-get on `<query>`), which also counts as MAM use.
    pub fn query_form(&mut self, user: &str) -> Result<Element> {
        self.prefs(user, true)?;
        Ok(query::query_form())
    }

    /// Validates a client's `<query>` at once (errors go straight back) and queues it.
    /// The answer arrives as a [`crate::mailbox::Outcome::Query`] for the returned job.
    /// `hide_real_jids`: a room archive's results go out without the senders' real
    /// JIDs ([`query::Plan::hide_real_jids`]); the shim decides it from the room's
    /// current setting and the requester's role.
    pub fn start_query(
        &mut self,
        user: &str,
        query_el: &Element,
        jid_prep: JidPrep,
        reply: Reply,
        hide_real_jids: bool,
    ) -> Result<JobId> {
        self.prefs(user, true)?;
        let q = query::parse_query(query_el, jid_prep)?;
        let mut plan = q.plan(&self.config);
        plan.hide_real_jids = hide_real_jids;
        let job = self.new_job();
        self.readers.submit(ReadJob {
            job,
            after_write: self.writer.queued(),
            owner: self.owner(user),
            op: ReadOp::Query {
                plan: Box::new(plan),
                query_id: q.query_id,
                reply,
            },
        })?;
        Ok(job)
    }

    /// Queues a `<metadata>` request (XEP-0313 §7).
    pub fn start_metadata(&mut self, user: &str) -> Result<JobId> {
        let job = self.new_job();
        self.readers.submit(ReadJob {
            job,
            after_write: self.writer.queued(),
            owner: self.owner(user),
            op: ReadOp::Metadata,
        })?;
        Ok(job)
    }

    /// Queues a room's join history: its newest `limit` messages at or after `since`
    /// (XEP-0045 `<history>`); the answer is an
    /// [`crate::mailbox::Outcome::History`], newest first.
    pub fn start_history(
        &mut self,
        room: &str,
        limit: usize,
        since: Option<crate::time::Micros>,
    ) -> Result<JobId> {
        let job = self.new_job();
        self.readers.submit(ReadJob {
            job,
            after_write: self.writer.queued(),
            owner: self.owner(room),
            op: ReadOp::History { limit, since },
        })?;
        Ok(job)
    }

    /// Handles `<prefs>`: applies `set` if given, then returns the current prefs.
    pub fn prefs_iq(
        &mut self,
        user: &str,
        set: Option<&Element>,
        jid_prep: JidPrep,
    ) -> Result<Element> {
        let current = self.prefs(user, true)?;
        let prefs = match set {
            Some(el) => {
                let new = policy::prefs_from_element(el, current.default, jid_prep)?;
                self.set_prefs(user, new.clone())?;
                new
            }
            None => current,
        };
        Ok(policy::prefs_to_element(&prefs))
    }

    /// Queues one expiry batch ([`crate::expiry`]); the job reports a
    /// [`crate::expiry::Step`]. `None` when the archive never expires.
    pub fn expire_step(&mut self) -> Result<Option<JobId>> {
        let job = self.new_job();
        let queued = self.expirer.step(job, self.clock.now_micros())?;
        Ok(queued.then_some(job))
    }

    /// Queues the removal of a deleted account's archive and preferences.
    pub fn start_delete_user(&mut self, user: &str) -> Result<JobId> {
        self.prefs.remove(user);
        let job = self.new_job();
        let owners = config::whole_archive_users(self.config.owners, user)
            .iter()
            .map(|u| self.owner(u))
            .collect();
        self.writer.submit(WriteOp::DeleteUser { owners, job })?;
        Ok(job)
    }

    /// Blocks until every write queued so far is committed (or `timeout`). For
    /// shutdown, tools and tests; never called from Prosody's event loop otherwise.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.writer.flush(timeout)
    }

    /// Every write up to this sequence number is committed. A brief lock, never a
    /// wait: the shim reads it with each append, and under load releases what its
    /// commit barrier holds as soon as the writer is past it, instead of only when the
    /// event loop next gets round to the writer's completion notice.
    pub fn writes_committed(&self) -> u64 {
        self.writer.committed()
    }

    /// The engine's counters and the database size ([`Stats`]); never waits on the
    /// writer or a query, so the event loop may call it whenever metrics are collected.
    pub fn stats(&self) -> Stats {
        let writes_queued = self.writer.queued();
        let writes_committed = self.writes_committed();
        Stats {
            writes_queued,
            writes_committed,
            queue_depth: writes_queued.saturating_sub(writes_committed),
            database_bytes: match self.config.storage.sqlite_path() {
                // A file's size is one stat away: exact, and cheap enough for the loop.
                Some(path) => database_bytes(path),
                None => self.writer.database_bytes(),
            },
        }
    }

    /// Commits everything queued and stops the threads (module unload, shutdown).
    pub fn close(mut self) -> Vec<(Level, String)> {
        if let Some(compactor) = &mut self.compactor {
            compactor.stop();
        }
        self.expirer.stop();
        self.readers.stop();
        self.writer.stop();
        if let Some(checkpointer) = &mut self.checkpointer {
            checkpointer.stop();
        }
        self.mailbox.take().1
    }
}

/// Size of an SQLite database on disk: the file plus its `-wal` (the `-shm` index is
/// scratch space). A missing file counts as empty.
fn database_bytes(path: &std::path::Path) -> u64 {
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    size(path) + size(std::path::Path::new(&wal))
}

/// Waiting for one job, for tests: the live module never blocks on a job.
#[cfg(test)]
impl Archive {
    /// Blocks until job `job` completes (or `timeout`), returning it and keeping any
    /// other completions for later.
    pub fn wait_job(
        &self,
        job: JobId,
        timeout: Duration,
        parked: &mut Vec<Completion>,
    ) -> Option<Completion> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(i) = parked.iter().position(|c| c.job == job) {
                return Some(parked.remove(i));
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            self.mailbox.wait(deadline - now);
            parked.extend(self.mailbox.take().0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawValue;
    use crate::expiry::Step;
    use crate::mailbox::{Outcome, QueryResults, ResultStanzas};
    use crate::stanza::{parse_xml, to_wire_xml};
    use crate::store::sqlite::SqliteStore;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// A clock tests move by hand.
    struct ManualClock(AtomicI64);

    impl Clock for ManualClock {
        fn now_micros(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    const T0: i64 = 1_700_000_000_000_000;
    const WAIT: Duration = Duration::from_secs(10);

    fn archive_with(pairs: &[(&str, RawValue)]) -> (Archive, Arc<ManualClock>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let map: HashMap<String, RawValue> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let data = dir.path().to_string_lossy().into_owned();
        let config =
            Config::from_options("localhost", &data, &move |n: &str| map.get(n).cloned()).unwrap();
        let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
        let path = config.storage.sqlite_path().unwrap().to_path_buf();
        let writer = Box::new(SqliteStore::open(&path).unwrap());
        let readers: Vec<Box<dyn ArchiveStore>> = vec![Box::new(SqliteStore::open(&path).unwrap())];
        let archive = Archive::with_stores(config, writer, readers, clock.clone()).unwrap();
        (archive, clock, dir)
    }

    fn prep(s: &str) -> Option<String> {
        Some(s.to_lowercase())
    }

    fn chat(body: &str) -> Element {
        parse_xml(&format!(
            "<message type='chat' to='juliet@localhost' from='romeo@montague.lit/orchard'><body>{body}</body></message>"
        ))
        .unwrap()
    }

    /// Archives a chat message from Romeo in Juliet's archive, delivered at once.
    fn juliet_gets(a: &mut Archive, body: &str) -> Appended {
        a.append("juliet", "romeo@montague.lit", chat(body), Delivery::AtOnce)
            .unwrap()
            .unwrap()
    }

    fn wait(a: &Archive, job: JobId) -> Outcome {
        a.wait_job(job, WAIT, &mut Vec::new())
            .expect("job completes")
            .outcome
    }

    fn query_all(a: &mut Archive, user: &str) -> Vec<String> {
        let q = parse_xml("<query xmlns='urn:xmpp:mam:2'/>").unwrap();
        let job = a
            .start_query(user, &q, &prep, Reply::default(), false)
            .unwrap();
        match wait(a, job) {
            Outcome::Query(Ok(QueryResults {
                messages: ResultStanzas::Elements(messages),
                ..
            })) => messages
                .iter()
                .map(|m| {
                    let result = m.get_child("result", Some(ns::MAM)).unwrap();
                    result.attr("id").unwrap().to_owned()
                })
                .collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn expired(a: &Archive, job: JobId) -> Step {
        match wait(a, job) {
            Outcome::Expired(Ok(step)) => step,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn removed(a: &Archive, job: JobId) -> u64 {
        match wait(a, job) {
            Outcome::Removed(Ok(n)) => n,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn an_encrypted_archive_opens_every_connection_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_string_lossy().into_owned();
        let options = |n: &str| (n == "mam_database_key").then(|| RawValue::String("k".into()));
        let config = Config::from_options("localhost", &data, &options).unwrap();
        let path = config.storage.sqlite_path().unwrap().to_path_buf();
        // The writer, the checkpointer and the readers open here.
        let mut a = Archive::open(config).unwrap();
        let ids: Vec<String> = (0..3)
            .map(|i| juliet_gets(&mut a, &format!("secret {i}")).id)
            .collect();
        assert_eq!(query_all(&mut a, "juliet"), ids, "a reader reads it");
        // Expiry opens its own connection on its first step.
        let job = a.expire_step().unwrap().expect("the archive expires");
        assert_eq!(expired(&a, job).deleted, 0);
        a.close();
        assert!(matches!(
            SqliteStore::open(&path),
            Err(crate::error::MamError::Key(_))
        ));
    }

    #[test]
    fn a_serialised_answer_is_the_stanza_answer_written_out() {
        let (mut a, _clock, _dir) = archive_with(&[]);
        for body in ["one", "two &amp; &lt;three&gt;"] {
            a.append(
                "juliet",
                "romeo@montague.lit/orchard",
                chat(body),
                Delivery::AtOnce,
            )
            .unwrap()
            .unwrap();
        }
        let q = parse_xml("<query xmlns='urn:xmpp:mam:2' queryid='q'/>").unwrap();
        let mut answers = Vec::new();
        for serialised in [false, true] {
            let reply = Reply {
                to: Some("juliet@localhost/balcony".into()),
                from: Some("juliet@localhost".into()),
                iq_id: Some("iq1".into()),
                serialised,
            };
            let job = a.start_query("juliet", &q, &prep, reply, false).unwrap();
            match wait(&a, job) {
                Outcome::Query(Ok(r)) => answers.push(r),
                other => panic!("unexpected {other:?}"),
            }
        }
        let (stanzas, xml) = match (&answers[0].messages, &answers[1].messages) {
            (ResultStanzas::Elements(e), ResultStanzas::Xml(x)) => (e, x),
            other => panic!("forms not as asked: {other:?}"),
        };
        assert_eq!(stanzas.len(), 2);
        // The same stanzas for a client (the root's attributes may come in another
        // order: the stored text goes out as stored).
        fn reading(xml: &str) -> Element {
            fn sort(el: &mut Element) {
                el.attrs.sort();
                for c in el.children.iter_mut() {
                    if let crate::stanza::Node::Element(c) = c {
                        sort(c);
                    }
                }
            }
            let mut el = parse_xml(xml).unwrap();
            sort(&mut el);
            el
        }
        for (stanza, x) in stanzas.iter().zip(xml) {
            assert_eq!(reading(&to_wire_xml(stanza)), reading(x));
        }
        assert!(xml[1].contains("two &amp; &lt;three&gt;"), "{}", xml[1]);
        assert!(
            xml[0].starts_with("<message to='juliet@localhost/balcony' from='juliet@localhost'>")
        );
        // The iq reply: st.reply's addressing, the fin inside.
        let reply = &answers[1].reply;
        assert_eq!(reply, &answers[0].reply);
        assert_eq!(reply.name, "iq");
        assert_eq!(reply.attr("type"), Some("result"));
        assert_eq!(reply.attr("id"), Some("iq1"));
        assert_eq!(reply.attr("to"), Some("juliet@localhost/balcony"));
        assert_eq!(reply.attr("from"), Some("juliet@localhost"));
        let fin = reply
            .get_child("fin", Some(ns::MAM))
            .expect("fin in the reply");
        assert_eq!(fin.attr("complete"), Some("true"));
    }

    #[test]
    fn a_query_right_after_appending_sees_the_messages_in_order() {
        let (mut a, clock, _dir) = archive_with(&[]);
        let mut ids = Vec::new();
        for i in 0..3 {
            clock.0.fetch_add(1, Ordering::SeqCst);
            let appended = a
                .append(
                    "juliet",
                    "romeo@montague.lit/orchard",
                    chat(&i.to_string()),
                    Delivery::AtOnce,
                )
                .unwrap()
                .unwrap();
            let sid = &appended.stanza_id;
            assert_eq!(sid.xmlns(), Some(ns::STANZA_ID));
            assert_eq!(sid.attr("id"), Some(appended.id.as_str()));
            assert_eq!(sid.attr("by"), Some("juliet@localhost"));
            ids.push(appended.id);
        }
        // No flush: read-your-writes is the reader's job.
        assert_eq!(query_all(&mut a, "juliet"), ids);
        assert!(query_all(&mut a, "romeo").is_empty());
    }

    #[test]
    fn a_read_is_answered_inline_only_while_no_other_read_is_in_flight() {
        let (mut a, _clock, _dir) = archive_with(&[]);
        let appended = a
            .append(
                "juliet",
                "romeo@montague.lit",
                chat("first"),
                Delivery::AtOnce,
            )
            .unwrap()
            .unwrap();
        let q = parse_xml("<query xmlns='urn:xmpp:mam:2'/>").unwrap();
        let job = a
            .start_query("juliet", &q, &prep, Reply::default(), false)
            .unwrap();
        match a.answer_within(job, WAIT).map(|c| c.outcome) {
            Some(Outcome::Query(Ok(r))) => assert_eq!(r.messages.len(), 1),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(a.readers.in_flight(), 0);
        assert!(a.flush(WAIT));

        // Another process holds the write lock: the next write cannot commit, so a
        // query after it waits (read-your-writes) and stays in flight.
        let path = a.config().storage.sqlite_path().unwrap().to_path_buf();
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        juliet_gets(&mut a, "second");
        let held = a
            .start_query("juliet", &q, &prep, Reply::default(), false)
            .unwrap();
        let queued = a.start_metadata("juliet").unwrap();
        assert_eq!(a.readers.in_flight(), 2);
        // Behind another read: back to the loop at once, whatever the budget.
        assert!(a.answer_within(queued, WAIT).is_none());
        // Alone but unfinished within the budget: back to the loop too.
        assert!(a.answer_within(held, Duration::from_millis(20)).is_none());
        other.execute_batch("COMMIT").unwrap();
        // Both arrive the usual way, the query seeing both messages.
        let mut parked = Vec::new();
        match a.wait_job(held, WAIT, &mut parked).map(|c| c.outcome) {
            Some(Outcome::Query(Ok(r))) => assert_eq!(r.messages.len(), 2),
            other => panic!("unexpected {other:?}"),
        }
        match a.wait_job(queued, WAIT, &mut parked).map(|c| c.outcome) {
            Some(Outcome::Metadata(Ok(m))) => {
                let start = m.get_child("start", Some(ns::MAM)).unwrap();
                assert_eq!(start.attr("id"), Some(appended.id.as_str()));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(a.readers.in_flight(), 0);
    }

    #[test]
    fn with_no_inline_wait_every_read_comes_through_the_mailbox() {
        let (mut a, _clock, _dir) =
            archive_with(&[("mam_inline_read_wait", RawValue::Number(0.0))]);
        juliet_gets(&mut a, "x");
        assert!(a.flush(WAIT));
        let job = a.start_metadata("juliet").unwrap();
        // Finished by now, but the loop is not to wait for it, however short.
        while a.readers.in_flight() > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(a.answer_now(job).is_none());
        match wait(&a, job) {
            Outcome::Metadata(Ok(m)) => assert!(m.get_child("end", Some(ns::MAM)).is_some()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn an_append_whose_delivery_waits_gets_its_sequence_number_and_a_committed_notice() {
        let (mut a, _, _dir) = archive_with(&[]);
        let mut append = |body: &str, delivery| {
            a.append("juliet", "romeo@montague.lit", chat(body), delivery)
                .unwrap()
                .unwrap()
        };
        let at_once = append("first", Delivery::AtOnce);
        let waiting = append("second", Delivery::AfterCommit);
        assert!(waiting.seq > at_once.seq);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut committed = 0;
        while committed < waiting.seq && std::time::Instant::now() < deadline {
            a.mailbox.wait(Duration::from_millis(100));
            for c in a.completions().0 {
                if let Outcome::Committed(n) = c.outcome {
                    assert_eq!(c.job, crate::mailbox::COMMITTED_JOB);
                    committed = committed.max(n);
                }
            }
        }
        assert!(
            committed >= waiting.seq,
            "no notice covering {}",
            waiting.seq
        );
        // And what it announces is there for a query.
        assert_eq!(query_all(&mut a, "juliet"), vec![at_once.id, waiting.id]);
    }

    #[test]
    fn closing_commits_every_queued_write() {
        let (mut a, _clock, dir) = archive_with(&[]);
        for i in 0..500 {
            juliet_gets(&mut a, &i.to_string());
        }
        let path = a.config().storage.sqlite_path().unwrap().to_path_buf();
        a.close();
        let mut store = SqliteStore::open(&path).unwrap();
        let page = store
            .find(
                &Owner::new("localhost", "juliet"),
                &crate::store::FindRequest {
                    limit: 1000,
                    total: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(page.total, Some(500));
        drop(dir);
    }

    #[test]
    fn the_fast_path_applies_stock_selection_rules_first() {
        let (mut a, _, _dir) = archive_with(&[]);
        let headline = parse_xml("<message type='headline'><body>x</body></message>").unwrap();
        assert_eq!(
            a.append_if_eligible("juliet", "romeo@montague.lit", headline, Delivery::AtOnce)
                .unwrap(),
            Err(NotStored::Policy("headline"))
        );
        assert!(a
            .append_if_eligible("juliet", "romeo@montague.lit", chat("hi"), Delivery::AtOnce)
            .unwrap()
            .is_ok());
    }

    #[test]
    fn a_message_of_only_chat_states_is_not_stored() {
        let (mut a, _, _dir) = archive_with(&[]);
        let m = parse_xml("<message to='juliet@localhost'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").unwrap();
        assert_eq!(
            a.append("juliet", "romeo@montague.lit", m, Delivery::AtOnce)
                .unwrap(),
            Err(NotStored::EmptyWhenStripped)
        );
    }

    #[test]
    fn smart_enable_archives_nothing_until_a_mam_client_appears() {
        let (mut a, _, _dir) = archive_with(&[("mam_smart_enable", RawValue::Bool(true))]);
        assert_eq!(a.rule("juliet", "romeo@montague.lit").unwrap(), Rule::Skip);
        a.query_form("juliet").unwrap();
        assert_eq!(a.rule("juliet", "romeo@montague.lit").unwrap(), Rule::Store);
    }

    #[test]
    fn prefs_survive_reopening_the_archive() {
        let (mut a, clock, dir) = archive_with(&[]);
        let set = parse_xml("<prefs xmlns='urn:xmpp:mam:2' default='always'><never><jid>tybalt@capulet.lit</jid></never></prefs>").unwrap();
        a.prefs_iq("juliet", Some(&set), &prep).unwrap();
        let config = a.config().clone();
        a.close();
        let path = config.storage.sqlite_path().unwrap().to_path_buf();
        let writer = Box::new(SqliteStore::open(&path).unwrap());
        let readers: Vec<Box<dyn ArchiveStore>> = vec![Box::new(SqliteStore::open(&path).unwrap())];
        let mut b = Archive::with_stores(config, writer, readers, clock).unwrap();
        assert_eq!(b.rule("juliet", "tybalt@capulet.lit").unwrap(), Rule::Skip);
        assert_eq!(b.rule("juliet", "romeo@montague.lit").unwrap(), Rule::Store);
        drop(dir);
    }

    #[test]
    fn roster_default_policy_defers_to_the_roster() {
        let (mut a, _, _dir) =
            archive_with(&[("default_archive_policy", RawValue::String("roster".into()))]);
        assert_eq!(
            a.rule("juliet", "romeo@montague.lit/x").unwrap(),
            Rule::IfInRoster
        );
    }

    #[test]
    fn expiry_removes_only_messages_older_than_the_window() {
        let (mut a, clock, _dir) =
            archive_with(&[("archive_expires_after", RawValue::String("1d".into()))]);
        juliet_gets(&mut a, "old");
        clock.0.fetch_add(2 * 86_400 * 1_000_000, Ordering::SeqCst);
        let new = a
            .append(
                "juliet",
                "romeo@montague.lit",
                chat("new"),
                Delivery::AtOnce,
            )
            .unwrap()
            .unwrap();
        assert!(a.flush(WAIT));
        let job = a.expire_step().unwrap().unwrap();
        assert_eq!(
            expired(&a, job),
            Step {
                deleted: 1,
                more: false
            }
        );
        let job = a.expire_step().unwrap().unwrap();
        assert_eq!(
            expired(&a, job),
            Step {
                deleted: 0,
                more: false
            }
        );
        assert_eq!(query_all(&mut a, "juliet"), vec![new.id]);
    }

    #[test]
    fn at_the_quota_expired_messages_go_first_even_past_the_limit() {
        let (mut a, clock, _dir) = archive_with(&[
            ("archive_expires_after", RawValue::String("1 day".into())),
            ("storage_archive_item_limit", RawValue::Number(3.0)),
        ]);
        for body in ["old 1", "old 2"] {
            juliet_gets(&mut a, body);
        }
        clock.0.fetch_add(2 * 86_400 * 1_000_000, Ordering::SeqCst);
        let mut fresh = Vec::new();
        for body in ["new 1", "new 2"] {
            let appended = a
                .append("juliet", "romeo@montague.lit", chat(body), Delivery::AtOnce)
                .unwrap();
            fresh.push(appended.unwrap().id);
        }
        // Four is one over the quota of three: stock removes both expired messages
        // (not just the oldest one), as the quota hit's first step.
        assert_eq!(query_all(&mut a, "juliet"), fresh);
    }

    #[test]
    fn never_expiring_archives_are_not_expired() {
        let (mut a, _clock, _dir) =
            archive_with(&[("archive_expires_after", RawValue::String("never".into()))]);
        assert_eq!(a.expire_step().unwrap(), None);
    }

    #[test]
    fn metadata_of_an_empty_archive_is_empty() {
        let (mut a, _, _dir) = archive_with(&[]);
        let job = a.start_metadata("juliet").unwrap();
        match wait(&a, job) {
            Outcome::Metadata(Ok(el)) => {
                assert_eq!(to_xml(&el), "<metadata xmlns='urn:xmpp:mam:2'/>")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn deleting_a_user_forgets_their_archive_and_prefs() {
        let (mut a, _, _dir) = archive_with(&[]);
        let set = parse_xml("<prefs xmlns='urn:xmpp:mam:2' default='never'/>").unwrap();
        a.prefs_iq("juliet", Some(&set), &prep).unwrap();
        juliet_gets(&mut a, "x");
        assert_eq!(a.rule("juliet", "romeo@montague.lit").unwrap(), Rule::Skip);
        let job = a.start_delete_user("juliet").unwrap();
        assert_eq!(removed(&a, job), 1);
        assert_eq!(a.rule("juliet", "romeo@montague.lit").unwrap(), Rule::Store);
        assert!(query_all(&mut a, "juliet").is_empty());
    }

    #[test]
    fn stats_count_queued_and_committed_writes_and_the_database_size() {
        let (mut a, _, _dir) = archive_with(&[]);
        let before = a.stats();
        assert_eq!((before.writes_queued, before.writes_committed), (0, 0));
        assert_eq!(before.queue_depth, 0);
        for i in 0..3 {
            juliet_gets(&mut a, &i.to_string());
        }
        let queued = a.stats();
        assert_eq!(queued.writes_queued, 3);
        assert_eq!(
            queued.queue_depth,
            queued.writes_queued - queued.writes_committed
        );
        assert!(a.flush(WAIT));
        let after = a.stats();
        assert_eq!((after.writes_queued, after.writes_committed), (3, 3));
        assert_eq!(after.queue_depth, 0);
        let path = a.config().storage.sqlite_path().unwrap().to_path_buf();
        let on_disk = std::fs::metadata(&path).unwrap().len()
            + std::fs::metadata(format!("{}-wal", path.display()))
                .map(|m| m.len())
                .unwrap_or(0);
        assert!(after.database_bytes > 0);
        assert_eq!(after.database_bytes, on_disk);
    }

    #[test]
    fn the_size_of_a_database_that_does_not_exist_is_zero() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(database_bytes(&dir.path().join("absent.sqlite")), 0);
    }
}
