//! `prosodyctl mod_mam export`: one owner's archive, oldest first, as XEP-0227-style
//! XML (`<server-data><host><user><archive>` holding MAM `<result>`s, written by the
//! query model's one writer of the forwarded form) or as JSON lines.

use std::io::Write;

use super::command::ExportFormat;
use super::AdminError;
use crate::query::{open_forwarded, CLOSE_FORWARDED};
use crate::stanza::push_wire_escaped;
use crate::store::{ArchiveStore, FindRequest, Owner};
use crate::time::format_datetime;

/// How many messages one export read fetches.
const EXPORT_PAGE: usize = 500;

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes the owner's whole archive, oldest first, page by page (each page its own
/// read transaction). Returns how many messages it wrote.
pub fn export(
    store: &mut dyn ArchiveStore,
    owner: &Owner,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<u64, AdminError> {
    if format == ExportFormat::Xml {
        let mut head = String::from(
            "<?xml version='1.0' encoding='UTF-8'?>\n<server-data xmlns='urn:xmpp:pie:0'>\n<host jid='",
        );
        push_wire_escaped(&owner.host, &mut head);
        head.push_str("'>\n<user name='");
        push_wire_escaped(&owner.user, &mut head);
        head.push_str("'>\n<archive xmlns='urn:xmpp:mam:2'>\n");
        out.write_all(head.as_bytes())?;
    }
    let mut line = String::new();
    let mut after: Option<String> = None;
    let mut count = 0;
    loop {
        let req = FindRequest {
            after: after.iter().cloned().collect(),
            limit: EXPORT_PAGE,
            ..FindRequest::default()
        };
        let page = store.find(owner, &req)?;
        for m in &page.items {
            let stamp = format_datetime(m.when);
            match format {
                ExportFormat::Xml => {
                    line.clear();
                    open_forwarded(&mut line, None, m);
                    line.push_str(&m.xml);
                    line.push_str(CLOSE_FORWARDED);
                    writeln!(out, "{line}")?
                }
                ExportFormat::Jsonl => writeln!(
                    out,
                    "{{\"id\":{},\"timestamp\":{},\"with\":{},\"stanza\":{}}}",
                    json_string(&m.id),
                    json_string(&stamp),
                    json_string(&m.with_bare),
                    json_string(&m.xml)
                )?,
            }
        }
        count += page.items.len() as u64;
        match page.items.last() {
            Some(last) if page.items.len() == EXPORT_PAGE => after = Some(last.id.clone()),
            _ => break,
        }
    }
    if format == ExportFormat::Xml {
        writeln!(out, "</archive>\n</user>\n</host>\n</server-data>")?;
    }
    out.flush()?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::testing::store_with;

    #[test]
    fn export_as_json_lines_escapes_and_keeps_order_across_pages() {
        let mut store = store_with("juliet", 1203);
        let mut out = Vec::new();
        let n = export(
            &mut store,
            &Owner::new("capulet.lit", "juliet"),
            ExportFormat::Jsonl,
            &mut out,
        )
        .expect("export");
        assert_eq!(n, 1203);
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 1203);
        assert_eq!(
            lines[1],
            "{\"id\":\"id1\",\"timestamp\":\"2010-06-07T00:00:01Z\",\"with\":\"romeo@montague.lit\",\
             \"stanza\":\"<message xmlns='jabber:client' to='romeo@montague.lit'><body>\\\"1\\\" &amp; \\\\</body></message>\"}"
        );
        assert!(lines[1202].starts_with("{\"id\":\"id1202\""));
    }

    #[test]
    fn export_as_xml_wraps_results_in_server_data() {
        let mut store = store_with("juliet", 1);
        let mut out = Vec::new();
        export(
            &mut store,
            &Owner::new("capulet.lit", "juliet"),
            ExportFormat::Xml,
            &mut out,
        )
        .expect("export");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "<?xml version='1.0' encoding='UTF-8'?>\n<server-data xmlns='urn:xmpp:pie:0'>\n\
             <host jid='capulet.lit'>\n<user name='juliet'>\n<archive xmlns='urn:xmpp:mam:2'>\n\
             <result xmlns='urn:xmpp:mam:2' id='id0'><forwarded xmlns='urn:xmpp:forward:0'>\
             <delay xmlns='urn:xmpp:delay' stamp='2010-06-07T00:00:00Z'/>\
             <message xmlns='jabber:client' to='romeo@montague.lit'><body>\"0\" &amp; \\</body></message>\
             </forwarded></result>\n</archive>\n</user>\n</host>\n</server-data>\n"
        );
    }
}
