//! Reader threads: archive queries and metadata run here, off Prosody's event loop.
//!
//! Each reader has its own SQLite connection (WAL lets them read while the writer
//! writes). A read first waits until every write queued before it is committed
//! (read-your-writes), then runs the query and builds the result stanzas — parsing
//! stored XML is the expensive part of a page, and it happens here, not on the loop.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{MamError, Result};
use crate::mailbox::{Completion, JobId, Mailbox, Outcome, QueryResults};
use crate::ns;
use crate::query::{self, Plan};
use crate::stanza::Element;
use crate::store::{ArchiveStore, Owner};
use crate::time::format_datetime;
use crate::writer::Progress;

/// How long a read waits for earlier writes before answering without them (only
/// reached while storage is failing).
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(2);

/// A read, with the write it must see.
pub struct ReadJob {
    pub job: JobId,
    /// Sequence number of the newest write queued before this read.
    pub after_write: u64,
    pub owner: Owner,
    pub op: ReadOp,
}

pub enum ReadOp {
    Query {
        plan: Box<Plan>,
        query_id: Option<String>,
        reply_to: Option<String>,
        reply_from: Option<String>,
    },
    Metadata,
}

/// The event loop's handle on the reader threads.
pub struct Readers {
    queue: Option<Sender<ReadJob>>,
    threads: Vec<JoinHandle<()>>,
}

impl Readers {
    /// Starts one thread per store.
    pub fn start(
        stores: Vec<Box<dyn ArchiveStore>>,
        progress: Arc<Progress>,
        mailbox: Arc<Mailbox>,
    ) -> Result<Readers> {
        let (queue, rx) = channel::<ReadJob>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for (i, store) in stores.into_iter().enumerate() {
            let rx = rx.clone();
            let progress = progress.clone();
            let mailbox = mailbox.clone();
            let thread = std::thread::Builder::new()
                .name(format!("mam-reader-{i}"))
                .spawn(move || reader_loop(store, rx, progress, mailbox))
                .map_err(|e| MamError::Corrupt(format!("cannot start a reader thread: {e}")))?;
            threads.push(thread);
        }
        Ok(Readers {
            queue: Some(queue),
            threads,
        })
    }

    /// Queues a read; never blocks.
    pub fn submit(&self, job: ReadJob) -> Result<()> {
        match &self.queue {
            Some(q) => q
                .send(job)
                .map_err(|_| MamError::Overloaded("archive readers have stopped".into())),
            None => Err(MamError::Overloaded("archive readers have stopped".into())),
        }
    }

    /// Lets running reads finish, then stops the threads.
    pub fn stop(&mut self) {
        self.queue = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.stop();
    }
}

fn reader_loop(
    mut store: Box<dyn ArchiveStore>,
    rx: Arc<Mutex<Receiver<ReadJob>>>,
    progress: Arc<Progress>,
    mailbox: Arc<Mailbox>,
) {
    loop {
        let next = {
            let guard = rx.lock().unwrap_or_else(|e| e.into_inner());
            guard.recv()
        };
        let Ok(job) = next else { return };
        progress.wait_for(job.after_write, READ_YOUR_WRITES_WAIT);
        let outcome = match job.op {
            ReadOp::Query {
                plan,
                query_id,
                reply_to,
                reply_from,
            } => Outcome::Query(run_query(
                store.as_mut(),
                &job.owner,
                &plan,
                query_id.as_deref(),
                reply_to.as_deref(),
                reply_from.as_deref(),
            )),
            ReadOp::Metadata => Outcome::Metadata(metadata(store.as_mut(), &job.owner)),
        };
        mailbox.post(Completion {
            job: job.job,
            outcome,
        });
    }
}

/// Runs a planned query and builds the stanzas to send.
pub fn run_query(
    store: &mut dyn ArchiveStore,
    owner: &Owner,
    plan: &Plan,
    query_id: Option<&str>,
    reply_to: Option<&str>,
    reply_from: Option<&str>,
) -> Result<QueryResults> {
    let page = store.find(owner, &plan.find)?;
    let answer = query::answer(plan, page);
    let mut messages = Vec::with_capacity(answer.items.len());
    for item in &answer.items {
        let mut wrapper = Element::new("message");
        if let Some(to) = reply_to {
            wrapper.set_attr("to", to);
        }
        if let Some(from) = reply_from {
            wrapper.set_attr("from", from);
        }
        wrapper.push(query::result_element(query_id, item)?);
        messages.push(wrapper);
    }
    Ok(QueryResults {
        messages,
        fin: answer.fin,
    })
}

/// `<metadata>` (XEP-0313 §7): the archive's first and last message; an empty
/// `<metadata/>` for an empty archive.
pub fn metadata(store: &mut dyn ArchiveStore, owner: &Owner) -> Result<Element> {
    let mut el = Element::with_ns("metadata", ns::MAM);
    if let Some(bounds) = store.bounds(owner)? {
        for (name, end) in [("start", bounds.first), ("end", bounds.last)] {
            el.push(
                Element::new(name)
                    .with_attr("id", &end.id)
                    .with_attr("timestamp", &format_datetime(end.when)),
            );
        }
    }
    Ok(el)
}
