//! The command line of `prosodyctl mod_mam <command>`: [`parse`] turns the arguments
//! into a [`Command`], or a usage error saying what is wrong (exit code 2).

use chrono::NaiveDate;

use super::AdminError;
use crate::config::Owners;
use crate::store::{DeleteFilter, Owner, WithFilter};
use crate::time::{parse_datetime, Micros};

/// Where `import` reads from: stock mod_mam's store through one of Prosody's storage
/// drivers, or another archive of this module (to move between SQLite and PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Stock's store through `mod_storage_internal`.
    Internal,
    /// Stock's store through `mod_storage_sql`.
    Sql,
    /// This module's SQLite archive file ([`super::copy`]).
    MamSqlite,
    /// This module's PostgreSQL archive ([`super::copy`]).
    MamPostgres,
}

impl Source {
    /// The `--from` word: the storage driver's name for stock sources.
    pub fn name(self) -> &'static str {
        match self {
            Source::Internal => "internal",
            Source::Sql => "sql",
            Source::MamSqlite => "mam-sqlite",
            Source::MamPostgres => "mam-postgres",
        }
    }

    /// Whether this is one of this module's own archives (read by the engine, not
    /// through Prosody's storage drivers).
    pub fn is_ours(self) -> bool {
        matches!(self, Source::MamSqlite | Source::MamPostgres)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// XEP-0227-style: `<server-data><host><user><archive>` with MAM `<result>`s.
    Xml,
    /// One JSON object per line: id, timestamp, with, stanza.
    Jsonl,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Show this text and exit 0.
    Help(String),
    Import {
        host: Option<String>,
        /// `None`: the driver the host's `storage` option names for the store.
        from: Option<Source>,
        /// `None`: the host's `archive_store` option (stock sources only).
        store: Option<String>,
        /// `--source`, for this module's archives: the SQLite file (`None`: the
        /// default file) or the PostgreSQL connection string (checked, never printed).
        source: Option<String>,
    },
    Expire {
        host: Option<String>,
    },
    Delete {
        owner: Owner,
        filter: DeleteFilter,
    },
    Export {
        owner: Owner,
        format: ExportFormat,
    },
    Stats {
        host: Option<String>,
    },
    /// Print the module's version (the native library's) and exit 0.
    Version,
}

pub const USAGE: &str = "\
Usage: prosodyctl mod_mam <command> [options]

Commands:
  import [--host HOST] [--from internal|sql] [--store NAME]
                 Copy stock mod_mam archives and preferences into this module's
                 archive, keeping ids, times and order. Safe to re-run.
  import --from mam-sqlite|mam-postgres [--source PATH|CONNINFO] [--host HOST]
                 Copy another archive of this module (SQLite file or PostgreSQL
                 database) into the archive configured now. Safe to re-run.
  expire [--host HOST]
                 Delete messages older than archive_expires_after now.
  delete USER@HOST [--with JID] [--before DATE]
                 Delete a user's messages (all, with one contact, or older than DATE).
  export USER@HOST [--format xml|jsonl]
                 Write a user's archive to standard output.
  stats [--host HOST]
                 Messages and size per host and per user, oldest and newest.
  version        The version of this module and where its native library is.

Run `prosodyctl mod_mam <command> --help` for details. Exit codes: 0 done,
1 failed, 2 usage error.";

/// `prosodyctl mod_muc_mam`: the same commands for room archives.
pub const ROOM_USAGE: &str = "\
Usage: prosodyctl mod_muc_mam <command> [options]

Commands:
  import [--host HOST] [--from internal|sql] [--store NAME]
                 Copy stock mod_muc_mam room archives (the muc_log store) into this
                 module's archive, keeping ids, times and order. Safe to re-run.
  import --from mam-sqlite|mam-postgres [--source PATH|CONNINFO] [--host HOST]
                 Copy another room archive of this module (SQLite file or
                 PostgreSQL database) into the one configured now. Safe to re-run.
  expire [--host HOST]
                 Delete messages older than muc_log_expires_after now.
  delete ROOM [--host HOST] [--with JID] [--before DATE]
                 Delete a room's messages (all, from one nick, or older than DATE).
  export ROOM [--host HOST] [--format xml|jsonl]
                 Write a room's archive to standard output.
  stats [--host HOST]
                 Messages and size per MUC component and per room, oldest and newest
                 (a room's joins and leaves on a line of their own: ROOM<presences).
  version        The version of this module and where its native library is.

HOST is a MUC component (Component \"rooms.example.org\" \"muc\"); without --host a
command applies to every one. ROOM is a room's JID (lobby@rooms.example.org), or its
name alone (lobby) with --host or when the configuration has one MUC component.

Run `prosodyctl mod_muc_mam <command> --help` for details. Exit codes: 0 done,
1 failed, 2 usage error.";

const IMPORT_HELP: &str = "\
Usage: prosodyctl mod_mam import [--host HOST] [--from internal|sql] [--store NAME]
       prosodyctl mod_mam import --from mam-sqlite [--source PATH] [--host HOST]
       prosodyctl mod_mam import --from mam-postgres --source CONNINFO [--host HOST]

Reads stock mod_mam's archive store (through Prosody's own storage driver) and its
preferences (<store>_prefs) for every user of HOST (default: every VirtualHost), and
adds them to this module's archive under their original ids. Messages already there
are skipped, so running it again (after switching modules, to catch the gap) adds
nothing twice; preferences already set in this module are kept.

  --host HOST     only this VirtualHost
  --from DRIVER   read with mod_storage_internal or mod_storage_sql (default: the
                  driver the `storage` option names for the store)
  --store NAME    the stock store name, e.g. archive2 (default: archive_store)

With --from mam-sqlite or mam-postgres it reads another archive of THIS module
instead, to move between SQLite and PostgreSQL: every message of every user of HOST
(ids, times, contacts with resources, order, content) and their preferences go into
the archive the configuration names now (mam_sql, mam_database or the default file).

  --source PATH      mam-sqlite: the archive file (default: mam_<archive_store>.sqlite
                     in the data directory; a relative path is relative to it)
  --source CONNINFO  mam-postgres: a libpq connection string, keywords
                     (\"host=db port=5432 user=prosody dbname=prosody\") or a URL
                     (postgresql://prosody@db/prosody); sslmode disable, prefer or
                     require. The password may come from PGPASSWORD instead.

A source that is the configured archive itself is refused (exit 2).

Prosody may keep running: the import writes in short transactions. Ends with a
per-user verification; exits 1 if any user's messages did not all arrive.";

const ROOM_IMPORT_HELP: &str = "\
Usage: prosodyctl mod_muc_mam import [--host HOST] [--from internal|sql] [--store NAME]
       prosodyctl mod_muc_mam import --from mam-sqlite [--source PATH] [--host HOST]
       prosodyctl mod_muc_mam import --from mam-postgres --source CONNINFO [--host HOST]

Reads stock mod_muc_mam's archive store (muc_log, through Prosody's own storage
driver) for every room of HOST (default: every MUC component), and adds the rooms'
messages to this module's archive under their original ids. Messages already there
are skipped, so running it again (after switching modules, to catch the gap) adds
nothing twice.

Each message keeps its id, time and order; its sender's nick is kept as the contact's
resource, the room's address (`to`) is left out, and a real-JID element
(<x xmlns='http://jabber.org/protocol/muc#user'>) is kept only where stock added it
itself (in non-anonymous rooms); one a sender put in the message is dropped.
Joins and leaves (stored by stock with muc_log_presences) keep their ids too, in the
room's presences archive (listed as ROOM<presences), which only the storage provider
reads, as stock's never reached clients either.

  --host HOST     only this MUC component
  --from DRIVER   read with mod_storage_internal or mod_storage_sql (default: the
                  driver the `storage` option names for the store)
  --store NAME    the stock store name (default: muc_log)

With --from mam-sqlite or mam-postgres it reads another room archive of THIS module
instead, to move between SQLite and PostgreSQL: every message of every room of HOST
goes into the archive the configuration names now (mam_sql, muc_mam_database or the
default file).

  --source PATH      mam-sqlite: the archive file (default: mam_muc_log.sqlite in the
                     data directory; a relative path is relative to it)
  --source CONNINFO  mam-postgres: a libpq connection string, keywords or a URL; the
                     password may come from PGPASSWORD instead.

Prosody may keep running: the import writes in short transactions. Ends with a
per-room verification; exits 1 if any room's messages did not all arrive.";

const ROOM_EXPIRE_HELP: &str = "\
Usage: prosodyctl mod_muc_mam expire [--host HOST]

Deletes every room message older than muc_log_expires_after (default one week), in
batches of 1000, and prints how many it deleted per MUC component. Does nothing for a
component whose expiry is \"never\".";

const ROOM_DELETE_HELP: &str = "\
Usage: prosodyctl mod_muc_mam delete ROOM [--host HOST] [--with JID] [--before DATE]

Deletes ROOM's archived messages: all of them, or only those from one nick
(--with ROOM@HOST/NICK; the room's bare JID matches every message), or only those
older than DATE (2024-01-31 or 2024-01-31T12:00:00Z), or both. ROOM is the room's
JID, or its name with --host (or when the configuration has one MUC component).
Without --with, the room's joins and leaves (muc_log_presences) go too; the count
reported is the messages'.";

const ROOM_EXPORT_HELP: &str = "\
Usage: prosodyctl mod_muc_mam export ROOM [--host HOST] [--format xml|jsonl]

Writes ROOM's whole archive, oldest first, to standard output:
  xml    (default) XEP-0227-style <server-data>, each message as a MAM <result>
  jsonl  one JSON object per line: {\"id\", \"timestamp\", \"with\", \"stanza\"}
ROOM is the room's JID, or its name with --host (or when the configuration has one
MUC component).";

const ROOM_VERSION_HELP: &str = "\
Usage: prosodyctl mod_muc_mam version

Prints this module's version (prosody-mam-native, from the native library) and the
path of the native library Prosody loads.";

const ROOM_STATS_HELP: &str = "\
Usage: prosodyctl mod_muc_mam stats [--host HOST]

For each MUC component: rooms, messages, stanza bytes and database size; for each
room: messages, bytes, oldest and newest message.";

/// The help texts of one module's commands: `mod_mam` (accounts) or `mod_muc_mam`
/// (rooms).
struct Texts {
    usage: &'static str,
    import: &'static str,
    expire: &'static str,
    delete: &'static str,
    export: &'static str,
    version: &'static str,
    stats: &'static str,
}

const ACCOUNT_TEXTS: Texts = Texts {
    usage: USAGE,
    import: IMPORT_HELP,
    expire: EXPIRE_HELP,
    delete: DELETE_HELP,
    export: EXPORT_HELP,
    version: VERSION_HELP,
    stats: STATS_HELP,
};

const ROOM_TEXTS: Texts = Texts {
    usage: ROOM_USAGE,
    import: ROOM_IMPORT_HELP,
    expire: ROOM_EXPIRE_HELP,
    delete: ROOM_DELETE_HELP,
    export: ROOM_EXPORT_HELP,
    version: ROOM_VERSION_HELP,
    stats: ROOM_STATS_HELP,
};

/// Whose archives the commands are about, and what the configuration says that the
/// command line alone cannot: the host a room's name alone refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub owners: Owners,
    /// Rooms: the configuration's only MUC component, if it has exactly one (a room
    /// named without `@HOST` and without `--host` is there).
    pub only_host: Option<String>,
}

impl Scope {
    /// `prosodyctl mod_mam`: accounts of VirtualHosts.
    pub fn accounts() -> Scope {
        Scope {
            owners: Owners::Accounts,
            only_host: None,
        }
    }

    fn texts(&self) -> &'static Texts {
        match self.owners {
            Owners::Accounts => &ACCOUNT_TEXTS,
            Owners::Rooms => &ROOM_TEXTS,
        }
    }
}

const EXPIRE_HELP: &str = "\
Usage: prosodyctl mod_mam expire [--host HOST]

Deletes every message older than archive_expires_after, in batches of 1000, and prints
how many it deleted per host. Does nothing for a host whose expiry is \"never\".";

const DELETE_HELP: &str = "\
Usage: prosodyctl mod_mam delete USER@HOST [--with JID] [--before DATE]

Deletes USER's archived messages: all of them, or only those with JID (a bare JID
matches every resource, a full JID only that one), or only those older than DATE
(2024-01-31 or 2024-01-31T12:00:00Z), or both. Preferences are kept.";

const EXPORT_HELP: &str = "\
Usage: prosodyctl mod_mam export USER@HOST [--format xml|jsonl]

Writes USER's whole archive, oldest first, to standard output:
  xml    (default) XEP-0227-style <server-data>, each message as a MAM <result>
  jsonl  one JSON object per line: {\"id\", \"timestamp\", \"with\", \"stanza\"}";

const VERSION_HELP: &str = "\
Usage: prosodyctl mod_mam version

Prints this module's version (prosody-mam-native, from the native library) and the
path of the native library Prosody loads.";

const STATS_HELP: &str = "\
Usage: prosodyctl mod_mam stats [--host HOST]

For each host: users, messages, stanza bytes and database size; for each user:
messages, bytes, oldest and newest message.";

fn usage(msg: impl Into<String>, help: &str) -> AdminError {
    AdminError::Usage(format!("{}\n\n{help}", msg.into()))
}

/// Options a command accepts (`--name value` or `--name=value`) and positionals.
struct Args {
    positional: Vec<String>,
    options: Vec<(String, String)>,
    help: bool,
}

fn split_args(args: &[String], known: &[&str], help: &str) -> Result<Args, AdminError> {
    let mut out = Args {
        positional: Vec::new(),
        options: Vec::new(),
        help: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--help" || a == "-h" || a == "-?" {
            out.help = true;
        } else if let Some(opt) = a.strip_prefix("--") {
            let (name, inline) = match opt.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (opt, None),
            };
            if !known.contains(&name) {
                return Err(usage(format!("Unknown option --{name}"), help));
            }
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| usage(format!("--{name} needs a value"), help))?,
            };
            if out.options.iter().any(|(n, _)| n == name) {
                return Err(usage(format!("--{name} given twice"), help));
            }
            out.options.push((name.to_owned(), value));
        } else {
            out.positional.push(a.clone());
        }
    }
    Ok(out)
}

impl Args {
    fn get(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn at_most(&self, n: usize, help: &str) -> Result<(), AdminError> {
        match self.positional.get(n) {
            Some(extra) => Err(usage(format!("Unexpected argument '{extra}'"), help)),
            None => Ok(()),
        }
    }
}

/// A local account's JID, normalised by `prep` (Prosody's `jid.prep`).
pub fn parse_owner(s: &str, prep: &dyn Fn(&str) -> Option<String>) -> Result<Owner, String> {
    let bad = || format!("Invalid JID '{s}': expected USER@HOST");
    let jid = prep(s).ok_or_else(bad)?;
    if jid.contains('/') {
        return Err(bad());
    }
    let (user, host) = jid.split_once('@').ok_or_else(bad)?;
    if user.is_empty() || host.is_empty() {
        return Err(bad());
    }
    Ok(Owner::new(host, user))
}

/// A contact JID for `--with`: bare matches every resource, full only that resource.
pub fn parse_with(s: &str, prep: &dyn Fn(&str) -> Option<String>) -> Result<WithFilter, String> {
    let jid = prep(s).ok_or_else(|| format!("Invalid JID '{s}' for --with"))?;
    Ok(WithFilter::from_jid(&jid))
}

/// `--before`: an XEP-0082 DateTime, or a date (midnight UTC).
pub fn parse_date(s: &str) -> Result<Micros, String> {
    if let Some(t) = parse_datetime(s) {
        return Ok(t);
    }
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc().timestamp_micros())
        .ok_or_else(|| format!("Invalid date '{s}': expected 2024-01-31 or 2024-01-31T12:00:00Z"))
}

/// Parses `prosodyctl mod_mam` (or `mod_muc_mam`) arguments (without the module
/// name), for the archives `scope` names.
pub fn parse(
    args: &[String],
    prep: &dyn Fn(&str) -> Option<String>,
    scope: &Scope,
) -> Result<Command, AdminError> {
    let texts = scope.texts();
    let Some((name, rest)) = args.split_first() else {
        return Err(AdminError::Usage(format!(
            "No command given\n\n{}",
            texts.usage
        )));
    };
    match name.as_str() {
        "help" | "--help" | "-h" => Ok(Command::Help(texts.usage.to_owned())),
        "import" => {
            let help = texts.import;
            let a = split_args(rest, &["host", "from", "store", "source"], help)?;
            if a.help {
                return Ok(Command::Help(help.to_owned()));
            }
            a.at_most(0, help)?;
            let from = match a.get("from") {
                None => None,
                Some("internal") => Some(Source::Internal),
                Some("sql") => Some(Source::Sql),
                Some("mam-sqlite") => Some(Source::MamSqlite),
                Some("mam-postgres") => Some(Source::MamPostgres),
                Some(other) => {
                    return Err(usage(
                        format!(
                            "Unknown source '{other}' for --from: expected internal, sql, \
                             mam-sqlite or mam-postgres"
                        ),
                        help,
                    ))
                }
            };
            let store = match a.get("store") {
                Some("") => return Err(usage("--store needs a store name", help)),
                s => s.map(str::to_owned),
            };
            let source = a.get("source").map(str::to_owned);
            check_import_source(from, store.is_some(), source.as_deref(), help)?;
            Ok(Command::Import {
                host: host_option(&a, prep, help)?,
                from,
                store,
                source,
            })
        }
        "expire" => {
            let help = texts.expire;
            let a = split_args(rest, &["host"], help)?;
            if a.help {
                return Ok(Command::Help(help.to_owned()));
            }
            a.at_most(0, help)?;
            Ok(Command::Expire {
                host: host_option(&a, prep, help)?,
            })
        }
        "version" => {
            let help = texts.version;
            let a = split_args(rest, &[], help)?;
            if a.help {
                return Ok(Command::Help(help.to_owned()));
            }
            a.at_most(0, help)?;
            Ok(Command::Version)
        }
        "stats" => {
            let help = texts.stats;
            let a = split_args(rest, &["host"], help)?;
            if a.help {
                return Ok(Command::Help(help.to_owned()));
            }
            a.at_most(0, help)?;
            Ok(Command::Stats {
                host: host_option(&a, prep, help)?,
            })
        }
        "delete" => {
            let help = texts.delete;
            let a = split_args(rest, &owner_options(scope, &["with", "before"]), help)?;
            if a.help {
                return Ok(Command::Help(help.to_owned()));
            }
            let owner = owner_argument(&a, prep, scope, help)?;
            let with = match a.get("with") {
                Some(w) => Some(parse_with(w, prep).map_err(|m| usage(m, help))?),
                None => None,
            };
            let before = match a.get("before") {
                Some(d) => Some(parse_date(d).map_err(|m| usage(m, help))?),
                None => None,
            };
            Ok(Command::Delete {
                owner,
                filter: DeleteFilter { with, before },
            })
        }
        "export" => {
            let help = texts.export;
            let a = split_args(rest, &owner_options(scope, &["format"]), help)?;
            if a.help {
                return Ok(Command::Help(help.to_owned()));
            }
            let owner = owner_argument(&a, prep, scope, help)?;
            let format = match a.get("format") {
                None | Some("xml") => ExportFormat::Xml,
                Some("jsonl") => ExportFormat::Jsonl,
                Some(other) => {
                    return Err(usage(
                        format!("Unknown format '{other}': expected xml or jsonl"),
                        help,
                    ))
                }
            };
            Ok(Command::Export { owner, format })
        }
        other => Err(AdminError::Usage(format!(
            "Unknown command '{other}'\n\n{}",
            texts.usage
        ))),
    }
}

/// The options of `delete` and `export`: rooms also take `--host` (for a room named
/// without its host).
fn owner_options(scope: &Scope, own: &[&'static str]) -> Vec<&'static str> {
    let mut known = own.to_vec();
    if scope.owners == Owners::Rooms {
        known.push("host");
    }
    known
}

/// The combinations of `--from`, `--store` and `--source` that mean something. A
/// PostgreSQL connection string is checked here, so a typo is a usage error before
/// anything is opened (the message never repeats the string: it may hold a password).
fn check_import_source(
    from: Option<Source>,
    store_given: bool,
    source: Option<&str>,
    help: &str,
) -> Result<(), AdminError> {
    let ours = from.is_some_and(Source::is_ours);
    if store_given && ours {
        return Err(usage(
            "--store names a stock store; with --from mam-sqlite name the file with --source",
            help,
        ));
    }
    match (from, source) {
        (Some(Source::MamPostgres), None) => Err(usage(
            "--from mam-postgres needs --source CONNINFO (e.g. \"host=db user=prosody dbname=prosody\")",
            help,
        )),
        (_, Some("")) => Err(usage("--source needs a value", help)),
        (Some(Source::MamPostgres), Some(conninfo)) => {
            match super::copy::CopySource::postgres(conninfo, None) {
                Ok(_) => Ok(()),
                Err(e) => Err(usage(e.to_string(), help)),
            }
        }
        (_, Some(_)) if !ours => Err(usage(
            "--source is for --from mam-sqlite or mam-postgres",
            help,
        )),
        _ => Ok(()),
    }
}

fn host_option(
    a: &Args,
    prep: &dyn Fn(&str) -> Option<String>,
    help: &str,
) -> Result<Option<String>, AdminError> {
    match a.get("host") {
        None => Ok(None),
        Some(h) => match prep(h) {
            Some(p) if !p.contains('@') && !p.contains('/') => Ok(Some(p)),
            _ => Err(usage(format!("Invalid host '{h}'"), help)),
        },
    }
}

fn owner_argument(
    a: &Args,
    prep: &dyn Fn(&str) -> Option<String>,
    scope: &Scope,
    help: &str,
) -> Result<Owner, AdminError> {
    let missing = match scope.owners {
        Owners::Accounts => "Missing USER@HOST",
        Owners::Rooms => "Missing ROOM",
    };
    let Some(jid) = a.positional.first() else {
        return Err(usage(missing, help));
    };
    a.at_most(1, help)?;
    match scope.owners {
        Owners::Accounts => parse_owner(jid, prep).map_err(|m| usage(m, help)),
        Owners::Rooms => {
            let host = host_option(a, prep, help)?;
            parse_room(jid, host.as_deref(), scope.only_host.as_deref(), prep)
                .map_err(|m| usage(m, help))
        }
    }
}

/// A room: its JID (`lobby@rooms.example.org`), or its name alone on `host` (from
/// `--host`), else on the configuration's only MUC component. Normalised by `prep`
/// (Prosody's `jid.prep`, which applies nodeprep to the name).
pub fn parse_room(
    s: &str,
    host: Option<&str>,
    only_host: Option<&str>,
    prep: &dyn Fn(&str) -> Option<String>,
) -> Result<Owner, String> {
    if s.contains('@') {
        let bad = || format!("Invalid room JID '{s}': expected ROOM@HOST");
        let owner = parse_owner(s, prep).map_err(|_| bad())?;
        return match host {
            Some(h) if h != owner.host => Err(format!(
                "The room '{s}' is not on --host {h}: give one or the other"
            )),
            _ => Ok(owner),
        };
    }
    let Some(host) = host.or(only_host) else {
        return Err(format!(
            "Which MUC component is room '{s}' on? Give its JID ({s}@HOST) or --host HOST"
        ));
    };
    let bad = || format!("Invalid room name '{s}'");
    if s.is_empty() || s.contains('/') {
        return Err(bad());
    }
    parse_owner(&format!("{s}@{host}"), prep).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::testing::T0;

    /// A stand-in for `jid.prep`: lower-cases, refuses spaces and empty parts.
    fn prep(s: &str) -> Option<String> {
        if s.is_empty() || s.contains(' ') || s.starts_with('@') || s.ends_with('@') {
            None
        } else {
            Some(s.to_lowercase())
        }
    }

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn parse_str(s: &str) -> Result<Command, AdminError> {
        parse(&args(s), &prep, &Scope::accounts())
    }

    fn parse_room_command(s: &str, only_host: Option<&str>) -> Result<Command, AdminError> {
        let scope = Scope {
            owners: Owners::Rooms,
            only_host: only_host.map(str::to_owned),
        };
        parse(&args(s), &prep, &scope)
    }

    fn first_line(e: AdminError) -> (i32, String) {
        (
            e.exit_code(),
            e.message().lines().next().unwrap_or("").to_owned(),
        )
    }

    #[test]
    fn each_command_parses_with_its_options() {
        assert_eq!(
            parse_str("import --host Capulet.lit --from=sql --store archive2").expect("import"),
            Command::Import {
                host: Some("capulet.lit".into()),
                from: Some(Source::Sql),
                store: Some("archive2".into()),
                source: None
            }
        );
        assert_eq!(
            parse_str("import --from mam-sqlite").expect("import"),
            Command::Import {
                host: None,
                from: Some(Source::MamSqlite),
                store: None,
                source: None
            }
        );
        assert_eq!(
            parse(
                &args("import --from mam-postgres --host capulet.lit --source")
                    .into_iter()
                    .chain(["host=db user=prosody password=pw dbname=xmpp".to_owned()])
                    .collect::<Vec<_>>(),
                &prep,
                &Scope::accounts()
            )
            .expect("import"),
            Command::Import {
                host: Some("capulet.lit".into()),
                from: Some(Source::MamPostgres),
                store: None,
                source: Some("host=db user=prosody password=pw dbname=xmpp".into())
            }
        );
        assert_eq!(
            parse_str(
                "delete Juliet@capulet.lit --with romeo@montague.lit/orchard --before 2010-06-07"
            )
            .expect("delete"),
            Command::Delete {
                owner: Owner::new("capulet.lit", "juliet"),
                filter: DeleteFilter {
                    with: Some(WithFilter {
                        bare: "romeo@montague.lit".into(),
                        resource: Some("orchard".into())
                    }),
                    before: Some(T0)
                }
            }
        );
        assert_eq!(
            parse_str("export juliet@capulet.lit --format jsonl").expect("export"),
            Command::Export {
                owner: Owner::new("capulet.lit", "juliet"),
                format: ExportFormat::Jsonl
            }
        );
        assert_eq!(
            parse_str("stats").expect("stats"),
            Command::Stats { host: None }
        );
        assert_eq!(parse_str("version").expect("version"), Command::Version);
        assert_eq!(
            parse_str("expire --host capulet.lit").expect("expire"),
            Command::Expire {
                host: Some("capulet.lit".into())
            }
        );
    }

    #[test]
    fn help_is_available_for_every_command() {
        for cmd in ["import", "expire", "delete", "export", "stats", "version"] {
            match parse_str(&format!("{cmd} --help")) {
                Ok(Command::Help(text)) => {
                    assert!(text.starts_with(&format!("Usage: prosodyctl mod_mam {cmd}")))
                }
                other => panic!("{cmd}: {other:?}"),
            }
        }
        assert_eq!(parse_str("--help"), Ok(Command::Help(USAGE.to_owned())));
    }

    #[test]
    fn usage_errors_say_what_is_wrong_and_exit_2() {
        let cases = [
            ("", "No command given"),
            ("frobnicate", "Unknown command 'frobnicate'"),
            ("delete", "Missing USER@HOST"),
            (
                "delete capulet.lit",
                "Invalid JID 'capulet.lit': expected USER@HOST",
            ),
            (
                "delete juliet@capulet.lit/balcony",
                "Invalid JID 'juliet@capulet.lit/balcony': expected USER@HOST",
            ),
            (
                "delete juliet@capulet.lit --before yesterday",
                "Invalid date 'yesterday': expected 2024-01-31 or 2024-01-31T12:00:00Z",
            ),
            ("delete juliet@capulet.lit --with", "--with needs a value"),
            (
                "export juliet@capulet.lit --format csv",
                "Unknown format 'csv': expected xml or jsonl",
            ),
            (
                "import --from mysql",
                "Unknown source 'mysql' for --from: expected internal, sql, mam-sqlite or mam-postgres",
            ),
            (
                "import --from mam-postgres",
                "--from mam-postgres needs --source CONNINFO (e.g. \"host=db user=prosody dbname=prosody\")",
            ),
            (
                "import --from mam-postgres --source port=many",
                "invalid PostgreSQL connection string for --source: invalid connection string: \
                 invalid value for option `port`",
            ),
            (
                "import --source /tmp/x.sqlite",
                "--source is for --from mam-sqlite or mam-postgres",
            ),
            (
                "import --from sql --source /tmp/x.sqlite",
                "--source is for --from mam-sqlite or mam-postgres",
            ),
            (
                "import --from mam-sqlite --store archive2",
                "--store names a stock store; with --from mam-sqlite name the file with --source",
            ),
            ("import --hots x", "Unknown option --hots"),
            ("stats extra", "Unexpected argument 'extra'"),
            ("stats --host a --host b", "--host given twice"),
            ("version extra", "Unexpected argument 'extra'"),
            ("version --host a", "Unknown option --host"),
        ];
        for (line, message) in cases {
            let err = parse_str(line).expect_err(line);
            assert_eq!(first_line(err), (2, message.to_owned()), "{line}");
        }
    }

    #[test]
    fn a_room_is_named_by_its_jid_or_by_its_name_on_the_host_given_or_the_only_one() {
        let lobby = |host: &str| Owner::new(host, "lobby");
        let cases = [
            ("export Lobby@Rooms.example", None, lobby("rooms.example")),
            (
                "export lobby --host rooms.example",
                None,
                lobby("rooms.example"),
            ),
            ("export lobby", Some("chat.example"), lobby("chat.example")),
            (
                "export lobby --host rooms.example",
                Some("chat.example"),
                lobby("rooms.example"),
            ),
            (
                "export lobby@rooms.example --host rooms.example",
                None,
                lobby("rooms.example"),
            ),
        ];
        for (line, only_host, owner) in cases {
            assert_eq!(
                parse_room_command(line, only_host).expect(line),
                Command::Export {
                    owner,
                    format: ExportFormat::Xml
                },
                "{line}"
            );
        }
        assert_eq!(
            parse_room_command(
                "delete lobby --host rooms.example --with lobby@rooms.example/Romeo --before 2010-06-07",
                None
            )
            .expect("delete"),
            Command::Delete {
                owner: lobby("rooms.example"),
                filter: DeleteFilter {
                    with: Some(WithFilter {
                        bare: "lobby@rooms.example".into(),
                        resource: Some("romeo".into())
                    }),
                    before: Some(T0)
                }
            }
        );
    }

    #[test]
    fn room_usage_errors_say_what_is_wrong_and_exit_2() {
        let cases = [
            ("", "No command given"),
            ("delete", "Missing ROOM"),
            (
                "delete lobby",
                "Which MUC component is room 'lobby' on? Give its JID (lobby@HOST) or --host HOST",
            ),
            (
                "export lobby@rooms.example --host chat.example",
                "The room 'lobby@rooms.example' is not on --host chat.example: give one or the other",
            ),
            (
                "export lobby@rooms.example/romeo",
                "Invalid room JID 'lobby@rooms.example/romeo': expected ROOM@HOST",
            ),
            ("export lob/by --host rooms.example", "Invalid room name 'lob/by'"),
            ("export lobby --host a@b", "Invalid host 'a@b'"),
            ("stats --with x", "Unknown option --with"),
        ];
        for (line, message) in cases {
            let err = parse_room_command(line, None).expect_err(line);
            assert_eq!(first_line(err), (2, message.to_owned()), "{line}");
        }
        // Accounts take no --host on delete: the JID names the host.
        let err = parse_str("delete juliet@capulet.lit --host capulet.lit").expect_err("host");
        assert_eq!(first_line(err), (2, "Unknown option --host".to_owned()));
    }

    #[test]
    fn room_help_speaks_of_rooms_and_mod_muc_mam() {
        for cmd in ["import", "expire", "delete", "export", "stats", "version"] {
            match parse_room_command(&format!("{cmd} --help"), None) {
                Ok(Command::Help(text)) => {
                    assert!(
                        text.starts_with(&format!("Usage: prosodyctl mod_muc_mam {cmd}")),
                        "{text}"
                    );
                    assert!(!text.contains("USER@HOST"), "{text}");
                }
                other => panic!("{cmd}: {other:?}"),
            }
        }
        assert_eq!(
            parse_room_command("help", None),
            Ok(Command::Help(ROOM_USAGE.to_owned()))
        );
    }

    #[test]
    fn dates_take_a_day_or_an_xep_0082_datetime() {
        assert_eq!(parse_date("2010-06-07"), Ok(T0));
        assert_eq!(parse_date("2010-06-07T00:00:01Z"), Ok(T0 + 1_000_000));
        assert_eq!(parse_date("2010-06-07T02:00:00+02:00"), Ok(T0));
        assert!(parse_date("2010-13-01").is_err());
    }
}
