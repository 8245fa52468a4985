//! JIDs as the archive stores and compares them (RFC 7622): split into the bare
//! part and the resource. Normalisation (`nodeprep` etc.) is Prosody's `jid.prep`,
//! which the Lua boundary hands in as a function, so both sides agree on every JID.

/// Splits a JID string into (bare, resource).
pub fn split_resource(jid: &str) -> (&str, Option<&str>) {
    // The resource starts at the first '/' (RFC 7622 §3.1); it may itself contain '/'.
    match jid.find('/') {
        Some(i) => (&jid[..i], Some(&jid[i + 1..])),
        None => (jid, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_jid_has_no_resource() {
        assert_eq!(
            split_resource("juliet@capulet.lit"),
            ("juliet@capulet.lit", None)
        );
    }

    #[test]
    fn the_resource_starts_at_the_first_slash_and_may_hold_more() {
        assert_eq!(
            split_resource("juliet@capulet.lit/balcony/2"),
            ("juliet@capulet.lit", Some("balcony/2"))
        );
        assert_eq!(split_resource("capulet.lit/"), ("capulet.lit", Some("")));
    }
}
