//! The archive engine: every decision and operation the Prosody shim asks for, on
//! plain Rust data. The Lua boundary ([`crate::lua_api`]) only converts arguments and
//! results; everything here is testable without Lua.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::error::Result;
use crate::id::new_archive_id;
use crate::ns;
use crate::policy::{self, DefaultPolicy, Prefs, Rule};
use crate::query::{self, split_resource, JidPrep, QueryAnswer};
use crate::stanza::{to_xml, Element};
use crate::store::sqlite::SqliteStore;
use crate::store::{ArchiveStore, NewMessage, Owner};
use crate::time::{format_datetime, Clock, SystemClock};

/// Entries kept in the preferences cache before it is cleared. Prefs are read for
/// every archived message, so they are cached; the bound keeps a server with many
/// users from growing without limit.
const PREFS_CACHE_LIMIT: usize = 10_000;

/// A message that was archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The archive id, also the XEP-0359 stanza-id.
    pub id: String,
    /// The copy that was stored (namespaces in `dont_archive_namespaces` removed).
    pub stored: Element,
    /// The copy to deliver: the original with our `<stanza-id>` added.
    pub delivered: Element,
}

/// Why an eligible message was nevertheless not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Nothing but stripped namespaces (e.g. a bare chat state).
    EmptyWhenStripped,
}

/// One virtual host's archive.
pub struct Archive {
    config: Config,
    store: Box<dyn ArchiveStore>,
    clock: Arc<dyn Clock>,
    /// Per-user preferences as stored (`None`: the user never set any).
    prefs_cache: HashMap<String, Option<Prefs>>,
}

impl Archive {
    /// Opens the SQLite archive named by the configuration.
    pub fn open(config: Config) -> Result<Archive> {
        let store = SqliteStore::open(&config.database_path)?;
        Ok(Archive::with_store(
            config,
            Box::new(store),
            Arc::new(SystemClock),
        ))
    }

    /// An archive over any backend and clock (tests inject both).
    pub fn with_store(
        config: Config,
        store: Box<dyn ArchiveStore>,
        clock: Arc<dyn Clock>,
    ) -> Archive {
        Archive {
            config,
            store,
            clock,
            prefs_cache: HashMap::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn owner(&self, user: &str) -> Owner {
        Owner::new(&self.config.host, user)
    }

    /// Removes stanza-ids that claim to come from an archive on this host (XEP-0359 §4).
    pub fn strip_forged_ids(&self, stanza: &mut Element) -> bool {
        policy::strip_forged_stanza_ids(stanza, &self.config.host)
    }

    fn stored_prefs(&mut self, user: &str) -> Result<Option<Prefs>> {
        if let Some(p) = self.prefs_cache.get(user) {
            return Ok(p.clone());
        }
        let p = self.store.get_prefs(&self.owner(user))?;
        if self.prefs_cache.len() >= PREFS_CACHE_LIMIT {
            self.prefs_cache.clear();
        }
        self.prefs_cache.insert(user.to_owned(), p.clone());
        Ok(p)
    }

    /// A user's effective preferences, as stock's `get_prefs(user, explicit)`:
    /// `explicit` means a MAM client is involved right now; with `mam_smart_enable`
    /// that first contact stores the server default, and until then nothing is
    /// archived for the user.
    pub fn prefs(&mut self, user: &str, explicit: bool) -> Result<Prefs> {
        if let Some(p) = self.stored_prefs(user)? {
            return Ok(p);
        }
        let server_default = Prefs::with_default(self.config.default_policy);
        if !self.config.smart_enable {
            return Ok(server_default);
        }
        if explicit {
            self.set_prefs(user, &server_default)?;
            return Ok(server_default);
        }
        Ok(Prefs::with_default(DefaultPolicy::Never))
    }

    fn set_prefs(&mut self, user: &str, prefs: &Prefs) -> Result<()> {
        self.store.set_prefs(&self.owner(user), prefs)?;
        self.prefs_cache
            .insert(user.to_owned(), Some(prefs.clone()));
        Ok(())
    }

    /// Whether a message between `user` and `with_jid` may be archived by preference.
    pub fn rule(&mut self, user: &str, with_jid: &str) -> Result<Rule> {
        let (bare, _) = split_resource(with_jid);
        let prefs = self.prefs(user, false)?;
        Ok(policy::rule_for(&prefs, bare))
    }

    /// Archives `stanza` in `user`'s archive; `with_jid` is the other party as
    /// addressed (bare or full). The caller has already decided the message is
    /// eligible ([`policy::should_store`], preferences).
    pub fn append(
        &mut self,
        user: &str,
        with_jid: &str,
        stanza: &Element,
    ) -> Result<std::result::Result<Appended, NotStored>> {
        let mut stored = stanza.clone();
        if !policy::strip_namespaces(&mut stored, &self.config.dont_archive_namespaces) {
            return Ok(Err(NotStored::EmptyWhenStripped));
        }
        let when = self.clock.now_micros();
        let id = new_archive_id(when);
        let (bare, resource) = split_resource(with_jid);
        // Stored with an explicit jabber:client namespace so that, read back, every
        // element carries its namespace and Lua's get_child() finds children.
        let mut for_disk = stored.clone();
        for_disk.set_attr("xmlns", ns::JABBER_CLIENT);
        let msg = NewMessage {
            id: id.clone(),
            when,
            with_bare: bare.to_owned(),
            with_resource: resource.map(str::to_owned),
            xml: to_xml(&for_disk),
        };
        self.store
            .append(&self.owner(user), &msg, self.config.item_limit)?;
        let mut delivered = stanza.clone();
        delivered.push(
            Element::with_ns("stanza-id", ns::STANZA_ID)
                .with_attr("by", &format!("{user}@{}", self.config.host))
                .with_attr("id", &id),
        );
        Ok(Ok(Appended {
            id,
            stored,
            delivered,
        }))
    }

    /// The query form (iq-get on `<query>`), which also counts as MAM use.
    pub fn query_form(&mut self, user: &str) -> Result<Element> {
        self.prefs(user, true)?;
        Ok(query::query_form())
    }

    /// Runs a client's `<query>` against `user`'s archive.
    pub fn query(
        &mut self,
        user: &str,
        query_el: &Element,
        jid_prep: JidPrep,
    ) -> Result<(Option<String>, QueryAnswer)> {
        self.prefs(user, true)?;
        let q = query::parse_query(query_el, jid_prep)?;
        let plan = q.plan(&self.config);
        let page = self.store.find(&self.owner(user), &plan.find)?;
        Ok((q.query_id, query::answer(&plan, page)))
    }

    /// `<metadata>` (XEP-0313 §7): the archive's first and last message; an empty
    /// `<metadata/>` for an empty archive.
    pub fn metadata(&mut self, user: &str) -> Result<Element> {
        let mut el = Element::with_ns("metadata", ns::MAM);
        if let Some(bounds) = self.store.bounds(&self.owner(user))? {
            for (name, end) in [("start", bounds.first), ("end", bounds.last)] {
                el.push(
                    Element::new(name)
                        .with_attr("id", &end.id)
                        .with_attr("timestamp", &format_datetime(end.when)),
                );
            }
        }
        Ok(el)
    }

    /// Handles `<prefs>`: applies `set` if given, then returns the current prefs.
    pub fn prefs_iq(
        &mut self,
        user: &str,
        set: Option<&Element>,
        jid_prep: JidPrep,
    ) -> Result<Element> {
        let current = self.prefs(user, true)?;
        let prefs = match set {
            Some(el) => {
                let new = policy::prefs_from_element(el, current.default, jid_prep)?;
                self.set_prefs(user, &new)?;
                new
            }
            None => current,
        };
        Ok(policy::prefs_to_element(&prefs))
    }

    /// Deletes at most `batch` expired messages. Returns how many; `0` when expiry is
    /// off or nothing is left to expire.
    pub fn expire_batch(&mut self, batch: usize) -> Result<u64> {
        let Some(after) = self.config.expires_after else {
            return Ok(0);
        };
        let cutoff = self
            .clock
            .now_micros()
            .saturating_sub((after as i64).saturating_mul(1_000_000));
        self.store.expire_batch(&self.config.host, cutoff, batch)
    }

    /// Removes a deleted account's archive and preferences.
    pub fn delete_user(&mut self, user: &str) -> Result<u64> {
        self.prefs_cache.remove(user);
        self.store.delete_user(&self.owner(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawValue;
    use crate::stanza::parse_xml;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// A clock tests move by hand.
    struct ManualClock(AtomicI64);

    impl Clock for ManualClock {
        fn now_micros(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    const T0: i64 = 1_700_000_000_000_000;

    fn archive_with(pairs: &[(&str, RawValue)]) -> (Archive, Arc<ManualClock>) {
        let map: HashMap<String, RawValue> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let config =
            Config::from_options("localhost", "/tmp", &move |n: &str| map.get(n).cloned()).unwrap();
        let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
        let store = SqliteStore::open_in_memory().unwrap();
        (
            Archive::with_store(config, Box::new(store), clock.clone()),
            clock,
        )
    }

    fn prep(s: &str) -> Option<String> {
        Some(s.to_lowercase())
    }

    fn chat(body: &str) -> Element {
        parse_xml(&format!(
            "<message type='chat' to='juliet@localhost' from='romeo@montague.lit/orchard'><body>{body}</body></message>"
        ))
        .unwrap()
    }

    fn query_all(a: &mut Archive, user: &str) -> Vec<String> {
        let q = parse_xml("<query xmlns='urn:xmpp:mam:2'/>").unwrap();
        let (_, answer) = a.query(user, &q, &prep).unwrap();
        answer.items.into_iter().map(|m| m.id).collect()
    }

    #[test]
    fn appended_messages_come_back_in_order_with_their_ids() {
        let (mut a, clock) = archive_with(&[]);
        let mut ids = Vec::new();
        for i in 0..3 {
            clock.0.fetch_add(1, Ordering::SeqCst);
            let appended = a
                .append(
                    "juliet",
                    "romeo@montague.lit/orchard",
                    &chat(&i.to_string()),
                )
                .unwrap()
                .unwrap();
            let sid = appended
                .delivered
                .get_child("stanza-id", Some(ns::STANZA_ID))
                .unwrap();
            assert_eq!(sid.attr("id"), Some(appended.id.as_str()));
            assert_eq!(sid.attr("by"), Some("juliet@localhost"));
            ids.push(appended.id);
        }
        assert_eq!(query_all(&mut a, "juliet"), ids);
        assert!(query_all(&mut a, "romeo").is_empty());
    }

    #[test]
    fn a_message_of_only_chat_states_is_not_stored() {
        let (mut a, _) = archive_with(&[]);
        let m = parse_xml("<message to='juliet@localhost'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").unwrap();
        assert_eq!(
            a.append("juliet", "romeo@montague.lit", &m).unwrap(),
            Err(NotStored::EmptyWhenStripped)
        );
    }

    #[test]
    fn smart_enable_archives_nothing_until_a_mam_client_appears() {
        let (mut a, _) = archive_with(&[("mam_smart_enable", RawValue::Bool(true))]);
        assert_eq!(a.rule("juliet", "romeo@montague.lit").unwrap(), Rule::Skip);
        a.query_form("juliet").unwrap();
        assert_eq!(a.rule("juliet", "romeo@montague.lit").unwrap(), Rule::Store);
    }

    #[test]
    fn roster_default_policy_defers_to_the_roster() {
        let (mut a, _) =
            archive_with(&[("default_archive_policy", RawValue::String("roster".into()))]);
        assert_eq!(
            a.rule("juliet", "romeo@montague.lit/x").unwrap(),
            Rule::IfInRoster
        );
    }

    #[test]
    fn expiry_removes_only_messages_older_than_the_window() {
        let (mut a, clock) =
            archive_with(&[("archive_expires_after", RawValue::String("1d".into()))]);
        a.append("juliet", "romeo@montague.lit", &chat("old"))
            .unwrap()
            .unwrap();
        clock.0.fetch_add(2 * 86_400 * 1_000_000, Ordering::SeqCst);
        let new = a
            .append("juliet", "romeo@montague.lit", &chat("new"))
            .unwrap()
            .unwrap();
        assert_eq!(a.expire_batch(100).unwrap(), 1);
        assert_eq!(a.expire_batch(100).unwrap(), 0);
        assert_eq!(query_all(&mut a, "juliet"), vec![new.id]);
    }

    #[test]
    fn never_expiring_archives_are_not_expired() {
        let (mut a, clock) =
            archive_with(&[("archive_expires_after", RawValue::String("never".into()))]);
        a.append("juliet", "romeo@montague.lit", &chat("old"))
            .unwrap()
            .unwrap();
        clock
            .0
            .fetch_add(400 * 86_400 * 1_000_000, Ordering::SeqCst);
        assert_eq!(a.expire_batch(100).unwrap(), 0);
        assert_eq!(query_all(&mut a, "juliet").len(), 1);
    }

    #[test]
    fn metadata_of_an_empty_archive_is_empty() {
        let (mut a, _) = archive_with(&[]);
        assert_eq!(
            to_xml(&a.metadata("juliet").unwrap()),
            "<metadata xmlns='urn:xmpp:mam:2'/>"
        );
    }

    #[test]
    fn deleting_a_user_forgets_their_prefs_too() {
        let (mut a, _) = archive_with(&[]);
        let set = parse_xml("<prefs xmlns='urn:xmpp:mam:2' default='never'/>").unwrap();
        a.prefs_iq("juliet", Some(&set), &prep).unwrap();
        assert_eq!(a.rule("juliet", "romeo@montague.lit").unwrap(), Rule::Skip);
        a.delete_user("juliet").unwrap();
        assert_eq!(a.rule("juliet", "romeo@montague.lit").unwrap(), Rule::Store);
    }
}
