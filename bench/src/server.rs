//! One private loopback Prosody per configuration: its config file, its users, its
//! process (started in the foreground, stopped by PID), and its CPU and memory as
//! `/proc` reports them.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::pg::{PgTarget, PG_PASSWORD, PG_USER};
use crate::xmpp::{DOMAIN, MUC_DOMAIN};

/// PIDs of every Prosody this process has started and not yet reaped, so that a
/// panic or Ctrl-C can stop them (see [`kill_all_registered`]).
static LIVE_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

pub const PASSWORD: &str = "pw";

/// The directory of the `prosody` and `prosodyctl` every configuration runs
/// (`None`: the system's, found on PATH). Set once, from `--prosody-bin`.
static PROSODY_BIN: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

pub fn use_prosody_bin(bin: Option<PathBuf>) {
    let _ = PROSODY_BIN.set(bin);
}

/// The program `name` (`prosody`, `prosodyctl`) of the Prosody under test.
fn program(name: &str) -> PathBuf {
    match PROSODY_BIN.get().and_then(Option::as_ref) {
        Some(bin) => bin.join(name),
        None => PathBuf::from(name),
    }
}

/// The version of the Prosody under test: its sources' `prosody.version` next to a
/// `--prosody-bin`, else the Debian package's (never `prosody --version`, which
/// starts a server).
pub fn prosody_version() -> String {
    if let Some(bin) = PROSODY_BIN.get().and_then(Option::as_ref) {
        let file = bin.join("../lib/prosody/prosody.version");
        return fs::read_to_string(file)
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
    }
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "prosody"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The benchmark's own Prosody plugins (`nomam-sid`'s module).
const BENCH_PLUGINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/plugins");

/// The server configurations the benchmark compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// No MAM module at all: the ceiling.
    NoMam,
    /// No MAM module, only a `<stanza-id/>` added to each delivered message
    /// (`bench/plugins/mod_bench_stanza_id.lua`): the ceiling for any XEP-0313 module,
    /// since every one must add that element and Prosody builds and serialises it.
    NoMamStanzaId,
    /// Stock mod_mam with the default file store (`mod_storage_internal`).
    StockInternal,
    /// Stock mod_mam with `mod_storage_sql` on SQLite3.
    StockSql,
    /// prosody-mam-native (plugin folder replacing mod_mam) on its embedded SQLite file.
    Native,
    /// `Native` with `mam_commit_before_delivery = false`: the behaviour before issue 16
    /// (delivery at once, commit within the writer's 2 ms linger), measured against the
    /// default's commit before delivery. Throughput phases only.
    NativeNoWait,
    /// prosody-mam-native on PostgreSQL (`mam_sql`), in the run's private cluster.
    NativePg,
    /// `Native` with `archive_compression = false` (issue 18): stanzas stored as text,
    /// as before compression, its pre-populated rows text too, where `native`'s are
    /// compressed. Every phase but the rooms'.
    NativePlain,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::NoMam,
        Kind::NoMamStanzaId,
        Kind::StockInternal,
        Kind::StockSql,
        Kind::Native,
        Kind::NativeNoWait,
        Kind::NativePlain,
        Kind::NativePg,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::NoMam => "nomam",
            Kind::NoMamStanzaId => "nomam-sid",
            Kind::StockInternal => "stock-internal",
            Kind::StockSql => "stock-sql",
            Kind::Native => "native",
            Kind::NativeNoWait => "native-nowait",
            Kind::NativePg => "native-pg",
            Kind::NativePlain => "native-plain",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    pub fn has_mam(self) -> bool {
        !matches!(self, Kind::NoMam | Kind::NoMamStanzaId)
    }

    /// Ours (the plugin folder), on either backend and in either delivery mode.
    pub fn is_native(self) -> bool {
        matches!(
            self,
            Kind::Native | Kind::NativeNoWait | Kind::NativePg | Kind::NativePlain
        )
    }

    /// Whether the phases after the throughput ones (pre-population, queries, the
    /// stall during queries, expiry) run. Not for the ceilings, which have no archive,
    /// nor for `native-nowait`, whose archive is `native`'s: it differs only in when a
    /// message is delivered, which only the throughput phases see.
    pub fn runs_archive_phases(self) -> bool {
        self.has_mam() && self != Kind::NativeNoWait
    }
}

/// Expiry settings for the expiry phase; `None` everywhere else (`"never"`).
#[derive(Debug, Clone)]
pub struct Expiry {
    pub expires_after: String,
    pub cleanup_interval: u64,
}

/// The MUC component of the room phases: `Component "rooms.localhost" "muc"` with
/// `mod_muc_mam` (stock's, or ours from the plugin folder for the native
/// configurations), rooms persistent, public and unlocked from their first join.
#[derive(Debug, Clone)]
pub struct MucSpec {
    /// `muc_log_expires_after`: `"never"` outside the expiry phase (stock's default,
    /// one week, would expire the pre-populated rooms in the middle of the queries on
    /// Prosody 13, whose `mod_cron` runs a new task at once).
    pub expires_after: String,
    /// `archive_cleanup_interval` on the component (ours: seconds between expiry runs).
    pub cleanup_interval: Option<u64>,
}

impl MucSpec {
    pub fn never() -> MucSpec {
        MucSpec {
            expires_after: "never".into(),
            cleanup_interval: None,
        }
    }
}

/// Everything needed to write one Prosody config.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub kind: Kind,
    /// The configuration's own directory: config, data, log, pidfile.
    pub dir: PathBuf,
    pub port: u16,
    pub plugin_dir: Option<PathBuf>,
    pub expiry: Option<Expiry>,
    /// Log at info (needed to see stock's "Deleted N expired messages") instead of warn.
    pub log_info: bool,
    /// For `native-pg`: the database in the run's private PostgreSQL cluster.
    pub pg: Option<PgTarget>,
    /// The room phases' MUC component, if any.
    pub muc: Option<MucSpec>,
}

impl ServerSpec {
    pub fn data_path(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("prosody.cfg.lua")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("prosody.log")
    }

    /// The Prosody config for this spec, as Lua source.
    pub fn config_text(&self) -> String {
        let d = self.dir.display();
        let mut c = String::new();
        let _ = writeln!(
            c,
            "-- generated by mam-bench for configuration {}",
            self.kind.name()
        );
        let _ = writeln!(c, "pidfile = \"{d}/prosody.pid\"");
        let _ = writeln!(c, "data_path = \"{d}/data\"");
        let _ = writeln!(c, "certificates = \"{d}/certs\"");
        let _ = writeln!(c, "run_as_root = true");
        let _ = writeln!(c, "c2s_ports = {{ {} }}", self.port);
        let _ = writeln!(c, "c2s_interfaces = {{ \"127.0.0.1\" }}");
        let _ = writeln!(c, "s2s_ports = {{}}");
        let _ = writeln!(c, "http_ports = {{}}");
        let _ = writeln!(c, "https_ports = {{}}");
        let _ = writeln!(c, "c2s_require_encryption = false");
        let _ = writeln!(c, "allow_unencrypted_plain_auth = true");
        let _ = writeln!(c, "authentication = \"internal_plain\"");
        let _ = writeln!(c, "network_settings = {{ nagle = false }}");
        let level = if self.log_info { "info" } else { "warn" };
        let _ = writeln!(c, "log = {{ {level} = \"{d}/prosody.log\" }}");
        let _ = writeln!(c, "storage_archive_item_limit = 10000000");
        match &self.expiry {
            None => {
                let _ = writeln!(c, "archive_expires_after = \"never\"");
            }
            Some(e) => {
                let _ = writeln!(c, "archive_expires_after = \"{}\"", e.expires_after);
                let _ = writeln!(c, "archive_cleanup_interval = {}", e.cleanup_interval);
            }
        }
        let mam = match self.kind {
            Kind::NoMam => "",
            Kind::NoMamStanzaId => " \"bench_stanza_id\";",
            _ => " \"mam\";",
        };
        let _ = writeln!(
            c,
            "modules_enabled = {{ \"roster\"; \"saslauth\"; \"disco\"; \"ping\";{mam} }}"
        );
        match self.kind {
            Kind::StockSql => {
                let _ = writeln!(c, "storage = {{ archive = \"sql\" }}");
                let _ = writeln!(
                    c,
                    "sql = {{ driver = \"SQLite3\", database = \"prosody.sqlite\" }}"
                );
            }
            Kind::NoMamStanzaId => {
                let _ = writeln!(c, "plugin_paths = {{ \"{BENCH_PLUGINS}\" }}");
            }
            Kind::Native | Kind::NativeNoWait | Kind::NativePg | Kind::NativePlain => {
                if let Some(p) = &self.plugin_dir {
                    let _ = writeln!(c, "plugin_paths = {{ \"{}\" }}", p.display());
                }
                if self.kind == Kind::NativeNoWait {
                    let _ = writeln!(c, "mam_commit_before_delivery = false");
                }
                if self.kind == Kind::NativePlain {
                    let _ = writeln!(c, "archive_compression = false");
                }
                if let Some(pg) = &self.pg {
                    let _ = writeln!(
                        c,
                        "mam_sql = {{ driver = \"PostgreSQL\", database = \"{}\", host = \"127.0.0.1\", port = {}, username = \"{PG_USER}\", password = \"{PG_PASSWORD}\" }}",
                        pg.database, pg.port
                    );
                }
            }
            _ => {}
        }
        let _ = writeln!(c, "VirtualHost \"{DOMAIN}\"");
        if let Some(muc) = &self.muc {
            let _ = writeln!(c, "Component \"{MUC_DOMAIN}\" \"muc\"");
            let _ = writeln!(c, "modules_enabled = {{ \"muc_mam\" }}");
            let _ = writeln!(c, "muc_room_locking = false");
            let _ = writeln!(c, "muc_room_default_persistent = true");
            // Public rooms: anyone not banned may read their archive, under stock's
            // rule and ours alike (ours keeps a hidden room's archive to its members
            // and occupants, and the querying user is neither).
            let _ = writeln!(c, "muc_room_default_public = true");
            let _ = writeln!(c, "muc_log_expires_after = \"{}\"", muc.expires_after);
            if let Some(i) = muc.cleanup_interval {
                let _ = writeln!(c, "archive_cleanup_interval = {i}");
            }
            if self.kind == Kind::StockSql {
                // The component's own `storage` replaces the global one (`archive`
                // on sql for the VirtualHost); the `sql` connection is the global one.
                let _ = writeln!(c, "storage = {{ muc_log = \"sql\" }}");
            }
        }
        c
    }

    /// Creates the directory tree and writes the config.
    pub fn write(&self) -> Result<()> {
        fs::create_dir_all(self.data_path())?;
        fs::create_dir_all(self.dir.join("certs"))?;
        fs::write(self.config_path(), self.config_text()).context("writing prosody config")?;
        Ok(())
    }

    /// Registers accounts with `prosodyctl register`.
    pub fn register(&self, users: &[String]) -> Result<()> {
        for u in users {
            let out = Command::new(program("prosodyctl"))
                .arg("--config")
                .arg(self.config_path())
                .args(["register", u, DOMAIN, PASSWORD])
                .stdin(Stdio::null())
                .output()
                .context("running prosodyctl register")?;
            if !out.status.success() {
                bail!(
                    "prosodyctl register {u} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }
}

/// Writes accounts straight into the file store, as `prosodyctl register` does for
/// `authentication = "internal_plain"` (`<data>/localhost/accounts/<user>.dat` holding
/// the password): the room phases need a few hundred occupants, and one `prosodyctl`
/// per account would take half a minute per configuration. The server must be stopped.
pub fn write_accounts(data_path: &Path, users: &[String]) -> Result<()> {
    let dir = data_path
        .join(crate::populate::datamanager_encode(DOMAIN))
        .join("accounts");
    fs::create_dir_all(&dir)?;
    for u in users {
        fs::write(
            dir.join(format!("{}.dat", crate::populate::datamanager_encode(u))),
            format!("return {{\n\t[\"password\"] = \"{PASSWORD}\";\n}};\n"),
        )
        .with_context(|| format!("writing the account {u}"))?;
    }
    Ok(())
}

/// A free loopback port (bound, then released for Prosody to take).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A running Prosody. Dropping it stops the process.
pub struct Server {
    kind: Kind,
    child: Child,
    pub pid: u32,
    /// The postmaster of the database server this Prosody archives into, if it is a
    /// separate process (`native-pg`), so its CPU is reported next to Prosody's.
    pub db_pid: Option<u32>,
}

impl Server {
    /// Starts `prosody -F` and waits until its c2s port accepts connections.
    pub fn start(spec: &ServerSpec) -> Result<Server> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.dir.join("stdout.log"))?;
        let child = Command::new(program("prosody"))
            .arg("-F")
            .arg("--config")
            .arg(spec.config_path())
            .current_dir(&spec.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prosody")?;
        let pid = child.id();
        LIVE_PIDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pid);
        let mut server = Server {
            kind: spec.kind,
            child,
            pid,
            db_pid: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", spec.port)).is_ok() {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                let log = fs::read_to_string(spec.dir.join("stdout.log")).unwrap_or_default();
                let plog = fs::read_to_string(spec.log_path()).unwrap_or_default();
                bail!(
                    "prosody ({}) exited at start with {status}:\n{log}\n{plog}",
                    spec.kind.name()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "prosody ({}) did not open port {} within 30 s",
                    spec.kind.name(),
                    spec.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        proc_rss_kib(self.pid)
    }

    /// RSS in KiB once start-up has finished: the listening port opens before every
    /// module has loaded, and RSS then still climbs for tens of milliseconds (a
    /// reading at once caught 12-23 MiB of the same server), so this waits until two
    /// readings 100 ms apart agree, for at most 3 s.
    pub fn settled_rss_kib(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut last = self.rss_kib();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.rss_kib();
            if now == last || Instant::now() >= deadline {
                return now;
            }
            last = now;
        }
    }

    /// CPU time (user + system) consumed so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(self.pid)
    }

    /// CPU time of Prosody's own thread (the event loop: the process's main thread),
    /// without the module's writer and reader threads, in seconds.
    pub fn event_loop_cpu_seconds(&self) -> f64 {
        stat_cpu_seconds(&proc_stat_fields_of(&format!(
            "/proc/{0}/task/{0}/stat",
            self.pid
        )))
    }

    /// CPU time of the database server's processes, when there is one.
    pub fn db_cpu_seconds(&self) -> Option<f64> {
        self.db_pid.map(proc_tree_cpu_seconds)
    }

    /// SIGTERM, then SIGKILL after 10 s; waits for the process.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner();
        Ok(())
    }

    fn stop_inner(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            unregister(self.pid);
            return;
        }
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    eprintln!(
                        "mam-bench: prosody ({}) ignored SIGTERM for 10 s; killing pid {}",
                        self.kind.name(),
                        self.pid
                    );
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        unregister(self.pid);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn unregister(pid: u32) {
    LIVE_PIDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&p| p != pid);
}

/// Kills every Prosody we started that is still registered (panic hook, Ctrl-C).
pub fn kill_all_registered() {
    let pids: Vec<u32> = LIVE_PIDS.lock().map(|v| v.clone()).unwrap_or_default();
    for pid in pids {
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        eprintln!("mam-bench: killed prosody pid {pid}");
    }
}

pub fn proc_rss_kib(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The fields of `/proc/<pid>/stat` after the command name (which is in parentheses
/// and may contain spaces): index 0 is the state, 1 the parent PID, 11 and 12 utime and
/// stime, 13 and 14 the reaped children's cutime and cstime.
fn proc_stat_fields(pid: u32) -> Vec<u64> {
    proc_stat_fields_of(&format!("/proc/{pid}/stat"))
}

/// [`proc_stat_fields`] of a `stat` file given by path (a thread's, under `task/`).
fn proc_stat_fields_of(path: &str) -> Vec<u64> {
    let s = fs::read_to_string(path).unwrap_or_default();
    let rest = match s.rfind(')') {
        Some(i) => &s[i + 1..],
        None => return Vec::new(),
    };
    rest.split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect()
}

fn ticks_to_seconds(ticks: u64) -> f64 {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / if hz > 0.0 { hz } else { 100.0 }
}

pub fn proc_cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&proc_stat_fields(pid))
}

/// utime + stime of [`proc_stat_fields`], in seconds.
fn stat_cpu_seconds(fields: &[u64]) -> f64 {
    ticks_to_seconds(fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0))
}

/// CPU time of `pid`, of its live children, and of the children it has reaped (for a
/// server that forks a process per connection, such as PostgreSQL's postmaster).
pub fn proc_tree_cpu_seconds(pid: u32) -> f64 {
    let f = proc_stat_fields(pid);
    let own: u64 = f.iter().skip(11).take(4).sum();
    let mut total = ticks_to_seconds(own);
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if proc_stat_fields(child).get(1) == Some(&u64::from(pid)) {
                total += proc_cpu_seconds(child);
            }
        }
    }
    total
}

/// The plugin folder to use for ours (`native`, `native-nowait`, `native-pg`), or why
/// it cannot be used.
pub fn check_plugin_dir(dir: &Path) -> std::result::Result<(), String> {
    let m = dir.join("mod_mam");
    for f in ["mod_mam.lua", "mam_native.so"] {
        if !m.join(f).is_file() {
            return Err(format!(
                "{} is missing (run `make plugin` in the repository)",
                m.join(f).display()
            ));
        }
    }
    Ok(())
}

/// Our room module in the plugin folder, or why it cannot be used. Prosody looks in
/// `plugin_paths` first and falls back to its own `mod_muc_mam` silently, so a missing
/// file would measure stock under our name.
pub fn check_room_plugin_dir(dir: &Path) -> std::result::Result<(), String> {
    let m = dir.join("mod_muc_mam");
    for f in ["mod_muc_mam.lua", "mam_native.so"] {
        if !m.join(f).exists() {
            return Err(format!(
                "{} is missing (run `make plugin` in the repository)",
                m.join(f).display()
            ));
        }
    }
    Ok(())
}

/// CPU time (user + system) this benchmark process has used so far, in seconds.
pub fn self_cpu_seconds() -> f64 {
    proc_cpu_seconds(std::process::id())
}
