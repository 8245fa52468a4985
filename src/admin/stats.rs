//! `prosodyctl mod_mam stats`: per-owner counts, sizes and date ranges.

use super::{owner_nouns, AdminError};
use crate::config::{self, Owners};
use crate::store::ArchiveStore;
use crate::time::format_datetime;

/// `1.5 KiB`, `12.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The `stats` report for one host: per user, or per room on a MUC component.
pub fn stats_report(
    store: &mut dyn ArchiveStore,
    host: &str,
    database: &str,
    owners: Owners,
) -> Result<String, AdminError> {
    let (one, many) = owner_nouns(owners);
    let rooms = owners == Owners::Rooms;
    let owners = store.owner_stats(host)?;
    // A room's joins and leaves (`muc_log_presences`) are listed on a line of their
    // own (`room<presences`) and counted apart from the rooms and their messages.
    let is_presences = |user: &str| rooms && config::room_of_presences_user(user).is_some();
    let (mut archives, mut messages, mut presences) = (0, 0, 0);
    for o in &owners {
        if is_presences(&o.user) {
            presences += o.messages;
        } else {
            archives += 1;
            messages += o.messages;
        }
    }
    let bytes: u64 = owners.iter().map(|o| o.bytes).sum();
    let db = match store.database_bytes()? {
        Some(b) => format!("{database} ({}, all hosts)", human_bytes(b)),
        None => database.to_owned(),
    };
    let presences = match presences {
        0 => String::new(),
        n => format!(", {n} joins and leaves"),
    };
    let mut out = format!(
        "host {host}: {archives} {many}, {messages} messages{presences}, {} of stanzas; database {db}\n",
        human_bytes(bytes)
    );
    if !owners.is_empty() {
        let width = owners
            .iter()
            .map(|o| o.user.len())
            .max()
            .unwrap_or(4)
            .max(4);
        out.push_str(&format!(
            "  {:<width$}  {:>9}  {:>10}  {:<27}  {}\n",
            one, "messages", "size", "oldest", "newest"
        ));
        for o in &owners {
            out.push_str(&format!(
                "  {:<width$}  {:>9}  {:>10}  {:<27}  {}\n",
                o.user,
                o.messages,
                human_bytes(o.bytes),
                format_datetime(o.oldest),
                format_datetime(o.newest)
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::testing::store_with;
    use crate::store::{ArchivedMessage, Owner};

    /// The report for capulet.lit as a MUC component, and its lines.
    fn room_report(store: &mut dyn ArchiveStore) -> (String, Vec<String>) {
        let report =
            stats_report(store, "capulet.lit", "/tmp/mam.sqlite", Owners::Rooms).expect("stats");
        let lines = report.lines().map(str::to_owned).collect();
        (report, lines)
    }

    #[test]
    fn stats_report_lists_users_with_counts_and_dates() {
        let mut store = store_with("juliet", 3);
        let report = stats_report(
            &mut store,
            "capulet.lit",
            "/tmp/mam.sqlite",
            Owners::Accounts,
        )
        .expect("stats");
        let lines: Vec<_> = report.lines().collect();
        assert!(
            lines[0].starts_with("host capulet.lit: 1 users, 3 messages, "),
            "{report}"
        );
        assert!(lines[2].contains("juliet"), "{report}");
        assert!(
            lines[2].contains("2010-06-07T00:00:00Z") && lines[2].contains("2010-06-07T00:00:02Z"),
            "{report}"
        );
        assert_eq!(human_bytes(1536), "1.5 KiB");
        let (report, lines) = room_report(&mut store);
        assert!(
            lines[0].starts_with("host capulet.lit: 1 rooms, 3 messages, "),
            "{report}"
        );
        assert!(lines[1].starts_with("  room "), "{report}");
        assert_eq!(human_bytes(10), "10 B");
        // A room's joins and leaves: a line of their own, counted apart.
        let join = ArchivedMessage {
            id: "p1".into(),
            when: 1,
            with_bare: "presence".into(),
            with_resource: Some("romeo".into()),
            xml: "<presence xmlns='jabber:client' from='juliet@capulet.lit/romeo'/>".into(),
        };
        let presences = Owner::new("capulet.lit", "juliet<presences");
        store.append(&presences, &join, None).expect("append");
        let (report, lines) = room_report(&mut store);
        assert!(
            lines[0].starts_with("host capulet.lit: 1 rooms, 3 messages, 1 joins and leaves, "),
            "{report}"
        );
        assert!(lines[3].starts_with("  juliet<presences  "), "{report}");
    }
}
