//! The SQLite side of the storage provider's item operations (Prosody's archive store
//! API: `append` with a key, `set`, `delete` by id, `users`). Same rules as the parent
//! module: one transaction per call, cached statements, bound parameters,
//! owner-leading indexes.

use rusqlite::{params, TransactionBehavior};

use super::{
    append_in, contact_ref, json_string_array, load_dictionaries, owner_is, owner_number, to_count,
    to_sql_int, SqliteStore, FORGET_UNUSED_CONTACT,
};
use crate::error::{MamError, Result};
use crate::store::{ArchivedMessage, ItemChange, Owner};

/// Owners on a host with messages.
const HOST_OWNER_NAMES: &str = "SELECT user FROM archive_owners \
     WHERE host = ?1 AND messages > 0 ORDER BY user";

/// One message of an owner by id.
const DELETE_ID: &str = concat!(
    "DELETE FROM archive WHERE ",
    owner_is!(),
    " AND id = mam_id(?3)"
);

/// Several messages of an owner by id (a JSON array, unpacked by `json_each`).
const DELETE_IDS: &str = concat!(
    "DELETE FROM archive WHERE ",
    owner_is!(),
    " AND id IN (SELECT mam_id(value) FROM json_each(?3))"
);

/// Changes the present fields of one message of owner number `?1` by id `?2`: `?3`
/// stanza, `?4` time, `?5` and `?6` partner (the contact's number and the resource;
/// the resource changes only with the contact). A NULL leaves the column as it is.
const UPDATE_MESSAGE: &str = "UPDATE archive SET stanza = coalesce(?3, stanza), \
     when_us = coalesce(?4, when_us), contact = coalesce(?5, contact), \
     with_resource = CASE WHEN ?5 IS NULL THEN with_resource ELSE ?6 END \
     WHERE owner = ?1 AND id = mam_id(?2)";

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
        // An owner without a row has no message to change.
        let Some(owner_number) = owner_number(&tx, owner)? else {
            return Ok(false);
        };
        let contact = bare
            .map(|bare| contact_ref(&tx, owner_number, bare))
            .transpose()?;
        let changed = tx
            .prepare_cached(UPDATE_MESSAGE)
            .and_then(|mut stmt| {
                stmt.execute(params![
                    owner_number,
                    id,
                    stanza,
                    change.when,
                    contact,
                    resource,
                ])
            })
            .map_err(MamError::storage("update: change the message"))?;
        if let (0, Some(contact)) = (changed, contact) {
            // No such message: a contact added for it alone goes again.
            tx.prepare_cached(FORGET_UNUSED_CONTACT)
                .and_then(|mut stmt| stmt.execute(params![contact]))
                .map_err(MamError::storage("update: forget an unused contact"))?;
        }
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
