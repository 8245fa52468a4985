//! The PostgreSQL side of the storage provider's item operations (Prosody's archive
//! store API: `append` with a key, `set`, `delete` by id, `users`). Same rules as the
//! parent module: one transaction per call, the owner's counter kept in it, cached
//! statements, bound parameters, owner-leading keys.

use super::{append_in, get, PgStore};
use crate::error::Result;
use crate::store::codec::Stored;
use crate::store::{ArchivedMessage, ItemChange, Owner};

/// Owners on a host with messages (the counter table lists exactly those).
const HOST_OWNER_NAMES: &str =
    "SELECT username FROM mam_archive_counts WHERE host = $1 ORDER BY username";

/// Several messages of an owner by id.
const DELETE_IDS: &str =
    "DELETE FROM mam_archive WHERE host = $1 AND username = $2 AND id = ANY($3::text[])";

/// Changes the present fields of one message: `$4` stanza, `$5` time, `$6` and `$7`
/// partner (bare and resource; the resource changes only with the bare part). A NULL
/// leaves the column as it is.
/// `$8` is the compressed form of a new stanza (then `$4` is NULL and `stanza` goes).
const UPDATE_MESSAGE: &str = "UPDATE mam_archive SET \
     stanza = CASE WHEN $4::text IS NULL AND $8::bytea IS NULL THEN stanza ELSE $4 END, \
     stanza_z = CASE WHEN $4::text IS NULL AND $8::bytea IS NULL THEN stanza_z ELSE $8 END, \
     when_us = coalesce($5::int8, when_us), with_bare = coalesce($6::text, with_bare), \
     with_resource = CASE WHEN $6::text IS NULL THEN with_resource ELSE $7::text END \
     WHERE host = $1 AND username = $2 AND id = $3";

impl PgStore {
    pub(super) fn owners_impl(&mut self, host: &str) -> Result<Vec<String>> {
        self.transaction(true, "owners", |tx| {
            tx.query("owners: list", HOST_OWNER_NAMES, &[&host])?
                .iter()
                .map(|row| get(row, 0, "owners: list"))
                .collect()
        })
    }

    pub(super) fn replace_impl(&mut self, owner: &Owner, msg: &ArchivedMessage) -> Result<bool> {
        self.writing("replace", |tx, codec| {
            let ids = vec![msg.id.as_str()];
            let removed = tx.execute(
                "replace: delete the old message",
                DELETE_IDS,
                &[&owner.host, &owner.user, &ids],
            )?;
            tx.uncount(&owner.host, &owner.user, removed)?;
            append_in(tx, codec, &[(owner, msg)], None)?;
            Ok(removed > 0)
        })
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
        self.writing("update", |tx, codec| {
            let (xml, packed): (Option<&str>, Option<Vec<u8>>) = match change
                .xml
                .as_deref()
                .map(|xml| codec.encode(xml))
                .transpose()?
            {
                None => (None, None),
                Some(Stored::Text(text)) => (Some(text), None),
                Some(Stored::Packed(bytes)) => (None, Some(bytes)),
            };
            let changed = tx.execute(
                "update: change the message",
                UPDATE_MESSAGE,
                &[
                    &owner.host,
                    &owner.user,
                    &id,
                    &xml,
                    &change.when,
                    &bare,
                    &resource,
                    &packed,
                ],
            )?;
            Ok(changed > 0)
        })
    }

    pub(super) fn delete_ids_impl(&mut self, owner: &Owner, ids: &[String]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.transaction(false, "delete ids", |tx| {
            let removed = tx.execute(
                "delete ids: delete",
                DELETE_IDS,
                &[&owner.host, &owner.user, &ids],
            )?;
            tx.uncount(&owner.host, &owner.user, removed)?;
            Ok(removed)
        })
    }
}
