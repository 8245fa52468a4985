//! A deterministic, realistic mix of archived one-to-one messages, for measuring how
//! much room an archive takes (issue 18). Std only: the root crate's measurement test
//! (`tests/storage_measure.rs`) includes this very file, so the compression method is
//! chosen on the corpus the bench reports on.
//!
//! What a year of a real server's archive holds, by count:
//! - 45% plain chat, as modern clients send it (receipt request, chat marker,
//!   origin-id, chat state), bodies mostly short, some long;
//! - 25% OMEMO-encrypted (`eu.siacs.conversations.axolotl`): random base64 keys, IV
//!   and payload, plus the fallback body and the EME hint;
//! - 20% delivery receipts and chat markers (with a store hint, as clients send them
//!   so that they are archived);
//! - 8% links with a preview (OOB URL plus an OpenGraph-style description);
//! - 2% large messages: pasted logs and text of 2 to 8 KB.
//!
//! Ids are random UUIDs and every random byte comes from one seeded generator, so
//! the corpus is the same on every run and machine.

/// An element or a text node, serialised as Prosody does (`tostring(stanza)`) and as
/// its file store writes a preserialised stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element {
        name: String,
        attrs: Vec<(String, String)>,
        children: Vec<Node>,
    },
    Text(String),
}

impl Node {
    fn el(name: &str, attrs: &[(&str, &str)], children: Vec<Node>) -> Node {
        Node::Element {
            name: name.to_owned(),
            attrs: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            children,
        }
    }

    fn text_el(name: &str, attrs: &[(&str, &str)], text: &str) -> Node {
        Node::el(name, attrs, vec![Node::Text(text.to_owned())])
    }

    /// `tostring(stanza)`: single-quoted attributes, XML escapes.
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        self.write_xml(&mut out);
        out
    }

    fn write_xml(&self, out: &mut String) {
        match self {
            Node::Text(t) => escape_into(out, t),
            Node::Element {
                name,
                attrs,
                children,
            } => {
                out.push('<');
                out.push_str(name);
                for (k, v) in attrs {
                    out.push(' ');
                    out.push_str(k);
                    out.push_str("='");
                    escape_into(out, v);
                    out.push('\'');
                }
                if children.is_empty() {
                    out.push_str("/>");
                    return;
                }
                out.push('>');
                for c in children {
                    c.write_xml(out);
                }
                out.push_str("</");
                out.push_str(name);
                out.push('>');
            }
        }
    }

    /// Writes the table `util.serialization` writes for a preserialised stanza
    /// (children first, then `name` and `attr`), indented with tabs from `depth`;
    /// `extra` are more `["key"] = value` fields of the top level.
    pub fn write_lua(&self, out: &mut String, depth: usize, extra: &[(&str, String)]) {
        let pad = "\t".repeat(depth + 1);
        match self {
            Node::Text(t) => out.push_str(&lua_str(t)),
            Node::Element {
                name,
                attrs,
                children,
            } => {
                out.push_str("{\n");
                for c in children {
                    out.push_str(&pad);
                    c.write_lua(out, depth + 1, &[]);
                    out.push_str(";\n");
                }
                out.push_str(&format!("{pad}[\"name\"] = {};\n", lua_str(name)));
                for (k, v) in extra {
                    out.push_str(&format!("{pad}[\"{k}\"] = {v};\n"));
                }
                if attrs.is_empty() {
                    out.push_str(&format!("{pad}[\"attr\"] = {{}};\n"));
                } else {
                    out.push_str(&format!("{pad}[\"attr\"] = {{\n"));
                    for (k, v) in attrs {
                        out.push_str(&format!("{pad}\t[{}] = {};\n", lua_str(k), lua_str(v)));
                    }
                    out.push_str(&format!("{pad}}};\n"));
                }
                out.push_str(&"\t".repeat(depth));
                out.push('}');
            }
        }
    }
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// Which of the corpus's shapes a message has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    Chat,
    Omemo,
    Marker,
    Link,
    Large,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::Chat,
        Shape::Omemo,
        Shape::Marker,
        Shape::Link,
        Shape::Large,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Chat => "plain chat",
            Shape::Omemo => "OMEMO",
            Shape::Marker => "receipt/marker",
            Shape::Link => "link + preview",
            Shape::Large => "large",
        }
    }
}

/// One message of the corpus, with everything each store keeps beside the stanza.
#[derive(Debug, Clone)]
pub struct CorpusMsg {
    pub shape: Shape,
    /// The owner's node part (local account on the corpus's host).
    pub owner: String,
    /// The archive id (stanza-id), 26 characters like the module's.
    pub id: String,
    pub when_us: i64,
    /// The other party's bare JID and, for incoming messages, its resource.
    pub with_bare: String,
    pub with_resource: Option<String>,
    pub stanza: Node,
}

impl CorpusMsg {
    pub fn xml(&self) -> String {
        self.stanza.to_xml()
    }
}

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }

    fn pick<'a>(&mut self, xs: &'a [&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }

    fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        uuid_v4_text(a, b)
    }

    fn base64(&mut self, bytes: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut raw = Vec::with_capacity(bytes);
        while raw.len() < bytes {
            raw.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        raw.truncate(bytes);
        let mut out = String::with_capacity(bytes.div_ceil(3) * 4);
        for chunk in raw.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

const WORDS: &[&str] = &[
    "the", "a", "to", "and", "I", "you", "it", "is", "that", "of", "in", "for", "on", "we", "this",
    "be", "have", "are", "not", "with", "just", "so", "but", "what", "can", "do", "at", "me",
    "was", "will", "my", "if", "no", "yes", "ok", "okay", "thanks", "lol", "tomorrow", "today",
    "later", "meeting", "coffee", "home", "work", "think", "know", "sure", "see", "good", "great",
    "time", "now", "then", "going", "get", "got", "like", "really", "maybe", "still", "need",
    "want", "call", "message", "back", "soon", "train", "dinner", "weekend", "server", "update",
    "photo", "link", "sorry", "haha", "right", "there", "here", "when", "where", "how", "why",
    "who", "about", "from", "they", "would", "could", "should", "one", "two", "minutes", "hour",
    "night", "morning", "again", "😀", "👍", "❤️", "über", "très", "bien", "ja", "nee", "gracias",
];

const TLDS: &[&str] = &[
    "example.org",
    "jabber.example",
    "chat.example.net",
    "xmpp.example",
];
const CLIENTS: &[&str] = &[
    "Conversations",
    "gajim",
    "Dino",
    "Monal",
    "Cheogram",
    "profanity",
];
const SITES: &[&str] = &[
    "https://www.example.com/news/2026/04/",
    "https://video.example.org/watch?v=",
    "https://git.example.net/project/issues/",
    "https://blog.example.org/posts/",
    "https://upload.example.org/file_share/",
];

/// The people an account talks to, each with its devices' resources.
#[derive(Debug, Clone)]
struct Contact {
    bare: String,
    resources: Vec<String>,
    omemo_devices: Vec<u32>,
}

/// The generator: `domain` is the server's host (the owners' domain).
pub struct Corpus {
    rng: Rng,
    domain: String,
    owners: Vec<(String, Vec<String>, Vec<u32>)>,
    contacts: Vec<Contact>,
    clock_us: i64,
    counter: u64,
}

impl Corpus {
    /// `owners` accounts on `domain`, talking to 300 contacts (some local, some on
    /// other servers), messages from `start_us` on, a few seconds to minutes apart.
    pub fn new(seed: u64, domain: &str, owners: usize, start_us: i64) -> Corpus {
        let mut rng = Rng::new(seed);
        let device = |rng: &mut Rng| (rng.next_u64() & 0x7fff_ffff) as u32;
        let resource = |rng: &mut Rng| {
            let client = rng.pick(CLIENTS);
            format!("{client}.{}", &rng.base64(3)[..4].replace(['+', '/'], "x"))
        };
        let owners = (0..owners.max(1))
            .map(|i| {
                let res = (0..rng.range(1, 3)).map(|_| resource(&mut rng)).collect();
                let devs = (0..rng.range(1, 3)).map(|_| device(&mut rng)).collect();
                (format!("user{i}"), res, devs)
            })
            .collect();
        let contacts = (0..300)
            .map(|i| {
                let host = if i % 3 == 0 {
                    domain.to_owned()
                } else {
                    rng.pick(TLDS).to_owned()
                };
                let name = format!(
                    "{}{}",
                    rng.pick(&[
                        "anna", "bob", "chen", "dana", "eli", "fatima", "gus", "hana", "ivan",
                        "juno"
                    ]),
                    i
                );
                Contact {
                    bare: format!("{name}@{host}"),
                    resources: (0..rng.range(1, 3)).map(|_| resource(&mut rng)).collect(),
                    omemo_devices: (0..rng.range(1, 3)).map(|_| device(&mut rng)).collect(),
                }
            })
            .collect();
        Corpus {
            rng,
            domain: domain.to_owned(),
            owners,
            contacts,
            clock_us: start_us,
            counter: 0,
        }
    }

    fn words(&mut self, min_chars: usize) -> String {
        let mut s = String::new();
        while s.len() < min_chars {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(self.rng.pick(WORDS));
        }
        s
    }

    fn words_in(&mut self, lo: usize, hi: usize) -> String {
        let n = self.rng.range(lo, hi);
        self.words(n)
    }

    /// Body length: mostly short, a tail of longer ones (what chat looks like).
    fn chat_body(&mut self) -> String {
        let len = match self.rng.below(100) {
            0..=59 => self.rng.range(2, 40),
            60..=89 => self.rng.range(40, 200),
            _ => self.rng.range(200, 1000),
        };
        let mut body = self.words(len);
        if self.rng.below(4) == 0 {
            body.push(if self.rng.below(2) == 0 { '?' } else { '!' });
        }
        body
    }

    /// The archive id the module would give: 26 characters, mostly time-ordered.
    fn archive_id(&mut self) -> String {
        self.counter += 1;
        format!("{:013x}{:013x}", self.clock_us, self.rng.next_u64() >> 12)
    }

    /// The next message.
    pub fn next_msg(&mut self) -> CorpusMsg {
        self.clock_us += 1_000_000 * self.rng.range(1, 300) as i64;
        let oi = self.rng.below(self.owners.len() as u64) as usize;
        // A few contacts get most of the traffic.
        let ci = if self.rng.below(3) == 0 {
            self.rng.below(self.contacts.len() as u64) as usize
        } else {
            self.rng.below(12) as usize
        };
        let (owner, owner_res, owner_devs) = self.owners[oi].clone();
        let contact = self.contacts[ci].clone();
        let outgoing = self.rng.below(2) == 0;
        let my_res = owner_res[self.rng.below(owner_res.len() as u64) as usize].clone();
        let their_res =
            contact.resources[self.rng.below(contact.resources.len() as u64) as usize].clone();
        let me_full = format!("{owner}@{}/{my_res}", self.domain);
        let them_full = format!("{}/{their_res}", contact.bare);
        let (from, to) = if outgoing {
            (me_full, contact.bare.clone())
        } else {
            (them_full, format!("{owner}@{}", self.domain))
        };
        let shape = match self.rng.below(100) {
            0..=44 => Shape::Chat,
            45..=69 => Shape::Omemo,
            70..=89 => Shape::Marker,
            90..=97 => Shape::Link,
            _ => Shape::Large,
        };
        let stanza_id = self.rng.uuid();
        let mut attrs: Vec<(String, String)> = vec![
            ("xml:lang".into(), "en".into()),
            ("to".into(), to),
            ("from".into(), from),
            ("type".into(), "chat".into()),
            ("id".into(), stanza_id.clone()),
        ];
        let usual = |stanza_id: &str| {
            vec![
                Node::el("request", &[("xmlns", "urn:xmpp:receipts")], vec![]),
                Node::el("markable", &[("xmlns", "urn:xmpp:chat-markers:0")], vec![]),
                Node::el(
                    "origin-id",
                    &[("xmlns", "urn:xmpp:sid:0"), ("id", stanza_id)],
                    vec![],
                ),
                Node::el(
                    "active",
                    &[("xmlns", "http://jabber.org/protocol/chatstates")],
                    vec![],
                ),
            ]
        };
        let children = match shape {
            Shape::Chat => {
                let mut c = vec![Node::text_el("body", &[], &self.chat_body())];
                c.extend(usual(&stanza_id));
                c
            }
            Shape::Omemo => {
                let sid = if outgoing {
                    owner_devs[0]
                } else {
                    contact.omemo_devices[0]
                };
                let mut header = Vec::new();
                let recipients: Vec<u32> = owner_devs
                    .iter()
                    .chain(contact.omemo_devices.iter())
                    .copied()
                    .collect();
                for rid in recipients {
                    let prekey = self.rng.below(20) == 0;
                    let len = if prekey { 290 } else { 124 };
                    let key = self.rng.base64(len);
                    let rid = rid.to_string();
                    let mut a = vec![("rid", rid.as_str())];
                    if prekey {
                        a.push(("prekey", "true"));
                    }
                    header.push(Node::text_el("key", &a, &key));
                }
                header.push(Node::text_el("iv", &[], &self.rng.base64(12)));
                let plain = self.chat_body().len();
                let payload = self.rng.base64(plain + 16);
                let sid = sid.to_string();
                let mut c = vec![
                    Node::el(
                        "encrypted",
                        &[("xmlns", "eu.siacs.conversations.axolotl")],
                        vec![
                            Node::el("header", &[("sid", &sid)], header),
                            Node::text_el("payload", &[], &payload),
                        ],
                    ),
                    Node::el(
                        "encryption",
                        &[
                            ("xmlns", "urn:xmpp:eme:0"),
                            ("namespace", "eu.siacs.conversations.axolotl"),
                        ],
                        vec![],
                    ),
                    Node::text_el(
                        "body",
                        &[],
                        "I sent you an OMEMO encrypted message but your client doesn’t seem to support that. Find more information on https://conversations.im/omemo",
                    ),
                    Node::el("store", &[("xmlns", "urn:xmpp:hints")], vec![]),
                ];
                c.extend(usual(&stanza_id));
                c
            }
            Shape::Marker => {
                let of = self.rng.uuid();
                let el = match self.rng.below(3) {
                    0 => Node::el(
                        "received",
                        &[("xmlns", "urn:xmpp:receipts"), ("id", &of)],
                        vec![],
                    ),
                    1 => Node::el(
                        "displayed",
                        &[("xmlns", "urn:xmpp:chat-markers:0"), ("id", &of)],
                        vec![],
                    ),
                    _ => Node::el(
                        "received",
                        &[("xmlns", "urn:xmpp:chat-markers:0"), ("id", &of)],
                        vec![],
                    ),
                };
                attrs.retain(|(k, _)| k != "xml:lang");
                vec![
                    el,
                    Node::el("store", &[("xmlns", "urn:xmpp:hints")], vec![]),
                ]
            }
            Shape::Link => {
                let url = format!(
                    "{}{}",
                    self.rng.pick(SITES),
                    self.rng.base64(9).replace(['+', '/'], "-")
                );
                let title = self.words_in(20, 70);
                let desc = self.words_in(60, 250);
                let mut body = String::new();
                if self.rng.below(2) == 0 {
                    body.push_str(&self.words_in(5, 40));
                    body.push(' ');
                }
                body.push_str(&url);
                let mut c = vec![
                    Node::text_el("body", &[], &body),
                    Node::el(
                        "x",
                        &[("xmlns", "jabber:x:oob")],
                        vec![Node::text_el("url", &[], &url)],
                    ),
                    Node::el(
                        "Description",
                        &[
                            ("xmlns", "http://www.w3.org/1999/02/22-rdf-syntax-ns#"),
                            ("xmlns:og", "https://ogp.me/ns#"),
                            ("about", &url),
                        ],
                        vec![
                            Node::text_el("og:title", &[], &title),
                            Node::text_el("og:description", &[], &desc),
                            Node::text_el("og:url", &[], &url),
                        ],
                    ),
                ];
                c.extend(usual(&stanza_id));
                c
            }
            Shape::Large => {
                let target = self.rng.range(2000, 8000);
                let mut body = String::new();
                let log_like = self.rng.below(2) == 0;
                let mut line = 0u64;
                while body.len() < target {
                    line += 1;
                    if log_like {
                        body.push_str(&format!(
                            "2026-04-{:02} {:02}:{:02}:{:02} {} [{}] {}\n",
                            1 + self.rng.below(28),
                            self.rng.below(24),
                            self.rng.below(60),
                            self.rng.below(60),
                            ["info", "warn", "debug", "error"][self.rng.below(4) as usize],
                            ["c2s", "s2s", "mod_mam", "storage", "http"]
                                [self.rng.below(5) as usize],
                            self.words_in(20, 90)
                        ));
                    } else {
                        body.push_str(&self.words_in(100, 400));
                        body.push_str(if line.is_multiple_of(3) { "\n\n" } else { ". " });
                    }
                }
                let mut c = vec![Node::text_el("body", &[], &body)];
                c.extend(usual(&stanza_id));
                c
            }
        };
        let stanza = Node::Element {
            name: "message".into(),
            attrs,
            children,
        };
        let (with_bare, with_resource) = if outgoing {
            (contact.bare.clone(), None)
        } else {
            (contact.bare.clone(), Some(their_res))
        };
        CorpusMsg {
            shape,
            owner,
            id: self.archive_id(),
            when_us: self.clock_us,
            with_bare,
            with_resource,
            stanza,
        }
    }

    /// The next `n` messages.
    pub fn take(&mut self, n: usize) -> Vec<CorpusMsg> {
        (0..n).map(|_| self.next_msg()).collect()
    }
}

/// A version-4 UUID's text from 128 bits (the version and variant bits set), as
/// `util.uuid` writes them.
pub fn uuid_v4_text(a: u64, b: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// A Lua string literal as `util.serialization` writes it (`%q`-like).
pub fn lua_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}
