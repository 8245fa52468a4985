//! Property tests of stored-stanza compression (issue 18): every stanza shape goes
//! through compression and back unchanged, alone (`store::codec`) and through the
//! store with compressed and text rows mixed, before and after a dictionary exists,
//! and through the background rewrite.
//!
//! Run longer: `PROPTEST_CASES=10000 cargo test --release --no-default-features
//! --features vendored --test proptest_compression`.

mod common;

#[path = "../bench/src/corpus.rs"]
#[allow(dead_code)]
mod corpus;

use std::sync::OnceLock;

use common::{cases, element_tree, xml_string};
use mam_native::stanza::to_xml;
use mam_native::store::codec::{self, Codec, Stored};
use mam_native::store::sqlite::SqliteStore;
use mam_native::store::{ArchiveStore, ArchivedMessage, FindRequest, Owner};
use proptest::prelude::*;

const T0: i64 = 1_767_225_600_000_000;

/// A dictionary trained on the bench's corpus (the shapes a real archive holds).
fn dictionary() -> &'static Vec<u8> {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        let samples: Vec<String> = corpus::Corpus::new(7, "example.com", 20, T0)
            .take(2000)
            .iter()
            .map(|m| m.xml())
            .collect();
        codec::train(&samples).expect("train")
    })
}

/// A stanza of any shape: a generated element tree, a corpus message (chat, OMEMO,
/// markers, links, large), or any text at all (the column is opaque to the store).
fn any_stanza() -> impl Strategy<Value = String> {
    prop_oneof![
        element_tree(4).prop_map(|el| to_xml(&el)),
        any::<u64>().prop_map(|seed| corpus::Corpus::new(seed, "example.com", 3, T0)
            .next_msg()
            .xml()),
        xml_string(3000),
        ".{0,64}",
    ]
}

fn round_trip(codec: &mut Codec, reader: &mut Codec, xml: &str) -> Result<(), TestCaseError> {
    match codec
        .encode(xml)
        .map_err(|e| TestCaseError::fail(e.to_string()))?
    {
        Stored::Text(t) => prop_assert_eq!(t, xml),
        Stored::Packed(packed) => {
            prop_assert!(packed.len() < xml.len());
            let back = reader
                .unpack(&packed)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, xml);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn every_stanza_shape_round_trips_through_the_codec(xml in any_stanza()) {
        let mut plain = Codec::new();
        plain.set_compress(true);
        round_trip(&mut plain, &mut Codec::new(), &xml)?;
        let mut with_dict = Codec::new();
        with_dict.set_compress(true);
        with_dict.add_dictionary(3, dictionary().clone());
        let mut reader = Codec::new();
        reader.add_dictionary(3, dictionary().clone());
        round_trip(&mut with_dict, &mut reader, &xml)?;
    }

    #[test]
    fn a_damaged_compressed_stanza_is_an_error_never_a_panic(
        xml in any_stanza(),
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4),
        cut in any::<usize>(),
    ) {
        let mut codec = Codec::new();
        codec.set_compress(true);
        codec.add_dictionary(1, dictionary().clone());
        if let Ok(Stored::Packed(mut packed)) = codec.encode(&xml) {
            for (at, bits) in flips {
                let i = at % packed.len();
                packed[i] ^= bits;
            }
            let _ = codec.unpack(&packed);
            let _ = codec.unpack(&packed[..cut % packed.len()]);
        }
    }

    #[test]
    fn a_mixed_archive_reads_back_every_message_unchanged(
        stanzas in proptest::collection::vec((any_stanza(), any::<bool>()), 1..40),
        dictionary_after in any::<usize>(),
    ) {
        let owner = Owner::new("capulet.lit", "juliet");
        let mut store = SqliteStore::open_in_memory().expect("open");
        let mut want = Vec::new();
        let switch_at = dictionary_after % stanzas.len();
        for (i, (xml, compressed)) in stanzas.into_iter().enumerate() {
            if i == switch_at {
                store.add_dictionary(dictionary(), T0, 2000).expect("add");
            }
            store.set_compression(compressed);
            let msg = ArchivedMessage {
                id: format!("m{i:04}"),
                when: T0 + i as i64,
                with_bare: "romeo@montague.lit".into(),
                with_resource: None,
                xml,
            };
            store.append(&owner, &msg, None).expect("append");
            want.push(msg);
        }
        let all = FindRequest { limit: 1000, ..FindRequest::default() };
        prop_assert_eq!(&store.find(&owner, &all).expect("find").items, &want);
        // The background rewrite compresses what it can and changes no message.
        store.set_compression(true);
        let mut cursor = 0;
        loop {
            let step = store.rewrite_batch(cursor, 7).expect("rewrite");
            cursor = step.cursor;
            if step.done {
                break;
            }
        }
        prop_assert_eq!(&store.find(&owner, &all).expect("find").items, &want);
    }
}
