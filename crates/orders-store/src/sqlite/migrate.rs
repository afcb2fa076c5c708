//! The schema's migrations (`migrations/sqlite`), embedded and applied with rusqlite:
//! the schema version is `PRAGMA user_version` (the number of migrations applied).
//!
//! Files created before the store applied its migrations itself have their applied
//! migrations recorded in a `_sqlx_migrations` table and `user_version` 0; opening one
//! first sets `user_version` to the migrations that table records, so none runs again.

use orders_app::StoreError;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use rusqlite_migration::{M, Migrations};

use super::sqlite_error;

/// The migrations, in order: (name, SQL). Migration `n` (from 1) takes the schema to
/// `user_version` `n`; its name's number is `n`, as the old migrator's version was.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_orders_outbox_inbox",
        include_str!("../../migrations/sqlite/0001_orders_outbox_inbox.sql"),
    ),
    (
        "0002_payment_deadline",
        include_str!("../../migrations/sqlite/0002_payment_deadline.sql"),
    ),
];

/// Brings the database on `conn` to the latest schema: records the migrations a file
/// from the old migrator has, then applies the missing ones in one transaction.
pub(super) fn apply_migrations(conn: &mut Connection) -> Result<(), StoreError> {
    adopt_sqlx_history(conn)?;
    let migrations = Migrations::new(MIGRATIONS.iter().map(|(_, sql)| M::up(sql)).collect());
    migrations.to_latest(conn).map_err(migration_error)
}

/// A file whose `user_version` is 0 but that has a `_sqlx_migrations` table was migrated
/// by the old migrator: its `user_version` becomes the number of leading migrations
/// (versions 1, 2, ...) that the table records as applied successfully.
fn adopt_sqlx_history(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_error)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite_error)?;
    let has_history = tx
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            [],
            |_| Ok(()),
        )
        .optional()
        .map_err(sqlite_error)?
        .is_some();
    if version != 0 || !has_history {
        return Ok(());
    }
    let mut applied = 0_i64;
    {
        let mut recorded = tx
            .prepare("SELECT 1 FROM _sqlx_migrations WHERE version = ?1 AND success")
            .map_err(sqlite_error)?;
        for number in 1..=MIGRATIONS.len() {
            let number = i64::try_from(number)
                .map_err(|e| StoreError::unavailable_because("too many migrations to number", e))?;
            if recorded.exists([number]).map_err(sqlite_error)? {
                applied = number;
            } else {
                break;
            }
        }
    }
    tx.pragma_update(None, "user_version", applied)
        .map_err(sqlite_error)?;
    tx.commit().map_err(sqlite_error)
}

/// A failed migration, named when the failing SQL is one migration's.
fn migration_error(error: rusqlite_migration::Error) -> StoreError {
    let failed = match &error {
        rusqlite_migration::Error::RusqliteError { query, .. } => MIGRATIONS
            .iter()
            .find(|(_, sql)| sql == query)
            .map(|(name, _)| *name),
        _ => None,
    };
    match failed {
        Some(name) => {
            StoreError::unavailable_because(format!("cannot apply migration {name}"), error)
        }
        None => StoreError::unavailable_because("cannot apply the migrations", error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap()
    }

    fn tables(conn: &Connection) -> i64 {
        conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'orders'",
            [],
            |row| row.get(0),
        )
        .unwrap()
    }

    #[test]
    fn a_new_database_gets_every_migration_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        apply_migrations(&mut conn).unwrap();
        assert_eq!(user_version(&conn), MIGRATIONS.len() as i64);
        assert_eq!(tables(&conn), 1);
        // Opening it again applies nothing (a re-run would fail on CREATE TABLE).
        apply_migrations(&mut conn).unwrap();
        assert_eq!(user_version(&conn), MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_file_from_the_old_migrator_is_adopted_without_rerunning() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0].1).unwrap();
        conn.execute_batch(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL,
                installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL,
                checksum BLOB NOT NULL, execution_time BIGINT NOT NULL);
             INSERT INTO _sqlx_migrations VALUES (1, 'orders outbox inbox', CURRENT_TIMESTAMP, TRUE, x'00', 1);",
        )
        .unwrap();
        assert_eq!(user_version(&conn), 0);
        apply_migrations(&mut conn).unwrap();
        // The first is adopted, not rerun (that would fail on CREATE TABLE); the later
        // ones are applied.
        assert_eq!(user_version(&conn), MIGRATIONS.len() as i64);
        assert_eq!(tables(&conn), 1);
    }

    #[test]
    fn a_failed_old_migration_is_not_counted() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, success BOOLEAN NOT NULL);
             INSERT INTO _sqlx_migrations VALUES (1, FALSE);",
        )
        .unwrap();
        apply_migrations(&mut conn).unwrap();
        assert_eq!(user_version(&conn), MIGRATIONS.len() as i64);
        assert_eq!(tables(&conn), 1);
    }

    #[test]
    fn a_database_of_the_first_schema_gets_the_payment_deadline_column() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0].1).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO orders (id, version, status, data, placed_at, updated_at) \
             VALUES ('o-1', 1, 'AwaitingPayment', '{}', 't', 't')",
        )
        .unwrap();
        apply_migrations(&mut conn).unwrap();
        assert_eq!(user_version(&conn), MIGRATIONS.len() as i64);
        let due: Option<String> = conn
            .query_row(
                "SELECT payment_due_at FROM orders WHERE id = 'o-1'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(due, None, "an older order has no deadline");
        let plan: String = conn
            .query_row(
                &format!("EXPLAIN QUERY PLAN {}", crate::sql::DUE_FOR_PAYMENT),
                rusqlite::params!["2026-01-05T10:00:00.000000000Z", 10],
                |row| row.get(3),
            )
            .unwrap();
        assert!(plan.contains("orders_payment_due"), "{plan}");
    }

    #[test]
    fn a_failing_migration_is_named() {
        let mut conn = Connection::open_in_memory().unwrap();
        // The table already exists, so the first migration's CREATE TABLE fails.
        conn.execute_batch("CREATE TABLE orders (id TEXT)").unwrap();
        let error = apply_migrations(&mut conn).unwrap_err();
        assert!(
            error.to_string().contains("0001_orders_outbox_inbox"),
            "{error}"
        );
    }
}
