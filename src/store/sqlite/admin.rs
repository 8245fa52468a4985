//! The SQLite side of the operator's tools: import under source ids, targeted
//! deletes, statistics. Kept apart from the hot path (append, find, expiry) in the
//! parent module; same rules: one transaction per call, cached statements, bound
//! parameters, owner-leading indexes.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{
    to_count, to_sql_int, SqliteStore, ADD_JID_RULE, GET_DEFAULT_POLICY, OWNER_COUNT,
    SET_DEFAULT_POLICY,
};
use crate::error::{MamError, Result};
use crate::policy::Prefs;
use crate::store::{DeleteFilter, ImportReport, ImportedMessage, Owner, OwnerStats};

/// Inserts a message unless the owner already has its id. The conflict target names
/// only the unique (host, user, id) index, so any other constraint failure (a NULL,
/// a broken value) is still an error rather than a silently skipped message.
const IMPORT_MESSAGE: &str = "INSERT INTO archive (host, user, id, when_us, with_bare, \
     with_resource, stanza) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
     ON CONFLICT (host, user, id) DO NOTHING";

/// The stored time and partner of an id that was already there.
const EXISTING_MESSAGE: &str =
    "SELECT when_us, with_bare FROM archive WHERE host = ?1 AND user = ?2 AND id = ?3";

/// Owners on a host with their counts (from the exact counter table).
const HOST_OWNERS: &str = "SELECT user, messages FROM archive_counts WHERE host = ?1 ORDER BY user";

/// One owner's oldest time, newest time and stanza bytes, over the owner index.
const OWNER_SUMMARY: &str = "SELECT min(when_us), max(when_us), total(length(stanza)) \
     FROM archive WHERE host = ?1 AND user = ?2";

/// Deletes one batch of an owner's messages; `?3`..`?6` are optional filters, each
/// disabled by a NULL (`with_bare`, `with_resource`, strictly-before time).
const DELETE_MATCHING: &str = "DELETE FROM archive WHERE seq IN (SELECT seq FROM archive \
     WHERE host = ?1 AND user = ?2 \
     AND (?3 IS NULL OR with_bare = ?3) \
     AND (?4 IS NULL OR with_resource = ?4) \
     AND (?5 IS NULL OR when_us < ?5) \
     ORDER BY when_us, seq LIMIT ?6)";

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
                let added = insert
                    .execute(params![
                        host,
                        item.user,
                        m.id,
                        m.when,
                        m.with_bare,
                        m.with_resource,
                        m.xml
                    ])
                    .map_err(MamError::storage("import: insert message"))?;
                if added > 0 {
                    report.inserted += 1;
                    continue;
                }
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
        tx.prepare_cached(SET_DEFAULT_POLICY)
            .and_then(|mut stmt| {
                stmt.execute(params![owner.host, owner.user, prefs.default.as_str()])
            })
            .map_err(MamError::storage("import prefs: write default"))?;
        {
            let mut add = tx
                .prepare_cached(ADD_JID_RULE)
                .map_err(MamError::storage("import prefs: prepare jid rule"))?;
            for jid in &prefs.never {
                add.execute(params![owner.host, owner.user, jid, "never"])
                    .map_err(MamError::storage("import prefs: write never rule"))?;
            }
            for jid in prefs.always.difference(&prefs.never) {
                add.execute(params![owner.host, owner.user, jid, "always"])
                    .map_err(MamError::storage("import prefs: write always rule"))?;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DefaultPolicy;
    use crate::store::{ArchiveStore, FindRequest, NewMessage, WithFilter};
    use crate::time::Micros;

    const T0: Micros = 1_275_868_800_000_000; // 2010-06-07T00:00:00Z
    const HOST: &str = "capulet.lit";

    fn imported(user: &str, id: &str, when: Micros, with: &str) -> ImportedMessage {
        ImportedMessage {
            user: user.to_owned(),
            msg: NewMessage {
                id: id.to_owned(),
                when,
                with_bare: with.to_owned(),
                with_resource: None,
                xml: format!("<message xmlns='jabber:client'><body>{id}</body></message>"),
            },
        }
    }

    fn juliet() -> Owner {
        Owner::new(HOST, "juliet")
    }

    fn all_ids(store: &mut SqliteStore, owner: &Owner) -> Vec<String> {
        let req = FindRequest {
            limit: 1000,
            ..FindRequest::default()
        };
        store
            .find(owner, &req)
            .expect("find")
            .items
            .into_iter()
            .map(|m| m.id)
            .collect()
    }

    #[test]
    fn an_import_keeps_source_ids_and_source_order_within_a_second() {
        let mut store = SqliteStore::open_in_memory().expect("open");
        // Stock stamps whole seconds: three messages in one second, ids not sorted.
        let batch = vec![
            imported("juliet", "zz", T0, "romeo@montague.lit"),
            imported("juliet", "aa", T0, "nurse@capulet.lit"),
            imported("juliet", "mm", T0, "romeo@montague.lit"),
            imported("juliet", "early", T0 - 1_000_000, "romeo@montague.lit"),
        ];
        let report = store.import_batch(HOST, &batch).expect("import");
        assert_eq!(
            report,
            ImportReport {
                inserted: 4,
                already_present: 0,
                conflicts: vec![]
            }
        );
        assert_eq!(all_ids(&mut store, &juliet()), ["early", "zz", "aa", "mm"]);
        let page = store
            .find(
                &juliet(),
                &FindRequest {
                    limit: 10,
                    ..FindRequest::default()
                },
            )
            .expect("find");
        assert_eq!(page.items[1].xml, batch[0].msg.xml);
        assert_eq!(page.items[1].when, T0);
    }

    #[test]
    fn importing_the_same_batch_twice_adds_nothing() {
        let mut store = SqliteStore::open_in_memory().expect("open");
        let batch: Vec<_> = (0..5)
            .map(|i| imported("juliet", &format!("m{i}"), T0 + i, "romeo@montague.lit"))
            .collect();
        store.import_batch(HOST, &batch).expect("first");
        let again = store.import_batch(HOST, &batch).expect("second");
        assert_eq!(
            again,
            ImportReport {
                inserted: 0,
                already_present: 5,
                conflicts: vec![]
            }
        );
        assert_eq!(store.message_count(&juliet()).expect("count"), 5);
    }

    #[test]
    fn an_id_already_used_for_another_message_is_a_conflict_and_is_not_overwritten() {
        let mut store = SqliteStore::open_in_memory().expect("open");
        store
            .import_batch(HOST, &[imported("juliet", "x", T0, "romeo@montague.lit")])
            .expect("first");
        let report = store
            .import_batch(
                HOST,
                &[
                    imported("juliet", "x", T0 + 5, "romeo@montague.lit"),
                    imported("romeo", "x", T0, "juliet@capulet.lit"),
                ],
            )
            .expect("second");
        assert_eq!(report.inserted, 1, "the same id in another archive is fine");
        assert_eq!(report.conflicts, [("juliet".to_owned(), "x".to_owned())]);
        let page = store
            .find(
                &juliet(),
                &FindRequest {
                    limit: 10,
                    ..FindRequest::default()
                },
            )
            .expect("find");
        assert_eq!(page.items[0].when, T0);
    }

    #[test]
    fn imported_prefs_never_replace_prefs_already_set() {
        let mut store = SqliteStore::open_in_memory().expect("open");
        let mut stock = Prefs::with_default(DefaultPolicy::Roster);
        stock.never.insert("tybalt@capulet.lit".to_owned());
        stock.always.insert("romeo@montague.lit".to_owned());
        assert!(store
            .set_prefs_if_absent(&juliet(), &stock)
            .expect("import"));
        assert_eq!(
            store.get_prefs(&juliet()).expect("get"),
            Some(stock.clone())
        );
        let mut changed = Prefs::with_default(DefaultPolicy::Never);
        changed.always.insert("nurse@capulet.lit".to_owned());
        assert!(!store
            .set_prefs_if_absent(&juliet(), &changed)
            .expect("again"));
        assert_eq!(store.get_prefs(&juliet()).expect("get"), Some(stock));
    }

    #[test]
    fn stats_list_each_owner_with_count_bytes_and_ends() {
        let mut store = SqliteStore::open_in_memory().expect("open");
        store
            .import_batch(
                HOST,
                &[
                    imported("juliet", "a", T0 + 7, "romeo@montague.lit"),
                    imported("juliet", "b", T0, "romeo@montague.lit"),
                    imported("nurse", "c", T0 + 3, "juliet@capulet.lit"),
                ],
            )
            .expect("import");
        store
            .import_batch(
                "montague.lit",
                &[imported("romeo", "d", T0, "juliet@capulet.lit")],
            )
            .expect("import");
        let stats = store.owner_stats(HOST).expect("stats");
        let xml_len = imported("x", "a", 0, "").msg.xml.len() as u64;
        assert_eq!(
            stats,
            [
                OwnerStats {
                    user: "juliet".into(),
                    messages: 2,
                    bytes: 2 * xml_len,
                    oldest: T0,
                    newest: T0 + 7
                },
                OwnerStats {
                    user: "nurse".into(),
                    messages: 1,
                    bytes: xml_len,
                    oldest: T0 + 3,
                    newest: T0 + 3
                },
            ]
        );
        assert!(store.owner_stats("nowhere.lit").expect("stats").is_empty());
        assert!(store.database_bytes().expect("size").unwrap_or(0) > 0);
    }

    #[test]
    fn delete_batch_honours_with_and_before_and_is_bounded() {
        let mut store = SqliteStore::open_in_memory().expect("open");
        let mut batch = Vec::new();
        for i in 0..10 {
            let with = if i % 2 == 0 {
                "romeo@montague.lit"
            } else {
                "nurse@capulet.lit"
            };
            batch.push(imported("juliet", &format!("m{i}"), T0 + i, with));
        }
        batch.push(imported("romeo", "r", T0, "juliet@capulet.lit"));
        store.import_batch(HOST, &batch).expect("import");
        let romeo_before_6 = DeleteFilter {
            with: Some(WithFilter {
                bare: "romeo@montague.lit".into(),
                resource: None,
            }),
            before: Some(T0 + 6),
        };
        assert_eq!(
            store
                .delete_batch(&juliet(), &romeo_before_6, 2)
                .expect("delete"),
            2
        );
        assert_eq!(
            store
                .delete_batch(&juliet(), &romeo_before_6, 2)
                .expect("delete"),
            1
        );
        assert_eq!(
            all_ids(&mut store, &juliet()),
            ["m1", "m3", "m5", "m6", "m7", "m8", "m9"]
        );
        let before_8 = DeleteFilter {
            with: None,
            before: Some(T0 + 8),
        };
        assert_eq!(store.delete_batch(&juliet(), &before_8, 100).expect("d"), 5);
        assert_eq!(all_ids(&mut store, &juliet()), ["m8", "m9"]);
        assert_eq!(
            store
                .delete_batch(&juliet(), &DeleteFilter::default(), 100)
                .expect("d"),
            2
        );
        assert_eq!(store.message_count(&juliet()).expect("count"), 0);
        assert_eq!(
            store
                .message_count(&Owner::new(HOST, "romeo"))
                .expect("count"),
            1,
            "another owner's messages stay"
        );
    }

    #[test]
    fn a_full_jid_filter_deletes_only_that_resource() {
        let mut store = SqliteStore::open_in_memory().expect("open");
        let mut a = imported("juliet", "a", T0, "romeo@montague.lit");
        a.msg.with_resource = Some("orchard".into());
        let b = imported("juliet", "b", T0 + 1, "romeo@montague.lit");
        store.import_batch(HOST, &[a, b]).expect("import");
        let filter = DeleteFilter {
            with: Some(WithFilter {
                bare: "romeo@montague.lit".into(),
                resource: Some("orchard".into()),
            }),
            before: None,
        };
        assert_eq!(store.delete_batch(&juliet(), &filter, 10).expect("d"), 1);
        assert_eq!(all_ids(&mut store, &juliet()), ["b"]);
    }
}
