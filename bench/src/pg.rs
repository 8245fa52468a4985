//! The private PostgreSQL cluster of one run, for the `native-pg` configuration and the
//! PostgreSQL physical limit: created with `initdb` in the work directory, listening
//! only on 127.0.0.1 on a free port (its Unix socket in the same directory), started
//! with `pg_ctl`, and stopped by the postmaster's PID at the end of the run.
//!
//! `initdb` and the server refuse to run as root, so when the benchmark runs as root
//! both run as the `postgres` OS user through `runuser`. Durability is PostgreSQL's
//! default (`fsync = on`, `synchronous_commit = on`, `full_page_writes = on`); only
//! `shared_buffers` is raised, to [`SHARED_BUFFERS`], and the report says so.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postgres::{Client, NoTls};
use serde_json::{json, Value};

/// The role the module and the harness connect as (superuser of the private cluster).
pub const PG_USER: &str = "mam";
/// Its password. The cluster is private to one run and listens only on loopback;
/// TCP connections still authenticate with SCRAM, as a real deployment would.
pub const PG_PASSWORD: &str = "mam-bench";
/// The one setting raised above PostgreSQL's defaults (128MB).
pub const SHARED_BUFFERS: &str = "256MB";

/// Postmaster PIDs of clusters this process started and has not stopped, so that a
/// panic or Ctrl-C can stop them (see [`kill_all_registered`]).
static LIVE_POSTMASTERS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Where a configuration's database is: what goes into `mam_sql`.
#[derive(Debug, Clone)]
pub struct PgTarget {
    pub port: u16,
    pub database: String,
}

/// A running private cluster. Dropping it stops the server.
pub struct PgCluster {
    /// The cluster's directory: `data/`, the socket, `postgres.log`.
    dir: PathBuf,
    pub port: u16,
    /// The postmaster (read from `data/postmaster.pid`; not our child: `pg_ctl`
    /// detaches it).
    pub pid: u32,
    /// `/usr/lib/postgresql/<version>/bin`.
    bin: PathBuf,
    /// The OS user the server runs as, when we are root (`None`: as ourselves).
    run_as: Option<String>,
    stopped: bool,
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
fn find_bin() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut best: Option<(u32, PathBuf)> = None;
    for e in fs::read_dir(root).with_context(|| {
        format!(
            "{} not found: install PostgreSQL (Debian package postgresql)",
            root.display()
        )
    })? {
        let p = e?.path();
        let Some(v) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('.').next())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let bin = p.join("bin");
        if bin.join("initdb").is_file() && best.as_ref().is_none_or(|(b, _)| v > *b) {
            best = Some((v, bin));
        }
    }
    best.map(|(_, b)| b)
        .with_context(|| format!("no {}/<version>/bin/initdb", root.display()))
}

/// uid and gid of an OS user.
fn user_ids(name: &str) -> Result<(u32, u32)> {
    let c = CString::new(name)?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we copy the two
    // fields out at once and this program calls it from one thread at a time.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        bail!("no OS user {name:?}: PostgreSQL refuses to run as root, and we are root");
    }
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn chown(path: &Path, ids: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// Is `pid` alive (a zombie counts as gone: it is only waiting for its parent)?
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

impl PgCluster {
    /// `initdb` in `dir` (which must not exist or be empty), then starts the server on
    /// a free loopback port and waits until it accepts connections.
    pub fn start(dir: &Path) -> Result<PgCluster> {
        let bin = find_bin()?;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = root.then(|| "postgres".to_string());
        let ids = match &run_as {
            Some(u) => Some(user_ids(u)?),
            None => None,
        };
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // The server's user must be able to reach its directory inside our work dir.
        if let Some(parent) = dir.parent() {
            let mode = fs::metadata(parent)?.permissions().mode();
            if mode & 0o001 == 0 {
                fs::set_permissions(parent, fs::Permissions::from_mode(mode | 0o001))?;
            }
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        chown(dir, ids)?;
        let pwfile = dir.join("pwfile");
        fs::write(&pwfile, PG_PASSWORD)?;
        chown(&pwfile, ids)?;
        let data = dir.join("data");
        let port = crate::server::free_port()?;
        let mut cluster = PgCluster {
            dir: dir.to_path_buf(),
            port,
            pid: 0,
            bin,
            run_as,
            stopped: true,
        };
        cluster.run_tool(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                PG_USER.as_ref(),
                format!("--pwfile={}", pwfile.display()).as_ref(),
                // The socket directory is ours alone; TCP needs the password.
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
                // Only skips syncing initdb's own files; the server's durability
                // settings below are untouched.
                "--no-sync".as_ref(),
            ],
        )?;
        let _ = fs::remove_file(&pwfile);
        let conf = format!(
            "\n# mam-bench: a private cluster for one run; durability left at the defaults.\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{}'\n\
             shared_buffers = {SHARED_BUFFERS}\n\
             fsync = on\n\
             synchronous_commit = on\n\
             full_page_writes = on\n",
            dir.display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf_path).context("reading postgresql.conf")?;
        text.push_str(&conf);
        fs::write(&conf_path, text)?;
        let log = dir.join("postgres.log");
        cluster.run_tool(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        )?;
        let pidline = fs::read_to_string(data.join("postmaster.pid"))
            .context("reading postmaster.pid after pg_ctl start")?;
        cluster.pid = pidline
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("postmaster.pid has no PID")?;
        cluster.stopped = false;
        LIVE_POSTMASTERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cluster.pid);
        // pg_ctl -w returned once the server accepted connections; check ours works.
        cluster
            .client("postgres")
            .context("connecting to the new cluster")?;
        Ok(cluster)
    }

    /// Runs one of PostgreSQL's programs (as the server's OS user when we are root).
    fn run_tool(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
        let prog = self.bin.join(tool);
        let mut cmd = match &self.run_as {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&prog);
                c
            }
            None => Command::new(&prog),
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", prog.display()))?;
        if !out.status.success() {
            let log = fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
            bail!(
                "{tool} failed ({}):\n{}{}\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A connection to `database` over TCP, as [`PG_USER`].
    pub fn client(&self, database: &str) -> Result<Client> {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(PG_USER)
            .password(PG_PASSWORD)
            .dbname(database)
            .application_name("mam-bench")
            .connect_timeout(Duration::from_secs(10))
            .connect(NoTls)
            .with_context(|| format!("connecting to PostgreSQL database {database}"))
    }

    /// A new, empty database `name` (dropped first if a previous step left one).
    /// `name` is one of the harness's own constants, never user input.
    pub fn create_database(&self, name: &str) -> Result<PgTarget> {
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            bail!("bad database name {name:?}");
        }
        let mut c = self.client("postgres")?;
        // Two statements: neither may run inside a transaction block, which one
        // multi-statement query string would be.
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .with_context(|| format!("dropping database {name}"))?;
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .with_context(|| format!("creating database {name}"))?;
        Ok(PgTarget {
            port: self.port,
            database: name.to_string(),
        })
    }

    pub fn drop_database(&self, name: &str) -> Result<()> {
        let mut c = self.client("postgres")?;
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
        Ok(())
    }

    /// The schema of `database`'s `mam_*` tables as SQL (`pg_dump --schema-only`).
    pub fn dump_schema(&self, database: &str) -> Result<String> {
        let out = Command::new(self.bin.join("pg_dump"))
            .args([
                "--schema-only",
                "--no-owner",
                "--no-privileges",
                "-t",
                "mam_*",
            ])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                PG_USER,
            ])
            .args(["-d", database])
            .env("PGPASSWORD", PG_PASSWORD)
            .stdin(Stdio::null())
            .output()
            .context("running pg_dump")?;
        if !out.status.success() {
            bail!("pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        // Recent pg_dump releases bracket the dump with psql meta-commands
        // (`\restrict`, `\unrestrict`); the server only takes the SQL.
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('\\'))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Version and the settings that matter for the comparison, as the server reports
    /// them (for the report).
    pub fn describe(&self) -> Value {
        let read = || -> Result<Value> {
            let mut c = self.client("postgres")?;
            let version: String = c.query_one("SHOW server_version", &[])?.get(0);
            let mut settings = serde_json::Map::new();
            for row in c.query(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY($1) ORDER BY name",
                &[&vec![
                    "fsync",
                    "synchronous_commit",
                    "full_page_writes",
                    "wal_sync_method",
                    "shared_buffers",
                    "max_wal_size",
                    "listen_addresses",
                ]],
            )? {
                settings.insert(row.get(0), json!(row.get::<_, String>(1)));
            }
            Ok(json!({
                "version": version,
                "settings": settings,
                "note": format!("private cluster started for this run on 127.0.0.1; PostgreSQL defaults except shared_buffers = {SHARED_BUFFERS}"),
            }))
        };
        read().unwrap_or_else(|e| json!({ "error": format!("{e:#}") }))
    }

    /// Fast shutdown (SIGINT) of the postmaster; SIGQUIT after 30 s, SIGKILL after 5 more.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pid = self.pid;
        for (sig, wait) in [
            (libc::SIGINT, Duration::from_secs(30)),
            (libc::SIGQUIT, Duration::from_secs(5)),
            (libc::SIGKILL, Duration::from_secs(5)),
        ] {
            if !alive(pid) {
                break;
            }
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid as i32, sig);
            }
            let deadline = Instant::now() + wait;
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) {
                eprintln!("mam-bench: PostgreSQL pid {pid} still running after signal {sig}");
            }
        }
        LIVE_POSTMASTERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&p| p != pid);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Immediate shutdown (SIGQUIT: the postmaster stops its children and exits at once)
/// of every cluster still registered (panic hook, Ctrl-C). The cluster is thrown
/// away with the work directory, so no clean shutdown is needed.
pub fn kill_all_registered() {
    let pids: Vec<u32> = LIVE_POSTMASTERS
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    for pid in pids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as i32, libc::SIGQUIT);
        }
        eprintln!("mam-bench: stopped PostgreSQL pid {pid}");
    }
}
