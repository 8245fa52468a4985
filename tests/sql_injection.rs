//! Isolation and SQL injection (issue 5, item 4): client-controlled strings — user
//! names, `with` JIDs, archive ids, prefs JIDs — reach SQLite only as bound
//! parameters, so hostile text is data: it matches only itself, never another
//! owner's rows, and never changes a statement.

use mam_native::error::MamError;
use mam_native::policy::{DefaultPolicy, Prefs};
use mam_native::store::sqlite::SqliteStore;
use mam_native::store::{ArchiveStore, ArchivedMessage, FindRequest, Owner, WithFilter};

const HOST: &str = "capulet.lit";

/// Strings that break naive SQL (quotes, comments, statement separators, LIKE
/// wildcards, NUL, JSON specials for the `ids` array, unicode).
const HOSTILE: &[&str] = &[
    "'",
    "\"",
    "''",
    "\"; DROP TABLE archive; --",
    "'; DROP TABLE archive; --",
    "' OR '1'='1",
    "\" OR 1=1 --",
    "x') OR ('1'='1",
    "%",
    "_",
    "%%",
    "*",
    "\0",
    "a\0b",
    "\\",
    "\\\"",
    "\"]",
    "[\"x\"]",
    "?",
    "?1",
    ":name",
    "$1",
    ");",
    "\u{202E}",
    "😀",
    "",
];

fn msg(id: &str, when: i64, with: &str) -> ArchivedMessage {
    ArchivedMessage {
        id: id.to_owned(),
        when,
        with_bare: with.to_owned(),
        with_resource: Some(with.to_owned()),
        xml: format!(
            "<message xmlns='jabber:client'><body>{}</body></message>",
            when
        ),
    }
}

fn req() -> FindRequest {
    FindRequest {
        limit: 1000,
        total: true,
        ..FindRequest::default()
    }
}

/// A store where the innocent owner "juliet" has two messages, and every hostile
/// string is also a user with one message whose id and `with` are that string.
fn store() -> SqliteStore {
    let mut s = SqliteStore::open_in_memory().unwrap();
    let juliet = Owner::new(HOST, "juliet");
    s.append(&juliet, &msg("j1", 1, "romeo@montague.lit"), None)
        .unwrap();
    s.append(&juliet, &msg("j2", 2, "nurse@capulet.lit"), None)
        .unwrap();
    for (i, h) in HOSTILE.iter().enumerate() {
        let owner = Owner::new(HOST, h);
        s.append(&owner, &msg(h, 10 + i as i64, h), None).unwrap();
    }
    s
}

fn ids(page: &mam_native::store::Page) -> Vec<&str> {
    page.items.iter().map(|m| m.id.as_str()).collect()
}

#[test]
fn hostile_user_names_see_only_their_own_message() {
    let mut s = store();
    for h in HOSTILE {
        let page = s.find(&Owner::new(HOST, h), &req()).unwrap();
        assert_eq!(ids(&page), [*h], "user {h:?}");
        assert_eq!(page.total, Some(1), "user {h:?}");
        let bounds = s.bounds(&Owner::new(HOST, h)).unwrap().unwrap();
        assert_eq!(bounds.first.id, *h);
    }
    // The innocent owner is untouched and sees none of them.
    let page = s.find(&Owner::new(HOST, "juliet"), &req()).unwrap();
    assert_eq!(ids(&page), ["j1", "j2"]);
    assert_eq!(page.total, Some(2));
}

#[test]
fn hostile_with_filters_match_only_that_exact_string() {
    let mut s = store();
    for h in HOSTILE {
        for resource in [None, Some(h.to_string())] {
            let r = FindRequest {
                with: Some(WithFilter {
                    bare: h.to_string(),
                    resource: resource.clone(),
                }),
                ..req()
            };
            let page = s.find(&Owner::new(HOST, "juliet"), &r).unwrap();
            assert!(
                page.items.is_empty(),
                "with {h:?} matched juliet's messages"
            );
            assert_eq!(page.total, Some(0));
            let page = s.find(&Owner::new(HOST, h), &r).unwrap();
            assert_eq!(ids(&page), [*h], "with {h:?} / {resource:?}");
        }
    }
}

#[test]
fn hostile_ids_are_data_in_the_ids_filter() {
    let mut s = store();
    let all: Vec<String> = HOSTILE.iter().map(|h| h.to_string()).collect();
    // In juliet's archive: none of them, and nothing of hers either.
    let r = FindRequest {
        ids: Some(all.clone()),
        ..req()
    };
    let page = s.find(&Owner::new(HOST, "juliet"), &r).unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.total, Some(0));
    // In each hostile owner's archive: exactly their own.
    for h in HOSTILE {
        let page = s.find(&Owner::new(HOST, h), &r).unwrap();
        assert_eq!(ids(&page), [*h], "ids in {h:?}'s archive");
    }
    // Mixed with a real id, only the real one matches.
    let mut mixed = all;
    mixed.push("j2".into());
    let r = FindRequest {
        ids: Some(mixed),
        ..req()
    };
    let page = s.find(&Owner::new(HOST, "juliet"), &r).unwrap();
    assert_eq!(ids(&page), ["j2"]);
}

#[test]
fn hostile_and_foreign_ids_as_paging_bounds_are_item_not_found() {
    let mut s = store();
    let juliet = Owner::new(HOST, "juliet");
    for h in HOSTILE {
        for (after, before) in [(vec![h.to_string()], vec![]), (vec![], vec![h.to_string()])] {
            let r = FindRequest {
                after,
                before,
                ..req()
            };
            match s.find(&juliet, &r) {
                Err(MamError::ItemNotFound(_)) => {}
                other => panic!("{h:?} as a bound in juliet's archive: {other:?}"),
            }
        }
    }
    // Juliet's own id is not a bound in another owner's archive either.
    let r = FindRequest {
        after: vec!["j1".into()],
        ..req()
    };
    for h in HOSTILE {
        assert!(matches!(
            s.find(&Owner::new(HOST, h), &r),
            Err(MamError::ItemNotFound(_))
        ));
    }
}

#[test]
fn hostile_prefs_are_stored_and_read_back_as_data_per_owner() {
    let mut s = store();
    for h in HOSTILE {
        let mut p = Prefs::with_default(DefaultPolicy::Roster);
        p.always.insert(format!("always{h}"));
        p.never.insert(h.to_string());
        s.set_prefs(&Owner::new(HOST, h), &p).unwrap();
    }
    assert_eq!(s.get_prefs(&Owner::new(HOST, "juliet")).unwrap(), None);
    for h in HOSTILE {
        let p = s.get_prefs(&Owner::new(HOST, h)).unwrap().unwrap();
        assert_eq!(p.default, DefaultPolicy::Roster);
        assert_eq!(p.never.iter().collect::<Vec<_>>(), [h], "prefs of {h:?}");
        assert_eq!(p.always.iter().collect::<Vec<_>>(), [&format!("always{h}")]);
    }
}

#[test]
fn deleting_a_hostile_user_deletes_only_that_user() {
    let mut s = store();
    for h in HOSTILE {
        assert_eq!(s.delete_user(&Owner::new(HOST, h)).unwrap(), 1, "{h:?}");
    }
    let page = s.find(&Owner::new(HOST, "juliet"), &req()).unwrap();
    assert_eq!(ids(&page), ["j1", "j2"]);
}

#[test]
fn a_hostile_host_is_its_own_namespace() {
    let mut s = store();
    for h in HOSTILE {
        let page = s.find(&Owner::new(h, "juliet"), &req()).unwrap();
        assert!(page.items.is_empty(), "host {h:?}");
        assert_eq!(s.expire_batch(h, i64::MAX, 1000).unwrap(), 0, "host {h:?}");
    }
    let page = s.find(&Owner::new(HOST, "juliet"), &req()).unwrap();
    assert_eq!(page.total, Some(2));
}

// --------------------------------------------------------------------------------
// Source check: the store builds SQL only from constants.
// --------------------------------------------------------------------------------

fn store_sources() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
    let mut out = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            // Test-only files from their first line (their parent declares them
            // `#[cfg(test)]`, so they hold no `#[cfg(test)]` of their own).
            let test_only = match name.as_str() {
                "contract.rs" => Some((
                    root.join("mod.rs"),
                    "#[cfg(test)]\npub(crate) mod contract;",
                )),
                "testdb.rs" => Some((root.join("postgres.rs"), "#[cfg(test)]\npub mod testdb;")),
                _ => None,
            };
            if let Some((parent, declaration)) = test_only {
                let module = std::fs::read_to_string(parent).unwrap();
                assert!(module.contains(declaration), "{name} must stay test-only");
                continue;
            }
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                // Only the code, not its unit tests (which build fixtures with format!).
                let code = match text.find("#[cfg(test)]\nmod tests") {
                    Some(i) => text[..i].to_owned(),
                    None => text,
                };
                let relative = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((relative, code));
            }
        }
    }
    out.sort();
    for expected in [
        "sqlite.rs",
        "postgres.rs",
        "sqlite/admin.rs",
        "postgres/schema.rs",
    ] {
        assert!(
            out.iter().any(|(f, _)| f == expected),
            "store source {expected} not found"
        );
    }
    out
}

/// Every `format!` in the store's code, with the line it is on: each must be an
/// error message or a JSON escape, never statement text.
#[test]
fn the_store_formats_no_sql() {
    const ALLOWED: &[&str] = &[
        // JSON escape of a control character inside the bound `ids` parameter.
        r#"out.push_str(&format!("\\u{:04x}", u32::from(c)))"#,
        // Error messages.
        "MamError::ItemNotFound(format!(",
        "MamError::Corrupt(format!(",
        "MamError::Config(format!(",
        "MamError::Duplicate(format!(",
        "tls_error(format!(",
        // A connection option (startup packet), from a numeric constant.
        r#".options(&format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"))"#,
    ];
    let mut unexpected = Vec::new();
    for (file, code) in store_sources() {
        for (n, line) in code.lines().enumerate() {
            if line.contains("format!") && !ALLOWED.iter().any(|a| line.contains(a)) {
                unexpected.push(format!("{file}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        unexpected.is_empty(),
        "format! in store code:\n{}",
        unexpected.join("\n")
    );
}

/// Every statement is prepared or executed from a named constant or from the `Sql`
/// builder, whose text only grows by `&'static str` fragments.
#[test]
fn every_statement_comes_from_a_constant_or_the_fragment_builder() {
    const CALLS: &[&str] = &[
        "prepare_cached(",
        "prepare(",
        "execute_batch(",
        "batch_execute(",
        ".execute(\"",
    ];
    let mut unexpected = Vec::new();
    for (file, code) in store_sources() {
        for (n, line) in code.lines().enumerate() {
            for call in CALLS {
                let Some(i) = line.find(call) else { continue };
                // The argument starts after the call's parenthesis (a quote in the
                // pattern belongs to the argument).
                let start = i + call.len() - usize::from(call.ends_with('"'));
                let arg = line[start..].trim_start_matches('&');
                let from_constant = |arg: &str| {
                    arg.starts_with(|c: char| c.is_ascii_uppercase()) // CONSTANT
                        || arg.starts_with("sql.text")
                        || arg.starts_with("sql)") // a constant picked from a closed list
                };
                let ok = from_constant(arg)
                    || match arg.strip_prefix('"').and_then(|rest| rest.split_once('"')) {
                        // PostgreSQL's wrappers take (context, statement, params): the
                        // literal is the context when a statement follows it.
                        Some((_, after)) => match after.strip_prefix(", ") {
                            Some(second) if !second.starts_with("&[") => {
                                from_constant(second.trim_start_matches('&'))
                            }
                            _ => true, // a literal statement (PRAGMAs, fixed SQL)
                        },
                        None => false,
                    };
                if !ok {
                    unexpected.push(format!("{file}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        unexpected.is_empty(),
        "statements from unexpected text:\n{}",
        unexpected.join("\n")
    );
    let sqlite = store_sources()
        .into_iter()
        .find(|(f, _)| f == "sqlite.rs")
        .unwrap()
        .1;
    assert!(sqlite.contains("fn new(head: &'static str) -> Self"));
    assert!(sqlite.contains("fn push(&mut self, fragment: &'static str,"));
    assert_eq!(
        sqlite.matches("text.push_str(").count(),
        1,
        "Sql text grows only in push()"
    );
    let postgres = store_sources()
        .into_iter()
        .find(|(f, _)| f == "postgres.rs")
        .unwrap()
        .1;
    assert!(postgres.contains("fn new(head: &'static str) -> Self"));
    assert!(postgres.contains("before: &'static str,\n        value: impl ToSql"));
    assert!(postgres.contains("after: &'static str,"));
    assert!(postgres.contains("fn push(&mut self, fragment: &'static str)"));
    // push(): a constant fragment; bind(): the fragment before, the placeholder's
    // number, the fragment after.
    assert_eq!(
        postgres.matches("self.text.push_str(").count(),
        4,
        "Sql text grows only in push() and bind()"
    );
}
