//! Work finished on Rust threads, waiting to be picked up by Prosody's event loop.
//!
//! Threads never touch Lua. They post a [`Completion`] (or a log line) here and write
//! one byte to a socket whose other end Prosody watches (`server.watchfd`); the loop
//! wakes, the shim calls `completions()`, and results become stanzas on the main
//! thread. The byte is only a wake-up: the queue is the truth, so a lost or extra
//! wake-up costs nothing.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Result as MamResult;
use crate::stanza::Element;

/// Identifies one asynchronous request from the shim.
pub type JobId = u64;

/// The job of [`Outcome::Committed`] notices, which answer no request (jobs the
/// archive hands out start at 1).
pub const COMMITTED_JOB: JobId = 0;

/// Whom a query's answer goes to, and in which form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// The requesting session's JID (`to` of every result and of the `<iq>` reply).
    pub to: Option<String>,
    /// The archive's JID as the request addressed it (`from` of the replies).
    pub from: Option<String>,
    /// The request's `id`, repeated on the `<iq type='result'>`.
    pub iq_id: Option<String>,
    /// Serialise on the reader thread: the session writes strings as they are.
    pub serialised: bool,
}

/// The `<message>` results of a query, in order, in the form the session needs.
///
/// A session whose outgoing stanzas pass through filters (stream management,
/// websocket framing, CSI) needs Prosody stanza objects, built on the event loop from
/// [`ResultStanzas::Elements`]. Every other session is sent the XML Prosody's own
/// `tostring` would write, produced on the reader thread: building stanza tables and
/// serialising them in Lua was most of a page's cost on the event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultStanzas {
    Elements(Vec<Element>),
    Xml(Vec<String>),
}

impl ResultStanzas {
    pub fn len(&self) -> usize {
        match self {
            ResultStanzas::Elements(v) => v.len(),
            ResultStanzas::Xml(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A finished query: the `<message>` stanzas to send and the `<iq>` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryResults {
    pub messages: ResultStanzas,
    /// `<iq type='result'>` with the `<fin>`, addressed as [`Reply`] says.
    pub reply: Element,
}

/// One message of a room's join history, parsed for the event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    /// The archive id (the stanza-id occupants were given).
    pub id: String,
    pub when: crate::time::Micros,
    /// The stored message.
    pub stanza: crate::stanza::Element,
}

/// What a job produced.
#[derive(Debug)]
pub enum Outcome {
    Query(MamResult<QueryResults>),
    Metadata(MamResult<Element>),
    /// Messages removed (account deletion).
    Removed(MamResult<u64>),
    /// One expiry batch ([`crate::expiry::Expirer::step`]).
    Expired(MamResult<crate::expiry::Step>),
    /// A room's join history, newest first.
    History(MamResult<Vec<HistoryItem>>),
    /// Every write up to this sequence number is committed: posted after a commit
    /// that a delivery waits for ([`crate::writer::Delivery::AfterCommit`]).
    Committed(u64),
    /// A storage provider job ([`crate::archive::provider`]).
    Provider(Box<MamResult<crate::archive::provider::StoreAnswer>>),
}

/// A finished job.
#[derive(Debug)]
pub struct Completion {
    pub job: JobId,
    pub outcome: Outcome,
}

/// Severity of a log line from a thread, as Prosody names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

#[derive(Default)]
struct Queue {
    completions: VecDeque<Completion>,
    logs: Vec<(Level, String)>,
}

/// The hand-over point between threads and the event loop.
pub struct Mailbox {
    queue: Mutex<Queue>,
    /// Write end of the wake-up socket (non-blocking: a full buffer already means
    /// "wake up").
    waker: UnixStream,
    /// Read end, watched by the event loop.
    watched: UnixStream,
    /// Completions posted so far: lets a spinning [`Mailbox::claim`] look without
    /// taking the lock.
    posted: AtomicU64,
}

impl Mailbox {
    pub fn new() -> std::io::Result<Mailbox> {
        let (waker, watched) = UnixStream::pair()?;
        waker.set_nonblocking(true)?;
        watched.set_nonblocking(true)?;
        Ok(Mailbox {
            queue: Mutex::new(Queue::default()),
            waker,
            watched,
            posted: AtomicU64::new(0),
        })
    }

    /// The file descriptor the event loop watches for readability.
    pub fn fd(&self) -> RawFd {
        self.watched.as_raw_fd()
    }

    fn wake(&self) {
        // WouldBlock means the buffer is full of wake-ups already; any other error
        // would mean the socket is gone, and then nobody is listening anyway.
        let _ = (&self.waker).write(&[1]);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A thread that panicked while holding the lock left the queue consistent
        // (push/drain are single calls), so keep using it.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn post(&self, completion: Completion) {
        self.lock().completions.push_back(completion);
        // Wake first: once `claim` sees the count move, the byte is there to drain.
        self.wake();
        self.posted.fetch_add(1, Ordering::Release);
    }

    /// Takes job `job`'s completion out of the queue if it is posted within
    /// `budget`, spinning meanwhile (sleeping would cost the wake-up this avoids).
    /// Other completions stay queued. If it was the last thing queued, the wake-up
    /// bytes go too, so the loop is not woken afterwards for nothing.
    pub fn claim(&self, job: JobId, budget: Duration) -> Option<Completion> {
        let started = Instant::now();
        let mut seen = u64::MAX;
        loop {
            let now = self.posted.load(Ordering::Acquire);
            if now != seen {
                seen = now;
                let mut q = self.lock();
                if let Some(i) = q.completions.iter().position(|c| c.job == job) {
                    // Under the lock: anything posted later pushes after this and
                    // writes its own byte.
                    if q.completions.len() == 1 && q.logs.is_empty() {
                        self.drain_wakeups();
                    }
                    return q.completions.remove(i);
                }
            }
            if started.elapsed() >= budget {
                return None;
            }
            std::hint::spin_loop();
        }
    }

    pub fn log(&self, level: Level, message: String) {
        self.lock().logs.push((level, message));
        self.wake();
    }

    /// Everything posted so far. Drains the wake-up bytes first, so anything posted
    /// after this call wakes the loop again.
    pub fn take(&self) -> (Vec<Completion>, Vec<(Level, String)>) {
        self.drain_wakeups();
        let mut q = self.lock();
        (
            q.completions.drain(..).collect(),
            std::mem::take(&mut q.logs),
        )
    }

    /// Reads every wake-up byte waiting on the watched socket (non-blocking).
    fn drain_wakeups(&self) {
        let mut buf = [0u8; 256];
        loop {
            match (&self.watched).read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }

    /// Blocks (up to `timeout`) until something is posted. For tests and command-line
    /// tools, which have no event loop; never called on Prosody's loop.
    pub fn wait(&self, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            {
                let q = self.lock();
                if !q.completions.is_empty() || !q.logs.is_empty() {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn removed(job: JobId, n: u64) -> Completion {
        Completion {
            job,
            outcome: Outcome::Removed(Ok(n)),
        }
    }

    fn count(c: &Completion) -> u64 {
        match c.outcome {
            Outcome::Removed(Ok(n)) => n,
            ref other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn claim_takes_only_its_own_job_and_leaves_the_rest_queued() {
        let mb = Mailbox::new().unwrap();
        mb.post(removed(1, 10));
        mb.post(removed(2, 20));
        mb.post(removed(3, 30));
        let c = mb.claim(2, Duration::ZERO).expect("already posted");
        assert_eq!((c.job, count(&c)), (2, 20));
        let (rest, _) = mb.take();
        let jobs: Vec<JobId> = rest.iter().map(|c| c.job).collect();
        assert_eq!(jobs, vec![1, 3]);
    }

    fn wakeup_waiting(mb: &Mailbox) -> bool {
        let mut byte = [0u8; 1];
        matches!((&mb.watched).read(&mut byte), Ok(1))
    }

    #[test]
    fn claiming_the_last_completion_leaves_no_wakeup_behind() {
        let mb = Mailbox::new().unwrap();
        mb.post(removed(1, 10));
        mb.post(removed(2, 20));
        mb.claim(1, Duration::ZERO).expect("posted");
        // Job 2 is still queued: its wake-up must stay.
        assert!(wakeup_waiting(&mb));
        mb.post(removed(3, 30));
        mb.take();
        mb.post(removed(4, 40));
        mb.claim(4, Duration::ZERO).expect("posted");
        assert!(!wakeup_waiting(&mb));
    }

    #[test]
    fn claim_gives_up_after_its_budget_and_the_completion_still_arrives() {
        let mb = Mailbox::new().unwrap();
        mb.post(removed(1, 10));
        assert!(mb.claim(7, Duration::from_millis(2)).is_none());
        mb.post(removed(7, 70));
        let (all, _) = mb.take();
        let jobs: Vec<JobId> = all.iter().map(|c| c.job).collect();
        assert_eq!(jobs, vec![1, 7]);
    }

    #[test]
    fn claim_sees_a_completion_posted_while_it_waits() {
        let mb = Arc::new(Mailbox::new().unwrap());
        let poster = {
            let mb = mb.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                mb.post(removed(4, 1));
                mb.post(removed(5, 2));
            })
        };
        let c = mb
            .claim(5, Duration::from_secs(10))
            .expect("posted within the budget");
        assert_eq!(c.job, 5);
        poster.join().unwrap();
        let (rest, _) = mb.take();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].job, 4);
    }
}
