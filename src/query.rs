//! XEP-0313 archive queries: the `<query>` a client sends, validated into a typed
//! [`Query`], turned into a store [`FindRequest`], and the page turned back into
//! `<result>` messages and a `<fin>`.

use std::collections::HashSet;

use crate::config::{Config, Owners};
use crate::error::{MamError, Result};
use crate::ns;
use crate::stanza::{
    append_canonical_message_wire, parse_xml, push_wire_escaped, to_wire_xml, Element,
};
use crate::store::{ArchivedMessage, FindRequest, Page, WithFilter};
use crate::time::{format_datetime, parse_datetime, Micros};

/// Most `ids` one query may name. Each is one index probe; a page never returns more
/// than `max_archive_query_results` anyway, so this only bounds the work per request.
pub const MAX_IDS: usize = 1000;

/// A normalising JID preparation (Prosody's `util.jid.prep`): `None` for an invalid JID.
pub type JidPrep<'a> = &'a dyn Fn(&str) -> Option<String>;

/// XEP-0059 `<before>`: either the last page (`<before/>`) or the page before an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RsmBefore {
    LastPage,
    Id(String),
}

/// XEP-0059 request parameters we honour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RsmRequest {
    pub max: Option<usize>,
    pub after: Option<String>,
    pub before: Option<RsmBefore>,
}

/// A validated XEP-0313 query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// `queryid`, echoed in every `<result>`.
    pub query_id: Option<String>,
    pub with: Option<WithFilter>,
    pub start: Option<Micros>,
    pub end: Option<Micros>,
    /// Extended: `after-id`.
    pub after_id: Option<String>,
    /// Extended: `before-id`.
    pub before_id: Option<String>,
    /// Extended: `ids`.
    pub ids: Option<Vec<String>>,
    pub rsm: RsmRequest,
    /// `<flip-page/>`: deliver the page in the opposite order.
    pub flip_page: bool,
}

/// The form fields we understand; anything else is `feature-not-implemented`.
const KNOWN_FIELDS: &[&str] = &[
    "FORM_TYPE",
    "with",
    "start",
    "end",
    "before-id",
    "after-id",
    "ids",
];

/// The query form (XEP-0313 §4.1.5) returned to an iq-get on `<query>`.
pub fn query_form() -> Element {
    let mut x = Element::with_ns("x", ns::DATA_FORMS).with_attr("type", "form");
    x.push(
        Element::new("field")
            .with_attr("var", "FORM_TYPE")
            .with_attr("type", "hidden")
            .with_child(Element::new("value").with_text(ns::MAM)),
    );
    for (var, kind) in [
        ("with", "jid-single"),
        ("start", "text-single"),
        ("end", "text-single"),
        ("before-id", "text-single"),
        ("after-id", "text-single"),
        ("ids", "list-multi"),
    ] {
        let mut field = Element::new("field")
            .with_attr("var", var)
            .with_attr("type", kind);
        if var == "start" || var == "end" {
            field.push(
                Element::with_ns("validate", "http://jabber.org/protocol/xdata-validate")
                    .with_attr("datatype", "xs:dateTime"),
            );
        }
        x.push(field);
    }
    Element::with_ns("query", ns::MAM).with_child(x)
}

fn single_value(field: &Element, var: &str) -> Result<Option<String>> {
    let mut values = field.children_named("value", Some(ns::DATA_FORMS));
    let first = values.next().map(Element::text);
    if values.next().is_some() {
        return Err(MamError::BadRequest(format!(
            "Field '{var}' takes a single value"
        )));
    }
    Ok(first.filter(|v| !v.is_empty()))
}

fn parse_date_field(field: &Element, var: &str) -> Result<Option<Micros>> {
    match single_value(field, var)? {
        None => Ok(None),
        Some(v) => parse_datetime(&v)
            .map(Some)
            .ok_or_else(|| MamError::BadRequest(format!("Invalid date in field '{var}': {v}"))),
    }
}

fn parse_form(x: &Element, q: &mut Query, jid_prep: JidPrep) -> Result<()> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut form_type: Option<String> = None;
    for field in x.children_named("field", Some(ns::DATA_FORMS)) {
        let Some(var) = field.attr("var") else {
            // Fixed fields carry no data (XEP-0004 §3.3); only they may lack 'var'.
            continue;
        };
        if !seen.insert(var.to_owned()) {
            return Err(MamError::BadRequest(format!("Duplicate field '{var}'")));
        }
        match var {
            "FORM_TYPE" => form_type = single_value(field, var)?,
            "with" => {
                if let Some(v) = single_value(field, var)? {
                    let prepped = jid_prep(&v)
                        .ok_or_else(|| MamError::BadRequest(format!("Invalid JID: {v}")))?;
                    q.with = Some(WithFilter::from_jid(&prepped));
                }
            }
            "start" => q.start = parse_date_field(field, var)?,
            "end" => q.end = parse_date_field(field, var)?,
            "after-id" => q.after_id = single_value(field, var)?,
            "before-id" => q.before_id = single_value(field, var)?,
            "ids" => {
                let ids: Vec<String> = field
                    .children_named("value", Some(ns::DATA_FORMS))
                    .map(Element::text)
                    .collect();
                if ids.len() > MAX_IDS {
                    return Err(MamError::PolicyViolation(format!(
                        "At most {MAX_IDS} ids per query"
                    )));
                }
                q.ids = Some(ids);
            }
            other => {
                debug_assert!(!KNOWN_FIELDS.contains(&other));
                return Err(MamError::FeatureNotImplemented(format!(
                    "Unknown field '{other}'"
                )));
            }
        }
    }
    match form_type.as_deref() {
        Some(ns::MAM) => Ok(()),
        Some(other) => Err(MamError::BadRequest(format!(
            "Unexpected FORM_TYPE '{other}', expected '{}'",
            ns::MAM
        ))),
        None => Err(MamError::BadRequest("Missing FORM_TYPE".to_owned())),
    }
}

fn parse_rsm(set: &Element) -> Result<RsmRequest> {
    let mut rsm = RsmRequest::default();
    if let Some(max) = set.get_child("max", Some(ns::RSM)) {
        let text = max.text();
        let n: usize = text
            .trim()
            .parse()
            .or_else(|e: std::num::ParseIntError| {
                // A number too large for usize still means "as many as allowed".
                if !text.trim().is_empty() && text.trim().bytes().all(|b| b.is_ascii_digit()) {
                    Ok(usize::MAX)
                } else {
                    Err(e)
                }
            })
            .map_err(|_| MamError::BadRequest(format!("Invalid RSM max: {text}")))?;
        rsm.max = Some(n);
    }
    if let Some(after) = set.get_child("after", Some(ns::RSM)) {
        let id = after.text();
        if id.is_empty() {
            return Err(MamError::BadRequest("Empty RSM after".to_owned()));
        }
        rsm.after = Some(id);
    }
    if let Some(before) = set.get_child("before", Some(ns::RSM)) {
        let id = before.text();
        rsm.before = Some(if id.is_empty() {
            RsmBefore::LastPage
        } else {
            RsmBefore::Id(id)
        });
    }
    Ok(rsm)
}

/// Validates a client's `<query xmlns='urn:xmpp:mam:2'>`.
pub fn parse_query(query: &Element, jid_prep: JidPrep) -> Result<Query> {
    let mut q = Query {
        query_id: query.attr("queryid").map(str::to_owned),
        ..Query::default()
    };
    if let Some(x) = query.get_child("x", Some(ns::DATA_FORMS)) {
        parse_form(x, &mut q, jid_prep)?;
    }
    if let Some(set) = query.get_child("set", Some(ns::RSM)) {
        q.rsm = parse_rsm(set)?;
    }
    q.flip_page = query.get_child("flip-page", Some(ns::MAM)).is_some();
    Ok(q)
}

/// How a query runs: what to ask the store and how to present the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub find: FindRequest,
    /// Items per page (the store is asked for one more, to know if the page is last).
    pub page_size: usize,
    /// The page is counted from the newest end (RSM `<before>`).
    pub reverse: bool,
    /// Deliver newest first.
    pub deliver_newest_first: bool,
    /// `ids` naming a message this archive does not have fail the query with
    /// `item-not-found` (XEP-0313 §4.1.4) instead of leaving it out of the page.
    /// Room archives do this; personal ones keep stock mod_mam's answer.
    pub unknown_ids_fail: bool,
    /// Room archives: take every `<x xmlns='…muc#user'>` out of the results, which
    /// is where a non-anonymous room keeps its senders' real JIDs; set when the room
    /// is not (any longer) non-anonymous and the requester is no moderator.
    pub hide_real_jids: bool,
}

impl Query {
    /// Plans this query under the server's limits.
    pub fn plan(&self, config: &Config) -> Plan {
        let page_size = self
            .rsm
            .max
            .unwrap_or(config.default_page)
            .min(config.max_results);
        let reverse = self.rsm.before.is_some();
        let mut after: Vec<String> = self.after_id.iter().cloned().collect();
        after.extend(self.rsm.after.iter().cloned());
        let mut before: Vec<String> = self.before_id.iter().cloned().collect();
        if let Some(RsmBefore::Id(id)) = &self.rsm.before {
            before.push(id.clone());
        }
        Plan {
            find: FindRequest {
                with: self.with.clone(),
                start: self.start,
                end: self.end,
                after,
                before,
                ids: self.ids.clone(),
                limit: if page_size == 0 { 0 } else { page_size + 1 },
                reverse,
                total: config.include_total || page_size == 0,
            },
            page_size,
            reverse,
            // A reverse query reads newest first; flip-page asks for the opposite of
            // the natural (oldest first) order.
            deliver_newest_first: self.flip_page,
            unknown_ids_fail: config.owners == Owners::Rooms,
            hide_real_jids: false,
        }
    }
}

/// The answer to a query, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryAnswer {
    /// `<result>` payloads in delivery order: (archive id, timestamp, stored stanza).
    pub items: Vec<ArchivedMessage>,
    /// The `<fin>` element for the iq result.
    pub fin: Element,
}

/// Turns a store page into the delivered items and `<fin>`.
pub fn answer(plan: &Plan, page: Page) -> QueryAnswer {
    let Page { mut items, total } = page;
    let complete = if plan.page_size == 0 {
        total == Some(0) || items.is_empty() && total.is_none()
    } else if items.len() > plan.page_size {
        items.truncate(plan.page_size);
        false
    } else {
        true
    };
    // The store returns newest first for reverse queries; bring the page to
    // chronological order, then apply flip-page.
    if plan.reverse {
        items.reverse();
    }
    let (first, last) = (
        items.first().map(|m| m.id.clone()),
        items.last().map(|m| m.id.clone()),
    );
    if plan.deliver_newest_first {
        items.reverse();
    }
    let mut set = Element::with_ns("set", ns::RSM);
    if let Some(first) = first {
        set.push(Element::new("first").with_text(&first));
    }
    if let Some(last) = last {
        set.push(Element::new("last").with_text(&last));
    }
    if let Some(total) = total {
        set.push(Element::new("count").with_text(&total.to_string()));
    }
    let mut fin = Element::with_ns("fin", ns::MAM);
    if complete {
        fin.set_attr("complete", "true");
    }
    fin.push(set);
    QueryAnswer { items, fin }
}

/// The ids of `requested` that are not among `found`, each once, in request order.
pub fn missing_ids<'a>(requested: &'a [String], found: &[ArchivedMessage]) -> Vec<&'a String> {
    let found: HashSet<&str> = found.iter().map(|m| m.id.as_str()).collect();
    let mut seen = HashSet::new();
    requested
        .iter()
        .filter(|id| !found.contains(id.as_str()) && seen.insert(id.as_str()))
        .collect()
}

/// `msg` without its `<x xmlns='…muc#user'>` children (a room's record of its
/// senders' real JIDs); untouched, with no parse, when it has none.
pub fn without_real_jids(msg: &mut ArchivedMessage) -> Result<()> {
    if !msg.xml.contains(ns::MUC_USER) {
        return Ok(());
    }
    let mut stored = parse_xml(&msg.xml)
        .map_err(|e| MamError::Corrupt(format!("archived message {}: {e}", msg.id)))?;
    stored.retain_tags(|child| !(child.name == "x" && child.xmlns() == Some(ns::MUC_USER)));
    msg.xml = crate::stanza::to_xml(&stored);
    Ok(())
}

/// Builds the `<result>` wrapper of one archived message (XEP-0313 §4.2):
/// `<result queryid id><forwarded><delay stamp/><message xmlns='jabber:client'>…`.
pub fn result_element(query_id: Option<&str>, msg: &ArchivedMessage) -> Result<Element> {
    let mut stored = parse_xml(&msg.xml)
        .map_err(|e| MamError::Corrupt(format!("archived message {}: {e}", msg.id)))?;
    stored.set_attr("xmlns", ns::JABBER_CLIENT);
    let mut result = Element::with_ns("result", ns::MAM);
    if let Some(qid) = query_id {
        result.set_attr("queryid", qid);
    }
    result.set_attr("id", &msg.id);
    result.push(
        Element::with_ns("forwarded", ns::FORWARD)
            .with_child(
                Element::with_ns("delay", ns::DELAY).with_attr("stamp", &format_datetime(msg.when)),
            )
            .with_child(stored),
    );
    Ok(result)
}

/// One result as the session receives it: what [`to_wire_xml`] writes for a
/// `<message to from>` around [`result_element`]. A stored message in the canonical
/// form ([`append_canonical_message_wire`]) is written straight into the wrapper;
/// anything else is parsed and written out again.
pub fn wire_result(
    query_id: Option<&str>,
    msg: &ArchivedMessage,
    to: Option<&str>,
    from: Option<&str>,
) -> Result<String> {
    let mut out = String::with_capacity(msg.xml.len() + 320);
    out.push_str("<message");
    for (key, value) in [("to", to), ("from", from)] {
        if let Some(v) = value {
            push_attr(&mut out, key, v);
        }
    }
    out.push('>');
    open_forwarded(&mut out, query_id, msg);
    if append_canonical_message_wire(&msg.xml, &mut out) {
        out.push_str(CLOSE_FORWARDED);
        out.push_str("</message>");
        return Ok(out);
    }
    Ok(to_wire_xml(&result_message(query_id, msg, to, from)?))
}

/// Writes the opening of one result's forwarded form (XEP-0313 §4.2, XEP-0297,
/// XEP-0203): `<result xmlns queryid id><forwarded xmlns><delay xmlns stamp/>`; the
/// archived stanza follows, then [`CLOSE_FORWARDED`]. The one writer of that form:
/// query results on the wire and `prosodyctl mod_mam export` both use it.
pub fn open_forwarded(out: &mut String, query_id: Option<&str>, msg: &ArchivedMessage) {
    out.push_str("<result");
    push_attr(out, "xmlns", ns::MAM);
    if let Some(qid) = query_id {
        push_attr(out, "queryid", qid);
    }
    push_attr(out, "id", &msg.id);
    out.push_str("><forwarded");
    push_attr(out, "xmlns", ns::FORWARD);
    out.push_str("><delay");
    push_attr(out, "xmlns", ns::DELAY);
    push_attr(out, "stamp", &format_datetime(msg.when));
    out.push_str("/>");
}

/// Closes what [`open_forwarded`] opened.
pub const CLOSE_FORWARDED: &str = "</forwarded></result>";

/// One result as a stanza: `<message to from>` around [`result_element`].
pub fn result_message(
    query_id: Option<&str>,
    msg: &ArchivedMessage,
    to: Option<&str>,
    from: Option<&str>,
) -> Result<Element> {
    let mut wrapper = Element::new("message");
    for (key, value) in [("to", to), ("from", from)] {
        if let Some(v) = value {
            wrapper.set_attr(key, v);
        }
    }
    wrapper.push(result_element(query_id, msg)?);
    Ok(wrapper)
}

fn push_attr(out: &mut String, key: &str, value: &str) {
    out.push(' ');
    out.push_str(key);
    out.push_str("='");
    push_wire_escaped(value, out);
    out.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn archived(id: &str, xml: &str) -> ArchivedMessage {
        ArchivedMessage {
            id: id.to_owned(),
            when: 1,
            with_bare: "room@rooms.lit".to_owned(),
            with_resource: Some("nick".to_owned()),
            xml: xml.to_owned(),
        }
    }

    #[test]
    fn missing_ids_are_those_not_found_each_once_in_request_order() {
        let found = [archived("b", "<message/>")];
        let asked: Vec<String> = ["c", "b", "a", "c"].iter().map(|s| s.to_string()).collect();
        let missing: Vec<&str> = missing_ids(&asked, &found)
            .into_iter()
            .map(String::as_str)
            .collect();
        assert_eq!(missing, ["c", "a"]);
    }

    #[test]
    fn real_jids_are_taken_out_of_a_room_message_and_nothing_else() {
        let mut m = archived(
            "a",
            "<message xmlns='jabber:client' from='room@rooms.lit/nick' type='groupchat'>\
             <body>hi</body><x xmlns='http://jabber.org/protocol/muc#user'>\
             <item jid='juliet@capulet.lit' affiliation='member' role='participant'/></x>\
             <x xmlns='jabber:x:oob'><url>u</url></x></message>",
        );
        without_real_jids(&mut m).unwrap();
        let el = parse_xml(&m.xml).unwrap();
        assert!(el.get_child("x", Some(ns::MUC_USER)).is_none());
        assert_eq!(
            el.get_child_text("body", Some(ns::JABBER_CLIENT))
                .as_deref(),
            Some("hi")
        );
        assert!(el.get_child("x", Some("jabber:x:oob")).is_some());
        // Without one, the stored text is left exactly as it was.
        let plain = "<message xmlns='jabber:client'><body>x</body></message>";
        let mut m = archived("b", plain);
        without_real_jids(&mut m).unwrap();
        assert_eq!(m.xml, plain);
    }

    #[test]
    fn only_room_archives_refuse_unknown_ids() {
        let q = Query::default();
        assert!(!q.plan(&config()).unknown_ids_fail);
        let rooms = Config::for_owners(
            crate::config::Owners::Rooms,
            "rooms.lit",
            "/tmp",
            &|_: &str| None,
        )
        .unwrap();
        assert!(q.plan(&rooms).unknown_ids_fail);
    }

    fn prep(s: &str) -> Option<String> {
        if s.is_empty() || s.contains(' ') || s.starts_with('@') {
            None
        } else {
            Some(s.to_lowercase())
        }
    }

    fn config() -> Config {
        Config::from_options("capulet.lit", "/tmp", &|_: &str| None).unwrap()
    }

    fn parse(xml: &str) -> Result<Query> {
        parse_query(&parse_xml(xml).unwrap(), &prep)
    }

    fn field(var: &str, value: &str) -> String {
        format!("<field var='{var}'><value>{value}</value></field>")
    }

    fn form(fields: &str) -> String {
        format!(
            "<query xmlns='urn:xmpp:mam:2' queryid='f27'><x xmlns='jabber:x:data' type='submit'>{}{fields}</x></query>",
            field("FORM_TYPE", "urn:xmpp:mam:2")
        )
    }

    #[test]
    fn xep_0313_example_with_and_time_window() {
        // XEP-0313 §4.1.1 and §4.1.2 examples.
        let q = parse(&form(&format!(
            "{}{}{}",
            field("with", "juliet@capulet.lit"),
            field("start", "2010-06-07T00:00:00Z"),
            field("end", "2010-07-07T13:23:54Z")
        )))
        .unwrap();
        assert_eq!(q.query_id.as_deref(), Some("f27"));
        assert_eq!(
            q.with,
            Some(WithFilter {
                bare: "juliet@capulet.lit".into(),
                resource: None
            })
        );
        assert_eq!(q.start, Some(1_275_868_800_000_000));
        assert_eq!(q.end, Some(1_278_509_034_000_000));
    }

    #[test]
    fn a_full_jid_in_with_keeps_its_resource() {
        let q = parse(&form(&field("with", "Juliet@capulet.lit/balcony"))).unwrap();
        assert_eq!(
            q.with,
            Some(WithFilter {
                bare: "juliet@capulet.lit".into(),
                resource: Some("balcony".into())
            })
        );
    }

    #[test]
    fn xep_0059_paging_examples() {
        let q = parse(
            "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><max>10</max><after>09af3-cc343-b409f</after></set></query>",
        )
        .unwrap();
        assert_eq!(q.rsm.max, Some(10));
        assert_eq!(q.rsm.after.as_deref(), Some("09af3-cc343-b409f"));
        let q = parse(
            "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><max>10</max><before/></set></query>",
        )
        .unwrap();
        assert_eq!(q.rsm.before, Some(RsmBefore::LastPage));
    }

    #[test]
    fn an_unknown_field_is_feature_not_implemented() {
        let err = parse(&form(&field("full-text-search", "hello"))).unwrap_err();
        assert_eq!(err.to_xmpp().condition, "feature-not-implemented");
        assert_eq!(err.to_string(), "Unknown field 'full-text-search'");
    }

    #[test]
    fn a_wrong_or_missing_form_type_is_bad_request() {
        let wrong = "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:1</value></field></x></query>";
        let err = parse(wrong).unwrap_err();
        assert_eq!(err.to_xmpp().condition, "bad-request");
        assert_eq!(
            err.to_string(),
            "Unexpected FORM_TYPE 'urn:xmpp:mam:1', expected 'urn:xmpp:mam:2'"
        );
        let missing =
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'/></query>";
        assert_eq!(parse(missing).unwrap_err().to_string(), "Missing FORM_TYPE");
    }

    #[test]
    fn malformed_dates_jids_and_max_are_bad_request() {
        for fields in [
            field("start", "yesterday"),
            field("end", "2010-13-45T00:00:00Z"),
            field("with", "not a jid"),
        ] {
            let err = parse(&form(&fields)).unwrap_err();
            assert_eq!(err.to_xmpp().condition, "bad-request", "{fields}");
        }
        let err = parse(
            "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><max>-1</max></set></query>",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "Invalid RSM max: -1");
    }

    #[test]
    fn duplicated_fields_are_bad_request() {
        let err = parse(&form(&format!(
            "{}{}",
            field("with", "a@b.c"),
            field("with", "d@e.f")
        )))
        .unwrap_err();
        assert_eq!(err.to_string(), "Duplicate field 'with'");
    }

    #[test]
    fn too_many_ids_is_policy_violation() {
        let values: String = (0..=MAX_IDS)
            .map(|i| format!("<value>{i}</value>"))
            .collect();
        let err = parse(&form(&format!("<field var='ids'>{values}</field>"))).unwrap_err();
        assert_eq!(err.to_xmpp().condition, "policy-violation");
    }

    #[test]
    fn page_size_defaults_to_20_and_is_capped_by_max_results() {
        let cfg = config();
        assert_eq!(Query::default().plan(&cfg).page_size, 20);
        let mut q = Query::default();
        q.rsm.max = Some(usize::MAX);
        let plan = q.plan(&cfg);
        assert_eq!(plan.page_size, 50);
        assert_eq!(plan.find.limit, 51);
    }

    #[test]
    fn huge_max_is_capped_not_rejected() {
        let q = parse(
            "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><max>99999999999999999999999</max></set></query>",
        )
        .unwrap();
        assert_eq!(q.plan(&config()).page_size, 50);
    }

    fn msg(id: &str) -> ArchivedMessage {
        ArchivedMessage {
            id: id.into(),
            when: 0,
            with_bare: "romeo@montague.lit".into(),
            with_resource: None,
            xml: "<message><body>x</body></message>".into(),
        }
    }

    fn ids(a: &QueryAnswer) -> Vec<&str> {
        a.items.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn a_full_page_is_not_complete_and_drops_the_probe_item() {
        let mut q = Query::default();
        q.rsm.max = Some(2);
        let plan = q.plan(&config());
        let a = answer(
            &plan,
            Page {
                items: vec![msg("a"), msg("b"), msg("c")],
                total: Some(7),
            },
        );
        assert_eq!(ids(&a), ["a", "b"]);
        assert_eq!(a.fin.attr("complete"), None);
        assert_eq!(
            crate::stanza::to_xml(&a.fin),
            "<fin xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><first>a</first><last>b</last><count>7</count></set></fin>"
        );
    }

    #[test]
    fn a_reverse_page_is_delivered_oldest_first_and_flip_page_reverses_it() {
        let mut q = Query::default();
        q.rsm.max = Some(2);
        q.rsm.before = Some(RsmBefore::LastPage);
        let plan = q.plan(&config());
        let newest_first = Page {
            items: vec![msg("z"), msg("y")],
            total: None,
        };
        let a = answer(&plan, newest_first.clone());
        assert_eq!(ids(&a), ["y", "z"]);
        assert_eq!(a.fin.attr("complete"), Some("true"));
        q.flip_page = true;
        let a = answer(&q.plan(&config()), newest_first);
        assert_eq!(ids(&a), ["z", "y"]);
        // first/last still name the oldest and newest of the page.
        let set = a.fin.get_child("set", Some(ns::RSM)).unwrap();
        assert_eq!(set.get_child_text("first", None).as_deref(), Some("y"));
        assert_eq!(set.get_child_text("last", None).as_deref(), Some("z"));
    }

    #[test]
    fn result_wraps_the_stored_message_as_xep_0313_shows() {
        let mut m = msg("28482-98726-73623");
        m.when = 1_278_713_305_000_000;
        let r = result_element(Some("f27"), &m).unwrap();
        assert_eq!(
            crate::stanza::to_xml(&r),
            "<result xmlns='urn:xmpp:mam:2' queryid='f27' id='28482-98726-73623'><forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2010-07-09T22:08:25Z'/><message xmlns='jabber:client'><body>x</body></message></forwarded></result>"
        );
    }
}
