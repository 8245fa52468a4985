//! Namespace constants, one per protocol we speak or inspect.

/// XEP-0313: Message Archive Management.
pub const MAM: &str = "urn:xmpp:mam:2";
/// XEP-0313 extended queries (`before-id`, `after-id`, `ids`).
pub const MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
/// XEP-0359: Unique and Stable Stanza IDs.
pub const STANZA_ID: &str = "urn:xmpp:sid:0";
/// XEP-0297: Stanza Forwarding.
pub const FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0203: Delayed Delivery.
pub const DELAY: &str = "urn:xmpp:delay";
/// XEP-0004: Data Forms.
pub const DATA_FORMS: &str = "jabber:x:data";
/// XEP-0059: Result Set Management.
pub const RSM: &str = "http://jabber.org/protocol/rsm";
/// RFC 6120 client namespace: the default namespace of stanzas.
pub const JABBER_CLIENT: &str = "jabber:client";
/// RFC 6120 stanza error conditions.
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// XEP-0334: Message Processing Hints.
pub const HINTS: &str = "urn:xmpp:hints";
/// XEP-0380: Explicit Message Encryption.
pub const EME: &str = "urn:xmpp:eme:0";
/// XEP-0184: Message Delivery Receipts.
pub const RECEIPTS: &str = "urn:xmpp:receipts";
/// XEP-0333: Chat Markers.
pub const CHAT_MARKERS: &str = "urn:xmpp:chat-markers:0";
/// XEP-0249: Direct MUC Invitations.
pub const CONFERENCE: &str = "jabber:x:conference";
/// XEP-0045: Multi-User Chat, user namespace (mediated invitations).
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// XEP-0045 MUC: the `<x>` of a join presence.
pub const MUC: &str = "http://jabber.org/protocol/muc";
/// XEP-0353: Jingle Message Initiation, versions 0 and 1.
pub const JINGLE_MESSAGE_0: &str = "urn:xmpp:jingle-message:0";
pub const JINGLE_MESSAGE_1: &str = "urn:xmpp:jingle-message:1";
/// XEP-0085: Chat State Notifications (stripped before storage by default).
pub const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// The `xml:` prefix's namespace (for `xml:lang`).
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
