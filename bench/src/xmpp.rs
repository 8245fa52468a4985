//! A minimal XMPP c2s client: plain TCP on loopback, SASL PLAIN, resource binding,
//! and an incremental stanza reader. Just enough to load a server; no TLS, no
//! stream management, no reconnects.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub const NS_MAM: &str = "urn:xmpp:mam:2";
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
pub const NS_PING: &str = "urn:xmpp:ping";
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";

/// The XMPP domain every benchmark server serves.
pub const DOMAIN: &str = "localhost";
/// The MUC component of the room phases (`Component "rooms.localhost" "muc"`).
pub const MUC_DOMAIN: &str = "rooms.localhost";

/// A parsed stanza (or any element): local name, attributes, children, text.
#[derive(Debug, Clone, Default)]
pub struct Element {
    /// Local name, without a prefix (`stream:features` becomes `features`).
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// Concatenated character data directly inside this element.
    pub text: String,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }
    /// Follows a path of child names, e.g. `find(&["fin", "set", "count"])`.
    pub fn find(&self, path: &[&str]) -> Option<&Element> {
        let mut e = self;
        for p in path {
            e = e.child(p)?;
        }
        Some(e)
    }
}

/// What the reader yields.
#[derive(Debug)]
pub enum Item {
    StreamStart,
    Stanza(Element),
    StreamEnd,
}

fn local_name(raw: &str) -> String {
    match raw.find(':') {
        Some(i) => raw[i + 1..].to_string(),
        None => raw.to_string(),
    }
}

fn element_from(start: &BytesStart<'_>) -> Element {
    let mut e = Element {
        name: local_name(start.name().as_ref()),
        ..Default::default()
    };
    for a in start.attributes().with_checks(false).flatten() {
        let key = a.key.as_ref().to_string();
        let value = a
            .normalized_value(quick_xml::XmlVersion::default())
            .map(|v| v.into_owned())
            .unwrap_or_else(|_| a.value.to_string());
        e.attrs.push((key, value));
    }
    e
}

/// Incremental reader of an XMPP stream: yields each top-level stanza as a tree.
pub struct StanzaReader {
    reader: Reader<BufReader<OwnedReadHalf>>,
    buf: Vec<u8>,
    stack: Vec<Element>,
}

impl StanzaReader {
    fn new(half: OwnedReadHalf) -> Self {
        let mut reader = Reader::from_reader(BufReader::with_capacity(64 * 1024, half));
        // The stream element is never closed and is reopened after SASL.
        reader.config_mut().check_end_names = false;
        reader.config_mut().allow_unmatched_ends = true;
        StanzaReader {
            reader,
            buf: Vec::with_capacity(8192),
            stack: Vec::new(),
        }
    }

    pub async fn next(&mut self) -> Result<Item> {
        loop {
            self.buf.clear();
            let ev = self
                .reader
                .read_event_into_async(&mut self.buf)
                .await
                .context("reading XML from the server")?;
            match ev {
                Event::Start(s) => {
                    let e = element_from(&s);
                    if self.stack.is_empty() && e.name == "stream" {
                        return Ok(Item::StreamStart);
                    }
                    self.stack.push(e);
                }
                Event::Empty(s) => {
                    let e = element_from(&s);
                    match self.stack.last_mut() {
                        Some(parent) => parent.children.push(e),
                        None => return Ok(Item::Stanza(e)),
                    }
                }
                Event::End(_) => match self.stack.pop() {
                    None => return Ok(Item::StreamEnd),
                    Some(e) => match self.stack.last_mut() {
                        Some(parent) => parent.children.push(e),
                        None => return Ok(Item::Stanza(e)),
                    },
                },
                Event::Text(t) => {
                    if let Some(top) = self.stack.last_mut() {
                        top.text.push_str(&t.xml10_content());
                    }
                }
                Event::GeneralRef(r) => {
                    if let Some(top) = self.stack.last_mut() {
                        let name = r.into_inner();
                        let s = match name.as_ref() {
                            "amp" => "&",
                            "lt" => "<",
                            "gt" => ">",
                            "quot" => "\"",
                            "apos" => "'",
                            _ => "",
                        };
                        top.text.push_str(s);
                    }
                }
                Event::CData(c) => {
                    if let Some(top) = self.stack.last_mut() {
                        top.text.push_str(&c);
                    }
                }
                Event::Eof => bail!("server closed the connection"),
                _ => {}
            }
        }
    }

    /// Reads stanzas until one matches, failing after `timeout`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Element) -> bool,
    ) -> Result<Element> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let item = tokio::time::timeout_at(deadline, self.next())
                .await
                .context("timed out waiting for a stanza")??;
            match item {
                Item::Stanza(e) if pred(&e) => return Ok(e),
                Item::StreamEnd => bail!("server closed the stream"),
                _ => {}
            }
        }
    }
}

pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '\'' => o.push_str("&apos;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

const STREAM_OPEN: &str =
    "<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' \
     xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

/// A logged-in session, split into its two halves so that reading and writing can run
/// in different tasks.
pub struct Session {
    pub reader: StanzaReader,
    pub writer: OwnedWriteHalf,
}

/// Connects, authenticates with SASL PLAIN, binds `resource`, opens the session and
/// sends initial presence.
pub async fn login(port: u16, user: &str, password: &str, resource: &str) -> Result<Session> {
    let t = Duration::from_secs(30);
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut reader = StanzaReader::new(r);
    w.write_all(STREAM_OPEN.as_bytes()).await?;
    reader
        .wait_for(t, |e| e.name == "features")
        .await
        .context("stream features")?;
    let creds = base64(format!("\0{user}\0{password}").as_bytes());
    w.write_all(
        format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>")
            .as_bytes(),
    )
    .await?;
    let res = reader
        .wait_for(t, |e| e.name == "success" || e.name == "failure")
        .await?;
    if res.name != "success" {
        bail!(
            "SASL PLAIN failed for {user}: {:?}",
            res.children.first().map(|c| &c.name)
        );
    }
    w.write_all(STREAM_OPEN.as_bytes()).await?;
    reader
        .wait_for(t, |e| e.name == "features")
        .await
        .context("post-auth features")?;
    w.write_all(
        format!(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{}</resource></bind></iq>\
             <iq type='set' id='sess'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq><presence/>",
            escape(resource)
        )
        .as_bytes(),
    )
    .await?;
    let bound = reader
        .wait_for(t, |e| e.name == "iq" && e.attr("id") == Some("bind"))
        .await?;
    if bound.attr("type") != Some("result") {
        bail!("resource binding failed for {user}");
    }
    if bound.find(&["bind", "jid"]).is_none() {
        bail!("no JID in the bind result for {user}");
    }
    reader
        .wait_for(t, |e| e.name == "iq" && e.attr("id") == Some("sess"))
        .await?;
    Ok(Session { reader, writer: w })
}

/// A MAM query: the form fields and RSM parameters the benchmark uses.
#[derive(Debug, Clone, Default)]
pub struct MamQuery {
    /// The archive to ask: `None` is the user's own, `Some(room JID)` a room's.
    pub to: Option<String>,
    pub with: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub ids: Vec<String>,
    pub max: Option<u32>,
    /// `Some("")` is `<before/>` (the newest page); `Some(id)` pages backwards.
    pub before: Option<String>,
    pub after: Option<String>,
}

impl MamQuery {
    pub fn to_xml(&self, iq_id: &str) -> String {
        let to = match &self.to {
            Some(to) => format!(" to='{}'", escape(to)),
            None => String::new(),
        };
        let mut s =
            format!("<iq type='set'{to} id='{iq_id}'><query xmlns='{NS_MAM}' queryid='{iq_id}'>");
        let fields = self.with.is_some()
            || self.start.is_some()
            || self.end.is_some()
            || !self.ids.is_empty();
        if fields {
            s.push_str("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>");
            for (var, v) in [
                ("with", &self.with),
                ("start", &self.start),
                ("end", &self.end),
            ] {
                if let Some(v) = v {
                    s.push_str(&format!(
                        "<field var='{var}'><value>{}</value></field>",
                        escape(v)
                    ));
                }
            }
            if !self.ids.is_empty() {
                s.push_str("<field var='ids'>");
                for id in &self.ids {
                    s.push_str(&format!("<value>{}</value>", escape(id)));
                }
                s.push_str("</field>");
            }
            s.push_str("</x>");
        }
        if self.max.is_some() || self.before.is_some() || self.after.is_some() {
            s.push_str(&format!("<set xmlns='{NS_RSM}'>"));
            if let Some(m) = self.max {
                s.push_str(&format!("<max>{m}</max>"));
            }
            match &self.before {
                Some(b) if b.is_empty() => s.push_str("<before/>"),
                Some(b) => s.push_str(&format!("<before>{}</before>", escape(b))),
                None => {}
            }
            if let Some(a) = &self.after {
                s.push_str(&format!("<after>{}</after>", escape(a)));
            }
            s.push_str("</set>");
        }
        s.push_str("</query></iq>");
        s
    }
}

/// The outcome of one MAM query as a client sees it.
#[derive(Debug, Clone, Default)]
pub struct MamResult {
    pub results: usize,
    pub count: Option<u64>,
    pub error: Option<String>,
}

impl Session {
    pub async fn send(&mut self, xml: &str) -> Result<()> {
        self.writer
            .write_all(xml.as_bytes())
            .await
            .context("writing to the server")
    }

    /// Runs one query and waits for its `<fin/>` (or error), counting the results.
    pub async fn mam(&mut self, q: &MamQuery, iq_id: &str, timeout: Duration) -> Result<MamResult> {
        self.send(&q.to_xml(iq_id)).await?;
        let mut out = MamResult::default();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let item = tokio::time::timeout_at(deadline, self.reader.next())
                .await
                .with_context(|| format!("MAM query {iq_id} timed out after {timeout:?}"))??;
            let e = match item {
                Item::Stanza(e) => e,
                Item::StreamEnd => bail!("stream closed during a MAM query"),
                Item::StreamStart => continue,
            };
            if e.name == "message"
                && e.child("result")
                    .is_some_and(|r| r.attr("queryid") == Some(iq_id))
            {
                out.results += 1;
            } else if e.name == "iq" && e.attr("id") == Some(iq_id) {
                if e.attr("type") == Some("error") {
                    let cond = e
                        .child("error")
                        .and_then(|er| er.children.first())
                        .map(|c| c.name.clone())
                        .unwrap_or_else(|| "unknown".into());
                    out.error = Some(cond);
                } else {
                    out.count = e
                        .find(&["fin", "set", "count"])
                        .and_then(|c| c.text.trim().parse().ok());
                }
                return Ok(out);
            }
        }
    }

    /// One XMPP ping to the server; returns once the reply arrives.
    pub async fn ping(&mut self, iq_id: &str, timeout: Duration) -> Result<()> {
        self.send(&format!(
            "<iq type='get' to='{DOMAIN}' id='{iq_id}'><ping xmlns='{NS_PING}'/></iq>"
        ))
        .await?;
        self.reader
            .wait_for(timeout, |e| e.name == "iq" && e.attr("id") == Some(iq_id))
            .await?;
        Ok(())
    }

    /// Joins `room` (a bare room JID) as `nick`, asking for `history` messages
    /// (`<history maxstanzas/>`), and waits for the room's subject, which Prosody sends
    /// last, after the occupants' presences and the history. Returns the number of
    /// history messages (groupchat messages with a `<delay/>`) that came before it.
    pub async fn join_room(
        &mut self,
        room: &str,
        nick: &str,
        history: u32,
        timeout: Duration,
    ) -> Result<usize> {
        self.send(&format!(
            "<presence to='{}/{}'><x xmlns='{NS_MUC}'><history maxstanzas='{history}'/></x></presence>",
            escape(room),
            escape(nick)
        ))
        .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = 0;
        loop {
            let item = tokio::time::timeout_at(deadline, self.reader.next())
                .await
                .with_context(|| {
                    format!("joining {room} as {nick}: no subject within {timeout:?}")
                })??;
            let e = match item {
                Item::Stanza(e) => e,
                Item::StreamEnd => bail!("stream closed while joining {room}"),
                Item::StreamStart => continue,
            };
            let from_room = e.attr("from").is_some_and(|f| {
                f == room || f.strip_prefix(room).is_some_and(|r| r.starts_with('/'))
            });
            if !from_room {
                continue;
            }
            if e.name == "presence" && e.attr("type") == Some("error") {
                let cond = e
                    .child("error")
                    .and_then(|er| er.children.first())
                    .map(|c| c.name.clone())
                    .unwrap_or_else(|| "unknown".into());
                bail!("joining {room} as {nick} failed: {cond}");
            }
            if e.name != "message" || e.attr("type") != Some("groupchat") {
                continue;
            }
            if e.child("subject").is_some() && e.child("body").is_none() {
                return Ok(got);
            }
            if e.child("delay").is_some() {
                got += 1;
            }
        }
    }

    /// Leaves `room` and waits for the room's unavailable presence to this session
    /// (status 110, self-presence).
    pub async fn leave_room(&mut self, room: &str, nick: &str, timeout: Duration) -> Result<()> {
        let me = format!("{room}/{nick}");
        self.send(&format!(
            "<presence to='{}' type='unavailable'/>",
            escape(&me)
        ))
        .await?;
        self.reader
            .wait_for(timeout, |e| {
                e.name == "presence"
                    && e.attr("type") == Some("unavailable")
                    && e.attr("from") == Some(me.as_str())
            })
            .await
            .with_context(|| format!("leaving {room}"))?;
        Ok(())
    }

    pub async fn close(mut self) {
        let _ = self.writer.write_all(b"</stream:stream>").await;
        let _ = self.writer.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"\0u\0p"), "AHUAcA==");
    }

    #[test]
    fn newest_page_query_has_an_empty_before() {
        let q = MamQuery {
            max: Some(50),
            before: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(
            q.to_xml("q1"),
            "<iq type='set' id='q1'><query xmlns='urn:xmpp:mam:2' queryid='q1'>\
             <set xmlns='http://jabber.org/protocol/rsm'><max>50</max><before/></set></query></iq>"
        );
    }

    #[test]
    fn a_room_query_is_addressed_to_the_room() {
        let q = MamQuery {
            to: Some("room1@rooms.localhost".into()),
            max: Some(50),
            before: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(
            q.to_xml("q2"),
            "<iq type='set' to='room1@rooms.localhost' id='q2'><query xmlns='urn:xmpp:mam:2' queryid='q2'>\
             <set xmlns='http://jabber.org/protocol/rsm'><max>50</max><before/></set></query></iq>"
        );
    }
}
