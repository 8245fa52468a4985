//! The SQLite side of the operator's tools: import under source ids, targeted
//! deletes, statistics. Kept apart from the hot path (append, find, expiry) in the
//! parent module; same rules: one transaction per call, cached statements, bound
//! parameters, owner-leading indexes.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{
    contact_jid, contact_ref, owner_is, owner_ref, to_count, to_sql_int, write_prefs, SqliteStore,
    FORGET_UNUSED_CONTACT, GET_DEFAULT_POLICY, OWNER_COUNT,
};
use crate::error::{MamError, Result};
use crate::policy::Prefs;
use crate::store::{DeleteFilter, ImportReport, ImportedMessage, Owner, OwnerStats};

/// Inserts a message unless the owner already has its id. The conflict target names
/// only the unique (owner, id) index, so any other constraint failure (a NULL, a
/// broken value) is still an error rather than a silently skipped message. `?1` and
/// `?3` are the owner's and the contact's numbers, `?2` the id as given.
const IMPORT_MESSAGE: &str = "INSERT INTO archive (owner, id, when_us, contact, \
     with_resource, stanza) VALUES (?1, mam_id(?2), ?4, ?3, ?5, ?6) \
     ON CONFLICT (owner, id) DO NOTHING";

/// The stored time and partner of an id that was already there.
const EXISTING_MESSAGE: &str = concat!(
    "SELECT when_us, ",
    contact_jid!(),
    " FROM archive WHERE ",
    owner_is!(),
    " AND id = mam_id(?3)"
);

/// Owners on a host with their counts (from the exact counter in `archive_owners`).
const HOST_OWNERS: &str = "SELECT user, messages FROM archive_owners \
     WHERE host = ?1 AND messages > 0 ORDER BY user";

/// One owner's oldest time, newest time and stanza bytes, over the owner index.
const OWNER_SUMMARY: &str = concat!(
    "SELECT min(when_us), max(when_us), total(length(CAST(stanza AS BLOB))) \
     FROM archive WHERE ",
    owner_is!()
);

/// Deletes one batch of an owner's messages; `?3`..`?6` are optional filters, each
/// disabled by a NULL (the contact's bare JID, its resource, strictly-before time).
const DELETE_MATCHING: &str = concat!(
    "DELETE FROM archive WHERE seq IN (SELECT seq FROM archive WHERE ",
    owner_is!(),
    " AND (?3 IS NULL OR contact = (SELECT contact FROM archive_contacts \
     WHERE jid = ?3 AND owner = archive.owner)) \
     AND (?4 IS NULL OR with_resource = ?4) \
     AND (?5 IS NULL OR when_us < ?5) \
     ORDER BY when_us, seq LIMIT ?6)"
);

impl SqliteStore {
    pub(super) fn import_batch_impl(
        &mut self,
        host: &str,
        batch: &[ImportedMessage],
    ) -> Result<ImportReport> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(MamError::storage("import: begin"))?;
        super::load_dictionaries(&tx, &mut self.codec)?;
        let codec = &mut self.codec;
        let mut report = ImportReport::default();
        {
            let mut insert = tx
                .prepare_cached(IMPORT_MESSAGE)
                .map_err(MamError::storage("import: prepare insert"))?;
            let mut existing = tx
                .prepare_cached(EXISTING_MESSAGE)
                .map_err(MamError::storage("import: prepare lookup"))?;
            for item in batch {
                let m = &item.msg;
                let stanza = codec.encode(&m.xml)?;
                let owner = owner_ref(&tx, &Owner::new(host, &item.user))?;
                let contact = contact_ref(&tx, owner, &m.with_bare)?;
                let added = insert
                    .execute(params![
                        owner,
                        m.id,
                        contact,
                        m.when,
                        m.with_resource,
                        stanza
                    ])
                    .map_err(MamError::storage("import: insert message"))?;
                if added > 0 {
                    report.inserted += 1;
                    continue;
                }
                // Not inserted: a contact added for it alone goes again.
                tx.prepare_cached(FORGET_UNUSED_CONTACT)
                    .and_then(|mut stmt| stmt.execute(params![contact]))
                    .map_err(MamError::storage("import: forget an unused contact"))?;
                let found: Option<(i64, String)> = existing
                    .query_row(params![host, item.user, m.id], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()
                    .map_err(MamError::storage("import: look up existing id"))?;
                match found {
                    Some((when, with)) if when == m.when && with == m.with_bare => {
                        report.already_present += 1
                    }
                    _ => report.conflicts.push((item.user.clone(), m.id.clone())),
                }
            }
        }
        tx.commit().map_err(MamError::storage("import: commit"))?;
        Ok(report)
    }

    pub(super) fn set_prefs_if_absent_impl(
        &mut self,
        owner: &Owner,
        prefs: &Prefs,
    ) -> Result<bool> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(MamError::storage("import prefs: begin"))?;
        let present: Option<String> = tx
            .prepare_cached(GET_DEFAULT_POLICY)
            .and_then(|mut stmt| {
                stmt.query_row(params![owner.host, owner.user], |r| r.get(0))
                    .optional()
            })
            .map_err(MamError::storage("import prefs: read default"))?;
        if present.is_some() {
            return Ok(false);
        }
        write_prefs(&tx, owner, prefs)?;
        tx.commit()
            .map_err(MamError::storage("import prefs: commit"))?;
        Ok(true)
    }

    /// One read transaction: the owner list and each owner's summary agree.
    pub(super) fn owner_stats_impl(&mut self, host: &str) -> Result<Vec<OwnerStats>> {
        let tx = self
            .conn
            .transaction()
            .map_err(MamError::storage("stats: begin"))?;
        let owners: Vec<(String, i64)> = tx
            .prepare_cached(HOST_OWNERS)
            .and_then(|mut stmt| {
                stmt.query_map(params![host], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(MamError::storage("stats: list owners"))?;
        let mut out = Vec::with_capacity(owners.len());
        {
            let mut summary = tx
                .prepare_cached(OWNER_SUMMARY)
                .map_err(MamError::storage("stats: prepare summary"))?;
            for (user, messages) in owners {
                let (oldest, newest, bytes): (Option<i64>, Option<i64>, f64) = summary
                    .query_row(params![host, user], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .map_err(MamError::storage("stats: summarise owner"))?;
                // The counter row exists only while the owner has messages, so min and
                // max are present; a stale row would show as an empty archive.
                out.push(OwnerStats {
                    user,
                    messages: to_count(messages),
                    bytes: if bytes > 0.0 { bytes as u64 } else { 0 },
                    oldest: oldest.unwrap_or(0),
                    newest: newest.unwrap_or(0),
                });
            }
        }
        tx.commit().map_err(MamError::storage("stats: end"))?;
        Ok(out)
    }

    pub(super) fn message_count_impl(&mut self, owner: &Owner) -> Result<u64> {
        let count: Option<i64> = self
            .conn
            .prepare_cached(OWNER_COUNT)
            .and_then(|mut stmt| {
                stmt.query_row(params![owner.host, owner.user], |r| r.get(0))
                    .optional()
            })
            .map_err(MamError::storage("count: read message count"))?;
        Ok(to_count(count.unwrap_or(0)))
    }

    pub(super) fn delete_batch_impl(
        &mut self,
        owner: &Owner,
        filter: &DeleteFilter,
        batch: usize,
    ) -> Result<u64> {
        let with_bare = filter.with.as_ref().map(|w| w.bare.as_str());
        let with_resource = filter.with.as_ref().and_then(|w| w.resource.as_deref());
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(MamError::storage("delete: begin"))?;
        let n = tx
            .prepare_cached(DELETE_MATCHING)
            .and_then(|mut stmt| {
                stmt.execute(params![
                    owner.host,
                    owner.user,
                    with_bare,
                    with_resource,
                    filter.before,
                    to_sql_int(batch)
                ])
            })
            .map_err(MamError::storage("delete: delete messages"))?;
        tx.commit().map_err(MamError::storage("delete: commit"))?;
        Ok(to_count(to_sql_int(n)))
    }

    pub(super) fn database_bytes_impl(&mut self) -> Result<Option<u64>> {
        let bytes: i64 = self
            .conn
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get(0),
            )
            .map_err(MamError::storage("stats: database size"))?;
        Ok(Some(to_count(bytes)))
    }
}
