//! Write-ahead-log checkpoints off the writer's path (SQLite).
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold
//! (1000 pages of log): that commit copies the log into the database and fsyncs both,
//! and every delivery waiting for that commit (`mam_commit_before_delivery`) waits as
//! long. Measured on the benchmark machine: deliveries held 1-2 ms as a rule, past
//! 5 ms only behind checkpoints. So the writer's connection hands checkpoints off
//! ([`crate::store::ArchiveStore::hand_off_checkpoints`]) and this thread, on a
//! connection of its own, checkpoints passively (never waiting for the writer or a
//! reader) shortly after commits happen. It runs at normal priority: a checkpointer
//! starved by load would let the log grow without bound.

use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{MamError, Result};
use crate::mailbox::{Level, Mailbox};
use crate::store::ArchiveStore;
use crate::writer::Progress;

/// How often the thread looks for new commits to checkpoint. At the writer's
/// fastest (about 25,000 rows/s here) this keeps the log to a few megabytes.
const INTERVAL: Duration = Duration::from_millis(250);

/// The checkpointing thread of one archive.
pub struct Checkpointer {
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing `store`'s database whenever the writer whose `progress`
    /// this is has committed since the last checkpoint.
    pub fn start(
        mut store: Box<dyn ArchiveStore>,
        progress: Arc<Progress>,
        mailbox: Arc<Mailbox>,
    ) -> Result<Checkpointer> {
        let (stop, stopped) = channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mam-checkpoint".into())
            .spawn(move || {
                // None: a log left by a previous run is checkpointed on the first turn.
                let mut checkpointed = None;
                let mut failing = false;
                loop {
                    match stopped.recv_timeout(INTERVAL) {
                        Err(RecvTimeoutError::Timeout) => {}
                        // Stop asked for, or the archive is gone.
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let committed = progress.committed();
                    if checkpointed == Some(committed) {
                        continue;
                    }
                    match store.checkpoint() {
                        Ok(()) => {
                            checkpointed = Some(committed);
                            if failing {
                                failing = false;
                                mailbox.log(Level::Info, "archive checkpoints resumed".into());
                            }
                        }
                        Err(e) if !failing => {
                            failing = true;
                            mailbox.log(
                                Level::Warn,
                                format!("archive checkpoint failed, retrying: {e}"),
                            );
                        }
                        Err(_) => {}
                    }
                }
            })
            .map_err(|e| MamError::Thread(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (the last connection to close checkpoints what is left).
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.stop.send(());
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{ArchivedMessage, Owner};
    use crate::writer::{Delivery, WriteOp, Writer};

    fn wal_bytes(path: &std::path::Path) -> u64 {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(std::path::Path::new(&wal)).map_or(0, |m| m.len())
    }

    #[test]
    fn the_writer_never_checkpoints_and_the_checkpointer_keeps_the_log_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sqlite");
        let mut writer_store = SqliteStore::open(&path).unwrap();
        assert!(writer_store.hand_off_checkpoints().unwrap());
        let mailbox = Arc::new(Mailbox::new().unwrap());
        let mut writer = Writer::start(Box::new(writer_store), None, mailbox.clone()).unwrap();
        let owner = Owner::new("capulet.lit", "juliet");
        let append = |from: usize, to: usize, writer: &mut Writer| {
            for i in from..to {
                writer
                    .submit(WriteOp::Append {
                        owner: owner.clone(),
                        msg: ArchivedMessage {
                            id: format!("id{i:08}"),
                            when: i as i64,
                            with_bare: "romeo@montague.lit".into(),
                            with_resource: None,
                            xml: format!("<message><body>{}</body></message>", "x".repeat(2000)),
                        },
                        delivery: Delivery::AtOnce,
                    })
                    .unwrap();
            }
            assert!(writer.flush(Duration::from_secs(10)));
        };
        // Without a checkpointer the log only grows: about 6 MB of messages.
        append(0, 3000, &mut writer);
        let grown = wal_bytes(&path);
        assert!(grown > 6_000_000, "log {grown} bytes");

        // With one, it is checkpointed and SQLite starts the log over, so writing as
        // much again leaves it about as big (a few frames more when a checkpoint runs
        // late on a busy machine), where without it the log would double.
        let mut checkpointer = Checkpointer::start(
            Box::new(SqliteStore::open(&path).unwrap()),
            writer.progress(),
            mailbox.clone(),
        )
        .unwrap();
        std::thread::sleep(INTERVAL * 3);
        append(3000, 6000, &mut writer);
        std::thread::sleep(INTERVAL * 3);
        append(6000, 6100, &mut writer);
        let after = wal_bytes(&path);
        assert!(
            after < grown + grown / 2,
            "log {after} bytes, {grown} before"
        );
        checkpointer.stop();
        writer.stop();
        let mut check = SqliteStore::open(&path).unwrap();
        assert_eq!(check.message_count(&owner).unwrap(), 6100);
        assert!(mailbox.take().1.is_empty());
    }
}
