//! mam-bench: starts a loopback Prosody in each configuration (no MAM, stock mod_mam on
//! the file store, stock on SQLite, prosody-mam-native on SQLite, also with
//! `mam_commit_before_delivery = false`, and on PostgreSQL) and measures them side by
//! side.
//!
//! Layout:
//! - `xmpp.rs`: the load client (SASL PLAIN, bind, pipelined sends, incremental parsing).
//! - `server.rs`: Prosody configs, users, processes (stopped by PID), `/proc` readings.
//! - `pg.rs`: the run's private PostgreSQL cluster (initdb, start, stop by PID).
//! - `populate.rs`: the fast path that writes big archives straight into each backend.
//! - `phases.rs`: throughput, open loop, query latency, ping stalls, expiry.
//! - `rooms.rs`: the room archive phases (issue 17): a MUC component with stock's or
//!   our `mod_muc_mam`, fan-out, room queries, join history, stalls, expiry.
//! - `rawsqlite.rs`: the physical limit, straight against SQLite.
//! - `rawpg.rs`: the physical limit, straight against the PostgreSQL cluster.
//! - `report.rs`: JSON with ratios, and the markdown table.
//! - `corpus.rs`, `storage_size.rs`: bytes on disk per message of a realistic mixed
//!   corpus in every store (issue 18).
//!
//! See `bench/README.md` for what each phase measures and how to run it.

mod corpus;
mod pg;
mod phases;
mod populate;
mod rawpg;
mod rawsqlite;
mod report;
mod rooms;
mod server;
mod stats;
mod storage_size;
mod xmpp;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use pg::PgCluster;
use phases::{Load, QueryBudget};
use populate::Dataset;
use report::{ConfigResult, ExpiryResult, Populated, Report};
use server::{Expiry, Kind, Server, ServerSpec};

/// Which phases a run has: the personal archives' (mod_mam), the rooms' (mod_muc_mam).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Phases {
    personal: bool,
    rooms: bool,
}

impl Phases {
    fn parse(s: &str) -> Option<Phases> {
        match s {
            "all" => Some(Phases {
                personal: true,
                rooms: true,
            }),
            "personal" => Some(Phases {
                personal: true,
                rooms: false,
            }),
            "rooms" => Some(Phases {
                personal: false,
                rooms: true,
            }),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match (self.personal, self.rooms) {
            (true, true) => "all",
            (true, false) => "personal",
            _ => "rooms",
        }
    }
}

/// Command-line options; every phase is bounded by these.
#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    phases: Phases,
    configs: Vec<Kind>,
    sizes: Vec<u64>,
    pairs: usize,
    window: usize,
    warmup: Duration,
    duration: Duration,
    /// The high open-loop rate, msgs/s (each configuration runs at most half its
    /// closed-loop saturation).
    open_rate: f64,
    /// The low open-loop rate, msgs/s (same cap): a lightly loaded server, whose
    /// commits each carry few messages (issue 16 asks for the latency at both rates).
    open_rate_low: f64,
    open_duration: Duration,
    query_iters: usize,
    query_budget: Duration,
    query_timeout: Duration,
    internal_max: u64,
    stall_duration: Duration,
    expiry: bool,
    expiry_limit: Duration,
    /// Interleaved closed-loop rounds after every configuration has run (0: none).
    rounds: usize,
    round_duration: Duration,
    raw: bool,
    /// Occupants of each live room (one fan-out phase each).
    room_occupants: Vec<usize>,
    room_senders: usize,
    room_window: usize,
    room_duration: Duration,
    plugin_dir: PathBuf,
    /// Where the `prosody` and `prosodyctl` to run are (`None`: the system's, on PATH).
    prosody_bin: Option<PathBuf>,
    out_dir: PathBuf,
    work_dir: PathBuf,
    keep: bool,
    /// Messages of the storage-size phase's corpus (0: no such phase).
    storage_size: usize,
    /// Only the storage-size phase: no server configuration, no physical limit.
    storage_only: bool,
}

const USAGE: &str = "mam-bench [--quick] [--phases all|personal|rooms]
  [--configs nomam,nomam-sid,stock-internal,stock-sql,native,native-nowait,native-plain,native-pg]
  [--sizes 10000,100000,1000000] [--pairs 20] [--window 32] [--duration S] [--warmup S]
  [--open-rate MSGS_PER_S] [--open-rate-low MSGS_PER_S] [--open-duration S]
  [--query-iters N] [--query-budget S]
  [--query-timeout S] [--internal-max N] [--stall-duration S] [--no-expiry]
  [--expiry-limit S] [--rounds N] [--round-duration S] [--no-raw]
  [--room-occupants 20,200] [--room-senders N] [--room-window N] [--room-duration S]
  [--plugin-dir DIR]
  [--prosody-bin DIR] [--out DIR] [--work-dir DIR] [--keep]
  [--storage-size MESSAGES] [--no-storage-size] [--storage-only]
mam-bench --render bench/results/<run>.json   (rewrite that run's .md and .svg)";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn parse_opts() -> Result<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let secs = |s: f64| Duration::from_secs_f64(s);
    let mut o = Opts {
        quick,
        phases: Phases::parse("all").context("phases")?,
        configs: Kind::ALL.to_vec(),
        sizes: if quick {
            vec![1000, 10_000]
        } else {
            vec![10_000, 100_000, 1_000_000]
        },
        pairs: 20,
        window: 32,
        warmup: secs(if quick { 1.0 } else { 2.0 }),
        duration: secs(if quick { 3.0 } else { 10.0 }),
        open_rate: 2000.0,
        open_rate_low: 150.0,
        open_duration: secs(if quick { 3.0 } else { 10.0 }),
        // 200: with 30, the reported p99 was the slowest query, i.e. one hiccup of
        // the machine; shapes slower than the budget allows stop earlier anyway.
        query_iters: if quick { 5 } else { 200 },
        query_budget: secs(if quick { 1.0 } else { 4.0 }),
        query_timeout: secs(120.0),
        internal_max: 100_000,
        stall_duration: secs(if quick { 2.0 } else { 6.0 }),
        expiry: true,
        expiry_limit: secs(if quick { 60.0 } else { 180.0 }),
        rounds: if quick { 0 } else { 5 },
        round_duration: secs(5.0),
        raw: true,
        room_occupants: vec![20, 200],
        room_senders: 4,
        room_window: 8,
        room_duration: secs(if quick { 3.0 } else { 10.0 }),
        plugin_dir: repo_root().join("target/prosody-plugin"),
        prosody_bin: None,
        out_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("results"),
        work_dir: std::env::temp_dir().join(format!("mam-bench-{}", std::process::id())),
        keep: false,
        storage_size: if quick { 20_000 } else { 100_000 },
        storage_only: false,
    };
    let mut configs_given = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--quick" => {}
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--phases" => {
                let v = val()?;
                o.phases = Phases::parse(&v)
                    .with_context(|| format!("--phases {v}: one of all, personal, rooms"))?;
            }
            "--room-occupants" => {
                o.room_occupants = val()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().context("--room-occupants"))
                    .collect::<Result<_>>()?
            }
            "--room-senders" => o.room_senders = val()?.parse()?,
            "--room-window" => o.room_window = val()?.parse()?,
            "--room-duration" => o.room_duration = secs(val()?.parse()?),
            "--configs" => {
                configs_given = true;
                o.configs = val()?
                    .split(',')
                    .map(|s| {
                        Kind::parse(s.trim()).with_context(|| format!("unknown configuration {s}"))
                    })
                    .collect::<Result<_>>()?
            }
            "--sizes" => {
                o.sizes = val()?
                    .split(',')
                    .map(|s| s.trim().parse::<u64>().context("--sizes"))
                    .collect::<Result<_>>()?
            }
            "--pairs" => o.pairs = val()?.parse()?,
            "--window" => o.window = val()?.parse()?,
            "--duration" => o.duration = secs(val()?.parse()?),
            "--warmup" => o.warmup = secs(val()?.parse()?),
            "--open-rate" => o.open_rate = val()?.parse()?,
            "--open-rate-low" => o.open_rate_low = val()?.parse()?,
            "--open-duration" => o.open_duration = secs(val()?.parse()?),
            "--query-iters" => o.query_iters = val()?.parse()?,
            "--query-budget" => o.query_budget = secs(val()?.parse()?),
            "--query-timeout" => o.query_timeout = secs(val()?.parse()?),
            "--internal-max" => o.internal_max = val()?.parse()?,
            "--stall-duration" => o.stall_duration = secs(val()?.parse()?),
            "--no-expiry" => o.expiry = false,
            "--expiry-limit" => o.expiry_limit = secs(val()?.parse()?),
            "--rounds" => o.rounds = val()?.parse()?,
            "--round-duration" => o.round_duration = secs(val()?.parse()?),
            "--no-raw" => o.raw = false,
            "--plugin-dir" => o.plugin_dir = PathBuf::from(val()?),
            "--prosody-bin" => o.prosody_bin = Some(PathBuf::from(val()?)),
            "--out" => o.out_dir = PathBuf::from(val()?),
            "--work-dir" => o.work_dir = PathBuf::from(val()?),
            "--keep" => o.keep = true,
            "--storage-size" => o.storage_size = val()?.parse()?,
            "--no-storage-size" => o.storage_size = 0,
            "--storage-only" => o.storage_only = true,
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if o.storage_only {
        o.configs.clear();
        o.raw = false;
        o.storage_size = o.storage_size.max(1000);
    }
    if o.pairs == 0 || o.window == 0 || o.sizes.is_empty() || o.sizes.iter().any(|&s| s < 100) {
        bail!("--pairs and --window must be positive and every size at least 100");
    }
    if o.room_senders == 0 || o.room_window == 0 || o.room_occupants.contains(&0) {
        bail!("--room-senders, --room-window and every --room-occupants must be positive");
    }
    // Only the configurations with a room variant have room phases.
    if !o.phases.personal && !configs_given {
        o.configs = Kind::ALL
            .into_iter()
            .filter(|&k| rooms::has_rooms(k))
            .collect();
    }
    if !o.phases.personal {
        // The physical limit and the storage-size corpus belong to the personal
        // archives' tables.
        o.raw = false;
        o.storage_size = 0;
    }
    // Each open loop sends one message per pair every pairs ÷ rate seconds.
    let positive = |rate: f64| rate > 0.0 && rate.is_finite();
    if !positive(o.open_rate) || !positive(o.open_rate_low) {
        bail!("--open-rate and --open-rate-low must be positive");
    }
    o.sizes.sort_unstable();
    // Prosody runs in its own directory, where a relative plugin path would name
    // nothing and it would quietly load its own mod_mam instead.
    for dir in [&mut o.plugin_dir, &mut o.work_dir, &mut o.out_dir] {
        *dir = std::path::absolute(&*dir)?;
    }
    if let Some(bin) = &mut o.prosody_bin {
        *bin = std::path::absolute(&*bin)?;
    }
    server::use_prosody_bin(o.prosody_bin.clone());
    Ok(o)
}

fn owner_for(size: u64) -> String {
    format!("a{size}")
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[{:>7.1}s] {}", phases::now_us() as f64 / 1e6, msg.as_ref());
}

/// The data sets this configuration measures, and the sizes it skips (with why).
fn datasets_for(kind: Kind, o: &Opts) -> (Vec<Dataset>, Vec<String>) {
    let mut ds = Vec::new();
    let mut skipped = Vec::new();
    if !kind.runs_archive_phases() {
        return (ds, skipped);
    }
    for &n in &o.sizes {
        if kind == Kind::StockInternal && n > o.internal_max {
            skipped.push(format!(
                "archive size {n}: mod_storage_internal loads and parses the whole {n}-message file on every query \
                 (about 22 s and 1.4 GB per query at 1M on 2 cores), too slow for repeated measurement; raise --internal-max to run it"
            ));
            continue;
        }
        ds.push(Dataset::new(&owner_for(n), n));
    }
    (ds, skipped)
}

/// Runs blocking code that may use the synchronous `postgres` client (which runs its
/// own runtime) from inside the benchmark's async tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The closed loop (`--window` in flight per pair, after `--warmup`) for `measure`.
async fn closed_loop(
    srv: &Server,
    pairs: &mut phases::Pairs,
    o: &Opts,
    measure: Duration,
) -> Result<phases::MessagingResult> {
    phases::messaging(
        srv,
        pairs,
        Load::Closed { window: o.window },
        o.warmup,
        measure,
    )
    .await
}

/// An open loop at `rate_per_s` (after a 500 ms warm-up, for `--open-duration`), then,
/// for MAM configurations, the archive check of everything the pairs had delivered.
async fn open_loop(
    srv: &Server,
    pairs: &mut phases::Pairs,
    kind: Kind,
    o: &Opts,
    rate_per_s: f64,
) -> Result<phases::MessagingResult> {
    log(format!(
        "{}: open loop at {rate_per_s:.0} msgs/s",
        kind.name()
    ));
    let mut ol = phases::messaging(
        srv,
        pairs,
        Load::Open { rate_per_s },
        Duration::from_millis(500),
        o.open_duration,
    )
    .await?;
    if kind.has_mam() {
        ol.archived = Some(phases::archived_count(pairs).await?);
        ol.archived_expected = Some(2 * pairs.delivered_total.iter().sum::<u64>());
    }
    Ok(ol)
}

/// The database `native-pg` archives into, in the run's private cluster.
const NATIVE_PG_DB: &str = "mam_native_pg";

async fn run_config(
    kind: Kind,
    o: &Opts,
    pg: Option<&PgCluster>,
    res: &mut ConfigResult,
) -> Result<ServerSpec> {
    let dir = o.work_dir.join(kind.name());
    let _ = std::fs::remove_dir_all(&dir);
    let pg = if kind == Kind::NativePg {
        Some(pg.context("native-pg needs the PostgreSQL cluster")?)
    } else {
        None
    };
    let mut spec = ServerSpec {
        kind,
        dir: dir.clone(),
        port: server::free_port()?,
        plugin_dir: kind.is_native().then(|| o.plugin_dir.clone()),
        expiry: None,
        log_info: false,
        pg: match pg {
            Some(c) => Some(blocking(|| c.create_database(NATIVE_PG_DB))?),
            None => None,
        },
        muc: None,
    };
    spec.write()?;
    let (datasets, skipped) = datasets_for(kind, o);
    res.skipped = skipped;
    let mut users: Vec<String> = (0..o.pairs)
        .flat_map(|i| [phases::sender_name(i), phases::receiver_name(i)])
        .collect();
    users.push("pinger".into());
    users.extend(datasets.iter().map(|d| d.owner.clone()));
    log(format!(
        "{}: registering {} users",
        kind.name(),
        users.len()
    ));
    spec.register(&users)?;

    // First start, empty archives: the first MAM query makes the backend create its
    // tables / database; then the messaging phases run on an empty store.
    let mut srv = Server::start(&spec)?;
    srv.db_pid = pg.map(|c| c.pid);
    if kind.has_mam() {
        let mut s = xmpp::login(spec.port, "pinger", server::PASSWORD, "prime").await?;
        let r = s
            .mam(
                &xmpp::MamQuery {
                    max: Some(1),
                    ..Default::default()
                },
                "prime",
                Duration::from_secs(30),
            )
            .await?;
        if let Some(e) = r.error {
            bail!(
                "the first MAM query failed ({e}): is mod_mam loaded? see {}",
                spec.log_path().display()
            );
        }
        s.close().await;
    }
    res.idle_ping = Some(phases::idle_ping(spec.port, Duration::from_secs(1)).await?);
    // Idle RSS, once the server is up and has answered a first MAM query.
    res.rss_kib.push(("start".into(), srv.settled_rss_kib()));

    // Throughput: closed loop.
    log(format!(
        "{}: closed loop, {} pairs, {:?}",
        kind.name(),
        o.pairs,
        o.duration
    ));
    let mut pairs = phases::login_pairs(spec.port, o.pairs).await?;
    let mut t = closed_loop(&srv, &mut pairs, o, o.duration).await?;
    if kind.has_mam() {
        t.archived = Some(phases::archived_count(&mut pairs).await?);
        t.archived_expected = Some(2 * pairs.delivered_total.iter().sum::<u64>());
    }
    let saturation = t.delivered_per_s;
    log(format!(
        "{}: {:.0} msgs/s, p50 {:.2} ms",
        kind.name(),
        t.delivered_per_s,
        t.latency.p50_ms
    ));
    res.throughput = Some(t);
    res.rss_kib.push(("throughput".into(), srv.rss_kib()));

    // Open loops at fixed rates below saturation: the high rate, then the low one
    // (a lightly loaded server, whose commits each carry few messages).
    let cap = (saturation * 0.5).max(10.0);
    res.open_loop = Some(open_loop(&srv, &mut pairs, kind, o, o.open_rate.min(cap)).await?);
    res.rss_kib.push(("open-loop".into(), srv.rss_kib()));
    res.open_loop_low = Some(open_loop(&srv, &mut pairs, kind, o, o.open_rate_low.min(cap)).await?);
    let delivered_so_far = pairs.delivered_total.clone();
    pairs.close().await;
    srv.stop()?;
    if !kind.runs_archive_phases() {
        return Ok(spec);
    }

    // Pre-populate through the fast path, server stopped.
    let data = spec.data_path();
    for ds in &datasets {
        log(format!(
            "{}: pre-populating {} with {} messages",
            kind.name(),
            ds.owner,
            ds.n
        ));
        let secs = match kind {
            Kind::StockInternal => populate::populate_internal(&data, ds)?,
            Kind::StockSql => populate::populate_sql(&data.join("prosody.sqlite"), ds)?,
            Kind::Native => populate::populate_native(
                &native_db(&data)?,
                ds,
                true,
                populate::NativeRows::Compressed,
            )?,
            Kind::NativePlain => {
                populate::populate_native(&native_db(&data)?, ds, true, populate::NativeRows::Text)?
            }
            Kind::NativePg => {
                let pg = pg.context("native-pg without a cluster")?;
                blocking(|| {
                    let mut client = pg.client(NATIVE_PG_DB)?;
                    populate::populate_native_pg(&mut client, ds)
                })?
            }
            // No data sets: these stop after the throughput phases.
            Kind::NoMam | Kind::NoMamStanzaId | Kind::NativeNoWait => 0.0,
        };
        res.populated.push(Populated {
            owner: ds.owner.clone(),
            size: ds.n,
            seconds: secs,
        });
    }
    let mut srv = Server::start(&spec)?;
    srv.db_pid = pg.map(|c| c.pid);
    res.rss_kib
        .push(("populated".into(), srv.settled_rss_kib()));
    if kind.is_native() {
        // The module must serve what the fast path wrote: each archive counts exactly
        // its size through MAM before anything else is archived to it.
        let counted = phases::remaining(spec.port, &datasets).await?;
        let expected: u64 = datasets.iter().map(|d| d.n).sum();
        if counted != expected {
            bail!(
                "after pre-population the module counts {counted} messages in the pre-populated archives, expected {expected}"
            );
        }
    }

    // Throughput again, now that the store holds the big archives too (a SQLite file
    // of a million rows behaves differently from an empty one).
    log(format!(
        "{}: closed loop with the archives in place",
        kind.name()
    ));
    let mut pairs = phases::login_pairs(spec.port, o.pairs).await?;
    pairs.delivered_total = delivered_so_far;
    let mut t = closed_loop(&srv, &mut pairs, o, o.duration / 2).await?;
    t.archived = Some(phases::archived_count(&mut pairs).await?);
    t.archived_expected = Some(2 * pairs.delivered_total.iter().sum::<u64>());
    log(format!(
        "{}: {:.0} msgs/s, p50 {:.2} ms",
        kind.name(),
        t.delivered_per_s,
        t.latency.p50_ms
    ));
    res.throughput_populated = Some(t);
    pairs.close().await;

    if kind.has_mam() {
        let budget = QueryBudget {
            max_iters: o.query_iters,
            min_iters: 3,
            per_shape: o.query_budget,
            timeout: o.query_timeout,
        };
        for ds in &datasets {
            log(format!("{}: queries on {} messages", kind.name(), ds.n));
            match phases::query_latency(spec.port, ds, budget).await {
                Ok(q) => res.queries.extend(q),
                Err(e) => res.errors.push(format!("queries at {}: {e:#}", ds.n)),
            }
        }
        res.rss_kib.push(("queries".into(), srv.rss_kib()));
        if let Some(big) = datasets.last() {
            log(format!("{}: ping stall during heavy queries", kind.name()));
            res.stall_queries = Some(
                phases::stall_during_queries(spec.port, big, o.stall_duration, o.query_timeout)
                    .await?,
            );
            res.rss_kib.push(("stall".into(), srv.rss_kib()));
        }
    }
    srv.stop()?;

    if kind.has_mam() && o.expiry && !datasets.is_empty() {
        log(format!("{}: expiry", kind.name()));
        let before: u64 = datasets.iter().map(|d| d.n).sum();
        let how;
        match kind {
            Kind::Native | Kind::NativeNoWait | Kind::NativePg | Kind::NativePlain => {
                spec.expiry = Some(Expiry {
                    expires_after: "1d".into(),
                    cleanup_interval: 1,
                });
                how = "archive_expires_after = \"1d\", archive_cleanup_interval = 1; finished when every pre-populated archive counts 0".into();
            }
            _ => {
                spec.expiry = Some(Expiry {
                    expires_after: "1d".into(),
                    cleanup_interval: 1,
                });
                populate::arm_stock_expiry(
                    &data,
                    &datasets.iter().map(|d| d.owner.clone()).collect::<Vec<_>>(),
                )?;
                how = "archive_expires_after = \"1d\"; stock 0.12.3 ignores archive_cleanup_interval and runs expiry from a daily \
                       mod_cron task, made due at start by writing its last run as 0 in the cron store (and, for the file store, \
                       listing the owners under an old date in archive_cleanup); finished at the \"Deleted N expired messages\" log line"
                    .into();
            }
        }
        spec.log_info = true;
        spec.write()?;
        let srv = Server::start(&spec)?;
        let stall = phases::stall_during_expiry(
            spec.port,
            &phases::Archives::Owners(&datasets),
            &spec.log_path(),
            !kind.is_native(),
            o.expiry_limit,
        )
        .await?;
        let after = phases::remaining(spec.port, &datasets).await?;
        res.rss_kib.push(("expiry".into(), srv.rss_kib()));
        srv.stop()?;
        res.expiry = Some(ExpiryResult {
            stall,
            messages_before: before,
            messages_after: after,
            how,
        });
    }
    // Back to the messaging phases' config, for the interleaved rounds.
    spec.expiry = None;
    spec.log_info = false;
    spec.write()?;
    Ok(spec)
}

/// Interleaved closed-loop rounds: every configuration that ran, one after another,
/// `o.rounds` times, each on the store its own phases left. Run-to-run noise on a
/// shared machine (±20%) moves whole stretches of time; interleaving spreads it over
/// every configuration, so the medians compare better than single runs do.
///
/// The room servers take their turn first in every round: a fan-out
/// in the first live room (`--room-occupants`) for `--round-duration`.
async fn throughput_rounds(
    specs: &[(usize, ServerSpec)],
    room_specs: &[(usize, ServerSpec)],
    room_plan: &rooms::Plan,
    o: &Opts,
    pg_pid: Option<u32>,
    configs: &mut [ConfigResult],
) {
    for round in 1..=o.rounds {
        for (idx, spec) in room_specs {
            let name = spec.kind.name();
            log(format!("round {round}/{}: {name} rooms", o.rounds));
            let r = rooms::fanout_round(spec, room_plan).await;
            let Some(res) = configs[*idx].rooms.as_mut() else {
                continue;
            };
            match r {
                Ok(rate) => {
                    log(format!("round {round}: {name} rooms {rate:.0} room msgs/s"));
                    res.fanout_rounds.push(rate);
                }
                Err(e) => res.errors.push(format!("fan-out round {round}: {e:#}")),
            }
        }
        for (idx, spec) in specs {
            let name = spec.kind.name();
            log(format!("round {round}/{}: {name}", o.rounds));
            let r: Result<(f64, Option<f64>)> = async {
                let mut srv = Server::start(spec)?;
                if spec.kind == Kind::NativePg {
                    srv.db_pid = pg_pid;
                }
                let mut pairs = phases::login_pairs(spec.port, o.pairs).await?;
                let t = closed_loop(&srv, &mut pairs, o, o.round_duration).await?;
                pairs.close().await;
                srv.stop()?;
                Ok((t.delivered_per_s, t.event_loop_us_per_msg))
            }
            .await;
            match r {
                Ok((rate, event_loop)) => {
                    let per_msg = event_loop
                        .map(|us| format!(", event loop {us:.1} µs/msg"))
                        .unwrap_or_default();
                    log(format!("round {round}: {name} {rate:.0} msgs/s{per_msg}"));
                    configs[*idx].throughput_rounds.push(rate);
                    configs[*idx].event_loop_rounds.push(event_loop);
                }
                Err(e) => configs[*idx]
                    .errors
                    .push(format!("throughput round {round}: {e:#}")),
            }
        }
    }
}

/// The native module's database file in a data directory (`mam_archive.sqlite` by
/// default; any `mam_*.sqlite` it created is accepted).
fn native_db(data: &Path) -> Result<PathBuf> {
    let default = data.join("mam_archive.sqlite");
    if default.is_file() {
        return Ok(default);
    }
    for e in std::fs::read_dir(data)? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("mam") && name.ends_with(".sqlite") {
            return Ok(p);
        }
    }
    bail!(
        "the native module did not create mam_archive.sqlite in {}",
        data.display()
    )
}

fn machine() -> serde_json::Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let prosody = server::prosody_version();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    json!({ "cpus": cpus, "cpu": model, "prosody": prosody, "loadavg_at_start": load })
}

async fn run(o: Opts) -> Result<()> {
    let t0 = Instant::now();
    phases::now_us();
    std::fs::create_dir_all(&o.work_dir)?;
    let started = populate::iso8601(populate::now_s());
    let mut configs = Vec::new();
    // The private PostgreSQL cluster, started before the first configuration that
    // needs it and stopped (by PID) when this function returns, whichever way.
    let mut pg: Option<PgCluster> = None;
    let mut pg_failed: Option<String> = None;
    // (index in `configs`, its server spec) of every configuration that ran.
    let mut ran: Vec<(usize, ServerSpec)> = Vec::new();
    // The same for the configurations whose room phases ran (their room servers).
    let mut rooms_ran: Vec<(usize, ServerSpec)> = Vec::new();
    let room_plan = rooms::Plan {
        sizes: o.sizes.clone(),
        internal_max: o.internal_max,
        occupants: o.room_occupants.clone(),
        senders: o.room_senders,
        window: o.room_window,
        warmup: o.warmup,
        duration: o.room_duration,
        budget: QueryBudget {
            max_iters: o.query_iters,
            min_iters: 3,
            per_shape: o.query_budget,
            timeout: o.query_timeout,
        },
        stall_duration: o.stall_duration,
        expiry: o.expiry,
        expiry_limit: o.expiry_limit,
        round_duration: o.round_duration,
        plugin_dir: o.plugin_dir.clone(),
        work_dir: o.work_dir.clone(),
    };
    for &kind in &o.configs {
        let mut res = ConfigResult {
            config: kind.name().into(),
            ..Default::default()
        };
        'personal: {
            if !o.phases.personal {
                res.status = "not run (--phases rooms)".into();
                break 'personal;
            }
            if kind.is_native() {
                if let Err(why) = server::check_plugin_dir(&o.plugin_dir) {
                    eprintln!("mam-bench: skipping `{}`: {why}", kind.name());
                    res.status = format!("skipped: {why}");
                    break 'personal;
                }
            }
            if kind == Kind::NativePg && pg.is_none() {
                if pg_failed.is_none() {
                    log("starting a private PostgreSQL cluster");
                    match blocking(|| PgCluster::start(&o.work_dir.join("pg"))) {
                        Ok(c) => {
                            log(format!("PostgreSQL pid {} on 127.0.0.1:{}", c.pid, c.port));
                            pg = Some(c);
                        }
                        Err(e) => pg_failed = Some(format!("{e:#}")),
                    }
                }
                if let Some(why) = &pg_failed {
                    let why = format!("the PostgreSQL cluster did not start: {why}");
                    eprintln!("mam-bench: skipping `native-pg`: {why}");
                    res.status = format!("skipped: {why}");
                    break 'personal;
                }
            }
            log(format!("=== {} ===", kind.name()));
            match run_config(kind, &o, pg.as_ref(), &mut res).await {
                Ok(spec) => {
                    res.status = "ran".into();
                    ran.push((configs.len(), spec));
                }
                Err(e) => {
                    log(format!("{}: failed: {e:#}", kind.name()));
                    res.status = "failed".into();
                    res.errors.push(format!("{e:#}"));
                }
            }
        }
        if o.phases.rooms && rooms::has_rooms(kind) {
            log(format!("=== {} rooms ===", kind.name()));
            let mut r = rooms::RoomsResult::default();
            match rooms::run(kind, &room_plan, &mut r).await {
                Ok(Some(spec)) => rooms_ran.push((configs.len(), spec)),
                Ok(None) => {}
                Err(e) => {
                    log(format!("{} rooms: failed: {e:#}", kind.name()));
                    r.status = "failed".into();
                    r.errors.push(format!("{e:#}"));
                }
            }
            if let Some(why) = r.status.strip_prefix("skipped: ") {
                eprintln!("mam-bench: skipping `{}` rooms: {why}", kind.name());
            }
            res.rooms = Some(r);
        }
        configs.push(res);
    }

    if o.rounds > 0 && (!ran.is_empty() || !rooms_ran.is_empty()) {
        throughput_rounds(
            &ran,
            &rooms_ran,
            &room_plan,
            &o,
            pg.as_ref().map(|c| c.pid),
            &mut configs,
        )
        .await;
    }

    let storage_size = if o.storage_size > 0 {
        if pg.is_none() && pg_failed.is_none() {
            log("starting a private PostgreSQL cluster (storage size)");
            match blocking(|| PgCluster::start(&o.work_dir.join("pg"))) {
                Ok(c) => pg = Some(c),
                Err(e) => log(format!("no PostgreSQL for the storage-size phase: {e:#}")),
            }
        }
        log(format!("storage size: {} messages", o.storage_size));
        let dir = o.work_dir.join("storage-size");
        let r = blocking(|| storage_size::run(&dir, o.storage_size, pg.as_ref()));
        if !o.keep {
            let _ = std::fs::remove_dir_all(&dir);
        }
        match r {
            Ok(r) => Some(r),
            Err(e) => {
                log(format!("storage size failed: {e:#}"));
                None
            }
        }
    } else {
        None
    };

    let raw = if o.raw {
        log("raw SQLite (physical limit)");
        let datasets: Vec<Dataset> = o
            .sizes
            .iter()
            .map(|&n| Dataset::new(&owner_for(n), n))
            .collect();
        let dir = o.work_dir.clone();
        let iters = if o.quick { 50 } else { 200 };
        let r = tokio::task::spawn_blocking(move || {
            rawsqlite::run(&dir, &datasets, Duration::from_secs(3), iters)
        })
        .await?;
        match r {
            Ok(r) => Some(r),
            Err(e) => {
                log(format!("raw SQLite failed: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let native_pg_ran = configs
        .iter()
        .any(|c| c.config == Kind::NativePg.name() && c.status == "ran");
    let raw_pg = match &pg {
        Some(cluster) if o.raw && native_pg_ran => {
            log("raw PostgreSQL (physical limit)");
            let datasets: Vec<Dataset> = o
                .sizes
                .iter()
                .map(|&n| Dataset::new(&owner_for(n), n))
                .collect();
            let iters = if o.quick { 50 } else { 200 };
            match blocking(|| {
                rawpg::run(
                    cluster,
                    NATIVE_PG_DB,
                    &datasets,
                    Duration::from_secs(3),
                    iters,
                )
            }) {
                Ok(r) => Some(r),
                Err(e) => {
                    log(format!("raw PostgreSQL failed: {e:#}"));
                    None
                }
            }
        }
        _ => None,
    };
    let postgres = pg.as_ref().map(|c| blocking(|| c.describe()));
    if let Some(cluster) = pg.take() {
        log(format!("stopping PostgreSQL pid {}", cluster.pid));
        blocking(|| cluster.stop());
    }

    let report = Report {
        started: started.clone(),
        machine: machine(),
        parameters: json!({
            "quick": o.quick, "phases": o.phases.name(), "pairs": o.pairs, "window": o.window, "sizes": o.sizes,
            "closed_loop_s": o.duration.as_secs_f64(), "warmup_s": o.warmup.as_secs_f64(),
            "open_rate_cap": o.open_rate, "open_rate_low_cap": o.open_rate_low,
            "open_loop_s": o.open_duration.as_secs_f64(),
            "query_iters": o.query_iters, "query_budget_s": o.query_budget.as_secs_f64(),
            "internal_max": o.internal_max, "body_bytes": populate::BODY_LEN,
            "rounds": o.rounds, "round_s": o.round_duration.as_secs_f64(),
            "plugin_dir": o.plugin_dir.display().to_string(),
            "prosody_bin": o.prosody_bin.as_ref().map(|b| b.display().to_string()),
            "room_occupants": o.room_occupants, "room_senders": o.room_senders,
            "room_window": o.room_window, "room_s": o.room_duration.as_secs_f64(),
            "storage_size_messages": o.storage_size,
        }),
        ratios: report::ratios(&configs, &o.sizes),
        configs,
        raw_sqlite: raw,
        raw_postgres: raw_pg,
        storage_size,
        postgres,
        total_seconds: t0.elapsed().as_secs_f64(),
    };
    let md = report::markdown(&report, &o.sizes);
    println!("{md}");
    std::fs::create_dir_all(&o.out_dir)?;
    let stamp = started.replace([':', '-'], "");
    // A run on another Prosody than the system's is named after its version.
    let version = match &o.prosody_bin {
        Some(_) => format!(
            "-prosody{}",
            server::prosody_version().replace(['.', ' '], "_")
        ),
        None => String::new(),
    };
    // A run of one kind of phases only says which in its name.
    let phases = match o.phases.name() {
        "all" => String::new(),
        p => format!("-{p}"),
    };
    let base = if o.quick {
        format!("{stamp}{version}{phases}-quick")
    } else {
        format!("{stamp}{version}{phases}")
    };
    std::fs::write(
        o.out_dir.join(format!("{base}.json")),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(o.out_dir.join(format!("{base}.md")), &md)?;
    // latest.md is the newest run of every phase; a run of some phases does not replace it.
    let all_phases = o.phases.personal && o.phases.rooms;
    if all_phases {
        std::fs::write(o.out_dir.join("latest.md"), &md)?;
    }
    // The chart is the personal archives' newest page against size.
    if o.phases.personal {
        std::fs::write(
            o.out_dir.join(format!("{base}.svg")),
            report::svg_chart(&report, &o.sizes),
        )?;
    }
    eprintln!(
        "mam-bench: wrote {}/{base}.{{md,json{}}}{}",
        o.out_dir.display(),
        if o.phases.personal { ",svg" } else { "" },
        if all_phases { " and latest.md" } else { "" }
    );
    if !o.keep {
        let _ = std::fs::remove_dir_all(&o.work_dir);
    } else {
        eprintln!("mam-bench: kept {}", o.work_dir.display());
    }
    Ok(())
}

/// `--render FILE.json`: rewrites the markdown and SVG of an earlier run from its JSON.
fn render(json_path: &Path) -> Result<()> {
    let mut report: Report =
        serde_json::from_str(&std::fs::read_to_string(json_path)?).context("parsing the report")?;
    let sizes: Vec<u64> =
        serde_json::from_value(report.parameters["sizes"].clone()).context("parameters.sizes")?;
    report.ratios = report::ratios(&report.configs, &sizes);
    std::fs::write(json_path, serde_json::to_string_pretty(&report)?)?;
    let md = report::markdown(&report, &sizes);
    std::fs::write(json_path.with_extension("md"), &md)?;
    if report.parameters["phases"].as_str() != Some("rooms") {
        std::fs::write(
            json_path.with_extension("svg"),
            report::svg_chart(&report, &sizes),
        )?;
    }
    println!("{md}");
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "--render" {
        if let Err(e) = render(Path::new(&args[2])) {
            eprintln!("mam-bench: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mam-bench: {e:#}");
            std::process::exit(2);
        }
    };
    // Whatever happens, no Prosody outlives us.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        server::kill_all_registered();
        pg::kill_all_registered();
        default_hook(info);
    }));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mam-bench: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let work_dir = opts.work_dir.clone();
    let keep = opts.keep;
    let code = rt.block_on(async move {
        tokio::select! {
            r = run(opts) => match r {
                Ok(()) => 0,
                Err(e) => { eprintln!("mam-bench: {e:#}"); 1 }
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("mam-bench: interrupted");
                130
            }
        }
    });
    server::kill_all_registered();
    pg::kill_all_registered();
    if code != 0 && !keep {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}
