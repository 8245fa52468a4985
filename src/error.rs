//! The crate's one error type, and how each failure becomes an XMPP error.
//!
//! Expected failures (a client's malformed query, an unknown archive id) carry the
//! XMPP condition the client must see; storage failures carry their cause for the
//! log but reach the client only as `internal-server-error`, never with internals.

use thiserror::Error;

/// Everything that can go wrong in the archive engine.
#[derive(Debug, Error)]
pub enum MamError {
    /// The client's request is malformed (bad form, bad date, bad JID, wrong FORM_TYPE).
    #[error("{0}")]
    BadRequest(String),
    /// The query form carries a field this server does not know (XEP-0313 §4.1.1: MUST).
    #[error("{0}")]
    FeatureNotImplemented(String),
    /// An archive id named in the query (`after-id`, RSM `after`, …) is not in this archive.
    #[error("{0}")]
    ItemNotFound(String),
    /// The request asks for more than the server allows (e.g. too many `ids`).
    #[error("{0}")]
    PolicyViolation(String),
    /// The archive cannot take more work right now (the write queue is full because
    /// storage is failing, or the writer has stopped).
    #[error("{0}")]
    Overloaded(String),
    /// A configuration option has a value we cannot accept; names the option.
    #[error("{0}")]
    Config(String),
    /// The database failed; the string says which operation.
    #[error("{context}: {source}")]
    Storage {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// The PostgreSQL server failed or could not be reached; the string says which
    /// operation. (Its messages name no password: connections are built from fields.)
    #[error("{context}: {}", postgres_detail(source))]
    Postgres {
        context: &'static str,
        #[source]
        source: postgres::Error,
    },
    /// zstd failed to set up a context, compress, or train a dictionary (out of
    /// memory, in practice); the string says which operation. A stored value that
    /// does not decompress is [`MamError::Corrupt`] instead.
    #[error("{context}: {source}")]
    Compression {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A write used an archive id the owner already has for another message (the
    /// backend checked; ids are random, so practically never).
    #[error("{0}")]
    Duplicate(String),
    /// The archive database could not be opened at load (missing directory, not a
    /// database, unreadable); names the file.
    #[error("cannot open the archive database {path}: {cause}")]
    Open { path: String, cause: String },
    /// The SQLite archive file exists but cannot be read with the key configured
    /// (SQLCipher, docs/encryption.md). Nothing is written to it, so a wrong key never
    /// replaces an archive with a new empty one.
    #[error("{0}")]
    Key(KeyProblem),
    /// Stored data could not be read back (e.g. an archived stanza that is not XML).
    #[error("corrupt archive data: {0}")]
    Corrupt(String),
    /// The engine could not start (or lost) one of its threads or the socket that
    /// wakes Prosody's loop: the process is out of threads or descriptors.
    #[error("{0}")]
    Thread(String),
}

/// Why an archive file and its key do not fit. Each names the option that holds (or
/// would hold) the key, and never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyProblem {
    /// No key is configured and the file does not read as SQLite: it is encrypted (or
    /// not a database at all).
    #[error("the file is encrypted, or not a SQLite database: missing key (set {option})")]
    Missing { option: &'static str },
    /// A key is configured and the file does not decrypt with it.
    #[error("wrong key ({option}), or the file is not a SQLite database")]
    Wrong { option: &'static str },
    /// A key is configured but the file is a plain SQLite database. Refused rather
    /// than encrypted in place: encrypting is a copy the admin starts
    /// (`import --from mam-sqlite`, docs/encryption.md), never a side effect of a start.
    #[error(
        "the file is not encrypted but {option} sets a key: remove the key, or encrypt the \
         archive first (docs/encryption.md)"
    )]
    NotEncrypted { option: &'static str },
}

/// A PostgreSQL error as an admin needs to read it: the server's own message ("FATAL:
/// password authentication failed for user …") or the I/O cause, not just "db error".
fn postgres_detail(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// An XMPP stanza error as `util.stanza.error_reply` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmppError {
    /// `cancel`, `modify`, `wait`, …
    pub error_type: &'static str,
    /// A defined condition of RFC 6120 §8.3.3.
    pub condition: &'static str,
    /// Human-readable text for the client; `None` where saying more would leak internals.
    pub text: Option<String>,
}

impl MamError {
    /// Wraps a rusqlite error with the operation that failed.
    pub fn storage(context: &'static str) -> impl FnOnce(rusqlite::Error) -> MamError {
        move |source| MamError::Storage { context, source }
    }

    /// Wraps a PostgreSQL error with the operation that failed.
    pub fn postgres(context: &'static str) -> impl FnOnce(postgres::Error) -> MamError {
        move |source| MamError::Postgres { context, source }
    }

    /// Whether the database refused a write for breaking a constraint (an archive id
    /// already taken): one bad row, not a failing database, so retrying cannot help.
    pub fn is_constraint(&self) -> bool {
        match self {
            MamError::Storage {
                source: rusqlite::Error::SqliteFailure(e, _),
                ..
            } => e.code == rusqlite::ErrorCode::ConstraintViolation,
            MamError::Postgres { source, .. } => {
                source.code().is_some_and(|c| c.code().starts_with("23"))
            }
            MamError::Duplicate(_) => true,
            _ => false,
        }
    }

    /// The XMPP error a client sees for this failure.
    pub fn to_xmpp(&self) -> XmppError {
        let (error_type, condition, text) = match self {
            MamError::BadRequest(t) => ("modify", "bad-request", Some(t.clone())),
            MamError::FeatureNotImplemented(t) => {
                ("cancel", "feature-not-implemented", Some(t.clone()))
            }
            MamError::ItemNotFound(t) => ("cancel", "item-not-found", Some(t.clone())),
            MamError::PolicyViolation(t) => ("modify", "policy-violation", Some(t.clone())),
            MamError::Overloaded(_) => ("wait", "resource-constraint", None),
            MamError::Config(_)
            | MamError::Storage { .. }
            | MamError::Postgres { .. }
            | MamError::Compression { .. }
            | MamError::Duplicate(_)
            | MamError::Open { .. }
            | MamError::Key(_)
            | MamError::Corrupt(_)
            | MamError::Thread(_) => ("wait", "internal-server-error", None),
        };
        XmppError {
            error_type,
            condition,
            text,
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T> = std::result::Result<T, MamError>;
