//! The SQLite adapter of [`OrderStore`] and [`Outbox`]: the embedded default, one file in
//! WAL mode, on rusqlite.
//!
//! SQLite is a library, not a server: a statement is a function call that blocks its
//! thread. So each connection lives on a thread of its own and async callers hand it
//! work through a channel and await the answer; the costs to watch are those hand-offs
//! and the WAL writes, not the SQL. So:
//!
//! * **One writer thread** owns the writing connection and runs every write in arrival
//!   order: SQLite lets one connection write at a time anyway, and queueing in-process is
//!   cheaper than SQLite's sleeping busy handler. Callers send it a job and await the
//!   answer, so a caller that gives up never leaves a transaction half done.
//! * **Group commit**: the commits (and relay marks) that queued up while the writer was
//!   busy are written in one transaction, so the WAL is written once for all of them.
//!   If that transaction fails (a precondition of one of them, usually), it is rolled
//!   back and each write is done alone, so only the failing ones fail. Nobody hears
//!   "committed" before `COMMIT` returned. Statements are prepared once per connection
//!   and cached.
//! * Preconditions are constraints, checked by SQLite: the inbox and idempotency-key
//!   primary keys, and triggers that allow an order's version only to go up by one (a new
//!   order starts at 1). The error says which one failed.
//! * Reads go to [`READERS`] reader threads, which WAL lets run beside the writer. An
//!   in-memory database (`sqlite::memory:`) exists only in its one connection, so there
//!   the writer thread reads too.
//! * A separate connection checkpoints the WAL every [`CHECKPOINT_EVERY`] commits, off
//!   the writer's thread. Under steady load that alone never lets the WAL start over:
//!   SQLite restarts it only when a write begins with every frame copied back, and the
//!   writer always has new frames by then. So when a background checkpoint has copied
//!   all it saw, the writer copies the frames written meanwhile itself, between two
//!   groups, and its next write starts the WAL over. The background checkpoint runs in
//!   three passes, each copying what was written during the one before, so what is
//!   left for the writer is small: finishing stalls it for ~1 ms (0.4-2.4 ms; its
//!   fsyncs wait for the pages written meanwhile; after a single pass it was 2-3 ms), a
//!   few times a second at full load. Without it the WAL grew past
//!   [`WAL_AUTOCHECKPOINT`] pages within seconds, and then the writer checkpointed after
//!   every group, stalling commits for milliseconds each time; letting the WAL grow
//!   larger before finishing (8,192 or 16,384 pages) made the HTTP latency bench no
//!   better, and never finishing worse.
//! * The migrations (`migrations/sqlite`) are applied with sqlx's migrator, which records
//!   them in `_sqlx_migrations`, before the connections open.
//! * **The relay publishes from memory.** After `COMMIT` the writer hands the committed
//!   outbox rows (position and envelope) to the relay, which publishes them at once and
//!   sends their "sent" marks to the writer without waiting for them, [`MARK_BATCH`]
//!   rows or [`MARK_DELAY`] at a time: the marks join the next group commit. The table
//!   is read only to catch up: at start, after rows were requeued, after a failed
//!   publish or mark, when more rows were committed than the hand-over holds, and once
//!   a second to find rows that some other writer committed. Before it reads the table
//!   the relay waits for its marks, so a row being marked is not taken for unsent; a
//!   crash before a mark lands publishes that row again, with its messageId, as it
//!   always could.
//!
//! The relay is serialised in-process by a mutex and holds no connection while it
//! publishes. Several processes relaying one file are not coordinated (use PostgreSQL).

use std::{
    collections::VecDeque,
    path::Path,
    str::FromStr,
    sync::{
        Arc, Mutex as StdMutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc::{self as std_mpsc, Receiver, Sender, SyncSender},
    },
    thread,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use orders_app::{
    Commit, Direction, MessageRecord, OrderStore, Outbox, PruneReport, StoreError,
    messaging::{Envelope, MessageBus, MessageId},
};
use orders_domain::{Order, OrderId, Timestamp};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use sqlx::{
    ConnectOptions, Connection as _,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};
use tokio::sync::{Mutex, Notify, oneshot};

use crate::{
    cache::WriteThroughCache,
    snapshot,
    sql::{NewOutboxRow, RelayBatch, outcome_columns, outcome_from_columns, publish_in_order},
};

/// How long a statement waits for another process's write lock before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reader connections (threads) of a file database.
const READERS: usize = 2;
/// The most writes in one transaction.
const MAX_GROUP: usize = 256;
/// The writer's page cache (KiB): the pages its inserts and marks keep touching (the
/// right edge of every index, recent rows) stay in memory. Each connection's cache
/// fills up to its size as the file grows, so the sizes are what the process's memory
/// grows to: with 16 MiB for all four connections the service's RSS went from 29 MiB
/// after 2,000 orders to 64 MiB after 30,000.
const WRITER_CACHE_KIB: i64 = 8 * 1024;
/// A reader's page cache (KiB): the flow's reads come from the write-through cache; the
/// readers serve history, stats and orders no longer cached, and the OS caches the file.
const READER_CACHE_KIB: i64 = 2 * 1024;
/// The checkpointer's page cache (KiB): checkpoints copy frames without it.
const CHECKPOINTER_CACHE_KIB: i64 = 512;
/// The writer checkpoints by itself only past this many WAL pages (a safety net); normally
/// a separate connection checkpoints every [`CHECKPOINT_EVERY`] commits.
const WAL_AUTOCHECKPOINT: i64 = 20_000;
/// Passes of one background checkpoint (see `checkpoint_loop`).
const CHECKPOINT_PASSES: usize = 3;
/// Commits between two background checkpoints.
const CHECKPOINT_EVERY: usize = 1000;
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 64;
/// Committed outbox rows the writer hands to the relay at most; past it, the relay reads
/// the table instead (a relay that cannot keep up does not make memory grow).
const FRESH_LIMIT: usize = 65_536;
/// Published rows whose "sent" marks the relay sends to the writer in one go, at most...
const MARK_BATCH: usize = 64;
/// ...or after this long, whichever comes first. A crash before a mark lands publishes
/// those rows again, with their messageIds, as it always could.
const MARK_DELAY: Duration = Duration::from_millis(10);
/// How often the relay reads the table although the hand-over had everything: rows
/// committed by another writer of the file are published within this long.
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// What the version triggers say when they refuse a write.
const VERSION_CONFLICT: &str = "order version conflict";

const INSERT_INBOX: &str = "INSERT INTO inbox \
     (subscriber, message_id, seq, order_id, topic, outcome, detail, handled_at) \
     VALUES (?1, ?2, \
       coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0) + 1, \
       ?3, ?4, ?5, ?6, ?7)";
const INSERT_KEY: &str = "INSERT INTO idempotency_keys (key, order_id) VALUES (?1, ?2)";
/// Inserted at version 1, or updated to the version read + 1; the triggers refuse
/// anything else (a lost update).
const UPSERT_ORDER: &str = "INSERT INTO orders (id, version, status, data, placed_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
     ON CONFLICT (id) DO UPDATE SET version = excluded.version, \
       status = excluded.status, data = excluded.data, updated_at = excluded.updated_at";
const INSERT_OUTBOX: &str = "INSERT INTO outbox (message_id, order_id, topic, envelope, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5)";
/// One statement (one prepared plan) whatever the batch size: positions as a JSON array.
const MARK_SENT: &str = "UPDATE outbox SET sent_at = ?1 \
     WHERE position IN (SELECT value FROM json_each(?2))";

/// Work for the writer thread, answering through a channel it captured.
type WriterWork = Box<dyn FnOnce(&mut Connection) + Send + 'static>;
/// Work for a reader thread.
type ReaderWork = Box<dyn FnOnce(&Connection) + Send + 'static>;

/// The SQLite adapter of [`OrderStore`] and [`Outbox`].
pub struct SqliteOrderStore {
    /// The writer thread's queue.
    writer: Sender<Job>,
    /// The reader threads' queue; `None` once closed.
    readers: StdMutex<Option<Sender<ReaderWork>>>,
    /// One per reader thread, resolved when it has ended (closed its connection).
    reader_ends: StdMutex<Vec<oneshot::Receiver<()>>>,
    /// An in-memory database: the writer thread reads too.
    in_memory: bool,
    /// Serialises relays in this process, so rows leave in commit order, once; and what
    /// the relay knows between calls.
    relay: Mutex<RelayState>,
    /// Committed outbox rows, handed over by the writer thread for the relay.
    fresh: Arc<FreshRows>,
    /// Wakes the relay after a commit with outbox rows (shared with the writer thread).
    committed: Arc<Notify>,
    /// What this process (the only writer) committed last, for the flow's reads.
    /// Kept by the writer thread, in commit order, so it never goes back in time.
    cache: Arc<WriteThroughCache>,
}

impl std::fmt::Debug for SqliteOrderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOrderStore")
            .field("in_memory", &self.in_memory)
            .finish_non_exhaustive()
    }
}

/// What the writer thread does.
enum Job {
    /// A commit, prepared; answered with the new version once committed.
    Commit(
        Box<PreparedCommit>,
        oneshot::Sender<Result<u64, StoreError>>,
    ),
    /// Outbox rows the relay published: their positions as a JSON array, and when.
    MarkSent {
        positions: String,
        at: String,
        answer: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Anything else that needs the writing connection.
    Run(WriterWork),
    /// Close the connection and stop.
    Close(oneshot::Sender<()>),
}

impl Job {
    /// Whether it joins a group transaction.
    fn groups(&self) -> bool {
        matches!(self, Self::Commit(..) | Self::MarkSent { .. })
    }
}

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
            apply_migrations_in_memory(&mut conn)?;
            return Self::start(conn, Vec::new(), None, true);
        }
        let options = if url_or_path.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url_or_path).map_err(|e| {
                StoreError::Unavailable(format!("invalid SQLite URL {url_or_path:?}: {e}"))
            })?
        } else {
            SqliteConnectOptions::new().filename(url_or_path)
        };
        let path = options.get_filename().to_path_buf();
        if let Some(folder) = path.parent()
            && !folder.as_os_str().is_empty()
        {
            std::fs::create_dir_all(folder).map_err(|e| {
                StoreError::Unavailable(format!("cannot create folder {}: {e}", folder.display()))
            })?;
        }
        // The migrations, with sqlx's migrator (it keeps the applied ones in
        // `_sqlx_migrations`), on a connection that also makes the file WAL for good.
        let mut migrating = options
            .create_if_missing(true)
            .busy_timeout(BUSY_TIMEOUT)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .connect()
            .await
            .map_err(crate::sql::store_error)?;
        migrator()
            .run_direct(&mut migrating)
            .await
            .map_err(crate::sql::migrate_error)?;
        migrating.close().await.map_err(crate::sql::store_error)?;
        let writer = open(&path, WRITER_CACHE_KIB)?;
        let readers = (0..READERS)
            .map(|_| open(&path, READER_CACHE_KIB))
            .collect::<Result<Vec<_>, _>>()?;
        let checkpointer = open(&path, CHECKPOINTER_CACHE_KIB)?;
        Self::start(writer, readers, Some(checkpointer), false)
    }

    fn start(
        writer: Connection,
        readers: Vec<Connection>,
        checkpointer: Option<Connection>,
        in_memory: bool,
    ) -> Result<Self, StoreError> {
        let committed = Arc::new(Notify::new());
        let caught_up = Arc::new(AtomicBool::new(false));
        let checkpoints = match checkpointer {
            Some(conn) => {
                let (due, asked) = std_mpsc::sync_channel(1);
                let done = caught_up.clone();
                spawn("sqlite-checkpoint", move || {
                    checkpoint_loop(conn, &asked, &done)
                })?;
                Some(due)
            }
            None => None,
        };
        let (jobs, queued) = std_mpsc::channel();
        let cache = Arc::new(WriteThroughCache::default());
        let fresh = Arc::new(FreshRows::default());
        let writer_side = Writer {
            committed: committed.clone(),
            cache: cache.clone(),
            fresh: fresh.clone(),
            checkpoints,
            caught_up,
        };
        spawn("sqlite-writer", move || {
            write_loop(writer, &queued, &writer_side)
        })?;
        let (work, waiting) = std_mpsc::channel::<ReaderWork>();
        let waiting = Arc::new(StdMutex::new(waiting));
        let mut reader_ends = Vec::new();
        for (i, conn) in readers.into_iter().enumerate() {
            let waiting = waiting.clone();
            let (ended, end) = oneshot::channel::<()>();
            reader_ends.push(end);
            spawn(&format!("sqlite-reader-{i}"), move || {
                read_loop(conn, &waiting);
                drop(ended);
            })?;
        }
        Ok(Self {
            writer: jobs,
            readers: StdMutex::new(Some(work)),
            reader_ends: StdMutex::new(reader_ends),
            in_memory,
            relay: Mutex::new(RelayState::default()),
            fresh,
            cache,
            committed,
        })
    }

    /// Runs `sql` (statements separated by `;`, no results) on the writing connection:
    /// for administration and tests. Returns the rows the last statement changed.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when a statement fails.
    pub async fn execute_admin(&self, sql: &str) -> Result<u64, StoreError> {
        let sql = sql.to_owned();
        let changed = self
            .on_writer(move |conn| {
                conn.execute_batch(&sql).map_err(sqlite_error)?;
                Ok(conn.changes())
            })
            .await;
        // It may have written outbox rows the hand-over knows nothing of.
        self.relay.lock().await.scan = true;
        changed
    }

    /// Outbox rows parked because their envelope could not be decoded; they are never
    /// published and need an operator.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn parked(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            count(
                conn,
                "SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL",
            )
        })
        .await
    }

    /// Closes the connections (the last one checkpoints the WAL) after the writes queued
    /// before. Later calls fail as unavailable.
    pub async fn close(&self) {
        // Published rows are marked first, so a clean stop publishes nothing twice.
        if let Err(e) = self.settle_marks(&mut *self.relay.lock().await).await {
            tracing::warn!(error = %e, "marking published outbox rows failed; they are published again on start");
        }
        // The reader threads end when their queue closes, after the reads queued before.
        drop(lock(&self.readers).take());
        let ends = std::mem::take(&mut *lock(&self.reader_ends));
        for end in ends {
            let _ = end.await;
        }
        let (done, closed) = oneshot::channel();
        if self.writer.send(Job::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }

    /// Runs `work` on the writing connection, in order with the other writes.
    async fn on_writer<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job = Job::Run(Box::new(move |conn| {
            let _ = answer.send(work(conn));
        }));
        self.writer.send(job).map_err(|_| closed())?;
        answered.await.map_err(|_| closed())?
    }

    /// Runs `work` on a reader connection (the writer's, for an in-memory database).
    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if self.in_memory {
            return self.on_writer(move |conn| work(conn)).await;
        }
        let (answer, answered) = oneshot::channel();
        let job: ReaderWork = Box::new(move |conn| {
            let _ = answer.send(work(conn));
        });
        lock(&self.readers)
            .as_ref()
            .ok_or_else(closed)?
            .send(job)
            .map_err(|_| closed())?;
        answered.await.map_err(|_| closed())?
    }

    async fn mark_parked(&self, park: Vec<(i64, String)>) -> Result<(), StoreError> {
        if park.is_empty() {
            return Ok(());
        }
        let now = timestamp_text(Utc::now());
        self.on_writer(move |conn| {
            let tx = conn.transaction().map_err(sqlite_error)?;
            {
                let mut update = tx
                    .prepare_cached(
                        "UPDATE outbox SET parked_at = ?1, park_reason = ?2 WHERE position = ?3",
                    )
                    .map_err(sqlite_error)?;
                for (position, reason) in park {
                    update
                        .execute(params![now, reason, position])
                        .map_err(sqlite_error)?;
                }
            }
            tx.commit().map_err(sqlite_error)
        })
        .await
    }

    async fn mark_sent(&self, positions: &[i64]) -> Result<(), StoreError> {
        if positions.is_empty() {
            return Ok(());
        }
        self.send_mark(positions)?.await.map_err(|_| closed())?
    }

    /// Queues the "sent" mark of `positions` for the writer; the answer says how it went.
    fn send_mark(&self, positions: &[i64]) -> Result<MarkAnswer, StoreError> {
        let positions = serde_json::to_string(positions)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode positions: {e}")))?;
        let (answer, answered) = oneshot::channel();
        self.writer
            .send(Job::MarkSent {
                positions,
                at: timestamp_text(Utc::now()),
                answer,
            })
            .map_err(|_| closed())?;
        Ok(answered)
    }

    /// Sends the marks of the rows published since the last ones went out.
    fn send_unmarked(&self, state: &mut RelayState) -> Result<(), StoreError> {
        state.unmarked_since = None;
        if state.unmarked.is_empty() {
            return Ok(());
        }
        let positions = std::mem::take(&mut state.unmarked);
        let mark = self.send_mark(&positions)?;
        state.marks.push_back(mark);
        Ok(())
    }

    /// Sends what is unmarked and waits for every mark.
    async fn settle_marks(&self, state: &mut RelayState) -> Result<(), StoreError> {
        self.send_unmarked(state)?;
        state.await_marks().await;
        Ok(())
    }

    /// Publishes unsent rows read from the table, in position order, and marks them
    /// (waiting for the marks). Clears `state.scan` once it has read everything unsent.
    async fn relay_from_table(
        &self,
        state: &mut RelayState,
        limit: usize,
        bus: &dyn MessageBus,
    ) -> Result<usize, StoreError> {
        // Set until this read has caught up, so a failure half way means "read again".
        state.scan = true;
        state.last_scan = Some(Instant::now());
        let mut sent = 0;
        while sent < limit {
            let want = limit - sent;
            let asked = i64::try_from(want).unwrap_or(i64::MAX);
            let rows: Vec<(i64, String)> = self
                .read(move |conn| {
                    let mut select = conn
                        .prepare_cached(
                            "SELECT position, envelope FROM outbox \
                             WHERE sent_at IS NULL AND parked_at IS NULL \
                             ORDER BY position LIMIT ?1",
                        )
                        .map_err(sqlite_error)?;
                    let rows = select
                        .query_map([asked], |row| Ok((row.get(0)?, row.get(1)?)))
                        .map_err(sqlite_error)?;
                    rows.collect::<Result<Vec<_>, _>>().map_err(sqlite_error)
                })
                .await?;
            let caught_up = rows.len() < want;
            let RelayBatch { publish, park } = RelayBatch::decode(rows);
            let parked_some = !park.is_empty();
            self.mark_parked(park).await?;
            let ready = publish.len();
            let published = publish_in_order(publish, bus).await;
            self.mark_sent(&published).await?;
            if let Some(&last) = published.last() {
                state.cursor = state.cursor.max(last);
            }
            sent += published.len();
            if published.len() < ready {
                break;
            }
            if caught_up {
                state.scan = false;
                break;
            }
            // A full batch: go on only to fill one that parked rows made short.
            if !parked_some {
                break;
            }
        }
        Ok(sent)
    }
}

fn lock<T>(mutex: &StdMutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn closed() -> StoreError {
    StoreError::Unavailable("the SQLite store is closed".to_owned())
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), StoreError> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map(|_| ())
        .map_err(|e| StoreError::Unavailable(format!("cannot start thread {name}: {e}")))
}

/// A SQLite error as the ports see it: a value that does not decode is corrupt data,
/// anything else means the database cannot do the work now.
fn sqlite_error(error: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    match error {
        E::FromSqlConversionFailure(..)
        | E::IntegralValueOutOfRange(..)
        | E::Utf8Error(_)
        | E::InvalidColumnIndex(_)
        | E::InvalidColumnName(_)
        | E::InvalidColumnType(..) => StoreError::Corrupt(error.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations/sqlite")
}

/// An in-memory database is new: every migration applies, in order, on its connection.
fn apply_migrations_in_memory(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(sqlite_error)?;
    for migration in migrator().iter() {
        if migration.migration_type.is_down_migration() {
            continue;
        }
        tx.execute_batch(&migration.sql).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot apply migration {} ({}): {e}",
                migration.version, migration.description
            ))
        })?;
    }
    tx.commit().map_err(sqlite_error)
}

/// A connection to the (migrated) file, with a page cache of `cache_kib`.
fn open(path: &Path, cache_kib: i64) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| unavailable_file(path, &e))?;
    configure(&conn, true, cache_kib)?;
    Ok(conn)
}

fn unavailable_file(path: &Path, error: &rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("cannot open {}: {error}", path.display()))
}

/// The settings of every connection.
fn configure(conn: &Connection, file: bool, cache_kib: i64) -> Result<(), StoreError> {
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

fn timestamp_text(at: Timestamp) -> String {
    // Fixed-width UTC text (`2026-01-05T10:00:00.000000000Z`), so text order is time
    // order; chrono's RFC 3339 writer, not a format string parsed on every call.
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn parse_timestamp(text: &str) -> Result<Timestamp, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("invalid stored timestamp {text:?}: {e}")))
}

fn version_column(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(|_| StoreError::Corrupt(format!("version {version} too large")))
}

/// A `SELECT count(*)` as a count.
fn count(conn: &Connection, sql: &str) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached(sql)
        .and_then(|mut s| s.query_row([], |row| row.get(0)))
        .map_err(sqlite_error)?;
    Ok(u64::try_from(n).unwrap_or_default())
}

/// The order bound to `key`.
fn key_owner(conn: &Connection, key: &str) -> Result<Option<OrderId>, StoreError> {
    let row: Option<String> = conn
        .prepare_cached("SELECT order_id FROM idempotency_keys WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |row| row.get(0)).optional())
        .map_err(sqlite_error)?;
    row.map(|id| snapshot::parse(&id, "order id")).transpose()
}

/// The inbox row of a commit, as column values.
struct InboxRow {
    subscriber: String,
    message_id: String,
    order_id: String,
    topic: String,
    outcome: &'static str,
    detail: Option<String>,
    handled_at: String,
}

/// The order row of a commit, as column values.
struct OrderRow {
    id: String,
    version: i64,
    status: &'static str,
    data: String,
    placed_at: String,
    updated_at: String,
}

/// An outbox row of a commit, as column values.
struct OutboxRow {
    message_id: String,
    order_id: Option<String>,
    topic: String,
    envelope: String,
    created_at: String,
}

/// A commit turned into column values, encoded on the caller's task so that the writer
/// only writes, and what is needed to explain a failure.
struct PreparedCommit {
    inbox: Option<InboxRow>,
    /// `(key, order id)`.
    key: Option<(String, String)>,
    order: Option<OrderRow>,
    outbox: Vec<OutboxRow>,
    /// The order and its version as loaded.
    loaded: Option<(OrderId, u64)>,
    /// The inbox record's subscriber and message.
    handled: Option<(String, MessageId)>,
    idempotency_key: Option<String>,
    /// The key must be free but is not bound (a commit without an order).
    check_key_only: bool,
    /// The order as it will be once committed, for the cache.
    cached: Option<Order>,
    /// The outbox messages themselves, handed to the relay once committed.
    envelopes: Vec<Envelope>,
}

impl PreparedCommit {
    /// The rows of `commit`, written in precondition order: inbox, idempotency key,
    /// order, outbox.
    fn new(commit: Commit) -> Result<Self, StoreError> {
        let Commit {
            order,
            outbox,
            inbox,
            idempotency_key,
        } = commit;
        let rows = outbox
            .iter()
            .map(|envelope| {
                let row = NewOutboxRow::new(envelope)?;
                Ok(OutboxRow {
                    message_id: row.message_id.to_string(),
                    order_id: row.order_id.map(|id| id.to_string()),
                    topic: row.topic,
                    envelope: row.envelope,
                    created_at: timestamp_text(row.envelope_timestamp),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let inbox_row = inbox.as_ref().map(|record| {
            let (outcome, detail) = outcome_columns(&record.outcome);
            InboxRow {
                subscriber: record.subscriber.clone(),
                message_id: record.message_id.to_string(),
                order_id: record.order_id.to_string(),
                topic: record.topic.clone(),
                outcome,
                detail: detail.map(str::to_owned),
                handled_at: timestamp_text(record.handled_at),
            }
        });
        let order_row = order
            .as_ref()
            .map(|o| {
                Ok::<_, StoreError>(OrderRow {
                    id: o.id().to_string(),
                    version: version_column(o.version().saturating_add(1))?,
                    status: o.status().as_str(),
                    data: snapshot::encode(o)?,
                    placed_at: timestamp_text(o.placed_at()),
                    updated_at: timestamp_text(o.updated_at()),
                })
            })
            .transpose()?;
        Ok(Self {
            inbox: inbox_row,
            key: match (&idempotency_key, &order) {
                (Some(key), Some(o)) => Some((key.clone(), o.id().to_string())),
                _ => None,
            },
            order: order_row,
            outbox: rows,
            loaded: order.as_ref().map(|o| (o.id(), o.version())),
            handled: inbox.map(|r| (r.subscriber, r.message_id)),
            check_key_only: idempotency_key.is_some() && order.is_none(),
            idempotency_key,
            cached: order.map(|mut o| {
                o.mark_saved(o.version().saturating_add(1));
                o
            }),
            envelopes: outbox,
        })
    }

    fn new_version(&self) -> u64 {
        self.loaded.map_or(0, |(_, v)| v.saturating_add(1))
    }

    fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Answers the caller, after bringing the cache up to date with `result`: called by
    /// the writer thread in commit order, so a slow caller cannot put an older version
    /// back in the cache after a newer one.
    fn answer(
        self: Box<Self>,
        cache: &WriteThroughCache,
        answer: oneshot::Sender<Result<u64, StoreError>>,
        result: Result<(), StoreError>,
    ) {
        let result = result.map(|()| self.new_version());
        match &result {
            Ok(_) => cache.committed(self.cached, self.handled),
            Err(StoreError::Conflict { order_id, .. }) => cache.evict(*order_id),
            Err(_) => {}
        }
        let _ = answer.send(result);
    }

    /// Hands the committed outbox rows (at `positions`) to the relay.
    fn hand_over(&mut self, positions: Vec<i64>, fresh: &FreshRows) {
        let envelopes = std::mem::take(&mut self.envelopes);
        fresh.push(positions.into_iter().zip(envelopes));
    }

    /// Writes the rows on `conn`, inside the caller's transaction, and returns the
    /// positions of its outbox rows; a failure is explained (which precondition), and
    /// the caller rolls the rows back.
    fn write(&self, conn: &Connection) -> Result<Vec<i64>, StoreError> {
        if self.check_key_only
            && let Some(key) = &self.idempotency_key
            && let Some(existing) = key_owner(conn, key)?
        {
            return Err(StoreError::DuplicateIdempotencyKey(existing));
        }
        self.execute(conn).map_err(|e| self.explain(conn, e))
    }

    fn execute(&self, conn: &Connection) -> rusqlite::Result<Vec<i64>> {
        if let Some(r) = &self.inbox {
            conn.prepare_cached(INSERT_INBOX)?.execute(params![
                r.subscriber,
                r.message_id,
                r.order_id,
                r.topic,
                r.outcome,
                r.detail,
                r.handled_at
            ])?;
        }
        if let Some((key, order_id)) = &self.key {
            conn.prepare_cached(INSERT_KEY)?
                .execute(params![key, order_id])?;
        }
        if let Some(o) = &self.order {
            conn.prepare_cached(UPSERT_ORDER)?.execute(params![
                o.id,
                o.version,
                o.status,
                o.data,
                o.placed_at,
                o.updated_at
            ])?;
        }
        let mut positions = Vec::with_capacity(self.outbox.len());
        if !self.outbox.is_empty() {
            let mut insert = conn.prepare_cached(INSERT_OUTBOX)?;
            for row in &self.outbox {
                insert.execute(params![
                    row.message_id,
                    row.order_id,
                    row.topic,
                    row.envelope,
                    row.created_at
                ])?;
                positions.push(conn.last_insert_rowid());
            }
        }
        Ok(positions)
    }

    /// What a failed statement means for the caller.
    fn explain(&self, conn: &Connection, error: rusqlite::Error) -> StoreError {
        let message = match &error {
            rusqlite::Error::SqliteFailure(_, Some(message)) => message.as_str(),
            _ => return sqlite_error(error),
        };
        if (message.contains(VERSION_CONFLICT)
            || message.starts_with("UNIQUE constraint failed: orders.")
            || message.starts_with("UNIQUE constraint failed: outbox."))
            && let Some((order_id, expected)) = self.loaded
        {
            return StoreError::Conflict { order_id, expected };
        }
        if message.starts_with("UNIQUE constraint failed: inbox.")
            && let Some((subscriber, message_id)) = &self.handled
        {
            return StoreError::DuplicateMessage {
                subscriber: subscriber.clone(),
                message_id: *message_id,
            };
        }
        if message.starts_with("UNIQUE constraint failed: idempotency_keys.")
            && let Some(key) = &self.idempotency_key
        {
            return match key_owner(conn, key) {
                Ok(Some(existing)) => StoreError::DuplicateIdempotencyKey(existing),
                Ok(None) => sqlite_error(error),
                Err(e) => e,
            };
        }
        sqlite_error(error)
    }
}

/// The writer thread: runs jobs in arrival order; commits and relay marks that queued up
/// together are written as a group ([`write_group`]). Ends when the store is dropped or
/// closed.
fn write_loop(mut conn: Connection, jobs: &Receiver<Job>, writer: &Writer) {
    let mut next = None;
    let mut since_checkpoint = 0;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        match job {
            Job::Close(done) => {
                if let Err((_, e)) = conn.close() {
                    tracing::warn!(error = %e, "closing the SQLite writer failed");
                }
                let _ = done.send(());
                return;
            }
            Job::Run(work) => work(&mut conn),
            first => {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match jobs.try_recv() {
                        Ok(job) if job.groups() => group.push(job),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                since_checkpoint += group.len();
                if since_checkpoint >= CHECKPOINT_EVERY {
                    if let Some(due) = &writer.checkpoints {
                        // Full: one is pending already, which will do.
                        let _ = due.try_send(());
                    }
                    since_checkpoint = 0;
                }
                if write_group(&mut conn, writer, group) {
                    writer.committed.notify_waiters();
                }
                if writer.caught_up.swap(false, Ordering::AcqRel) {
                    finish_checkpoint(&conn);
                }
            }
        }
    }
}

/// One passive checkpoint: (busy, frames in the WAL, frames copied back).
fn checkpoint_pass(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })
}

/// Copies back the frames written since the background checkpoint finished, on the
/// writer's connection between two groups, so that its next write starts the WAL over
/// (see the module docs).
fn finish_checkpoint(conn: &Connection) {
    if let Err(e) = checkpoint_pass(conn) {
        tracing::debug!(error = %e, "finishing the checkpoint failed; the next one will");
    }
}

/// What the writer thread shares with the store.
struct Writer {
    /// Notified after a commit with outbox rows.
    committed: Arc<Notify>,
    cache: Arc<WriteThroughCache>,
    /// Where committed outbox rows go for the relay.
    fresh: Arc<FreshRows>,
    /// Asks the checkpoint thread for a checkpoint.
    checkpoints: Option<SyncSender<()>>,
    /// Set by the checkpoint thread when it copied back every frame it saw.
    caught_up: Arc<AtomicBool>,
}

/// Copies the WAL back into the database file when the writer asks, on a connection of
/// its own: the writer's thread does not spend its time on it. Ends with the writer.
fn checkpoint_loop(conn: Connection, asked: &Receiver<()>, caught_up: &AtomicBool) {
    while asked.recv().is_ok() {
        // Each pass copies what the writer wrote during the one before, so the passes
        // get shorter, and so does what is left for the writer to finish: ~2 ms after
        // one pass, mostly well under one after three.
        let mut all_copied = false;
        for _ in 0..CHECKPOINT_PASSES {
            match checkpoint_pass(&conn) {
                Ok((0, frames, copied)) if frames > 0 && copied == frames => all_copied = true,
                Ok(_) => {
                    all_copied = false;
                    break;
                }
                Err(e) => {
                    all_copied = false;
                    tracing::warn!(error = %e, "WAL checkpoint failed; the writer's automatic one will do it");
                    break;
                }
            }
        }
        if all_copied {
            caught_up.store(true, Ordering::Release);
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::debug!(error = %e, "closing the checkpoint connection failed");
    }
}

/// A reader thread: runs reads from the shared queue until it closes.
fn read_loop(conn: Connection, waiting: &StdMutex<Receiver<ReaderWork>>) {
    loop {
        // One thread waits in `recv` while holding the lock; the others queue behind it.
        let work = lock(waiting).recv();
        match work {
            Ok(work) => work(&conn),
            Err(_) => break,
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing a SQLite reader failed");
    }
}

/// Writes `group`, answers each write, and says whether outbox rows were committed.
///
/// Optimistically all in one transaction. When that fails (a commit's precondition,
/// usually), it is rolled back and each write is done alone, in its own transaction, so
/// each gets its own answer and only the failing ones fail. Nobody hears "committed"
/// before `COMMIT` returned.
fn write_group(conn: &mut Connection, writer: &Writer, group: Vec<Job>) -> bool {
    let cache = &*writer.cache;
    if group.len() > 1 {
        match write_together(conn, &group) {
            Ok(mut positions) => {
                let mut wrote_outbox = false;
                for job in group {
                    match job {
                        Job::Commit(mut commit, answer) => {
                            wrote_outbox |= commit.has_outbox();
                            commit.hand_over(positions.next().unwrap_or_default(), &writer.fresh);
                            commit.answer(cache, answer, Ok(()));
                        }
                        Job::MarkSent { answer, .. } => {
                            let _ = answer.send(Ok(()));
                        }
                        other => answer_failed(other, &not_a_group_write()),
                    }
                }
                return wrote_outbox;
            }
            Err(e) => {
                roll_back(conn);
                tracing::debug!(error = %e, size = group.len(), "group commit failed; writing one by one");
            }
        }
    }
    let mut wrote_outbox = false;
    for job in group {
        match job {
            Job::Commit(mut commit, answer) => {
                let result = in_transaction(conn, |conn| commit.write(conn)).map(|positions| {
                    wrote_outbox |= commit.has_outbox();
                    commit.hand_over(positions, &writer.fresh);
                });
                commit.answer(cache, answer, result);
            }
            Job::MarkSent {
                positions,
                at,
                answer,
            } => {
                let _ = answer.send(in_transaction(conn, |conn| {
                    mark_sent(conn, &positions, &at)
                }));
            }
            other => answer_failed(other, &not_a_group_write()),
        }
    }
    wrote_outbox
}

/// Every write of `group` in one transaction, committed; the first failure stops it
/// (and the caller rolls back). Returns the outbox positions of each commit, in order.
fn write_together(
    conn: &Connection,
    group: &[Job],
) -> Result<std::vec::IntoIter<Vec<i64>>, StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(sqlite_error)?;
    let mut positions = Vec::with_capacity(group.len());
    for job in group {
        match job {
            Job::Commit(commit, _) => positions.push(commit.write(conn)?),
            Job::MarkSent { positions, at, .. } => mark_sent(conn, positions, at)?,
            Job::Run(_) | Job::Close(_) => return Err(not_a_group_write()),
        }
    }
    conn.execute_batch("COMMIT").map_err(sqlite_error)?;
    Ok(positions.into_iter())
}

/// `write` in a transaction of its own: committed when it succeeds, rolled back when not.
fn in_transaction<T>(
    conn: &Connection,
    write: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(sqlite_error)?;
    let result = write(conn).and_then(|written| {
        conn.execute_batch("COMMIT")
            .map_err(sqlite_error)
            .map(|()| written)
    });
    if result.is_err() {
        roll_back(conn);
    }
    result
}

/// Outbox rows this process committed, handed from the writer thread to the relay so
/// that it publishes them at once instead of reading them back from the file.
#[derive(Default)]
struct FreshRows {
    queue: StdMutex<FreshQueue>,
}

#[derive(Default)]
struct FreshQueue {
    /// `(position, envelope)` in commit order.
    rows: VecDeque<(i64, Envelope)>,
    /// Rows were dropped (more than [`FRESH_LIMIT`] waiting) since the relay last took.
    overflowed: bool,
}

impl FreshRows {
    /// Adds committed rows, in commit order; past [`FRESH_LIMIT`] it forgets what it
    /// holds and says so: the rows are in the table.
    fn push(&self, rows: impl IntoIterator<Item = (i64, Envelope)>) {
        let mut queue = lock(&self.queue);
        for row in rows {
            if queue.rows.len() >= FRESH_LIMIT {
                queue.rows.clear();
                queue.overflowed = true;
            }
            queue.rows.push_back(row);
        }
    }

    /// Up to `limit` rows after position `cursor` (older ones are dropped: the relay has
    /// them from the table), and whether rows were dropped for want of room.
    fn take(&self, cursor: i64, limit: usize) -> (Vec<(i64, Envelope)>, bool) {
        let mut queue = lock(&self.queue);
        while queue
            .rows
            .front()
            .is_some_and(|(position, _)| *position <= cursor)
        {
            queue.rows.pop_front();
        }
        let n = limit.min(queue.rows.len());
        let rows = queue.rows.drain(..n).collect();
        (rows, std::mem::take(&mut queue.overflowed))
    }
}

/// The writer's answer to a "sent" mark.
type MarkAnswer = oneshot::Receiver<Result<(), StoreError>>;

/// What the relay keeps between calls.
struct RelayState {
    /// Read the table before trusting the hand-over (see the module docs).
    scan: bool,
    /// When the table was last read.
    last_scan: Option<Instant>,
    /// The highest position published: older rows handed over are not published again.
    cursor: i64,
    /// Marks sent to the writer and not yet seen answered, oldest first.
    marks: VecDeque<MarkAnswer>,
    /// Positions published and not yet sent to be marked, and since when: marks go out
    /// [`MARK_BATCH`] rows or [`MARK_DELAY`] at a time, not one per commit.
    unmarked: Vec<i64>,
    unmarked_since: Option<Instant>,
}

impl Default for RelayState {
    fn default() -> Self {
        Self {
            scan: true,
            last_scan: None,
            cursor: 0,
            marks: VecDeque::new(),
            unmarked: Vec::new(),
            unmarked_since: None,
        }
    }
}

impl RelayState {
    /// Takes the answers of the marks that are done; a failed one means the table must
    /// be read (its rows are still unsent there).
    fn collect_marks(&mut self) {
        while let Some(answer) = self.marks.front_mut() {
            match answer.try_recv() {
                Ok(result) => {
                    self.marks.pop_front();
                    self.note_mark(result);
                }
                Err(oneshot::error::TryRecvError::Empty) => break,
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.marks.pop_front();
                    self.note_mark(Err(closed()));
                }
            }
        }
    }

    /// Waits for every mark sent so far.
    async fn await_marks(&mut self) {
        while let Some(answer) = self.marks.pop_front() {
            let result = answer.await.unwrap_or_else(|_| Err(closed()));
            self.note_mark(result);
        }
    }

    fn note_mark(&mut self, result: Result<(), StoreError>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "marking published outbox rows sent failed; they stay unsent and are published again");
            self.scan = true;
        }
    }
}

/// Ends the transaction a failed write may have left open; "no transaction" (SQLite
/// already rolled it back) is fine.
fn roll_back(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::warn!(error = %e, "rollback after a failed commit");
    }
}

fn mark_sent(conn: &Connection, positions: &str, at: &str) -> Result<(), StoreError> {
    conn.prepare_cached(MARK_SENT)
        .and_then(|mut s| s.execute(params![at, positions]))
        .map(|_| ())
        .map_err(sqlite_error)
}

fn not_a_group_write() -> StoreError {
    StoreError::Unavailable("not a group write".to_owned())
}

/// Answers a write that cannot be done.
fn answer_failed(job: Job, error: &StoreError) {
    match job {
        Job::Commit(_, answer) => {
            let _ = answer.send(Err(error.clone()));
        }
        Job::MarkSent { answer, .. } => {
            let _ = answer.send(Err(error.clone()));
        }
        // The work's answer channel is dropped with it: its caller sees the store closed.
        Job::Run(_) => {}
        Job::Close(done) => {
            let _ = done.send(());
        }
    }
}

#[async_trait]
impl OrderStore for SqliteOrderStore {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        if let Some(order) = self.cache.order(id) {
            return Ok(Some(order));
        }
        let row: Option<(i64, String)> = self
            .read(move |conn| {
                conn.prepare_cached("SELECT version, data FROM orders WHERE id = ?1")
                    .and_then(|mut s| {
                        s.query_row([id.to_string()], |row| Ok((row.get(0)?, row.get(1)?)))
                            .optional()
                    })
                    .map_err(sqlite_error)
            })
            .await?;
        row.map(|(version, data)| snapshot::decode_row(id, version, &data))
            .transpose()
    }

    async fn is_handled(
        &self,
        subscriber: &str,
        message_id: MessageId,
    ) -> Result<bool, StoreError> {
        if self.cache.handled(subscriber, message_id) {
            return Ok(true);
        }
        let subscriber = subscriber.to_owned();
        self.read(move |conn| {
            conn.prepare_cached("SELECT 1 FROM inbox WHERE subscriber = ?1 AND message_id = ?2")
                .and_then(|mut s| s.exists(params![subscriber, message_id.to_string()]))
                .map_err(sqlite_error)
        })
        .await
    }

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<OrderId>, StoreError> {
        let key = key.to_owned();
        self.read(move |conn| key_owner(conn, &key)).await
    }

    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        // Encoded here, on the caller's task, so the writer only writes. The writer
        // updates the cache, in commit order, before it answers.
        let prepared = Box::new(PreparedCommit::new(commit)?);
        let (answer, answered) = oneshot::channel();
        self.writer
            .send(Job::Commit(prepared, answer))
            .map_err(|_| closed())?;
        answered.await.map_err(|_| closed())?
    }

    async fn messages(&self, id: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
        type Row = (i64, String, String, Option<String>, Option<String>, String);
        // Inbox `seq` and outbox `position` come from one counter: commit order.
        let rows: Vec<Row> = self
            .read(move |conn| {
                let mut select = conn
                    .prepare_cached(
                        "SELECT 0 AS direction, seq, message_id, topic, outcome, detail, \
                                handled_at AS at \
                         FROM inbox WHERE order_id = ?1 \
                         UNION ALL \
                         SELECT 1, position, message_id, topic, NULL, NULL, created_at \
                         FROM outbox WHERE order_id = ?1 \
                         ORDER BY seq, direction, at, message_id",
                    )
                    .map_err(sqlite_error)?;
                let rows = select
                    .query_map([id.to_string()], |row| {
                        Ok((
                            row.get(0)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                            row.get(5)?,
                            row.get(6)?,
                        ))
                    })
                    .map_err(sqlite_error)?;
                rows.collect::<Result<Vec<Row>, _>>().map_err(sqlite_error)
            })
            .await?;
        rows.into_iter()
            .map(|(direction, message_id, topic, outcome, detail, at)| {
                let received = direction == 0;
                Ok(MessageRecord {
                    direction: if received {
                        Direction::Received
                    } else {
                        Direction::Sent
                    },
                    message_id: snapshot::parse(&message_id, "message id")?,
                    topic,
                    outcome: match (received, outcome) {
                        (true, Some(outcome)) => Some(outcome_from_columns(&outcome, detail)?),
                        _ => None,
                    },
                    at: parse_timestamp(&at)?,
                })
            })
            .collect()
    }

    async fn prune(&self, before: Timestamp) -> Result<PruneReport, StoreError> {
        self.cache.forget_handled();
        let before = timestamp_text(before);
        self.on_writer(move |conn| {
            let tx = conn.transaction().map_err(sqlite_error)?;
            let inbox = tx
                .execute("DELETE FROM inbox WHERE handled_at < ?1", [&before])
                .map_err(sqlite_error)?;
            let outbox = tx
                .execute(
                    "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?1",
                    [&before],
                )
                .map_err(sqlite_error)?;
            tx.commit().map_err(sqlite_error)?;
            Ok(PruneReport {
                inbox: inbox as u64,
                outbox: outbox as u64,
            })
        })
        .await
    }
}

#[async_trait]
impl Outbox for SqliteOrderStore {
    async fn relay(&self, limit: usize, bus: &dyn MessageBus) -> Result<usize, StoreError> {
        let mut state = self.relay.lock().await;
        state.collect_marks();
        let (rows, overflowed) = self.fresh.take(state.cursor, limit);
        if overflowed {
            tracing::warn!(
                limit = FRESH_LIMIT,
                "relay fell behind the commits: reading them from the table"
            );
            state.scan = true;
        }
        let rescan_due = state
            .last_scan
            .is_none_or(|at| at.elapsed() >= RESCAN_EVERY);
        if state.scan || rescan_due {
            // The rows just taken are still unsent in the table: the read finds them.
            self.settle_marks(&mut state).await?;
            return self.relay_from_table(&mut state, limit, bus).await;
        }
        let ready = rows.len();
        let published = publish_in_order(rows, bus).await;
        if published.len() < ready {
            // The rest is unsent in the table; read it from there next time.
            state.scan = true;
        }
        if let Some(&last) = published.last() {
            state.cursor = state.cursor.max(last);
            state.unmarked.extend_from_slice(&published);
            state.unmarked_since.get_or_insert_with(Instant::now);
        }
        let marks_due = state.unmarked.len() >= MARK_BATCH
            || state
                .unmarked_since
                .is_some_and(|since| since.elapsed() >= MARK_DELAY);
        if marks_due {
            self.send_unmarked(&mut state)?;
        }
        Ok(published.len())
    }

    async fn unsent(&self) -> Result<u64, StoreError> {
        // Counted after the relay's marks landed, so a published row does not count.
        self.settle_marks(&mut *self.relay.lock().await).await?;
        self.read(|conn| {
            count(
                conn,
                "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL",
            )
        })
        .await
    }

    fn committed(&self) -> &Notify {
        &self.committed
    }

    async fn requeue_stalled(&self, before: Timestamp) -> Result<u64, StoreError> {
        let before = timestamp_text(before);
        let requeued = self
            .on_writer(move |conn| {
                let n = conn
                    .execute(
                        "UPDATE outbox SET sent_at = NULL \
                         WHERE sent_at IS NOT NULL AND parked_at IS NULL AND position IN ( \
                             SELECT (SELECT max(o.position) FROM outbox o WHERE o.order_id = d.id) \
                             FROM orders d \
                             WHERE d.status IN ('AwaitingPayment', 'Paid') AND d.updated_at < ?1)",
                        [before],
                    )
                    .map_err(sqlite_error)?;
                Ok(n as u64)
            })
            .await?;
        if requeued > 0 {
            // Rows behind the relay's cursor are unsent again: it must read the table.
            self.relay.lock().await.scan = true;
            self.committed.notify_waiters();
        }
        Ok(requeued)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn timestamps_are_fixed_width_so_text_order_is_time_order() {
        let a = Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap();
        let b = a + chrono::Duration::nanoseconds(1);
        let c = a + chrono::Duration::milliseconds(500);
        let (ta, tb, tc) = (timestamp_text(a), timestamp_text(b), timestamp_text(c));
        assert_eq!(ta, "2026-01-05T10:00:00.000000000Z");
        assert!(ta < tb && tb < tc);
        assert_eq!(parse_timestamp(&tb).unwrap(), b);
    }
}
