//! Prosody options, parsed and validated once at module load.
//!
//! The shim hands us the raw values from `module:get_option(name)`; we accept the same
//! names, defaults and formats as stock `mod_mam` 0.12 and refuse anything else with a
//! message that names the option and the forms it accepts, so a typo fails loudly at
//! load instead of silently archiving forever (stock reads `"1h"` as one second).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{MamError, Result};
use crate::expiry::period::{parse_period, DAY};
use crate::policy::DefaultPolicy;

/// A raw option value as it comes out of Prosody's config.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Bool(bool),
    Number(f64),
    String(String),
    /// A Lua array (or set) of strings.
    List(Vec<String>),
    /// A Lua table with named fields (`sql = { driver = …, database = … }`,
    /// `storage = { archive = "sql" }`).
    Table(BTreeMap<String, RawValue>),
}

/// Every option name the module reads, so the shim can read them all at once and
/// pass them in one table.
pub const OPTION_NAMES: &[&str] = &[
    "archive_expires_after",
    "archive_cleanup_interval",
    // Prosody 13's period for stock's own daily cleanup task (mod_cron reads
    // `<module>_<task>_period`); honoured when archive_cleanup_interval is not set.
    "mam_remove_expired_messages_period",
    "max_archive_query_results",
    "default_archive_policy",
    "dont_archive_namespaces",
    "mam_smart_enable",
    "mam_include_total",
    "archive_store",
    "storage_archive_item_limit",
    "mam_database",
    "mam_max_db_pages",
    "mam_inline_read_wait",
    "mam_commit_before_delivery",
    "mam_commit_wait_limit",
    // Issue 18: stanzas stored compressed (zstd with a dictionary trained on the
    // archive's own messages); one name for account and room archives.
    "archive_compression",
    // Where the archive lives (PostgreSQL): ours, then Prosody's own storage options.
    "mam_sql",
    "sql",
    "storage",
    "default_storage",
    // Room archives (mod_muc_mam on a MUC component): stock's names for the same
    // settings, read instead of the personal ones (see [`Owners::Rooms`]).
    "muc_log_expires_after",
    "muc_log_include_total",
    "muc_mam_remove_expired_messages_period",
    "muc_mam_database",
    // Encryption at rest of the SQLite file (SQLCipher): the key when `mam_sql` does
    // not give one as its `password` (docs/encryption.md).
    "mam_database_key",
    "muc_mam_database_key",
];

/// Whose archives a host keeps, which decides the option names it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// `mod_mam` on a VirtualHost: one archive per account.
    Accounts,
    /// `mod_muc_mam` on a MUC component: one archive per room (the room's node is
    /// the archive's user). Stock's room option names apply: `muc_log_expires_after`
    /// (default one week), `muc_log_include_total` (default true; when the archive
    /// never expires `mam_include_total` replaces it, as stock does), the store
    /// `muc_log` (so the default file is `mam_muc_log.sqlite`, never the accounts'
    /// one), `muc_mam_database` for that file; no archiving preferences and nothing
    /// stripped by namespace (stock stores a room's message as it was broadcast).
    Rooms,
}

/// The option names that differ between [`Owners`]; everything else is shared.
struct OwnerOptions {
    expires_after: &'static str,
    /// Prosody 13's option for the period of stock's cleanup task (`mod_cron`: the
    /// task id `mam/remove_expired_messages`, `/` as `_`, then `_period`); honoured
    /// when `archive_cleanup_interval` is not set.
    cleanup_period: &'static str,
    database: &'static str,
    /// The SQLCipher key of that file when no `mam_sql` table gives one.
    database_key: &'static str,
    /// The store name when the host sets none (rooms: stock's fixed `muc_log`).
    default_store: &'static str,
}

const ACCOUNT_OPTIONS: OwnerOptions = OwnerOptions {
    expires_after: "archive_expires_after",
    cleanup_period: "mam_remove_expired_messages_period",
    database: "mam_database",
    database_key: "mam_database_key",
    default_store: "archive",
};

const ROOM_OPTIONS: OwnerOptions = OwnerOptions {
    expires_after: "muc_log_expires_after",
    cleanup_period: "muc_mam_remove_expired_messages_period",
    database: "muc_mam_database",
    database_key: "muc_mam_database_key",
    default_store: "muc_log",
};

/// Stock `mod_muc_mam`'s `with` for a join stored with `muc_log_presences`.
pub const PRESENCE_JOINED_WITH: &str = "presence";
/// Stock `mod_muc_mam`'s `with` for a leave stored with `muc_log_presences`.
pub const PRESENCE_LEFT_WITH: &str = "presence<unavailable";

/// What ends the archive user that holds a room's presences (`muc_log_presences`):
/// `room<presences`. A room's joins and leaves are kept as an archive of their own
/// beside the room's messages, so that no query of the room's messages (pages,
/// counts, history, metadata, quota) ever has to step over them: clients never see
/// them (stock returns them to nobody either), only the storage provider's readers
/// do (a web log viewer asks for a room's items without a `with`). `<` cannot occur
/// in a room's node (nodeprep forbids it), so no room can be named so.
const PRESENCES_SUFFIX: &str = "<presences";

/// The archive user holding the presences of the room `node`.
pub fn room_presences_user(node: &str) -> String {
    let mut user = String::with_capacity(node.len() + PRESENCES_SUFFIX.len());
    user.push_str(node);
    user.push_str(PRESENCES_SUFFIX);
    user
}

/// The room whose presences archive `user` is, if it is one.
pub fn room_of_presences_user(user: &str) -> Option<&str> {
    user.strip_suffix(PRESENCES_SUFFIX)
}

/// Stock's `with` for a room presence of this `type`: a join (no type) or a leave
/// (`unavailable`); `None` for any other presence, which stock never logs.
pub fn presence_with(presence_type: Option<&str>) -> Option<&'static str> {
    match presence_type {
        None => Some(PRESENCE_JOINED_WITH),
        Some("unavailable") => Some(PRESENCE_LEFT_WITH),
        Some(_) => None,
    }
}

/// The archive users that together are `user`'s whole archive: an account's own,
/// or a room's and its presences'. What deleting an account or a room removes.
pub fn whole_archive_users(owners: Owners, user: &str) -> Vec<String> {
    match owners {
        Owners::Accounts => vec![user.to_owned()],
        Owners::Rooms => vec![user.to_owned(), room_presences_user(user)],
    }
}

impl Owners {
    fn options(self) -> &'static OwnerOptions {
        match self {
            Owners::Accounts => &ACCOUNT_OPTIONS,
            Owners::Rooms => &ROOM_OPTIONS,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Owners::Accounts => "accounts",
            Owners::Rooms => "rooms",
        }
    }

    /// The option that sets the retention period (`archive_expires_after` or
    /// `muc_log_expires_after`), for messages that name it.
    pub fn expires_after_option(self) -> &'static str {
        self.options().expires_after
    }

    /// For the shim and commands: `"accounts"` or `"rooms"`.
    pub fn parse(name: &str) -> Option<Owners> {
        match name {
            "accounts" => Some(Owners::Accounts),
            "rooms" => Some(Owners::Rooms),
            _ => None,
        }
    }
}

/// Default `archive_cleanup_interval`: four hours, as Prosody documents it.
pub const DEFAULT_CLEANUP_INTERVAL: u64 = 4 * 60 * 60;
/// Default RSM page size when the client sends no `<max>` (stock: 20).
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Default `max_archive_query_results` (stock: 50).
pub const DEFAULT_MAX_RESULTS: usize = 50;

/// Default `mam_inline_read_wait`: a wake-up of an idle reader plus a page of 50 on
/// the benchmark machine (see [`crate::archive::Archive::answer_now`]).
pub const DEFAULT_INLINE_READ_WAIT: Duration = Duration::from_micros(300);

/// The most `mam_inline_read_wait` accepts, in milliseconds: past a few, the loop
/// would be held as long as stock holds it for a page.
const MAX_INLINE_READ_WAIT_MS: f64 = 2.0;

/// Default `mam_commit_wait_limit`: how long a delivery waits for its commit before
/// storage counts as failing (see docs/durability.md for why this figure).
pub const DEFAULT_COMMIT_WAIT_LIMIT: Duration = Duration::from_secs(2);

/// The range `mam_commit_wait_limit` accepts, in seconds: below a few tens of
/// milliseconds a WAL checkpoint would count as an outage; past a minute clients
/// give up on the server.
const COMMIT_WAIT_LIMIT_RANGE: (f64, f64) = (0.05, 60.0);

/// The module's validated configuration for one virtual host.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The virtual host (or MUC component) this instance serves.
    pub host: String,
    /// Accounts' archives or rooms'.
    pub owners: Owners,
    /// `archive_expires_after` in seconds; `None` for `"never"`.
    pub expires_after: Option<u64>,
    /// `archive_cleanup_interval`, seconds between expiry runs.
    pub cleanup_interval: u64,
    /// `max_archive_query_results`: the largest page a client may ask for.
    pub max_results: usize,
    /// Page size when the client does not say (never more than `max_results`).
    pub default_page: usize,
    /// `default_archive_policy`.
    pub default_policy: DefaultPolicy,
    /// `dont_archive_namespaces`: child elements in these namespaces are not stored.
    pub dont_archive_namespaces: Vec<String>,
    /// `mam_smart_enable`: archive nothing for a user until a MAM client shows up.
    pub smart_enable: bool,
    /// `mam_include_total`: send `<count>` in every `<fin>`.
    pub include_total: bool,
    /// `archive_store`: the store name (kept in the default database file name).
    pub archive_store: String,
    /// `storage_archive_item_limit`: per-user message quota, `None` for none.
    pub item_limit: Option<u64>,
    /// Where the archive lives.
    pub storage: Storage,
    /// `mam_inline_read_wait` (milliseconds in the option): how long the event loop
    /// may wait for a read the idle readers finish at once; zero never waits.
    pub inline_read_wait: Duration,
    /// `mam_commit_before_delivery`: a message is delivered only once its archive rows
    /// are committed (where the stanza is processed in a session's async runner).
    pub commit_before_delivery: bool,
    /// `mam_commit_wait_limit` (seconds in the option): how long deliveries wait for
    /// a commit before they go out uncommitted until storage catches up.
    pub commit_wait_limit: Duration,
    /// `archive_compression` (default true): new messages are stored compressed, and
    /// a background task compresses the older ones and gives the space back
    /// (`crate::compactor`). Off: new messages are stored as text, as before; rows
    /// already compressed stay readable either way.
    pub compression: bool,
    /// Values accepted with a guess (Prosody 13 logs the same ones as errors): one
    /// line each, for the module's log at load.
    pub warnings: Vec<String>,
}

/// The archive's database.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    /// The embedded default: one SQLite file in Prosody's data directory.
    Sqlite {
        /// `mam_database` (or `mam_sql`'s `database` with driver SQLite3).
        path: PathBuf,
        /// `mam_max_db_pages`: the most pages the database may grow to (SQLite's
        /// `max_page_count` on the writer's connection); `None` for SQLite's own
        /// limit. Beyond it writes fail as on a full disk.
        max_pages: Option<u64>,
        /// The SQLCipher key every connection to the file sets first, or none for a
        /// plain SQLite file (docs/encryption.md).
        key: DatabaseKey,
    },
    /// A PostgreSQL server (`mam_sql`, or Prosody's `sql` when the archive store is
    /// `"sql"` with driver PostgreSQL).
    Postgres(PgSettings),
}

impl Storage {
    /// Where the archive is, for logs: a path or a connection without its password.
    pub fn describe(&self) -> String {
        match self {
            Storage::Sqlite { path, .. } => path.display().to_string(),
            Storage::Postgres(pg) => pg.describe(),
        }
    }

    /// The SQLite file, when the archive is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Storage::Sqlite { path, .. } => Some(path),
            Storage::Postgres(_) => None,
        }
    }
}

/// The key of an encrypted SQLite archive (SQLCipher's `PRAGMA key`: a passphrase, or
/// a raw key written `x'…'`, as Prosody 13's SQLite driver passes `sql.password`),
/// together with the option that gives it or would give it.
///
/// The option is kept even without a key so that an archive that cannot be read
/// names where its key belongs. `Debug` never shows the key, so no log line or error
/// built from a config can.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseKey {
    /// The passphrase as configured; `None` for an unencrypted file.
    passphrase: Option<String>,
    /// Where it comes from: `mam_sql.password`, `mam_database_key`,
    /// `muc_mam_database_key`, or `MAM_SOURCE_KEY` for a copy's source file.
    option: &'static str,
}

impl DatabaseKey {
    /// No key: the file is plain SQLite; `option` is where a key would go.
    pub fn none(option: &'static str) -> DatabaseKey {
        DatabaseKey {
            passphrase: None,
            option,
        }
    }

    /// The key `passphrase`, given by `option`.
    pub fn given(option: &'static str, passphrase: String) -> DatabaseKey {
        DatabaseKey {
            passphrase: Some(passphrase),
            option,
        }
    }

    /// The passphrase, for `PRAGMA key` only.
    pub fn passphrase(&self) -> Option<&str> {
        self.passphrase.as_deref()
    }

    /// The option that gives (or would give) the key, for messages.
    pub fn option(&self) -> &'static str {
        self.option
    }
}

/// No key, the accounts' option named: what tests and tools that open a plain file use.
impl Default for DatabaseKey {
    fn default() -> Self {
        DatabaseKey::none(ACCOUNT_OPTIONS.database_key)
    }
}

impl fmt::Debug for DatabaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseKey")
            .field("passphrase", &self.passphrase.as_ref().map(|_| "<hidden>"))
            .field("option", &self.option)
            .finish()
    }
}

/// How to reach a PostgreSQL server: the fields of Prosody's `sql` table.
///
/// `Debug` leaves the password out, so no log line or error built from a config can
/// show it.
#[derive(Clone, PartialEq)]
pub struct PgSettings {
    pub database: String,
    /// A host name or address, or a directory holding the server's Unix socket.
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: Option<String>,
    /// `sslmode`, as libpq reads it (default `prefer`).
    pub sslmode: SslMode,
    /// `sslrootcert`: trusted roots (PEM) for the `verify-*` modes; `None` for the
    /// system's store.
    pub sslrootcert: Option<PathBuf>,
}

/// Whether and how the connection to PostgreSQL is encrypted; libpq's names and
/// meanings (see [`crate::store::postgres`]'s `tls` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSettings")
            .field("database", &self.database)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .finish()
    }
}

impl PgSettings {
    /// `postgresql://user@host:port/database`, never with the password.
    pub fn describe(&self) -> String {
        format!(
            "postgresql://{}@{}:{}/{}",
            self.username, self.host, self.port, self.database
        )
    }
}

/// libpq's default socket directory on Debian: where a `host`-less connection goes,
/// as it does for Prosody's own LuaDBI PostgreSQL driver.
pub(crate) const DEFAULT_PG_SOCKET_DIR: &str = "/var/run/postgresql";
pub(crate) const DEFAULT_PG_PORT: u16 = 5432;

/// Looks up raw option values by name (`None` when the admin did not set it).
pub trait OptionSource {
    fn get(&self, name: &str) -> Option<RawValue>;
}

impl<F: Fn(&str) -> Option<RawValue>> OptionSource for F {
    fn get(&self, name: &str) -> Option<RawValue> {
        self(name)
    }
}

pub(crate) fn invalid(option: &str, got: &RawValue, accepted: &str) -> MamError {
    let shown = match got {
        RawValue::Bool(b) => b.to_string(),
        RawValue::Number(n) => n.to_string(),
        RawValue::String(s) => format!("{s:?}"),
        RawValue::List(l) => format!("{l:?}"),
        RawValue::Table(_) => "a table".to_owned(),
    };
    MamError::Config(format!(
        "invalid value {shown} for option '{option}': expected {accepted}"
    ))
}

/// Parses `default_archive_policy`: `true`/`"always"`, `false`/`"never"`, `"roster"`.
pub fn parse_default_policy(value: &RawValue) -> Result<DefaultPolicy> {
    const ACCEPTED: &str = "true, false, \"roster\", \"always\" or \"never\"";
    match value {
        RawValue::Bool(true) => Ok(DefaultPolicy::Always),
        RawValue::Bool(false) => Ok(DefaultPolicy::Never),
        RawValue::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "always" | "true" => Ok(DefaultPolicy::Always),
            "never" | "false" => Ok(DefaultPolicy::Never),
            "roster" => Ok(DefaultPolicy::Roster),
            _ => Err(invalid("default_archive_policy", value, ACCEPTED)),
        },
        _ => Err(invalid("default_archive_policy", value, ACCEPTED)),
    }
}

fn parse_bool(option: &str, value: &RawValue) -> Result<bool> {
    match value {
        RawValue::Bool(b) => Ok(*b),
        RawValue::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => Ok(true),
            "false" | "no" | "off" => Ok(false),
            _ => Err(invalid(option, value, "true or false")),
        },
        _ => Err(invalid(option, value, "true or false")),
    }
}

/// A number given as a number or as a string holding one; `accepted` describes the
/// option's form for the error.
fn parse_number(option: &str, value: &RawValue, accepted: &str) -> Result<f64> {
    match value {
        RawValue::Number(n) => Ok(*n),
        RawValue::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| invalid(option, value, accepted)),
        _ => Err(invalid(option, value, accepted)),
    }
}

fn parse_count(option: &str, value: &RawValue, min: u64) -> Result<u64> {
    let accepted = format!("a whole number of at least {min}");
    let n = parse_number(option, value, &accepted)?;
    if !n.is_finite() || n.fract() != 0.0 || n < min as f64 || n > u32::MAX as f64 {
        return Err(invalid(option, value, &accepted));
    }
    Ok(n as u64)
}

/// A whole number option that stock reads with `get_option_integer` (13) or
/// `get_option_number` (0.12): a number or a numeric string. As 13 does, a fraction
/// is cut to a whole number and a value below `min` is raised to it, each with a
/// warning naming the option rather than a refusal (stock loads with them).
fn parse_stock_integer(
    option: &str,
    value: &RawValue,
    min: u64,
    warnings: &mut Vec<String>,
) -> Result<u64> {
    let accepted = format!("a whole number of at least {min}");
    let n = parse_number(option, value, &accepted)?;
    if !n.is_finite() || n > u32::MAX as f64 {
        return Err(invalid(option, value, &accepted));
    }
    let whole = n.floor();
    if whole != n {
        warnings.push(format!(
            "Option '{option}' expected an integer, not a fraction ({n}): read as {whole}"
        ));
    }
    if whole < min as f64 {
        warnings.push(format!(
            "Option '{option}' out of bounds ({whole} < {min}): read as {min}"
        ));
        return Ok(min);
    }
    Ok(whole as u64)
}

/// Longest interval between expiry runs: 13's bound for a cron task's period.
const MAX_CLEANUP_INTERVAL: u64 = 53 * 7 * 86_400;

/// Seconds between expiry runs: a number of seconds, or a period as 13 writes them
/// (`"4 hours"`), at least `min` and at most 53 weeks (13's bounds for a task's
/// period: outside them, raised or lowered with a warning). `"never"` is refused: it
/// would silently stop expiry, which `archive_expires_after = "never"` says plainly.
fn parse_interval(
    option: &str,
    value: &RawValue,
    min: u64,
    warnings: &mut Vec<String>,
) -> Result<u64> {
    let period = parse_period(option, value)?;
    warnings.extend(period.warning);
    let Some(seconds) = period.seconds else {
        return Err(invalid(
            option,
            value,
            "a number of seconds or a period such as \"4 hours\" (to stop expiry, set archive_expires_after = \"never\")",
        ));
    };
    let bounded = seconds.clamp(min, MAX_CLEANUP_INTERVAL);
    if bounded != seconds {
        warnings.push(format!(
            "Option '{option}' out of bounds ({seconds} s): read as {bounded} s"
        ));
    }
    Ok(bounded)
}

/// A duration in milliseconds, fractions allowed, from 0 to `max`.
fn parse_millis(option: &str, value: &RawValue, max: f64) -> Result<Duration> {
    let ms = parse_in_range(option, value, "milliseconds", (0.0, max))?;
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

fn parse_seconds(option: &str, value: &RawValue, range: (f64, f64)) -> Result<Duration> {
    parse_in_range(option, value, "seconds", range).map(Duration::from_secs_f64)
}

/// A finite number of `unit` from `min` to `max`, both included.
fn parse_in_range(
    option: &str,
    value: &RawValue,
    unit: &str,
    (min, max): (f64, f64),
) -> Result<f64> {
    let accepted = format!("a number of {unit} from {min} to {max}");
    let n = parse_number(option, value, &accepted)?;
    if !n.is_finite() || !(min..=max).contains(&n) {
        return Err(invalid(option, value, &accepted));
    }
    Ok(n)
}

fn parse_string(option: &str, value: &RawValue) -> Result<String> {
    match value {
        RawValue::String(s) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(invalid(option, value, "a non-empty string")),
    }
}

fn parse_list(option: &str, value: &RawValue) -> Result<Vec<String>> {
    match value {
        RawValue::List(l) => Ok(l.clone()),
        RawValue::String(s) => Ok(vec![s.clone()]),
        _ => Err(invalid(option, value, "a list of namespace strings")),
    }
}

/// A path from the config: absolute as given, or relative to the data directory.
pub(crate) fn data_file(data_path: &str, given: &str) -> PathBuf {
    let p = PathBuf::from(given);
    if p.is_absolute() {
        p
    } else {
        PathBuf::from(data_path).join(p)
    }
}

/// The archive file when `mam_database` does not name one: `mam_<archive_store>.sqlite`
/// in the data directory (also where `import --from mam-sqlite` looks by default).
pub(crate) fn default_sqlite_file(data_path: &str, archive_store: &str) -> PathBuf {
    PathBuf::from(data_path).join(format!("mam_{archive_store}.sqlite"))
}

/// Whether Prosody's own storage options send the archive store to `"sql"`:
/// `storage = "sql"`, `storage = { [archive_store] = "sql" }`, or `default_storage =
/// "sql"` when `storage` does not name the store (Prosody's storagemanager rules).
fn archive_store_is_sql(archive_store: &str, opts: &dyn OptionSource) -> bool {
    let named = match opts.get("storage") {
        Some(RawValue::String(s)) => Some(s),
        Some(RawValue::Table(t)) => match t.get(archive_store) {
            Some(RawValue::String(s)) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    };
    let backend = named.or_else(|| match opts.get("default_storage") {
        Some(RawValue::String(s)) => Some(s),
        _ => None,
    });
    backend.as_deref() == Some("sql")
}

/// A string field of an `sql`-style table; `None` when absent.
fn table_string(
    option: &str,
    table: &BTreeMap<String, RawValue>,
    key: &str,
) -> Result<Option<String>> {
    match table.get(key) {
        None => Ok(None),
        Some(RawValue::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(RawValue::Number(n)) if n.fract() == 0.0 => Ok(Some(format!("{n}"))),
        Some(other) => Err(invalid(
            &format!("{option}.{key}"),
            other,
            "a non-empty string",
        )),
    }
}

/// Reads an `sql`-style table (`mam_sql`, or Prosody's `sql`). `None` when its driver
/// is one we do not serve and the table is Prosody's own (`strict = false`): then the
/// archive stays in the embedded SQLite file.
fn parse_sql_table(
    option: &str,
    value: &RawValue,
    data_path: &str,
    strict: bool,
) -> Result<Option<Storage>> {
    const DRIVERS: &str = "driver = \"PostgreSQL\" or \"SQLite3\"";
    let RawValue::Table(t) = value else {
        return Err(invalid(
            option,
            value,
            "a table like { driver = \"PostgreSQL\", database = \"prosody\", host = \"localhost\", username = \"prosody\", password = \"…\" }",
        ));
    };
    let driver = table_string(option, t, "driver")?.unwrap_or_default();
    match driver.as_str() {
        "PostgreSQL" => {}
        "SQLite3" if strict => {
            let path = table_string(option, t, "database")?
                .unwrap_or_else(|| "mam_archive.sqlite".to_owned());
            // Prosody 13's convention: the SQLite3 driver's `password` is the
            // SQLCipher key (only `mam_sql` gets here: `strict`).
            let key = match table_string(option, t, "password")? {
                Some(passphrase) => DatabaseKey::given("mam_sql.password", passphrase),
                None => DatabaseKey::none("mam_sql.password"),
            };
            return Ok(Some(Storage::Sqlite {
                path: data_file(data_path, &path),
                max_pages: None,
                key,
            }));
        }
        _ if strict => {
            return Err(MamError::Config(format!(
                "unsupported driver {driver:?} in option '{option}': expected {DRIVERS}"
            )))
        }
        _ => return Ok(None),
    }
    let database = table_string(option, t, "database")?.ok_or_else(|| {
        MamError::Config(format!(
            "option '{option}' with driver PostgreSQL needs a 'database' name"
        ))
    })?;
    let port = match t.get("port") {
        None => DEFAULT_PG_PORT,
        Some(v) => {
            let n = parse_count(&format!("{option}.port"), v, 1)?;
            u16::try_from(n)
                .map_err(|_| invalid(&format!("{option}.port"), v, "a port number (1-65535)"))?
        }
    };
    let username = match table_string(option, t, "username")? {
        Some(u) => u,
        // libpq's default: the operating-system user Prosody runs as.
        None => std::env::var("USER").unwrap_or_else(|_| "prosody".to_owned()),
    };
    let sslmode = match table_string(option, t, "sslmode")?.as_deref() {
        None | Some("prefer") => SslMode::Prefer,
        Some("disable") => SslMode::Disable,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some(other) => {
            return Err(invalid(
                &format!("{option}.sslmode"),
                &RawValue::String(other.to_owned()),
                "\"disable\", \"prefer\", \"require\", \"verify-ca\" or \"verify-full\"",
            ))
        }
    };
    Ok(Some(Storage::Postgres(PgSettings {
        database,
        host: table_string(option, t, "host")?.unwrap_or_else(|| DEFAULT_PG_SOCKET_DIR.to_owned()),
        port,
        username,
        password: table_string(option, t, "password")?,
        sslmode,
        sslrootcert: table_string(option, t, "sslrootcert")?.map(|p| data_file(data_path, &p)),
    })))
}

/// Where the archive lives: `mam_sql` if given; else Prosody's `sql` table when the
/// archive store is configured as `"sql"` with PostgreSQL (so an admin who already
/// keeps Prosody's data in PostgreSQL changes nothing); else the SQLite file
/// (`mam_database`, default `mam_<archive_store>.sqlite` in the data directory).
/// Rooms never take a SQLite file from `mam_sql`: that option is global, so it names
/// the accounts' file too, and two engines (each with its writer) would then contend
/// for one file's write lock. They keep their own file (`muc_mam_database`), with a
/// warning; a PostgreSQL `mam_sql` is shared as intended.
fn parse_storage(
    data_path: &str,
    archive_store: &str,
    owners: Owners,
    opts: &dyn OptionSource,
    warnings: &mut Vec<String>,
) -> Result<Storage> {
    let database_option = owners.options().database;
    let key_option = owners.options().database_key;
    let own_key = match opts.get(key_option) {
        Some(v) => Some(parse_string(key_option, &v)?),
        None => None,
    };
    if let Some(v) = opts.get("mam_sql") {
        match parse_sql_table("mam_sql", &v, data_path, true)? {
            Some(Storage::Sqlite { path, .. }) if owners == Owners::Rooms => {
                warnings.push(format!(
                    "mam_sql names the SQLite file {} that personal archives use; room archives keep \
                     their own file ({database_option}, by default mam_{archive_store}.sqlite) so \
                     that two archives never write one SQLite file",
                    path.display()
                ));
            }
            // mam_sql names our file without a password: the module's own key
            // option still applies (the file is ours either way).
            Some(Storage::Sqlite {
                path,
                max_pages,
                key,
            }) => {
                let key = match (key.passphrase(), own_key) {
                    (None, Some(passphrase)) => DatabaseKey::given(key_option, passphrase),
                    _ => key,
                };
                return Ok(Storage::Sqlite {
                    path,
                    max_pages,
                    key,
                });
            }
            Some(storage) => {
                warn_key_unused(key_option, own_key.is_some(), warnings);
                return Ok(storage);
            }
            None => {}
        }
    }
    if archive_store_is_sql(archive_store, opts) {
        if let Some(v) = opts.get("sql") {
            if let Some(storage) = parse_sql_table("sql", &v, data_path, false)? {
                warn_key_unused(key_option, own_key.is_some(), warnings);
                return Ok(storage);
            }
        }
        warn_prosody_store_encrypted_but_not_ours(opts, own_key.is_some(), key_option, warnings);
    }
    let path = match opts.get(database_option) {
        Some(v) => data_file(data_path, &parse_string(database_option, &v)?),
        None => default_sqlite_file(data_path, archive_store),
    };
    let max_pages = match opts.get("mam_max_db_pages") {
        Some(v) => Some(parse_count("mam_max_db_pages", &v, 1)?),
        None => None,
    };
    let key = match own_key {
        Some(passphrase) => DatabaseKey::given(key_option, passphrase),
        None => DatabaseKey::none(key_option),
    };
    Ok(Storage::Sqlite {
        path,
        max_pages,
        key,
    })
}

/// A key option set while the archive is in PostgreSQL: one warning, since the admin
/// expects encryption that SQLCipher cannot give there (PostgreSQL's own encryption at
/// rest applies; docs/encryption.md).
fn warn_key_unused(key_option: &str, set: bool, warnings: &mut Vec<String>) {
    if set {
        warnings.push(format!(
            "{key_option} is ignored: the archive is in PostgreSQL, which SQLCipher does not \
             encrypt (use the database server's own encryption at rest, see docs/encryption.md)"
        ));
    }
}

/// Prosody's own SQLite store is encrypted (`sql = { driver = "SQLite3", password = … }`
/// with the archive store on `"sql"`) but the archive keeps its own file: that file is
/// not encrypted unless its own key option is set. A warning rather than reusing the
/// password, so an archive written before encryption was configured keeps opening.
fn warn_prosody_store_encrypted_but_not_ours(
    opts: &dyn OptionSource,
    own_key: bool,
    key_option: &str,
    warnings: &mut Vec<String>,
) {
    let Some(RawValue::Table(t)) = opts.get("sql") else {
        return;
    };
    let sqlite = matches!(t.get("driver"), Some(RawValue::String(d)) if d == "SQLite3");
    if sqlite && t.contains_key("password") && !own_key {
        warnings.push(format!(
            "Prosody's SQLite store is encrypted (sql.password) but the archive's own file is \
             not: set {key_option} to encrypt it too (docs/encryption.md)"
        ));
    }
}

impl Config {
    /// Reads every option for `host`, a VirtualHost; `data_path` is Prosody's data
    /// directory.
    pub fn from_options(host: &str, data_path: &str, opts: &dyn OptionSource) -> Result<Config> {
        Config::for_owners(Owners::Accounts, host, data_path, opts)
    }

    /// Reads every option for `host`, whose archives belong to `owners`.
    pub fn for_owners(
        owners: Owners,
        host: &str,
        data_path: &str,
        opts: &dyn OptionSource,
    ) -> Result<Config> {
        let names = owners.options();
        let mut warnings = Vec::new();
        let expires_after = match opts.get(names.expires_after) {
            Some(v) => {
                let period = parse_period(names.expires_after, &v)?;
                warnings.extend(period.warning);
                period.seconds
            }
            None => Some(7 * DAY),
        };
        let cleanup_interval = match (
            opts.get("archive_cleanup_interval"),
            opts.get(names.cleanup_period),
        ) {
            (Some(v), _) => parse_interval("archive_cleanup_interval", &v, 1, &mut warnings)?,
            (None, Some(v)) => parse_interval(names.cleanup_period, &v, 60, &mut warnings)?,
            (None, None) => DEFAULT_CLEANUP_INTERVAL,
        };
        let max_results = match opts.get("max_archive_query_results") {
            Some(v) => {
                parse_stock_integer("max_archive_query_results", &v, 0, &mut warnings)? as usize
            }
            None => DEFAULT_MAX_RESULTS,
        };
        let rooms = owners == Owners::Rooms;
        // Rooms have no archiving preferences: every room message is archived.
        let default_policy = match opts.get("default_archive_policy") {
            Some(v) if !rooms => parse_default_policy(&v)?,
            _ => DefaultPolicy::Always,
        };
        let dont_archive_namespaces = match opts.get("dont_archive_namespaces") {
            _ if rooms => Vec::new(),
            Some(v) => parse_list("dont_archive_namespaces", &v)?,
            None => vec![crate::ns::CHATSTATES.to_owned()],
        };
        let smart_enable = match opts.get("mam_smart_enable") {
            Some(v) if !rooms => parse_bool("mam_smart_enable", &v)?,
            _ => false,
        };
        // Stock: counting an archive that never expires can get slow, so the default
        // flips to false with "never". Rooms count by default, unless they never
        // expire: then mam_include_total decides, as in stock mod_muc_mam.
        let total_option = match (rooms, expires_after) {
            (true, Some(_)) => ("muc_log_include_total", true),
            (true, None) => ("mam_include_total", false),
            (false, _) => ("mam_include_total", expires_after.is_some()),
        };
        let include_total = match opts.get(total_option.0) {
            Some(v) => parse_bool(total_option.0, &v)?,
            None => total_option.1,
        };
        let archive_store = match opts.get("archive_store") {
            Some(v) if !rooms => parse_string("archive_store", &v)?,
            _ => names.default_store.to_owned(),
        };
        let item_limit = match opts.get("storage_archive_item_limit") {
            Some(v) => Some(parse_stock_integer(
                "storage_archive_item_limit",
                &v,
                0,
                &mut warnings,
            )?),
            None => None,
        };
        let storage = parse_storage(data_path, &archive_store, owners, opts, &mut warnings)?;
        let inline_read_wait = match opts.get("mam_inline_read_wait") {
            Some(v) => parse_millis("mam_inline_read_wait", &v, MAX_INLINE_READ_WAIT_MS)?,
            None => DEFAULT_INLINE_READ_WAIT,
        };
        let commit_before_delivery = match opts.get("mam_commit_before_delivery") {
            Some(v) => parse_bool("mam_commit_before_delivery", &v)?,
            None => true,
        };
        let commit_wait_limit = match opts.get("mam_commit_wait_limit") {
            Some(v) => parse_seconds("mam_commit_wait_limit", &v, COMMIT_WAIT_LIMIT_RANGE)?,
            None => DEFAULT_COMMIT_WAIT_LIMIT,
        };
        let compression = match opts.get("archive_compression") {
            Some(v) => parse_bool("archive_compression", &v)?,
            None => true,
        };
        Ok(Config {
            host: host.to_owned(),
            owners,
            expires_after,
            cleanup_interval,
            max_results,
            default_page: DEFAULT_PAGE_SIZE.min(max_results),
            default_policy,
            dont_archive_namespaces,
            smart_enable,
            include_total,
            archive_store,
            item_limit,
            storage,
            inline_read_wait,
            commit_before_delivery,
            commit_wait_limit,
            compression,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config_with(pairs: &[(&str, RawValue)]) -> Result<Config> {
        let map: HashMap<String, RawValue> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let source = move |name: &str| map.get(name).cloned();
        Config::from_options("example.com", "/var/lib/prosody", &source)
    }

    fn s(v: &str) -> RawValue {
        RawValue::String(v.to_owned())
    }

    fn room_config_with(pairs: &[(&str, RawValue)]) -> Result<Config> {
        let map: HashMap<String, RawValue> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let source = move |name: &str| map.get(name).cloned();
        Config::for_owners(
            Owners::Rooms,
            "rooms.example.com",
            "/var/lib/prosody",
            &source,
        )
    }

    #[test]
    fn rooms_read_stock_mod_muc_mams_options_and_keep_their_own_file() {
        let c = room_config_with(&[]).unwrap();
        assert_eq!(c.owners, Owners::Rooms);
        assert_eq!(c.expires_after, Some(7 * DAY));
        assert!(c.include_total, "stock counts room archives by default");
        assert_eq!(
            c.storage.sqlite_path(),
            Some(Path::new("/var/lib/prosody/mam_muc_log.sqlite"))
        );
        assert!(c.dont_archive_namespaces.is_empty());
        // The personal options do not reach rooms.
        let c = room_config_with(&[
            ("archive_expires_after", s("1d")),
            ("archive_store", s("other")),
            ("mam_database", s("mine.sqlite")),
            ("default_archive_policy", s("roster")),
            ("mam_smart_enable", RawValue::Bool(true)),
        ])
        .unwrap();
        assert_eq!(c.expires_after, Some(7 * DAY));
        assert_eq!(c.archive_store, "muc_log");
        assert_eq!(c.default_policy, DefaultPolicy::Always);
        assert!(!c.smart_enable);
        assert_eq!(
            c.storage.sqlite_path(),
            Some(Path::new("/var/lib/prosody/mam_muc_log.sqlite"))
        );
        let c = room_config_with(&[
            ("muc_log_expires_after", s("2d")),
            ("muc_log_include_total", RawValue::Bool(false)),
            ("muc_mam_database", s("rooms.sqlite")),
        ])
        .unwrap();
        assert_eq!(c.expires_after, Some(2 * DAY));
        assert!(!c.include_total);
        assert_eq!(
            c.storage.sqlite_path(),
            Some(Path::new("/var/lib/prosody/rooms.sqlite"))
        );
        // Never expiring: mam_include_total decides, false by default (stock's rule).
        let never = ("muc_log_expires_after", s("never"));
        assert!(
            !room_config_with(std::slice::from_ref(&never))
                .unwrap()
                .include_total
        );
        assert!(
            !room_config_with(&[
                never.clone(),
                ("muc_log_include_total", RawValue::Bool(true))
            ])
            .unwrap()
            .include_total
        );
        assert!(
            room_config_with(&[never, ("mam_include_total", RawValue::Bool(true))])
                .unwrap()
                .include_total
        );
        // A bad value names the room option.
        let err = room_config_with(&[("muc_log_expires_after", s("soon"))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("muc_log_expires_after"), "{err}");
        // A SQLite mam_sql is the accounts' file: rooms keep theirs, with a warning.
        let sqlite = table(&[("driver", s("SQLite3")), ("database", s("a.sqlite"))]);
        let c = room_config_with(&[("mam_sql", sqlite)]).unwrap();
        assert_eq!(
            c.storage.sqlite_path(),
            Some(Path::new("/var/lib/prosody/mam_muc_log.sqlite"))
        );
        assert!(c.warnings[0].contains("mam_sql"), "{:?}", c.warnings);
        // PostgreSQL through the room store's own mapping, as stock selects it.
        let sql = table(&[("driver", s("PostgreSQL")), ("database", s("prosody"))]);
        let c = room_config_with(&[("storage", table(&[("muc_log", s("sql"))])), ("sql", sql)])
            .unwrap();
        assert!(matches!(c.storage, Storage::Postgres(_)));
    }

    fn table(pairs: &[(&str, RawValue)]) -> RawValue {
        RawValue::Table(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    fn pg_table() -> RawValue {
        table(&[
            ("driver", s("PostgreSQL")),
            ("database", s("prosody")),
            ("host", s("db.example.net")),
            ("port", RawValue::Number(5433.0)),
            ("username", s("prosody")),
            ("password", s("s3cret-pass")),
        ])
    }

    #[test]
    fn inline_read_wait_is_milliseconds_from_zero_to_two() {
        let wait = |v: RawValue| config_with(&[("mam_inline_read_wait", v)]);
        assert_eq!(
            config_with(&[]).unwrap().inline_read_wait,
            DEFAULT_INLINE_READ_WAIT
        );
        assert_eq!(
            wait(RawValue::Number(0.0)).unwrap().inline_read_wait,
            Duration::ZERO
        );
        assert_eq!(
            wait(RawValue::Number(1.5)).unwrap().inline_read_wait,
            Duration::from_micros(1500)
        );
        assert_eq!(
            wait(s("0.1")).unwrap().inline_read_wait,
            Duration::from_micros(100)
        );
        for bad in [
            RawValue::Number(-0.1),
            RawValue::Number(2.5),
            RawValue::Number(f64::NAN),
            s("soon"),
            RawValue::Bool(true),
        ] {
            let err = wait(bad).unwrap_err().to_string();
            assert!(
                err.contains("mam_inline_read_wait") && err.contains("milliseconds from 0 to 2"),
                "{err}"
            );
        }
    }

    #[test]
    fn deliveries_wait_for_the_commit_by_default_up_to_a_bounded_time() {
        let c = config_with(&[]).unwrap();
        assert!(c.commit_before_delivery);
        assert_eq!(c.commit_wait_limit, DEFAULT_COMMIT_WAIT_LIMIT);
        let off = config_with(&[("mam_commit_before_delivery", RawValue::Bool(false))]);
        assert!(!off.unwrap().commit_before_delivery);
        let limit = |v: RawValue| config_with(&[("mam_commit_wait_limit", v)]);
        assert_eq!(
            limit(RawValue::Number(0.5)).unwrap().commit_wait_limit,
            Duration::from_millis(500)
        );
        assert_eq!(
            limit(s("10")).unwrap().commit_wait_limit,
            Duration::from_secs(10)
        );
        for bad in [
            RawValue::Number(0.0),
            RawValue::Number(61.0),
            RawValue::Number(f64::INFINITY),
            s("2 seconds"),
        ] {
            let err = limit(bad).unwrap_err().to_string();
            assert!(
                err.contains("mam_commit_wait_limit") && err.contains("seconds from 0.05 to 60"),
                "{err}"
            );
        }
        let err = config_with(&[("mam_commit_before_delivery", s("sometimes"))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mam_commit_before_delivery"), "{err}");
    }

    #[test]
    fn archives_are_compressed_unless_archive_compression_is_false() {
        assert!(config_with(&[]).unwrap().compression);
        let off = config_with(&[("archive_compression", RawValue::Bool(false))]);
        assert!(!off.unwrap().compression);
        let err = config_with(&[("archive_compression", s("zstd"))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("archive_compression"), "{err}");
    }

    #[test]
    fn defaults_match_stock_mod_mam() {
        let c = config_with(&[]).unwrap();
        assert_eq!(c.expires_after, Some(7 * DAY));
        assert_eq!(c.cleanup_interval, 4 * 3600);
        assert_eq!(c.max_results, 50);
        assert_eq!(c.default_page, 20);
        assert_eq!(c.default_policy, DefaultPolicy::Always);
        assert_eq!(c.dont_archive_namespaces, vec![crate::ns::CHATSTATES]);
        assert!(!c.smart_enable);
        assert!(c.include_total);
        assert_eq!(c.archive_store, "archive");
        assert_eq!(c.item_limit, None);
        assert_eq!(
            c.storage,
            Storage::Sqlite {
                path: PathBuf::from("/var/lib/prosody/mam_archive.sqlite"),
                max_pages: None,
                key: DatabaseKey::none("mam_database_key"),
            }
        );
    }

    #[test]
    fn never_expiring_archives_default_to_no_total() {
        let c = config_with(&[("archive_expires_after", s("never"))]).unwrap();
        assert_eq!(c.expires_after, None);
        assert!(!c.include_total);
        let c = config_with(&[
            ("archive_expires_after", s("never")),
            ("mam_include_total", RawValue::Bool(true)),
        ])
        .unwrap();
        assert!(c.include_total);
    }

    #[test]
    fn default_policy_accepts_booleans_and_names() {
        assert_eq!(
            parse_default_policy(&RawValue::Bool(false)).unwrap(),
            DefaultPolicy::Never
        );
        assert_eq!(
            parse_default_policy(&s("roster")).unwrap(),
            DefaultPolicy::Roster
        );
        assert_eq!(
            parse_default_policy(&s("always")).unwrap(),
            DefaultPolicy::Always
        );
        let err = parse_default_policy(&s("sometimes"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("default_archive_policy") && err.contains("\"roster\""));
    }

    #[test]
    fn small_max_results_caps_the_default_page() {
        let c = config_with(&[("max_archive_query_results", RawValue::Number(5.0))]).unwrap();
        assert_eq!(c.max_results, 5);
        assert_eq!(c.default_page, 5);
    }

    #[test]
    fn stock_integers_take_what_prosody_13_takes_with_a_warning_where_it_warns() {
        for bad in [
            s("many"),
            s(""),
            RawValue::Bool(true),
            RawValue::Number(f64::NAN),
        ] {
            let err = config_with(&[("max_archive_query_results", bad)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("max_archive_query_results"), "{err}");
        }
        let c = config_with(&[("storage_archive_item_limit", s("1000"))]).unwrap();
        assert_eq!((c.item_limit, c.warnings.len()), (Some(1000), 0));
        // 13 cuts a fraction and raises a value below its bound, saying so.
        let c = config_with(&[("max_archive_query_results", RawValue::Number(25.5))]).unwrap();
        assert_eq!(c.max_results, 25);
        assert!(
            c.warnings[0].contains("'max_archive_query_results'"),
            "{:?}",
            c.warnings
        );
        let c = config_with(&[("storage_archive_item_limit", RawValue::Number(-3.0))]).unwrap();
        assert_eq!(c.item_limit, Some(0));
        assert!(c.warnings[0].contains("out of bounds"), "{:?}", c.warnings);
        // Zero is a bound stock accepts: pages of nothing, a quota keeping the newest.
        let c = config_with(&[("max_archive_query_results", RawValue::Number(0.0))]).unwrap();
        assert_eq!((c.max_results, c.default_page), (0, 0));
    }

    #[test]
    fn the_cleanup_interval_is_seconds_or_a_period_and_13s_cron_period_counts_too() {
        let interval = |pairs: &[(&str, RawValue)]| config_with(pairs).unwrap().cleanup_interval;
        assert_eq!(interval(&[]), DEFAULT_CLEANUP_INTERVAL);
        assert_eq!(
            interval(&[("archive_cleanup_interval", RawValue::Number(600.0))]),
            600
        );
        assert_eq!(
            interval(&[("archive_cleanup_interval", s("2 hours"))]),
            7200
        );
        assert_eq!(
            interval(&[("mam_remove_expired_messages_period", s("6 hours"))]),
            21_600
        );
        // Ours wins over 13's when both are set.
        let both = [
            ("archive_cleanup_interval", RawValue::Number(60.0)),
            ("mam_remove_expired_messages_period", s("1 day")),
        ];
        assert_eq!(interval(&both), 60);
        // 13's bounds for a task period, with a warning.
        let c = config_with(&[("mam_remove_expired_messages_period", s("10 seconds"))]).unwrap();
        assert_eq!(c.cleanup_interval, 60);
        assert!(c.warnings[0].contains("out of bounds"), "{:?}", c.warnings);
        for bad in [
            RawValue::Number(0.0),
            s("many"),
            s("never"),
            RawValue::Bool(false),
        ] {
            let err = config_with(&[("archive_cleanup_interval", bad)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("archive_cleanup_interval"), "{err}");
        }
    }

    #[test]
    fn database_path_is_relative_to_the_data_directory() {
        let path = |pairs: &[(&str, RawValue)]| {
            config_with(pairs)
                .unwrap()
                .storage
                .sqlite_path()
                .map(Path::to_path_buf)
        };
        assert_eq!(
            path(&[("mam_database", s("mam.db"))]),
            Some(PathBuf::from("/var/lib/prosody/mam.db"))
        );
        assert_eq!(
            path(&[("mam_database", s("/srv/mam.db"))]),
            Some(PathBuf::from("/srv/mam.db"))
        );
        assert_eq!(
            path(&[("archive_store", s("archive2"))]),
            Some(PathBuf::from("/var/lib/prosody/mam_archive2.sqlite"))
        );
    }

    #[test]
    fn mam_sql_with_postgresql_selects_postgresql() {
        let c = config_with(&[("mam_sql", pg_table())]).unwrap();
        let Storage::Postgres(pg) = &c.storage else {
            panic!("expected PostgreSQL, got {:?}", c.storage);
        };
        assert_eq!(pg.database, "prosody");
        assert_eq!(pg.host, "db.example.net");
        assert_eq!(pg.port, 5433);
        assert_eq!(pg.username, "prosody");
        assert_eq!(pg.password.as_deref(), Some("s3cret-pass"));
        assert_eq!(
            c.storage.describe(),
            "postgresql://prosody@db.example.net:5433/prosody"
        );
    }

    #[test]
    fn the_password_never_shows_in_debug_output_or_descriptions() {
        let c = config_with(&[("mam_sql", pg_table())]).unwrap();
        for text in [format!("{c:?}"), format!("{c:#?}"), c.storage.describe()] {
            assert!(!text.contains("s3cret-pass"), "{text}");
        }
    }

    #[test]
    fn prosodys_sql_table_is_reused_when_the_archive_store_is_sql() {
        for storage in [s("sql"), table(&[("archive", s("sql"))])] {
            let c = config_with(&[("storage", storage.clone()), ("sql", pg_table())]).unwrap();
            assert!(matches!(c.storage, Storage::Postgres(_)), "{storage:?}");
        }
        let c = config_with(&[("default_storage", s("sql")), ("sql", pg_table())]).unwrap();
        assert!(matches!(c.storage, Storage::Postgres(_)));
        // Only when the archive store itself goes to sql.
        for pairs in [
            vec![("sql", pg_table())],
            vec![("storage", s("internal")), ("sql", pg_table())],
            vec![
                ("storage", table(&[("roster", s("sql"))])),
                ("sql", pg_table()),
            ],
            vec![
                ("storage", table(&[("archive", s("internal"))])),
                ("default_storage", s("sql")),
                ("sql", pg_table()),
            ],
        ] {
            let c = config_with(&pairs).unwrap();
            assert!(matches!(c.storage, Storage::Sqlite { .. }), "{pairs:?}");
        }
        // archive_store renames the store that must be mapped.
        let c = config_with(&[
            ("archive_store", s("archive2")),
            ("storage", table(&[("archive2", s("sql"))])),
            ("sql", pg_table()),
        ])
        .unwrap();
        assert!(matches!(c.storage, Storage::Postgres(_)));
    }

    #[test]
    fn prosodys_sql_with_another_driver_keeps_the_embedded_file() {
        for driver in ["SQLite3", "MySQL"] {
            let sql = table(&[("driver", s(driver)), ("database", s("prosody.sqlite"))]);
            let c = config_with(&[("storage", s("sql")), ("sql", sql)]).unwrap();
            assert_eq!(
                c.storage.sqlite_path(),
                Some(Path::new("/var/lib/prosody/mam_archive.sqlite"))
            );
        }
    }

    #[test]
    fn mam_sql_is_checked_strictly_naming_the_option() {
        let cases = [
            table(&[("driver", s("MySQL")), ("database", s("x"))]),
            table(&[("driver", s("PostgreSQL"))]),
            table(&[
                ("driver", s("PostgreSQL")),
                ("database", s("x")),
                ("port", RawValue::Number(70000.0)),
            ]),
            s("postgresql://somewhere"),
        ];
        for bad in cases {
            let err = config_with(&[("mam_sql", bad.clone())])
                .unwrap_err()
                .to_string();
            assert!(err.contains("mam_sql"), "{bad:?}: {err}");
        }
        let sqlite = table(&[("driver", s("SQLite3")), ("database", s("a.sqlite"))]);
        let c = config_with(&[("mam_sql", sqlite)]).unwrap();
        assert_eq!(
            c.storage.sqlite_path(),
            Some(Path::new("/var/lib/prosody/a.sqlite"))
        );
    }

    #[test]
    fn a_postgresql_connection_without_host_or_port_takes_libpqs_defaults() {
        let sql = table(&[("driver", s("PostgreSQL")), ("database", s("prosody"))]);
        let c = config_with(&[("mam_sql", sql)]).unwrap();
        let Storage::Postgres(pg) = c.storage else {
            panic!("expected PostgreSQL");
        };
        assert_eq!(pg.host, "/var/run/postgresql");
        assert_eq!(pg.port, 5432);
        assert_eq!(pg.password, None);
    }

    fn key_of(c: &Config) -> (Option<String>, &'static str) {
        match &c.storage {
            Storage::Sqlite { key, .. } => (key.passphrase().map(str::to_owned), key.option()),
            other => panic!("not SQLite: {other:?}"),
        }
    }

    fn strings(pairs: &[(&str, &str)]) -> RawValue {
        let pairs: Vec<(&str, RawValue)> = pairs.iter().map(|(k, v)| (*k, s(v))).collect();
        table(&pairs)
    }

    #[test]
    fn mam_sql_with_sqlite3_takes_its_password_as_the_key_as_prosody_13_does() {
        let c = config_with(&[(
            "mam_sql",
            strings(&[
                ("driver", "SQLite3"),
                ("database", "a.sqlite"),
                ("password", "s3cret"),
            ]),
        )])
        .unwrap();
        assert_eq!(key_of(&c), (Some("s3cret".into()), "mam_sql.password"));
        let c = config_with(&[
            (
                "mam_sql",
                strings(&[("driver", "SQLite3"), ("database", "a.sqlite")]),
            ),
            ("mam_database_key", s("own")),
        ])
        .unwrap();
        assert_eq!(key_of(&c), (Some("own".into()), "mam_database_key"));
    }

    #[test]
    fn the_module_specific_key_option_differs_for_accounts_and_rooms() {
        let c = config_with(&[("mam_database_key", s("k1"))]).unwrap();
        assert_eq!(key_of(&c), (Some("k1".into()), "mam_database_key"));
        assert_eq!(
            key_of(&config_with(&[]).unwrap()),
            (None, "mam_database_key")
        );
        let r = room_config_with(&[
            ("mam_database_key", s("accounts' key")),
            ("muc_mam_database_key", s("k2")),
        ])
        .unwrap();
        assert_eq!(key_of(&r), (Some("k2".into()), "muc_mam_database_key"));
        let r = room_config_with(&[("mam_database_key", s("accounts' key"))]).unwrap();
        assert_eq!(key_of(&r), (None, "muc_mam_database_key"));
        // Rooms never take mam_sql's SQLite file, so not its password either.
        let r = room_config_with(&[(
            "mam_sql",
            strings(&[
                ("driver", "SQLite3"),
                ("database", "a.sqlite"),
                ("password", "p"),
            ]),
        )])
        .unwrap();
        assert_eq!(key_of(&r), (None, "muc_mam_database_key"));
    }

    #[test]
    fn an_empty_key_is_refused_naming_the_option() {
        let err = config_with(&[("mam_database_key", s(""))]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value \"\" for option 'mam_database_key': expected a non-empty string"
        );
    }

    #[test]
    fn no_debug_or_description_of_a_config_shows_the_key() {
        let c = config_with(&[("mam_database_key", s("hunter2-passphrase"))]).unwrap();
        let shown = format!("{c:?} {}", c.storage.describe());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<hidden>"), "{shown}");
    }

    #[test]
    fn a_key_with_the_archive_in_postgresql_is_a_warning_not_an_error() {
        let c = config_with(&[
            (
                "mam_sql",
                strings(&[("driver", "PostgreSQL"), ("database", "prosody")]),
            ),
            ("mam_database_key", s("k")),
        ])
        .unwrap();
        assert!(matches!(c.storage, Storage::Postgres(_)));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].starts_with("mam_database_key is ignored"));
    }

    #[test]
    fn an_encrypted_prosody_sqlite_store_warns_that_the_archive_file_is_not() {
        let sql = strings(&[("driver", "SQLite3"), ("password", "p")]);
        let c = config_with(&[("storage", s("sql")), ("sql", sql.clone())]).unwrap();
        assert_eq!(
            key_of(&c),
            (None, "mam_database_key"),
            "never reused: see the warning"
        );
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("set mam_database_key"));
        let c = config_with(&[
            ("storage", s("sql")),
            ("sql", sql),
            ("mam_database_key", s("k")),
        ])
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
}
