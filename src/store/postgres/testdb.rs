//! Private PostgreSQL databases for tests.
//!
//! `MAM_TEST_PG` names a server and a role that may create databases (a libpq
//! keyword/value string, e.g. `host=127.0.0.1 port=54329 user=mam password=… dbname=postgres`);
//! `make test` starts a private cluster and sets it. Each [`TestDb`] is a fresh, empty
//! database, dropped again when the value goes. Without the variable the PostgreSQL
//! tests say so and pass vacuously, so `cargo test` works on a machine without a server;
//! `make test` always provides one, and `MAM_REQUIRE_PG=1` turns a missing server into
//! a failure.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use postgres::{Client, NoTls};

use crate::config::PgSettings;

/// A fresh database on the test server.
pub struct TestDb {
    admin: postgres::Config,
    pub settings: PgSettings,
}

/// The server from `MAM_TEST_PG`, or `None` (after saying why) when there is none.
fn admin_config() -> Option<postgres::Config> {
    let Ok(text) = std::env::var("MAM_TEST_PG") else {
        if std::env::var("MAM_REQUIRE_PG").is_ok_and(|v| v == "1") {
            panic!("MAM_REQUIRE_PG=1 but MAM_TEST_PG is not set");
        }
        eprintln!("MAM_TEST_PG not set: skipping a PostgreSQL test");
        return None;
    };
    Some(postgres::Config::from_str(&text).expect("MAM_TEST_PG is not a connection string"))
}

impl TestDb {
    /// A new empty database, or `None` when no test server is configured.
    pub fn create() -> Option<TestDb> {
        let admin = admin_config()?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "mam_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut client = admin.connect(NoTls).expect("connect to the test server");
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        let host = match admin.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "127.0.0.1".to_owned(),
        };
        let settings = PgSettings {
            database: name,
            host,
            port: admin.get_ports().first().copied().unwrap_or(5432),
            username: admin.get_user().unwrap_or("postgres").to_owned(),
            password: admin
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            sslmode: crate::config::SslMode::Prefer,
            sslrootcert: None,
        };
        Some(TestDb { admin, settings })
    }

    /// A direct connection to the test database, for checks behind the store's back.
    pub fn client(&self) -> Client {
        let mut config = self.admin.clone();
        config.dbname(&self.settings.database);
        config.connect(NoTls).expect("connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut client) = self.admin.connect(NoTls) {
            let _ = client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.settings.database
            ));
        }
    }
}
