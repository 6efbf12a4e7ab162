//! PostgreSQL for the tests: the URL from `TANDEM_TEST_POSTGRES_URL` (which `.ci/run` sets),
//! and a schema of the test's own, created fresh and dropped afterwards, so tests run in
//! parallel on one database. Where the variable is unset, PostgreSQL tests skip with one
//! line; where it is set and the database is unreachable, they fail.

use std::sync::atomic::{AtomicU32, Ordering};

/// The variable that names the test database.
pub const URL_VAR: &str = "TANDEM_TEST_POSTGRES_URL";

/// The test database's URL, or `None` (after saying the test is skipped) when unset.
pub fn url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("SKIPPED {test}: {URL_VAR} is not set (no PostgreSQL to test against)");
            None
        }
    }
}

/// A schema of one test's own, dropped (with everything in it) when this is dropped.
pub struct Schema {
    pub url: String,
    pub name: String,
}

impl Schema {
    /// A fresh schema name for `test` (the server creates the schema itself).
    pub fn new(url: &str, test: &str) -> Schema {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag: String = test
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(20)
            .collect::<String>()
            .to_ascii_lowercase();
        let name = format!(
            "t_{tag}_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u16>()
        );
        let schema = Schema {
            url: url.to_owned(),
            name,
        };
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(|| schema.sweep_dead());
        schema.execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", schema.name));
        schema
    }

    /// Runs SQL statements on the test database (on a thread of its own, so it works from
    /// inside any runtime); panics if the database cannot be reached.
    pub fn execute(&self, sql: &str) {
        if let Err(e) = self.try_execute(sql) {
            panic!("{e}");
        }
    }

    fn try_execute(&self, sql: &str) -> Result<(), String> {
        let (url, sql) = (self.url.clone(), sql.to_owned());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| format!("{URL_VAR} is set but PostgreSQL is unreachable: {e}"))?;
                tokio::spawn(connection);
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| format!("{sql}: {e}"))
            })
        })
        .join()
        .map_err(|_| "the SQL thread panicked".to_owned())?
    }

    /// Drops the schemas of test processes that are gone (a test killed before its drop
    /// ran, or a schema kept for the life of a test process): their names carry the pid.
    fn sweep_dead(&self) {
        let (url, names) = (
            self.url.clone(),
            std::sync::Arc::new(std::sync::Mutex::new(Vec::new())),
        );
        let found = std::sync::Arc::clone(&names);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(connection);
                let rows = client
                    .query(
                        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 't\\_%'",
                        &[],
                    )
                    .await
                    .ok()?;
                let mut found = found.lock().ok()?;
                found.extend(rows.into_iter().map(|r| r.get::<_, String>(0)));
                Some(())
            })
        })
        .join();
        let names = names.lock().map(|n| n.clone()).unwrap_or_default();
        for name in names {
            // t_{tag}_{pid}_{n}_{random}
            let parts: Vec<&str> = name.rsplitn(4, '_').collect();
            let Some(pid) = parts.get(2).and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = self.try_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
            }
        }
    }

    /// The flags that point `tandem serve` at this schema.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--postgres-url".into(),
            self.url.clone(),
            "--postgres-schema".into(),
            self.name.clone(),
        ]
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Err(e) = self.try_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)) {
            eprintln!("could not drop schema {}: {e}", self.name);
        }
    }
}
