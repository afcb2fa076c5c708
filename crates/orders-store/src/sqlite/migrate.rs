//! The schema's migrations (`migrations/sqlite`): recorded by sqlx's migrator in
//! `_sqlx_migrations` for a file, applied in order on a new in-memory database.

use orders_app::StoreError;
use rusqlite::Connection;

use super::sqlite_error;

pub(super) fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations/sqlite")
}

/// An in-memory database is new: every migration applies, in order, on its connection.
pub(super) fn apply_migrations_in_memory(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(sqlite_error)?;
    for migration in migrator().iter() {
        if migration.migration_type.is_down_migration() {
            continue;
        }
        tx.execute_batch(&migration.sql).map_err(|e| {
            StoreError::unavailable_because(
                format!(
                    "cannot apply migration {} ({})",
                    migration.version, migration.description
                ),
                e,
            )
        })?;
    }
    tx.commit().map_err(sqlite_error)
}
