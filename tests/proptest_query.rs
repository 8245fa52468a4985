//! Property tests of the query path a client drives: `query::parse_query`,
//! `Query::plan` and `query::answer`. Whatever the `<query>` holds, the client gets a
//! plan within the server's limits or an XEP-0313 error (never a panic, never
//! `internal-server-error`), and a page never has more items than it may.
//!
//! Run longer: `PROPTEST_CASES=100000 cargo test --release --no-default-features
//! --features vendored --test proptest_query`.

mod common;

use common::{cases, element_tree, xml_string};
use mam_native::config::{Config, RawValue};
use mam_native::ns;
use mam_native::query::{answer, parse_query, Query, MAX_IDS};
use mam_native::stanza::{parse_xml, Element};
use mam_native::store::{ArchivedMessage, Page};
use proptest::prelude::*;

/// A stand-in for Prosody's `jid.prep`: refuses what it plainly must (empty parts,
/// spaces, two `@`, over-long parts), lower-cases the rest.
fn prep(s: &str) -> Option<String> {
    let (bare, resource) = match s.split_once('/') {
        Some((b, r)) => (b, Some(r)),
        None => (s, None),
    };
    let (node, domain) = match bare.split_once('@') {
        Some((n, d)) => (Some(n), d),
        None => (None, bare),
    };
    let bad = |p: &str| p.is_empty() || p.len() > 1023 || p.contains([' ', '@', '"', '\u{0}']);
    if bad(domain) || node.is_some_and(bad) || resource.is_some_and(|r| r.is_empty()) {
        return None;
    }
    Some(s.to_lowercase())
}

/// Values worth putting in a field: good and bad dates, JIDs, ids, numbers, garbage.
fn field_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            " ",
            "2010-06-07T00:00:00Z",
            "2010-06-07T00:00:00.123456+02:00",
            "2010-13-45T00:00:00Z",
            "2010-06-07",
            "yesterday",
            "-1",
            "0",
            "99999999999999999999",
            "juliet@capulet.lit",
            "Juliet@Capulet.lit/balcony",
            "@@",
            "a b@c",
            "capulet.lit",
            "юлия@капулет.lit",
            "urn:xmpp:mam:2",
            "urn:xmpp:mam:1",
            "'; DROP TABLE archive; --",
            "%",
            "_",
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "-9999-01-01T00:00:00Z",
        ])
        .prop_map(str::to_owned),
        xml_string(20),
    ]
}

fn field_var() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        8 => prop::sample::select(vec![
            "FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids",
        ])
        .prop_map(|v| Some(v.to_owned())),
        1 => "[a-z-]{1,10}".prop_map(Some),
        1 => Just(None),
    ]
}

fn field() -> impl Strategy<Value = Element> {
    (
        field_var(),
        prop::collection::vec(field_value(), 0..4),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(var, values, foreign_ns)| {
            let mut f = Element::new("field");
            if let Some(var) = var {
                f.set_attr("var", &var);
            }
            for v in values {
                let mut value = Element::new("value").with_text(&v);
                if foreign_ns {
                    value.set_attr("xmlns", "urn:not-data-forms");
                }
                f.push(value);
            }
            f
        })
}

fn form() -> impl Strategy<Value = Element> {
    (
        prop::bool::weighted(0.8),
        prop::collection::vec(field(), 0..6),
    )
        .prop_map(|(with_form_type, fields)| {
            let mut x = Element::with_ns("x", ns::DATA_FORMS).with_attr("type", "submit");
            if with_form_type {
                x.push(
                    Element::new("field")
                        .with_attr("var", "FORM_TYPE")
                        .with_child(Element::new("value").with_text(ns::MAM)),
                );
            }
            for f in fields {
                x.push(f);
            }
            x
        })
}

fn rsm_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "0",
            "1",
            "5",
            "50",
            "51",
            "-1",
            "abc",
            " 7 ",
            "+3",
            "1e3",
            "0x10",
            "99999999999999999999",
            "18446744073709551616",
            "٣",
            "１０",
        ])
        .prop_map(str::to_owned),
        "[0-9]{1,30}",
        xml_string(10),
    ]
}

fn rsm_set() -> impl Strategy<Value = Element> {
    prop::collection::vec(
        (
            prop::sample::select(vec!["max", "after", "before", "index", "first", "junk"]),
            prop::option::of(rsm_text()),
        ),
        0..5,
    )
    .prop_map(|children| {
        let mut set = Element::with_ns("set", ns::RSM);
        for (name, text) in children {
            let mut c = Element::new(name);
            if let Some(t) = text {
                c.push_text(&t);
            }
            set.push(c);
        }
        set
    })
}

/// `<query>` elements shaped like real ones, with every part a client controls varied:
/// several forms, several `<set>`s, unknown children, odd query ids.
fn query_element() -> impl Strategy<Value = Element> {
    (
        prop::option::of(xml_string(16)),
        prop::collection::vec(
            prop_oneof![
                4 => form(),
                3 => rsm_set(),
                1 => Just(Element::with_ns("flip-page", ns::MAM)),
                1 => element_tree(3),
            ],
            0..4,
        ),
    )
        .prop_map(|(queryid, children)| {
            let mut q = Element::with_ns("query", ns::MAM);
            if let Some(id) = queryid {
                q.set_attr("queryid", &id);
            }
            for c in children {
                q.push(c);
            }
            q
        })
}

fn config(max_results: u32) -> Config {
    let max = RawValue::Number(f64::from(max_results));
    Config::from_options("capulet.lit", "/tmp", &move |name: &str| {
        (name == "max_archive_query_results").then(|| max.clone())
    })
    .expect("a valid max_archive_query_results")
}

fn message(i: usize) -> ArchivedMessage {
    ArchivedMessage {
        id: format!("id{i}"),
        when: i as i64,
        with_bare: "romeo@montague.lit".into(),
        with_resource: None,
        xml: "<message xmlns='jabber:client'><body>x</body></message>".into(),
    }
}

/// Checks the plan and the answer to a store page for one parsed query.
fn check_plan_and_answer(
    q: &Query,
    max_results: u32,
    returned: usize,
    total: Option<u64>,
) -> Result<(), TestCaseError> {
    let cfg = config(max_results);
    let plan = q.plan(&cfg);
    prop_assert!(plan.page_size <= cfg.max_results);
    prop_assert!(plan.find.limit <= cfg.max_results + 1);
    prop_assert_eq!(plan.find.limit == 0, plan.page_size == 0);
    if let Some(ids) = &plan.find.ids {
        prop_assert!(ids.len() <= MAX_IDS);
    }
    // The store never returns more than the limit.
    let items: Vec<ArchivedMessage> = (0..returned.min(plan.find.limit)).map(message).collect();
    let n = items.len();
    let a = answer(&plan, Page { items, total });
    prop_assert!(a.items.len() <= plan.page_size);
    prop_assert_eq!(a.items.len(), n.min(plan.page_size));
    let set = a.fin.get_child("set", Some(ns::RSM));
    prop_assert!(set.is_some());
    let complete = a.fin.attr("complete") == Some("true");
    if plan.page_size > 0 && n > plan.page_size {
        prop_assert!(!complete, "a page cut short is not complete");
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn any_query_parses_or_gets_a_client_error_and_plans_within_limits(
        query in query_element(),
        max_results in 1u32..200,
        returned in 0usize..300,
        total in prop::option::of(0u64..1_000_000),
    ) {
        match parse_query(&query, &prep) {
            Ok(q) => check_plan_and_answer(&q, max_results, returned, total)?,
            Err(e) => {
                let x = e.to_xmpp();
                prop_assert!(
                    ["bad-request", "feature-not-implemented", "policy-violation"]
                        .contains(&x.condition),
                    "{:?} for {:?}", x, query
                );
                prop_assert!(x.text.is_some());
            }
        }
    }

    #[test]
    fn any_element_tree_as_a_query_never_panics(tree in element_tree(5)) {
        let _ = parse_query(&tree, &prep);
        let mut as_query = tree;
        as_query.name = "query".into();
        as_query.set_attr("xmlns", ns::MAM);
        if let Ok(q) = parse_query(&as_query, &prep) {
            check_plan_and_answer(&q, 50, 60, None)?;
        }
    }

    #[test]
    fn any_rsm_max_is_capped_or_bad_request(text in rsm_text(), max_results in 1u32..500) {
        let xml = format!(
            "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><max>{}</max></set></query>",
            mam_native::stanza::to_xml(&Element::new("t").with_text(&text))
                .trim_start_matches("<t>").trim_end_matches("</t>").trim_end_matches("<t/>"),
        );
        let query = parse_xml(&xml).map_err(|e| TestCaseError::fail(e.to_string()))?;
        match parse_query(&query, &prep) {
            Ok(q) => {
                let digits = text.trim();
                prop_assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                    || digits.starts_with('+'), "accepted max {:?}", text);
                let plan = q.plan(&config(max_results));
                prop_assert!(plan.page_size <= max_results as usize);
            }
            Err(e) => prop_assert_eq!(e.to_xmpp().condition, "bad-request"),
        }
    }

    #[test]
    fn ids_up_to_the_limit_are_accepted_and_beyond_are_policy_violation(n in 0usize..(MAX_IDS + 50)) {
        let values: String = (0..n).map(|i| format!("<value>{i}</value>")).collect();
        let xml = format!(
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field><field var='ids'>{values}</field></x></query>"
        );
        let result = parse_query(&parse_xml(&xml).unwrap(), &prep);
        if n <= MAX_IDS {
            prop_assert_eq!(result.unwrap().ids.map(|v| v.len()), Some(n));
        } else {
            prop_assert_eq!(result.unwrap_err().to_xmpp().condition, "policy-violation");
        }
    }
}

#[test]
fn a_hundred_thousand_ids_are_refused_quickly() {
    let values: String = (0..100_000)
        .map(|i| format!("<value>{i}</value>"))
        .collect();
    let xml = format!(
        "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field><field var='ids'>{values}</field></x></query>"
    );
    let started = std::time::Instant::now();
    let err = parse_query(&parse_xml(&xml).unwrap(), &prep).unwrap_err();
    assert_eq!(err.to_xmpp().condition, "policy-violation");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn a_thousand_duplicated_fields_are_one_bad_request() {
    let fields = "<field var='with'><value>a@b.c</value></field>".repeat(1000);
    let xml = format!(
        "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field>{fields}</x></query>"
    );
    let err = parse_query(&parse_xml(&xml).unwrap(), &prep).unwrap_err();
    assert_eq!(err.to_string(), "Duplicate field 'with'");
}
