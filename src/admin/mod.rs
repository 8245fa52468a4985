//! The operations behind `prosodyctl mod_mam <command>`: import (from stock archives,
//! or from another archive of this module), expire, delete, export and stats; and the
//! same for room archives behind `prosodyctl mod_muc_mam <command>` (one room in
//! place of one user, on a MUC component's archive: [`Operations::open`] with
//! [`Owners::Rooms`]).
//!
//! One entry point: [`Operations::open`] reads the host's options and opens its
//! archive; every command is a method on it, which owns store opening, credentials
//! (`PGPASSWORD` for a PostgreSQL source) and filters. The Lua side only parses
//! Prosody's configuration into options, converts values, and reads stock stores
//! through Prosody's own storage drivers ([`import::StockArchive`]). Exit codes
//! follow Prosody's tools: 0 done, 1 failed, 2 usage.
//!
//! - [`command`]: the command line.
//! - [`import`]: stock archives, under their own ids, verified per user.
//! - [`copy`]: another archive of this module (SQLite to PostgreSQL and back).
//! - [`export`], [`stats`]: one owner's archive out; per-owner figures.

pub mod command;
pub mod copy;
pub mod export;
pub mod import;
pub mod stats;
pub mod stock_file;

use std::io::Write;
use std::sync::Arc;

use crate::config::{self, Config, OptionSource, Owners};
use crate::error::MamError;
use crate::store::{self, ArchiveStore, DeleteFilter, Owner, WithFilter};
use crate::time::{Micros, SystemClock};

pub use command::{parse, Command, ExportFormat, Scope, Source};

/// What the output calls one owner and several: `user`/`users`, `room`/`rooms`.
pub fn owner_nouns(owners: Owners) -> (&'static str, &'static str) {
    match owners {
        Owners::Accounts => ("user", "users"),
        Owners::Rooms => ("room", "rooms"),
    }
}

/// How many messages one delete transaction removes, so that a running Prosody
/// waits at most one short transaction for the write lock.
pub const DELETE_BATCH: usize = 500;

/// A command that cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// The command line is wrong; the text says how (exit code 2).
    Usage(String),
    /// It ran and failed (exit code 1).
    Failed(String),
}

impl AdminError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AdminError::Usage(_) => 2,
            AdminError::Failed(_) => 1,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            AdminError::Usage(m) | AdminError::Failed(m) => m,
        }
    }
}

impl From<MamError> for AdminError {
    fn from(e: MamError) -> Self {
        AdminError::Failed(e.to_string())
    }
}

impl From<std::io::Error> for AdminError {
    fn from(e: std::io::Error) -> Self {
        AdminError::Failed(format!("write failed: {e}"))
    }
}

/// One host's archive, opened for a command.
pub struct Operations {
    config: Config,
    /// Prosody's data directory: where a relative `--source` file is.
    data_path: String,
    store: Box<dyn ArchiveStore>,
}

impl Operations {
    /// Validates the host's options (as the live module would) and opens its archive.
    pub fn open(
        owners: Owners,
        host: &str,
        data_path: &str,
        options: &dyn OptionSource,
    ) -> Result<Operations, AdminError> {
        let config = Config::for_owners(owners, host, data_path, options)
            .map_err(|e| AdminError::Failed(format!("{host}: {e}")))?;
        let store = store::open(&config.storage, true).map_err(|e| {
            AdminError::Failed(format!("{host}: {e} ({})", config.storage.describe()))
        })?;
        Ok(Operations {
            config,
            data_path: data_path.to_owned(),
            store,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Deletes every expired message now ([`crate::expiry::run_to_end`]).
    pub fn expire(&mut self) -> Result<u64, AdminError> {
        let period = self.config.expires_after;
        let host = &self.config.host;
        Ok(crate::expiry::run_to_end(
            &mut *self.store,
            host,
            period,
            &SystemClock,
        )?)
    }

    /// Deletes `user`'s messages, only those with `with` (a JID: bare matches every
    /// resource) and before `before` when given, in [`DELETE_BATCH`]-sized
    /// transactions; a room's joins and leaves too unless `with` is given. Returns
    /// how many messages went.
    pub fn delete(
        &mut self,
        user: &str,
        with: Option<&str>,
        before: Option<Micros>,
    ) -> Result<u64, AdminError> {
        let filter = DeleteFilter {
            with: with.map(WithFilter::from_jid),
            before,
        };
        let owner = self.owner(user);
        let deleted = delete(&mut *self.store, &owner, &filter)?;
        // The rest of the whole archive (a room's joins and leaves) goes with it, not
        // with one sender's messages; the count is the messages', which is what the
        // command reports.
        if with.is_none() {
            for other in config::whole_archive_users(self.config.owners, user)
                .iter()
                .skip(1)
            {
                let other = self.owner(other);
                delete(&mut *self.store, &other, &filter)?;
            }
        }
        Ok(deleted)
    }

    /// Writes `user`'s whole archive to `out`; returns how many messages.
    pub fn export(
        &mut self,
        user: &str,
        format: ExportFormat,
        out: &mut dyn Write,
    ) -> Result<u64, AdminError> {
        let owner = self.owner(user);
        export::export(&mut *self.store, &owner, format, out)
    }

    /// The `stats` report for this host.
    pub fn stats(&mut self) -> Result<String, AdminError> {
        let database = self.config.storage.describe();
        stats::stats_report(
            &mut *self.store,
            &self.config.host,
            &database,
            self.config.owners,
        )
    }

    /// Imports a stock archive ([`import::import_stock`]).
    pub fn import_stock(
        &mut self,
        source: &mut dyn import::StockArchive,
        say: &mut dyn FnMut(&str),
    ) -> Result<(), AdminError> {
        import::import_stock(&self.config, source, Arc::new(SystemClock), say)
    }

    /// Imports a stock archive from Prosody's own SQLite file at `database` (relative
    /// to the data directory), read natively ([`stock_file::StockFile`]): for a store
    /// encrypted with `sql.password`, which Prosody's Lua drivers cannot open.
    pub fn import_stock_sqlite(
        &mut self,
        database: &str,
        password: Option<String>,
        store: &str,
        say: &mut dyn FnMut(&str),
    ) -> Result<(), AdminError> {
        let path = crate::config::data_file(&self.data_path, database);
        let key = match password.filter(|p| !p.is_empty()) {
            Some(p) => crate::config::DatabaseKey::given("sql.password", p),
            None => crate::config::DatabaseKey::none("sql.password"),
        };
        let host = &self.config.host;
        let mut source = stock_file::StockFile::open(&path, &key, host, store, self.config.owners)
            .map_err(|e| AdminError::Failed(format!("{host}: stock store: {e}")))?;
        import::import_stock(&self.config, &mut source, Arc::new(SystemClock), say)
    }

    /// Copies another archive of this module into this host's ([`copy::copy`]):
    /// `mam-sqlite` names a file (default: this host's default file), `mam-postgres`
    /// a connection string, whose password may come from `PGPASSWORD` as with libpq.
    /// Returns whether the verification passed.
    pub fn copy_from(
        &mut self,
        from: Source,
        source: Option<&str>,
        say: &mut dyn FnMut(&str),
    ) -> Result<bool, AdminError> {
        let copy_source = match (from, source) {
            (Source::MamPostgres, Some(conninfo)) => {
                copy::CopySource::postgres(conninfo, std::env::var("PGPASSWORD").ok())?
            }
            (Source::MamPostgres, None) => {
                return Err(AdminError::Usage(
                    "--from mam-postgres needs --source".into(),
                ))
            }
            (_, path) => copy::CopySource::sqlite(
                path,
                &self.data_path,
                &self.config.archive_store,
                source_key(std::env::var("MAM_SOURCE_KEY").ok()),
            ),
        };
        let into = &self.config.storage;
        Ok(copy::copy(
            &copy_source,
            into,
            &self.config.host,
            Arc::new(SystemClock),
            say,
        )?)
    }

    fn owner(&self, user: &str) -> Owner {
        Owner::new(&self.config.host, user)
    }
}

/// The key of a `--from mam-sqlite` source file: `MAM_SOURCE_KEY` from the
/// environment, as `PGPASSWORD` gives a PostgreSQL source's password, so the key is in
/// no command line (`ps`, shell history). Unset or empty: the source is plain SQLite.
fn source_key(env: Option<String>) -> crate::config::DatabaseKey {
    match env.filter(|k| !k.is_empty()) {
        Some(key) => crate::config::DatabaseKey::given("MAM_SOURCE_KEY", key),
        None => crate::config::DatabaseKey::none("MAM_SOURCE_KEY"),
    }
}

impl From<copy::CopyError> for AdminError {
    fn from(e: copy::CopyError) -> Self {
        match e.exit_code() {
            2 => AdminError::Usage(e.to_string()),
            _ => AdminError::Failed(e.to_string()),
        }
    }
}

/// Deletes an owner's matching messages in [`DELETE_BATCH`]-sized transactions.
fn delete(
    store: &mut dyn ArchiveStore,
    owner: &Owner,
    filter: &DeleteFilter,
) -> Result<u64, AdminError> {
    let mut total = 0;
    loop {
        let n = store.delete_batch(owner, filter, DELETE_BATCH)?;
        total += n;
        if n < DELETE_BATCH as u64 {
            return Ok(total);
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use crate::store::sqlite::SqliteStore;
    use crate::store::{ArchiveStore, ArchivedMessage, ImportedMessage};
    use crate::time::Micros;

    pub const T0: Micros = 1_275_868_800_000_000; // 2010-06-07T00:00:00Z

    /// An in-memory archive where `user` on capulet.lit has `n` messages, one a second
    /// from [`T0`].
    pub fn store_with(user: &str, n: i64) -> SqliteStore {
        let mut store = SqliteStore::open_in_memory().expect("open");
        let batch: Vec<_> = (0..n)
            .map(|i| ImportedMessage {
                user: user.into(),
                msg: ArchivedMessage {
                    id: format!("id{i}"),
                    when: T0 + i * 1_000_000,
                    with_bare: "romeo@montague.lit".into(),
                    with_resource: None,
                    xml: format!(
                        "<message xmlns='jabber:client' to='romeo@montague.lit'><body>\"{i}\" &amp; \\</body></message>"
                    ),
                },
            })
            .collect();
        store.import_batch("capulet.lit", &batch).expect("import");
        store
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{store_with, T0};
    use super::*;
    use crate::time::SystemClock;

    #[test]
    fn delete_runs_in_batches_to_the_end_and_expiry_takes_the_rest() {
        let mut store = store_with("juliet", 1234);
        let owner = Owner::new("capulet.lit", "juliet");
        let filter = DeleteFilter {
            with: None,
            before: Some(T0 + 1000 * 1_000_000),
        };
        assert_eq!(delete(&mut store, &owner, &filter).expect("delete"), 1000);
        // Everything is from 2010: a one-day expiry removes the rest.
        assert_eq!(
            crate::expiry::run_to_end(&mut store, "capulet.lit", Some(86_400), &SystemClock)
                .expect("expire"),
            234
        );
    }
}
