//! The measurements run against one live server: message throughput (closed and open
//! loop), query latency per shape and archive size, event-loop stalls seen by an XMPP
//! ping, and expiry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::populate::{self, Dataset, FREQUENT, RARE};
use crate::server::{Server, PASSWORD};
use crate::stats::{summarize_us, Summary};
use crate::xmpp::{self, Item, MamQuery, Session, DOMAIN};

static T0: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the benchmark's start; both ends of a message use this clock.
pub fn now_us() -> u64 {
    T0.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn body_100() -> String {
    let mut b = String::from("benchmark message ");
    while b.len() < populate::BODY_LEN {
        b.push('y');
    }
    b
}

pub fn sender_name(i: usize) -> String {
    format!("s{i}")
}
pub fn receiver_name(i: usize) -> String {
    format!("r{i}")
}

/// Sender and receiver sessions of the throughput phases.
pub struct Pairs {
    pub senders: Vec<Session>,
    pub receivers: Vec<Session>,
    /// Messages each pair has had delivered over all phases, end markers included
    /// (for the archive check).
    pub delivered_total: Vec<u64>,
}

impl Pairs {
    /// Closes every sender's and receiver's stream.
    pub async fn close(self) {
        for s in self.senders.into_iter().chain(self.receivers) {
            s.close().await;
        }
    }
}

pub async fn login_pairs(port: u16, n: usize) -> Result<Pairs> {
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..n {
        senders.push(xmpp::login(port, &sender_name(i), PASSWORD, "r").await?);
        receivers.push(xmpp::login(port, &receiver_name(i), PASSWORD, "r").await?);
    }
    Ok(Pairs {
        senders,
        receivers,
        delivered_total: vec![0; n],
    })
}

#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// Each pair keeps `window` messages in flight: the server sets the pace.
    Closed { window: usize },
    /// Messages are sent on a fixed schedule whatever the server does.
    Open { rate_per_s: f64 },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MessagingResult {
    pub mode: String,
    pub pairs: usize,
    pub measured_s: f64,
    /// Messages sent over the whole phase (warm-up included).
    pub sent: u64,
    /// Messages delivered over the whole phase, after draining.
    pub delivered: u64,
    /// Messages delivered during the measurement window, per second.
    pub delivered_per_s: f64,
    /// For open loop: the rate asked for.
    pub target_rate_per_s: Option<f64>,
    /// Delivery latency (send to receipt) of messages received in the window.
    pub latency: Summary,
    /// Server CPU during the window, as a percentage of one core.
    pub server_cpu_percent: f64,
    /// CPU time of Prosody's event loop (its main thread) per message delivered in
    /// the window, in microseconds: what the loop spends on each message, which
    /// the machine's speed moves far less than it moves throughput.
    #[serde(default)]
    pub event_loop_us_per_msg: Option<f64>,
    /// CPU of the database server's processes during the window (`native-pg`: the
    /// PostgreSQL cluster), as a percentage of one core; on top of `server_cpu_percent`.
    #[serde(default)]
    pub db_cpu_percent: Option<f64>,
    /// This load client's CPU during the window (to show it is not the bottleneck).
    pub client_cpu_percent: f64,
    /// MAM check afterwards: messages found in the pairs' archives (sender + receiver).
    pub archived: Option<u64>,
    pub archived_expected: Option<u64>,
    pub undelivered: u64,
}

struct PairShared {
    sem: Semaphore,
    received: AtomicU64,
}

/// Runs one messaging phase: warm-up, then a measurement window, then a drain.
pub async fn messaging(
    server: &Server,
    pairs: &mut Pairs,
    load: Load,
    warmup: Duration,
    measure: Duration,
) -> Result<MessagingResult> {
    let n = pairs.senders.len();
    let start = Instant::now();
    let win_start_us = now_us() + warmup.as_micros() as u64;
    let win_end_us = win_start_us + measure.as_micros() as u64;
    let send_end = start + warmup + measure;
    let window_hist: Arc<std::sync::Mutex<Vec<u64>>> = Arc::new(std::sync::Mutex::new(Vec::new()));
    let in_window = Arc::new(AtomicU64::new(0));
    let body = Arc::new(body_100());

    let mut recv_tasks = Vec::new();
    let mut send_tasks = Vec::new();
    let senders = std::mem::take(&mut pairs.senders);
    let receivers = std::mem::take(&mut pairs.receivers);
    for (i, (mut snd, mut rcv)) in senders.into_iter().zip(receivers).enumerate() {
        let window = match load {
            Load::Closed { window } => window,
            Load::Open { .. } => 0,
        };
        let shared = Arc::new(PairShared {
            sem: Semaphore::new(window),
            received: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let hist = window_hist.clone();
        let inw = in_window.clone();
        let closed = matches!(load, Load::Closed { .. });
        recv_tasks.push(tokio::spawn(async move {
            let mut lats = Vec::new();
            loop {
                let item = rcv.reader.next().await?;
                let Item::Stanza(e) = item else { continue };
                if e.name != "message" {
                    continue;
                }
                let Some(id) = e.attr("id") else { continue };
                if id == "end" {
                    break;
                }
                let Some(ts) = id.rsplit('_').next().and_then(|t| t.parse::<u64>().ok()) else {
                    continue;
                };
                let now = now_us();
                sh.received.fetch_add(1, Ordering::Relaxed);
                if closed {
                    sh.sem.add_permits(1);
                }
                if now >= win_start_us && now < win_end_us {
                    lats.push(now.saturating_sub(ts));
                    inw.fetch_add(1, Ordering::Relaxed);
                }
            }
            hist.lock().unwrap_or_else(|e| e.into_inner()).extend(lats);
            anyhow::Ok(rcv)
        }));
        let to = format!("{}@{DOMAIN}/r", receiver_name(i));
        let body = body.clone();
        send_tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut buf = String::new();
            let push = |buf: &mut String, ts: u64, sent: &mut u64| {
                buf.push_str(&format!(
                    "<message to='{to}' type='chat' id='t{i}_{ts}'><body>{body}</body></message>"
                ));
                *sent += 1;
            };
            match load {
                Load::Closed { .. } => loop {
                    let deadline = tokio::time::Instant::from_std(send_end);
                    let permit = match tokio::time::timeout_at(deadline, shared.sem.acquire()).await
                    {
                        Ok(p) => p?,
                        Err(_) => break,
                    };
                    permit.forget();
                    let mut k = 1;
                    while k < 64 {
                        match shared.sem.try_acquire() {
                            Ok(p) => {
                                p.forget();
                                k += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    buf.clear();
                    let ts = now_us();
                    for _ in 0..k {
                        push(&mut buf, ts, &mut sent);
                    }
                    snd.writer.write_all(buf.as_bytes()).await?;
                },
                Load::Open { rate_per_s } => {
                    let interval = Duration::from_secs_f64(n as f64 / rate_per_s);
                    // Stagger the pairs over one interval.
                    let mut next = Instant::now() + interval.mul_f64(i as f64 / n as f64);
                    while next < send_end {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
                        buf.clear();
                        let now = Instant::now();
                        while next <= now && next < send_end {
                            // Stamp the intended send time, so a stalled server's
                            // backlog counts against it (no coordinated omission).
                            let intended = now_us() - now.duration_since(next).as_micros() as u64;
                            push(&mut buf, intended, &mut sent);
                            next += interval;
                        }
                        snd.writer.write_all(buf.as_bytes()).await?;
                    }
                }
            }
            snd.writer
                .write_all(
                    format!("<message to='{to}' type='chat' id='end'><body>end</body></message>")
                        .as_bytes(),
                )
                .await?;
            anyhow::Ok((snd, sent, shared))
        }));
    }

    // CPU over the window.
    tokio::time::sleep_until(tokio::time::Instant::from_std(start + warmup)).await;
    let cpu0 = server.cpu_seconds();
    let loop0 = server.event_loop_cpu_seconds();
    let in_window0 = in_window.load(Ordering::Relaxed);
    let db0 = server.db_cpu_seconds();
    let ccpu0 = crate::server::self_cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep_until(tokio::time::Instant::from_std(send_end)).await;
    let loop1 = server.event_loop_cpu_seconds();
    let in_window1 = in_window.load(Ordering::Relaxed);
    let cpu1 = server.cpu_seconds();
    let db1 = server.db_cpu_seconds();
    let ccpu1 = crate::server::self_cpu_seconds();
    let measured_s = t0.elapsed().as_secs_f64();

    let mut sent_total = 0;
    let mut delivered_total = 0;
    for (i, (st, rt)) in send_tasks.into_iter().zip(recv_tasks).enumerate() {
        let (snd, sent, shared) = st.await.context("sender task")??;
        let rcv = tokio::time::timeout(Duration::from_secs(120), rt)
            .await
            .context("receiver did not drain within 120 s")?
            .context("receiver task")??;
        let got = shared.received.load(Ordering::Relaxed);
        sent_total += sent;
        delivered_total += got;
        // The closing marker is a chat message too, archived like the rest.
        pairs.delivered_total[i] += got + 1;
        pairs.senders.push(snd);
        pairs.receivers.push(rcv);
    }
    let samples = window_hist
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (mode, target) = match load {
        Load::Closed { window } => (format!("closed loop, window {window} per pair"), None),
        Load::Open { rate_per_s } => ("open loop".to_string(), Some(rate_per_s)),
    };
    Ok(MessagingResult {
        mode,
        pairs: n,
        measured_s,
        sent: sent_total,
        delivered: delivered_total,
        delivered_per_s: in_window.load(Ordering::Relaxed) as f64 / measured_s,
        target_rate_per_s: target,
        latency: summarize_us(&samples),
        server_cpu_percent: 100.0 * (cpu1 - cpu0) / measured_s,
        event_loop_us_per_msg: (in_window1 > in_window0)
            .then(|| 1e6 * (loop1 - loop0) / (in_window1 - in_window0) as f64),
        db_cpu_percent: db0
            .zip(db1)
            .map(|(a, b)| 100.0 * (b - a).max(0.0) / measured_s),
        client_cpu_percent: 100.0 * (ccpu1 - ccpu0) / measured_s,
        archived: None,
        archived_expected: None,
        undelivered: sent_total - delivered_total,
    })
}

/// Counts, through MAM (`<max>0</max>`), what the pairs' archives hold.
pub async fn archived_count(pairs: &mut Pairs) -> Result<u64> {
    let q = MamQuery {
        max: Some(0),
        ..Default::default()
    };
    let mut total = 0;
    for (k, s) in pairs
        .senders
        .iter_mut()
        .chain(pairs.receivers.iter_mut())
        .enumerate()
    {
        let r = s
            .mam(&q, &format!("cnt{k}"), Duration::from_secs(120))
            .await?;
        total += r.count.unwrap_or(0);
    }
    Ok(total)
}

/// The query shapes measured at every archive size.
pub const SHAPES: [&str; 8] = [
    "newest",
    "first",
    "with-frequent",
    "with-rare",
    "window",
    "deep-after",
    "ids",
    "count",
];

pub fn shape_query(shape: &str, ds: &Dataset) -> MamQuery {
    let n = ds.n;
    let mut q = MamQuery {
        max: Some(50),
        ..Default::default()
    };
    match shape {
        "newest" => q.before = Some(String::new()),
        "first" => {}
        "with-frequent" => {
            q.with = Some(FREQUENT.into());
            q.before = Some(String::new());
        }
        "with-rare" => {
            q.with = Some(RARE.into());
            q.before = Some(String::new());
        }
        "window" => {
            let t = ds.when_us(n * 3 / 4) / 1_000_000;
            q.start = Some(populate::iso8601(t));
            q.end = Some(populate::iso8601(t + 3600));
        }
        "deep-after" => q.after = Some(Dataset::key(n / 2)),
        "ids" => {
            q.ids = (0..10).map(|k| Dataset::key(k * n / 10 + 7)).collect();
        }
        "count" => q.max = Some(0),
        _ => unreachable!("unknown shape {shape}"),
    }
    q
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryResult {
    pub size: u64,
    pub shape: String,
    pub latency: Summary,
    /// Results in the last reply, and `<count/>` if any (a sanity check).
    pub results: usize,
    pub count: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct QueryBudget {
    pub max_iters: usize,
    pub min_iters: usize,
    pub per_shape: Duration,
    pub timeout: Duration,
}

/// Query latency for every shape against one archive.
pub async fn query_latency(
    port: u16,
    ds: &Dataset,
    budget: QueryBudget,
) -> Result<Vec<QueryResult>> {
    let mut s = xmpp::login(port, &ds.owner, PASSWORD, "q").await?;
    let queries: Vec<(&str, MamQuery)> = SHAPES
        .iter()
        .map(|&shape| (shape, shape_query(shape, ds)))
        .collect();
    let out = timed_queries(&mut s, ds.n, &queries, budget).await;
    s.close().await;
    out
}

/// Times each query of `queries` (a shape name and its query) back to back on one
/// session, after one untimed warm-up of the first, within `budget`; `size` labels the
/// results.
pub async fn timed_queries(
    s: &mut Session,
    size: u64,
    queries: &[(&str, MamQuery)],
    budget: QueryBudget,
) -> Result<Vec<QueryResult>> {
    // One untimed query first, so every backend starts from a warm cache.
    if let Some((_, first)) = queries.first() {
        s.mam(first, "warm", budget.timeout).await?;
    }
    let mut out = Vec::new();
    for (shape, q) in queries {
        let mut lat = Vec::new();
        let mut last = Default::default();
        let started = Instant::now();
        for it in 0..budget.max_iters {
            if it >= budget.min_iters && started.elapsed() > budget.per_shape {
                break;
            }
            let t = Instant::now();
            last = s.mam(q, &format!("{shape}{it}"), budget.timeout).await?;
            lat.push(t.elapsed().as_micros() as u64);
        }
        let r: xmpp::MamResult = last;
        out.push(QueryResult {
            size,
            shape: shape.to_string(),
            latency: summarize_us(&lat),
            results: r.results,
            count: r.count,
            error: r.error,
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StallResult {
    pub what: String,
    pub duration_s: f64,
    /// Round trips of sequential XMPP pings from an unrelated client.
    pub ping: Summary,
    /// Background work done meanwhile (queries completed, messages deleted).
    pub work_done: u64,
    pub note: Option<String>,
}

/// Pings every `gap` until `stop` is set (or `limit` passes); returns the RTTs in µs.
async fn pinger(
    mut s: Session,
    gap: Duration,
    stop: Arc<AtomicU64>,
    limit: Duration,
) -> Result<(Session, Vec<u64>)> {
    let mut rtts = Vec::new();
    let started = Instant::now();
    let mut k = 0u64;
    while stop.load(Ordering::Relaxed) == 0 && started.elapsed() < limit {
        let t = Instant::now();
        s.ping(&format!("ping{k}"), Duration::from_secs(600))
            .await?;
        rtts.push(t.elapsed().as_micros() as u64);
        k += 1;
        tokio::time::sleep(gap).await;
    }
    Ok((s, rtts))
}

/// Idle ping round trip (baseline).
pub async fn idle_ping(port: u16, dur: Duration) -> Result<Summary> {
    let s = xmpp::login(port, "pinger", PASSWORD, "idle").await?;
    let stop = Arc::new(AtomicU64::new(0));
    let (s, rtts) = pinger(s, Duration::from_millis(10), stop, dur).await?;
    s.close().await;
    Ok(summarize_us(&rtts))
}

/// Ping round trips while another client runs the heaviest queries back to back.
pub async fn stall_during_queries(
    port: u16,
    ds: &Dataset,
    dur: Duration,
    timeout: Duration,
) -> Result<StallResult> {
    let shapes = ["newest", "count", "with-rare", "deep-after"];
    let queries: Vec<MamQuery> = shapes.iter().map(|s| shape_query(s, ds)).collect();
    stall_while_querying(
        port,
        &ds.owner,
        format!(
            "heavy queries ({}) on the {}-message archive",
            shapes.join(", "),
            ds.n
        ),
        &queries,
        dur,
        timeout,
    )
    .await
}

/// Ping round trips from `pinger` while `user` runs `queries` in turn, back to back,
/// for `dur` (at least one query).
pub async fn stall_while_querying(
    port: u16,
    user: &str,
    what: String,
    queries: &[MamQuery],
    dur: Duration,
    timeout: Duration,
) -> Result<StallResult> {
    let p = xmpp::login(port, "pinger", PASSWORD, "stall").await?;
    let mut q = xmpp::login(port, user, PASSWORD, "heavy").await?;
    let stop = Arc::new(AtomicU64::new(0));
    let ping_task = tokio::spawn(pinger(
        p,
        Duration::from_millis(10),
        stop.clone(),
        dur + timeout,
    ));
    let started = Instant::now();
    let mut done = 0u64;
    while !queries.is_empty() && (started.elapsed() < dur || done == 0) {
        let query = &queries[done as usize % queries.len()];
        q.mam(query, &format!("h{done}"), timeout).await?;
        done += 1;
    }
    stop.store(1, Ordering::Relaxed);
    let (p, rtts) = ping_task.await??;
    p.close().await;
    q.close().await;
    Ok(StallResult {
        what,
        duration_s: started.elapsed().as_secs_f64(),
        ping: summarize_us(&rtts),
        work_done: done,
        note: None,
    })
}

/// Ping round trips from server start until the expiry is seen finished: by the
/// "Deleted N expired messages" log line (stock), or by every archive counting zero.
pub async fn stall_during_expiry(
    port: u16,
    archives: &Archives<'_>,
    log_path: &std::path::Path,
    detect_by_log: bool,
    limit: Duration,
) -> Result<StallResult> {
    let started = Instant::now();
    let p = xmpp::login(port, "pinger", PASSWORD, "expiry").await?;
    let stop = Arc::new(AtomicU64::new(0));
    let ping_task = tokio::spawn(pinger(
        p,
        Duration::from_millis(10),
        stop.clone(),
        limit + Duration::from_secs(5),
    ));
    let mut finished = false;
    let mut k = 0;
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if detect_by_log {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            if log.contains("Deleted ") && log.contains("expired messages") {
                finished = true;
                break;
            }
        } else {
            let remaining = archives.count(port, &format!("chk{k}")).await?;
            k += 1;
            if remaining == Some(0) {
                finished = true;
                break;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(1, Ordering::Relaxed);
    let (p, rtts) = ping_task.await??;
    p.close().await;
    Ok(StallResult {
        what: format!("expiry of the pre-populated {}", archives.what()),
        duration_s: elapsed,
        ping: summarize_us(&rtts),
        work_done: 0,
        note: if finished {
            None
        } else {
            Some(format!("expiry not seen finished within {limit:?}"))
        },
    })
}

/// Total messages left in the given archives (via MAM count).
pub async fn remaining(port: u16, datasets: &[Dataset]) -> Result<u64> {
    let mut total = 0;
    for ds in datasets {
        let mut o = xmpp::login(port, &ds.owner, PASSWORD, "left").await?;
        let q = MamQuery {
            max: Some(0),
            ..Default::default()
        };
        total += o
            .mam(&q, "left", Duration::from_secs(300))
            .await?
            .count
            .unwrap_or(0);
        o.close().await;
    }
    Ok(total)
}

/// The pre-populated archives an expiry phase empties, and how to count what they hold.
pub enum Archives<'a> {
    /// Personal archives, each counted by its owner.
    Owners(&'a [Dataset]),
    /// Room archives, each counted by `user` through a MAM query to the room's JID.
    Rooms {
        user: &'a str,
        rooms: &'a [populate::RoomDataset],
    },
}

impl Archives<'_> {
    fn what(&self) -> &'static str {
        match self {
            Archives::Owners(_) => "archives",
            Archives::Rooms { .. } => "room archives",
        }
    }

    /// Messages left in every archive: `<max>0</max>`'s `<count/>` per archive; an
    /// archive whose server gives no count (Prosody 13's file store) counts 0 only when
    /// a page of one comes back empty, else the total is unknown (`None`).
    pub async fn count(&self, port: u16, resource: &str) -> Result<Option<u64>> {
        let count_q = MamQuery {
            max: Some(0),
            ..Default::default()
        };
        match self {
            Archives::Owners(datasets) => {
                let mut total = 0;
                for ds in datasets.iter() {
                    // Counts are per owner, so ask as each owner.
                    let mut o = xmpp::login(port, &ds.owner, PASSWORD, resource).await?;
                    let r = o.mam(&count_q, "c", Duration::from_secs(300)).await?;
                    o.close().await;
                    total += r.count.unwrap_or(0);
                }
                Ok(Some(total))
            }
            Archives::Rooms { user, rooms } => {
                let mut s = xmpp::login(port, user, PASSWORD, resource).await?;
                let mut total = Some(0);
                for (k, r) in rooms.iter().enumerate() {
                    let mut q = count_q.clone();
                    q.to = Some(r.jid());
                    let got = s
                        .mam(&q, &format!("c{k}"), Duration::from_secs(300))
                        .await?;
                    if let Some(e) = got.error {
                        anyhow::bail!("counting {} was refused: {e}", r.jid());
                    }
                    let n = match got.count {
                        Some(n) => Some(n),
                        None => {
                            q.max = Some(1);
                            let page = s
                                .mam(&q, &format!("p{k}"), Duration::from_secs(300))
                                .await?;
                            (page.results == 0).then_some(0)
                        }
                    };
                    total = total.zip(n).map(|(a, b)| a + b);
                }
                s.close().await;
                Ok(total)
            }
        }
    }
}
