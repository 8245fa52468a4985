//! How a stanza is kept in the `stanza` column: as its text, or compressed (issue 18).
//!
//! Stanzas are small (100 to 2,000 bytes), so zstd alone gains little on one row
//! (1.56× on the bench's mixed corpus); with a dictionary trained on the archive's own
//! messages the same rows shrink 2.7× and compress and decompress faster (measured in
//! `tests/storage_measure.rs`, figures in `docs/storage-size.md`). So a compressed row
//! names the dictionary it was compressed with, and dictionaries live in the database,
//! numbered from 1 and never changed once written: any row stays readable whatever
//! dictionary is current, on any connection, after any restart.
//!
//! A compressed value is a byte string (SQLite: a BLOB in the TEXT column, told apart
//! by its storage class; PostgreSQL: the `stanza_z` column):
//!
//! ```text
//! 0x01 | dictionary version (LEB128; 0 = none) | zstd frame (content size, no checksum)
//! ```
//!
//! The leading format byte leaves room for another encoding later. Uncompressed rows
//! (written before compression, with `archive_compression = false`, or by an import)
//! stay text and are read as they are.

use std::collections::HashMap;

use zstd::bulk::{Compressor, Decompressor};
use zstd::zstd_safe::CParameter;

use crate::error::{MamError, Result};

/// The one compressed format so far: a zstd frame after the dictionary version.
pub const FORMAT_ZSTD: u8 = 1;
/// zstd's level. Higher levels gain 1-2% at three to four times the CPU (measured).
pub const LEVEL: i32 = 3;
/// Size of a trained dictionary. Smaller (8-16 KiB) loses 1-2%, larger gains as little.
pub const DICTIONARY_BYTES: usize = 32 * 1024;
/// How many recent messages a dictionary is trained on: 2,000 give the same ratio as
/// 5,000 in a fifth of the time (about 0.2 s).
pub const TRAINING_SAMPLES: usize = 2000;
/// Fewer messages than this in the database: no dictionary yet (it would learn the
/// first few conversations only). Rows written meanwhile are compressed without one
/// and rewritten once it exists.
pub const MIN_TRAINING_SAMPLES: usize = 500;
/// The largest stanza a compressed value may claim to hold: a corrupt or hostile
/// header must not make a reader allocate gigabytes.
const MAX_STANZA_BYTES: u64 = 64 * 1024 * 1024;

/// What goes into the stanza column for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored<'a> {
    /// The stanza's text (compression off, or compression would not make it smaller).
    Text(&'a str),
    /// A compressed value in the format above.
    Packed(Vec<u8>),
}

impl rusqlite::ToSql for Stored<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Stored::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            Stored::Packed(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

/// One connection's compressor and decompressors. Each store connection has its own
/// (zstd contexts are not shared between threads); dictionaries are loaded from the
/// database as they appear ([`Codec::newest`] says how far this one has seen).
pub struct Codec {
    /// Whether writes compress (`archive_compression`); reads decode either way.
    compress: bool,
    /// The newest dictionary version loaded (0: none yet): what writes use.
    newest: u32,
    /// Compresses with the newest dictionary (or none); made at the first write.
    encoder: Option<Compressor<'static>>,
    /// One decompressor per dictionary version met (0: no dictionary). A context
    /// loaded with its dictionary keeps the digested tables, so each row only pays
    /// for its own frame.
    decoders: HashMap<u32, Decompressor<'static>>,
    /// Dictionaries loaded but not yet turned into a decompressor (made on first use).
    dictionaries: HashMap<u32, Vec<u8>>,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("compress", &self.compress)
            .field("newest", &self.newest)
            .finish_non_exhaustive()
    }
}

fn zstd_error(context: &'static str) -> impl FnOnce(std::io::Error) -> MamError {
    move |source| MamError::Compression { context, source }
}

impl Codec {
    /// Reads both forms, writes text until [`Codec::set_compress`] turns compression on.
    pub fn new() -> Codec {
        Codec {
            compress: false,
            newest: 0,
            encoder: None,
            decoders: HashMap::new(),
            dictionaries: HashMap::new(),
        }
    }

    pub fn set_compress(&mut self, on: bool) {
        self.compress = on;
    }

    pub fn compresses(&self) -> bool {
        self.compress
    }

    /// The newest dictionary version this codec has (0: none): a backend asks its
    /// database for versions above it.
    pub fn newest(&self) -> u32 {
        self.newest
    }

    /// Adds dictionary `version` (read from the database). A version above the newest
    /// becomes the one writes use.
    pub fn add_dictionary(&mut self, version: u32, bytes: Vec<u8>) {
        if version > self.newest {
            self.newest = version;
            self.encoder = None;
        }
        self.decoders.remove(&version);
        self.dictionaries.insert(version, bytes);
    }

    /// What to store for `xml`: compressed when compression is on and it gains.
    pub fn encode<'a>(&mut self, xml: &'a str) -> Result<Stored<'a>> {
        if !self.compress {
            return Ok(Stored::Text(xml));
        }
        Ok(match self.pack(xml)? {
            Some(packed) => Stored::Packed(packed),
            None => Stored::Text(xml),
        })
    }

    /// `xml` compressed with the newest dictionary, or `None` when that is not
    /// smaller than the text (a tiny stanza without a dictionary).
    pub fn pack(&mut self, xml: &str) -> Result<Option<Vec<u8>>> {
        let version = self.newest;
        let encoder = match &mut self.encoder {
            Some(e) => e,
            None => {
                let mut e = match self.dictionaries.get(&version) {
                    Some(dict) if version > 0 => Compressor::with_dictionary(LEVEL, dict),
                    _ => Compressor::new(LEVEL),
                }
                .map_err(zstd_error("compress: make the context"))?;
                // The row names its dictionary itself; a checksum would guard against
                // what the database's own page checks already catch.
                for p in [
                    CParameter::ChecksumFlag(false),
                    CParameter::DictIdFlag(false),
                    CParameter::ContentSizeFlag(true),
                ] {
                    e.set_parameter(p)
                        .map_err(zstd_error("compress: set a parameter"))?;
                }
                self.encoder.insert(e)
            }
        };
        let frame = encoder
            .compress(xml.as_bytes())
            .map_err(zstd_error("compress a stanza"))?;
        let mut out = Vec::with_capacity(frame.len() + 6);
        out.push(FORMAT_ZSTD);
        push_leb128(&mut out, version);
        out.extend_from_slice(&frame);
        if out.len() >= xml.len() {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// The stanza a compressed value holds. Fails with [`MamError::Corrupt`] for a
    /// value this code cannot read (unknown format, a dictionary the database does not
    /// have, a damaged frame, text that is not UTF-8).
    pub fn unpack(&mut self, value: &[u8]) -> Result<String> {
        let (version, frame) = split_header(value)?;
        let decoder = match self.decoders.entry(version) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let d = if version == 0 {
                    Decompressor::new()
                } else {
                    let dict = self.dictionaries.get(&version).ok_or_else(|| {
                        MamError::Corrupt(format!(
                            "a stored stanza names compression dictionary {version}, which the database does not have"
                        ))
                    })?;
                    Decompressor::with_dictionary(dict)
                }
                .map_err(zstd_error("decompress: make the context"))?;
                slot.insert(d)
            }
        };
        let size = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(size)) if size <= MAX_STANZA_BYTES => size as usize,
            _ => {
                return Err(MamError::Corrupt(
                    "a compressed stanza has no valid size".into(),
                ))
            }
        };
        let bytes = decoder.decompress(frame, size).map_err(|e| {
            MamError::Corrupt(format!("a compressed stanza does not decompress: {e}"))
        })?;
        String::from_utf8(bytes)
            .map_err(|_| MamError::Corrupt("a compressed stanza is not UTF-8".into()))
    }
}

/// The dictionary version a compressed value names, and its zstd frame.
pub fn split_header(value: &[u8]) -> Result<(u32, &[u8])> {
    match value.split_first() {
        Some((&FORMAT_ZSTD, rest)) => {
            let mut version: u32 = 0;
            for (i, &b) in rest.iter().enumerate().take(5) {
                version |= u32::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    return Ok((version, &rest[i + 1..]));
                }
            }
            Err(MamError::Corrupt(
                "a compressed stanza has a broken header".into(),
            ))
        }
        Some((format, _)) => Err(MamError::Corrupt(format!(
            "a stored stanza has unknown format {format}"
        ))),
        None => Err(MamError::Corrupt("a stored stanza is empty".into())),
    }
}

fn push_leb128(out: &mut Vec<u8>, mut n: u32) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A dictionary trained on `samples` (recent stanzas), at most [`DICTIONARY_BYTES`].
pub fn train(samples: &[String]) -> Result<Vec<u8>> {
    zstd::dict::from_samples(samples, DICTIONARY_BYTES).map_err(zstd_error("train a dictionary"))
}

/// How many bytes `samples` take compressed with `dict` (for judging a new
/// dictionary against the current one on the same recent messages).
pub fn compressed_size(samples: &[String], dict: &[u8]) -> Result<u64> {
    let mut c = Compressor::with_dictionary(LEVEL, dict)
        .map_err(zstd_error("compress: make the context"))?;
    let mut total = 0u64;
    for s in samples {
        total += c
            .compress(s.as_bytes())
            .map_err(zstd_error("compress a sample"))?
            .len() as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize) -> String {
        format!(
            "<message xmlns='jabber:client' type='chat' id='{i:08x}-ab' to='juliet@capulet.lit' \
             from='romeo@montague.lit/orchard'><body>message number {i} about {}</body>\
             <request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/>\
             <origin-id xmlns='urn:xmpp:sid:0' id='{i:08x}-ab'/></message>",
            [
                "the balcony",
                "the nurse",
                "Mercutio",
                "Tybalt",
                "the friar"
            ][i % 5]
        )
    }

    fn trained() -> Vec<u8> {
        let samples: Vec<String> = (0..600).map(sample).collect();
        train(&samples).expect("train")
    }

    #[test]
    fn compression_off_stores_the_text_itself() {
        let mut codec = Codec::new();
        assert_eq!(
            codec.encode("<message/>").expect("encode"),
            Stored::Text("<message/>")
        );
    }

    #[test]
    fn a_stanza_round_trips_with_and_without_a_dictionary() {
        let mut codec = Codec::new();
        codec.set_compress(true);
        let xml = sample(7);
        let Stored::Packed(plain) = codec.encode(&xml).expect("encode") else {
            panic!("not compressed")
        };
        assert_eq!(split_header(&plain).expect("header").0, 0);
        codec.add_dictionary(1, trained());
        let Stored::Packed(with_dict) = codec.encode(&xml).expect("encode") else {
            panic!("not compressed")
        };
        assert_eq!(split_header(&with_dict).expect("header").0, 1);
        assert!(
            with_dict.len() < plain.len() / 2,
            "{} vs {}",
            with_dict.len(),
            plain.len()
        );
        // Another connection: knows dictionary 1 only once it has loaded it.
        let mut reader = Codec::new();
        assert_eq!(reader.unpack(&plain).expect("unpack"), xml);
        assert!(matches!(
            reader.unpack(&with_dict),
            Err(MamError::Corrupt(_))
        ));
        reader.add_dictionary(1, trained());
        assert_eq!(reader.unpack(&with_dict).expect("unpack"), xml);
    }

    #[test]
    fn a_stanza_that_would_grow_stays_text() {
        let mut codec = Codec::new();
        codec.set_compress(true);
        assert_eq!(codec.encode("<a/>").expect("encode"), Stored::Text("<a/>"));
    }

    #[test]
    fn broken_values_are_corrupt_not_panics() {
        let mut codec = Codec::new();
        for bad in [
            &[][..],
            &[2, 0, 1, 2][..],
            &[1][..],
            &[1, 0x80, 0x80, 0x80, 0x80, 0x80][..],
            &[1, 0, 0x28, 0xb5, 0x2f, 0xfd, 0, 0][..],
            &[1, 9, 0x28, 0xb5, 0x2f, 0xfd][..],
        ] {
            assert!(
                matches!(codec.unpack(bad), Err(MamError::Corrupt(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn dictionary_versions_use_up_to_five_header_bytes() {
        for v in [0, 1, 127, 128, 300, u32::MAX] {
            let mut out = vec![FORMAT_ZSTD];
            push_leb128(&mut out, v);
            out.push(0xaa);
            assert_eq!(split_header(&out).expect("header"), (v, &[0xaa][..]));
        }
    }
}
