//! Reader threads: archive queries and metadata run here, off Prosody's event loop.
//!
//! Each reader has its own SQLite connection (WAL lets them read while the writer
//! writes). A read first waits until every write queued before it is committed
//! (read-your-writes), then runs the query and builds the result stanzas — parsing
//! stored XML is the expensive part of a page, and it happens here, not on the loop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{MamError, Result};
use crate::mailbox::{
    Completion, HistoryItem, JobId, Mailbox, Outcome, QueryResults, Reply, ResultStanzas,
};
use crate::ns;
use crate::query::{self, Plan};
use crate::stanza::Element;
use crate::store::{ArchiveStore, FindRequest, Owner};
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
        reply: Reply,
    },
    Metadata,
    /// A room's join history: its newest `limit` messages at or after `since`.
    History {
        limit: usize,
        since: Option<crate::time::Micros>,
    },
    /// The storage provider's reads ([`crate::archive::provider`]).
    Provider(Box<crate::archive::provider::StoreRead>),
}

/// The event loop's handle on the reader threads.
pub struct Readers {
    queue: Option<Sender<ReadJob>>,
    threads: Vec<JoinHandle<()>>,
    /// Reads submitted and not yet posted to the mailbox.
    in_flight: Arc<AtomicUsize>,
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
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for (i, store) in stores.into_iter().enumerate() {
            let rx = rx.clone();
            let progress = progress.clone();
            let mailbox = mailbox.clone();
            let in_flight = in_flight.clone();
            let thread = std::thread::Builder::new()
                .name(format!("mam-reader-{i}"))
                .spawn(move || reader_loop(store, rx, progress, mailbox, in_flight))
                .map_err(|e| MamError::Thread(format!("cannot start a reader thread: {e}")))?;
            threads.push(thread);
        }
        Ok(Readers {
            queue: Some(queue),
            threads,
            in_flight,
        })
    }

    /// Queues a read; never blocks.
    pub fn submit(&self, job: ReadJob) -> Result<()> {
        let stopped = || MamError::Overloaded("archive readers have stopped".into());
        let queue = self.queue.as_ref().ok_or_else(stopped)?;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        queue.send(job).map_err(|_| {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            stopped()
        })
    }

    /// Reads queued or running (a read stops counting just before its completion is
    /// posted).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
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
    in_flight: Arc<AtomicUsize>,
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
                reply,
            } => Outcome::Query(run_query(
                store.as_mut(),
                &job.owner,
                &plan,
                query_id.as_deref(),
                &reply,
            )),
            ReadOp::Metadata => Outcome::Metadata(metadata(store.as_mut(), &job.owner)),
            ReadOp::History { limit, since } => {
                Outcome::History(history(store.as_mut(), &job.owner, limit, since))
            }
            ReadOp::Provider(read) => crate::archive::provider::outcome(
                crate::archive::provider::run_read(store.as_mut(), &read),
            ),
        };
        // Done before posting, so that whoever takes the completion sees this reader
        // free again.
        in_flight.fetch_sub(1, Ordering::AcqRel);
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
    reply: &Reply,
) -> Result<QueryResults> {
    let mut page = store.find(owner, &plan.find)?;
    if let (true, Some(ids)) = (plan.unknown_ids_fail, &plan.find.ids) {
        require_ids(store, owner, ids, &page.items)?;
    }
    if plan.hide_real_jids {
        for item in &mut page.items {
            query::without_real_jids(item)?;
        }
    }
    let answer = query::answer(plan, page);
    let (to, from) = (reply.to.as_deref(), reply.from.as_deref());
    let items = answer.items.iter();
    let messages = if reply.serialised {
        ResultStanzas::Xml(
            items
                .map(|item| query::wire_result(query_id, item, to, from))
                .collect::<Result<_>>()?,
        )
    } else {
        ResultStanzas::Elements(
            items
                .map(|item| query::result_message(query_id, item, to, from))
                .collect::<Result<_>>()?,
        )
    };
    // As `st.reply` addresses it: to the requester, from whom it addressed.
    let mut iq = Element::new("iq").with_attr("type", "result");
    for (key, value) in [
        ("id", &reply.iq_id),
        ("to", &reply.to),
        ("from", &reply.from),
    ] {
        if let Some(v) = value {
            iq.set_attr(key, v);
        }
    }
    iq.push(answer.fin);
    Ok(QueryResults {
        messages,
        reply: iq,
    })
}

/// Fails with `item-not-found` unless every id in `ids` is in the owner's archive:
/// those not on the page (other filters, the page's limit) are looked up by id alone.
fn require_ids(
    store: &mut dyn ArchiveStore,
    owner: &Owner,
    ids: &[String],
    on_page: &[crate::store::ArchivedMessage],
) -> Result<()> {
    let missing = query::missing_ids(ids, on_page);
    if missing.is_empty() {
        return Ok(());
    }
    let lookup = FindRequest {
        ids: Some(missing.iter().map(|id| (*id).clone()).collect()),
        limit: missing.len(),
        ..FindRequest::default()
    };
    let found = store.find(owner, &lookup)?.items;
    match query::missing_ids(lookup.ids.as_deref().unwrap_or_default(), &found).first() {
        Some(id) => Err(MamError::ItemNotFound(format!(
            "No message with id {id} in this archive"
        ))),
        None => Ok(()),
    }
}

/// A room's join history ([`ReadOp::History`]), newest first, each stored stanza
/// parsed here rather than on the event loop.
pub fn history(
    store: &mut dyn ArchiveStore,
    owner: &Owner,
    limit: usize,
    since: Option<crate::time::Micros>,
) -> Result<Vec<HistoryItem>> {
    let page = store.find(
        owner,
        &FindRequest {
            start: since,
            limit,
            reverse: true,
            ..FindRequest::default()
        },
    )?;
    page.items
        .into_iter()
        .map(|m| {
            let stanza = crate::stanza::parse_xml(&m.xml)
                .map_err(|e| MamError::Corrupt(format!("archived message {}: {e}", m.id)))?;
            Ok(HistoryItem {
                id: m.id,
                when: m.when,
                stanza,
            })
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stanza::{parse_xml, to_wire_xml};
    use crate::store::ArchivedMessage;

    fn stored(i: usize) -> ArchivedMessage {
        ArchivedMessage {
            id: format!("01HZX{i:021}"),
            when: 1_700_000_000_000_000 + i as i64,
            with_bare: "romeo@montague.lit".into(),
            with_resource: Some("orchard".into()),
            xml: format!(
                "<message xmlns='jabber:client' from='romeo@montague.lit/orchard' id='m{i}' \
                 to='juliet@capulet.lit' type='chat'><body>{}</body>\
                 <active xmlns='http://jabber.org/protocol/chatstates'/>\
                 <origin-id xmlns='urn:xmpp:sid:0' id='o{i}'/></message>",
                "x".repeat(100)
            ),
        }
    }

    fn room_store(n: usize) -> (crate::store::sqlite::SqliteStore, Owner) {
        let mut store = crate::store::sqlite::SqliteStore::open_in_memory().expect("open");
        let owner = Owner::new("rooms.lit", "lobby");
        for i in 0..n {
            let mut m = stored(i);
            if i == n - 1 {
                m.xml = "<message xmlns='jabber:client' type='groupchat'><subject>s</subject></message>"
                    .into();
            }
            store.append(&owner, &m, None).expect("append");
        }
        (store, owner)
    }

    #[test]
    fn unknown_ids_fail_a_room_query_even_when_the_rest_are_beyond_the_page() {
        let (mut store, owner) = room_store(5);
        let ids: Vec<String> = (0..5).map(|i| stored(i).id).collect();
        // All known, more than the page holds: fine.
        assert!(require_ids(&mut store, &owner, &ids, &[]).is_ok());
        let mut asked = ids.clone();
        asked.push("01HZXnot-in-this-archive".into());
        match require_ids(&mut store, &owner, &asked, &[]) {
            Err(MamError::ItemNotFound(text)) => assert!(text.contains("not-in-this-archive")),
            other => panic!("unexpected {other:?}"),
        }
        // Another room's ids are unknown here.
        let other = Owner::new("rooms.lit", "elsewhere");
        assert!(require_ids(&mut store, &other, &ids[..1], &[]).is_err());
    }

    #[test]
    fn history_is_the_newest_messages_parsed_newest_first() {
        let (mut store, owner) = room_store(6);
        let items = history(&mut store, &owner, 3, None).unwrap();
        let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
        assert_eq!(ids, [stored(5).id, stored(4).id, stored(3).id]);
        assert_eq!(
            items[0]
                .stanza
                .get_child_text("subject", Some(ns::JABBER_CLIENT))
                .as_deref(),
            Some("s")
        );
        assert_eq!(items[1].when, stored(4).when);
        // `since` is inclusive.
        let since = history(&mut store, &owner, 10, Some(stored(4).when)).unwrap();
        assert_eq!(since.len(), 2);
    }

    /// Where a page's time goes on the reader thread (run with --ignored --nocapture).
    #[test]
    #[ignore]
    fn result_building_speed() {
        use std::time::Instant;
        let msgs: Vec<ArchivedMessage> = (0..50)
            .collect::<Vec<_>>()
            .iter()
            .map(|i| stored(*i))
            .collect();
        let rounds = 2000;
        let t = Instant::now();
        for _ in 0..rounds {
            for m in &msgs {
                std::hint::black_box(parse_xml(&m.xml).unwrap());
            }
        }
        let parse = t.elapsed().as_secs_f64() / (rounds * 50) as f64 * 1e6;
        let t = Instant::now();
        for _ in 0..rounds {
            for m in &msgs {
                std::hint::black_box(query::result_element(Some("q1"), m).unwrap());
            }
        }
        let result = t.elapsed().as_secs_f64() / (rounds * 50) as f64 * 1e6;
        let el = query::result_element(Some("q1"), &msgs[0]).unwrap();
        let t = Instant::now();
        for _ in 0..rounds * 50 {
            std::hint::black_box(to_wire_xml(&el));
        }
        let ser = t.elapsed().as_secs_f64() / (rounds * 50) as f64 * 1e6;
        let t = Instant::now();
        for _ in 0..rounds {
            for m in &msgs {
                std::hint::black_box(
                    query::wire_result(Some("q1"), m, Some("a@b/c"), None).unwrap(),
                );
            }
        }
        let wire = t.elapsed().as_secs_f64() / (rounds * 50) as f64 * 1e6;
        println!(
            "per result: parse {parse:.2} us, result_element {result:.2} us, \
             to_wire_xml {ser:.2} us; wire_result (canonical stored text) {wire:.2} us"
        );
    }
}
