//! Room archives (issue 17): the same Prosody with a MUC component
//! (`Component "rooms.localhost" "muc"`, `modules_enabled = { "muc_mam" }`), stock
//! `mod_muc_mam` on the file store or on SQLite, or ours from the plugin folder.
//!
//! Phases, in order, on one server directory per configuration (`<kind>-rooms`):
//! fan-out throughput in live rooms of 20 and 200 occupants (closed loop from a few
//! senders, every occupant's receipts counted); then, server stopped, one big room per
//! archive size written straight into storage; then the newest-page query and the join
//! history of 20 per size, the ping stall during room queries, and the ping stall
//! during expiry of every pre-populated room. See `bench/README.md` ("Room archives").

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::phases::{self, now_us, Archives, QueryBudget, QueryResult, StallResult};
use crate::populate::{self, RoomDataset};
use crate::report::Populated;
use crate::server::{self, Kind, MucSpec, Server, ServerSpec, PASSWORD};
use crate::stats::{summarize_us, Summary};
use crate::xmpp::{self, Item, MamQuery, Session, MUC_DOMAIN};

/// The user who creates (and owns) every room.
const OWNER: &str = "owner";
/// The user who queries room archives and counts them (not an occupant: a room that
/// is not members-only answers anyone it has not banned).
const QUERIER: &str = "querier";
/// The user whose joins are timed.
const JOINER: &str = "joiner";
/// `<history maxstanzas/>` of the timed joins (the room's default history length).
pub const JOIN_HISTORY: u32 = 20;
/// The query shapes measured on every big room (each with `to` = the room).
pub const ROOM_SHAPES: [&str; 4] = ["newest", "first", "deep-after", "count"];

/// Which configurations have a room variant: stock on both of its stores, and ours.
pub fn has_rooms(kind: Kind) -> bool {
    matches!(kind, Kind::StockInternal | Kind::StockSql | Kind::Native)
}

/// What the room phases run, from the command line.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sizes: Vec<u64>,
    pub internal_max: u64,
    /// Occupants of each live room (one fan-out phase per entry).
    pub occupants: Vec<usize>,
    /// Occupants that send (each keeps `window` messages in flight).
    pub senders: usize,
    pub window: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub budget: QueryBudget,
    pub stall_duration: Duration,
    pub expiry: bool,
    pub expiry_limit: Duration,
    /// Measurement time of each interleaved fan-out round.
    pub round_duration: Duration,
    pub plugin_dir: PathBuf,
    pub work_dir: PathBuf,
}

/// One fan-out phase: a live room of `occupants`, `senders` of them sending.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FanoutResult {
    pub occupants: usize,
    pub senders: usize,
    pub window: usize,
    /// Seconds to log in and join every occupant (sequentially, before the phase).
    pub join_s: f64,
    pub measured_s: f64,
    /// Messages sent over the whole phase (warm-up included).
    pub sent: u64,
    /// Room messages broadcast during the window, per second (as the first occupant,
    /// itself a sender, received them).
    pub messages_per_s: f64,
    /// Messages received by all occupants together during the window, per second.
    pub deliveries_per_s: f64,
    /// Messages received by all occupants over the whole phase, after draining, and
    /// what every occupant receiving every message sent would make.
    pub delivered: u64,
    pub expected_deliveries: u64,
    /// Send to receipt, every occupant's receipts during the window.
    pub latency: Summary,
    pub server_cpu_percent: f64,
    pub client_cpu_percent: f64,
    /// MAM `<count/>` of the room afterwards (absent when the store gives none), and
    /// the messages sent to it, end markers included.
    pub archived: Option<u64>,
    pub archived_expected: u64,
}

/// Join with `<history maxstanzas='20'/>` on one big room.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JoinResult {
    pub size: u64,
    /// From sending the join presence until the subject arrived (after the history).
    pub latency: Summary,
    /// History messages received on the last join (a sanity check: 20).
    pub history: usize,
    pub error: Option<String>,
}

/// Expiry of the pre-populated rooms.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoomExpiry {
    pub stall: StallResult,
    pub messages_before: u64,
    /// `None` when the store gives no count and a page still has messages.
    pub messages_after: Option<u64>,
    pub how: String,
}

/// Everything the room phases measured for one configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoomsResult {
    /// "ran", "failed", or "skipped: why".
    pub status: String,
    pub idle_ping: Option<Summary>,
    pub fanout: Vec<FanoutResult>,
    /// Room msgs/s of each interleaved fan-out round in the first live room (after
    /// every configuration ran), like the personal throughput rounds.
    #[serde(default)]
    pub fanout_rounds: Vec<f64>,
    pub populated: Vec<Populated>,
    /// Room sizes not measured, and why.
    pub skipped: Vec<String>,
    pub queries: Vec<QueryResult>,
    pub joins: Vec<JoinResult>,
    pub stall_queries: Option<StallResult>,
    pub expiry: Option<RoomExpiry>,
    /// (phase, KiB) after each phase.
    pub rss_kib: Vec<(String, u64)>,
    pub errors: Vec<String>,
}

impl RoomsResult {
    pub fn query(&self, size: u64, shape: &str) -> Option<&QueryResult> {
        self.queries
            .iter()
            .find(|q| q.size == size && q.shape == shape && q.error.is_none())
    }
    pub fn join(&self, size: u64) -> Option<&JoinResult> {
        self.joins
            .iter()
            .find(|j| j.size == size && j.error.is_none())
    }
    pub fn fanout(&self, occupants: usize) -> Option<&FanoutResult> {
        self.fanout.iter().find(|f| f.occupants == occupants)
    }
}

fn live_room(occupants: usize) -> String {
    format!("live{occupants}@{MUC_DOMAIN}")
}

fn occupant_name(i: usize) -> String {
    format!("o{i}")
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[{:>7.1}s] {}", now_us() as f64 / 1e6, msg.as_ref());
}

/// The big rooms this configuration measures, and the sizes it skips (with why).
fn datasets_for(kind: Kind, plan: &Plan) -> (Vec<RoomDataset>, Vec<String>) {
    let mut ds = Vec::new();
    let mut skipped = Vec::new();
    for &n in &plan.sizes {
        if kind == Kind::StockInternal && n > plan.internal_max {
            skipped.push(format!(
                "room size {n}: mod_storage_internal loads and parses the whole {n}-message room file on every query, \
                 join and expiry; raise --internal-max to run it"
            ));
            continue;
        }
        ds.push(RoomDataset::new(&format!("room{n}"), n));
    }
    (ds, skipped)
}

/// Our room database in a data directory (`mam_muc_log.sqlite`).
fn native_room_db(data: &Path) -> PathBuf {
    data.join("mam_muc_log.sqlite")
}

/// The first log line that says `mod_muc_mam` failed to load or run, if any.
fn module_error(log_path: &Path) -> Option<String> {
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    log.lines()
        .find(|l| l.contains("muc_mam") && (l.contains("error") || l.contains("Error")))
        .map(|l| l.trim().to_string())
}

/// Runs every room phase for `kind`; `res.status` says how it went. Errors after the
/// server first came up are recorded in `res` and the phases go on where they can.
/// Returns the server's spec (for the interleaved rounds) when the phases ran.
pub async fn run(kind: Kind, plan: &Plan, res: &mut RoomsResult) -> Result<Option<ServerSpec>> {
    if kind == Kind::Native {
        if let Err(why) = server::check_room_plugin_dir(&plan.plugin_dir) {
            res.status = format!("skipped: {why}");
            return Ok(None);
        }
    }
    let name = format!("{}-rooms", kind.name());
    let dir = plan.work_dir.join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    let mut spec = ServerSpec {
        kind,
        dir: dir.clone(),
        port: server::free_port()?,
        plugin_dir: kind.is_native().then(|| plan.plugin_dir.clone()),
        expiry: None,
        log_info: false,
        pg: None,
        muc: Some(MucSpec::never()),
    };
    spec.write()?;
    let (datasets, skipped) = datasets_for(kind, plan);
    res.skipped = skipped;
    let max_occupants = plan.occupants.iter().copied().max().unwrap_or(0);
    let mut users: Vec<String> = (0..max_occupants).map(occupant_name).collect();
    users.extend(
        ["pinger", OWNER, QUERIER, JOINER]
            .into_iter()
            .map(String::from),
    );
    server::write_accounts(&spec.data_path(), &users)?;

    // First start: the owner creates every room (persistent and unlocked by the
    // component's defaults), then one room query makes the backend create its tables.
    let srv = Server::start(&spec)?;
    let t = Duration::from_secs(30);
    let mut rooms: Vec<String> = plan.occupants.iter().map(|&n| live_room(n)).collect();
    rooms.extend(datasets.iter().map(|d| d.jid()));
    log(format!("{name}: creating {} rooms", rooms.len()));
    let mut owner = xmpp::login(spec.port, OWNER, PASSWORD, "prime").await?;
    for room in &rooms {
        owner.join_room(room, OWNER, 0, t).await?;
        owner.leave_room(room, OWNER, t).await?;
    }
    let probe = MamQuery {
        to: rooms.first().cloned(),
        max: Some(1),
        ..Default::default()
    };
    let first = owner.mam(&probe, "prime", t).await;
    owner.close().await;
    if kind == Kind::Native {
        // Our module replaces stock only if it loaded; say why when it did not.
        let why = match (&first, module_error(&spec.log_path())) {
            (_, Some(line)) => Some(format!("mod_muc_mam did not load or run: {line}")),
            (Err(e), None) => Some(format!("the first room query failed: {e:#}")),
            (Ok(r), None) if r.error.is_some() => Some(format!(
                "the first room query was answered with {}",
                r.error.as_deref().unwrap_or("")
            )),
            (Ok(_), None) if !native_room_db(&spec.data_path()).exists() => Some(format!(
                "the module answered but did not create {} (is it ours?)",
                native_room_db(&spec.data_path()).display()
            )),
            _ => None,
        };
        if let Some(why) = why {
            srv.stop()?;
            res.status = format!("skipped: {why}");
            return Ok(None);
        }
    } else {
        let r = first?;
        if let Some(e) = r.error {
            bail!(
                "the first room query failed ({e}): is mod_muc_mam loaded? see {}",
                spec.log_path().display()
            );
        }
    }
    res.idle_ping = Some(phases::idle_ping(spec.port, Duration::from_secs(1)).await?);
    res.rss_kib.push(("start".into(), srv.settled_rss_kib()));

    for &n in &plan.occupants {
        log(format!("{name}: fan-out in a room of {n} occupants"));
        match fanout(&srv, spec.port, n, plan, plan.duration).await {
            Ok(f) => {
                log(format!(
                    "{name}: {:.0} room msgs/s, {:.0} deliveries/s, p50 {:.2} ms",
                    f.messages_per_s, f.deliveries_per_s, f.latency.p50_ms
                ));
                res.fanout.push(f);
            }
            Err(e) => res
                .errors
                .push(format!("fan-out with {n} occupants: {e:#}")),
        }
        res.rss_kib.push((format!("fanout-{n}"), srv.rss_kib()));
    }
    srv.stop()?;
    if datasets.is_empty() {
        res.status = "ran".into();
        return Ok(Some(spec));
    }

    // Pre-populate through the fast path, server stopped.
    let data = spec.data_path();
    for rds in &datasets {
        log(format!(
            "{name}: pre-populating {} with {} messages",
            rds.jid(),
            rds.n()
        ));
        let secs = match kind {
            Kind::StockInternal => populate::populate_room_internal(&data, rds)?,
            Kind::StockSql => populate::populate_room_sql(&data.join("prosody.sqlite"), rds)?,
            Kind::Native => populate::populate_room_native(
                &native_room_db(&data),
                rds,
                populate::NativeRows::Compressed,
            )?,
            _ => bail!("{} has no room variant", kind.name()),
        };
        res.populated.push(Populated {
            owner: rds.jid(),
            size: rds.n(),
            seconds: secs,
        });
    }
    let srv = Server::start(&spec)?;
    res.rss_kib
        .push(("populated".into(), srv.settled_rss_kib()));
    let archives = Archives::Rooms {
        user: QUERIER,
        rooms: &datasets,
    };
    if kind.is_native() {
        // The module must serve what the fast path wrote.
        let counted = archives.count(spec.port, "check").await?;
        let expected: u64 = datasets.iter().map(|d| d.n()).sum();
        if counted != Some(expected) {
            bail!(
                "after pre-population the module counts {counted:?} messages in the pre-populated rooms, expected {expected}"
            );
        }
    }

    for rds in &datasets {
        log(format!("{name}: room queries on {} messages", rds.n()));
        match room_queries(spec.port, rds, plan.budget).await {
            Ok(q) => res.queries.extend(q),
            Err(e) => res
                .errors
                .push(format!("room queries at {}: {e:#}", rds.n())),
        }
        log(format!(
            "{name}: joins with history on {} messages",
            rds.n()
        ));
        match join_history(spec.port, rds, plan.budget).await {
            Ok(j) => res.joins.push(j),
            Err(e) => res.errors.push(format!("joins at {}: {e:#}", rds.n())),
        }
    }
    res.rss_kib.push(("queries".into(), srv.rss_kib()));
    if let Some(big) = datasets.last() {
        log(format!("{name}: ping stall during room queries"));
        let shapes = ["newest", "count", "deep-after"];
        let queries: Vec<MamQuery> = shapes.iter().map(|s| room_query(s, big)).collect();
        match phases::stall_while_querying(
            spec.port,
            QUERIER,
            format!(
                "room queries ({}) on the {}-message room",
                shapes.join(", "),
                big.n()
            ),
            &queries,
            plan.stall_duration,
            plan.budget.timeout,
        )
        .await
        {
            Ok(s) => res.stall_queries = Some(s),
            Err(e) => res.errors.push(format!("stall during room queries: {e:#}")),
        }
        res.rss_kib.push(("stall".into(), srv.rss_kib()));
    }
    srv.stop()?;

    if plan.expiry {
        log(format!("{name}: expiry"));
        let how = if kind.is_native() {
            spec.muc = Some(MucSpec {
                expires_after: "1d".into(),
                cleanup_interval: Some(1),
            });
            "muc_log_expires_after = \"1d\", archive_cleanup_interval = 1 on the component; \
             finished when every pre-populated room counts 0"
                .to_string()
        } else {
            spec.muc = Some(MucSpec {
                expires_after: "1d".into(),
                cleanup_interval: None,
            });
            populate::arm_stock_room_expiry(
                &data,
                &datasets
                    .iter()
                    .map(|d| d.room().to_string())
                    .collect::<Vec<_>>(),
            )?;
            "muc_log_expires_after = \"1d\"; stock runs room expiry from a daily mod_cron task, made due at start by writing \
             its last run as 0 in the component's cron store (and, for the file store, listing the rooms under an old date \
             in muc_log_cleanup); finished at the \"Deleted N expired messages\" log line"
                .to_string()
        };
        spec.log_info = true;
        spec.write()?;
        let srv = Server::start(&spec)?;
        let stall = phases::stall_during_expiry(
            spec.port,
            &archives,
            &spec.log_path(),
            !kind.is_native(),
            plan.expiry_limit,
        )
        .await?;
        let after = archives.count(spec.port, "left").await?;
        res.rss_kib.push(("expiry".into(), srv.rss_kib()));
        srv.stop()?;
        res.expiry = Some(RoomExpiry {
            stall,
            messages_before: datasets.iter().map(|d| d.n()).sum(),
            messages_after: after,
            how,
        });
        spec.muc = Some(MucSpec::never());
        spec.log_info = false;
        spec.write()?;
    }
    res.status = "ran".into();
    Ok(Some(spec))
}

/// One interleaved fan-out round on a configuration's room server: a restart, the
/// fan-out in the first live room for `plan.round_duration`, a stop. Returns room msgs/s.
pub async fn fanout_round(spec: &ServerSpec, plan: &Plan) -> Result<f64> {
    let n = *plan.occupants.first().context("no --room-occupants")?;
    let srv = Server::start(spec)?;
    let f = fanout(&srv, spec.port, n, plan, plan.round_duration).await;
    srv.stop()?;
    Ok(f?.messages_per_s)
}

/// A query shape ([`phases::shape_query`]) addressed to the room.
fn room_query(shape: &str, rds: &RoomDataset) -> MamQuery {
    let mut q = phases::shape_query(shape, &rds.ds);
    q.to = Some(rds.jid());
    q
}

/// Latency of each [`ROOM_SHAPES`] query to one big room, asked by [`QUERIER`].
async fn room_queries(
    port: u16,
    rds: &RoomDataset,
    budget: QueryBudget,
) -> Result<Vec<QueryResult>> {
    let mut s = xmpp::login(port, QUERIER, PASSWORD, "rq").await?;
    let queries: Vec<(&str, MamQuery)> = ROOM_SHAPES
        .iter()
        .map(|&shape| (shape, room_query(shape, rds)))
        .collect();
    let out = phases::timed_queries(&mut s, rds.n(), &queries, budget).await;
    s.close().await;
    out
}

/// Joins one big room with `<history maxstanzas='20'/>` and leaves again, one join at a
/// time, after one untimed join; each join is timed from the presence sent until the
/// subject (which Prosody sends after the history) arrived.
async fn join_history(port: u16, rds: &RoomDataset, budget: QueryBudget) -> Result<JoinResult> {
    let mut s = xmpp::login(port, JOINER, PASSWORD, "join").await?;
    let room = rds.jid();
    s.join_room(&room, JOINER, JOIN_HISTORY, budget.timeout)
        .await?;
    s.leave_room(&room, JOINER, budget.timeout).await?;
    let mut lat = Vec::new();
    let mut history = 0;
    let started = Instant::now();
    for it in 0..budget.max_iters {
        if it >= budget.min_iters && started.elapsed() > budget.per_shape {
            break;
        }
        let t = Instant::now();
        history = s
            .join_room(&room, JOINER, JOIN_HISTORY, budget.timeout)
            .await?;
        lat.push(t.elapsed().as_micros() as u64);
        s.leave_room(&room, JOINER, budget.timeout).await?;
    }
    s.close().await;
    Ok(JoinResult {
        size: rds.n(),
        latency: summarize_us(&lat),
        history,
        error: (history != JOIN_HISTORY as usize).then(|| {
            format!("the last join brought {history} history messages, not {JOIN_HISTORY}")
        }),
    })
}

/// Logs in `n` occupants and joins them to the room of `n`, one after another,
/// without history.
async fn join_occupants(port: u16, n: usize) -> Result<Vec<Session>> {
    let room = live_room(n);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let user = occupant_name(i);
        let mut s = xmpp::login(port, &user, PASSWORD, "muc").await?;
        s.join_room(&room, &user, 0, Duration::from_secs(60))
            .await?;
        out.push(s);
    }
    Ok(out)
}

/// The message id of a fan-out message: sender and send time (µs on [`now_us`]).
fn fanout_id(sender: usize, ts: u64) -> String {
    format!("g{sender}_{ts}")
}

fn parse_fanout_id(id: &str) -> Option<(usize, u64)> {
    let (s, ts) = id.strip_prefix('g')?.split_once('_')?;
    Some((s.parse().ok()?, ts.parse().ok()?))
}

/// The closed loop in a live room of `n` occupants: the first `plan.senders` of them
/// each keep `plan.window` groupchat messages in flight (a message is done when the
/// room echoes it back to its sender); every occupant counts what it receives, and
/// the receipts in the window give the latency. Bounded by `plan.warmup +
/// duration` for sending and 120 s for draining.
async fn fanout(
    server: &Server,
    port: u16,
    n: usize,
    plan: &Plan,
    duration: Duration,
) -> Result<FanoutResult> {
    let joined = Instant::now();
    let sessions = join_occupants(port, n).await?;
    let join_s = joined.elapsed().as_secs_f64();
    let room = live_room(n);
    let senders = plan.senders.min(n).max(1);
    let start = Instant::now();
    let win_start_us = now_us() + plan.warmup.as_micros() as u64;
    let win_end_us = win_start_us + duration.as_micros() as u64;
    let send_end = start + plan.warmup + duration;
    let permits: Arc<Vec<Semaphore>> =
        Arc::new((0..senders).map(|_| Semaphore::new(plan.window)).collect());
    let in_window = Arc::new(AtomicU64::new(0));
    let first_in_window = Arc::new(AtomicU64::new(0));
    let mut body = String::from("benchmark room message ");
    while body.len() < populate::BODY_LEN {
        body.push('y');
    }
    let body = Arc::new(body);

    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for (k, s) in sessions.into_iter().enumerate() {
        let Session { mut reader, writer } = s;
        let echoes = permits.clone();
        let inw = in_window.clone();
        let first = first_in_window.clone();
        readers.push(tokio::spawn(async move {
            let mut lats = Vec::new();
            let mut received = 0u64;
            let mut ends = 0;
            while ends < senders {
                let Item::Stanza(e) = reader.next().await? else {
                    continue;
                };
                if e.name != "message" || e.attr("type") != Some("groupchat") {
                    continue;
                }
                let Some(id) = e.attr("id") else { continue };
                if id.starts_with("end") {
                    ends += 1;
                    continue;
                }
                let Some((sender, ts)) = parse_fanout_id(id) else {
                    continue;
                };
                let now = now_us();
                received += 1;
                if sender == k {
                    if let Some(p) = echoes.get(k) {
                        p.add_permits(1);
                    }
                }
                if now >= win_start_us && now < win_end_us {
                    lats.push(now.saturating_sub(ts));
                    inw.fetch_add(1, Ordering::Relaxed);
                    if k == 0 {
                        first.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok((reader, received, lats))
        }));
        if k >= senders {
            writers.push(tokio::spawn(async move { anyhow::Ok((writer, 0u64)) }));
            continue;
        }
        let permits = permits.clone();
        let body = body.clone();
        let room = room.clone();
        let mut writer = writer;
        writers.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut buf = String::new();
            let sem = &permits[k];
            loop {
                let deadline = tokio::time::Instant::from_std(send_end);
                let permit = match tokio::time::timeout_at(deadline, sem.acquire()).await {
                    Ok(p) => p?,
                    Err(_) => break,
                };
                permit.forget();
                let mut batch = 1;
                while batch < 16 {
                    match sem.try_acquire() {
                        Ok(p) => {
                            p.forget();
                            batch += 1;
                        }
                        Err(_) => break,
                    }
                }
                buf.clear();
                let ts = now_us();
                for _ in 0..batch {
                    buf.push_str(&format!(
                        "<message to='{room}' type='groupchat' id='{}'><body>{body}</body></message>",
                        fanout_id(k, ts)
                    ));
                    sent += 1;
                }
                writer.write_all(buf.as_bytes()).await?;
            }
            writer
                .write_all(
                    format!("<message to='{room}' type='groupchat' id='end{k}'><body>end</body></message>")
                        .as_bytes(),
                )
                .await?;
            anyhow::Ok((writer, sent))
        }));
    }

    tokio::time::sleep_until(tokio::time::Instant::from_std(start + plan.warmup)).await;
    let cpu0 = server.cpu_seconds();
    let ccpu0 = server::self_cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep_until(tokio::time::Instant::from_std(send_end)).await;
    let cpu1 = server.cpu_seconds();
    let ccpu1 = server::self_cpu_seconds();
    let measured_s = t0.elapsed().as_secs_f64();

    let mut sent = 0;
    let mut delivered = 0;
    let mut samples = Vec::new();
    let mut sessions = Vec::with_capacity(n);
    for (w, r) in writers.into_iter().zip(readers) {
        let (writer, s) = w.await.context("sender task")??;
        let (reader, got, lats) = tokio::time::timeout(Duration::from_secs(120), r)
            .await
            .context("an occupant did not receive every end marker within 120 s")?
            .context("occupant task")??;
        sent += s;
        delivered += got;
        samples.extend(lats);
        sessions.push(Session { reader, writer });
    }
    let archived_expected = sent + senders as u64;
    let count_q = MamQuery {
        to: Some(room.clone()),
        max: Some(0),
        ..Default::default()
    };
    let mut q = xmpp::login(port, QUERIER, PASSWORD, "count").await?;
    let counted = q.mam(&count_q, "count", Duration::from_secs(120)).await?;
    if let Some(e) = counted.error {
        bail!("counting {room} after the fan-out was refused: {e}");
    }
    let archived = counted.count;
    q.close().await;
    for s in sessions {
        s.close().await;
    }
    Ok(FanoutResult {
        occupants: n,
        senders,
        window: plan.window,
        join_s,
        measured_s,
        sent,
        messages_per_s: first_in_window.load(Ordering::Relaxed) as f64 / measured_s,
        deliveries_per_s: in_window.load(Ordering::Relaxed) as f64 / measured_s,
        delivered,
        expected_deliveries: sent * n as u64,
        latency: summarize_us(&samples),
        server_cpu_percent: 100.0 * (cpu1 - cpu0) / measured_s,
        client_cpu_percent: 100.0 * (ccpu1 - ccpu0) / measured_s,
        archived,
        archived_expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fanout_id_names_its_sender_and_send_time() {
        assert_eq!(fanout_id(3, 123_456), "g3_123456");
        assert_eq!(parse_fanout_id("g3_123456"), Some((3, 123_456)));
        assert_eq!(parse_fanout_id("end3"), None);
        assert_eq!(parse_fanout_id("g3"), None);
    }
}
