//! Retention: deleting what is older than `archive_expires_after`, the one home of
//! expiry for the live module and for `prosodyctl mod_mam expire`.
//!
//! - [`period`]: the option's forms and the cut-off (core: the config parser uses it).
//! - Batches: every deletion is a store transaction of at most [`BATCH`] messages
//!   ([`crate::store::ArchiveStore::expire_batch`], round-robin over owners), so
//!   archiving and queries never wait behind a long delete.
//! - [`Expirer`]: the live module's deleting thread. The shim's timer (every
//!   `archive_cleanup_interval`) asks for one [`Step`] at a time and gets
//!   `{deleted, more}` back through the mailbox; it asks again while `more`.
//! - [`run_to_end`]: the same batches in a loop, for the command line.
//!
//! Why a thread of its own, at idle priority: on a busy two-core machine a delete
//! competes with Prosody's own thread for a core, and every millisecond it takes the
//! core from Prosody is a millisecond of latency for every user. The writer thread
//! must not be slowed (its group commits are what delivery's durability waits on), so
//! the deletes run on a separate connection from a thread that the kernel schedules
//! only when a core would otherwise idle (`SCHED_IDLE`; nice 19 where that is
//! refused). A long-running delete still holds SQLite's write lock for one batch at
//! most; a writer blocked on it sleeps, which frees the core for the batch to finish.

pub mod period;

use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::Storage;
use crate::error::{MamError, Result};
use crate::mailbox::{Completion, JobId, Level, Mailbox, Outcome};
use crate::store::{self, ArchiveStore};
use crate::time::{Clock, Micros};

/// Most messages one expiry transaction deletes.
pub const BATCH: usize = 1000;

/// What one expiry batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Messages deleted by this batch.
    pub deleted: u64,
    /// Whether the batch filled up, so more expired messages may remain.
    pub more: bool,
}

impl Step {
    fn of(deleted: u64) -> Step {
        Step {
            deleted,
            more: deleted >= BATCH as u64,
        }
    }
}

/// Runs expiry on `host` to the end, batch after batch, on the caller's store
/// (`prosodyctl mod_mam expire`). `period` is `archive_expires_after` in seconds;
/// `None` (never) deletes nothing. Returns how many messages went.
pub fn run_to_end(
    store: &mut dyn ArchiveStore,
    host: &str,
    period: Option<u64>,
    clock: &dyn Clock,
) -> Result<u64> {
    let Some(period) = period else {
        return Ok(0);
    };
    let cutoff = period::cutoff(period, clock.now_micros());
    let mut total = 0;
    loop {
        let step = Step::of(store.expire_batch(host, cutoff, BATCH)?);
        total += step.deleted;
        if !step.more {
            return Ok(total);
        }
    }
}

/// One batch to run: everything before `cutoff`, reported as `job`.
struct StepRequest {
    job: JobId,
    cutoff: Micros,
}

/// The live module's expiry: the period, and the deleting thread, started at the
/// first step (an archive that never expires never starts it).
pub struct Expirer {
    /// `archive_expires_after` in seconds; `None`: never.
    period: Option<u64>,
    host: String,
    /// Where the thread opens its own connection (on the thread: connecting to a
    /// database server must not hold Prosody's loop).
    storage: Storage,
    mailbox: Arc<Mailbox>,
    /// `None` until the first step, and again once stopped.
    queue: Option<Sender<StepRequest>>,
    thread: Option<JoinHandle<()>>,
}

impl Expirer {
    pub fn new(
        period: Option<u64>,
        host: &str,
        storage: Storage,
        mailbox: Arc<Mailbox>,
    ) -> Expirer {
        Expirer {
            period,
            host: host.to_owned(),
            storage,
            mailbox,
            queue: None,
            thread: None,
        }
    }

    /// Queues one batch of deletions older than the period before `now`, reported as
    /// `job` with [`Outcome::Expired`]. `Ok(false)` when the archive never expires.
    pub fn step(&mut self, job: JobId, now: Micros) -> Result<bool> {
        let Some(period) = self.period else {
            return Ok(false);
        };
        let request = StepRequest {
            job,
            cutoff: period::cutoff(period, now),
        };
        let queue = match &self.queue {
            Some(queue) => queue,
            None => self.start()?,
        };
        queue
            .send(request)
            .map_err(|_| MamError::Thread("the expiry thread has stopped".into()))?;
        Ok(true)
    }

    fn start(&mut self) -> Result<&Sender<StepRequest>> {
        let (queue, requests) = channel::<StepRequest>();
        let deleter = Deleter {
            host: self.host.clone(),
            storage: self.storage.clone(),
            store: None,
            mailbox: self.mailbox.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("mam-expiry".into())
            .spawn(move || deleter.run(requests))
            .map_err(|e| MamError::Thread(format!("cannot start the expiry thread: {e}")))?;
        self.thread = Some(thread);
        Ok(self.queue.insert(queue))
    }

    /// Lets a running batch finish, then stops the thread.
    pub fn stop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Expirer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The deleting thread's state.
struct Deleter {
    host: String,
    storage: Storage,
    /// Opened at the first request and kept (it remembers where the round-robin over
    /// owners stopped); dropped after a failure, so the next step reconnects.
    store: Option<Box<dyn ArchiveStore>>,
    mailbox: Arc<Mailbox>,
}

impl Deleter {
    fn run(mut self, requests: std::sync::mpsc::Receiver<StepRequest>) {
        if let Err(e) = lower_priority() {
            self.mailbox.log(
                Level::Warn,
                format!("Expiry runs at normal priority (could not lower it: {e})"),
            );
        }
        for request in requests {
            let outcome = self.batch(request.cutoff).map(Step::of);
            if outcome.is_err() {
                self.store = None;
            }
            self.mailbox.post(Completion {
                job: request.job,
                outcome: Outcome::Expired(outcome),
            });
        }
    }

    fn batch(&mut self, cutoff: Micros) -> Result<u64> {
        let store = match &mut self.store {
            Some(store) => store,
            None => self.store.insert(store::open(&self.storage, false)?),
        };
        store.expire_batch(&self.host, cutoff, BATCH)
    }
}

/// Moves the calling thread to the idle scheduling class, or failing that to the
/// lowest nice value. Only this thread: Linux applies both per thread. (Also the
/// compression thread's, [`crate::compactor`].)
pub(crate) fn lower_priority() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialised sched_param that outlives the call, and
    // pid 0 names the calling thread; the call reads nothing else.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
        return Ok(());
    }
    // SAFETY: gettid has no preconditions; setpriority takes plain integers.
    let lowered = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
    };
    if lowered == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{ArchivedMessage, FindRequest, Owner};
    use std::time::Duration;

    const T0: Micros = 1_700_000_000_000_000;

    struct FixedClock(Micros);
    impl Clock for FixedClock {
        fn now_micros(&self) -> Micros {
            self.0
        }
    }

    fn message(n: usize, when: Micros) -> ArchivedMessage {
        ArchivedMessage {
            id: format!("id-{n:05}"),
            when,
            with_bare: "romeo@montague.lit".into(),
            with_resource: None,
            xml: format!("<message xmlns='jabber:client'><body>{n}</body></message>"),
        }
    }

    /// `old` messages a day before T0 and `new` ones at T0, for juliet and nurse.
    fn populated(old: usize, new: usize) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("archive.sqlite");
        let mut store = SqliteStore::open(&path).unwrap();
        let mut items = Vec::new();
        for (i, user) in ["juliet", "nurse"].iter().enumerate() {
            for n in 0..old + new {
                let when = if n < old { T0 - 86_400_000_000 } else { T0 };
                items.push((
                    Owner::new("capulet.lit", user),
                    message(i * 10_000 + n, when),
                ));
            }
        }
        store.append_many(&items, None).unwrap();
        (dir, path)
    }

    fn count(path: &std::path::Path, user: &str) -> u64 {
        let mut store = SqliteStore::open(path).unwrap();
        store
            .message_count(&Owner::new("capulet.lit", user))
            .unwrap()
    }

    #[test]
    fn running_to_the_end_deletes_every_expired_message_in_full_batches() {
        let (_dir, path) = populated(BATCH + 7, 3);
        let mut store = SqliteStore::open(&path).unwrap();
        let deleted = run_to_end(&mut store, "capulet.lit", Some(3600), &FixedClock(T0)).unwrap();
        assert_eq!(deleted, 2 * (BATCH as u64 + 7));
        assert_eq!((count(&path, "juliet"), count(&path, "nurse")), (3, 3));
        let page = store
            .find(
                &Owner::new("capulet.lit", "juliet"),
                &FindRequest {
                    limit: 10,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(page.items.iter().all(|m| m.when == T0));
    }

    #[test]
    fn a_never_expiring_archive_is_left_alone() {
        let (_dir, path) = populated(5, 0);
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            run_to_end(&mut store, "capulet.lit", None, &FixedClock(T0)).unwrap(),
            0
        );
        assert_eq!(count(&path, "juliet"), 5);
    }

    fn wait_step(mailbox: &Mailbox, job: JobId) -> Result<Step> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            mailbox.wait(Duration::from_millis(50));
            let (done, _logs) = mailbox.take();
            if let Some(c) = done.into_iter().find(|c| c.job == job) {
                match c.outcome {
                    Outcome::Expired(r) => return r,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "step {job} never finished"
            );
        }
    }

    #[test]
    fn the_thread_reports_each_step_and_whether_more_remain() {
        let (_dir, path) = populated(BATCH, 2);
        let mailbox = Arc::new(Mailbox::new().unwrap());
        let storage = Storage::Sqlite {
            path: path.clone(),
            max_pages: None,
            key: crate::config::DatabaseKey::default(),
        };
        let mut expirer = Expirer::new(Some(3600), "capulet.lit", storage, mailbox.clone());
        let mut steps = Vec::new();
        for job in 1.. {
            assert!(expirer.step(job, T0).unwrap());
            let step = wait_step(&mailbox, job).unwrap();
            steps.push(step.deleted);
            if !step.more {
                break;
            }
        }
        assert_eq!(steps.iter().sum::<u64>(), 2 * BATCH as u64);
        assert!(steps[..steps.len() - 1].iter().all(|&n| n == BATCH as u64));
        assert_eq!((count(&path, "juliet"), count(&path, "nurse")), (2, 2));
        expirer.stop();
    }

    #[test]
    fn without_a_period_no_step_is_queued_and_no_thread_starts() {
        let mailbox = Arc::new(Mailbox::new().unwrap());
        let storage = Storage::Sqlite {
            path: "/nonexistent/never-opened.sqlite".into(),
            max_pages: None,
            key: crate::config::DatabaseKey::default(),
        };
        let mut expirer = Expirer::new(None, "capulet.lit", storage, mailbox);
        assert!(!expirer.step(1, T0).unwrap());
        assert!(expirer.thread.is_none());
    }

    #[test]
    fn a_database_that_cannot_be_opened_fails_the_step_and_the_next_one_tries_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later").join("archive.sqlite");
        let mailbox = Arc::new(Mailbox::new().unwrap());
        let storage = Storage::Sqlite {
            path: path.clone(),
            max_pages: None,
            key: crate::config::DatabaseKey::default(),
        };
        let mut expirer = Expirer::new(Some(3600), "capulet.lit", storage, mailbox.clone());
        assert!(expirer.step(1, T0).unwrap());
        assert!(wait_step(&mailbox, 1).is_err());
        std::fs::create_dir(path.parent().unwrap()).unwrap();
        assert!(expirer.step(2, T0).unwrap());
        assert_eq!(
            wait_step(&mailbox, 2).unwrap(),
            Step {
                deleted: 0,
                more: false
            }
        );
    }

    #[test]
    fn the_deleting_thread_runs_at_idle_priority() {
        let handle = std::thread::spawn(|| {
            lower_priority().unwrap();
            // SAFETY: pid 0 and the thread id name the calling thread; no pointers.
            unsafe {
                let policy = libc::sched_getscheduler(0);
                let nice = libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t);
                (policy, nice)
            }
        });
        let (policy, nice) = handle.join().unwrap();
        assert!(
            policy == libc::SCHED_IDLE || nice == 19,
            "policy {policy}, nice {nice}"
        );
        // Only that thread: this one still runs at normal priority.
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }
}
