//! The writer thread: every archive write happens here, off Prosody's event loop.
//!
//! The event loop assigns ids and timestamps itself (so delivery never waits) and
//! queues the write. The writer wakes on the first write, lets more gather for
//! [`LINGER`], and commits consecutive appends in one transaction (group commit):
//! one WAL write for many messages.
//!
//! A message whose delivery waits for its commit ([`Delivery::AfterCommit`], the
//! default: see docs/durability.md) skips the linger: the writer commits what it has
//! as soon as the queue is empty, and tells the event loop how far it got
//! ([`Outcome::Committed`]) so what the shim held back goes out. Under load the group
//! still forms by itself: whatever arrives while one commit runs goes into the next.
//!
//! Durability window with `mam_commit_before_delivery = false` (delivery at once):
//! a message is on disk once the writer
//! commits it, normally within a few milliseconds of being queued (the linger plus
//! the commit). At most [`QUEUE_CAPACITY`] writes are ever accepted and not yet
//! committed; a graceful stop or module unload commits them all, a `kill -9` loses at
//! most those not waited for. When storage fails, the writer retries with backoff
//! (logging the cause once and the recovery once); while it cannot write, the queue
//! fills and further messages are delivered but not archived, each one logged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{MamError, Result};
use crate::expiry::period::cutoff;
use crate::mailbox::{Completion, JobId, Level, Mailbox, Outcome, COMMITTED_JOB};
use crate::policy::Prefs;
use crate::store::{ArchiveStore, ArchivedMessage, Owner, Quota};

/// Most writes accepted but not yet committed (the crash-loss bound).
pub const QUEUE_CAPACITY: usize = 20_000;
/// Most appends committed in one transaction.
const MAX_GROUP: usize = 2_000;
/// How long the writer lets writes gather after the first one arrives before it
/// commits: under load this turns hundreds of wake-ups and transactions into one
/// (and takes the writer's CPU off the core Prosody needs); when quiet it adds at
/// most this much to the durability window.
const LINGER: Duration = Duration::from_millis(2);
/// Longest pause between retries of a failing write.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Attempts left for writes still failing once a stop is asked for, and the pause
/// between them: a stop during a storage fault ends in well under a second (plus
/// SQLite's busy timeout per attempt when the database is locked).
const ATTEMPTS_WHEN_STOPPING: u32 = 3;
const BACKOFF_WHEN_STOPPING: Duration = Duration::from_millis(100);

/// Whether a message's delivery waits for its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered at once; committed within the linger.
    AtOnce,
    /// Delivered once committed: commit without lingering and say so.
    AfterCommit,
}

/// One write, in queue order.
#[derive(Debug)]
pub enum WriteOp {
    Append {
        owner: Owner,
        msg: ArchivedMessage,
        delivery: Delivery,
    },
    SetPrefs {
        owner: Owner,
        prefs: Prefs,
    },
    /// An account's or a room's whole archive (a room's presences too), in one job
    /// whose count is every message removed.
    DeleteUser {
        owners: Vec<Owner>,
        job: JobId,
    },
    /// The storage provider's writes ([`crate::archive::provider`]): applied once,
    /// never retried, the answer (or the failure) posted as job `job`.
    Provider {
        job: JobId,
        op: Box<crate::archive::provider::StoreWrite>,
    },
}

enum Command {
    Write(u64, WriteOp),
    Stop,
}

/// How far the writer has got: the sequence number of the last committed write.
pub struct Progress {
    committed: Mutex<u64>,
    changed: Condvar,
}

impl Progress {
    fn set(&self, seq: u64) {
        let mut c = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        if seq > *c {
            *c = seq;
        }
        self.changed.notify_all();
    }

    /// Sequence number of the last committed write.
    pub fn committed(&self) -> u64 {
        *self.committed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until write `seq` is committed, or `timeout` passes. Returns whether it
    /// was committed. Called by reader threads (read-your-writes), never by the loop.
    pub fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut c = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        while *c < seq {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            c = match self.changed.wait_timeout(c, deadline - now) {
                Ok((guard, _)) => guard,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }
}

/// The event loop's handle on the writer thread.
pub struct Writer {
    queue: SyncSender<Command>,
    /// Sequence number of the last write queued (main thread only).
    queued: u64,
    progress: Arc<Progress>,
    /// Set by [`Writer::stop`] before it queues `Stop`: a writer stuck retrying a
    /// failing write never reads the queue, so it checks this between attempts.
    stop_requested: Arc<AtomicBool>,
    /// The database size in bytes as the writer last measured it.
    database_bytes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread over `store`.
    pub fn start(
        store: Box<dyn ArchiveStore>,
        quota: Option<QuotaPolicy>,
        mailbox: Arc<Mailbox>,
    ) -> Result<Writer> {
        let (queue, rx) = sync_channel(QUEUE_CAPACITY);
        let progress = Arc::new(Progress {
            committed: Mutex::new(0),
            changed: Condvar::new(),
        });
        let thread_progress = progress.clone();
        let stop_requested = Arc::new(AtomicBool::new(false));
        let thread_stop_requested = stop_requested.clone();
        let database_bytes = Arc::new(AtomicU64::new(0));
        let thread_database_bytes = database_bytes.clone();
        let thread = std::thread::Builder::new()
            .name("mam-writer".into())
            .spawn(move || {
                WriterThread {
                    store,
                    quota,
                    mailbox,
                    progress: thread_progress,
                    stop_requested: thread_stop_requested,
                    failing: false,
                    stopping: false,
                    database_bytes: thread_database_bytes,
                    size_measured: None,
                }
                .run(rx)
            })
            .map_err(|e| MamError::Thread(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer {
            queue,
            queued: 0,
            progress,
            stop_requested,
            database_bytes,
            thread: Some(thread),
        })
    }

    /// Queues a write without ever blocking. Returns its sequence number, or an error
    /// when the queue is full (storage has been failing for a while).
    pub fn submit(&mut self, op: WriteOp) -> Result<u64> {
        let seq = self.queued + 1;
        match self.queue.try_send(Command::Write(seq, op)) {
            Ok(()) => {
                self.queued = seq;
                Ok(seq)
            }
            Err(TrySendError::Full(_)) => Err(MamError::Overloaded(format!(
                "archive write queue full ({QUEUE_CAPACITY} writes waiting for storage)"
            ))),
            Err(TrySendError::Disconnected(_)) => {
                Err(MamError::Overloaded("archive writer has stopped".into()))
            }
        }
    }

    /// Sequence number of the newest queued write: a read that must see everything
    /// queued so far waits for this one.
    pub fn queued(&self) -> u64 {
        self.queued
    }

    /// The database size as the writer thread last measured it (at most
    /// [`SIZE_INTERVAL`] old while writes happen): for backends whose size cannot be
    /// read without a round trip, which the event loop must not wait for.
    pub fn database_bytes(&self) -> u64 {
        self.database_bytes.load(Ordering::Relaxed)
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Blocks until everything queued so far is committed (or `timeout`). For
    /// shutdown, tests and tools.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.progress.wait_for(self.queued, timeout)
    }

    /// Commits everything queued, then stops the thread.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop_requested.store(true, Ordering::Release);
            // A blocking send: the queue may be full; the writer drains it first.
            let _ = self.queue.send(Command::Stop);
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

// Metrics: how far the writer has got, read without waiting (a brief lock).
impl Writer {
    /// Sequence number of the last committed write.
    pub fn committed(&self) -> u64 {
        self.progress.committed()
    }
}

/// The quota the writer applies: `storage_archive_item_limit`, and the retention
/// period whose expired messages go first when an owner is over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaPolicy {
    pub limit: u64,
    /// `archive_expires_after` in seconds; `None`: never.
    pub period: Option<u64>,
}

impl QuotaPolicy {
    /// The quota for a run of messages: expired is older than the period before the
    /// newest of them (stamped on the spot by the archive's clock, so "now").
    fn for_run<'a>(&self, run: impl Iterator<Item = &'a ArchivedMessage>) -> Quota {
        let newest = run.map(|m| m.when).max();
        Quota {
            limit: self.limit,
            expired_before: self.period.zip(newest).map(|(p, now)| cutoff(p, now)),
        }
    }
}

struct WriterThread {
    store: Box<dyn ArchiveStore>,
    quota: Option<QuotaPolicy>,
    mailbox: Arc<Mailbox>,
    progress: Arc<Progress>,
    /// [`Writer::stop`] was called (`Stop` may still be behind a full queue).
    stop_requested: Arc<AtomicBool>,
    /// The last attempt failed (so the cause was logged; log the recovery).
    failing: bool,
    /// `Stop` was received: drain, commit, return.
    stopping: bool,
    database_bytes: Arc<AtomicU64>,
    /// When the size was last measured; `None` before the first time.
    size_measured: Option<Instant>,
}

/// How often the writer measures the database size while it writes.
pub const SIZE_INTERVAL: Duration = Duration::from_secs(10);

/// Writes taken off the queue and not yet committed, and whether a delivery waits
/// for any of them.
#[derive(Default)]
struct Pending {
    writes: Vec<(u64, WriteOp)>,
    awaited: bool,
}

impl Pending {
    fn push(&mut self, seq: u64, op: WriteOp) {
        self.awaited |= matches!(
            op,
            WriteOp::Append {
                delivery: Delivery::AfterCommit,
                ..
            }
        );
        self.writes.push((seq, op));
    }
}

impl WriterThread {
    fn run(mut self, rx: Receiver<Command>) {
        self.measure_size();
        let mut pending = Pending::default();
        loop {
            if self.stopping {
                // Stop was received: commit what is still queued behind it, then end.
                while let Ok(Command::Write(seq, op)) = rx.try_recv() {
                    pending.push(seq, op);
                }
                if pending.writes.is_empty() {
                    return;
                }
            } else if pending.writes.is_empty() {
                // Wait for work, then take everything already queued behind it.
                match rx.recv() {
                    Ok(Command::Write(seq, op)) => pending.push(seq, op),
                    Ok(Command::Stop) | Err(_) => {
                        self.stopping = true;
                        continue;
                    }
                }
            }
            // Let writes gather by sleeping, not by waiting on the queue: a receiver
            // parked in the queue turns every send into a wake-up (a futex syscall on
            // Prosody's thread and a context switch here, per message); a sleeping
            // one costs the sender nothing, and the queue is drained when it wakes.
            // Not while a delivery waits: then the group is what has arrived so far.
            let linger_until = Instant::now() + LINGER;
            while pending.writes.len() < MAX_GROUP && !self.stopping {
                match rx.try_recv() {
                    Ok(Command::Write(seq, op)) => {
                        pending.push(seq, op);
                        continue;
                    }
                    Ok(Command::Stop) => self.stopping = true,
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {
                        let now = Instant::now();
                        if pending.awaited || now >= linger_until {
                            break;
                        }
                        std::thread::sleep(linger_until - now);
                    }
                }
            }
            let last = pending.writes.last().map_or(0, |(seq, _)| *seq);
            self.apply_with_retry(&mut pending.writes);
            if pending.writes.is_empty() {
                // Committed, or given up at shutdown (then the stop releases the
                // waiting deliveries itself).
                if pending.awaited && self.progress.committed() >= last {
                    self.mailbox.post(Completion {
                        job: COMMITTED_JOB,
                        outcome: Outcome::Committed(last),
                    });
                }
                pending.awaited = false;
            }
            self.measure_size();
        }
    }

    /// Refreshes the size the metrics report, at most every [`SIZE_INTERVAL`]; a
    /// failure keeps the last value (the write path logs storage trouble already).
    fn measure_size(&mut self) {
        if self
            .size_measured
            .is_some_and(|t| t.elapsed() < SIZE_INTERVAL)
        {
            return;
        }
        self.size_measured = Some(Instant::now());
        if let Ok(Some(bytes)) = self.store.database_bytes() {
            self.database_bytes.store(bytes, Ordering::Relaxed);
        }
    }

    /// Applies `pending` in order, retrying storage failures with backoff. On return
    /// `pending` is empty (committed, or given up at shutdown and logged), except when
    /// a stop is first noticed during a failure: then `stopping` is set and the caller
    /// adds what is still queued before the last attempts.
    fn apply_with_retry(&mut self, pending: &mut Vec<(u64, WriteOp)>) {
        let mut backoff = Duration::from_millis(50);
        let mut attempts_while_stopping = 0;
        loop {
            match self.apply(pending) {
                Ok(()) => {
                    if self.failing {
                        self.failing = false;
                        self.mailbox.log(
                            Level::Info,
                            "archive storage recovered; writes resumed".into(),
                        );
                    }
                    pending.clear();
                    return;
                }
                Err(err) => {
                    if !self.failing {
                        self.failing = true;
                        self.mailbox.log(
                            Level::Error,
                            format!("archive write failed, retrying with backoff: {err}"),
                        );
                    }
                    if !self.stopping && self.stop_requested.load(Ordering::Acquire) {
                        // Asked to stop while storage fails: go and take everything
                        // still queued, then make the last attempts on all of it.
                        self.stopping = true;
                        return;
                    }
                    if self.stopping {
                        backoff = backoff.min(BACKOFF_WHEN_STOPPING);
                        attempts_while_stopping += 1;
                        if attempts_while_stopping >= ATTEMPTS_WHEN_STOPPING {
                            self.mailbox.log(
                                Level::Error,
                                format!(
                                    "shutting down with {} archive writes not stored \
                                     ({} of them messages): {err}",
                                    pending.len(),
                                    pending
                                        .iter()
                                        .filter(|(_, op)| matches!(op, WriteOp::Append { .. }))
                                        .count()
                                ),
                            );
                            pending.clear();
                            return;
                        }
                    }
                    self.pause(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Sleeps for `backoff`, or less if a stop is asked for meanwhile.
    fn pause(&self, backoff: Duration) {
        let until = Instant::now() + backoff;
        loop {
            let now = Instant::now();
            if now >= until || self.stop_requested.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
    }

    /// Applies writes in order: runs of appends as one transaction each, other writes
    /// one by one. Removes what it has applied from the front of `pending`, so a retry
    /// after a failure resumes where it stopped.
    fn apply(&mut self, pending: &mut Vec<(u64, WriteOp)>) -> Result<()> {
        while !pending.is_empty() {
            let run = pending
                .iter()
                .take_while(|(_, op)| matches!(op, WriteOp::Append { .. }))
                .count();
            if run > 0 {
                let items: Vec<(Owner, ArchivedMessage)> = pending[..run]
                    .iter()
                    .filter_map(|(_, op)| match op {
                        WriteOp::Append { owner, msg, .. } => Some((owner.clone(), msg.clone())),
                        _ => None,
                    })
                    .collect();
                let quota = self.quota.map(|q| q.for_run(items.iter().map(|(_, m)| m)));
                match self.store.append_many(&items, quota) {
                    Ok(_) => {}
                    Err(e) if e.is_constraint() => self.append_one_by_one(&items),
                    Err(e) => return Err(e),
                }
                let last = pending[run - 1].0;
                pending.drain(..run);
                self.progress.set(last);
                continue;
            }
            let (seq, op) = pending.remove(0);
            if let Err(e) = self.apply_one(&op) {
                // Put it back so the retry starts with it.
                pending.insert(0, (seq, op));
                return Err(e);
            }
            self.progress.set(seq);
        }
        Ok(())
    }

    /// A batch hit a constraint (a duplicate id: practically impossible with random
    /// ids, but one bad row must not block every other message): store the rest.
    fn append_one_by_one(&mut self, items: &[(Owner, ArchivedMessage)]) {
        for (owner, msg) in items {
            let quota = self.quota.map(|q| q.for_run(std::iter::once(msg)));
            if let Err(e) = self.store.append(owner, msg, quota) {
                self.mailbox.log(
                    Level::Error,
                    format!("message {} for {} not archived: {e}", msg.id, owner.user),
                );
            }
        }
    }

    fn apply_one(&mut self, op: &WriteOp) -> Result<()> {
        match op {
            WriteOp::Append { .. } => unreachable_append(),
            WriteOp::SetPrefs { owner, prefs } => self.store.set_prefs(owner, prefs),
            WriteOp::DeleteUser { owners, job } => {
                let mut result = Ok(0);
                for owner in owners {
                    result = result.and_then(|n| Ok(n + self.store.delete_user(owner)?));
                }
                self.finish(*job, result)
            }
            WriteOp::Provider { job, op } => {
                let answer = crate::archive::provider::apply_write(self.store.as_mut(), op);
                self.mailbox.post(Completion {
                    job: *job,
                    outcome: crate::archive::provider::outcome(answer),
                });
                Ok(())
            }
        }
    }

    /// Reports a job's result; storage errors are retried, not reported.
    fn finish(&self, job: JobId, result: Result<u64>) -> Result<()> {
        let removed = result?;
        self.mailbox.post(Completion {
            job,
            outcome: Outcome::Removed(Ok(removed)),
        });
        Ok(())
    }
}

/// Appends are always handled as a run by [`WriterThread::apply`].
fn unreachable_append() -> Result<()> {
    Err(MamError::Corrupt("append outside an append run".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::time::Micros;

    fn message(i: usize, body_len: usize) -> ArchivedMessage {
        ArchivedMessage {
            id: format!("id{i:06}"),
            when: i as Micros,
            with_bare: "romeo@montague.lit".into(),
            with_resource: None,
            xml: format!(
                "<message xmlns='jabber:client'><body>{}</body></message>",
                "x".repeat(body_len)
            ),
        }
    }

    fn logs_containing(logs: &[(Level, String)], needle: &str) -> Vec<String> {
        logs.iter()
            .filter(|(_, l)| l.contains(needle))
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Every `Committed(n)` notice in the mailbox, in order.
    fn committed_notices(mailbox: &Mailbox) -> Vec<u64> {
        let (done, _) = mailbox.take();
        done.into_iter()
            .filter_map(|c| match c.outcome {
                Outcome::Committed(n) => Some(n),
                _ => None,
            })
            .collect()
    }

    fn append(writer: &mut Writer, owner: &Owner, i: usize, delivery: Delivery) -> u64 {
        writer
            .submit(WriteOp::Append {
                owner: owner.clone(),
                msg: message(i, 10),
                delivery,
            })
            .unwrap()
    }

    #[test]
    fn a_waiting_delivery_is_told_when_its_write_is_committed_and_no_one_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("a.sqlite")).unwrap();
        let mailbox = Arc::new(Mailbox::new().unwrap());
        let mut writer = Writer::start(Box::new(store), None, mailbox.clone()).unwrap();
        let owner = Owner::new("capulet.lit", "juliet");

        // Nobody waits: committed, and no notice posted.
        for i in 0..5 {
            append(&mut writer, &owner, i, Delivery::AtOnce);
        }
        assert!(writer.flush(Duration::from_secs(5)));
        assert_eq!(committed_notices(&mailbox), Vec::<u64>::new());

        // A waiting delivery among others: one notice covering it, from the commit
        // that took it (never a notice for something not yet committed).
        append(&mut writer, &owner, 5, Delivery::AtOnce);
        let waited = append(&mut writer, &owner, 6, Delivery::AfterCommit);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut notices = Vec::new();
        while !notices.iter().any(|&n| n >= waited) && Instant::now() < deadline {
            mailbox.wait(Duration::from_millis(100));
            notices.extend(committed_notices(&mailbox));
        }
        assert!(notices.iter().any(|&n| n >= waited), "{notices:?}");
        assert!(
            notices.iter().all(|&n| n <= writer.committed()),
            "{notices:?}"
        );
        writer.stop();
    }

    /// A writer over a database capped at 30 pages of 4 KiB: about 120 KB.
    fn writer_on_a_tiny_database() -> (tempfile::TempDir, std::path::PathBuf, Arc<Mailbox>, Writer)
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.sqlite");
        let mut store = SqliteStore::open(&path).unwrap();
        store.set_max_pages(30).unwrap();
        let mailbox = Arc::new(Mailbox::new().unwrap());
        let writer = Writer::start(Box::new(store), None, mailbox.clone()).unwrap();
        (dir, path, mailbox, writer)
    }

    #[test]
    fn a_waiting_delivery_is_not_told_while_its_write_cannot_be_committed() {
        let (_dir, _path, mailbox, mut writer) = writer_on_a_tiny_database();
        let owner = Owner::new("capulet.lit", "juliet");
        for i in 0..200 {
            writer
                .submit(WriteOp::Append {
                    owner: owner.clone(),
                    msg: message(i, 2000),
                    delivery: Delivery::AfterCommit,
                })
                .unwrap();
        }
        assert!(!writer.flush(Duration::from_millis(500)), "all 200 fit?");
        let notices = committed_notices(&mailbox);
        let committed = writer.committed();
        assert!(committed < 200);
        // Only what really was committed before the database filled up is announced.
        assert!(
            notices.iter().all(|&n| n <= committed),
            "{notices:?} vs {committed}"
        );
        writer.stop();
    }

    #[test]
    fn a_full_database_is_logged_once_and_a_stop_during_it_ends_promptly() {
        let (_dir, path, mailbox, mut writer) = writer_on_a_tiny_database();
        let owner = Owner::new("capulet.lit", "juliet");
        for i in 0..5 {
            let msg = message(i, 10);
            writer
                .submit(WriteOp::Append {
                    owner: owner.clone(),
                    msg,
                    delivery: Delivery::AtOnce,
                })
                .unwrap();
        }
        assert!(writer.flush(Duration::from_secs(5)));
        // 30 pages of 4 KiB cannot hold 200 more messages of 2 KB.
        for i in 5..205 {
            let msg = message(i, 2000);
            writer
                .submit(WriteOp::Append {
                    owner: owner.clone(),
                    msg,
                    delivery: Delivery::AtOnce,
                })
                .unwrap();
        }
        assert!(!writer.flush(Duration::from_millis(500)), "all 200 fit?");
        let started = Instant::now();
        writer.stop();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "stop took {:?}",
            started.elapsed()
        );

        let (_, logs) = mailbox.take();
        let failed = logs_containing(&logs, "archive write failed");
        assert_eq!(failed.len(), 1, "{logs:?}");
        assert!(failed[0].contains("full"), "{failed:?}");
        let lost = logs_containing(&logs, "shutting down with");
        assert_eq!(lost.len(), 1, "{logs:?}");

        // What was committed before the fault is there; what was not stored is exactly
        // the count the shutdown line gives.
        let mut check = SqliteStore::open(&path).unwrap();
        let stored = check.message_count(&owner).unwrap() as usize;
        assert!((5..205).contains(&stored), "stored {stored}");
        assert!(
            lost[0].contains(&format!("with {} archive writes", 205 - stored)),
            "{lost:?}"
        );
    }
}
