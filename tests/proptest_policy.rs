//! Property tests of `policy::prefs_from_element`: any `<prefs>` a client sends gives
//! preferences or a `bad-request`, never a panic; every stored JID went through
//! `jid_prep`, and `never` wins over `always`.
//!
//! Run longer: `PROPTEST_CASES=100000 cargo test --release --no-default-features
//! --features vendored --test proptest_policy`.

mod common;

use common::{cases, element_tree, xml_string};
use mam_native::ns;
use mam_native::policy::{prefs_from_element, prefs_to_element, DefaultPolicy};
use mam_native::stanza::Element;
use proptest::prelude::*;

fn prep(s: &str) -> Option<String> {
    if s.is_empty() || s.contains([' ', '@', '<']) && !s.contains('.') || s.len() > 3071 {
        None
    } else {
        Some(s.to_lowercase())
    }
}

fn jid() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "romeo@montague.lit",
            "Romeo@Montague.lit",
            "capulet.lit",
            "",
            " ",
            "@@",
            "a b",
            "юлия@капулет.lit",
            "'; DROP TABLE archive_prefs; --",
            "%",
            "_",
        ])
        .prop_map(str::to_owned),
        xml_string(16),
    ]
}

fn prefs_element() -> impl Strategy<Value = Element> {
    (
        prop::option::of(prop::sample::select(vec![
            "always",
            "never",
            "roster",
            "",
            "Always",
            "sometimes",
        ])),
        prop::collection::vec(
            (
                prop::sample::select(vec!["always", "never", "other"]),
                prop::collection::vec(jid(), 0..5),
            ),
            0..4,
        ),
        prop::option::of(element_tree(2)),
    )
        .prop_map(|(default, lists, extra)| {
            let mut p = Element::with_ns("prefs", ns::MAM);
            if let Some(d) = default {
                p.set_attr("default", d);
            }
            for (name, jids) in lists {
                let mut list = Element::new(name);
                for j in jids {
                    list.push(Element::new("jid").with_text(&j));
                }
                p.push(list);
            }
            if let Some(e) = extra {
                p.push(e);
            }
            p
        })
}

proptest! {
    #![proptest_config(cases(2048))]

    #[test]
    fn any_prefs_element_gives_prefs_or_bad_request(
        el in prefs_element(),
        current in prop::sample::select(vec![
            DefaultPolicy::Always, DefaultPolicy::Never, DefaultPolicy::Roster,
        ]),
    ) {
        match prefs_from_element(&el, current, &prep) {
            Ok(p) => {
                prop_assert!(p.always.is_disjoint(&p.never));
                for j in p.always.iter().chain(&p.never) {
                    prop_assert_eq!(Some(j.clone()), prep(j), "stored JID not prepped");
                }
                // What we send back parses to the same preferences.
                let again = prefs_from_element(&prefs_to_element(&p), current, &prep);
                prop_assert_eq!(again.ok(), Some(p));
            }
            Err(e) => prop_assert_eq!(e.to_xmpp().condition, "bad-request"),
        }
    }

    #[test]
    fn any_element_tree_as_prefs_never_panics(tree in element_tree(5)) {
        let _ = prefs_from_element(&tree, DefaultPolicy::Always, &prep);
    }
}
