//! Archive ids as SQLite stores them (schema step 6): the id forms that servers
//! actually write are kept as bytes, about half their text's size, in the row and
//! in the per-owner id index; every other id is kept as the text it is.
//!
//! Why: the id is in every row and in the unique index that finds a row by id, and
//! after compression the keys, not the stanzas, were most of a row (docs/storage-size.md).
//!
//! The packed forms are canonical text forms only, so packing is a function with an
//! exact inverse: `unpack(pack(id)) == id` for every string, two different ids never
//! pack alike, and a packed id (a BLOB) never equals a text id (TEXT) in SQL. A lookup
//! packs the id it is given the same way, so it finds the row whatever form it is in.
//!
//! - `0x01` + 16 bytes: 26 characters of Crockford base32 in this module's alphabet
//!   whose value fits 128 bits (this module's own ids, [`crate::id`]);
//! - `0x02` + 16 bytes: a UUID in lower case with dashes (stock Prosody's ids);
//! - `0x03` + n bytes: lower-case hex of even length, 2 to 64 characters.
//!
//! Both functions are registered on every connection as `mam_id(text)` and
//! `mam_id_text(value)` so the SQL names the stored form in one place.

use rusqlite::functions::FunctionFlags;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const TAG_CROCKFORD: u8 = 0x01;
const TAG_UUID: u8 = 0x02;
const TAG_HEX: u8 = 0x03;
const HEX: &[u8; 16] = b"0123456789abcdef";
const MAX_HEX: usize = 64;

fn crockford_value(c: u8) -> Option<u8> {
    CROCKFORD.iter().position(|&a| a == c).map(|p| p as u8)
}

fn hex_value(c: u8) -> Option<u8> {
    HEX.iter().position(|&a| a == c).map(|p| p as u8)
}

/// Lower-case hex digits to bytes; `None` unless every pair is lower-case hex.
fn hex_bytes(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| Some((hex_value(pair[0])? << 4) | hex_value(pair[1])?))
        .collect()
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

fn pack_crockford(id: &[u8]) -> Option<Vec<u8>> {
    if id.len() != 26 {
        return None;
    }
    let mut value: u128 = 0;
    for (i, &c) in id.iter().enumerate() {
        let v = crockford_value(c)?;
        // 26 characters are 130 bits: the first may only carry the top 3 of 128.
        if i == 0 && v > 3 {
            return None;
        }
        value = (value << 5) | u128::from(v);
    }
    let mut out = Vec::with_capacity(17);
    out.push(TAG_CROCKFORD);
    out.extend_from_slice(&value.to_be_bytes());
    Some(out)
}

fn pack_uuid(id: &[u8]) -> Option<Vec<u8>> {
    if id.len() != 36 || [8, 13, 18, 23].iter().any(|&i| id[i] != b'-') {
        return None;
    }
    let digits: Vec<u8> = id.iter().copied().filter(|&c| c != b'-').collect();
    let bytes = hex_bytes(&digits)?;
    let mut out = Vec::with_capacity(17);
    out.push(TAG_UUID);
    out.extend_from_slice(&bytes);
    Some(out)
}

fn pack_hex(id: &[u8]) -> Option<Vec<u8>> {
    if id.is_empty() || id.len() > MAX_HEX {
        return None;
    }
    let bytes = hex_bytes(id)?;
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(TAG_HEX);
    out.extend_from_slice(&bytes);
    Some(out)
}

/// The stored form of `id`: bytes for the forms above, else the text itself.
pub fn pack(id: &str) -> Value {
    let b = id.as_bytes();
    match pack_crockford(b)
        .or_else(|| pack_uuid(b))
        .or_else(|| pack_hex(b))
    {
        Some(bytes) => Value::Blob(bytes),
        None => Value::Text(id.to_owned()),
    }
}

/// The id a stored value stands for; `None` for a BLOB that is no packed form
/// (a damaged row, reported as corrupt by the caller).
pub fn unpack(stored: ValueRef<'_>) -> Option<String> {
    match stored {
        ValueRef::Text(t) => String::from_utf8(t.to_vec()).ok(),
        ValueRef::Blob(b) => {
            let (&tag, bytes) = b.split_first()?;
            match tag {
                TAG_CROCKFORD => {
                    let value = u128::from_be_bytes(bytes.try_into().ok()?);
                    Some(
                        (0..26)
                            .map(|i| CROCKFORD[((value >> (5 * (25 - i))) & 31) as usize] as char)
                            .collect(),
                    )
                }
                TAG_UUID if bytes.len() == 16 => {
                    let mut out = String::with_capacity(36);
                    for (i, range) in [0..4, 4..6, 6..8, 8..10, 10..16].into_iter().enumerate() {
                        if i > 0 {
                            out.push('-');
                        }
                        push_hex(&mut out, &bytes[range]);
                    }
                    Some(out)
                }
                TAG_HEX if !bytes.is_empty() && bytes.len() * 2 <= MAX_HEX => {
                    let mut out = String::with_capacity(bytes.len() * 2);
                    push_hex(&mut out, bytes);
                    Some(out)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Registers `mam_id(text)` ([`pack`]) and `mam_id_text(value)` ([`unpack`]) on
/// `conn`. Both are deterministic; `mam_id_text` fails the statement on a BLOB that
/// is no packed id rather than inventing one.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("mam_id", 1, flags, |ctx| {
        Ok(match ctx.get_raw(0) {
            ValueRef::Text(t) => match std::str::from_utf8(t) {
                Ok(id) => pack(id),
                Err(_) => Value::Blob(t.to_vec()),
            },
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        })
    })?;
    conn.create_scalar_function("mam_id_text", 1, flags, |ctx| match ctx.get_raw(0) {
        ValueRef::Null => Ok(None),
        value => unpack(value).map(Some).ok_or_else(|| {
            rusqlite::Error::UserFunctionError("a stored archive id is damaged".into())
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(id: &str) -> Value {
        let stored = pack(id);
        let back = match &stored {
            Value::Blob(b) => unpack(ValueRef::Blob(b)),
            Value::Text(t) => unpack(ValueRef::Text(t.as_bytes())),
            _ => None,
        };
        assert_eq!(back.as_deref(), Some(id), "{id}");
        stored
    }

    fn packed_len(id: &str) -> Option<usize> {
        match round_trip(id) {
            Value::Blob(b) => Some(b.len()),
            _ => None,
        }
    }

    #[test]
    fn the_forms_servers_write_are_packed_and_come_back_exactly() {
        assert_eq!(
            packed_len(&crate::id::new_archive_id(1_700_000_000_000_000)),
            Some(17)
        );
        assert_eq!(packed_len("3ZZZZZZZZZZZZZZZZZZZZZZZZZ"), Some(17));
        assert_eq!(packed_len("00000000000000000000000000"), Some(17));
        assert_eq!(packed_len("5f0d6a34-9c1e-4b7a-8e21-0c2f9d1e7a55"), Some(17));
        assert_eq!(packed_len("647484e96ff806a816e1d543bb"), Some(14));
        assert_eq!(packed_len("ab"), Some(2));
    }

    #[test]
    fn every_other_id_stays_text_and_comes_back_exactly() {
        for id in [
            "",
            "1",
            "abc",
            "4ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "01ARZ3NDEKTSV4RRFFQ69G5FAv",
            "5F0D6A34-9C1E-4B7A-8E21-0C2F9D1E7A55",
            "5f0d6a34-9c1e-4b7a-8e21+0c2f9d1e7a55",
            "ABCDEF",
            "purple12345",
            "ümlaut",
            &"ab".repeat(33),
        ] {
            assert_eq!(packed_len(id), None, "{id}");
        }
    }

    #[test]
    fn two_different_ids_never_share_a_stored_form() {
        let ids = [
            "0123456789012345678901234a",
            "01234567890123456789012345",
            "0123456789abcdef0123456789",
            "00000000-0000-0000-0000-000000000000",
            "00000000000000000000000000000000",
            "0000",
        ];
        let stored: Vec<Value> = ids.iter().map(|id| round_trip(id)).collect();
        for (i, a) in stored.iter().enumerate() {
            for b in &stored[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn a_damaged_blob_is_no_id() {
        assert_eq!(unpack(ValueRef::Blob(&[])), None);
        assert_eq!(unpack(ValueRef::Blob(&[0x09, 1, 2])), None);
        assert_eq!(unpack(ValueRef::Blob(&[TAG_CROCKFORD, 1, 2])), None);
        assert_eq!(unpack(ValueRef::Blob(&[TAG_UUID, 1])), None);
        assert_eq!(unpack(ValueRef::Blob(&[TAG_HEX])), None);
    }
}
