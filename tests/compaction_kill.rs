//! The background rewrite of older rows (issue 18) killed with `kill -9` mid-way
//! and resumed: no message is lost or changed, the database stays consistent, and
//! the next run finishes the job.
//!
//! The compaction runs in a child process (this test binary again, running only the
//! ignored `child_compacts_until_killed`), which the test kills with SIGKILL once
//! some rows are compressed and others are not.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mam_native::compactor;
use mam_native::store::sqlite::SqliteStore;
use mam_native::store::{ArchiveStore, ArchivedMessage, FindRequest, Owner};
use mam_native::time::SystemClock;

const T0: i64 = 1_767_225_600_000_000;
const MESSAGES: usize = 60_000;
const CHILD_DB: &str = "MAM_TEST_COMPACT_DB";

fn message(i: usize) -> ArchivedMessage {
    let words = [
        "balcony", "nurse", "tomorrow", "déjà", "rose", "😀", "light", "name",
    ];
    let body: Vec<&str> = (0..i % 23 + 2)
        .map(|k| words[(i * 7 + k * 3) % 8])
        .collect();
    ArchivedMessage {
        id: format!("m{i:06}"),
        when: T0 + i as i64 * 1000,
        with_bare: format!("friend{}@montague.lit", i % 17),
        with_resource: None,
        xml: format!(
            "<message xmlns='jabber:client' type='chat' id='{:x}' to='juliet@capulet.lit' \
             from='friend{}@montague.lit/phone'><body>{}</body>\
             <request xmlns='urn:xmpp:receipts'/></message>",
            i * 2_654_435_761 % 4_294_967_291,
            i % 17,
            body.join(" ")
        ),
    }
}

fn owner() -> Owner {
    Owner::new("capulet.lit", "juliet")
}

/// (text rows, compressed rows), read straight from the file.
fn forms(path: &Path) -> (i64, i64) {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy");
    conn.query_row(
        "SELECT total(typeof(stanza) = 'text'), total(typeof(stanza) = 'blob') FROM archive",
        [],
        |r| Ok((r.get::<_, f64>(0)? as i64, r.get::<_, f64>(1)? as i64)),
    )
    .expect("count")
}

fn assert_every_message_unchanged(path: &Path) {
    let mut store = SqliteStore::open(path).expect("open");
    let items = store
        .find(
            &owner(),
            &FindRequest {
                limit: MESSAGES + 1,
                total: true,
                ..FindRequest::default()
            },
        )
        .expect("find");
    assert_eq!(items.total, Some(MESSAGES as u64));
    assert_eq!(items.items.len(), MESSAGES);
    for (i, m) in items.items.iter().enumerate() {
        assert_eq!(m, &message(i));
    }
    let conn = rusqlite::Connection::open(path).expect("open");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
}

#[test]
#[ignore = "the child half of the kill -9 test: runs only when that test starts it"]
fn child_compacts_until_killed() {
    let Ok(path) = std::env::var(CHILD_DB) else {
        return;
    };
    let mut store = SqliteStore::open(Path::new(&path)).expect("open");
    compactor::run_to_end(&mut store, &SystemClock).expect("compact");
}

#[test]
fn the_background_rewrite_killed_mid_way_resumes_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("archive.sqlite");
    {
        let mut store = SqliteStore::open(&path).expect("open");
        let items: Vec<(Owner, ArchivedMessage)> =
            (0..MESSAGES).map(|i| (owner(), message(i))).collect();
        for chunk in items.chunks(5000) {
            store.append_many(chunk, None).expect("append");
        }
    }
    assert_eq!(forms(&path), (MESSAGES as i64, 0));

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_compacts_until_killed",
            "--ignored",
            "--quiet",
        ])
        .env(CHILD_DB, &path)
        .spawn()
        .expect("start the child");
    let started = Instant::now();
    let at_kill = loop {
        let (text, packed) = forms(&path);
        if packed > 0 {
            break (text, packed);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the child compressed nothing in a minute"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    child.kill().expect("kill -9"); // SIGKILL on Unix
    child.wait().expect("reap");
    let (text, packed) = forms(&path);
    assert!(
        text > 0 && packed > 0,
        "killed mid-way: {at_kill:?} when seen, {text} text and {packed} compressed after"
    );
    assert_every_message_unchanged(&path);

    // Resumed: the next run (the module's next start) finishes the job.
    let mut store = SqliteStore::open(&path).expect("open");
    let (rewritten, _) = compactor::run_to_end(&mut store, &SystemClock).expect("resume");
    assert_eq!(rewritten, text as u64);
    drop(store);
    assert_eq!(forms(&path), (0, MESSAGES as i64));
    assert_every_message_unchanged(&path);
}
