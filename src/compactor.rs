//! Compression's background work (issue 18, `archive_compression = true`): training
//! the dictionary, compressing the rows stored before it (or before compression was
//! on, or by an import), and giving the freed space back to the file system.
//!
//! - [`Compaction`]: the steps, on any store; each step is one short transaction
//!   ([`crate::store::ArchiveStore::rewrite_batch`]), so a `kill -9` at any moment
//!   leaves every row either as it was or rewritten, and the next start simply walks
//!   the table again.
//! - [`Compactor`]: the live module's thread, at idle priority like expiry (it must
//!   never take a core from Prosody), on a connection of its own, pausing between
//!   batches so the writer's group commits never queue long behind one.
//! - [`run_to_end`]: the same steps in a loop, for a command line or a test.
//!
//! Dictionaries: the first is trained once the database holds
//! [`codec::MIN_TRAINING_SAMPLES`] messages (until then rows are compressed without
//! one, which already gains a little). One older than [`STALE_AFTER`] is retrained on
//! recent messages, and the new one is kept only if it compresses those at least
//! [`RETRAIN_GAIN_PERCENT`] better: on the bench corpus even another server's
//! dictionary was only 3% worse than the server's own (docs/storage-size.md), so a
//! retrain that gains less is churn.

use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Storage;
use crate::error::{MamError, Result};
use crate::mailbox::{Level, Mailbox};
use crate::store::codec::{self, MIN_TRAINING_SAMPLES, TRAINING_SAMPLES};
use crate::store::{self, ArchiveStore, RewriteMark};
use crate::time::{Clock, Micros};

/// Rows one rewrite transaction looks at (about 10 ms of compression).
pub const REWRITE_SCAN: usize = 1000;
/// Free pages given back per step (4 MiB at SQLite's default page size).
pub const RELEASE_PAGES: u64 = 1024;
/// A dictionary older than this is checked against a fresh one.
pub const STALE_AFTER: Micros = 30 * 24 * 3600 * 1_000_000;
/// How much better (smaller) a fresh dictionary must be to replace the current one.
pub const RETRAIN_GAIN_PERCENT: u64 = 5;
/// Pause between two rewrite batches: the writer gets the database's write lock in
/// between, whatever the scheduler does with this idle-priority thread.
const BATCH_PAUSE: Duration = Duration::from_millis(20);
/// How often the thread looks again once everything is compressed (new dictionary
/// due, rows written as text by an import).
const IDLE_PAUSE: Duration = Duration::from_secs(6 * 3600);
/// After a failure: the store is reopened after this.
const FAILURE_PAUSE: Duration = Duration::from_secs(60);

/// What one [`Compaction::step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    /// The dictionary this step trained and stored, if it did.
    pub trained: Option<u32>,
    /// Rows compressed.
    pub rewritten: u64,
    /// Bytes given back to the file system.
    pub released: u64,
    /// Whether more work remains (then step again soon).
    pub more: bool,
}

/// Where the background work stands; kept by its one caller between steps.
#[derive(Debug, Clone, Default)]
pub struct Compaction {
    /// Dictionary due for a check (at start, and again after each full pass).
    check_dictionary: bool,
    /// The rewrite's position ([`crate::store::RewriteStep::cursor`]); `None` when
    /// the pass is over.
    cursor: Option<i64>,
    /// The newest dictionary when this pass began, once it has looked for the last
    /// pass's mark ([`ArchiveStore::rewrite_mark`]); `None` before.
    pass_dictionary: Option<u32>,
}

impl Compaction {
    /// A fresh start: check the dictionary, then one pass over the whole archive.
    pub fn new() -> Compaction {
        Compaction {
            check_dictionary: true,
            cursor: Some(0),
            pass_dictionary: None,
        }
    }

    /// Starts another pass (and dictionary check) from the beginning.
    pub fn restart(&mut self) {
        *self = Compaction::new();
    }

    /// One step: the dictionary check if due, else one rewrite batch, then some
    /// space back to the file system.
    pub fn step(&mut self, store: &mut dyn ArchiveStore, now: Micros) -> Result<StepReport> {
        let mut report = StepReport::default();
        if self.check_dictionary {
            self.check_dictionary = false;
            report.trained = check_dictionary(store, now)?;
            if report.trained.is_some() {
                // Rows compressed without a dictionary now gain from one.
                self.cursor = Some(0);
            }
            report.more = true;
            return Ok(report);
        }
        if let Some(mut cursor) = self.cursor {
            let dictionary = match self.pass_dictionary {
                Some(d) => d,
                None => {
                    // A pass starts where the last complete one ended, if nothing
                    // has written a text row since and the dictionary is the same
                    // (a new one makes rows compressed without one candidates).
                    let newest = store.newest_dictionary()?.map_or(0, |d| d.version);
                    if let Some(mark) = store.rewrite_mark()? {
                        if mark.dictionary == newest && mark.upto > cursor {
                            cursor = mark.upto;
                        }
                    }
                    self.pass_dictionary = Some(newest);
                    newest
                }
            };
            let step = store.rewrite_batch(cursor, REWRITE_SCAN)?;
            report.rewritten = step.rewritten;
            self.cursor = (!step.done).then_some(step.cursor);
            if step.done {
                store.set_rewrite_mark(RewriteMark {
                    dictionary,
                    upto: step.cursor,
                })?;
            }
        }
        report.released = store.release_space(RELEASE_PAGES)?;
        report.more = self.cursor.is_some() || report.released > 0;
        Ok(report)
    }
}

/// Trains the first dictionary, or a fresh one when the newest is stale and the
/// fresh one is enough better; returns the version stored, if any.
fn check_dictionary(store: &mut dyn ArchiveStore, now: Micros) -> Result<Option<u32>> {
    let current = store.newest_dictionary()?;
    if current
        .as_ref()
        .is_some_and(|d| now.saturating_sub(d.trained_us) < STALE_AFTER)
    {
        return Ok(None);
    }
    let samples = store.recent_stanzas(TRAINING_SAMPLES)?;
    if samples.len() < MIN_TRAINING_SAMPLES {
        return Ok(None);
    }
    let Some(current) = current else {
        let dict = codec::train(&samples)?;
        return store.add_dictionary(&dict, now, samples.len()).map(Some);
    };
    // Judge on messages the candidate was not trained on: every other one.
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, sample) in samples.into_iter().enumerate() {
        if i % 2 == 0 {
            train.push(sample);
        } else {
            test.push(sample);
        }
    }
    let candidate = codec::train(&train)?;
    let fresh = codec::compressed_size(&test, &candidate)?;
    let old = codec::compressed_size(&test, &current.bytes)?;
    if fresh * 100 > old * (100 - RETRAIN_GAIN_PERCENT) {
        // Not worth a new version (every version stays in the database for good).
        // The check repeats at the next pass: one training, at idle priority.
        return Ok(None);
    }
    store.add_dictionary(&candidate, now, train.len()).map(Some)
}

/// Runs compaction to the end on the caller's store (a command line, a test):
/// returns how many rows it compressed and how many bytes went back.
pub fn run_to_end(store: &mut dyn ArchiveStore, clock: &dyn Clock) -> Result<(u64, u64)> {
    store.set_compression(true);
    let mut compaction = Compaction::new();
    let (mut rewritten, mut released) = (0, 0);
    loop {
        let step = compaction.step(store, clock.now_micros())?;
        rewritten += step.rewritten;
        released += step.released;
        if !step.more {
            return Ok((rewritten, released));
        }
    }
}

/// The live module's compaction thread.
pub struct Compactor {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Compactor {
    /// Starts compaction on a connection of its own to `storage` (opened on the
    /// thread: connecting to a database server must not hold Prosody's loop).
    pub fn start(
        storage: Storage,
        clock: Arc<dyn Clock>,
        mailbox: Arc<Mailbox>,
    ) -> Result<Compactor> {
        let (stop, stopped) = channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mam-compact".into())
            .spawn(move || {
                if let Err(e) = crate::expiry::lower_priority() {
                    mailbox.log(
                        Level::Warn,
                        format!("Compression runs at normal priority (could not lower it: {e})"),
                    );
                }
                let mut store: Option<Box<dyn ArchiveStore>> = None;
                let mut compaction = Compaction::new();
                let mut rewritten = 0u64;
                let mut released = 0u64;
                let mut pass_started = Instant::now();
                loop {
                    let result = (|| {
                        let s = match &mut store {
                            Some(s) => s,
                            None => {
                                let mut s = store::open(&storage, false)?;
                                s.set_compression(true);
                                store.insert(s)
                            }
                        };
                        compaction.step(s.as_mut(), clock.now_micros())
                    })();
                    let pause = match result {
                        Ok(step) => {
                            if let Some(version) = step.trained {
                                mailbox.log(
                                    Level::Info,
                                    format!("Trained compression dictionary {version} on the archive's recent messages"),
                                );
                            }
                            rewritten += step.rewritten;
                            released += step.released;
                            if step.more {
                                BATCH_PAUSE
                            } else {
                                if rewritten > 0 || released > 0 {
                                    mailbox.log(
                                        Level::Info,
                                        format!(
                                            "Compressed {rewritten} stored messages and gave {released} bytes back to the file system in {:.0} s",
                                            pass_started.elapsed().as_secs_f64()
                                        ),
                                    );
                                }
                                rewritten = 0;
                                released = 0;
                                compaction.restart();
                                IDLE_PAUSE
                            }
                        }
                        Err(e) => {
                            mailbox.log(
                                Level::Warn,
                                format!("Compressing stored messages failed, retrying in a minute: {e}"),
                            );
                            store = None;
                            FAILURE_PAUSE
                        }
                    };
                    match stopped.recv_timeout(pause) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if pause == IDLE_PAUSE {
                        pass_started = Instant::now();
                    }
                }
            })
            .map_err(|e| MamError::Thread(format!("cannot start the compression thread: {e}")))?;
        Ok(Compactor {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Lets a running batch finish, then stops the thread.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{ArchivedMessage, FindRequest, Owner};

    const DAY: Micros = 24 * 3600 * 1_000_000;
    const T0: Micros = 1_767_225_600_000_000;

    fn owner() -> Owner {
        Owner::new("capulet.lit", "juliet")
    }

    /// `n` messages from `first` on, in one of two styles of text (so a dictionary
    /// trained on one is stale for the other).
    fn add(store: &mut dyn ArchiveStore, first: usize, n: usize, style: u8) {
        let items: Vec<(Owner, ArchivedMessage)> = (first..first + n)
            .map(|i| {
                let xml = match style {
                    0 => format!(
                        "<message xmlns='jabber:client' type='chat' id='a{i}'><body>the balcony, \
                         scene {i}, and the nurse calls</body><markable xmlns='urn:xmpp:chat-markers:0'/></message>"
                    ),
                    _ => format!(
                        "<message xmlns='jabber:client' type='groupchat' id='z{i}'><subject>Weekly \
                         build report {i}: all green</subject><x xmlns='jabber:x:oob'><url>https://ci.example/{i}</url></x></message>"
                    ),
                };
                let msg = ArchivedMessage {
                    id: format!("m{i:06}"),
                    when: T0 + i as Micros,
                    with_bare: "romeo@montague.lit".into(),
                    with_resource: None,
                    xml,
                };
                (owner(), msg)
            })
            .collect();
        store.append_many(&items, None).expect("append");
    }

    fn run(store: &mut dyn ArchiveStore, now: Micros) -> Vec<StepReport> {
        let mut c = Compaction::new();
        let mut steps = Vec::new();
        loop {
            let step = c.step(store, now).expect("step");
            steps.push(step);
            if !step.more {
                return steps;
            }
        }
    }

    fn trained(steps: &[StepReport]) -> Vec<u32> {
        steps.iter().filter_map(|s| s.trained).collect()
    }

    #[test]
    fn the_first_dictionary_waits_for_enough_messages_and_then_compresses_them_all() {
        let mut store = SqliteStore::open_in_memory().expect("open");
        store.set_compression(true);
        add(&mut store, 0, MIN_TRAINING_SAMPLES - 1, 0);
        let steps = run(&mut store, T0);
        assert_eq!(trained(&steps), Vec::<u32>::new());
        add(&mut store, MIN_TRAINING_SAMPLES - 1, 1, 0);
        let steps = run(&mut store, T0);
        assert_eq!(trained(&steps), vec![1]);
        // Every row was compressed without a dictionary as it was written; the pass
        // after training recompresses them all with it.
        let rewritten: u64 = steps.iter().map(|s| s.rewritten).sum();
        assert_eq!(rewritten, MIN_TRAINING_SAMPLES as u64);
        let all = FindRequest {
            limit: 10_000,
            ..FindRequest::default()
        };
        assert_eq!(
            store.find(&owner(), &all).expect("find").items.len(),
            MIN_TRAINING_SAMPLES
        );
    }

    #[test]
    fn a_stale_dictionary_is_replaced_only_by_a_clearly_better_one() {
        let mut store = SqliteStore::open_in_memory().expect("open");
        store.set_compression(true);
        add(&mut store, 0, 1000, 0);
        assert_eq!(trained(&run(&mut store, T0)), vec![1]);
        // Not stale yet: no check, whatever the messages look like now.
        add(&mut store, 1000, 2000, 1);
        assert_eq!(
            trained(&run(&mut store, T0 + STALE_AFTER - DAY)),
            Vec::<u32>::new()
        );
        // Stale, and the messages have changed: a new one is kept.
        assert_eq!(trained(&run(&mut store, T0 + STALE_AFTER + DAY)), vec![2]);
        // Stale again later, and nothing new since it was trained: a fresh one is no
        // better, so none is added.
        assert_eq!(
            trained(&run(&mut store, T0 + 2 * STALE_AFTER + 2 * DAY)),
            Vec::<u32>::new()
        );
        assert_eq!(
            store
                .newest_dictionary()
                .expect("newest")
                .map(|d| d.version),
            Some(2)
        );
    }

    #[test]
    fn a_pass_starts_where_the_last_complete_one_ended_until_text_lands_before_it() {
        let mut store = SqliteStore::open_in_memory().expect("open");
        store.set_compression(true);
        add(&mut store, 0, 600, 0);
        assert_eq!(trained(&run(&mut store, T0)), vec![1]);
        add(&mut store, 600, 4 * REWRITE_SCAN, 0);
        // A complete pass walks everything, then leaves its mark at the end.
        let first = run(&mut store, T0);
        assert!(first.len() > 4, "{} steps", first.len());
        let mark = store.rewrite_mark().expect("mark").expect("kept");
        assert_eq!(mark.dictionary, 1);
        // The next pass (a restart: a new Compaction) starts at the mark: its check,
        // then one window.
        let second = run(&mut store, T0);
        assert_eq!(second.len(), 2, "{second:?}");
        // Rows written since then, compressed or not (compression off), leave the
        // mark alone: the next pass starts at it and finds the text row.
        add(&mut store, 10_000, 10, 0);
        store.set_compression(false);
        add(&mut store, 20_000, 1, 0);
        store.set_compression(true);
        assert!(store.rewrite_mark().expect("mark").is_some());
        let third = run(&mut store, T0);
        assert_eq!(third.len(), 2, "{third:?}");
        assert_eq!(third.iter().map(|s| s.rewritten).sum::<u64>(), 1);
        // A text row under a rowid at or before the mark (SQLite reuses the rowids of
        // deleted newest rows) takes the mark away: the next pass walks everything
        // and compresses it.
        let newest: Vec<String> = (10_000..10_010)
            .chain(20_000..20_001)
            .map(|i| format!("m{i:06}"))
            .collect();
        assert_eq!(store.delete_ids(&owner(), &newest).expect("delete"), 11);
        store.set_compression(false);
        add(&mut store, 30_000, 1, 0);
        store.set_compression(true);
        assert_eq!(store.rewrite_mark().expect("mark"), None);
        let fourth = run(&mut store, T0);
        assert!(fourth.len() > 4, "{} steps", fourth.len());
        assert_eq!(fourth.iter().map(|s| s.rewritten).sum::<u64>(), 1);
        assert!(store.rewrite_mark().expect("mark").is_some());
    }

    #[test]
    fn a_new_dictionary_makes_the_next_pass_walk_the_whole_table() {
        let mut store = SqliteStore::open_in_memory().expect("open");
        store.set_compression(true);
        add(&mut store, 0, 3 * REWRITE_SCAN, 0);
        run(&mut store, T0);
        let before = store.rewrite_mark().expect("mark").expect("kept");
        store
            .set_rewrite_mark(RewriteMark {
                dictionary: before.dictionary + 1,
                ..before
            })
            .expect("a mark of another dictionary");
        let again = run(&mut store, T0);
        assert!(again.len() > 3, "{} steps", again.len());
        assert_eq!(store.rewrite_mark().expect("mark"), Some(before));
    }
}
