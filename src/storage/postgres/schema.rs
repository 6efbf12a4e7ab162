//! The database schema: the name check that lets a schema name be written into SQL, and
//! the migrations embedded in the binary, applied at start.

use tracing::info;

use super::{db_error, pool_error, Inner};
use crate::storage::StoreError;

/// The migrations, in order; a database at a version above the last is refused.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("migrations/0001_init.sql"))];

/// Whether `name` may be used as the schema name: unquoted-identifier characters only, so
/// it can be written into SQL and `search_path` safely.
pub(super) fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

impl Inner {
    /// Creates the schema if missing and applies the migrations it lacks, in one
    /// transaction under an advisory lock (every node of a deployment may start at once).
    pub(super) async fn migrate(&self, schema: &str) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("starting the migration", e))?;
        // Every node of a deployment may start at once: one migrates, the others wait.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('tandem-migrate:' || $1))",
            &[&schema],
        )
        .await
        .map_err(|e| db_error("taking the migration lock", e))?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             SET LOCAL search_path = {schema};
             CREATE TABLE IF NOT EXISTS schema_version (
                 version     integer PRIMARY KEY,
                 applied_at  timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await
        .map_err(|e| db_error("creating the schema", e))?;
        let current: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
            .await
            .map_err(|e| db_error("reading the schema version", e))?
            .get(0);
        let newest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        if current > newest {
            return Err(StoreError::refused(format!(
                "schema {schema} is at version {current}, written by a newer Tandem; this \
                 binary knows versions up to {newest}"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.batch_execute(sql)
                .await
                .map_err(|e| db_error(&format!("applying migration {version}"), e))?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(|e| db_error("recording the schema version", e))?;
            info!(schema, version, "applied migration");
        }
        tx.commit()
            .await
            .map_err(|e| db_error("committing the migration", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["tandem", "t_1", "test_schema_42"] {
            assert!(valid_schema(ok), "{ok}");
        }
        for bad in ["", "1abc", "Tandem", "a-b", "a;drop", &"x".repeat(64)] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}
