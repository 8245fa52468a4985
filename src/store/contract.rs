//! The behaviour every [`ArchiveStore`] backend must share (issue 6: one contract,
//! two backends).
//!
//! Like Prosody's `spec/core_storagemanager_spec.lua`, each test here is a sentence
//! about what a backend does, never how: no row ids, no SQL, no file sizes.
//! Timestamps are `i64` microseconds and archive ids opaque strings. Each test is a
//! plain function over a [`ContractDb`], a fresh, empty database private to that test,
//! from which the test opens one handle or, where it checks that one connection sees
//! another's commits, several.
//!
//! A backend runs the whole suite from its own test module with one line:
//!
//! ```ignore
//! crate::store::contract::store_contract_tests!(|| Some(SqliteTestDb::new()));
//! ```
//!
//! where the argument is anything callable with no arguments that returns an
//! `Option` of a [`ContractDb`]; `None` means the backend's server is not available
//! here (PostgreSQL without `MAM_TEST_PG`), and the tests pass having said so.
//! It expands to a module `contract` with one `#[test]` per function here, named
//! after it. A contract function left out of the macro's list is unused, and unused
//! code fails `clippy -D warnings`, so no test is silently skipped.

use std::collections::{BTreeMap, BTreeSet};

use super::codec;
use super::{
    ArchiveBounds, ArchiveEnd, ArchiveStore, ArchivedMessage, DeleteFilter, FindRequest,
    ImportReport, ImportedMessage, ItemChange, Owner, OwnerStats, Page, Quota, WithFilter,
};
use crate::error::MamError;
use crate::policy::{DefaultPolicy, Prefs};
use crate::time::Micros;

/// One test's database: fresh, empty and private to the test, removed when dropped.
pub trait ContractDb {
    /// Opens another handle (connection) to this test's database. Every handle sees
    /// what the others have committed.
    fn open(&self) -> Box<dyn ArchiveStore>;
}

/// So a factory may hand out `Box<dyn ContractDb>` as well as a concrete type.
impl<T: ContractDb + ?Sized> ContractDb for Box<T> {
    fn open(&self) -> Box<dyn ArchiveStore> {
        (**self).open()
    }
}

/// Expands to a module `contract` holding one `#[test]` per contract function, each
/// calling `$new_db()` for a fresh database and running the function on it.
macro_rules! store_contract_tests {
    ($new_db:expr) => {
        $crate::store::contract::store_contract_tests!(@tests $new_db;
            // Finding: pages, RSM, filters, bounds.
            forward_find_returns_the_oldest_page_and_after_continues_it,
            reverse_find_returns_the_newest_page,
            reverse_find_before_an_id_pages_backwards,
            reverse_find_after_an_id_returns_the_newest_items_after_it,
            after_and_before_together_give_the_window_between,
            a_page_after_an_unknown_id_is_item_not_found,
            another_owners_id_is_unknown,
            total_ignores_after_and_limit,
            limit_zero_returns_no_items_but_still_counts,
            a_limit_beyond_the_matches_returns_them_all,
            an_empty_archive_counts_zero_and_has_no_bounds,
            start_and_end_are_inclusive,
            timestamps_are_signed_microseconds_kept_exactly,
            bare_jid_with_matches_every_resource,
            full_jid_with_matches_only_that_resource,
            found_messages_carry_their_partners_bare_jid_and_resource,
            ids_return_only_those_present_in_archive_order,
            ids_combine_with_every_other_filter_and_with_paging,
            ids_with_quotes_backslashes_and_control_characters_match_exactly,
            more_ids_than_any_bind_variable_limit_work,
            messages_with_equal_timestamps_keep_insertion_order,
            bounds_are_first_and_last_in_archive_order,
            // Appending: group commit, duplicates, quotas.
            a_duplicate_id_in_one_archive_is_an_internal_error_and_changes_nothing,
            append_many_stores_every_message_of_every_owner_in_order,
            append_many_is_all_or_nothing,
            append_many_applies_the_quota_to_each_message_in_turn,
            quota_trims_oldest_and_keeps_newest,
            quota_of_zero_keeps_only_the_new_message,
            a_backdated_message_survives_its_own_quota_trim,
            quota_trims_keep_the_newest_without_holes,
            at_the_quota_expired_messages_go_first_then_the_oldest,
            message_counts_stay_exact_through_every_write_and_delete,
            // Preferences.
            prefs_round_trip_including_never_list,
            a_jid_on_both_lists_reads_back_as_never,
            all_prefs_lists_every_owner_with_prefs_on_that_host_only,
            imported_prefs_never_replace_prefs_already_set,
            // Deleting and expiry.
            delete_user_removes_archive_and_prefs_only_for_that_user,
            delete_batch_honours_with_and_before_and_is_bounded,
            a_full_jid_filter_deletes_only_that_resource,
            delete_batch_combines_a_full_jid_with_before,
            deletes_and_expiry_take_equal_timestamps_in_insertion_order,
            expire_batch_deletes_only_older_and_is_bounded,
            expire_batch_goes_round_all_owners_before_reporting_done,
            a_later_cutoff_still_reaches_owners_before_where_the_last_batch_stopped,
            expire_batch_walks_many_owners,
            expiry_leaves_the_same_user_on_another_host_alone,
            // Import and the operator's statistics.
            an_import_keeps_source_ids_and_source_order_within_a_second,
            importing_the_same_batch_twice_adds_nothing,
            an_id_already_used_for_another_message_is_a_conflict_and_is_not_overwritten,
            an_import_conflict_is_another_time_or_partner_not_another_stanza,
            stats_list_each_owner_with_count_bytes_and_ends,
            owner_stats_lists_names_in_byte_order_and_skips_emptied_owners,
            database_bytes_is_positive_when_the_backend_knows_it,
            // Isolation, odd data, several handles.
            the_same_user_on_two_hosts_has_two_separate_archives,
            odd_strings_are_stored_and_matched_as_plain_data,
            a_second_handle_sees_what_the_first_committed,
            // The storage provider's item operations.
            owners_lists_each_owner_with_messages_on_that_host_in_name_order,
            replace_puts_a_new_message_or_replaces_the_one_with_its_id,
            update_changes_only_the_given_fields_of_one_message,
            update_of_an_unknown_id_changes_nothing,
            delete_ids_removes_only_those_of_that_owner_and_keeps_counts_exact,
            // Compression (issue 18): both stored forms, side by side.
            compressed_and_text_messages_mix_in_one_archive_and_read_back_unchanged,
            a_dictionary_change_mid_archive_leaves_every_message_readable,
            the_rewrite_compresses_older_messages_without_changing_any,
        );
    };
    (@tests $new_db:expr; $($test:ident),+ $(,)?) => {
        mod contract {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $test() {
                    // `None`: the backend's server is not available here (said why).
                    let Some(db) = ($new_db)() else { return };
                    $crate::store::contract::$test(&db);
                }
            )+
        }
    };
}
pub(crate) use store_contract_tests;

// ---------------------------------------------------------------------------------
// Fixtures, shared with the backends' own (backend-specific) tests.
// ---------------------------------------------------------------------------------

pub const T0: Micros = 1_275_868_800_000_000; // 2010-06-07T00:00:00Z

/// The host most tests archive on.
pub const HOST: &str = "capulet.lit";

/// Another host, with users of the same names.
pub const OTHER_HOST: &str = "montague.lit";

/// How many owners the many-owners expiry test walks: more than any backend reads in
/// one go (SQLite walks owners 256 at a time; its own tests check this covers two).
pub const MANY_OWNERS: usize = 600;

pub fn juliet() -> Owner {
    Owner::new(HOST, "juliet")
}

pub fn nurse() -> Owner {
    Owner::new(HOST, "nurse")
}

pub fn romeo() -> Owner {
    Owner::new(OTHER_HOST, "romeo")
}

/// A message with `with` given as a bare or full JID.
pub fn msg(id: &str, when: Micros, with: &str) -> ArchivedMessage {
    let filter = WithFilter::from_jid(with);
    ArchivedMessage {
        id: id.to_owned(),
        when,
        with_bare: filter.bare,
        with_resource: filter.resource,
        xml: format!("<message xmlns='jabber:client' id='{id}'><body>{id}</body></message>"),
    }
}

/// A message from another archive for `user` on the import's host.
pub fn imported(user: &str, id: &str, when: Micros, with: &str) -> ImportedMessage {
    ImportedMessage {
        user: user.to_owned(),
        msg: msg(id, when, with),
    }
}

pub fn req(limit: usize) -> FindRequest {
    FindRequest {
        limit,
        ..FindRequest::default()
    }
}

pub fn with(bare: &str, resource: Option<&str>) -> Option<WithFilter> {
    Some(WithFilter {
        bare: bare.to_owned(),
        resource: resource.map(str::to_owned),
    })
}

pub fn ids(page: &Page) -> Vec<&str> {
    page.items.iter().map(|m| m.id.as_str()).collect()
}

/// Every id in the owner's archive, in archive order.
pub fn all_ids(store: &mut dyn ArchiveStore, owner: &Owner) -> Vec<String> {
    store
        .find(owner, &req(100_000))
        .expect("find")
        .items
        .into_iter()
        .map(|m| m.id)
        .collect()
}

/// Juliet gets m0..m9, one second apart, alternating between romeo (even, from his
/// orchard) and the nurse (odd, from her chamber).
pub fn add_ten_messages(store: &mut dyn ArchiveStore) {
    for i in 0..10 {
        let with = if i % 2 == 0 {
            "romeo@montague.lit/orchard"
        } else {
            "nurse@capulet.lit/chamber"
        };
        store
            .append(
                &juliet(),
                &msg(&format!("m{i}"), T0 + i * 1_000_000, with),
                None,
            )
            .expect("append");
    }
}

/// A handle on `db` after [`add_ten_messages`].
fn ten_messages(db: &dyn ContractDb) -> Box<dyn ArchiveStore> {
    let mut store = db.open();
    add_ten_messages(store.as_mut());
    store
}

/// Asserts that every way of counting an owner's messages agrees on `expected`: the
/// count, the unfiltered `<count>`, a filtered `<count>` that matches everything
/// (which a backend may answer by counting rows rather than from a counter), and the
/// items themselves.
#[track_caller]
fn assert_message_count(store: &mut dyn ArchiveStore, owner: &Owner, expected: u64) {
    assert_eq!(store.message_count(owner).expect("count"), expected);
    let unfiltered = FindRequest {
        total: true,
        ..req(0)
    };
    assert_eq!(
        store.find(owner, &unfiltered).expect("find").total,
        Some(expected)
    );
    let everything = FindRequest {
        start: Some(Micros::MIN),
        end: Some(Micros::MAX),
        total: true,
        ..req(0)
    };
    assert_eq!(
        store.find(owner, &everything).expect("find").total,
        Some(expected)
    );
    assert_eq!(all_ids(store, owner).len() as u64, expected);
}

// ---------------------------------------------------------------------------------
// Finding: pages, RSM, filters, bounds.
// ---------------------------------------------------------------------------------

pub fn forward_find_returns_the_oldest_page_and_after_continues_it(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let page = store.find(&juliet(), &req(3)).expect("find");
    assert_eq!(ids(&page), ["m0", "m1", "m2"]);
    assert_eq!(page.total, None);
    let next = FindRequest {
        after: vec!["m2".to_owned()],
        ..req(3)
    };
    assert_eq!(
        ids(&store.find(&juliet(), &next).expect("find")),
        ["m3", "m4", "m5"]
    );
    // The stored fields come back as they went in.
    let m0 = &page.items[0];
    assert_eq!(m0.when, T0);
    assert_eq!(m0.with_bare, "romeo@montague.lit");
    assert_eq!(m0.xml, msg("m0", T0, "x").xml);
}

pub fn reverse_find_returns_the_newest_page(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let page = store
        .find(
            &juliet(),
            &FindRequest {
                reverse: true,
                total: true,
                ..req(3)
            },
        )
        .expect("find");
    assert_eq!(ids(&page), ["m9", "m8", "m7"]);
    assert_eq!(page.total, Some(10));
}

pub fn reverse_find_before_an_id_pages_backwards(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let page = store
        .find(
            &juliet(),
            &FindRequest {
                reverse: true,
                before: vec!["m7".to_owned()],
                ..req(3)
            },
        )
        .expect("find");
    assert_eq!(ids(&page), ["m6", "m5", "m4"]);
}

pub fn reverse_find_after_an_id_returns_the_newest_items_after_it(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let newest_after = FindRequest {
        reverse: true,
        after: vec!["m5".to_owned()],
        total: true,
        ..req(2)
    };
    let page = store.find(&juliet(), &newest_after).expect("find");
    assert_eq!(ids(&page), ["m9", "m8"]);
    assert_eq!(page.total, Some(10));
    let between = FindRequest {
        before: vec!["m9".to_owned()],
        limit: 10,
        ..newest_after
    };
    let page = store.find(&juliet(), &between).expect("find");
    assert_eq!(ids(&page), ["m8", "m7", "m6"]);
}

pub fn after_and_before_together_give_the_window_between(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let page = store
        .find(
            &juliet(),
            &FindRequest {
                after: vec!["m2".to_owned(), "m1".to_owned()],
                before: vec!["m6".to_owned(), "m8".to_owned()],
                ..req(100)
            },
        )
        .expect("find");
    // Strictly after every `after` id and strictly before every `before` id.
    assert_eq!(ids(&page), ["m3", "m4", "m5"]);
}

pub fn a_page_after_an_unknown_id_is_item_not_found(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    for request in [
        FindRequest {
            after: vec!["nope".to_owned()],
            ..req(10)
        },
        FindRequest {
            before: vec!["m1".to_owned(), "nope".to_owned()],
            ..req(10)
        },
    ] {
        match store.find(&juliet(), &request) {
            Err(MamError::ItemNotFound(text)) => {
                assert_eq!(text, "No message with id 'nope' in this archive")
            }
            other => panic!("expected item-not-found, got {other:?}"),
        }
    }
}

pub fn another_owners_id_is_unknown(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    store
        .append(&romeo(), &msg("r1", T0, "juliet@capulet.lit"), None)
        .expect("append");
    let request = FindRequest {
        after: vec!["r1".to_owned()],
        ..req(10)
    };
    assert!(matches!(
        store.find(&juliet(), &request),
        Err(MamError::ItemNotFound(_))
    ));
    // Nor does `ids` reach into another archive.
    let request = FindRequest {
        ids: Some(vec!["r1".to_owned(), "m1".to_owned()]),
        ..req(10)
    };
    assert_eq!(ids(&store.find(&juliet(), &request).expect("find")), ["m1"]);
    // The same id may exist in two archives.
    store
        .append(&romeo(), &msg("m1", T0, "juliet@capulet.lit"), None)
        .expect("same id, other owner");
}

pub fn total_ignores_after_and_limit(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let page = store
        .find(
            &juliet(),
            &FindRequest {
                with: with("romeo@montague.lit", None),
                after: vec!["m4".to_owned()],
                before: vec!["m9".to_owned()],
                total: true,
                ..req(1)
            },
        )
        .expect("find");
    assert_eq!(ids(&page), ["m6"]);
    assert_eq!(page.total, Some(5));
}

pub fn limit_zero_returns_no_items_but_still_counts(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    for request in [
        FindRequest {
            total: true,
            ..req(0)
        },
        FindRequest {
            total: true,
            start: Some(T0 + 5_000_000),
            ..req(0)
        },
    ] {
        let page = store.find(&juliet(), &request).expect("find");
        assert!(page.items.is_empty());
        assert!(page.total.is_some());
    }
    let page = store
        .find(
            &juliet(),
            &FindRequest {
                total: true,
                start: Some(T0 + 5_000_000),
                ..req(0)
            },
        )
        .expect("find");
    assert_eq!(page.total, Some(5));
}

pub fn a_limit_beyond_the_matches_returns_them_all(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let every = ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9"];
    let page = store.find(&juliet(), &req(1000)).expect("find");
    assert_eq!(ids(&page), every);
    let page = store
        .find(
            &juliet(),
            &FindRequest {
                reverse: true,
                total: true,
                limit: usize::MAX,
                ..FindRequest::default()
            },
        )
        .expect("find");
    let newest_first: Vec<&str> = every.iter().rev().copied().collect();
    assert_eq!(ids(&page), newest_first);
    assert_eq!(page.total, Some(10));
}

pub fn an_empty_archive_counts_zero_and_has_no_bounds(db: &dyn ContractDb) {
    let mut store = db.open();
    let page = store
        .find(
            &juliet(),
            &FindRequest {
                total: true,
                ..req(10)
            },
        )
        .expect("find");
    assert_eq!(
        page,
        Page {
            items: vec![],
            total: Some(0)
        }
    );
    assert_eq!(store.bounds(&juliet()).expect("bounds"), None);
    assert_eq!(store.message_count(&juliet()).expect("count"), 0);
}

pub fn start_and_end_are_inclusive(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let page = store
        .find(
            &juliet(),
            &FindRequest {
                start: Some(T0 + 2_000_000),
                end: Some(T0 + 4_000_000),
                total: true,
                ..req(10)
            },
        )
        .expect("find");
    assert_eq!(ids(&page), ["m2", "m3", "m4"]);
    assert_eq!(page.total, Some(3));
}

pub fn timestamps_are_signed_microseconds_kept_exactly(db: &dyn ContractDb) {
    let mut store = db.open();
    // 0001-01-01, just before and at the epoch, one microsecond apart, 9999-12-31.
    let times: [Micros; 6] = [
        -62_135_596_800_000_000,
        -1,
        0,
        T0,
        T0 + 1,
        253_402_300_799_999_999,
    ];
    // Stored newest first: archive order is by time, whatever the insertion order.
    for (i, when) in times.iter().enumerate().rev() {
        store
            .append(&juliet(), &msg(&format!("t{i}"), *when, "x@y"), None)
            .expect("append");
    }
    let page = store
        .find(
            &juliet(),
            &FindRequest {
                start: Some(Micros::MIN),
                end: Some(Micros::MAX),
                total: true,
                ..req(10)
            },
        )
        .expect("find");
    let back: Vec<Micros> = page.items.iter().map(|m| m.when).collect();
    assert_eq!(back, times);
    assert_eq!(page.total, Some(6));
    let one_microsecond = FindRequest {
        start: Some(T0 + 1),
        end: Some(T0 + 1),
        ..req(10)
    };
    assert_eq!(
        ids(&store.find(&juliet(), &one_microsecond).expect("find")),
        ["t4"]
    );
    let before_the_epoch = FindRequest {
        end: Some(-1),
        ..req(10)
    };
    assert_eq!(
        ids(&store.find(&juliet(), &before_the_epoch).expect("find")),
        ["t0", "t1"]
    );
    let bounds = store.bounds(&juliet()).expect("bounds").expect("some");
    assert_eq!((bounds.first.when, bounds.last.when), (times[0], times[5]));
}

pub fn bare_jid_with_matches_every_resource(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    store
        .append(
            &juliet(),
            &msg("m10", T0 + 10_000_000, "romeo@montague.lit/balcony"),
            None,
        )
        .expect("append");
    store
        .append(
            &juliet(),
            &msg("m11", T0 + 11_000_000, "romeo@montague.lit"),
            None,
        )
        .expect("append");
    let page = store
        .find(
            &juliet(),
            &FindRequest {
                with: with("romeo@montague.lit", None),
                ..req(100)
            },
        )
        .expect("find");
    assert_eq!(ids(&page), ["m0", "m2", "m4", "m6", "m8", "m10", "m11"]);
}

pub fn full_jid_with_matches_only_that_resource(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    store
        .append(
            &juliet(),
            &msg("m10", T0 + 10_000_000, "romeo@montague.lit/balcony"),
            None,
        )
        .expect("append");
    store
        .append(
            &juliet(),
            &msg("m11", T0 + 11_000_000, "romeo@montague.lit"),
            None,
        )
        .expect("append");
    let page = store
        .find(
            &juliet(),
            &FindRequest {
                with: with("romeo@montague.lit", Some("balcony")),
                total: true,
                ..req(100)
            },
        )
        .expect("find");
    assert_eq!(ids(&page), ["m10"]);
    assert_eq!(page.total, Some(1));
}

/// A found message says who the partner was exactly as stored, resource included
/// (an archive copied to another backend must keep it).
pub fn found_messages_carry_their_partners_bare_jid_and_resource(db: &dyn ContractDb) {
    let mut store = db.open();
    for (id, with) in [
        ("a", "romeo@montague.lit/orchard"),
        ("b", "romeo@montague.lit"),
        ("c", "nurse@capulet.lit/chamber/with/slashes"),
    ] {
        store
            .append(&juliet(), &msg(id, T0, with), None)
            .expect("append");
    }
    let found: Vec<_> = store
        .find(&juliet(), &req(10))
        .expect("find")
        .items
        .into_iter()
        .map(|m| (m.id, m.with_bare, m.with_resource))
        .collect();
    assert_eq!(
        found,
        [
            (
                "a".into(),
                "romeo@montague.lit".into(),
                Some("orchard".into())
            ),
            ("b".into(), "romeo@montague.lit".into(), None),
            (
                "c".into(),
                "nurse@capulet.lit".into(),
                Some("chamber/with/slashes".into())
            ),
        ]
    );
}

pub fn ids_return_only_those_present_in_archive_order(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let page = store
        .find(
            &juliet(),
            &FindRequest {
                ids: Some(vec![
                    "m7".into(),
                    "unknown".into(),
                    "m2".into(),
                    "m7".into(),
                ]),
                total: true,
                ..req(10)
            },
        )
        .expect("find");
    assert_eq!(ids(&page), ["m2", "m7"]);
    assert_eq!(page.total, Some(2));
    let none = FindRequest {
        ids: Some(vec![]),
        total: true,
        ..req(10)
    };
    assert_eq!(
        store.find(&juliet(), &none).expect("find"),
        Page {
            items: vec![],
            total: Some(0)
        }
    );
}

pub fn ids_combine_with_every_other_filter_and_with_paging(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let some: Vec<String> = (1..=8).map(|i| format!("m{i}")).collect();
    let romeos = FindRequest {
        ids: Some(some),
        with: with("romeo@montague.lit", None),
        total: true,
        ..req(10)
    };
    let page = store.find(&juliet(), &romeos).expect("find");
    assert_eq!(ids(&page), ["m2", "m4", "m6", "m8"]);
    assert_eq!(page.total, Some(4));
    let in_window = FindRequest {
        start: Some(T0 + 3_000_000),
        end: Some(T0 + 7_000_000),
        ..romeos.clone()
    };
    let page = store.find(&juliet(), &in_window).expect("find");
    assert_eq!(ids(&page), ["m4", "m6"]);
    assert_eq!(page.total, Some(2));
    // RSM paging inside an `ids` query; `<count>` still counts the whole match set.
    let next = FindRequest {
        after: vec!["m4".to_owned()],
        limit: 1,
        ..romeos.clone()
    };
    let page = store.find(&juliet(), &next).expect("find");
    assert_eq!(ids(&page), ["m6"]);
    assert_eq!(page.total, Some(4));
    let newest = FindRequest {
        reverse: true,
        limit: 3,
        ..romeos
    };
    assert_eq!(
        ids(&store.find(&juliet(), &newest).expect("find")),
        ["m8", "m6", "m4"]
    );
}

pub fn ids_with_quotes_backslashes_and_control_characters_match_exactly(db: &dyn ContractDb) {
    let mut store = db.open();
    let odd = ["a\"b", "c\\d", "e\nf\u{1}", "ünï'çødé", "\\\"", "[\"x\"]"];
    for (i, id) in odd.iter().enumerate() {
        store
            .append(
                &juliet(),
                &msg(id, T0 + i as i64, "romeo@montague.lit"),
                None,
            )
            .expect("append");
    }
    let page = store
        .find(
            &juliet(),
            &FindRequest {
                ids: Some(odd.iter().map(|s| s.to_string()).collect()),
                ..req(100)
            },
        )
        .expect("find");
    assert_eq!(ids(&page), odd);
    // Near misses do not match.
    let page = store
        .find(
            &juliet(),
            &FindRequest {
                ids: Some(vec!["ab".into(), "a\\\"b".into(), "\"x\"".into()]),
                ..req(100)
            },
        )
        .expect("find");
    assert!(page.items.is_empty());
}

/// SQLite binds at most 32 766 variables per statement, PostgreSQL 65 535: a backend
/// that spends one per id must fail here.
pub fn more_ids_than_any_bind_variable_limit_work(db: &dyn ContractDb) {
    let mut store = db.open();
    let owner = juliet();
    let items: Vec<(Owner, ArchivedMessage)> = (0..1000)
        .map(|i| {
            (
                owner.clone(),
                msg(&format!("id{i}"), T0 + i, "romeo@montague.lit"),
            )
        })
        .collect();
    store.append_many(&items, None).expect("append");
    // 70 000 ids; of the first thousand, every fourth one is unknown.
    let wanted: Vec<String> = (0..70_000)
        .map(|i| {
            if i < 1000 && i % 4 != 3 {
                format!("id{i}")
            } else {
                format!("missing{i}")
            }
        })
        .collect();
    let page = store
        .find(
            &owner,
            &FindRequest {
                ids: Some(wanted),
                total: true,
                reverse: true,
                ..req(5)
            },
        )
        .expect("find");
    assert_eq!(page.total, Some(750));
    assert_eq!(ids(&page), ["id998", "id997", "id996", "id994", "id993"]);
}

pub fn messages_with_equal_timestamps_keep_insertion_order(db: &dyn ContractDb) {
    let mut store = db.open();
    // Ids deliberately not in string order: insertion order must win.
    for id in ["z", "a", "m", "b"] {
        store
            .append(&juliet(), &msg(id, T0, "romeo@montague.lit"), None)
            .expect("append");
    }
    assert_eq!(
        ids(&store.find(&juliet(), &req(10)).expect("find")),
        ["z", "a", "m", "b"]
    );
    let after_a = FindRequest {
        after: vec!["a".into()],
        ..req(10)
    };
    assert_eq!(
        ids(&store.find(&juliet(), &after_a).expect("find")),
        ["m", "b"]
    );
    let before_m = FindRequest {
        before: vec!["m".into()],
        reverse: true,
        ..req(10)
    };
    assert_eq!(
        ids(&store.find(&juliet(), &before_m).expect("find")),
        ["a", "z"]
    );
    let bounds = store.bounds(&juliet()).expect("bounds").expect("some");
    assert_eq!(
        (bounds.first.id.as_str(), bounds.last.id.as_str()),
        ("z", "b")
    );
}

pub fn bounds_are_first_and_last_in_archive_order(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    // Stored last but stamped earliest: archive order is by time first.
    store
        .append(&juliet(), &msg("early", T0 - 1, "romeo@montague.lit"), None)
        .expect("append");
    let bounds = store.bounds(&juliet()).expect("bounds").expect("some");
    assert_eq!(
        bounds,
        ArchiveBounds {
            first: ArchiveEnd {
                id: "early".into(),
                when: T0 - 1
            },
            last: ArchiveEnd {
                id: "m9".into(),
                when: T0 + 9_000_000
            },
        }
    );
    assert_eq!(store.bounds(&romeo()).expect("bounds"), None);
}

// ---------------------------------------------------------------------------------
// Appending: group commit, duplicates, quotas.
// ---------------------------------------------------------------------------------

/// A duplicate is a server fault (ids are random), never something a client did.
pub fn a_duplicate_id_in_one_archive_is_an_internal_error_and_changes_nothing(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let err = store
        .append(&juliet(), &msg("m1", T0, "romeo@montague.lit"), None)
        .expect_err("duplicate");
    assert_eq!(err.to_xmpp().condition, "internal-server-error");
    assert_eq!(store.message_count(&juliet()).expect("count"), 10);
    let m1 = FindRequest {
        ids: Some(vec!["m1".into()]),
        ..req(10)
    };
    let page = store.find(&juliet(), &m1).expect("find");
    assert_eq!(page.items[0].when, T0 + 1_000_000);
    assert_eq!(page.items[0].with_bare, "nurse@capulet.lit");
}

pub fn append_many_stores_every_message_of_every_owner_in_order(db: &dyn ContractDb) {
    let mut store = db.open();
    assert_eq!(
        store
            .append_many(&[], Some(Quota::of(1)))
            .expect("empty batch"),
        0
    );
    let batch = vec![
        (juliet(), msg("j1", T0, "romeo@montague.lit/orchard")),
        (romeo(), msg("r1", T0, "juliet@capulet.lit/balcony")),
        (juliet(), msg("j2", T0, "nurse@capulet.lit")),
        (juliet(), msg("j0", T0 - 1, "romeo@montague.lit")),
        (nurse(), msg("n1", T0 + 1, "juliet@capulet.lit")),
    ];
    assert_eq!(store.append_many(&batch, None).expect("append"), 0);
    // Equal timestamps keep the batch's order; an earlier stamp sorts first.
    assert_eq!(all_ids(store.as_mut(), &juliet()), ["j0", "j1", "j2"]);
    assert_eq!(all_ids(store.as_mut(), &romeo()), ["r1"]);
    assert_eq!(all_ids(store.as_mut(), &nurse()), ["n1"]);
    let page = store.find(&romeo(), &req(1)).expect("find");
    assert_eq!(page.items[0].xml, batch[1].1.xml);
    assert_eq!(page.items[0].with_bare, "juliet@capulet.lit");
    let full_jid = FindRequest {
        with: with("romeo@montague.lit", Some("orchard")),
        ..req(10)
    };
    assert_eq!(
        ids(&store.find(&juliet(), &full_jid).expect("find")),
        ["j1"]
    );
}

pub fn append_many_is_all_or_nothing(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let batch = vec![
        (nurse(), msg("n1", T0, "juliet@capulet.lit")),
        (juliet(), msg("new", T0 + 20_000_000, "romeo@montague.lit")),
        (juliet(), msg("m3", T0 + 21_000_000, "romeo@montague.lit")),
    ];
    let err = store.append_many(&batch, None).expect_err("duplicate m3");
    assert_eq!(err.to_xmpp().condition, "internal-server-error");
    assert_eq!(store.message_count(&nurse()).expect("count"), 0);
    assert_eq!(store.message_count(&juliet()).expect("count"), 10);
    let bounds = store.bounds(&juliet()).expect("bounds").expect("some");
    assert_eq!(bounds.last.id, "m9");
    // The handle is still usable after the failed batch.
    assert_eq!(store.append_many(&batch[..2], None).expect("retry"), 0);
    assert_eq!(store.message_count(&juliet()).expect("count"), 11);
    assert_eq!(store.message_count(&nurse()).expect("count"), 1);
}

/// The writer's group commit must trim exactly as appending one by one would.
pub fn append_many_applies_the_quota_to_each_message_in_turn(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let batch = vec![
        (juliet(), msg("x1", T0 + 10_000_000, "romeo@montague.lit")),
        (nurse(), msg("n1", T0, "juliet@capulet.lit")),
        (juliet(), msg("x2", T0 + 11_000_000, "romeo@montague.lit")),
    ];
    // Juliet: 11 > 3 removes 8, then 4 > 3 removes 1; the nurse is under quota.
    assert_eq!(
        store
            .append_many(&batch, Some(Quota::of(3)))
            .expect("append"),
        9
    );
    assert_eq!(all_ids(store.as_mut(), &juliet()), ["m9", "x1", "x2"]);
    assert_eq!(all_ids(store.as_mut(), &nurse()), ["n1"]);
    // A quota of 1 keeps the last of the batch, even when an earlier one is newer.
    let batch = vec![
        (nurse(), msg("n2", T0 + 2, "juliet@capulet.lit")),
        (nurse(), msg("n3", T0 + 1, "juliet@capulet.lit")),
    ];
    assert_eq!(
        store
            .append_many(&batch, Some(Quota::of(1)))
            .expect("append"),
        2
    );
    assert_eq!(all_ids(store.as_mut(), &nurse()), ["n3"]);
}

pub fn quota_trims_oldest_and_keeps_newest(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    store
        .append(&romeo(), &msg("r1", T0, "juliet@capulet.lit"), None)
        .expect("append");
    let removed = store
        .append(
            &juliet(),
            &msg("m10", T0 + 10_000_000, "romeo@montague.lit"),
            Some(Quota::of(4)),
        )
        .expect("append");
    assert_eq!(removed, 7);
    assert_eq!(
        ids(&store.find(&juliet(), &req(100)).expect("find")),
        ["m7", "m8", "m9", "m10"]
    );
    assert_eq!(store.message_count(&juliet()).expect("count"), 4);
    // Under quota: nothing removed. Other owners untouched.
    let removed = store
        .append(
            &juliet(),
            &msg("m11", T0 + 11_000_000, "romeo@montague.lit"),
            Some(Quota::of(10)),
        )
        .expect("append");
    assert_eq!(removed, 0);
    assert_eq!(ids(&store.find(&romeo(), &req(10)).expect("find")), ["r1"]);
}

pub fn quota_of_zero_keeps_only_the_new_message(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let removed = store
        .append(
            &juliet(),
            &msg("m10", T0 + 10_000_000, "romeo@montague.lit"),
            Some(Quota::of(0)),
        )
        .expect("append");
    assert_eq!(removed, 10);
    assert_eq!(
        ids(&store.find(&juliet(), &req(100)).expect("find")),
        ["m10"]
    );
}

pub fn a_backdated_message_survives_its_own_quota_trim(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let removed = store
        .append(
            &juliet(),
            &msg("old", T0 - 1_000_000, "romeo@montague.lit"),
            Some(Quota::of(3)),
        )
        .expect("append");
    assert_eq!(removed, 8);
    assert_eq!(
        ids(&store.find(&juliet(), &req(100)).expect("find")),
        ["old", "m8", "m9"]
    );
}

/// "Never holes": after every append the archive is exactly the newest `n` messages,
/// and among equal timestamps the first stored is the first trimmed.
pub fn quota_trims_keep_the_newest_without_holes(db: &dyn ContractDb) {
    let mut store = db.open();
    for i in 0..20i64 {
        let removed = store
            .append(
                &juliet(),
                &msg(&format!("q{i}"), T0 + i * 1000, "romeo@montague.lit"),
                Some(Quota::of(5)),
            )
            .expect("append");
        assert_eq!(removed, u64::from(i >= 5), "append q{i}");
        let expected: Vec<String> = ((i - 4).max(0)..=i).map(|k| format!("q{k}")).collect();
        assert_eq!(all_ids(store.as_mut(), &juliet()), expected);
    }
    for id in ["z", "a", "m", "b"] {
        store
            .append(
                &nurse(),
                &msg(id, T0, "juliet@capulet.lit"),
                Some(Quota::of(2)),
            )
            .expect("append");
    }
    assert_eq!(all_ids(store.as_mut(), &nurse()), ["m", "b"]);
}

/// Stock (0.12 and 13) at a quota hit: the owner's expired messages go first, then
/// the oldest if still over; the message just stored always stays.
pub fn at_the_quota_expired_messages_go_first_then_the_oldest(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let quota = |limit, before_secs: i64| {
        Some(Quota {
            limit,
            expired_before: Some(T0 + before_secs * 1_000_000),
        })
    };
    let m = |i: i64, at_secs: i64| {
        msg(
            &format!("m{i}"),
            T0 + at_secs * 1_000_000,
            "romeo@montague.lit",
        )
    };
    // m0-m2 are expired; removing them is enough.
    assert_eq!(
        store
            .append(&juliet(), &m(10, 10), quota(8, 3))
            .expect("append"),
        3
    );
    let expected: Vec<String> = (3..=10).map(|k| format!("m{k}")).collect();
    assert_eq!(all_ids(store.as_mut(), &juliet()), expected);
    // m3, m4 expired, then the three oldest of the rest to get down to 4.
    assert_eq!(
        store
            .append(&juliet(), &m(11, 11), quota(4, 5))
            .expect("append"),
        5
    );
    assert_eq!(
        all_ids(store.as_mut(), &juliet()),
        ["m8", "m9", "m10", "m11"]
    );
    assert_message_count(store.as_mut(), &juliet(), 4);
    // Under the quota, expired messages wait for expiry.
    assert_eq!(
        store
            .append(&juliet(), &m(12, 12), quota(100, 20))
            .expect("append"),
        0
    );
    // A backdated, itself expired message survives its own quota check.
    assert_eq!(
        store
            .append(&juliet(), &m(13, 0), quota(1, 20))
            .expect("append"),
        5
    );
    assert_eq!(all_ids(store.as_mut(), &juliet()), ["m13"]);
    // The same through the group commit, for two owners at once.
    let batch = vec![
        (romeo(), msg("r1", T0, "juliet@capulet.lit")),
        (romeo(), msg("r2", T0 + 30_000_000, "juliet@capulet.lit")),
        (juliet(), m(14, 30)),
    ];
    assert_eq!(store.append_many(&batch, quota(1, 20)).expect("append"), 2);
    assert_eq!(all_ids(store.as_mut(), &romeo()), ["r2"]);
    assert_eq!(all_ids(store.as_mut(), &juliet()), ["m14"]);
    assert_message_count(store.as_mut(), &romeo(), 1);
}

pub fn message_counts_stay_exact_through_every_write_and_delete(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let store = store.as_mut();
    store
        .append(&romeo(), &msg("r1", T0, "juliet@capulet.lit"), None)
        .expect("append");
    assert_message_count(store, &juliet(), 10);
    store
        .append(
            &juliet(),
            &msg("m10", T0 + 10_000_000, "romeo@montague.lit"),
            Some(Quota::of(8)),
        )
        .expect("quota");
    assert_message_count(store, &juliet(), 8);
    // m3 and m4 are old enough; a batch of 2 takes both.
    assert_eq!(
        store.expire_batch(HOST, T0 + 5_000_000, 2).expect("expire"),
        2
    );
    assert_message_count(store, &juliet(), 6);
    let nurses = DeleteFilter {
        with: with("nurse@capulet.lit", None),
        before: None,
    };
    assert_eq!(store.delete_batch(&juliet(), &nurses, 1).expect("d"), 1);
    assert_message_count(store, &juliet(), 5);
    let report = store
        .import_batch(
            HOST,
            &[
                imported("juliet", "i1", T0 - 5, "romeo@montague.lit"),
                imported("juliet", "m9", T0 + 9_000_000, "nurse@capulet.lit"),
            ],
        )
        .expect("import");
    assert_eq!((report.inserted, report.already_present), (1, 1));
    assert_message_count(store, &juliet(), 6);
    store
        .append_many(
            &[(juliet(), msg("m11", T0 + 11_000_000, "x@y"))],
            Some(Quota::of(100)),
        )
        .expect("append");
    assert_message_count(store, &juliet(), 7);
    assert_eq!(store.delete_user(&juliet()).expect("delete"), 7);
    assert_message_count(store, &juliet(), 0);
    assert_message_count(store, &romeo(), 1);
    assert_message_count(store, &Owner::new(HOST, "nobody"), 0);
}

// ---------------------------------------------------------------------------------
// Preferences.
// ---------------------------------------------------------------------------------

pub fn prefs_round_trip_including_never_list(db: &dyn ContractDb) {
    let mut store = db.open();
    assert_eq!(store.get_prefs(&juliet()).expect("get"), None);
    let mut prefs = Prefs::with_default(DefaultPolicy::Roster);
    prefs.always.insert("romeo@montague.lit".into());
    prefs.never.insert("montague@montague.lit".into());
    prefs.never.insert("tybalt@capulet.lit".into());
    store.set_prefs(&juliet(), &prefs).expect("set");
    assert_eq!(store.get_prefs(&juliet()).expect("get"), Some(prefs));
    // Setting replaces everything.
    let only_default = Prefs::with_default(DefaultPolicy::Never);
    store.set_prefs(&juliet(), &only_default).expect("set");
    assert_eq!(store.get_prefs(&juliet()).expect("get"), Some(only_default));
    assert_eq!(store.get_prefs(&romeo()).expect("get"), None);
    // Every default policy round-trips.
    for policy in [
        DefaultPolicy::Always,
        DefaultPolicy::Never,
        DefaultPolicy::Roster,
    ] {
        let mut prefs = Prefs::with_default(policy);
        prefs.always.insert("nurse@capulet.lit".into());
        store.set_prefs(&juliet(), &prefs).expect("set");
        assert_eq!(store.get_prefs(&juliet()).expect("get"), Some(prefs));
    }
}

pub fn a_jid_on_both_lists_reads_back_as_never(db: &dyn ContractDb) {
    let mut store = db.open();
    let mut prefs = Prefs::with_default(DefaultPolicy::Always);
    prefs.always.insert("tybalt@capulet.lit".into());
    prefs.never.insert("tybalt@capulet.lit".into());
    store.set_prefs(&juliet(), &prefs).expect("set");
    let back = store.get_prefs(&juliet()).expect("get").expect("some");
    assert_eq!(back.always, BTreeSet::new());
    assert_eq!(
        back.never,
        BTreeSet::from(["tybalt@capulet.lit".to_owned()])
    );
    // The same when the preferences come in through an import.
    assert!(store.set_prefs_if_absent(&nurse(), &prefs).expect("import"));
    assert_eq!(store.get_prefs(&nurse()).expect("get"), Some(back));
}

pub fn all_prefs_lists_every_owner_with_prefs_on_that_host_only(db: &dyn ContractDb) {
    let mut store = db.open();
    assert!(store.all_prefs(HOST).expect("all").is_empty());
    let mut juliets = Prefs::with_default(DefaultPolicy::Roster);
    juliets.never.insert("tybalt@capulet.lit".into());
    let nurses = Prefs::with_default(DefaultPolicy::Never);
    let mut romeos = Prefs::with_default(DefaultPolicy::Always);
    romeos.always.insert("juliet@capulet.lit".into());
    store.set_prefs(&juliet(), &juliets).expect("set");
    store.set_prefs(&nurse(), &nurses).expect("set");
    store.set_prefs(&romeo(), &romeos).expect("set");
    store
        .set_prefs(&Owner::new(OTHER_HOST, "juliet"), &nurses)
        .expect("set");
    // Messages alone do not make an entry.
    store
        .append(
            &Owner::new(HOST, "tybalt"),
            &msg("t1", T0, "romeo@montague.lit"),
            None,
        )
        .expect("append");
    let listed = store.all_prefs(HOST).expect("all");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(
        listed.into_iter().collect::<BTreeMap<_, _>>(),
        BTreeMap::from([
            ("juliet".to_owned(), juliets.clone()),
            ("nurse".to_owned(), nurses.clone()),
        ])
    );
    store.delete_user(&nurse()).expect("delete");
    assert_eq!(
        store.all_prefs(HOST).expect("all"),
        [("juliet".to_owned(), juliets)]
    );
    assert_eq!(store.all_prefs(OTHER_HOST).expect("all").len(), 2);
    assert!(store.all_prefs("nowhere.lit").expect("all").is_empty());
}

pub fn imported_prefs_never_replace_prefs_already_set(db: &dyn ContractDb) {
    let mut store = db.open();
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
    // Nor do they replace prefs set through the module, however plain.
    let plain = Prefs::with_default(DefaultPolicy::Always);
    store.set_prefs(&nurse(), &plain).expect("set");
    assert!(!store
        .set_prefs_if_absent(&nurse(), &changed)
        .expect("again"));
    assert_eq!(store.get_prefs(&nurse()).expect("get"), Some(plain));
}

// ---------------------------------------------------------------------------------
// Deleting and expiry.
// ---------------------------------------------------------------------------------

pub fn delete_user_removes_archive_and_prefs_only_for_that_user(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let nurse = nurse();
    store
        .append(&nurse, &msg("n1", T0, "juliet@capulet.lit"), None)
        .expect("append");
    let prefs = Prefs::with_default(DefaultPolicy::Never);
    let mut with_list = Prefs::with_default(DefaultPolicy::Always);
    with_list.never.insert("romeo@montague.lit".into());
    store.set_prefs(&juliet(), &with_list).expect("set");
    store.set_prefs(&nurse, &prefs).expect("set");

    assert_eq!(store.delete_user(&juliet()).expect("delete"), 10);
    let page = store
        .find(
            &juliet(),
            &FindRequest {
                total: true,
                ..req(10)
            },
        )
        .expect("find");
    assert_eq!(
        page,
        Page {
            items: vec![],
            total: Some(0)
        }
    );
    assert_eq!(store.get_prefs(&juliet()).expect("get"), None);
    assert_eq!(store.bounds(&juliet()).expect("bounds"), None);
    // No JID rule outlives the account: new preferences start from nothing.
    let fresh = Prefs::with_default(DefaultPolicy::Roster);
    assert!(store.set_prefs_if_absent(&juliet(), &fresh).expect("set"));
    assert_eq!(store.get_prefs(&juliet()).expect("get"), Some(fresh));
    // The nurse keeps everything.
    assert_eq!(ids(&store.find(&nurse, &req(10)).expect("find")), ["n1"]);
    assert_eq!(store.get_prefs(&nurse).expect("get"), Some(prefs));
    // Deleting again is harmless; the ids are free for a new account.
    assert_eq!(store.delete_user(&juliet()).expect("delete"), 0);
    store
        .append(&juliet(), &msg("m0", T0, "romeo@montague.lit"), None)
        .expect("an old id in a new archive");
}

pub fn delete_batch_honours_with_and_before_and_is_bounded(db: &dyn ContractDb) {
    let mut store = db.open();
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
        with: with("romeo@montague.lit", None),
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
        all_ids(store.as_mut(), &juliet()),
        ["m1", "m3", "m5", "m6", "m7", "m8", "m9"]
    );
    let before_8 = DeleteFilter {
        with: None,
        before: Some(T0 + 8),
    };
    assert_eq!(store.delete_batch(&juliet(), &before_8, 100).expect("d"), 5);
    assert_eq!(all_ids(store.as_mut(), &juliet()), ["m8", "m9"]);
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

pub fn a_full_jid_filter_deletes_only_that_resource(db: &dyn ContractDb) {
    let mut store = db.open();
    let a = imported("juliet", "a", T0, "romeo@montague.lit/orchard");
    let b = imported("juliet", "b", T0 + 1, "romeo@montague.lit");
    store.import_batch(HOST, &[a, b]).expect("import");
    let filter = DeleteFilter {
        with: with("romeo@montague.lit", Some("orchard")),
        before: None,
    };
    assert_eq!(store.delete_batch(&juliet(), &filter, 10).expect("d"), 1);
    assert_eq!(all_ids(store.as_mut(), &juliet()), ["b"]);
}

pub fn delete_batch_combines_a_full_jid_with_before(db: &dyn ContractDb) {
    let mut store = db.open();
    for (id, when, with) in [
        ("a", T0, "romeo@montague.lit/orchard"),
        ("b", T0 + 1, "romeo@montague.lit/balcony"),
        ("c", T0 + 2, "romeo@montague.lit"),
        ("d", T0 + 3, "romeo@montague.lit/orchard"),
        ("e", T0 + 4, "romeo@montague.lit/orchard"),
        ("f", T0 + 1, "nurse@capulet.lit/orchard"),
    ] {
        store
            .append(&juliet(), &msg(id, when, with), None)
            .expect("append");
    }
    let orchard_before_e = DeleteFilter {
        with: with("romeo@montague.lit", Some("orchard")),
        before: Some(T0 + 4),
    };
    // A batch of none removes none.
    assert_eq!(
        store
            .delete_batch(&juliet(), &orchard_before_e, 0)
            .expect("d"),
        0
    );
    assert_eq!(store.message_count(&juliet()).expect("count"), 6);
    assert_eq!(
        store
            .delete_batch(&juliet(), &orchard_before_e, 10)
            .expect("d"),
        2
    );
    assert_eq!(all_ids(store.as_mut(), &juliet()), ["b", "f", "c", "e"]);
    let every_romeo = DeleteFilter {
        with: with("romeo@montague.lit", None),
        before: None,
    };
    assert_eq!(
        store.delete_batch(&juliet(), &every_romeo, 10).expect("d"),
        3
    );
    assert_eq!(all_ids(store.as_mut(), &juliet()), ["f"]);
}

pub fn deletes_and_expiry_take_equal_timestamps_in_insertion_order(db: &dyn ContractDb) {
    let mut store = db.open();
    let elsewhere = Owner::new(OTHER_HOST, "juliet");
    for id in ["z", "a", "m", "b", "y"] {
        for owner in [juliet(), elsewhere.clone()] {
            store
                .append(&owner, &msg(id, T0, "romeo@montague.lit"), None)
                .expect("append");
        }
    }
    assert_eq!(
        store
            .delete_batch(&juliet(), &DeleteFilter::default(), 2)
            .expect("delete"),
        2
    );
    assert_eq!(all_ids(store.as_mut(), &juliet()), ["m", "b", "y"]);
    assert_eq!(
        store.expire_batch(OTHER_HOST, T0 + 1, 3).expect("expire"),
        3
    );
    assert_eq!(all_ids(store.as_mut(), &elsewhere), ["b", "y"]);
}

pub fn expire_batch_deletes_only_older_and_is_bounded(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let nurse = nurse();
    for i in 0..4 {
        store
            .append(
                &nurse,
                &msg(&format!("n{i}"), T0 + i * 1_000_000, "juliet@capulet.lit"),
                None,
            )
            .expect("append");
    }
    // Another host's old messages are not this host's business.
    store
        .append(&romeo(), &msg("r1", T0, "juliet@capulet.lit"), None)
        .expect("append");
    let cutoff = T0 + 3_000_000; // strictly before: m0..m2 and n0..n2, six in all.
    assert_eq!(store.expire_batch(HOST, cutoff, 4).expect("expire"), 4);
    assert_eq!(store.expire_batch(HOST, cutoff, 4).expect("expire"), 2);
    assert_eq!(store.expire_batch(HOST, cutoff, 4).expect("expire"), 0);
    assert_eq!(
        ids(&store.find(&juliet(), &req(100)).expect("find")),
        ["m3", "m4", "m5", "m6", "m7", "m8", "m9"]
    );
    assert_eq!(ids(&store.find(&nurse, &req(100)).expect("find")), ["n3"]);
    assert_eq!(ids(&store.find(&romeo(), &req(100)).expect("find")), ["r1"]);
    assert_eq!(store.expire_batch(HOST, cutoff, 0).expect("expire"), 0);
}

pub fn expire_batch_goes_round_all_owners_before_reporting_done(db: &dyn ContractDb) {
    let mut store = db.open();
    let users = ["a", "b", "c", "d"];
    for user in users {
        for i in 0..3 {
            store
                .append(
                    &Owner::new(HOST, user),
                    &msg(&format!("{user}{i}"), T0 + i, "x@y"),
                    None,
                )
                .expect("append");
        }
    }
    // Batches of 5 over 12 old messages: 5, 5, 2 and then nothing, whichever owners
    // each batch starts with.
    let mut got = Vec::new();
    loop {
        let n = store.expire_batch(HOST, T0 + 10, 5).expect("expire");
        got.push(n);
        if n < 5 {
            break;
        }
    }
    assert_eq!(got, [5, 5, 2]);
    for user in users {
        let page = store
            .find(
                &Owner::new(HOST, user),
                &FindRequest {
                    total: true,
                    ..req(0)
                },
            )
            .expect("find");
        assert_eq!(page.total, Some(0), "{user}");
    }
}

/// Expiry's cut-off moves forward between batches (now minus the retention), so
/// owners a previous batch already cleaned can have old messages again.
pub fn a_later_cutoff_still_reaches_owners_before_where_the_last_batch_stopped(
    db: &dyn ContractDb,
) {
    let mut store = db.open();
    let users = ["a", "b", "c", "d"];
    for user in users {
        for i in 0..3 {
            store
                .append(
                    &Owner::new(HOST, user),
                    &msg(&format!("{user}{i}"), T0 + i, "x@y"),
                    None,
                )
                .expect("append");
        }
    }
    // Four messages are older than T0 + 1; a batch of three leaves one of them.
    assert_eq!(store.expire_batch(HOST, T0 + 1, 3).expect("expire"), 3);
    // Now all nine left are old, wherever the last batch stopped.
    assert_eq!(store.expire_batch(HOST, T0 + 3, 100).expect("expire"), 9);
    for user in users {
        assert_eq!(
            store.message_count(&Owner::new(HOST, user)).expect("count"),
            0,
            "{user}"
        );
    }
}

pub fn expire_batch_walks_many_owners(db: &dyn ContractDb) {
    let mut store = db.open();
    let mut items = Vec::with_capacity(MANY_OWNERS * 2);
    for i in 0..MANY_OWNERS {
        let owner = Owner::new(HOST, &format!("user{i:04}"));
        items.push((owner.clone(), msg("old", T0, "x@y")));
        items.push((owner, msg("new", T0 + 100, "x@y")));
    }
    store.append_many(&items, None).expect("append");
    let n = store
        .expire_batch(HOST, T0 + 1, MANY_OWNERS + 10)
        .expect("expire");
    assert_eq!(n, MANY_OWNERS as u64);
    let stats = store.owner_stats(HOST).expect("stats");
    assert_eq!(stats.len(), MANY_OWNERS);
    assert!(
        stats
            .iter()
            .all(|s| s.messages == 1 && s.oldest == T0 + 100),
        "an old message is left"
    );
}

pub fn expiry_leaves_the_same_user_on_another_host_alone(db: &dyn ContractDb) {
    let mut store = db.open();
    let here = juliet();
    let there = Owner::new(OTHER_HOST, "juliet");
    // Differs from HOST only in case: still another host.
    let shouting = Owner::new("CAPULET.LIT", "juliet");
    for i in 0..3 {
        for (owner, prefix) in [(&here, "h"), (&there, "t"), (&shouting, "s")] {
            store
                .append(owner, &msg(&format!("{prefix}{i}"), T0 + i, "x@y"), None)
                .expect("append");
        }
    }
    // Interleaved batches on two hosts, each host's walk unaffected by the other's.
    assert_eq!(store.expire_batch(HOST, T0 + 10, 2).expect("expire"), 2);
    assert_eq!(all_ids(store.as_mut(), &there), ["t0", "t1", "t2"]);
    assert_eq!(
        store.expire_batch(OTHER_HOST, T0 + 1, 5).expect("expire"),
        1
    );
    assert_eq!(store.expire_batch(HOST, T0 + 10, 2).expect("expire"), 1);
    assert_eq!(store.expire_batch(HOST, T0 + 10, 2).expect("expire"), 0);
    assert!(all_ids(store.as_mut(), &here).is_empty());
    assert_eq!(all_ids(store.as_mut(), &there), ["t1", "t2"]);
    assert_eq!(all_ids(store.as_mut(), &shouting), ["s0", "s1", "s2"]);
}

// ---------------------------------------------------------------------------------
// Import and the operator's statistics.
// ---------------------------------------------------------------------------------

pub fn an_import_keeps_source_ids_and_source_order_within_a_second(db: &dyn ContractDb) {
    let mut store = db.open();
    // Stock stamps whole seconds: three messages in one second, ids not sorted.
    let batch = vec![
        imported("juliet", "zz", T0, "romeo@montague.lit"),
        imported("juliet", "aa", T0, "nurse@capulet.lit/chamber"),
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
    assert_eq!(
        all_ids(store.as_mut(), &juliet()),
        ["early", "zz", "aa", "mm"]
    );
    let page = store.find(&juliet(), &req(10)).expect("find");
    assert_eq!(page.items[1].xml, batch[0].msg.xml);
    assert_eq!(page.items[1].when, T0);
    // The resource is imported too, and RSM works on source ids.
    let chamber = FindRequest {
        with: with("nurse@capulet.lit", Some("chamber")),
        ..req(10)
    };
    assert_eq!(ids(&store.find(&juliet(), &chamber).expect("find")), ["aa"]);
    let after_zz = FindRequest {
        after: vec!["zz".into()],
        ..req(10)
    };
    assert_eq!(
        ids(&store.find(&juliet(), &after_zz).expect("find")),
        ["aa", "mm"]
    );
}

pub fn importing_the_same_batch_twice_adds_nothing(db: &dyn ContractDb) {
    let mut store = db.open();
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
    assert_eq!(
        store.import_batch(HOST, &[]).expect("empty"),
        ImportReport::default()
    );
}

pub fn an_id_already_used_for_another_message_is_a_conflict_and_is_not_overwritten(
    db: &dyn ContractDb,
) {
    let mut store = db.open();
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
    let page = store.find(&juliet(), &req(10)).expect("find");
    assert_eq!(page.items[0].when, T0);
}

/// "Already present" means the same id, time and partner; the stanza text may differ
/// (a re-serialisation), the partner's resource too.
pub fn an_import_conflict_is_another_time_or_partner_not_another_stanza(db: &dyn ContractDb) {
    let mut store = db.open();
    let first = imported("juliet", "x", T0, "romeo@montague.lit/orchard");
    store
        .import_batch(HOST, std::slice::from_ref(&first))
        .expect("first");
    let mut reserialised = imported("juliet", "x", T0, "romeo@montague.lit/balcony");
    reserialised.msg.xml = "<message xmlns='jabber:client'><body>again</body></message>".into();
    let report = store
        .import_batch(
            HOST,
            &[
                reserialised,
                imported("juliet", "x", T0, "nurse@capulet.lit"),
                // The same new id twice in one batch: the first goes in.
                imported("juliet", "y", T0 + 1, "nurse@capulet.lit"),
                imported("juliet", "y", T0 + 1, "nurse@capulet.lit"),
            ],
        )
        .expect("second");
    assert_eq!(
        report,
        ImportReport {
            inserted: 1,
            already_present: 2,
            conflicts: vec![("juliet".to_owned(), "x".to_owned())]
        }
    );
    let page = store.find(&juliet(), &req(10)).expect("find");
    assert_eq!(ids(&page), ["x", "y"]);
    assert_eq!(page.items[0].xml, first.msg.xml);
    assert_eq!(page.items[0].with_bare, "romeo@montague.lit");
}

pub fn stats_list_each_owner_with_count_bytes_and_ends(db: &dyn ContractDb) {
    let mut store = db.open();
    let batch = [
        imported("juliet", "a", T0 + 7, "romeo@montague.lit"),
        imported("juliet", "b", T0, "romeo@montague.lit"),
        imported("nurse", "c", T0 + 3, "juliet@capulet.lit"),
    ];
    store.import_batch(HOST, &batch).expect("import");
    store
        .import_batch(
            OTHER_HOST,
            &[imported("romeo", "d", T0, "juliet@capulet.lit")],
        )
        .expect("import");
    let stats = store.owner_stats(HOST).expect("stats");
    let xml_len = |i: usize| batch[i].msg.xml.len() as u64;
    assert_eq!(
        stats,
        [
            OwnerStats {
                user: "juliet".into(),
                messages: 2,
                bytes: xml_len(0) + xml_len(1),
                oldest: T0,
                newest: T0 + 7
            },
            OwnerStats {
                user: "nurse".into(),
                messages: 1,
                bytes: xml_len(2),
                oldest: T0 + 3,
                newest: T0 + 3
            },
        ]
    );
    assert!(store.owner_stats("nowhere.lit").expect("stats").is_empty());
    let size = store.database_bytes().expect("size");
    assert!(matches!(size, None | Some(1..)), "{size:?}");
}

/// Name order is the order of the names' bytes (as Rust sorts strings), not a
/// locale's: `Zed` before `alice`, and accented letters last.
pub fn owner_stats_lists_names_in_byte_order_and_skips_emptied_owners(db: &dyn ContractDb) {
    let mut store = db.open();
    let users = ["juliet", "Zed", "émile", "alice", "Bob", "zoë", "Émile"];
    for (i, user) in users.iter().enumerate() {
        // Bob's message is the only one old enough to expire below.
        let when = if *user == "Bob" {
            T0 - 100
        } else {
            T0 + i as i64
        };
        store
            .append(&Owner::new(HOST, user), &msg("m", when, "x@y"), None)
            .expect("append");
    }
    let mut by_bytes: Vec<&str> = users.to_vec();
    by_bytes.sort_unstable();
    let listed = |store: &mut dyn ArchiveStore| -> Vec<String> {
        store
            .owner_stats(HOST)
            .expect("stats")
            .into_iter()
            .map(|s| s.user)
            .collect()
    };
    assert_eq!(listed(store.as_mut()), by_bytes);
    assert_eq!(
        by_bytes,
        ["Bob", "Zed", "alice", "juliet", "zoë", "Émile", "émile"]
    );
    // An owner whose messages are all gone, by whatever way, is no longer listed.
    store
        .delete_batch(&Owner::new(HOST, "alice"), &DeleteFilter::default(), 10)
        .expect("delete");
    assert_eq!(store.expire_batch(HOST, T0, 10).expect("expire"), 1);
    store
        .append(
            &Owner::new(HOST, "Zed"),
            &msg("quota", T0 + 100, "x@y"),
            Some(Quota::of(1)),
        )
        .expect("append");
    store.delete_user(&Owner::new(HOST, "zoë")).expect("delete");
    assert_eq!(listed(store.as_mut()), ["Zed", "juliet", "Émile", "émile"]);
}

pub fn database_bytes_is_positive_when_the_backend_knows_it(db: &dyn ContractDb) {
    let mut store = db.open();
    let empty = store.database_bytes().expect("size");
    assert!(matches!(empty, None | Some(1..)), "{empty:?}");
    add_ten_messages(store.as_mut());
    let filled = store.database_bytes().expect("size");
    assert!(matches!(filled, None | Some(1..)), "{filled:?}");
    assert_eq!(
        empty.is_some(),
        filled.is_some(),
        "a backend knows its size always or never"
    );
}

// ---------------------------------------------------------------------------------
// Isolation, odd data, several handles.
// ---------------------------------------------------------------------------------

pub fn the_same_user_on_two_hosts_has_two_separate_archives(db: &dyn ContractDb) {
    let mut store = db.open();
    let here = juliet();
    let there = Owner::new(OTHER_HOST, "juliet");
    let shouting = Owner::new("CAPULET.LIT", "juliet");
    // The same ids on each host, at different times and with different partners.
    for (owner, offset, with) in [
        (&here, 0, "romeo@montague.lit"),
        (&there, 10, "tybalt@capulet.lit"),
        (&shouting, 20, "x@y"),
    ] {
        for i in 0..2 {
            store
                .append(owner, &msg(&format!("s{i}"), T0 + offset + i, with), None)
                .expect("append");
        }
    }
    let whens = |store: &mut dyn ArchiveStore, owner: &Owner| -> Vec<Micros> {
        let page = store.find(owner, &req(10)).expect("find");
        page.items.iter().map(|m| m.when).collect()
    };
    assert_eq!(whens(store.as_mut(), &here), [T0, T0 + 1]);
    assert_eq!(whens(store.as_mut(), &there), [T0 + 10, T0 + 11]);
    assert_eq!(whens(store.as_mut(), &shouting), [T0 + 20, T0 + 21]);
    let after_s0 = FindRequest {
        after: vec!["s0".into()],
        with: with("tybalt@capulet.lit", None),
        total: true,
        ..req(10)
    };
    let page = store.find(&there, &after_s0).expect("find");
    assert_eq!((ids(&page), page.total), (vec!["s1"], Some(2)));
    let page = store.find(&here, &after_s0).expect("find");
    assert_eq!((ids(&page), page.total), (vec![], Some(0)));
    let bounds = store.bounds(&there).expect("bounds").expect("some");
    assert_eq!((bounds.first.when, bounds.last.when), (T0 + 10, T0 + 11));

    let prefs = Prefs::with_default(DefaultPolicy::Never);
    store.set_prefs(&here, &prefs).expect("set");
    assert_eq!(store.get_prefs(&there).expect("get"), None);
    assert_eq!(store.get_prefs(&shouting).expect("get"), None);
    assert!(store.all_prefs(OTHER_HOST).expect("all").is_empty());

    let stats = store.owner_stats(OTHER_HOST).expect("stats");
    assert_eq!(stats.len(), 1);
    assert_eq!((stats[0].messages, stats[0].oldest), (2, T0 + 10));

    // An import compares with its own host's archive only.
    let again = imported("juliet", "s0", T0, "romeo@montague.lit");
    let report = store
        .import_batch(HOST, std::slice::from_ref(&again))
        .expect("import");
    assert_eq!(report.already_present, 1);
    let report = store.import_batch(OTHER_HOST, &[again]).expect("import");
    assert_eq!(report.conflicts, [("juliet".to_owned(), "s0".to_owned())]);

    assert_eq!(
        store
            .delete_batch(&there, &DeleteFilter::default(), 10)
            .expect("delete"),
        2
    );
    assert_eq!(store.message_count(&here).expect("count"), 2);
    assert_eq!(store.delete_user(&here).expect("delete"), 2);
    assert_eq!(store.message_count(&shouting).expect("count"), 2);
}

/// Strings that break naive SQL, LIKE patterns, JSON arrays, case-insensitive or
/// trimming comparisons. No NUL: no XMPP string can hold one (XML forbids it), and
/// PostgreSQL's `text` cannot store it.
const ODD: &[&str] = &[
    "'",
    "\"",
    "''",
    "'; DROP TABLE archive; --",
    "' OR '1'='1",
    "%",
    "_",
    "jul%",
    "\\",
    "\\\"",
    "[\"x\"]",
    "?",
    "$1",
    ":name",
    "\u{202E}",
    "😀",
    "ünï'çødé",
    "e\nf\u{1}",
    "JULIET",
    "juliet ",
    " juliet",
    "",
];

pub fn odd_strings_are_stored_and_matched_as_plain_data(db: &dyn ContractDb) {
    let mut store = db.open();
    store
        .append(&juliet(), &msg("j1", T0, "romeo@montague.lit"), None)
        .expect("append");
    // Each odd string is a user whose one message has that id, partner and resource,
    // and a stanza that carries it too.
    for (i, odd) in ODD.iter().enumerate() {
        let message = ArchivedMessage {
            id: (*odd).to_owned(),
            when: T0 + 1 + i as i64,
            with_bare: (*odd).to_owned(),
            with_resource: Some((*odd).to_owned()),
            xml: format!("<message xmlns='jabber:client'><body>{odd}</body></message>"),
        };
        store
            .append(&Owner::new(HOST, odd), &message, None)
            .expect("append");
        let mut prefs = Prefs::with_default(DefaultPolicy::Roster);
        prefs.never.insert((*odd).to_owned());
        prefs.always.insert(format!("{odd}x"));
        store
            .set_prefs(&Owner::new(HOST, odd), &prefs)
            .expect("set");
    }
    for (i, odd) in ODD.iter().enumerate() {
        let owner = Owner::new(HOST, odd);
        let page = store
            .find(
                &owner,
                &FindRequest {
                    total: true,
                    ..req(10)
                },
            )
            .expect("find");
        assert_eq!((ids(&page), page.total), (vec![*odd], Some(1)), "{odd:?}");
        let item = &page.items[0];
        assert_eq!(item.when, T0 + 1 + i as i64, "{odd:?}");
        assert_eq!(item.with_bare, *odd);
        assert_eq!(
            item.xml,
            format!("<message xmlns='jabber:client'><body>{odd}</body></message>")
        );
        let exact = FindRequest {
            with: with(odd, Some(*odd)),
            ids: Some(vec![(*odd).to_owned()]),
            total: true,
            ..req(10)
        };
        assert_eq!(
            store.find(&owner, &exact).expect("find").total,
            Some(1),
            "{odd:?}"
        );
        let after = FindRequest {
            after: vec![(*odd).to_owned()],
            ..req(10)
        };
        assert!(store.find(&owner, &after).expect("find").items.is_empty());
        let prefs = store.get_prefs(&owner).expect("get").expect("some");
        assert_eq!(prefs.never, BTreeSet::from([(*odd).to_owned()]));
        assert_eq!(prefs.always, BTreeSet::from([format!("{odd}x")]));
    }
    // Juliet's archive is hers alone, and none of the strings names her messages.
    assert_eq!(all_ids(store.as_mut(), &juliet()), ["j1"]);
    for odd in ODD {
        let as_partner = FindRequest {
            with: with(odd, None),
            ..req(10)
        };
        let as_id = FindRequest {
            ids: Some(vec![(*odd).to_owned()]),
            ..req(10)
        };
        for request in [as_partner, as_id] {
            let page = store.find(&juliet(), &request).expect("find");
            assert!(page.items.is_empty(), "{odd:?}: {page:?}");
        }
    }
    let users: Vec<String> = store
        .owner_stats(HOST)
        .expect("stats")
        .into_iter()
        .map(|s| s.user)
        .collect();
    let mut expected: Vec<String> = ODD.iter().map(|s| (*s).to_owned()).collect();
    expected.push("juliet".into());
    expected.sort_unstable();
    assert_eq!(users, expected);
    assert_eq!(store.all_prefs(HOST).expect("all").len(), ODD.len());
    // Deleting one odd user removes exactly that user.
    assert_eq!(store.delete_user(&Owner::new(HOST, "%")).expect("d"), 1);
    assert_eq!(store.message_count(&juliet()).expect("count"), 1);
    assert_eq!(store.owner_stats(HOST).expect("stats").len(), ODD.len());
}

/// Prosody runs one writer and several readers, each with its own connection: each
/// must see the others' commits, and a failed write must leave nothing for anyone.
pub fn a_second_handle_sees_what_the_first_committed(db: &dyn ContractDb) {
    let mut writer = db.open();
    let mut reader = db.open();
    assert_eq!(reader.bounds(&juliet()).expect("bounds"), None);
    add_ten_messages(writer.as_mut());
    writer
        .append_many(
            &[
                (nurse(), msg("n1", T0, "juliet@capulet.lit")),
                (
                    juliet(),
                    msg("m10", T0 + 10_000_000, "romeo@montague.lit/orchard"),
                ),
            ],
            None,
        )
        .expect("append");
    let page = reader
        .find(
            &juliet(),
            &FindRequest {
                with: with("romeo@montague.lit", Some("orchard")),
                reverse: true,
                total: true,
                ..req(2)
            },
        )
        .expect("find");
    assert_eq!((ids(&page), page.total), (vec!["m10", "m8"], Some(6)));
    assert_eq!(reader.message_count(&juliet()).expect("count"), 11);
    let bounds = reader.bounds(&juliet()).expect("bounds").expect("some");
    assert_eq!(bounds.last.id, "m10");
    let prefs = Prefs::with_default(DefaultPolicy::Roster);
    writer.set_prefs(&juliet(), &prefs).expect("set");
    assert_eq!(
        reader.get_prefs(&juliet()).expect("get"),
        Some(prefs.clone())
    );
    assert_eq!(
        reader.all_prefs(HOST).expect("all"),
        [("juliet".to_owned(), prefs)]
    );

    // And the other way round.
    assert_eq!(
        reader
            .expire_batch(HOST, T0 + 1_000_000, 100)
            .expect("expire"),
        2
    );
    assert_eq!(ids(&writer.find(&juliet(), &req(1)).expect("find")), ["m1"]);
    assert_eq!(writer.message_count(&nurse()).expect("count"), 0);
    assert_eq!(reader.delete_user(&juliet()).expect("delete"), 10);
    assert_eq!(writer.message_count(&juliet()).expect("count"), 0);
    assert_eq!(writer.get_prefs(&juliet()).expect("get"), None);

    // A failed group commit leaves nothing behind, and the writer carries on.
    writer
        .append(&nurse(), &msg("n2", T0, "juliet@capulet.lit"), None)
        .expect("append");
    let clash = [
        (romeo(), msg("r1", T0, "juliet@capulet.lit")),
        (nurse(), msg("n2", T0 + 1, "juliet@capulet.lit")),
    ];
    assert!(writer.append_many(&clash, None).is_err());
    assert_eq!(reader.message_count(&romeo()).expect("count"), 0);
    assert_eq!(writer.append_many(&clash[..1], None).expect("append"), 0);
    assert_eq!(ids(&reader.find(&romeo(), &req(10)).expect("find")), ["r1"]);

    // What was committed outlives every handle.
    drop(writer);
    drop(reader);
    let mut again = db.open();
    assert_eq!(all_ids(again.as_mut(), &romeo()), ["r1"]);
    assert_eq!(all_ids(again.as_mut(), &nurse()), ["n2"]);
}

// ---------------------------------------------------------------------------------
// The storage provider's item operations (Prosody's archive store API).
// ---------------------------------------------------------------------------------

pub fn owners_lists_each_owner_with_messages_on_that_host_in_name_order(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    store
        .append(&nurse(), &msg("n1", T0, "juliet@capulet.lit"), None)
        .expect("append");
    store
        .append(&Owner::new(HOST, ""), &msg("h1", T0, ""), None)
        .expect("append");
    store
        .append(&romeo(), &msg("r1", T0, "juliet@capulet.lit"), None)
        .expect("append");
    assert_eq!(
        store.owners(HOST).expect("owners"),
        vec!["".to_owned(), "juliet".into(), "nurse".into()]
    );
    assert_eq!(store.delete_user(&nurse()).expect("delete"), 1);
    assert_eq!(
        store.owners(HOST).expect("owners"),
        vec!["".to_owned(), "juliet".into()]
    );
    assert_eq!(store.owners(OTHER_HOST).expect("owners"), vec!["romeo"]);
    assert!(store.owners("nowhere.lit").expect("owners").is_empty());
}

pub fn replace_puts_a_new_message_or_replaces_the_one_with_its_id(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let store = store.as_mut();
    // A new id: stored like an append.
    assert!(!store
        .replace(&juliet(), &msg("new", T0 + 20_000_000, "x@y"))
        .expect("replace"));
    assert_message_count(store, &juliet(), 11);
    // An existing id: the old message is gone, the new one is there, once.
    let mut replacement = msg("m3", T0 + 3_500_000, "tybalt@capulet.lit/sword");
    replacement.xml = "<message xmlns='jabber:client'><body>replaced</body></message>".into();
    assert!(store.replace(&juliet(), &replacement).expect("replace"));
    assert_message_count(store, &juliet(), 11);
    let found = store
        .find(
            &juliet(),
            &FindRequest {
                ids: Some(vec!["m3".into()]),
                ..req(10)
            },
        )
        .expect("find");
    assert_eq!(found.items, vec![replacement]);
    // Another owner's message with the same id is not touched.
    store
        .append(&nurse(), &msg("m4", T0, "juliet@capulet.lit"), None)
        .expect("append");
    assert!(store
        .replace(&nurse(), &msg("m4", T0 + 1, "juliet@capulet.lit"))
        .expect("replace"));
    assert_eq!(
        all_ids(store, &juliet()),
        ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9", "new"]
    );
}

pub fn update_changes_only_the_given_fields_of_one_message(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let store = store.as_mut();
    let before = store.find(&juliet(), &req(100)).expect("find").items;
    let tombstone =
        "<message xmlns='jabber:client'><retracted xmlns='urn:xmpp:message-retract:1'/></message>";
    let change = ItemChange {
        xml: Some(tombstone.into()),
        ..ItemChange::default()
    };
    assert!(store.update(&juliet(), "m4", &change).expect("update"));
    let after = store.find(&juliet(), &req(100)).expect("find").items;
    for (old, new) in before.iter().zip(&after) {
        if old.id == "m4" {
            assert_eq!(new.xml, tombstone);
            assert_eq!(
                (&new.id, new.when, &new.with_bare, &new.with_resource),
                (&old.id, old.when, &old.with_bare, &old.with_resource)
            );
        } else {
            assert_eq!(old, new);
        }
    }
    // A new time moves it in archive order; a new partner replaces bare and resource
    // together (a bare JID clears the resource).
    let change = ItemChange {
        when: Some(T0 + 30_000_000),
        with: Some(("friar@verona.lit".into(), None)),
        ..ItemChange::default()
    };
    assert!(store.update(&juliet(), "m0", &change).expect("update"));
    let moved = store.find(&juliet(), &req(100)).expect("find").items;
    let last = moved.last().expect("items");
    assert_eq!(
        (
            last.id.as_str(),
            last.when,
            last.with_bare.as_str(),
            last.with_resource.clone()
        ),
        ("m0", T0 + 30_000_000, "friar@verona.lit", None)
    );
    assert_message_count(store, &juliet(), 10);
}

pub fn update_of_an_unknown_id_changes_nothing(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let store = store.as_mut();
    let before = store.find(&juliet(), &req(100)).expect("find").items;
    let change = ItemChange {
        xml: Some("<message xmlns='jabber:client'/>".into()),
        when: Some(T0),
        with: Some(("a@b".into(), Some("c".into()))),
    };
    assert!(!store.update(&juliet(), "absent", &change).expect("update"));
    // Juliet's id in another owner's archive is unknown there too.
    assert!(!store.update(&nurse(), "m1", &change).expect("update"));
    assert_eq!(
        store.find(&juliet(), &req(100)).expect("find").items,
        before
    );
}

pub fn delete_ids_removes_only_those_of_that_owner_and_keeps_counts_exact(db: &dyn ContractDb) {
    let mut store = ten_messages(db);
    let store = store.as_mut();
    store
        .append(&nurse(), &msg("m2", T0, "juliet@capulet.lit"), None)
        .expect("append");
    let gone = ["m2", "m5", "absent", "m'\\\"x"].map(String::from);
    assert_eq!(store.delete_ids(&juliet(), &gone).expect("delete"), 2);
    assert_eq!(
        all_ids(store, &juliet()),
        ["m0", "m1", "m3", "m4", "m6", "m7", "m8", "m9"]
    );
    assert_message_count(store, &juliet(), 8);
    assert_message_count(store, &nurse(), 1);
    assert_eq!(store.delete_ids(&juliet(), &[]).expect("delete"), 0);
    let rest: Vec<String> = all_ids(store, &juliet());
    assert_eq!(store.delete_ids(&juliet(), &rest).expect("delete"), 8);
    assert_message_count(store, &juliet(), 0);
    assert_eq!(store.owners(HOST).expect("owners"), vec!["nurse"]);
}

// ---------------------------------------------------------------------------------
// Compression (issue 18). What a client and the operator's tools see must not depend
// on how a message is stored; these compare every message read back with what went in.

/// Message `i`: chat-like stanzas of varying length and content, some with
/// characters that need escaping or several UTF-8 bytes.
fn chatty(i: usize) -> ArchivedMessage {
    const WORDS: [&str; 12] = [
        "balcony", "nurse", "tomorrow", "déjà", "&amp;", "rose", "😀", "'quoted'", "Mercutio",
        "<b>", "name", "light",
    ];
    let body: Vec<&str> = (0..(i * 7) % 40 + 1)
        .map(|k| WORDS[(i + k * k) % 12])
        .collect();
    let with = if i.is_multiple_of(3) {
        "romeo@montague.lit/orchard"
    } else {
        "nurse@capulet.lit"
    };
    let mut m = msg(&format!("c{i:05}"), T0 + i as Micros * 1_000_000, with);
    m.xml = format!(
        "<message xmlns='jabber:client' type='chat' id='{i:x}-{}' to='juliet@capulet.lit' \
         from='{with}'><body>{}</body><request xmlns='urn:xmpp:receipts'/>\
         <markable xmlns='urn:xmpp:chat-markers:0'/></message>",
        i * 7919 % 10007,
        body.join(" ")
    );
    m
}

fn append_chatty(store: &mut dyn ArchiveStore, range: std::ops::Range<usize>) {
    let items: Vec<(Owner, ArchivedMessage)> = range.map(|i| (juliet(), chatty(i))).collect();
    store.append_many(&items, None).expect("append");
}

/// Every message of juliet's, read by a fresh handle in pages of 50, is `chatty(i)`
/// for `0..n` in order.
fn assert_chatty(db: &dyn ContractDb, n: usize) {
    let mut reader = db.open();
    let mut got = Vec::new();
    let mut after = Vec::new();
    loop {
        let page = reader
            .find(
                &juliet(),
                &FindRequest {
                    after: after.clone(),
                    ..req(50)
                },
            )
            .expect("find");
        let Some(last) = page.items.last() else {
            break;
        };
        after = vec![last.id.clone()];
        got.extend(page.items);
    }
    let want: Vec<ArchivedMessage> = (0..n).map(chatty).collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
}

/// Trains a dictionary on the newest messages, stores it, and rewrites the whole
/// archive with it, batch by batch; returns the rows rewritten.
fn train_and_rewrite(store: &mut dyn ArchiveStore, now: Micros) -> u64 {
    let samples = store
        .recent_stanzas(codec::TRAINING_SAMPLES)
        .expect("samples");
    let dict = codec::train(&samples).expect("train");
    store
        .add_dictionary(&dict, now, samples.len())
        .expect("add");
    rewrite_all(store)
}

fn rewrite_all(store: &mut dyn ArchiveStore) -> u64 {
    let (mut cursor, mut rewritten) = (0, 0);
    loop {
        let step = store.rewrite_batch(cursor, 64).expect("rewrite");
        rewritten += step.rewritten;
        cursor = step.cursor;
        if step.done {
            return rewritten;
        }
    }
}

fn stored_bytes(store: &mut dyn ArchiveStore) -> u64 {
    store
        .owner_stats(HOST)
        .expect("stats")
        .iter()
        .map(|s| s.bytes)
        .sum()
}

pub fn compressed_and_text_messages_mix_in_one_archive_and_read_back_unchanged(
    db: &dyn ContractDb,
) {
    let mut store = db.open();
    append_chatty(store.as_mut(), 0..200);
    store.set_compression(true);
    append_chatty(store.as_mut(), 200..400);
    for i in 400..450 {
        store.append(&juliet(), &chatty(i), None).expect("append");
    }
    store.set_compression(false);
    append_chatty(store.as_mut(), 450..500);
    assert_chatty(db, 500);
    // Filters, ids and counts see compressed rows like any other.
    let found = store
        .find(
            &juliet(),
            &FindRequest {
                ids: Some(vec!["c00003".into(), "c00300".into()]),
                with: with("romeo@montague.lit", None),
                total: true,
                ..req(10)
            },
        )
        .expect("find");
    assert_eq!(found.items, vec![chatty(3), chatty(300)]);
    assert_eq!(found.total, Some(2));
}

pub fn a_dictionary_change_mid_archive_leaves_every_message_readable(db: &dyn ContractDb) {
    let mut store = db.open();
    store.set_compression(true);
    append_chatty(store.as_mut(), 0..600);
    assert!(train_and_rewrite(store.as_mut(), T0) > 0);
    assert!(store.newest_dictionary().expect("newest").is_some());
    append_chatty(store.as_mut(), 600..700);
    // Another dictionary, trained on other text: rows of both stay readable.
    let other: Vec<String> = (0..600)
        .map(|i| {
            format!(
                "<presence id='{i}'><status>away {}</status></presence>",
                i * 31
            )
        })
        .collect();
    let dict = codec::train(&other).expect("train");
    let second = store
        .add_dictionary(&dict, T0 + 1, other.len())
        .expect("add");
    assert_eq!(
        store
            .newest_dictionary()
            .expect("newest")
            .map(|d| d.version),
        Some(second)
    );
    // The writer picks the new dictionary up (a backend may check only now and then:
    // turning compression on again makes it look at once).
    store.set_compression(true);
    append_chatty(store.as_mut(), 700..800);
    assert_chatty(db, 800);
    // Rows of an older dictionary are not rewritten again.
    assert_eq!(rewrite_all(store.as_mut()), 0);
    // The provider's item writes store and read back through the same codec.
    let mut replacement = chatty(5);
    replacement.xml = chatty(6).xml;
    store.replace(&juliet(), &replacement).expect("replace");
    let tombstone = "<message xmlns='jabber:client' id='x'><retracted xmlns='urn:xmpp:message-retract:1'/><body>This message was retracted, it said nothing of the balcony</body></message>";
    let change = ItemChange {
        xml: Some(tombstone.into()),
        ..ItemChange::default()
    };
    assert!(store.update(&juliet(), "c00010", &change).expect("update"));
    let mut reader = db.open();
    let page = reader
        .find(
            &juliet(),
            &FindRequest {
                ids: Some(vec!["c00005".into(), "c00010".into()]),
                ..req(10)
            },
        )
        .expect("find");
    let xmls: Vec<&str> = page.items.iter().map(|m| m.xml.as_str()).collect();
    assert_eq!(xmls, vec![chatty(6).xml.as_str(), tombstone]);
}

pub fn the_rewrite_compresses_older_messages_without_changing_any(db: &dyn ContractDb) {
    let mut store = db.open();
    append_chatty(store.as_mut(), 0..800);
    let before = stored_bytes(store.as_mut());
    // Another connection compresses (as the live module's compaction thread does).
    let mut compactor = db.open();
    compactor.set_compression(true);
    assert_eq!(train_and_rewrite(compactor.as_mut(), T0), 800);
    let after = stored_bytes(store.as_mut());
    assert!(after * 2 < before, "{before} bytes before, {after} after");
    assert_chatty(db, 800);
    // A second pass finds nothing left to do.
    assert_eq!(rewrite_all(compactor.as_mut()), 0);
    // What the first connection writes meanwhile (as text) is taken by the next pass.
    append_chatty(store.as_mut(), 800..850);
    assert_eq!(rewrite_all(compactor.as_mut()), 50);
    assert_chatty(db, 850);
}
