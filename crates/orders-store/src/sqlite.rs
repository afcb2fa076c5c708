//! The SQLite adapter of [`OrderStore`] and [`Outbox`]: the embedded default, one file in
//! WAL mode.
//!
//! sqlx runs each SQLite connection on a worker thread of its own, so every statement is
//! a hop between threads; the hops and the WAL writes, not the SQL, are the costs. So:
//!
//! * **One writer task** owns the writing connection and runs every write in arrival
//!   order: SQLite lets one connection write at a time anyway, and queueing in-process is
//!   cheaper than SQLite's sleeping busy handler. Callers send it a job and await the
//!   answer, so a caller that gives up never leaves a transaction half done.
//! * **Group commit**: the commits that queued up while the writer was busy are written
//!   in one transaction, commits of one shape in chunks of one cached multi-statement
//!   batch each; the WAL is written once for all of them. If that transaction fails (a
//!   precondition of one of them, usually), it is rolled back and each commit is written
//!   alone, so only the failing ones fail. A lone commit is one hop:
//!   `BEGIN IMMEDIATE; …; COMMIT`.
//! * Preconditions are constraints, checked by SQLite: the inbox and idempotency-key
//!   primary keys, and triggers that allow an order's version only to go up by one (a new
//!   order starts at 1). The error says which one failed.
//! * Reads go to reader connections, which WAL lets run beside the writer. An in-memory
//!   database (`sqlite::memory:`) exists only in its one connection, so there the writer
//!   task reads too. Connections are owned, not pooled: a pool's acquire and release
//!   cost as much as a statement.
//! * A separate connection checkpoints the WAL every [`CHECKPOINT_EVERY`] commits, off
//!   the writer's thread.
//!
//! The relay is serialised in-process by a mutex and holds no connection while it
//! publishes. Several processes relaying one file are not coordinated (use PostgreSQL).

use std::{
    future::Future,
    pin::Pin,
    str::FromStr,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orders_app::{
    Commit, Direction, MessageRecord, OrderStore, Outbox, PruneReport, StoreError,
    messaging::{MessageBus, MessageId},
};
use orders_domain::{Order, OrderId, Timestamp};
use sqlx::{
    Arguments, ConnectOptions, Connection, Sqlite, SqliteConnection, SqlitePool,
    sqlite::{SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};

use crate::{
    snapshot,
    sql::{
        NewOutboxRow, RelayBatch, outcome_columns, outcome_from_columns, publish_in_order,
        store_error,
    },
};

/// How long a statement waits for another process's write lock before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reader connections of a file database.
const READERS: usize = 2;
/// The most commits written in one transaction.
const MAX_GROUP: usize = 64;
/// Sizes of the chunks a group is written in (commits of one shape per chunk).
const CHUNKS: [usize; 6] = [32, 16, 8, 4, 2, 1];
/// Page cache per connection: 16 MiB (negative: KiB), so hot index pages stay in memory.
const CACHE_SIZE: &str = "-16384";
/// The writer checkpoints by itself only past this many WAL pages (a safety net); normally
/// a separate connection checkpoints every [`CHECKPOINT_EVERY`] commits.
const WAL_AUTOCHECKPOINT: &str = "20000";
/// Commits between two background checkpoints.
const CHECKPOINT_EVERY: usize = 1000;
/// Timestamps are stored as fixed-width UTC text, so text order is time order.
const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.9fZ";
/// What the version triggers say when they refuse a write.
const VERSION_CONFLICT: &str = "order version conflict";

/// A future borrowing a connection.
type ConnFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'c>>;
/// Work for the writer task, answering through a channel it captured.
type WriterWork =
    Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> ConnFuture<'c, ()> + Send + 'static>;

/// The SQLite adapter of [`OrderStore`] and [`Outbox`].
pub struct SqliteOrderStore {
    /// The writer task's queue.
    writer: mpsc::UnboundedSender<Job>,
    /// Reader connections; empty for an in-memory database or a pool (the writer reads).
    /// `None` once closed.
    readers: Vec<Mutex<Option<SqliteConnection>>>,
    /// Where the next read starts looking for a free reader.
    next_reader: AtomicUsize,
    /// Serialises relays in this process, so rows leave in commit order, once.
    relay_lock: Mutex<()>,
    /// Wakes the relay after a commit with outbox rows (shared with the writer task).
    committed: std::sync::Arc<Notify>,
    /// What this process (the only writer) committed last, for the flow's reads.
    cache: crate::cache::WriteThroughCache,
}

impl std::fmt::Debug for SqliteOrderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOrderStore")
            .field("readers", &self.readers.len())
            .finish_non_exhaustive()
    }
}

/// What the writer task does.
enum Job {
    /// A commit, prepared; answered with the new version.
    Commit(PreparedCommit, oneshot::Sender<Result<u64, StoreError>>),
    /// Anything else that needs the writing connection.
    Run(WriterWork),
    /// Close the connection and stop.
    Close(oneshot::Sender<()>),
}

/// Where the writer task gets its connection.
enum WriterConnection {
    Owned(SqliteConnection),
    Pool(SqlitePool),
}

impl SqliteOrderStore {
    /// Opens (creating it and its folder if missing) the database at `url_or_path` and
    /// applies the migrations. Accepts `sqlite:PATH`, `sqlite://PATH`, `sqlite::memory:`
    /// or a plain file path. Files are opened in WAL mode with `synchronous=NORMAL`,
    /// a busy timeout and foreign keys on. Must be called within a tokio runtime (it
    /// starts the writer task).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the URL is invalid, the file cannot be opened or
    /// created, or the migrations fail.
    pub async fn connect(url_or_path: &str) -> Result<Self, StoreError> {
        let in_memory = url_or_path.contains(":memory:") || url_or_path.contains("mode=memory");
        let options = if url_or_path.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url_or_path).map_err(|e| {
                StoreError::Unavailable(format!("invalid SQLite URL {url_or_path:?}: {e}"))
            })?
        } else {
            SqliteConnectOptions::new().filename(url_or_path)
        };
        let options = options
            .create_if_missing(true)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .pragma("cache_size", CACHE_SIZE);
        let options = if in_memory {
            options
        } else {
            let options = options
                .journal_mode(SqliteJournalMode::Wal)
                .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT);
            if let Some(folder) = options.get_filename().parent()
                && !folder.as_os_str().is_empty()
            {
                std::fs::create_dir_all(folder).map_err(|e| {
                    StoreError::Unavailable(format!(
                        "cannot create folder {}: {e}",
                        folder.display()
                    ))
                })?;
            }
            options
        };
        let mut writer = options.connect().await.map_err(store_error)?;
        // Migrate before the readers open, so they see the schema.
        migrator()
            .run_direct(&mut writer)
            .await
            .map_err(crate::sql::migrate_error)?;
        let mut readers = Vec::new();
        let mut checkpointer = None;
        if !in_memory {
            for _ in 0..READERS {
                let reader = options.connect().await.map_err(store_error)?;
                readers.push(Mutex::new(Some(reader)));
            }
            checkpointer = Some(options.connect().await.map_err(store_error)?);
        }
        Ok(Self::start(
            WriterConnection::Owned(writer),
            readers,
            checkpointer,
        ))
    }

    /// A store over an existing pool, applying the migrations. Every statement, reads
    /// included, runs on one pooled connection at a time, so this works with any pool
    /// (an in-memory one must keep its connection open) but is slower than
    /// [`SqliteOrderStore::connect`]. The pool's options (WAL, busy timeout, foreign
    /// keys) are the caller's. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the migrations fail.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self, StoreError> {
        migrator()
            .run(&pool)
            .await
            .map_err(crate::sql::migrate_error)?;
        Ok(Self::start(WriterConnection::Pool(pool), Vec::new(), None))
    }

    fn start(
        connection: WriterConnection,
        readers: Vec<Mutex<Option<SqliteConnection>>>,
        checkpointer: Option<SqliteConnection>,
    ) -> Self {
        let committed = std::sync::Arc::new(Notify::new());
        let (writer, jobs) = mpsc::unbounded_channel();
        let checkpoints = checkpointer.map(|conn| {
            let (due, asked) = mpsc::channel(1);
            tokio::spawn(checkpoint_loop(conn, asked));
            due
        });
        tokio::spawn(write_loop(connection, jobs, committed.clone(), checkpoints));
        Self {
            writer,
            readers,
            next_reader: AtomicUsize::new(0),
            relay_lock: Mutex::new(()),
            cache: crate::cache::WriteThroughCache::default(),
            committed,
        }
    }

    /// Runs `sql` (statements separated by `;`, no results) on the writing connection:
    /// for administration and tests. Returns the rows changed.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when a statement fails.
    pub async fn execute_admin(&self, sql: &str) -> Result<u64, StoreError> {
        let sql = sql.to_owned();
        self.on_writer(move |conn| {
            Box::pin(async move {
                let result = sqlx::query(&sql).execute(conn).await.map_err(store_error)?;
                Ok(result.rows_affected())
            })
        })
        .await
    }

    /// Outbox rows parked because their envelope could not be decoded; they are never
    /// published and need an operator.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn parked(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            Box::pin(async move {
                let n: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL")
                        .fetch_one(conn)
                        .await
                        .map_err(store_error)?;
                Ok(u64::try_from(n).unwrap_or_default())
            })
        })
        .await
    }

    /// Closes the connections (the last one checkpoints the WAL) after the writes queued
    /// before. Later calls fail as unavailable.
    pub async fn close(&self) {
        for reader in &self.readers {
            if let Some(conn) = reader.lock().await.take()
                && let Err(e) = conn.close().await
            {
                tracing::warn!(error = %e, "closing a SQLite reader failed");
            }
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
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> ConnFuture<'c, T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job = Job::Run(Box::new(move |conn| {
            Box::pin(async move {
                let _ = answer.send(work(conn).await);
                Ok(())
            })
        }));
        self.writer.send(job).map_err(|_| closed())?;
        answered.await.map_err(|_| closed())?
    }

    /// Runs `work` on a reader connection (the writer's, when there are none).
    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> ConnFuture<'c, T> + Send + 'static,
    {
        if self.readers.is_empty() {
            return self.on_writer(work).await;
        }
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let n = self.readers.len();
        let mut guard = None;
        for i in 0..n {
            if let Ok(free) = self.readers[(start + i) % n].try_lock() {
                guard = Some(free);
                break;
            }
        }
        let mut guard = match guard {
            Some(guard) => guard,
            None => self.readers[start % n].lock().await,
        };
        let conn = guard.as_mut().ok_or_else(closed)?;
        work(conn).await
    }

    async fn mark_parked(&self, park: Vec<(i64, String)>) -> Result<(), StoreError> {
        if park.is_empty() {
            return Ok(());
        }
        let now = timestamp_text(Utc::now());
        self.on_writer(move |conn| {
            Box::pin(async move {
                for (position, reason) in park {
                    sqlx::query(
                        "UPDATE outbox SET parked_at = ?1, park_reason = ?2 WHERE position = ?3",
                    )
                    .bind(&now)
                    .bind(reason)
                    .bind(position)
                    .execute(&mut *conn)
                    .await
                    .map_err(store_error)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn mark_sent(&self, positions: &[i64]) -> Result<(), StoreError> {
        if positions.is_empty() {
            return Ok(());
        }
        // One statement (one prepared plan) whatever the batch size: positions as a JSON array.
        let list = serde_json::to_string(positions)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode positions: {e}")))?;
        let now = timestamp_text(Utc::now());
        self.on_writer(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE outbox SET sent_at = ?1 \
                     WHERE position IN (SELECT value FROM json_each(?2))",
                )
                .bind(now)
                .bind(list)
                .execute(conn)
                .await
                .map_err(store_error)?;
                Ok(())
            })
        })
        .await
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the SQLite store is closed".to_owned())
}

fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations/sqlite")
}

fn timestamp_text(at: Timestamp) -> String {
    at.format(TIMESTAMP_FORMAT).to_string()
}

fn parse_timestamp(text: &str) -> Result<Timestamp, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("invalid stored timestamp {text:?}: {e}")))
}

fn version_column(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(|_| StoreError::Corrupt(format!("version {version} too large")))
}

/// The order bound to `key`.
async fn key_owner(conn: &mut SqliteConnection, key: &str) -> Result<Option<OrderId>, StoreError> {
    let row: Option<String> =
        sqlx::query_scalar("SELECT order_id FROM idempotency_keys WHERE key = ?1")
            .bind(key)
            .fetch_optional(conn)
            .await
            .map_err(store_error)?;
    row.map(|id| snapshot::parse(&id, "order id")).transpose()
}

/// A bound value of a commit's statements.
enum Value {
    Text(String),
    Int(i64),
    Null,
}

/// A commit turned into SQL: the statements (one `?` per value, in order) and what is
/// needed to explain a failure.
struct PreparedCommit {
    /// The statements, `;`-separated, without transaction control.
    body: String,
    values: Vec<Value>,
    /// The order and its version as loaded.
    order: Option<(OrderId, u64)>,
    /// The inbox record's subscriber and message.
    inbox: Option<(String, MessageId)>,
    idempotency_key: Option<String>,
    /// The key must be free but is not bound (a commit without an order).
    check_key_only: bool,
    /// Whether the relay is to be woken after it.
    has_outbox: bool,
}

impl PreparedCommit {
    /// The statements of `commit`, in precondition order: inbox, idempotency key, order,
    /// outbox. Encoding happens here, before the writer is involved.
    fn new(commit: Commit) -> Result<Self, StoreError> {
        let Commit {
            order,
            outbox,
            inbox,
            idempotency_key,
        } = commit;
        let outbox = outbox
            .iter()
            .map(NewOutboxRow::new)
            .collect::<Result<Vec<_>, _>>()?;
        let mut body = String::new();
        let mut values = Vec::new();
        let mut text = |v: String| values.push(Value::Text(v));
        if let Some(record) = &inbox {
            let (outcome, detail) = outcome_columns(&record.outcome);
            body.push_str(
                "INSERT INTO inbox \
                 (subscriber, message_id, seq, order_id, topic, outcome, detail, handled_at) \
                 VALUES (?, ?, \
                   coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0) + 1, \
                   ?, ?, ?, ?, ?);\n",
            );
            text(record.subscriber.clone());
            text(record.message_id.to_string());
            text(record.order_id.to_string());
            text(record.topic.clone());
            text(outcome.to_owned());
            match detail {
                Some(detail) => text(detail.to_owned()),
                None => values.push(Value::Null),
            }
            values.push(Value::Text(timestamp_text(record.handled_at)));
        }
        let mut text = |v: String| values.push(Value::Text(v));
        if let (Some(key), Some(o)) = (&idempotency_key, &order) {
            body.push_str("INSERT INTO idempotency_keys (key, order_id) VALUES (?, ?);\n");
            text(key.clone());
            text(o.id().to_string());
        }
        if let Some(o) = &order {
            // Inserted at version 1, or updated to the version read + 1; the triggers
            // refuse anything else (a lost update).
            body.push_str(
                "INSERT INTO orders (id, version, status, data, placed_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version, \
                   status = excluded.status, data = excluded.data, \
                   updated_at = excluded.updated_at;\n",
            );
            values.push(Value::Text(o.id().to_string()));
            values.push(Value::Int(version_column(o.version().saturating_add(1))?));
            values.push(Value::Text(o.status().as_str().to_owned()));
            values.push(Value::Text(snapshot::encode(o)?));
            values.push(Value::Text(timestamp_text(o.placed_at())));
            values.push(Value::Text(timestamp_text(o.updated_at())));
        }
        if !outbox.is_empty() {
            // Positions follow the VALUES order.
            body.push_str(
                "INSERT INTO outbox (message_id, order_id, topic, envelope, created_at) VALUES ",
            );
            for (i, row) in outbox.iter().enumerate() {
                body.push_str(if i == 0 {
                    "(?, ?, ?, ?, ?)"
                } else {
                    ", (?, ?, ?, ?, ?)"
                });
                values.push(Value::Text(row.message_id.to_string()));
                values.push(
                    row.order_id
                        .map_or(Value::Null, |id| Value::Text(id.to_string())),
                );
                values.push(Value::Text(row.topic.clone()));
                values.push(Value::Text(row.envelope.clone()));
                values.push(Value::Text(timestamp_text(row.envelope_timestamp)));
            }
            body.push_str(";\n");
        }
        Ok(Self {
            body,
            values,
            order: order.as_ref().map(|o| (o.id(), o.version())),
            inbox: inbox.map(|r| (r.subscriber, r.message_id)),
            check_key_only: idempotency_key.is_some() && order.is_none(),
            idempotency_key,
            has_outbox: !outbox.is_empty(),
        })
    }

    fn new_version(&self) -> u64 {
        self.order.map_or(0, |(_, v)| v.saturating_add(1))
    }

    /// Adds the values to `args`, in placeholder order.
    fn bind(&self, args: &mut SqliteArguments<'static>) -> Result<(), StoreError> {
        for value in &self.values {
            match value {
                Value::Text(text) => args.add(text.clone()),
                Value::Int(n) => args.add(*n),
                Value::Null => args.add(None::<String>),
            }
            .map_err(|e| StoreError::Corrupt(format!("cannot bind a value: {e}")))?;
        }
        Ok(())
    }

    /// Runs the statements in their own transaction on `conn`: one hop.
    async fn execute(&self, conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        if self.body.is_empty() {
            return Ok(());
        }
        let sql = format!("BEGIN IMMEDIATE;\n{}COMMIT", self.body);
        let mut args = SqliteArguments::default();
        self.bind(&mut args)
            .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        sqlx::query_with(&sql, args).execute(conn).await.map(|_| ())
    }

    /// What a failed execution means for the caller, once the failed statements are
    /// rolled back.
    async fn explain(&self, conn: &mut SqliteConnection, error: sqlx::Error) -> StoreError {
        let message = match &error {
            sqlx::Error::Database(db) => db.message().to_owned(),
            _ => return store_error(error),
        };
        if (message.contains(VERSION_CONFLICT)
            || message.starts_with("UNIQUE constraint failed: orders.")
            || message.starts_with("UNIQUE constraint failed: outbox."))
            && let Some((order_id, expected)) = self.order
        {
            return StoreError::Conflict { order_id, expected };
        }
        if message.starts_with("UNIQUE constraint failed: inbox.")
            && let Some((subscriber, message_id)) = &self.inbox
        {
            return StoreError::DuplicateMessage {
                subscriber: subscriber.clone(),
                message_id: *message_id,
            };
        }
        if message.starts_with("UNIQUE constraint failed: idempotency_keys.")
            && let Some(key) = &self.idempotency_key
        {
            return match key_owner(conn, key).await {
                Ok(Some(existing)) => StoreError::DuplicateIdempotencyKey(existing),
                Ok(None) => store_error(error),
                Err(e) => e,
            };
        }
        store_error(error)
    }

    /// A key-only commit's check, before anything is written.
    async fn check_key(&self, conn: &mut SqliteConnection) -> Result<(), StoreError> {
        match (&self.idempotency_key, self.check_key_only) {
            (Some(key), true) => match key_owner(conn, key).await? {
                Some(existing) => Err(StoreError::DuplicateIdempotencyKey(existing)),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// Ends the transaction a failed batch may have left open; "no transaction" (a failed
/// `BEGIN`, or SQLite already rolled back) is fine.
async fn roll_back(conn: &mut SqliteConnection) {
    if let Err(e) = sqlx::query("ROLLBACK").execute(conn).await {
        tracing::debug!(error = %e, "rollback after a failed commit");
    }
}

/// The writer task: runs jobs in arrival order; commits that queued up together are
/// written as a group ([`write_group`]). Ends when the store is dropped or closed.
async fn write_loop(
    mut connection: WriterConnection,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    committed: std::sync::Arc<Notify>,
    checkpoints: Option<mpsc::Sender<()>>,
) {
    let mut next = None;
    let mut since_checkpoint = 0;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        if let Job::Close(done) = job {
            if let WriterConnection::Owned(conn) = connection
                && let Err(e) = conn.close().await
            {
                tracing::warn!(error = %e, "closing the SQLite writer failed");
            }
            let _ = done.send(());
            break;
        }
        let mut conn = match &mut connection {
            WriterConnection::Owned(conn) => ConnInHand::Owned(conn),
            WriterConnection::Pool(pool) => match pool.acquire().await {
                Ok(conn) => ConnInHand::Pooled(conn),
                Err(e) => {
                    fail(job, store_error(e));
                    continue;
                }
            },
        };
        let conn = conn.get();
        match job {
            Job::Commit(first, answer) => {
                let mut group = vec![(first, answer)];
                while group.len() < MAX_GROUP {
                    match jobs.try_recv() {
                        Ok(Job::Commit(commit, answer)) => group.push((commit, answer)),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                since_checkpoint += group.len();
                if since_checkpoint >= CHECKPOINT_EVERY {
                    if let Some(due) = &checkpoints {
                        // Full: one is pending already, which will do.
                        let _ = due.try_send(());
                    }
                    since_checkpoint = 0;
                }
                if write_group(conn, group).await {
                    committed.notify_waiters();
                }
            }
            Job::Run(work) => {
                let _ = work(conn).await;
            }
            // Handled above.
            Job::Close(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Copies the WAL back into the database file when the writer asks, on a connection of
/// its own: the writer's thread does not spend its time on it. Ends with the writer.
async fn checkpoint_loop(mut conn: SqliteConnection, mut asked: mpsc::Receiver<()>) {
    while asked.recv().await.is_some() {
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed; the writer's automatic one will do it");
        }
    }
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %e, "closing the checkpoint connection failed");
    }
}

/// A connection the writer task holds for one job.
enum ConnInHand<'a> {
    Owned(&'a mut SqliteConnection),
    Pooled(sqlx::pool::PoolConnection<Sqlite>),
}

impl ConnInHand<'_> {
    fn get(&mut self) -> &mut SqliteConnection {
        match self {
            Self::Owned(conn) => conn,
            Self::Pooled(conn) => conn,
        }
    }
}

fn fail(job: Job, error: StoreError) {
    match job {
        Job::Commit(_, answer) => {
            let _ = answer.send(Err(error));
        }
        // The work's answer channel is dropped with it: its caller sees the store closed.
        Job::Run(_) => {}
        Job::Close(done) => {
            let _ = done.send(());
        }
    }
}

/// Writes `group`, answers each commit, and says whether outbox rows were committed.
///
/// Optimistically all in one transaction and one hop. When that fails (a commit's
/// precondition, usually), it is rolled back and each commit is written alone, so each
/// gets its own answer and only the failing ones fail.
async fn write_group(
    conn: &mut SqliteConnection,
    group: Vec<(PreparedCommit, oneshot::Sender<Result<u64, StoreError>>)>,
) -> bool {
    let together = group.len() > 1 && group.iter().all(|(c, _)| !c.check_key_only);
    if together {
        match write_together(conn, &group).await {
            Ok(()) => {
                let mut wrote_outbox = false;
                for (commit, answer) in group {
                    wrote_outbox |= commit.has_outbox;
                    let _ = answer.send(Ok(commit.new_version()));
                }
                return wrote_outbox;
            }
            Err(e) => {
                roll_back(conn).await;
                tracing::debug!(error = %e, size = group.len(), "group commit failed; writing one by one");
            }
        }
    }
    let mut wrote_outbox = false;
    for (commit, answer) in group {
        let result = write_alone(conn, &commit).await;
        wrote_outbox |= result.is_ok() && commit.has_outbox;
        let _ = answer.send(result);
    }
    wrote_outbox
}

/// One transaction with every commit of `group`. Commits of the same shape (the same
/// statements) go in chunks of [`CHUNKS`] sizes, the first chunk opening the transaction
/// and the last one committing it, so every batch text is one of a few, prepared once
/// and cached, and the whole group takes a handful of hops.
async fn write_together(
    conn: &mut SqliteConnection,
    group: &[(PreparedCommit, oneshot::Sender<Result<u64, StoreError>>)],
) -> Result<(), sqlx::Error> {
    let mut shapes: Vec<(&str, Vec<&PreparedCommit>)> = Vec::new();
    for (commit, _) in group {
        if commit.body.is_empty() {
            continue;
        }
        match shapes.iter_mut().find(|(body, _)| *body == commit.body) {
            Some((_, same)) => same.push(commit),
            None => shapes.push((&commit.body, vec![commit])),
        }
    }
    let mut chunks = Vec::new();
    for (body, commits) in &shapes {
        let mut rest = commits.as_slice();
        while !rest.is_empty() {
            let size = CHUNKS
                .iter()
                .copied()
                .find(|&n| n <= rest.len())
                .unwrap_or(1);
            let (chunk, after) = rest.split_at(size.min(rest.len()));
            chunks.push((*body, chunk));
            rest = after;
        }
    }
    if chunks.is_empty() {
        return Ok(());
    }
    let last = chunks.len() - 1;
    for (i, (body, chunk)) in chunks.into_iter().enumerate() {
        let mut sql = String::new();
        if i == 0 {
            sql.push_str("BEGIN IMMEDIATE;\n");
        }
        sql.push_str(&body.repeat(chunk.len()));
        if i == last {
            sql.push_str("COMMIT");
        }
        let mut args = SqliteArguments::default();
        for commit in chunk {
            commit
                .bind(&mut args)
                .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        }
        sqlx::query_with(&sql, args).execute(&mut *conn).await?;
    }
    Ok(())
}

/// One commit in its own transaction: one hop, plus a rollback when it fails.
async fn write_alone(
    conn: &mut SqliteConnection,
    commit: &PreparedCommit,
) -> Result<u64, StoreError> {
    commit.check_key(conn).await?;
    match commit.execute(conn).await {
        Ok(()) => Ok(commit.new_version()),
        Err(e) => {
            roll_back(conn).await;
            Err(commit.explain(conn, e).await)
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
                Box::pin(async move {
                    sqlx::query_as("SELECT version, data FROM orders WHERE id = ?1")
                        .bind(id.to_string())
                        .fetch_optional(conn)
                        .await
                        .map_err(store_error)
                })
            })
            .await?;
        row.map(|(version, data)| {
            let version = u64::try_from(version)
                .map_err(|_| StoreError::Corrupt(format!("order {id}: negative version")))?;
            snapshot::decode(&data, version)
        })
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
            Box::pin(async move {
                let row: Option<i64> = sqlx::query_scalar(
                    "SELECT 1 FROM inbox WHERE subscriber = ?1 AND message_id = ?2",
                )
                .bind(subscriber)
                .bind(message_id.to_string())
                .fetch_optional(conn)
                .await
                .map_err(store_error)?;
                Ok(row.is_some())
            })
        })
        .await
    }

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<OrderId>, StoreError> {
        let key = key.to_owned();
        self.read(move |conn| Box::pin(async move { key_owner(conn, &key).await }))
            .await
    }

    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        let cached = commit.order.clone();
        let handled = commit
            .inbox
            .as_ref()
            .map(|r| (r.subscriber.clone(), r.message_id));
        // Encoded here, on the caller's task, so the writer only writes.
        let prepared = PreparedCommit::new(commit)?;
        let (answer, answered) = oneshot::channel();
        self.writer
            .send(Job::Commit(prepared, answer))
            .map_err(|_| closed())?;
        let result = answered.await.map_err(|_| closed())?;
        match &result {
            Ok(version) => {
                let cached = cached.map(|mut order| {
                    order.mark_saved(*version);
                    order
                });
                self.cache.committed(cached, handled);
            }
            Err(StoreError::Conflict { order_id, .. }) => self.cache.evict(*order_id),
            Err(_) => {}
        }
        result
    }

    async fn messages(&self, id: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
        // Inbox `seq` and outbox `position` come from one counter: commit order.
        let rows: Vec<(
            i64,
            i64,
            String,
            String,
            Option<String>,
            Option<String>,
            String,
        )> = self
            .read(move |conn| {
                Box::pin(async move {
                    sqlx::query_as(
                        "SELECT 0 AS direction, seq, message_id, topic, outcome, detail, \
                                handled_at AS at \
                         FROM inbox WHERE order_id = ?1 \
                         UNION ALL \
                         SELECT 1, position, message_id, topic, NULL, NULL, created_at \
                         FROM outbox WHERE order_id = ?1 \
                         ORDER BY seq, direction, at, message_id",
                    )
                    .bind(id.to_string())
                    .fetch_all(conn)
                    .await
                    .map_err(store_error)
                })
            })
            .await?;
        rows.into_iter()
            .map(|(direction, _, message_id, topic, outcome, detail, at)| {
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
            Box::pin(async move {
                let inbox = sqlx::query("DELETE FROM inbox WHERE handled_at < ?1")
                    .bind(&before)
                    .execute(&mut *conn)
                    .await
                    .map_err(store_error)?
                    .rows_affected();
                let outbox =
                    sqlx::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?1")
                        .bind(&before)
                        .execute(&mut *conn)
                        .await
                        .map_err(store_error)?
                        .rows_affected();
                Ok(PruneReport { inbox, outbox })
            })
        })
        .await
    }
}

#[async_trait]
impl Outbox for SqliteOrderStore {
    async fn relay(&self, limit: usize, bus: &dyn MessageBus) -> Result<usize, StoreError> {
        let _one_relay_at_a_time = self.relay_lock.lock().await;
        let mut sent = 0;
        while sent < limit {
            let want = i64::try_from(limit - sent).unwrap_or(i64::MAX);
            let rows: Vec<(i64, String)> = self
                .read(move |conn| {
                    Box::pin(async move {
                        sqlx::query_as(
                            "SELECT position, envelope FROM outbox \
                             WHERE sent_at IS NULL AND parked_at IS NULL \
                             ORDER BY position LIMIT ?1",
                        )
                        .bind(want)
                        .fetch_all(conn)
                        .await
                        .map_err(store_error)
                    })
                })
                .await?;
            if rows.is_empty() {
                break;
            }
            let RelayBatch { publish, park } = RelayBatch::decode(rows);
            let parked_some = !park.is_empty();
            self.mark_parked(park).await?;
            let ready = publish.len();
            let published = publish_in_order(publish, bus).await;
            self.mark_sent(&published).await?;
            sent += published.len();
            // Go on only to fill a batch that parked rows made short.
            if published.len() < ready || !parked_some {
                break;
            }
        }
        Ok(sent)
    }

    async fn unsent(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            Box::pin(async move {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL",
                )
                .fetch_one(conn)
                .await
                .map_err(store_error)?;
                Ok(u64::try_from(n).unwrap_or_default())
            })
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
                Box::pin(async move {
                    let result = sqlx::query(
                        "UPDATE outbox SET sent_at = NULL \
                         WHERE sent_at IS NOT NULL AND parked_at IS NULL AND position IN ( \
                             SELECT (SELECT max(o.position) FROM outbox o WHERE o.order_id = d.id) \
                             FROM orders d \
                             WHERE d.status IN ('AwaitingPayment', 'Paid') AND d.updated_at < ?1)",
                    )
                    .bind(before)
                    .execute(conn)
                    .await
                    .map_err(store_error)?;
                    Ok(result.rows_affected())
                })
            })
            .await?;
        if requeued > 0 {
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
