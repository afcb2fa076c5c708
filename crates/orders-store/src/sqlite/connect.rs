//! Opening a store: the file, its folder and its connections, each set up the same way.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use orders_app::StoreError;
use rusqlite::{Connection, OpenFlags};

use super::{SqliteOrderStore, migrate, sqlite_error};

/// How long a statement waits for another process's write lock before it fails.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reader connections (threads) of a file database.
pub(super) const READERS: usize = 2;

/// The writer's page cache (KiB): the pages its inserts and marks keep touching (the
/// right edge of every index, recent rows) stay in memory. Each connection's cache
/// fills up to its size as the file grows, so the sizes are what the process's memory
/// grows to; they are kept small on purpose (BENCHMARKS.md, "Design choices").
pub(super) const WRITER_CACHE_KIB: i64 = 8 * 1024;

/// A reader's page cache (KiB): the flow's reads come from the write-through cache; the
/// readers serve history, stats and orders no longer cached, and the OS caches the file.
pub(super) const READER_CACHE_KIB: i64 = 2 * 1024;

/// The checkpointer's page cache (KiB): checkpoints copy frames without it.
pub(super) const CHECKPOINTER_CACHE_KIB: i64 = 512;

/// The writer checkpoints by itself only past this many WAL pages (a safety net); normally
/// a separate connection checkpoints every [`CHECKPOINT_EVERY`](super::checkpoint::CHECKPOINT_EVERY) commits.
pub(super) const WAL_AUTOCHECKPOINT: i64 = 20_000;

/// Prepared statements kept per connection.
pub(super) const STATEMENT_CACHE: usize = 64;

impl SqliteOrderStore {
    /// Opens (creating it and its folder if missing) the database at `url_or_path` and
    /// applies the migrations. Accepts `sqlite:PATH`, `sqlite://PATH`, `sqlite::memory:`
    /// or a plain file path. Files are opened in WAL mode with `synchronous=NORMAL`,
    /// a busy timeout and foreign keys on. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the URL is invalid, the file cannot be opened or
    /// created, or the migrations fail.
    pub async fn connect(url_or_path: &str) -> Result<Self, StoreError> {
        let in_memory = url_or_path.contains(":memory:") || url_or_path.contains("mode=memory");
        if in_memory {
            let mut conn = Connection::open_in_memory().map_err(sqlite_error)?;
            configure(&conn, false, WRITER_CACHE_KIB)?;
            migrate::apply_migrations(&mut conn)?;
            return Self::start(conn, Vec::new(), None, true, None);
        }
        let path = file_path(url_or_path)?;
        if let Some(folder) = path.parent()
            && !folder.as_os_str().is_empty()
        {
            std::fs::create_dir_all(folder).map_err(|e| {
                StoreError::unavailable_because(
                    format!("cannot create folder {}", folder.display()),
                    e,
                )
            })?;
        }
        // Before anything touches the file: another process may be using it.
        let lock = super::lock::FileLock::acquire(&path)?;
        // The writer makes the file WAL for good, then applies the migrations before
        // the other connections open.
        let mut writer = open(&path, WRITER_CACHE_KIB)?;
        let mode: String = writer
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| unavailable_file(&path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::unavailable(format!(
                "cannot put {} in WAL mode (journal mode {mode})",
                path.display()
            )));
        }
        migrate::apply_migrations(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| open(&path, READER_CACHE_KIB))
            .collect::<Result<Vec<_>, _>>()?;
        let checkpointer = open(&path, CHECKPOINTER_CACHE_KIB)?;
        Self::start(writer, readers, Some(checkpointer), false, Some(lock))
    }
}

/// The file a `sqlite:PATH` or `sqlite://PATH` URL, or a plain path, names. The only
/// option a URL may carry is `mode=rwc` (read, write, create: what the store does anyway).
fn file_path(url_or_path: &str) -> Result<PathBuf, StoreError> {
    let invalid =
        |why: &str| StoreError::unavailable(format!("invalid SQLite URL {url_or_path:?}: {why}"));
    let Some(rest) = url_or_path.strip_prefix("sqlite:") else {
        if url_or_path.is_empty() {
            return Err(invalid("no path"));
        }
        return Ok(PathBuf::from(url_or_path));
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, options) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() {
        return Err(invalid("no path"));
    }
    if let Some(option) = options
        .split('&')
        .find(|o| !o.is_empty() && *o != "mode=rwc")
    {
        return Err(invalid(&format!("unsupported option {option:?}")));
    }
    Ok(PathBuf::from(path))
}

/// A connection to the (migrated) file, with a page cache of `cache_kib`.
pub(super) fn open(path: &Path, cache_kib: i64) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| unavailable_file(path, e))?;
    configure(&conn, true, cache_kib)?;
    Ok(conn)
}

pub(super) fn unavailable_file(path: &Path, error: rusqlite::Error) -> StoreError {
    StoreError::unavailable_because(format!("cannot open {}", path.display()), error)
}

/// The settings of every connection.
pub(super) fn configure(conn: &Connection, file: bool, cache_kib: i64) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite_error)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(sqlite_error)?;
    conn.pragma_update(None, "cache_size", -cache_kib)
        .map_err(sqlite_error)?;
    if file {
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite_error)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT)
            .map_err(sqlite_error)?;
    }
    Ok(())
}
