//! The SQLite side of the storage provider's item operations (Prosody's archive store
//! API: `append` with a key, `set`, `delete` by id, `users`). Same rules as the parent
//! module: one transaction per call, cached statements, bound parameters,
//! owner-leading indexes.

use rusqlite::{params, TransactionBehavior};

use super::{append_in, json_string_array, load_dictionaries, to_count, to_sql_int, SqliteStore};
use crate::error::{MamError, Result};
use crate::store::{ArchivedMessage, ItemChange, Owner};

/// Owners on a host with messages (the counter table lists exactly those).
const HOST_OWNER_NAMES: &str = "SELECT user FROM archive_counts WHERE host = ?1 ORDER BY user";

/// One message of an owner by id.
const DELETE_ID: &str = "DELETE FROM archive WHERE host = ?1 AND user = ?2 AND id = ?3";

/// Several messages of an owner by id (a JSON array, unpacked by `json_each`).
const DELETE_IDS: &str = "DELETE FROM archive WHERE host = ?1 AND user = ?2 \
     AND id IN (SELECT value FROM json_each(?3))";

/// Changes the present fields of one message: `?4` stanza, `?5` time, `?6` and `?7`
/// partner (bare and resource; the resource changes only with the bare part). A NULL
/// leaves the column as it is.
const UPDATE_MESSAGE: &str = "UPDATE archive SET stanza = coalesce(?4, stanza), \
     when_us = coalesce(?5, when_us), with_bare = coalesce(?6, with_bare), \
     with_resource = CASE WHEN ?6 IS NULL THEN with_resource ELSE ?7 END \
     WHERE host = ?1 AND user = ?2 AND id = ?3";

impl SqliteStore {
    pub(super) fn owners_impl(&mut self, host: &str) -> Result<Vec<String>> {
        self.conn
            .prepare_cached(HOST_OWNER_NAMES)
            .and_then(|mut stmt| stmt.query_map(params![host], |r| r.get(0))?.collect())
            .map_err(MamError::storage("owners: list"))
    }

    pub(super) fn replace_impl(&mut self, owner: &Owner, msg: &ArchivedMessage) -> Result<bool> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(MamError::storage("replace: begin"))?;
        let removed = tx
            .prepare_cached(DELETE_ID)
            .and_then(|mut stmt| stmt.execute(params![owner.host, owner.user, msg.id]))
            .map_err(MamError::storage("replace: delete the old message"))?;
        load_dictionaries(&tx, &mut self.codec)?;
        append_in(&tx, &mut self.codec, owner, msg, None)?;
        tx.commit().map_err(MamError::storage("replace: commit"))?;
        Ok(removed > 0)
    }

    pub(super) fn update_impl(
        &mut self,
        owner: &Owner,
        id: &str,
        change: &ItemChange,
    ) -> Result<bool> {
        let (bare, resource) = match &change.with {
            Some((bare, resource)) => (Some(bare.as_str()), resource.as_deref()),
            None => (None, None),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(MamError::storage("update: begin"))?;
        load_dictionaries(&tx, &mut self.codec)?;
        let stanza = change
            .xml
            .as_deref()
            .map(|xml| self.codec.encode(xml))
            .transpose()?;
        let changed = tx
            .prepare_cached(UPDATE_MESSAGE)
            .and_then(|mut stmt| {
                stmt.execute(params![
                    owner.host,
                    owner.user,
                    id,
                    stanza,
                    change.when,
                    bare,
                    resource,
                ])
            })
            .map_err(MamError::storage("update: change the message"))?;
        tx.commit().map_err(MamError::storage("update: commit"))?;
        Ok(changed > 0)
    }

    pub(super) fn delete_ids_impl(&mut self, owner: &Owner, ids: &[String]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(MamError::storage("delete ids: begin"))?;
        let removed = tx
            .prepare_cached(DELETE_IDS)
            .and_then(|mut stmt| {
                stmt.execute(params![owner.host, owner.user, json_string_array(ids)])
            })
            .map_err(MamError::storage("delete ids: delete"))?;
        tx.commit()
            .map_err(MamError::storage("delete ids: commit"))?;
        Ok(to_count(to_sql_int(removed)))
    }
}
