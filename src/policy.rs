//! Should this message be archived, and why; users' archiving preferences.

use std::collections::BTreeSet;

use crate::error::{MamError, Result};
use crate::ns;
use crate::stanza::Element;

/// XEP-0313 `<prefs default='…'>`: what happens to messages with JIDs on neither list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Archive everything.
    Always,
    /// Archive nothing.
    Never,
    /// Archive messages with contacts in the user's roster.
    Roster,
}

impl DefaultPolicy {
    /// The XEP-0313 attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::Always => "always",
            DefaultPolicy::Never => "never",
            DefaultPolicy::Roster => "roster",
        }
    }

    /// Parses the XEP-0313 attribute value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(DefaultPolicy::Always),
            "never" => Some(DefaultPolicy::Never),
            "roster" => Some(DefaultPolicy::Roster),
            _ => None,
        }
    }
}

/// One user's archiving preferences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefs {
    pub default: DefaultPolicy,
    /// Bare JIDs whose messages are always archived.
    pub always: BTreeSet<String>,
    /// Bare JIDs whose messages are never archived (wins over `always`).
    pub never: BTreeSet<String>,
}

impl Prefs {
    /// Preferences with only a default.
    pub fn with_default(default: DefaultPolicy) -> Self {
        Prefs {
            default,
            always: BTreeSet::new(),
            never: BTreeSet::new(),
        }
    }

    /// The JID rules as stored: `(jid, "never" | "always")`, a JID on both lists
    /// once, as `never` (which wins), so reading them back gives the same decisions.
    pub fn stored_rules(&self) -> impl Iterator<Item = (&str, &'static str)> {
        let never = self.never.iter().map(|j| (j.as_str(), "never"));
        let always = self.always.difference(&self.never);
        never.chain(always.map(|j| (j.as_str(), "always")))
    }
}

/// Why a message is or is not archived (stock `mod_mam`'s reasons, for logs and the
/// `archive-should-store` event).
pub type Reason = &'static str;

/// Stock 0.12's selection rules: which messages are worth archiving at all.
pub fn should_store(stanza: &Element) -> (bool, Reason) {
    let kind = stanza.attr("type").unwrap_or("normal");
    match kind {
        // Headlines are ephemeral by definition.
        "headline" => return (false, "headline"),
        // Bounces addressed to a full JID tell the user their message failed; errors
        // to the bare JID come from the account itself (e.g. PEP) and are noise.
        "error" => {
            return (
                stanza.attr("to").is_some_and(|to| to.contains('/')),
                "bounce",
            )
        }
        // MUC messages are archived by the room.
        "groupchat" => return (false, "groupchat"),
        _ => {}
    }
    let has = |name: &str, ns: &str| stanza.get_child(name, Some(ns)).is_some();
    if has("no-store", ns::HINTS) || has("no-permanent-store", ns::HINTS) {
        return (false, "hint");
    }
    if has("store", ns::HINTS) {
        return (true, "hint");
    }
    if stanza.get_child("body", None).is_some() {
        return (true, "body");
    }
    if stanza.get_child("subject", None).is_some() {
        return (true, "subject");
    }
    if has("encryption", ns::EME) {
        return (true, "encrypted");
    }
    if stanza.get_child_ns(ns::RECEIPTS).is_some() {
        return (true, "receipt");
    }
    if stanza.get_child_ns(ns::CHAT_MARKERS).is_some() {
        return (true, "marker");
    }
    let mediated_invite = stanza
        .get_child("x", Some(ns::MUC_USER))
        .is_some_and(|x| x.get_child("invite", Some(ns::MUC_USER)).is_some());
    if has("x", ns::CONFERENCE) || mediated_invite {
        return (true, "invite");
    }
    if stanza.get_child_ns(ns::JINGLE_MESSAGE_0).is_some()
        || stanza.get_child_ns(ns::JINGLE_MESSAGE_1).is_some()
    {
        return (true, "jingle call");
    }
    (false, "default")
}

/// Whether a direct child (its name, resolved namespace and `by`) is a stanza-id in
/// the name of an account on `host`. Only this server assigns those, and it adds them
/// after this check, so any a client or remote sent are forgeries (XEP-0359 §4: a
/// server MUST remove stanza-ids in its own name); the Lua boundary applies it to
/// Prosody's tables directly, without converting the stanza.
pub fn is_forged_stanza_id(name: &str, ns: Option<&str>, by: Option<&str>, host: &str) -> bool {
    name == "stanza-id"
        && ns == Some(ns::STANZA_ID)
        && by.is_some_and(|by| names_local_account(by, host))
}

/// Whether `jid` is the bare JID of an account on `host` (`node@host`, no resource).
fn names_local_account(jid: &str, host: &str) -> bool {
    match jid.split_once('@') {
        Some((node, domain)) => {
            !node.is_empty() && !domain.contains('/') && domain.eq_ignore_ascii_case(host)
        }
        None => false,
    }
}

/// Removes direct children in any of `namespaces` (`dont_archive_namespaces`).
/// Returns whether the message still has any child element worth storing.
pub fn strip_namespaces(stanza: &mut Element, namespaces: &[String]) -> bool {
    if !namespaces.is_empty() {
        let parent_ns = stanza.xmlns().map(str::to_owned);
        stanza.retain_tags(|tag| match tag.xmlns().or(parent_ns.as_deref()) {
            Some(tag_ns) => !namespaces.iter().any(|n| n == tag_ns),
            None => true,
        });
    }
    stanza.tag_count() > 0
}

/// What a user's preferences say about archiving a message with `with_bare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Store,
    Skip,
    /// Store if `with_bare` is in the user's roster (only Prosody knows the roster).
    IfInRoster,
}

/// Applies preferences: explicit lists first (never wins), then the default.
pub fn rule_for(prefs: &Prefs, with_bare: &str) -> Rule {
    if prefs.never.contains(with_bare) {
        return Rule::Skip;
    }
    if prefs.always.contains(with_bare) {
        return Rule::Store;
    }
    match prefs.default {
        DefaultPolicy::Always => Rule::Store,
        DefaultPolicy::Never => Rule::Skip,
        DefaultPolicy::Roster => Rule::IfInRoster,
    }
}

/// Parses a client's `<prefs>` (XEP-0313 §6). `current` supplies the default when the
/// client leaves it out. JIDs are normalised with `jid_prep`; an invalid one is a
/// `bad-request` (stock silently drops it, which hides the client's mistake).
pub fn prefs_from_element(
    el: &Element,
    current: DefaultPolicy,
    jid_prep: &dyn Fn(&str) -> Option<String>,
) -> Result<Prefs> {
    let default = match el.attr("default") {
        None => current,
        Some(d) => DefaultPolicy::parse(d).ok_or_else(|| {
            MamError::BadRequest(format!(
                "Invalid default '{d}', expected 'always', 'never' or 'roster'"
            ))
        })?,
    };
    let mut prefs = Prefs::with_default(default);
    for (list_name, list) in [("always", &mut prefs.always), ("never", &mut prefs.never)] {
        if let Some(node) = el.get_child(list_name, None) {
            for jid in node.children_named("jid", None) {
                let text = jid.text();
                let prepped = jid_prep(text.trim())
                    .ok_or_else(|| MamError::BadRequest(format!("Invalid JID: {text}")))?;
                list.insert(prepped);
            }
        }
    }
    // A JID on both lists is never archived (never wins); keep the stored form honest.
    let both: Vec<String> = prefs.always.intersection(&prefs.never).cloned().collect();
    for jid in both {
        prefs.always.remove(&jid);
    }
    Ok(prefs)
}

/// Builds `<prefs xmlns='urn:xmpp:mam:2' default='…'><always>…</always><never>…</never></prefs>`.
pub fn prefs_to_element(prefs: &Prefs) -> Element {
    let mut el = Element::with_ns("prefs", ns::MAM).with_attr("default", prefs.default.as_str());
    for (name, list) in [("always", &prefs.always), ("never", &prefs.never)] {
        let mut node = Element::new(name);
        for jid in list {
            node.push(Element::new("jid").with_text(jid));
        }
        el.push(node);
    }
    el
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stanza::parse_xml;

    fn el(xml: &str) -> Element {
        parse_xml(xml).unwrap()
    }

    fn verdict(xml: &str) -> (bool, Reason) {
        should_store(&el(xml))
    }

    #[test]
    fn stock_selection_rules() {
        assert_eq!(
            verdict("<message type='chat'><body>hi</body></message>"),
            (true, "body")
        );
        assert_eq!(
            verdict("<message type='headline'><body>x</body></message>"),
            (false, "headline")
        );
        assert_eq!(
            verdict("<message type='groupchat'><body>x</body></message>"),
            (false, "groupchat")
        );
        assert_eq!(
            verdict("<message type='error' to='a@b/c'/>"),
            (true, "bounce")
        );
        assert_eq!(
            verdict("<message type='error' to='a@b'/>"),
            (false, "bounce")
        );
        assert_eq!(
            verdict("<message><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"),
            (false, "hint")
        );
        assert_eq!(
            verdict(
                "<message><body>x</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>"
            ),
            (false, "hint")
        );
        assert_eq!(
            verdict("<message><store xmlns='urn:xmpp:hints'/></message>"),
            (true, "hint")
        );
        assert_eq!(
            verdict("<message><subject>s</subject></message>"),
            (true, "subject")
        );
        assert_eq!(
            verdict("<message><encryption xmlns='urn:xmpp:eme:0' namespace='eu.siacs.conversations.axolotl'/></message>"),
            (true, "encrypted")
        );
        assert_eq!(
            verdict("<message><received xmlns='urn:xmpp:receipts' id='1'/></message>"),
            (true, "receipt")
        );
        assert_eq!(
            verdict("<message><displayed xmlns='urn:xmpp:chat-markers:0' id='1'/></message>"),
            (true, "marker")
        );
        assert_eq!(
            verdict("<message><x xmlns='jabber:x:conference' jid='room@muc'/></message>"),
            (true, "invite")
        );
        assert_eq!(
            verdict("<message><x xmlns='http://jabber.org/protocol/muc#user'><invite from='a@b'/></x></message>"),
            (true, "invite")
        );
        assert_eq!(
            verdict("<message><propose xmlns='urn:xmpp:jingle-message:0' id='j'/></message>"),
            (true, "jingle call")
        );
        assert_eq!(
            verdict("<message><active xmlns='http://jabber.org/protocol/chatstates'/></message>"),
            (false, "default")
        );
    }

    #[test]
    fn forged_stanza_ids_are_those_naming_local_accounts() {
        let m = el("<message><body>x</body><stanza-id xmlns='urn:xmpp:sid:0' by='Bob@localhost' id='forged'/><stanza-id xmlns='urn:xmpp:sid:0' by='alice@LOCALHOST' id='forged2'/><stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.localhost' id='muc'/><stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost/res' id='full'/><stanza-id xmlns='urn:xmpp:sid:0' by='localhost' id='host'/><stanza-id xmlns='urn:xmpp:other' by='carol@localhost' id='other-ns'/></message>");
        let kept: Vec<_> = m
            .tags()
            .filter(|t| !is_forged_stanza_id(&t.name, t.xmlns(), t.attr("by"), "localhost"))
            .filter_map(|t| t.attr("id"))
            .collect();
        assert_eq!(kept, ["muc", "full", "host", "other-ns"]);
    }

    #[test]
    fn chat_states_are_stripped_and_a_message_of_only_chat_states_is_empty() {
        let ns = vec![ns::CHATSTATES.to_owned()];
        let mut m = el("<message><active xmlns='http://jabber.org/protocol/chatstates'/><body>x</body></message>");
        assert!(strip_namespaces(&mut m, &ns));
        assert_eq!(
            crate::stanza::to_xml(&m),
            "<message><body>x</body></message>"
        );
        let mut m =
            el("<message><composing xmlns='http://jabber.org/protocol/chatstates'/></message>");
        assert!(!strip_namespaces(&mut m, &ns));
    }

    #[test]
    fn never_beats_always_and_default_applies_to_the_rest() {
        let mut p = Prefs::with_default(DefaultPolicy::Roster);
        p.always.insert("romeo@montague.lit".into());
        p.never.insert("tybalt@capulet.lit".into());
        assert_eq!(rule_for(&p, "romeo@montague.lit"), Rule::Store);
        assert_eq!(rule_for(&p, "tybalt@capulet.lit"), Rule::Skip);
        assert_eq!(rule_for(&p, "nurse@capulet.lit"), Rule::IfInRoster);
    }

    #[test]
    fn xep_0313_prefs_example_round_trips() {
        let prep = |s: &str| Some(s.to_lowercase());
        let p = prefs_from_element(
            &el("<prefs xmlns='urn:xmpp:mam:2' default='roster'><always><jid>romeo@montague.lit</jid></always><never><jid>montague@montague.lit</jid></never></prefs>"),
            DefaultPolicy::Always,
            &prep,
        )
        .unwrap();
        assert_eq!(
            crate::stanza::to_xml(&prefs_to_element(&p)),
            "<prefs xmlns='urn:xmpp:mam:2' default='roster'><always><jid>romeo@montague.lit</jid></always><never><jid>montague@montague.lit</jid></never></prefs>"
        );
    }

    #[test]
    fn an_invalid_default_or_jid_in_prefs_is_bad_request() {
        let prep = |s: &str| {
            if s.contains(' ') {
                None
            } else {
                Some(s.to_owned())
            }
        };
        let err = prefs_from_element(
            &el("<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>"),
            DefaultPolicy::Always,
            &prep,
        )
        .unwrap_err();
        assert_eq!(err.to_xmpp().condition, "bad-request");
        let err = prefs_from_element(&el("<prefs xmlns='urn:xmpp:mam:2' default='always'><never><jid>not a jid</jid></never></prefs>"), DefaultPolicy::Always, &prep).unwrap_err();
        assert_eq!(err.to_string(), "Invalid JID: not a jid");
    }
}
