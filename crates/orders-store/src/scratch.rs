//! Scratch databases for tests and benchmarks (feature `scratch`): each has a unique
//! name, so runs in parallel never share one, and is removed when it is dropped or
//! explicitly removed.
//!
//! * [`ScratchFile`]: a SQLite file path under the temp folder (nothing is created; the
//!   store creates the file when it connects).
//! * [`ScratchDatabase`]: a database of its own on a PostgreSQL server.
//! * [`ScratchSchema`]: a schema of its own in the server's database (cheaper than a
//!   database; a store finds it through its search path).
//!
//! The server comes from [`postgres_admin_url`] (`ORDERS_TEST_POSTGRES_URL`). Whether a
//! missing server skips the caller or fails it (under CI, say) is for the caller to say.
//! Dropping a PostgreSQL scratch that was not [removed](ScratchDatabase::remove) drops
//! it on a thread of its own, best effort: close the stores on it first, and prefer
//! `remove().await`, which reports failures.

use std::{
    path::{Path, PathBuf},
    str::FromStr,
};

use sqlx::{Connection, Executor, PgConnection, postgres::PgConnectOptions};
use uuid::Uuid;

/// The environment variable naming the PostgreSQL server for tests and benchmarks, as a
/// URL whose user may create databases and schemas (for example
/// `postgres://postgres@127.0.0.1:5432/test`).
pub const POSTGRES_URL_VAR: &str = "ORDERS_TEST_POSTGRES_URL";

/// The PostgreSQL server of [`POSTGRES_URL_VAR`], or `None` when it is unset or blank.
#[must_use]
pub fn postgres_admin_url() -> Option<String> {
    std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// A unique name: `prefix` and a random suffix; a valid unquoted SQL identifier.
fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::new_v4().simple())
}

/// A SQLite database path under the temp folder, with a unique name. On drop the file
/// and its WAL, shared-memory and lock files are removed (close the store on it first).
#[derive(Debug)]
pub struct ScratchFile {
    path: PathBuf,
}

impl ScratchFile {
    /// A new path; nothing is created yet.
    #[must_use]
    pub fn new() -> Self {
        Self {
            path: std::env::temp_dir().join(format!("{}.db", unique_name("orders-scratch"))),
        }
    }

    /// Where the database file goes.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `sqlite:PATH`, as the store and the service's `--store` take it.
    #[must_use]
    pub fn url(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}

impl Default for ScratchFile {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", ".lock"] {
            let mut path = self.path.clone().into_os_string();
            path.push(suffix);
            // Absent (never created, or removed already) is fine.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A database of its own on a PostgreSQL server, dropped (its connections ended) by
/// [`ScratchDatabase::remove`] or on drop.
#[derive(Debug)]
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    url: String,
    removed: bool,
}

impl ScratchDatabase {
    /// Creates a database with a unique name on the server of `admin_url`.
    ///
    /// # Errors
    /// When the server cannot be reached or refuses.
    pub async fn create(admin_url: &str) -> Result<Self, sqlx::Error> {
        let name = unique_name("orders_scratch");
        run_admin(admin_url, &format!("CREATE DATABASE {name}")).await?;
        Ok(Self {
            url: with_database(admin_url, &name),
            admin_url: admin_url.to_owned(),
            name,
            removed: false,
        })
    }

    /// The database's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin URL with this database in its path, for a store or `--store`.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database, ending the connections still on it.
    ///
    /// # Errors
    /// When the server cannot be reached or refuses.
    pub async fn remove(mut self) -> Result<(), sqlx::Error> {
        self.removed = true;
        run_admin(&self.admin_url, &self.drop_statement()).await
    }

    fn drop_statement(&self) -> String {
        format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if !self.removed {
            drop_in_background(self.admin_url.clone(), self.drop_statement());
        }
    }
}

/// A schema of its own in the database of a PostgreSQL server, dropped with everything
/// in it by [`ScratchSchema::remove`] or on drop.
#[derive(Debug)]
pub struct ScratchSchema {
    admin_url: String,
    name: String,
    /// Boxed: the options are large, and a scratch is moved around.
    options: Box<PgConnectOptions>,
    removed: bool,
}

impl ScratchSchema {
    /// Creates a schema with a unique name in the database of `admin_url`.
    ///
    /// # Errors
    /// When the URL is invalid, or the server cannot be reached or refuses.
    pub async fn create(admin_url: &str) -> Result<Self, sqlx::Error> {
        let name = unique_name("orders_scratch");
        let options = Box::new(
            PgConnectOptions::from_str(admin_url)?.options([("search_path", name.as_str())]),
        );
        run_admin(admin_url, &format!("CREATE SCHEMA {name}")).await?;
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name,
            options,
            removed: false,
        })
    }

    /// The schema's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connection options of the admin URL with the search path set to this schema: a
    /// store connected with them creates its tables here.
    #[must_use]
    pub fn connect_options(&self) -> PgConnectOptions {
        (*self.options).clone()
    }

    /// Drops the schema and everything in it.
    ///
    /// # Errors
    /// When the server cannot be reached or refuses.
    pub async fn remove(mut self) -> Result<(), sqlx::Error> {
        self.removed = true;
        run_admin(&self.admin_url, &self.drop_statement()).await
    }

    fn drop_statement(&self) -> String {
        format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)
    }
}

impl Drop for ScratchSchema {
    fn drop(&mut self) {
        if !self.removed {
            drop_in_background(self.admin_url.clone(), self.drop_statement());
        }
    }
}

/// Runs one statement on a connection of its own to `admin_url`.
async fn run_admin(admin_url: &str, statement: &str) -> Result<(), sqlx::Error> {
    let mut admin = PgConnection::connect(admin_url).await?;
    admin.execute(statement).await?;
    admin.close().await
}

/// Runs `statement` on a thread with a runtime of its own (a drop cannot await, and may
/// happen inside or outside a runtime) and waits for it; a failure is logged.
fn drop_in_background(admin_url: String, statement: String) {
    let done = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let result = match runtime {
            Ok(runtime) => runtime
                .block_on(run_admin(&admin_url, &statement))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = result {
            tracing::warn!(%error, %statement, "cannot drop a scratch database");
        }
    });
    let _ = done.join();
}

/// `url` with its database (the path) replaced by `name`; the query is kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut with = format!("{}/{name}", &base[..path]);
    if let Some(query) = query {
        with.push('?');
        with.push_str(query);
    }
    with
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced_and_its_query_kept() {
        for (url, expected) in [
            (
                "postgres://postgres@127.0.0.1:5432/test",
                "postgres://postgres@127.0.0.1:5432/db",
            ),
            ("postgres://u:p@h", "postgres://u:p@h/db"),
            (
                "postgres://h/test?sslmode=disable",
                "postgres://h/db?sslmode=disable",
            ),
        ] {
            assert_eq!(with_database(url, "db"), expected);
        }
    }

    #[test]
    fn a_scratch_file_has_a_unique_path_and_is_removed_on_drop() {
        let (a, b) = (ScratchFile::new(), ScratchFile::new());
        assert_ne!(a.path(), b.path());
        std::fs::write(a.path(), b"x").unwrap();
        let path = a.path().to_path_buf();
        assert_eq!(a.url(), format!("sqlite:{}", path.display()));
        drop(a);
        assert!(!path.exists());
    }
}
