//! Results: the JSON document (with ratios) and its markdown rendering.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::phases::{MessagingResult, QueryResult, StallResult, SHAPES};
use crate::rawsqlite::RawResult;
use crate::stats::Summary;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Populated {
    pub owner: String,
    pub size: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExpiryResult {
    pub stall: StallResult,
    pub messages_before: u64,
    pub messages_after: u64,
    pub how: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigResult {
    pub config: String,
    /// "ran", or why not.
    pub status: String,
    pub populated: Vec<Populated>,
    /// Archive sizes not measured, and why.
    pub skipped: Vec<String>,
    pub throughput: Option<MessagingResult>,
    /// The closed loop again after pre-population (half as long).
    #[serde(default)]
    pub throughput_populated: Option<MessagingResult>,
    /// The open loop at the high rate (`--open-rate`, at most half of saturation).
    pub open_loop: Option<MessagingResult>,
    /// The open loop at the low rate (`--open-rate-low`), right after the high one;
    /// absent from runs before issue 16.
    #[serde(default)]
    pub open_loop_low: Option<MessagingResult>,
    /// Closed-loop msgs/s of each interleaved round (after every configuration ran).
    #[serde(default)]
    pub throughput_rounds: Vec<f64>,
    pub idle_ping: Option<Summary>,
    pub queries: Vec<QueryResult>,
    pub stall_queries: Option<StallResult>,
    pub expiry: Option<ExpiryResult>,
    /// (phase, KiB) after each phase.
    pub rss_kib: Vec<(String, u64)>,
    pub errors: Vec<String>,
}

impl ConfigResult {
    fn query(&self, size: u64, shape: &str) -> Option<&QueryResult> {
        self.queries
            .iter()
            .find(|q| q.size == size && q.shape == shape && q.error.is_none())
    }
    fn rss(&self, phase: &str) -> Option<u64> {
        self.rss_kib
            .iter()
            .find(|(p, _)| p == phase)
            .map(|(_, v)| *v)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub started: String,
    pub machine: Value,
    pub parameters: Value,
    pub configs: Vec<ConfigResult>,
    pub raw_sqlite: Option<RawResult>,
    /// The same physical limit against the run's PostgreSQL cluster.
    #[serde(default)]
    pub raw_postgres: Option<RawResult>,
    /// Bytes on disk per message in every store (issue 18).
    #[serde(default)]
    pub storage_size: Option<crate::storage_size::StorageSizeResult>,
    /// The private PostgreSQL cluster `native-pg` ran on: version and settings.
    #[serde(default)]
    pub postgres: Option<Value>,
    pub ratios: Value,
    pub total_seconds: f64,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Value {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => {
            // Four significant digits: query ratios span 0.0001 to 100.
            let r = a / b;
            let scale = 10f64.powi(3 - r.abs().log10().floor() as i32);
            json!(if r == 0.0 {
                0.0
            } else {
                (r * scale).round() / scale
            })
        }
        _ => Value::Null,
    }
}

/// A ratio for a table cell: four significant digits, or `-` when either side is missing.
fn ratio_text(a: Option<f64>, b: Option<f64>) -> String {
    match ratio(a, b) {
        Value::Number(n) => format!("{n}"),
        _ => "-".into(),
    }
}

/// Each of ours and what it is compared with.
const COMPARISONS: [(&str, &[&str]); 2] = [
    (
        "native",
        &[
            "stock-internal",
            "stock-sql",
            "nomam",
            "nomam-sid",
            "native-nowait",
        ],
    ),
    ("native-pg", &["stock-sql", "nomam", "nomam-sid", "native"]),
];

/// Ratios of ours (`native`, `native-pg`) to other configurations (`"native/stock-sql"`,
/// `"native-pg/nomam"`, ...): throughput, open-loop p99 at both rates, query p50 per size and shape,
/// ping max during queries, RSS after queries.
pub fn ratios(configs: &[ConfigResult], sizes: &[u64]) -> Value {
    let get = |n: &str| configs.iter().find(|c| c.config == n && c.status == "ran");
    let mut out = serde_json::Map::new();
    for (mine, others) in COMPARISONS {
        let Some(ours) = get(mine) else { continue };
        for &other in others {
            let Some(o) = get(other) else { continue };
            out.insert(format!("{mine}/{other}"), ratios_of(ours, o, sizes));
        }
    }
    if out.is_empty() {
        return json!({ "note": "neither native nor native-pg ran; no ratios" });
    }
    Value::Object(out)
}

fn ratios_of(ours: &ConfigResult, o: &ConfigResult, sizes: &[u64]) -> Value {
    let mut q = serde_json::Map::new();
    for &size in sizes {
        for shape in SHAPES {
            let r = ratio(
                ours.query(size, shape).map(|x| x.latency.p50_ms),
                o.query(size, shape).map(|x| x.latency.p50_ms),
            );
            if !r.is_null() {
                q.insert(format!("{size}/{shape}"), r);
            }
        }
    }
    let rate = |c: &ConfigResult| c.throughput.as_ref().map(|t| t.delivered_per_s);
    let rate_populated =
        |c: &ConfigResult| c.throughput_populated.as_ref().map(|t| t.delivered_per_s);
    json!({
        "throughput_msgs_per_s": ratio(rate(ours), rate(o)),
        "throughput_populated_msgs_per_s": ratio(rate_populated(ours), rate_populated(o)),
        "throughput_rounds_median_msgs_per_s": ratio(median(&ours.throughput_rounds), median(&o.throughput_rounds)),
        "closed_loop_latency_p50": ratio(ours.throughput.as_ref().map(|t| t.latency.p50_ms), o.throughput.as_ref().map(|t| t.latency.p50_ms)),
        "open_loop_latency_p99": ratio(ours.open_loop.as_ref().map(|t| t.latency.p99_ms), o.open_loop.as_ref().map(|t| t.latency.p99_ms)),
        "open_loop_low_latency_p99": ratio(ours.open_loop_low.as_ref().map(|t| t.latency.p99_ms), o.open_loop_low.as_ref().map(|t| t.latency.p99_ms)),
        "query_p50": Value::Object(q),
        "ping_max_during_queries": ratio(ours.stall_queries.as_ref().map(|s| s.ping.max_ms), o.stall_queries.as_ref().map(|s| s.ping.max_ms)),
        "rss_after_queries": ratio(ours.rss("queries").map(|v| v as f64), o.rss("queries").map(|v| v as f64)),
    })
}

/// Server CPU %, with the database server's added in parentheses when it is separate.
fn cpu(t: &MessagingResult) -> String {
    match t.db_cpu_percent {
        Some(db) => format!("{:.0} (+{db:.0} PostgreSQL)", t.server_cpu_percent),
        None => format!("{:.0}", t.server_cpu_percent),
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn size_label(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

pub fn markdown(r: &Report, sizes: &[u64]) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# mam-bench results ({})\n", r.started);
    let _ = writeln!(
        m,
        "Machine: {}. Parameters: `{}`. Total run time {:.0} s.\n",
        r.machine, r.parameters, r.total_seconds
    );
    let _ = writeln!(
        m,
        "Configurations: {}\n",
        r.configs
            .iter()
            .map(|c| format!("`{}` ({})", c.config, c.status))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(pg) = &r.postgres {
        let _ = writeln!(
            m,
            "PostgreSQL (`native-pg`, raw PostgreSQL): {} {}; settings as the server reported them: `{}`. \
             CPU columns: Prosody's, then (+ …) the PostgreSQL processes'. RSS is Prosody's only.\n",
            pg["version"].as_str().unwrap_or("?"),
            pg["note"].as_str().unwrap_or(""),
            pg["settings"]
        );
    }

    let _ = writeln!(
        m,
        "## Archiving throughput (closed loop, until saturation)\n"
    );
    let _ = writeln!(m, "| config | msgs/s delivered | latency p50 ms | p99 ms | server CPU % | client CPU % | archived / expected | undelivered |");
    let _ = writeln!(m, "|---|---|---|---|---|---|---|---|");
    let rows = r.configs.iter().flat_map(|c| {
        [
            (c.config.clone(), c.throughput.as_ref()),
            (
                format!("{} (archives populated)", c.config),
                c.throughput_populated.as_ref(),
            ),
        ]
    });
    for (name, t) in rows {
        if let Some(t) = t {
            let arch = match (t.archived, t.archived_expected) {
                (Some(a), Some(e)) => format!("{a} / {e}"),
                _ => "n/a".into(),
            };
            let _ = writeln!(
                m,
                "| {} | {:.0} | {} | {} | {} | {:.0} | {} | {} |",
                name,
                t.delivered_per_s,
                ms(t.latency.p50_ms),
                ms(t.latency.p99_ms),
                cpu(t),
                t.client_cpu_percent,
                arch,
                t.undelivered
            );
        }
    }
    let _ = writeln!(
        m,
        "\nFirst on an empty store; then again (half as long) after the big archives were pre-populated \
         (for the SQLite and PostgreSQL backends the database then holds every pre-populated archive).\n"
    );
    rounds_table(&mut m, r);
    let _ = writeln!(m, "\n## Delivery latency at a fixed rate (open loop)\n");
    let _ = writeln!(
        m,
        "| config | target msgs/s | achieved msgs/s | p50 ms | p99 ms | max ms | server CPU % |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|---|");
    for c in &r.configs {
        let mut loops: Vec<&MessagingResult> = c.open_loop.iter().chain(&c.open_loop_low).collect();
        loops.sort_by(|a, b| {
            a.target_rate_per_s
                .unwrap_or(0.0)
                .total_cmp(&b.target_rate_per_s.unwrap_or(0.0))
        });
        for t in loops {
            let _ = writeln!(
                m,
                "| {} | {:.0} | {:.0} | {} | {} | {} | {} |",
                c.config,
                t.target_rate_per_s.unwrap_or(0.0),
                t.delivered_per_s,
                ms(t.latency.p50_ms),
                ms(t.latency.p99_ms),
                ms(t.latency.max_ms),
                cpu(t)
            );
        }
    }
    // Runs before issue 16 have the high rate only.
    if r.configs.iter().any(|c| c.open_loop_low.is_some()) {
        let _ = writeln!(
            m,
            "\nEach configuration at the low rate (`--open-rate-low`) and at the high one (`--open-rate`), \
             each at most half of its closed-loop saturation; latency from the intended send time.\n"
        );
    }
    commit_before_delivery(&mut m, r);

    let mam: Vec<&ConfigResult> = r
        .configs
        .iter()
        .filter(|c| c.config != "nomam" && !c.queries.is_empty())
        .collect();
    let _ = writeln!(m, "\n## Query latency, page of 50 (p50 / p99 ms)\n");
    let mut head = String::from("| size | shape |");
    let mut sep = String::from("|---|---|");
    for c in &mam {
        let _ = write!(head, " {} |", c.config);
        sep.push_str("---|");
    }
    let raws: Vec<&RawResult> = r.raw_sqlite.iter().chain(&r.raw_postgres).collect();
    if r.raw_sqlite.is_some() {
        head.push_str(" raw SQLite |");
        sep.push_str("---|");
    }
    if r.raw_postgres.is_some() {
        head.push_str(" raw PostgreSQL |");
        sep.push_str("---|");
    }
    let _ = writeln!(m, "{head}\n{sep}");
    for &size in sizes {
        for shape in SHAPES {
            let _ = write!(m, "| {} | {} |", size_label(size), shape);
            for c in &mam {
                match c
                    .queries
                    .iter()
                    .find(|q| q.size == size && q.shape == shape)
                {
                    Some(q) if q.error.is_some() => {
                        let _ = write!(m, " error: {} |", q.error.as_deref().unwrap_or(""));
                    }
                    Some(q) => {
                        let _ = write!(m, " {} / {} |", ms(q.latency.p50_ms), ms(q.latency.p99_ms));
                    }
                    None => {
                        let _ = write!(m, " skipped |");
                    }
                }
            }
            for raw in &raws {
                match raw
                    .pages
                    .iter()
                    .find(|p| p.size == size && p.shape == shape)
                {
                    Some(p) => {
                        let _ = write!(m, " {} / {} |", ms(p.latency.p50_ms), ms(p.latency.p99_ms));
                    }
                    None => m.push_str(" |"),
                }
            }
            m.push('\n');
        }
    }
    let _ = writeln!(
        m,
        "\nResults returned (last query of each shape; count = RSM `<count/>`):\n"
    );
    for c in &mam {
        let list: Vec<String> = c
            .queries
            .iter()
            .map(|q| {
                format!(
                    "{}/{}: {}{}",
                    size_label(q.size),
                    q.shape,
                    q.results,
                    q.count.map(|n| format!(" (count {n})")).unwrap_or_default()
                )
            })
            .collect();
        let _ = writeln!(m, "- `{}`: {}", c.config, list.join(", "));
    }

    let _ = writeln!(
        m,
        "\n## Event-loop stalls (XMPP ping round trip from another client, ms)\n"
    );
    let _ = writeln!(m, "| config | idle p99 / max | during heavy queries p99 / max (queries done) | during expiry p99 / max | expiry: deleted, seconds |");
    let _ = writeln!(m, "|---|---|---|---|---|");
    for c in &r.configs {
        let idle = c
            .idle_ping
            .as_ref()
            .map(|s| format!("{} / {}", ms(s.p99_ms), ms(s.max_ms)))
            .unwrap_or("n/a".into());
        let q = c
            .stall_queries
            .as_ref()
            .map(|s| {
                format!(
                    "{} / {} ({})",
                    ms(s.ping.p99_ms),
                    ms(s.ping.max_ms),
                    s.work_done
                )
            })
            .unwrap_or("n/a".into());
        let (e, d) = match &c.expiry {
            Some(x) => (
                format!("{} / {}", ms(x.stall.ping.p99_ms), ms(x.stall.ping.max_ms)),
                format!(
                    "{} of {}, {:.1} s{}",
                    x.messages_before.saturating_sub(x.messages_after),
                    x.messages_before,
                    x.stall.duration_s,
                    x.stall
                        .note
                        .as_ref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                ),
            ),
            None => ("n/a".into(), "n/a".into()),
        };
        let _ = writeln!(m, "| {} | {} | {} | {} | {} |", c.config, idle, q, e, d);
    }

    let _ = writeln!(m, "\n## Memory (RSS MiB after each phase)\n");
    let phases = [
        "start",
        "throughput",
        "open-loop",
        "populated",
        "queries",
        "stall",
        "expiry",
    ];
    let _ = writeln!(m, "| config | {} |", phases.join(" | "));
    let _ = writeln!(m, "|---|{}", "---|".repeat(phases.len()));
    for c in &r.configs {
        let cells: Vec<String> = phases
            .iter()
            .map(|p| {
                c.rss(p)
                    .map(|v| format!("{:.0}", v as f64 / 1024.0))
                    .unwrap_or("-".into())
            })
            .collect();
        let _ = writeln!(m, "| {} | {} |", c.config, cells.join(" | "));
    }

    if let Some(raw) = &r.raw_sqlite {
        physical_limit(
            &mut m,
            raw,
            "rusqlite, WAL, synchronous=NORMAL",
            "single-row transactions",
            "raw SQLite",
        );
    }
    if let Some(raw) = &r.raw_postgres {
        physical_limit(
            &mut m,
            raw,
            "postgres crate, the same PostgreSQL cluster and settings",
            "single-message commits (one INSERT with its counter update, autocommit)",
            "raw PostgreSQL",
        );
    }

    native_pg_compared(&mut m, r, sizes);

    if let Some(size) = &r.storage_size {
        crate::storage_size::markdown(&mut m, size);
    }

    let _ = writeln!(
        m,
        "\n## Ratios\n\n```json\n{}\n```",
        serde_json::to_string_pretty(&r.ratios).unwrap_or_default()
    );

    let _ = writeln!(m, "\n## Notes\n");
    for c in &r.configs {
        for s in &c.skipped {
            let _ = writeln!(m, "- `{}`: skipped {}", c.config, s);
        }
        for e in &c.errors {
            let _ = writeln!(m, "- `{}`: error: {}", c.config, e);
        }
        if let Some(x) = &c.expiry {
            let _ = writeln!(m, "- `{}` expiry: {}", c.config, x.how);
        }
        for p in &c.populated {
            let _ = writeln!(
                m,
                "- `{}`: pre-populated {} ({} messages) in {:.1} s",
                c.config, p.owner, p.size, p.seconds
            );
        }
    }
    m
}

fn physical_limit(m: &mut String, raw: &RawResult, how: &str, single: &str, column: &str) {
    let _ = writeln!(
        m,
        "\n## Physical limit ({how}; schema {})\n",
        raw.schema_from
    );
    let _ = writeln!(m, "- {single}: {:.0}/s", raw.single_row_tx_per_s);
    let _ = writeln!(
        m,
        "- batched inserts (1000 per transaction): {:.0} rows/s",
        raw.batch_rows_per_s
    );
    if let Some(s) = raw.expiry_delete_s {
        let _ = writeln!(
            m,
            "- expiry as one DELETE: {} rows in {:.2} s",
            raw.expiry_deleted, s
        );
    }
    let _ = writeln!(m, "- page reads: see the {column} column above");
}

/// `native-pg` against the ceiling, stock on SQLite and ours on SQLite, in one table.
fn native_pg_compared(m: &mut String, r: &Report, sizes: &[u64]) {
    let get = |n: &str| {
        r.configs
            .iter()
            .find(|c| c.config == n && c.status == "ran")
    };
    let Some(pg) = get("native-pg") else { return };
    let others: Vec<&ConfigResult> = ["nomam", "nomam-sid", "stock-sql", "native"]
        .into_iter()
        .filter_map(get)
        .collect();
    if others.is_empty() {
        return;
    }
    let _ = writeln!(
        m,
        "\n## Ours on PostgreSQL compared (`native-pg` ÷ other)\n"
    );
    let mut head = String::from("| measure | native-pg |");
    let mut sep = String::from("|---|---|");
    for o in &others {
        let _ = write!(head, " ÷ {} |", o.config);
        sep.push_str("---|");
    }
    let _ = writeln!(m, "{head}\n{sep}");
    /// A row: its label, the value read from a configuration, and its format.
    type Measure = (
        &'static str,
        fn(&ConfigResult) -> Option<f64>,
        fn(f64) -> String,
    );
    let rows: [Measure; 5] = [
        (
            "msgs/s, closed loop, empty store",
            |c| c.throughput.as_ref().map(|t| t.delivered_per_s),
            |v| format!("{v:.0}"),
        ),
        (
            "msgs/s, closed loop, archives populated",
            |c| c.throughput_populated.as_ref().map(|t| t.delivered_per_s),
            |v| format!("{v:.0}"),
        ),
        (
            "open loop p99 ms",
            |c| c.open_loop.as_ref().map(|t| t.latency.p99_ms),
            ms,
        ),
        (
            "open loop p99 ms, low rate",
            |c| c.open_loop_low.as_ref().map(|t| t.latency.p99_ms),
            ms,
        ),
        (
            "ping max during queries, ms",
            |c| c.stall_queries.as_ref().map(|s| s.ping.max_ms),
            ms,
        ),
    ];
    for (name, f, fmt) in rows {
        let _ = write!(m, "| {name} | {} |", f(pg).map(fmt).unwrap_or("-".into()));
        for o in &others {
            let _ = write!(m, " {} |", ratio_text(f(pg), f(o)));
        }
        m.push('\n');
    }
    for &size in sizes {
        for shape in SHAPES {
            let p50 = |c: &ConfigResult| c.query(size, shape).map(|q| q.latency.p50_ms);
            let _ = write!(
                m,
                "| {} {} p50 ms | {} |",
                size_label(size),
                shape,
                p50(pg).map(ms).unwrap_or("-".into())
            );
            for o in &others {
                let _ = write!(m, " {} |", ratio_text(p50(pg), p50(o)));
            }
            m.push('\n');
        }
    }
    let _ = writeln!(
        m,
        "\nThroughput ratios above 1 mean `native-pg` is faster; latency ratios below 1 mean it is faster."
    );
}

/// Issue 16's bar: with commit before delivery (the default), closed-loop throughput
/// stays within 10% of the opt-out's (the behaviour before it).
const COMMIT_BEFORE_DELIVERY_MIN_RATIO: f64 = 0.9;

/// A latency difference in ms with its sign (`+0.42`, `-0.07`).
fn signed_ms(v: f64) -> String {
    if v < 0.0 {
        format!("-{}", ms(-v))
    } else {
        format!("+{}", ms(v))
    }
}

/// Commit before delivery (issue 16): `native` (the default) against `native-nowait`
/// (`mam_commit_before_delivery = false`), with `nomam-sid` (the ceiling for any
/// XEP-0313 module) for reference. Rendered only when both of ours ran.
fn commit_before_delivery(m: &mut String, r: &Report) {
    let get = |n: &str| {
        r.configs
            .iter()
            .find(|c| c.config == n && c.status == "ran")
    };
    let (Some(native), Some(nowait)) = (get("native"), get("native-nowait")) else {
        return;
    };
    let sid = get("nomam-sid");
    let _ = writeln!(m, "\n## Commit before delivery (issue 16)\n");
    let _ = writeln!(
        m,
        "`native` runs the default, `mam_commit_before_delivery = true`: nothing is sent to a \
         session while an archive write queued before it is uncommitted (the writer commits at \
         once, without its 2 ms linger, and reports each commit). `native-nowait` sets it to \
         `false`, the behaviour before issue 16: delivery at once, commit within the linger.\n"
    );
    let _ = writeln!(
        m,
        "| config | low rate msgs/s | p50 ms | p99 ms | high rate msgs/s | p50 ms | p99 ms | \
         closed loop msgs/s, empty store | interleaved rounds median msgs/s |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|");
    let open_cells = |t: Option<&MessagingResult>| match t {
        Some(t) => format!(
            "{:.0} | {} | {}",
            t.target_rate_per_s.unwrap_or(0.0),
            ms(t.latency.p50_ms),
            ms(t.latency.p99_ms)
        ),
        None => "- | - | -".into(),
    };
    for c in [Some(native), Some(nowait), sid].into_iter().flatten() {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} |",
            c.config,
            open_cells(c.open_loop_low.as_ref()),
            open_cells(c.open_loop.as_ref()),
            c.throughput
                .as_ref()
                .map(|t| format!("{:.0}", t.delivered_per_s))
                .unwrap_or("-".into()),
            median(&c.throughput_rounds)
                .map(|v| format!("{v:.0}"))
                .unwrap_or("-".into())
        );
    }
    m.push('\n');

    // Throughput from the interleaved rounds when both of ours have them (a single
    // closed loop moves ±20% with the shared machine), else from the first closed loop.
    let rounds = |c: &ConfigResult| median(&c.throughput_rounds);
    let first = |c: &ConfigResult| c.throughput.as_ref().map(|t| t.delivered_per_s);
    let from_rounds = rounds(native).is_some() && rounds(nowait).is_some();
    let (basis, rate_native, rate_nowait, rate_sid) = if from_rounds {
        (
            "median of the interleaved rounds",
            rounds(native),
            rounds(nowait),
            sid.and_then(rounds),
        )
    } else {
        (
            "first closed loop: this run has no interleaved rounds, and one run moves ±20%",
            first(native),
            first(nowait),
            sid.and_then(first),
        )
    };
    let bar = match (rate_native, rate_nowait) {
        (Some(a), Some(b)) if from_rounds && b > 0.0 => {
            let met = if a / b >= COMMIT_BEFORE_DELIVERY_MIN_RATIO {
                "met"
            } else {
                "not met"
            };
            format!(" (issue 16 asks for at least {COMMIT_BEFORE_DELIVERY_MIN_RATIO}: {met})")
        }
        _ => String::new(),
    };
    let _ = writeln!(
        m,
        "- native ÷ native-nowait ({basis}): {}{bar}",
        ratio_text(rate_native, rate_nowait)
    );
    let _ = writeln!(
        m,
        "- native ÷ nomam-sid: {}",
        ratio_text(rate_native, rate_sid)
    );
    for (which, ours, before) in [
        (
            "low rate",
            native.open_loop_low.as_ref(),
            nowait.open_loop_low.as_ref(),
        ),
        (
            "high rate",
            native.open_loop.as_ref(),
            nowait.open_loop.as_ref(),
        ),
    ] {
        let (Some(ours), Some(before)) = (ours, before) else {
            continue;
        };
        let (at, at_before) = (
            ours.target_rate_per_s.unwrap_or(0.0),
            before.target_rate_per_s.unwrap_or(0.0),
        );
        // Each runs at most half its own saturation, so the two rates can differ.
        let rates = if (at - at_before).abs() < 0.5 {
            format!("{at:.0} msgs/s")
        } else {
            format!("{at:.0} msgs/s, native-nowait at {at_before:.0}")
        };
        let _ = writeln!(
            m,
            "- added delivery latency, native − native-nowait, {which} ({rates}): p50 {} ms, p99 {} ms",
            signed_ms(ours.latency.p50_ms - before.latency.p50_ms),
            signed_ms(ours.latency.p99_ms - before.latency.p99_ms)
        );
    }
}

/// A log-log SVG chart of `newest`-page p50 latency against archive size, one line per
/// configuration (and raw SQLite).
pub fn svg_chart(r: &Report, sizes: &[u64]) -> String {
    let shape = "newest";
    let mut series: Vec<(String, Vec<(u64, f64)>)> = Vec::new();
    for c in &r.configs {
        let pts: Vec<(u64, f64)> = sizes
            .iter()
            .filter_map(|&s| c.query(s, shape).map(|q| (s, q.latency.p50_ms)))
            .collect();
        if !pts.is_empty() {
            series.push((c.config.clone(), pts));
        }
    }
    if let Some(raw) = &r.raw_sqlite {
        let pts: Vec<(u64, f64)> = sizes
            .iter()
            .filter_map(|&s| {
                raw.pages
                    .iter()
                    .find(|p| p.size == s && p.shape == shape)
                    .map(|p| (s, p.latency.p50_ms))
            })
            .collect();
        series.push(("raw SQLite".into(), pts));
    }
    if let Some(raw) = &r.raw_postgres {
        let pts: Vec<(u64, f64)> = sizes
            .iter()
            .filter_map(|&s| {
                raw.pages
                    .iter()
                    .find(|p| p.size == s && p.shape == shape)
                    .map(|p| (s, p.latency.p50_ms))
            })
            .collect();
        series.push(("raw PostgreSQL".into(), pts));
    }
    let (w, h, l, t, rgt, b) = (640.0, 400.0, 70.0, 30.0, 160.0, 50.0);
    let xs: Vec<f64> = sizes.iter().map(|&s| (s as f64).log10()).collect();
    let (x0, x1) = (
        xs.first().copied().unwrap_or(0.0),
        xs.last()
            .copied()
            .unwrap_or(1.0)
            .max(xs.first().copied().unwrap_or(0.0) + 1.0),
    );
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, v)| v.max(0.001).log10()))
        .collect();
    let y0 = ys
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .floor()
        .min(0.0);
    let y1 = ys
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .ceil()
        .max(y0 + 1.0);
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - rgt);
    let py = |y: f64| h - b - (y - y0) / (y1 - y0) * (h - t - b);
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n\
         <rect width='100%' height='100%' fill='white'/>\n\
         <text x='{l}' y='18'>MAM newest page of 50: p50 latency (ms, log) vs archive size (log)</text>\n"
    );
    let mut e = y0;
    while e <= y1 {
        let y = py(e);
        s.push_str(&format!(
            "<line x1='{l}' y1='{y:.1}' x2='{:.1}' y2='{y:.1}' stroke='#ddd'/><text x='{:.1}' y='{:.1}' text-anchor='end'>{}</text>\n",
            w - rgt,
            l - 6.0,
            y + 4.0,
            10f64.powf(e)
        ));
        e += 1.0;
    }
    for (&sz, &x) in sizes.iter().zip(&xs) {
        s.push_str(&format!(
            "<text x='{:.1}' y='{:.1}' text-anchor='middle'>{}</text>\n",
            px(x),
            h - b + 18.0,
            size_label(sz)
        ));
    }
    for (k, (name, pts)) in series.iter().enumerate() {
        let c = colors[k % colors.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(sz, v)| {
                format!(
                    "{:.1},{:.1}",
                    px((sz as f64).log10()),
                    py(v.max(0.001).log10())
                )
            })
            .collect();
        s.push_str(&format!(
            "<polyline fill='none' stroke='{c}' stroke-width='2' points='{}'/>\n",
            path.join(" ")
        ));
        for p in &path {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            s.push_str(&format!("<circle cx='{x}' cy='{y}' r='3' fill='{c}'/>\n"));
        }
        let ly = t + 20.0 + 18.0 * k as f64;
        s.push_str(&format!(
            "<line x1='{:.1}' y1='{ly:.1}' x2='{:.1}' y2='{ly:.1}' stroke='{c}' stroke-width='2'/><text x='{:.1}' y='{:.1}'>{name}</text>\n",
            w - rgt + 10.0,
            w - rgt + 30.0,
            w - rgt + 36.0,
            ly + 4.0
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// The median of some measurements (`None` when there are none).
fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The interleaved closed-loop rounds: each configuration's median, range, and its
/// median against the two ceilings' medians.
fn rounds_table(m: &mut String, r: &Report) {
    let with_rounds: Vec<&ConfigResult> = r
        .configs
        .iter()
        .filter(|c| !c.throughput_rounds.is_empty())
        .collect();
    if with_rounds.is_empty() {
        return;
    }
    let ceiling = |name: &str| {
        with_rounds
            .iter()
            .find(|c| c.config == name)
            .and_then(|c| median(&c.throughput_rounds))
    };
    let (nomam, nomam_sid) = (ceiling("nomam"), ceiling("nomam-sid"));
    let _ = writeln!(
        m,
        "\n## Archiving throughput, interleaved rounds (closed loop, msgs/s)\n"
    );
    let _ = writeln!(
        m,
        "| config | rounds | median | min | max | median ÷ nomam | median ÷ nomam-sid |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|---|");
    for c in with_rounds.iter().copied() {
        let med = median(&c.throughput_rounds);
        let min = c
            .throughput_rounds
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let max = c
            .throughput_rounds
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            m,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {} | {} |",
            c.config,
            c.throughput_rounds.len(),
            med.unwrap_or(0.0),
            min,
            max,
            ratio_text(med, nomam),
            ratio_text(med, nomam_sid)
        );
    }
    let _ = writeln!(
        m,
        "\nRun after every configuration's own phases: each configuration in turn, round \
         after round, each on the store its own phases left, so that a slow stretch of the \
         shared machine is spread over all of them. Compare these medians for throughput.\n"
    );
}
